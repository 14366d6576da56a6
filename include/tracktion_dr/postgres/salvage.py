"""The WAL we hold, wherever it is, and salvaging what the archive lacks.

Committed work lives in WAL. The archive has most of it; the rest is still held by the old
primary's ``pg_wal`` (the segments not archived yet, and the partial current one) and by
the standby's ``pg_wal`` (everything it received). A recovery that moves those data
directories aside without reading them "loses" rows that are still on disk.

So, before a data directory or a standby is moved aside or re-seeded, the segments it holds
that the archive lacks are *copied* into the salvage folder next to the archive
(``<archive>.salvage``), which the recovery's ``restore_command`` reads after the archive.
The originals stay where they are (the directory is moved aside, never deleted).

:class:`WalHoldings` is the read-only view the guard and the gates use: every segment of
the archive, the salvage folder and any ``pg_wal`` given, resolved along the timeline path
replay follows (``recovery_target_timeline = 'latest'``), with the best copy of each
segment: the archive's when it has one (``restore_command`` tries it first), else the copy
whose valid records reach furthest.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tracktion_dr.postgres import wal
from tracktion_dr.postgres.commands import DEFAULT_BINDIR, chown_tree

log = logging.getLogger(__name__)

SALVAGE_SUFFIX = ".salvage"
_HISTORY_NAME = "{:08X}.history"


def salvage_dir_for(archive: Path) -> Path:
    """The salvage folder of a WAL archive: beside it, its name plus ``.salvage``."""
    return archive.with_name(archive.name + SALVAGE_SUFFIX)


@dataclass(frozen=True)
class WalSource:
    """A folder holding WAL segments. ``restorable``: ``restore_command`` reads it (the
    archive and the salvage folder); a ``pg_wal`` counts only once salvaged."""

    label: str
    directory: Path
    restorable: bool = False

    @classmethod
    def pg_wal(cls, label: str, data_directory: Path) -> WalSource:
        return cls(label, data_directory / "pg_wal")


@dataclass(frozen=True)
class HeldSegment:
    number: int
    timeline: int
    path: Path
    source: str

    @property
    def name(self) -> str:
        """The segment's name (the archive's file may be ``<name>.zst``)."""
        return wal.segment_name_of(self.path)


@dataclass(frozen=True)
class WalEnd:
    """Where the WAL we hold ends, along the replay path."""

    last_record_lsn: int | None
    last_commit: datetime | None
    segment: str | None

    @property
    def lsn_text(self) -> str | None:
        return wal.int_to_lsn(self.last_record_lsn) if self.last_record_lsn is not None else None


@dataclass
class WalHoldings:
    """Every WAL segment and timeline history held by ``sources`` (read-only)."""

    sources: list[WalSource]
    bindir: Path = DEFAULT_BINDIR
    candidates: dict[tuple[int, int], list[HeldSegment]] = field(default_factory=dict)
    histories: dict[int, Path] = field(default_factory=dict)
    _contents: dict[Path, wal.SegmentContents] = field(default_factory=dict)
    _path: dict[int, list[HeldSegment]] | None = None

    def __post_init__(self) -> None:
        for source in self.sources:
            for segment in _segments_in(source):
                self.candidates.setdefault((segment.number, segment.timeline), []).append(segment)
            for timeline, path in _histories_in(source.directory).items():
                self.histories.setdefault(timeline, path)

    @classmethod
    def restorable_only(cls, archive: Path, bindir: Path = DEFAULT_BINDIR) -> WalHoldings:
        """What ``restore_command`` can reach right now: the archive and its salvage folder."""
        return cls(
            [
                WalSource("archive", archive, restorable=True),
                WalSource("salvage", salvage_dir_for(archive), restorable=True),
            ],
            bindir,
        )

    # -- the replay path --------------------------------------------------------------

    @property
    def latest_timeline(self) -> int:
        """The timeline replay ends on: PostgreSQL picks the newest history file it can
        fetch (and the newest timeline with segments when there is none)."""
        timelines = [t for _, t in self.candidates] + list(self.histories)
        return max(timelines, default=1)

    def chain(self) -> list[tuple[int, int | None]]:
        """Timelines replay walks to the latest, each with the LSN where it was left."""
        target = self.latest_timeline
        chain: list[tuple[int, int | None]] = []
        history = self.histories.get(target)
        if history is not None:
            for line in history.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 2 and parts[0].isdigit() and "/" in parts[1]:
                    chain.append((int(parts[0]), wal.lsn_to_int(parts[1])))
        chain.append((target, None))
        return chain

    def on_path(self, timeline: int, lsn: int) -> bool:
        """Is ``lsn`` on ``timeline`` along the history replay follows? (A base backup
        taken on a timeline abandoned before its end cannot lead to the latest one.)"""
        return wal.timeline_at(self.chain(), lsn) == timeline

    def path_segments(self) -> dict[int, list[HeldSegment]]:
        """Segment number -> the copies held of the file replay reads for it."""
        if self._path is not None:
            return self._path
        chain = self.chain()
        numbers = {number for number, _ in self.candidates}
        resolved: dict[int, list[HeldSegment]] = {}
        for number in numbers:
            copies = self.candidates.get((number, wal.timeline_of_segment(chain, number)))
            if copies:
                resolved[number] = copies
        self._path = resolved
        return resolved

    def best(self, number: int) -> HeldSegment | None:
        """The copy replay will read: the archive's first (``restore_command`` tries it
        first), otherwise the one whose valid records reach furthest."""
        copies = self.path_segments().get(number)
        if not copies:
            return None
        return self.best_of(copies)

    def best_of(self, copies: list[HeldSegment]) -> HeldSegment:
        archived = [c for c in copies if c.source == "archive"]
        if archived or len(copies) == 1:
            return (archived or copies)[0]
        return max(
            copies,
            key=lambda c: self.contents(c.path).last_record_lsn or -1,
        )

    def contents(self, path: Path) -> wal.SegmentContents:
        if path not in self._contents:
            self._contents[path] = wal.read_segment(path, self.bindir)
        return self._contents[path]

    def missing(self, start_number: int, end_number: int | None = None) -> list[str]:
        """Segment names replay needs from ``start_number`` through ``end_number``
        (default: the newest held) that nobody holds."""
        path = self.path_segments()
        if not path:
            return [f"(no WAL segment of timeline {self.latest_timeline} anywhere)"]
        last = max(path) if end_number is None else end_number
        chain = self.chain()
        return [
            wal.Segment.from_number(number).name(wal.timeline_of_segment(chain, number))
            for number in range(start_number, last + 1)
            if number not in path
        ]

    def newest_number(self) -> int | None:
        path = self.path_segments()
        return max(path) if path else None

    def end(self, *, commit_lookback: int = 8) -> WalEnd:
        """The last valid record held on the path, and the newest commit near it (looking
        back through idle segments, which hold no commit)."""
        path = self.path_segments()
        last_lsn: int | None = None
        last_commit: datetime | None = None
        segment_name: str | None = None
        for looked, number in enumerate(sorted(path, reverse=True)):
            if looked >= commit_lookback and last_lsn is not None:
                break
            copy = self.best_of(path[number])
            contents = self.contents(copy.path)
            if last_lsn is None and contents.last_record_lsn is not None:
                last_lsn, segment_name = contents.last_record_lsn, copy.name
            if contents.last_commit is not None:
                last_commit = contents.last_commit
                if last_lsn is not None:
                    break
        return WalEnd(last_lsn, last_commit, segment_name)

    def files_from(self, start_number: int) -> list[tuple[int, Path]]:
        """(number, best file) along the path from ``start_number`` on, for scanning."""
        path = self.path_segments()
        return [
            (number, self.best_of(path[number]).path)
            for number in sorted(path)
            if number >= start_number
        ]

    def describe_sources(self) -> str:
        counts: dict[str, int] = {}
        for copies in self.candidates.values():
            for copy in copies:
                counts[copy.source] = counts.get(copy.source, 0) + 1
        return ", ".join(f"{s.label} {counts.get(s.label, 0)}" for s in self.sources)


def _segments_in(source: WalSource) -> list[HeldSegment]:
    if not source.directory.is_dir():
        return []
    found = []
    for path in source.directory.iterdir():
        try:
            # The archive holds <segment>.zst; a pg_wal or the salvage folder plain files.
            segment = (
                wal.archived_segment(path.name)
                if source.restorable
                else wal.Segment.parse(path.name)
            )
        except ValueError:
            continue
        if not path.is_file():
            continue
        # The archive's files were complete when archived; a pg_wal file may be recycled
        # (renamed ahead, old pages inside) or freshly zeroed: not WAL.
        if not source.restorable and not wal.segment_header_matches(path, segment.number):
            continue
        found.append(HeldSegment(segment.number, segment.timeline, path, source.label))
    return found


def _histories_in(directory: Path) -> dict[int, Path]:
    found: dict[int, Path] = {}
    if not directory.is_dir():
        return found
    for path in directory.glob("*.history"):
        stem = path.name.removesuffix(".history")
        if len(stem) == 8:
            try:
                found[int(stem, 16)] = path
            except ValueError:
                continue
    return found


# --- salvaging ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SalvageReport:
    copied: list[str]
    improved: list[str]  # a longer copy of a segment salvaged earlier
    sources: list[str]

    def describe(self) -> str:
        if not (self.copied or self.improved):
            return f"nothing to salvage from {', '.join(self.sources) or 'nowhere'} (the archive has it all)"
        parts = []
        if self.copied:
            parts.append(
                f"salvaged {len(self.copied)} WAL file(s) the archive lacks ({_span(self.copied)})"
            )
        if self.improved:
            parts.append(f"replaced {len(self.improved)} earlier salvaged copy(ies) by longer ones")
        return "; ".join(parts) + f" from {', '.join(self.sources)}"

    def as_dict(self) -> dict[str, object]:
        return {"copied": self.copied, "improved": self.improved, "sources": self.sources}


def _span(names: list[str]) -> str:
    ordered = sorted(names)
    return ordered[0] if len(ordered) == 1 else f"{ordered[0]} .. {ordered[-1]}"


def salvage_wal(
    data_directories: list[tuple[str, Path]],
    archive: Path,
    *,
    os_user: str,
    bindir: Path = DEFAULT_BINDIR,
) -> SalvageReport:
    """Copy into the salvage folder every WAL segment (and timeline history) these data
    directories hold that the archive lacks. Idempotent; only copies.

    A segment already salvaged is replaced only by a copy whose valid records reach further
    (the earlier copy is kept beside it as ``<name>.superseded.<n>``, which restore_command
    never asks for). Copies land under a hidden name and are renamed into place, so a kill
    mid-copy never leaves a truncated segment where replay would read it.
    """
    salvage = salvage_dir_for(archive)
    sources = [WalSource.pg_wal(label, directory) for label, directory in data_directories]
    present = [s for s in sources if s.directory.is_dir()]
    archived = {wal.segment_name_of(p) for p in archive.iterdir()} if archive.is_dir() else set()
    copied: list[str] = []
    improved: list[str] = []
    if not present:
        return SalvageReport([], [], [])
    _ensure_salvage_dir(salvage, os_user)
    cache: dict[Path, wal.SegmentContents] = {}

    def contents(path: Path) -> wal.SegmentContents:
        if path not in cache:
            cache[path] = wal.read_segment(path, bindir)
        return cache[path]

    for source in present:
        for segment in sorted(_segments_in(source), key=lambda s: (s.timeline, s.number)):
            if segment.name in archived:
                continue
            destination = salvage / segment.name
            if destination.exists():
                if not contents(segment.path).reaches_further_than(contents(destination)):
                    continue
                _keep_superseded(destination)
                improved.append(segment.name)
            else:
                copied.append(segment.name)
            _copy_into(segment.path, destination, os_user)
            cache.pop(destination, None)
        for timeline, history in _histories_in(source.directory).items():
            name = _HISTORY_NAME.format(timeline)
            if name not in archived and not (salvage / name).exists():
                _copy_into(history, salvage / name, os_user)
                copied.append(name)
    report = SalvageReport(copied, improved, [s.label for s in present])
    log.info("%s", report.describe())
    return report


def _ensure_salvage_dir(salvage: Path, os_user: str) -> None:
    if salvage.is_dir():
        return
    salvage.mkdir(mode=0o750, parents=True, exist_ok=True)
    chown_tree(salvage, os_user, recursive=False)


def _keep_superseded(destination: Path) -> None:
    n = 1
    while destination.with_name(f"{destination.name}.superseded.{n}").exists():
        n += 1
    destination.rename(destination.with_name(f"{destination.name}.superseded.{n}"))


def _copy_into(source: Path, destination: Path, os_user: str) -> None:
    partial = destination.with_name(f".{destination.name}.salvaging")
    shutil.copyfile(source, partial)
    partial.chmod(0o600)
    chown_tree(partial, os_user, recursive=False)
    with partial.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, destination)


def archive_salvaged_history(
    data_directory: Path,
    archive: Path,
    *,
    os_user: str,
    bindir: Path = DEFAULT_BINDIR,
) -> list[str]:
    """After promotion: copy into the archive the salvaged segments the new timeline's
    history runs through, so the archive alone is continuous again (the WAL watch, the
    retention, the offsite copy and the next recovery read only the archive).

    Only segments strictly before a timeline switch point: replay read past them into the
    next segment, so they are complete - what the archiver would have stored had it been
    alive. The segment holding a switch point is archived by PostgreSQL itself, on the new
    timeline. Never overwrites: a name the archive has is left alone. Idempotent."""
    salvage = salvage_dir_for(archive)
    holdings = WalHoldings(
        [
            WalSource("archive", archive, restorable=True),
            WalSource("salvage", salvage, restorable=True),
            WalSource.pg_wal("recovered primary pg_wal", data_directory),
        ],
        bindir,
    )
    chain = holdings.chain()
    archived: list[str] = []
    for number, copies in sorted(holdings.path_segments().items()):
        timeline = wal.timeline_of_segment(chain, number)
        if timeline == chain[-1][0] or any(c.source == "archive" for c in copies):
            continue
        salvaged = [c for c in copies if c.source == "salvage"]
        if salvaged:
            _copy_into(salvaged[0].path, archive / salvaged[0].name, os_user)
            archived.append(salvaged[0].name)
    for timeline, _ in chain[:-1]:
        name = _HISTORY_NAME.format(timeline)
        if timeline > 1 and not (archive / name).exists() and (salvage / name).exists():
            _copy_into(salvage / name, archive / name, os_user)
            archived.append(name)
    if archived:
        log.info(
            "archived %d salvaged WAL file(s) the recovered timeline's history runs through: %s",
            len(archived),
            _span(archived),
        )
    return archived
