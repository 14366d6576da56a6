"""Base backups: ``pg_basebackup`` with a backup manifest, verified before they are listed.

Compressed by default (the plan's ``backup_schedule.base_backup_compression``, e.g.
``server-zstd:level=3,workers=2``): ``base_<stamp>/`` then holds ``base.tar.zst``,
``pg_wal.tar.zst`` and ``backup_manifest``, about a fifth of the plain size. A recovery
hours after the backup (its files no longer in the page cache) is no slower than from a
plain one: the guard reads a fifth of the bytes, which pays for the extraction; with the
backup still cached, extracting costs about 1.5 s a GiB more than copying (measured:
``bench/results/backup_compression.md``). PostgreSQL 15's ``pg_verifybackup`` cannot read
tar archives, so a compressed backup is extracted into a scratch directory and verified
there before it is renamed into place; the sha256 of each of its files is recorded for
cheap checks later (``basebackup_format``). ``compression="none"`` takes the old plain
format: ``base_<stamp>/`` is exactly a data directory, and old plain backups keep working.

The description sits *beside* the backup (``base_<stamp>.backup_info.json``), because an
unknown file inside would fail ``pg_verifybackup``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tracktion_dr.core.plan import BackupSchedule
from tracktion_dr.postgres import basebackup_format
from tracktion_dr.postgres.basebackup_format import PLAIN, SCRATCH_PREFIX, Compression
from tracktion_dr.postgres.commands import DEFAULT_BINDIR, Endpoint, chown_tree, run
from tracktion_dr.postgres.dumps import utc_stamp, write_json_atomic

log = logging.getLogger(__name__)

INFO_SUFFIX = ".backup_info.json"
VERIFICATION_SUFFIX = ".verification.json"
BASE_NAME = re.compile(r"^base_\d{8}T\d{6}Z$")
# The plan's backup_schedule.base_backup_compression default (the measured choice:
# bench/results/backup_compression.md), for callers without a plan (the sandbox's first one).
DEFAULT_COMPRESSION = BackupSchedule.model_fields["base_backup_compression"].default
# The CLI that compresses pg_wal.tar afterwards: PostgreSQL 15 leaves the WAL streamed
# during a tar backup uncompressed with server- and client-side zstd and lz4 (measured).
_COMPRESS_FILE = {  # (program arguments, suffix); each removes the uncompressed file
    "zstd": (["zstd", "-q", "-3", "-T0", "--rm"], ".zst"),
    "lz4": (["lz4", "-q", "--rm"], ".lz4"),
    "gzip": (["gzip", "-q", "-c"], ".gz"),
}


def _parse_backup_label(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _label_time(value: str) -> str:
    """backup_label's ``START TIME: 2026-11-26 01:20:00 UTC`` as ISO 8601."""
    moment = datetime.strptime(value.replace(" UTC", ""), "%Y-%m-%d %H:%M:%S")
    return moment.replace(tzinfo=UTC).isoformat(timespec="seconds")


def directory_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def describe(backup_dir: Path, label: str, end_time: datetime) -> dict[str, Any]:
    """Describe a base backup from the backup_label and backup_manifest of its data
    directory (the plain backup itself, or a compressed one laid down for verification)."""
    fields = _parse_backup_label((backup_dir / "backup_label").read_text())
    manifest = json.loads((backup_dir / "backup_manifest").read_text())
    wal_range = manifest["WAL-Ranges"][-1]
    return {
        "label": label,
        "directory": backup_dir.name,
        "format": "plain",
        "start_time": _label_time(fields["START TIME"]),
        "end_time": end_time.isoformat(timespec="seconds"),
        "start_lsn": fields["START WAL LOCATION"].split()[0],
        "stop_lsn": wal_range["End-LSN"],
        "timeline": int(wal_range["Timeline"]),
        "checkpoint_lsn": fields.get("CHECKPOINT LOCATION"),
        "manifest_checksums": next(
            (f["Checksum-Algorithm"] for f in manifest["Files"] if "Checksum-Algorithm" in f),
            "NONE",
        ),
        "size_bytes": directory_size(backup_dir),
    }


def verify_base_backup(
    backup_dir: Path, *, bindir: Path = DEFAULT_BINDIR, os_user: str = "postgres"
) -> str:
    """The full check of a base backup, either format: ``pg_verifybackup`` of a plain one
    where it lies; a compressed one extracted into a scratch directory beside it, verified
    there, the scratch removed. Runs as the cluster's OS user (the backup is owned by it)."""
    if basebackup_format.backup_format(backup_dir) == PLAIN:
        return basebackup_format.verify_data_directory(backup_dir, bindir=bindir, os_user=os_user)
    return basebackup_format.verify_fully(backup_dir, bindir=bindir, os_user=os_user)


