"""Compressed backups without a server: the compression spec, the archive and restore
commands run by a real ``sh`` with the real ``zstd``, the WAL archive's readers on a mix of
``<segment>.zst`` and plain files, and the cheap check of a compressed base backup's
archives (the live ones - pg_basebackup, pg_verifybackup, PITR - are in
tests/integration/test_backup_compression.py)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tracktion_dr.backups import retention
from tracktion_dr.core.errors import CommandError, ValidationFailed
from tracktion_dr.core.plan import BackupSchedule
from tracktion_dr.postgres import basebackup_format as fmt
from tracktion_dr.postgres import basebackups, pitr, wal
from tracktion_dr.postgres.salvage import WalHoldings, WalSource, salvage_wal

SEGMENT = 16 * 1024 * 1024
OS_USER = __import__("pwd").getpwuid(os.getuid()).pw_name


def server_side(command: str, **values: str) -> int:
    """Run an archive/restore command as PostgreSQL would: %f, %p filled in, %% -> %."""
    for key, value in values.items():
        command = command.replace(f"%{key}", value)
    return subprocess.run(["sh", "-c", command.replace("%%", "%")]).returncode


def segment_bytes(number: int, fill: bytes = b"\x00") -> bytes:
    """A segment-sized file whose first page names ``number`` (what pg_wal holds)."""
    import struct

    header = struct.pack("<HHIQI", 0xD110, 2, 1, number * SEGMENT, 0)
    return header + os.urandom(4096) + fill * (SEGMENT - len(header) - 4096)


# --- the compression spec -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "args"),
    [
        ("none", ["--format=plain"]),
        (
            "server-zstd:level=3,workers=2",
            ["--format=tar", "--compress=server-zstd:level=3,workers=2"],
        ),
        ("client-lz4", ["--format=tar", "--compress=client-lz4"]),
    ],
)
def test_compression_specs_become_pg_basebackup_arguments(spec, args):
    assert fmt.Compression.parse(spec).pg_basebackup_args() == args


@pytest.mark.parametrize("spec", ["zstd", "server-xz", "server-zstd:level=3;rm -rf /", ""])
def test_a_bad_compression_is_refused_by_the_plan_and_the_library(spec):
    with pytest.raises(ValueError, match="base backup compression|pattern"):
        fmt.Compression.parse(spec)
    with pytest.raises(ValueError, match="base_backup_compression"):
        BackupSchedule(base_backup_compression=spec)


@pytest.mark.parametrize(
    ("algorithm", "suffix"), [("zstd", ".zst"), ("lz4", ".lz4"), ("gzip", ".gz")]
)
def test_the_wal_streamed_during_a_backup_is_compressed_with_the_same_tool(
    tmp_path, algorithm, suffix
):
    """PostgreSQL 15 leaves pg_wal.tar uncompressed: compressed afterwards, readable by the
    program the lay-down extracts it with."""
    (tmp_path / "pg_wal.tar").write_bytes(b"\0" * 100_000)
    basebackups._compress_streamed_wal(tmp_path, fmt.Compression.parse(f"server-{algorithm}"))
    assert [p.name for p in tmp_path.iterdir()] == [f"pg_wal.tar{suffix}"]
    program = fmt.DECOMPRESSORS[suffix]
    out = subprocess.run(
        [program, "-dc", str(tmp_path / f"pg_wal.tar{suffix}")], capture_output=True
    )
    assert out.stdout == b"\0" * 100_000


# --- archive_command and restore_command ----------------------------------------------------


def test_segments_are_archived_compressed_and_restored_byte_for_byte(tmp_path):
    archive, pg_wal, salvage = tmp_path / "wal archive", tmp_path / "pg_wal", tmp_path / "s"
    for folder in (archive, pg_wal, salvage):
        folder.mkdir()
    name = wal.Segment.from_number(0x42).name()
    (pg_wal / name).write_bytes(segment_bytes(0x42))
    (pg_wal / "00000002.history").write_text("1\t0/42000000\tno recovery target specified\n")
    archive_command = wal.archive_command(archive)

    assert server_side(archive_command, f=name, p=str(pg_wal / name)) == 0
    assert server_side(archive_command, f=name, p=str(pg_wal / name)) == 0  # resent: same
    history = str(pg_wal / "00000002.history")
    assert server_side(archive_command, f="00000002.history", p=history) == 0
    assert sorted(p.name for p in archive.iterdir()) == [f"{name}.zst", "00000002.history"]
    assert (archive / f"{name}.zst").stat().st_size < SEGMENT // 100  # mostly zeros
    other = tmp_path / "other"
    other.write_bytes(segment_bytes(0x42))
    assert server_side(archive_command, f=name, p=str(other)) != 0, "never overwritten"

    restore_command = pitr.restore_command_for(archive, salvage)
    assert server_side(restore_command, f=name, p=str(tmp_path / "RECOVERYXLOG")) == 0
    assert (tmp_path / "RECOVERYXLOG").read_bytes() == (pg_wal / name).read_bytes()
    assert server_side(restore_command, f="00000002.history", p=str(tmp_path / "h")) == 0
    only_salvaged = wal.Segment.from_number(0x43).name()
    (salvage / only_salvaged).write_bytes(b"salvaged")
    assert server_side(restore_command, f=only_salvaged, p=str(tmp_path / "x")) == 0
    assert (tmp_path / "x").read_bytes() == b"salvaged"
    missing = wal.Segment.from_number(0x44).name()
    assert server_side(restore_command, f=missing, p=str(tmp_path / "y")) != 0


def test_a_changed_byte_in_an_archived_segment_fails_the_restore(tmp_path):
    archive, pg_wal = tmp_path / "a", tmp_path / "pg_wal"
    archive.mkdir()
    pg_wal.mkdir()
    name = wal.Segment.from_number(7).name()
    (pg_wal / name).write_bytes(segment_bytes(7))
    assert server_side(wal.archive_command(archive), f=name, p=str(pg_wal / name)) == 0
    packed = archive / f"{name}.zst"
    data = bytearray(packed.read_bytes())
    data[len(data) // 2] ^= 0xFF
    packed.write_bytes(bytes(data))
    restore = pitr.restore_command_for(archive)
    assert server_side(restore, f=name, p=str(tmp_path / "RECOVERYXLOG")) != 0
    with pytest.raises(CommandError, match="zstd -d"):
        wal.decompress_segment(packed, tmp_path / "out")


# --- readers of a mixed archive -------------------------------------------------------------


def mixed_archive(folder: Path) -> Path:
    """Segments 1-2 plain (archived before compression), 3-5 compressed."""
    folder.mkdir(parents=True)
    for number in range(1, 6):
        path = folder / wal.Segment.from_number(number).name()
        path.write_bytes(segment_bytes(number))
        if number >= 3:
            subprocess.run(["zstd", "-q", "--rm", str(path), "-o", f"{path}.zst"], check=True)
    (folder / "000000010000000000000002.00000028.backup").write_text("label")
    return folder


def test_the_archive_is_read_the_same_compressed_or_plain(tmp_path):
    archive = mixed_archive(tmp_path / "archive")
    files = wal.list_segments(archive)
    assert sorted(files) == [1, 2, 3, 4, 5]
    assert files[4].name == "000000010000000000000004.zst"
    state = wal.archive_state(archive, since=wal.Segment.from_number(1))
    assert state.continuous and state.last == "000000010000000000000005.zst"
    (archive / "000000010000000000000004.zst").rename(tmp_path / "hidden")
    assert wal.archive_state(archive).missing == ["000000010000000000000004"]
    (tmp_path / "hidden").rename(archive / "000000010000000000000004.zst")
    assert wal.archived_file(archive, "000000010000000000000004") == files[4]
    assert wal.archived_file(archive, "000000010000000000000009") is None

    with wal.readable_segments([files[2], files[3]]) as readable:
        assert [p.name for p in readable] == [
            "000000010000000000000002",
            "000000010000000000000003",
        ]
        assert readable[0].parent == readable[1].parent  # pg_waldump --path reads one folder
        assert readable[1].read_bytes()[:20] == segment_bytes(3)[:20]
        scratch = readable[0].parent
    assert not scratch.exists(), "decompressed copies are removed"


def test_holdings_and_salvage_see_a_compressed_segment_as_archived(tmp_path):
    archive = mixed_archive(tmp_path / "archive")
    old_primary = tmp_path / "primary.pre_x"
    (old_primary / "pg_wal").mkdir(parents=True)
    for number in (4, 5, 6):  # 4 and 5 archived (compressed), 6 only here
        name = wal.Segment.from_number(number).name()
        (old_primary / "pg_wal" / name).write_bytes(segment_bytes(number))
    holdings = WalHoldings([WalSource("archive", archive, restorable=True)])
    assert holdings.missing(1) == []
    assert holdings.best(4).name == "000000010000000000000004"
    report = salvage_wal([("old primary", old_primary)], archive, os_user=OS_USER)
    assert report.copied == ["000000010000000000000006"]


def test_restore_points_are_read_in_overlapping_pieces():
    files = [Path(f"/a/{wal.Segment.from_number(n).name()}.zst") for n in range(70)]
    pieces = wal._chunks(files)
    assert [len(p) for p in pieces] == [32, 32, 8]
    assert pieces[1][0] == pieces[0][-1] and pieces[2][0] == pieces[1][-1]
    assert wal._chunks(files[:5]) == [files[:5]]


def test_retention_counts_compressed_segments():
    segment = retention._segment_of("00000001000000000000002A.zst")
    assert segment is not None and segment.number == 0x2A
    assert retention._segment_of("00000001000000000000002A.00000028.backup").number == 0x2A
    assert retention._segment_of(".00000001000000000000002A.zst.partial") is None
    assert retention._segment_of("00000002.history") is None


# --- the cheap check of a compressed base backup ---------------------------------------------


def tar_backup(folder: Path) -> dict:
    folder.mkdir()
    (folder / "base.tar.zst").write_bytes(os.urandom(5000))
    (folder / "pg_wal.tar.zst").write_bytes(os.urandom(300))
    (folder / "backup_manifest").write_text(json.dumps({"Files": []}))
    return fmt.archive_checksums(folder)


def test_a_changed_byte_in_an_archive_is_named(tmp_path):
    backup = tmp_path / "base_20261127T010000Z"
    recorded = tar_backup(backup)
    assert fmt.backup_format(backup) == fmt.TAR
    assert "sha256 of 3 file(s) match" in fmt.check_archives(backup, recorded)
    data = bytearray((backup / "base.tar.zst").read_bytes())
    data[1234] ^= 0x01
    (backup / "base.tar.zst").write_bytes(bytes(data))
    with pytest.raises(ValidationFailed, match=r"base_20261127T010000Z/base.tar.zst: sha256"):
        fmt.check_archives(backup, recorded)


def test_a_missing_or_added_archive_is_named(tmp_path):
    backup = tmp_path / "base_20261127T010000Z"
    recorded = tar_backup(backup)
    (backup / "pg_wal.tar.zst").rename(tmp_path / "gone")
    with pytest.raises(ValidationFailed, match="pg_wal.tar.zst is missing"):
        fmt.check_archives(backup, recorded)
    (tmp_path / "gone").rename(backup / "pg_wal.tar.zst")
    (backup / "extra").write_text("x")
    with pytest.raises(ValidationFailed, match="extra was not part of the backup"):
        fmt.check_archives(backup, recorded)
    with pytest.raises(ValidationFailed, match="no archive checksums"):
        fmt.check_archives(backup, None)


def test_staging_refuses_a_directory_that_is_not_empty(tmp_path):
    backup = tmp_path / "base_20261127T010000Z"
    tar_backup(backup)
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "PG_VERSION").write_text("15")
    with pytest.raises(ValidationFailed, match="not empty"):
        fmt.stage_base_backup(backup, staging, os_user=OS_USER)


def _tar_zst(path: Path, members: dict[str, bytes | None]) -> None:
    """A zstd tar with these members in this order (None: a directory)."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o700
                archive.addfile(info)
            else:
                info.size, info.mode = len(data), 0o600
                archive.addfile(info, io.BytesIO(data))
    packed = subprocess.run(
        ["zstd", "-q", "-c"], input=buffer.getvalue(), capture_output=True, check=True
    )
    path.write_bytes(packed.stdout)


