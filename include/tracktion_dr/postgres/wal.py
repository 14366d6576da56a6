"""The WAL archive: segment names, continuity, gaps, and the newest restorable point.

A WAL segment file is named ``TTTTTTTTXXXXXXXXYYYYYYYY`` (timeline, log, segment). With the
default 16 MiB segments there are 0x100 segments per log. Recovery needs every segment from
a base backup's start to the target: one missing file stops replay there, so a gap is
reported with the exact missing names.

The archive holds segments compressed: ``<segment>.zst``, written by :func:`archive_command`
(zstd; a bulk-load segment shrinks to about a quarter, an idle one switched out by
``archive_timeout`` - 16 MiB of mostly zeros - to a few KiB). Plain ``<segment>`` files
(archived before compression, or copied in from the salvage folder) are read the same way.
Timeline histories, ``.backup`` labels and ``.partial`` files stay plain. Every reader goes
through :func:`archived_segment` (names) and :func:`readable_segments` (``pg_waldump``
cannot read zstd); ``restore_command`` decompresses (see ``pitr.restore_command_for``).
zstd gives ``<segment>.zst`` the segment's own modification time, so the archive's "newest
segment archived at" (the WAL watch, the RPO) is when its WAL was last written - a little
earlier than a ``cp`` would say, never later.
"""

from __future__ import annotations

import os
import re
import shlex
import struct
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tracktion_dr.core.errors import CommandError
from tracktion_dr.postgres.commands import run

COMPRESSED_SUFFIX = ".zst"
# zstd level of archived segments: level 3 (zstd's default) compresses a 16 MiB segment in
# about 0.1 s on one core, level 1 barely faster and larger (bench/results/backup_compression.md).
ARCHIVE_ZSTD_LEVEL = 3
SEGMENTS_PER_LOG = 0x100  # 16 MiB segments (the PostgreSQL default, and the sandbox's)
SEGMENT_NAME = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
COMMIT_TIME = re.compile(
    r"\b(?:COMMIT|ABORT)\b\s+(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) (UTC|[A-Z]{3,4}|[+-]\d\d)"
)