def take_base_backup(
    endpoint: Endpoint,
    destination: Path,
    *,
    label_prefix: str,
    bindir: Path = DEFAULT_BINDIR,
    os_user: str = "postgres",
    compression: str = DEFAULT_COMPRESSION,
    manifest_checksums: str | None = None,
) -> Path:
    """Base backup with streamed WAL, verified, owned by ``os_user``; returns its dir.

    ``endpoint`` must be a replication-capable role. ``compression``: ``none`` (plain) or
    a :class:`~tracktion_dr.postgres.basebackup_format.Compression` spec.
    ``manifest_checksums`` (what ``pg_verifybackup`` checks every file with): by default
    SHA256 for a plain backup, whose files nothing else protects, and CRC32C for a
    compressed one, whose archives carry a SHA256 recorded at backup time (and zstd's own
    frame checksums): inside them CRC32C only has to catch an extraction gone wrong, and
    checks a laid-down GiB in 0.45 s instead of 1.1 s (bench/results/backup_compression.md).
    """
    how = Compression.parse(compression)
    checksums = manifest_checksums or ("SHA256" if how.plain else "CRC32C")
    destination.mkdir(parents=True, exist_ok=True)
    stamp = utc_stamp()
    name = f"base_{stamp}"
    final, partial = destination / name, destination / f".{name}.partial"
    if final.exists():
        raise FileExistsError(f"{final} already exists (two base backups in the same second?)")
    label = f"{label_prefix}-{stamp}"
    log.info("taking base backup %s (%s)", final, how.spec)
    started = time.monotonic()
    run(
        [
            str(bindir / "pg_basebackup"),
            f"--pgdata={partial}",
            *how.pg_basebackup_args(),
            "--wal-method=stream",
            "--checkpoint=fast",
            f"--manifest-checksums={checksums}",
            f"--label={label}",
            *endpoint.client_args(),
        ],
        what="pg_basebackup",
        env=endpoint.client_env(),
    )
    end_time = datetime.now(UTC)
    taken = time.monotonic()
    partial.chmod(0o700)  # a restored data directory must be 0700 for the server to start
    if how.plain:
        chown_tree(partial, os_user)
        summary = verify_base_backup(partial, bindir=bindir, os_user=os_user)
        info = describe(partial, label, end_time)
    else:
        _compress_streamed_wal(partial, how)
        chown_tree(partial, os_user)
        checksums = basebackup_format.archive_checksums(partial)
        info, summary = _verify_and_describe_compressed(
            partial, destination / f"{SCRATCH_PREFIX}{name}", label, end_time, bindir, os_user
        )
        info.update(
            format=basebackup_format.TAR,
            compression=how.spec,
            archives=checksums,
            size_bytes=sum(c["bytes"] for c in checksums.values()),
        )
    info["directory"] = name
    info["seconds"] = {  # what the backup cost: evidence for the choice of compression
        "pg_basebackup": round(taken - started, 2),
        "verify": round(time.monotonic() - taken, 2),
    }
    write_json_atomic(destination / f"{name}{INFO_SUFFIX}", info)
    write_json_atomic(
        destination / f"{name}{VERIFICATION_SUFFIX}",
        {
            "status": "verified",
            "reason": summary,
            "checked_at": datetime.now(UTC).isoformat(),
            "check": "pg_verifybackup" if how.plain else "extract + pg_verifybackup",
        },
    )
    os.replace(partial, final)
    log.info(
        "base backup %s verified: %s..%s, %d bytes (%s)",
        name,
        info["start_lsn"],
        info["stop_lsn"],
        info["size_bytes"],
        how.spec,
    )
    return final


def _compress_streamed_wal(backup_dir: Path, how: Compression) -> None:
    """pg_wal.tar left uncompressed by pg_basebackup is compressed with the same
    algorithm's tool (it is not in backup_manifest's file list, so nothing else changes)."""
    wal_tar = backup_dir / basebackup_format.WAL_ARCHIVE_STEM
    if not (wal_tar.exists() and how.algorithm):
        return
    argv, suffix = _COMPRESS_FILE[how.algorithm]
    packed = wal_tar.with_name(wal_tar.name + suffix)
    if how.algorithm == "gzip":  # gzip writes beside the file only under its own name rules
        with packed.open("wb") as out:
            subprocess.run([*argv, str(wal_tar)], stdout=out, check=True, timeout=3600)
        wal_tar.unlink()
        return
    # An explicit output: lz4 given one file writes to stdout when that is not a terminal.
    output = ["-o", str(packed)] if how.algorithm == "zstd" else [str(packed)]
    run([*argv, str(wal_tar), *output], what=f"{how.algorithm} pg_wal.tar")


def _verify_and_describe_compressed(
    backup_dir: Path,
    scratch: Path,
    label: str,
    end_time: datetime,
    bindir: Path,
    os_user: str,
) -> tuple[dict[str, Any], str]:
    """Lay the new backup down in a scratch directory, ``pg_verifybackup`` it there and
    read its backup_label; the scratch is removed whatever happens."""
    basebackup_format.discard_scratch(scratch)
    try:
        staged = basebackup_format.stage_base_backup(backup_dir, scratch, bindir, os_user=os_user)
        info = describe(scratch, label, end_time)
        info["plain_bytes"] = staged["laid_down_bytes"]
    finally:
        basebackup_format.discard_scratch(scratch)
    return info, f"extracted and {staged['verified']}"