def test_the_wal_archive_is_laid_down_into_the_directories_the_base_archive_makes(tmp_path):
    """pg_wal.tar holds archive_status/<name>.done with no directory entry before it: it
    must land in the pg_wal/archive_status base.tar makes (measured: extracted at the same
    time, the WAL archive's tar ran first and failed)."""
    backup = tmp_path / "base_20261127T010000Z"
    backup.mkdir()
    _tar_zst(
        backup / "base.tar.zst",
        {"PG_VERSION": b"15\n", "pg_wal": None, "pg_wal/archive_status": None},
    )
    _tar_zst(
        backup / "pg_wal.tar.zst",
        {
            "000000010000000000000007": b"w" * 1000,
            "archive_status/00000039.history.done": b"",
        },
    )
    staging = tmp_path / "staging"
    staging.mkdir()
    fmt._extract_tar_backup(
        backup / "base.tar.zst", backup / "pg_wal.tar.zst", staging, OS_USER, 60
    )
    assert (staging / "PG_VERSION").read_bytes() == b"15\n"
    assert (staging / "pg_wal" / "000000010000000000000007").stat().st_size == 1000
    assert (staging / "pg_wal" / "archive_status" / "00000039.history.done").exists()


def test_a_path_pg_verifybackup_would_hand_to_a_shell_is_refused_first(tmp_path):
    backup = tmp_path / "base_20261127T010000Z"
    tar_backup(backup)
    staging = tmp_path / ".primary.restoring_`touch x`"
    with pytest.raises(ValidationFailed, match="which pg_verifybackup would hand to a shell"):
        fmt.stage_base_backup(backup, staging, os_user=OS_USER)
    assert not staging.exists() and not (tmp_path / "x").exists()


def test_scratch_directories_are_only_ever_verification_scratch(tmp_path):
    with pytest.raises(ValueError, match="not a verification scratch"):
        fmt.discard_scratch(tmp_path / "base_20261127T010000Z")
    scratch = tmp_path / f"{fmt.SCRATCH_PREFIX}base_x"
    scratch.mkdir()
    fmt.discard_scratch(scratch)
    assert not scratch.exists()