@dataclass(frozen=True, order=True)
class Segment:
    log: int
    seg: int
    timeline: int = field(default=1, compare=False)

    @classmethod
    def parse(cls, name: str) -> Segment:
        match = SEGMENT_NAME.match(name)
        if not match:
            raise ValueError(f"not a WAL segment file name: {name!r}")
        timeline, log, seg = (int(part, 16) for part in match.groups())
        return cls(log, seg, timeline)

    @classmethod
    def from_lsn(cls, lsn: str, timeline: int = 1) -> Segment:
        high, low = (int(part, 16) for part in lsn.split("/"))
        position = (high << 32) | low
        number = position // (16 * 1024 * 1024)
        return cls(number // SEGMENTS_PER_LOG, number % SEGMENTS_PER_LOG, timeline)

    @property
    def number(self) -> int:
        return self.log * SEGMENTS_PER_LOG + self.seg

    def name(self, timeline: int | None = None) -> str:
        return f"{timeline or self.timeline:08X}{self.log:08X}{self.seg:08X}"

    def next(self) -> Segment:
        return Segment.from_number(self.number + 1, self.timeline)

    @classmethod
    def from_number(cls, number: int, timeline: int = 1) -> Segment:
        return cls(number // SEGMENTS_PER_LOG, number % SEGMENTS_PER_LOG, timeline)


def lsn_to_int(lsn: str) -> int:
    high, low = (int(part, 16) for part in lsn.split("/"))
    return (high << 32) | low


def int_to_lsn(position: int) -> str:
    """``0x5A000028`` -> ``0/5A000028``, as the server spells it (``pg_lsn`` output: no
    zero padding), so an LSN from the window can be pasted back as a target."""
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


@dataclass(frozen=True)
class ArchiveState:
    """What the archive holds between two points."""

    first: str | None  # first segment file name considered
    last: str | None  # newest segment file name
    missing: list[str]  # segment names absent between first and last
    newest_archived_at: datetime | None  # mtime of the newest segment file

    @property
    def continuous(self) -> bool:
        return not self.missing


def list_segments(archive: Path) -> dict[int, Path]:
    """Segment number -> file on the latest timeline's path (see ``timeline_of_segment``).

    After promotions the archive holds several timelines; replay with
    ``recovery_target_timeline = 'latest'`` follows the newest timeline's history, so
    that is the file each segment number resolves to (when it exists).
    """
    files = segment_files(archive)
    chain = timeline_chain(archive)
    resolved: dict[int, Path] = {}
    for number in {n for n, _ in files}:
        path = files.get((number, timeline_of_segment(chain, number)))
        if path is not None:
            resolved[number] = path
    return resolved


def segment_files(archive: Path) -> dict[tuple[int, int], Path]:
    """(segment number, timeline) -> file, for every WAL segment file in the archive
    (``<segment>`` or ``<segment>.zst``; the plain one when both exist)."""
    found: dict[tuple[int, int], Path] = {}
    if not archive.is_dir():
        return found
    for path in archive.iterdir():
        try:
            segment = archived_segment(path.name)
        except ValueError:
            continue  # .history, .backup, .partial files
        key = (segment.number, segment.timeline)
        if key not in found or not is_compressed(path):
            found[key] = path
    return found


# --- compressed segments in the archive ---------------------------------------------------


def archived_segment(name: str) -> Segment:
    """The segment an archive file holds: ``<segment>`` or ``<segment>.zst``."""
    return Segment.parse(name.removesuffix(COMPRESSED_SUFFIX))


def segment_name_of(path: Path) -> str:
    """``<segment>`` for ``<segment>`` and ``<segment>.zst`` alike."""
    return path.name.removesuffix(COMPRESSED_SUFFIX)


def is_compressed(path: Path) -> bool:
    return path.name.endswith(COMPRESSED_SUFFIX)


def archived_file(archive: Path, segment_name: str) -> Path | None:
    """The archive's file for a segment name, compressed or not (None: not archived)."""
    for candidate in (archive / segment_name, archive / f"{segment_name}{COMPRESSED_SUFFIX}"):
        if candidate.is_file():
            return candidate
    return None


def decompress_segment(source: Path, destination: Path) -> None:
    """``zstd -d`` one archived segment (zstd checks its frame checksum: a changed byte fails)."""
    result = subprocess.run(
        ["zstd", "-d", "-q", "-f", "-o", str(destination), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise CommandError(
            f"zstd -d {source} failed (exit {result.returncode}): {result.stderr.strip()[-500:]}"
        )


@contextmanager
def readable_segments(paths: Sequence[Path]) -> Iterator[list[Path]]:
    """The same segments as plain files named as their segments, which is what
    ``pg_waldump`` reads: compressed ones decompressed into a temporary folder (removed on
    exit), plain ones as they are - unless they must share a folder with decompressed ones
    (``pg_waldump --path`` reads a run of segments from one folder): then linked there."""
    if not any(is_compressed(p) for p in paths):
        yield list(paths)
        return
    with tempfile.TemporaryDirectory(prefix="tracktion-wal-") as scratch:
        folder = Path(scratch)
        readable = []
        for path in paths:
            target = folder / segment_name_of(path)
            if is_compressed(path):
                decompress_segment(path, target)
            else:
                target.symlink_to(path.resolve())
            readable.append(target)
        yield readable


def archive_command(archive: Path, *, level: int = ARCHIVE_ZSTD_LEVEL) -> str:
    """The ``archive_command`` that stores a finished segment as ``<segment>.zst``, and any
    other file (timeline history, backup label, partial segment) as it is.

    Never overwrites: a file already archived under either name is compared with the one
    offered (identical = success: a restarted archiver may resend it; different = failure,
    so the archiver stalls and ``pg_stat_archiver`` shows it instead of history being
    replaced). Written to a hidden name first, then renamed: a crash never leaves a
    truncated file where ``restore_command`` looks. A PostgreSQL setting run by the
    server's shell: ``%`` in the path doubled, the path shell-quoted, and named once in a
    shell variable - PostgreSQL 15 cuts the expanded command at 1024 bytes
    (:data:`MAX_COMMAND_BYTES`), so it must stay short."""
    command = (
        f"a={_shell_path(archive)}; f=%f; p=%p; "
        # A segment's name is exactly 24 characters (a '?' each); nothing else is.
        f"case $f in {'?' * 24}) "
        'if test -f "$a/$f.zst"; then zstd -dqc "$a/$f.zst" | cmp -s - "$p"; '
        'elif test -f "$a/$f"; then cmp -s "$p" "$a/$f"; '
        f'else zstd -qf -{int(level)} "$p" -o "$a/.$f.zst.partial" '
        '&& mv "$a/.$f.zst.partial" "$a/$f.zst"; fi;; '
        '*) if test -f "$a/$f"; then cmp -s "$p" "$a/$f"; '
        'else cp "$p" "$a/.$f.partial" && mv "$a/.$f.partial" "$a/$f"; fi;; esac'
    )
    return checked_length(command, "archive_command")


# PostgreSQL 15 builds archive_command (with %p and %f expanded) in a MAXPGPATH buffer and
# silently cuts what does not fit: the archiver then fails with a shell syntax error.
MAX_COMMAND_BYTES = 1024
_EXPANSION_BYTES = 64  # %p is pg_wal/<24 characters>, %f the 24


def checked_length(command: str, setting: str) -> str:
    expanded = len(command.replace("%%", "%").encode()) + _EXPANSION_BYTES
    if expanded >= MAX_COMMAND_BYTES:
        raise ValueError(
            f"{setting} would be {expanded} bytes once expanded; PostgreSQL 15 cuts it at "
            f"{MAX_COMMAND_BYTES}: use a shorter archive path"
        )
    return command


def _shell_path(path: Path) -> str:
    """A path for the server's shell: quoted, ``%`` doubled for the server."""
    return shlex.quote(str(path).replace("%", "%%"))


def latest_timeline(archive: Path) -> int:
    """The newest timeline that has archived WAL. A ``.history`` file whose timeline has
    no segment yet (a promotion moments ago) describes nothing replay could read."""
    return max((timeline for _, timeline in segment_files(archive)), default=1)


def timeline_chain(archive: Path, timeline: int | None = None) -> list[tuple[int, int | None]]:
    """The timelines replay walks to reach ``timeline`` (default: the latest), each with the
    LSN (as an int) where it was left for the next one; the last one has no end.

    Read from ``<TLI>.history`` (lines: parent timeline, switch LSN, reason).
    """
    target = timeline or latest_timeline(archive)
    history = archive / f"{target:08X}.history"
    chain: list[tuple[int, int | None]] = []
    if history.exists():
        for line in history.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].isdigit() and "/" in parts[1]:
                chain.append((int(parts[0]), lsn_to_int(parts[1])))
    chain.append((target, None))
    return chain


def _begins(chain: list[tuple[int, int | None]]) -> list[tuple[int, int | None]]:
    """(timeline, LSN where it began) for each chain entry: each began where the previous
    one was left; the first has no beginning."""
    return [(timeline, chain[i - 1][1] if i else None) for i, (timeline, _) in enumerate(chain)]


def timeline_of_segment(chain: list[tuple[int, int | None]], number: int) -> int:
    """Which timeline's file replay reads for segment ``number``: the newest timeline of
    the chain that had begun by that segment, as PostgreSQL's XLogFileReadAnyTLI walks the
    history newest first. The segment holding a switch point is read from the new timeline
    (it carries the old one's WAL up to the switch).

    Newest first matters: after a recovery to a point on an *ancestor* timeline (an early
    target, ``immediate``) the history file lists switch points out of order - the new
    timeline begins below an older one's switch point - and that older switch no longer
    applies to anything."""
    for timeline, begin in reversed(_begins(chain)):
        if begin is None or begin // SEGMENT_BYTES <= number:
            return timeline
    return chain[0][0]


def timeline_at(chain: list[tuple[int, int | None]], position: int) -> int:
    """The timeline replay is on at LSN ``position`` (PostgreSQL's tliOfPointInHistory)."""
    for timeline, begin in reversed(_begins(chain)):
        if begin is None or begin <= position:
            return timeline
    return chain[0][0]


SEGMENT_BYTES = 16 * 1024 * 1024


def archive_state(archive: Path, since: Segment | None = None) -> ArchiveState:
    """Continuity of the archive, along the latest timeline's history, from ``since``
    (default: the oldest segment) to the newest segment; missing files named exactly."""
    files = segment_files(archive)
    if not files:
        return ArchiveState(None, None, [f"(no WAL segments in {archive})"], None)
    chain = timeline_chain(archive)
    on_path = list_segments(archive)
    if not on_path:
        return ArchiveState(
            None, None, [f"(no WAL segment of timeline {chain[-1][0]} in {archive})"], None
        )
    start = since.number if since else min(on_path)
    end = max(on_path)
    missing = [
        Segment.from_number(number).name(timeline_of_segment(chain, number))
        for number in range(start, end + 1)
        if number not in on_path
    ]
    newest = on_path[end]
    return ArchiveState(
        first=Segment.from_number(start).name(timeline_of_segment(chain, start)),
        last=newest.name,
        missing=missing,
        newest_archived_at=datetime.fromtimestamp(newest.stat().st_mtime, UTC),
    )


def last_commit_time(segment_file: Path, bindir: Path) -> datetime | None:
    """The newest COMMIT/ABORT timestamp recorded in one WAL segment (via pg_waldump)."""
    with readable_segments([segment_file]) as (readable,):
        result = run(
            [str(bindir / "pg_waldump"), "--rmgr=Transaction", str(readable)],
            what=f"pg_waldump {segment_file.name}",
            env={**os.environ, "TZ": "UTC"},  # pg_waldump prints times in its own zone
            check=False,
            timeout=120,
        )
    # pg_waldump exits non-zero at the end of a segment whose last record continues in the
    # next file; the records it printed are still valid.
    times = [
        _parse_commit_time(m.group(1), m.group(2)) for m in COMMIT_TIME.finditer(result.stdout)
    ]
    return max(times) if times else None


def newest_restorable_point(archive: Path, bindir: Path) -> datetime | None:
    """The newest commit time that replaying the archive can reach.

    Looks back through the newest segments until one holds a commit (an idle server
    archives segments with no transactions in them).
    """
    segments = list_segments(archive)
    for number in sorted(segments, reverse=True)[:8]:
        moment = last_commit_time(segments[number], bindir)
        if moment is not None:
            return moment
    return None


def _parse_commit_time(text: str, zone: str) -> datetime:
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S"
    moment = datetime.strptime(text, fmt)
    if zone != "UTC":
        raise ValueError(f"pg_waldump printed a non-UTC time zone {zone!r}: set TZ=UTC")
    return moment.replace(tzinfo=UTC)


def segment_names(segments: Iterable[Segment]) -> list[str]:
    return [s.name() for s in segments]


# --- records inside segments (pg_waldump) -------------------------------------------------

RECORD = re.compile(r"\blsn: ([0-9A-F]+/[0-9A-F]+), prev [0-9A-F]+/[0-9A-F]+, desc: (\S+) ?(.*)$")
# XLogPageHeaderData: magic, info, timeline, page address, remaining length (little-endian,
# as written on this architecture). The first page of a segment names the segment's start.
_PAGE_HEADER = struct.Struct("<HHIQI")


def segment_header_matches(path: Path, number: int) -> bool:
    """True when ``path`` really holds segment ``number``: its first page header carries
    that segment's start address. A recycled file in pg_wal (renamed ahead for reuse) still
    holds an old segment's pages, and a freshly zeroed one holds nothing: neither is WAL
    anyone could replay, so neither is salvaged or counted."""
    try:
        with path.open("rb") as handle:
            header = handle.read(_PAGE_HEADER.size)
    except OSError:
        return False
    if len(header) < _PAGE_HEADER.size:
        return False
    magic, _info, _timeline, page_address, _remaining = _PAGE_HEADER.unpack(header)
    return magic != 0 and page_address == number * SEGMENT_BYTES


@dataclass(frozen=True)
class SegmentContents:
    """What one segment file holds, as far as it can be read (a partial segment ends at its
    last complete, checksummed record - where replay would end too)."""

    last_record_lsn: int | None  # start of the last valid record
    last_commit: datetime | None

    def reaches_further_than(self, other: SegmentContents) -> bool:
        return (self.last_record_lsn or -1) > (other.last_record_lsn or -1)


def read_segment(segment_file: Path, bindir: Path) -> SegmentContents:
    """The last valid record and the newest commit in one segment file (pg_waldump)."""
    with readable_segments([segment_file]) as (readable,):
        result = run(
            [str(bindir / "pg_waldump"), str(readable)],
            what=f"pg_waldump {segment_file.name}",
            env={**os.environ, "TZ": "UTC"},
            check=False,  # exits non-zero where the valid records end; those printed are good
            timeout=300,
        )
    last_lsn: int | None = None
    for line in reversed(result.stdout.splitlines()):
        match = RECORD.search(line)
        if match:
            last_lsn = lsn_to_int(match.group(1))
            break
    times = [
        _parse_commit_time(m.group(1), m.group(2)) for m in COMMIT_TIME.finditer(result.stdout)
    ]
    return SegmentContents(last_lsn, max(times) if times else None)


@dataclass(frozen=True)
class RestorePoint:
    name: str
    lsn: int
    timeline: int

    @property
    def lsn_text(self) -> str:
        return int_to_lsn(self.lsn)


def restore_points(segment_files: Sequence[tuple[int, Path]], bindir: Path) -> list[RestorePoint]:
    """Every ``pg_create_restore_point`` record in these segments, in WAL order.

    ``segment_files`` are (segment number, file) along one replay path. Runs of consecutive
    segments in one folder on one timeline are read by one pg_waldump (so a record that
    crosses from one file into the next is still seen); compressed ones in overlapping
    pieces (see :func:`_chunks`), decompressed into a temporary folder."""
    found: dict[int, RestorePoint] = {}
    for run_files in _runs(segment_files):
        timeline = archived_segment(run_files[0].name).timeline
        for chunk in _chunks(run_files):
            with readable_segments(chunk) as readable:
                first, last = readable[0], readable[-1]
                result = run(
                    [
                        str(bindir / "pg_waldump"),
                        "--rmgr=XLOG",
                        f"--path={first.parent}",
                        first.name,
                        last.name,
                    ],
                    what=f"pg_waldump {first.name}..{last.name}",
                    check=False,
                    timeout=1800,
                )
            for line in result.stdout.splitlines():
                match = RECORD.search(line)
                if match and match.group(2) == "RESTORE_POINT":
                    point = RestorePoint(
                        match.group(3).strip(), lsn_to_int(match.group(1)), timeline
                    )
                    found[point.lsn] = point  # chunks overlap by one segment
    return sorted(found.values(), key=lambda point: point.lsn)


# Compressed segments are decompressed for pg_waldump this many at a time (16 MiB each).
CHUNK_SEGMENTS = 32


def _chunks(run_files: list[Path]) -> list[list[Path]]:
    """A run of consecutive segments in pieces of CHUNK_SEGMENTS, each starting at the
    previous one's last segment: a record crossing into the next file is still read whole
    (by the piece where it starts), at the price of one segment read twice."""
    if len(run_files) <= CHUNK_SEGMENTS or not any(is_compressed(p) for p in run_files):
        return [run_files]
    step = CHUNK_SEGMENTS - 1
    return [run_files[i : i + CHUNK_SEGMENTS] for i in range(0, len(run_files) - 1, step)]


def _runs(segment_files: Sequence[tuple[int, Path]]) -> list[list[Path]]:
    runs: list[list[Path]] = []
    previous: tuple[int, Path] | None = None
    for number, path in sorted(segment_files):
        if (
            previous is not None
            and number == previous[0] + 1
            and path.parent == previous[1].parent
            and path.name[:8] == previous[1].name[:8]
        ):
            runs[-1].append(path)
        else:
            runs.append([path])
        previous = (number, path)
    return runs
