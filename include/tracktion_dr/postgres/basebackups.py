"""Base backups: ``pg_basebackup`` in plain format with a SHA256 manifest, verified.

Plain format because PostgreSQL 15's ``pg_verifybackup`` cannot check tar backups, and a
backup that cannot be verified is not one we will restore from. ``base_<stamp>/`` is
exactly a data directory; its description sits *beside* it
(``base_<stamp>.backup_info.json``), because an unknown file inside would fail
``pg_verifybackup``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tracktion_dr.postgres.commands import DEFAULT_BINDIR, Endpoint, as_os_user, chown_tree, run
from tracktion_dr.postgres.dumps import utc_stamp, write_json_atomic

log = logging.getLogger(__name__)

INFO_SUFFIX = ".backup_info.json"
VERIFICATION_SUFFIX = ".verification.json"
BASE_NAME = re.compile(r"^base_\d{8}T\d{6}Z$")


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
    """Describe a plain base backup from its backup_label and backup_manifest."""
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
        "manifest_checksums": "SHA256",
        "size_bytes": directory_size(backup_dir),
    }


def verify_base_backup(
    backup_dir: Path, *, bindir: Path = DEFAULT_BINDIR, os_user: str = "postgres"
) -> str:
    """``pg_verifybackup``: every file against the manifest, and the WAL it needs.

    Runs as the cluster's OS user: the backup is a 0700 data directory owned by it.
    """
    result = run(
        as_os_user([str(bindir / "pg_verifybackup"), str(backup_dir)], os_user),
        what=f"pg_verifybackup of {backup_dir.name}",
    )
    return result.stdout.strip() or "backup successfully verified"


def take_base_backup(
    endpoint: Endpoint,
    destination: Path,
    *,
    label_prefix: str,
    bindir: Path = DEFAULT_BINDIR,
    os_user: str = "postgres",
) -> Path:
    """Plain base backup with streamed WAL, verified, owned by ``os_user``; returns its dir.

    ``endpoint`` must be a replication-capable role.
    """
    destination.mkdir(parents=True, exist_ok=True)
    stamp = utc_stamp()
    name = f"base_{stamp}"
    final, partial = destination / name, destination / f".{name}.partial"
    if final.exists():
        raise FileExistsError(f"{final} already exists (two base backups in the same second?)")
    label = f"{label_prefix}-{stamp}"
    log.info("taking base backup %s", final)
    run(
        [
            str(bindir / "pg_basebackup"),
            f"--pgdata={partial}",
            "--format=plain",
            "--wal-method=stream",
            "--checkpoint=fast",
            "--manifest-checksums=SHA256",
            f"--label={label}",
            *endpoint.client_args(),
        ],
        what="pg_basebackup",
        env=endpoint.client_env(),
    )
    end_time = datetime.now(UTC)
    partial.chmod(0o700)  # a restored data directory must be 0700 for the server to start
    chown_tree(partial, os_user)
    summary = verify_base_backup(partial, bindir=bindir, os_user=os_user)
    info = describe(partial, label, end_time)
    info["directory"] = name
    write_json_atomic(destination / f"{name}{INFO_SUFFIX}", info)
    write_json_atomic(
        destination / f"{name}{VERIFICATION_SUFFIX}",
        {
            "status": "verified",
            "reason": summary,
            "checked_at": datetime.now(UTC).isoformat(),
            "check": "pg_verifybackup",
        },
    )
    os.replace(partial, final)
    log.info(
        "base backup %s verified: %s..%s, %d bytes",
        name,
        info["start_lsn"],
        info["stop_lsn"],
        info["size_bytes"],
    )
    return final
