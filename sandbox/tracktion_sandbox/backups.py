"""The sandbox's first backups: one logical dump and one verified base backup.

Why at ``up`` time: every restore scenario needs something to restore from, and the DR
DAGs must be testable on a fresh sandbox without first running a backup DAG. Both are
taken once, when none exist yet, in the formats the recovery DAGs restore from:

* a **custom-format** ``pg_dump`` of ``tracktion`` (``pg_restore -j N`` can read it; a
  plain ``.sql`` file cannot be), with a ``.manifest.json`` sidecar holding exact row
  counts taken in the *same snapshot* as the dump (``pg_dump --snapshot`` on a snapshot
  exported by a REPEATABLE READ transaction we hold open), its size and sha256;
* a **plain-format** ``pg_basebackup`` with a SHA256 backup manifest, checked with
  ``pg_verifybackup`` (which in PostgreSQL 15 cannot check tar backups, hence plain),
  with a ``base_<ts>.backup_info.json`` sidecar beside the backup directory (not inside:
  a file pg_verifybackup does not know would fail verification).

Everything is written under a hidden temporary name and renamed into place after the
sidecar, so a listed dump or backup directory is always complete. Passwords travel only
in ``PGPASSWORD`` of the client's environment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tracktion_sandbox import pg
from tracktion_sandbox.layout import (
    APP_DATABASE,
    HOST,
    PRIMARY_PORT,
    REPLICATION_USER,
    SUPERUSER,
    SandboxLayout,
)
from tracktion_sandbox.secrets import SandboxSecrets

log = logging.getLogger(__name__)

DUMP_GLOB = "tracktion_*.dump"
BASE_GLOB = "base_*"
INFO_SUFFIX = ".backup_info.json"
ARCHIVE_WAIT_S = 30


def utc_stamp(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _remove_partials(folder: Path) -> None:
    """Drop leftovers of an interrupted run (hidden ``.*.partial`` names are only ours)."""
    for leftover in folder.glob(".*.partial"):
        log.warning("removing unfinished backup %s", leftover)
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()


def _client_env(password: str) -> dict[str, str]:
    return {**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "10"}


# --------------------------------------------------------------------------- logical dump


def _user_tables(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    rows = conn.execute(
        """
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg_toast%%' AND NOT c.relispartition
        ORDER BY 1, 2
        """
    ).fetchall()
    return [(schema, table) for schema, table in rows]


def _one(conn: psycopg.Connection[Any], query: str) -> str:
    row = conn.execute(query).fetchone()
    if row is None:
        raise RuntimeError(f"{query!r} returned no row")
    return str(row[0])


def _exact_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    counts = {}
    for schema, table in _user_tables(conn):
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
        ).fetchone()
        counts[f"{schema}.{table}"] = int(row[0]) if row else 0
    return counts


def take_logical_dump(layout: SandboxLayout, secrets: SandboxSecrets, bindir: Path) -> Path:
    """``pg_dump -Fc -Z 6`` of tracktion plus its manifest, counts from the same snapshot."""
    folder = layout.logical_dumps
    folder.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    name = f"{APP_DATABASE}_{utc_stamp(started)}.dump"
    final, partial = folder / name, folder / f".{name}.partial"
    log.info("taking logical dump %s", final)
    with pg.connect(
        PRIMARY_PORT, SUPERUSER, secrets.postgres_password, APP_DATABASE, autocommit=False
    ) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        snapshot = _one(conn, "SELECT pg_export_snapshot()")
        server_version = _one(conn, "SHOW server_version")
        counts = _exact_counts(conn)
        argv = [
            str(bindir / "pg_dump"),
            "--format=custom",
            "--compress=6",
            f"--snapshot={snapshot}",
            f"--file={partial}",
            f"--host={HOST}",
            f"--port={PRIMARY_PORT}",
            f"--username={SUPERUSER}",
            "--no-password",
            APP_DATABASE,
        ]
        pg.run(argv, what="pg_dump of tracktion", env=_client_env(secrets.postgres_password))
        conn.rollback()  # the snapshot may go now that pg_dump has it
    finished = datetime.now(UTC)
    manifest = {
        "database": APP_DATABASE,
        "format": "custom",
        "file": name,
        "started_at": _iso(started),
        "finished_at": _iso(finished),
        "size_bytes": partial.stat().st_size,
        "sha256": sha256_file(partial),
        "row_counts": counts,
        "server_version": server_version,
    }
    manifest_path = folder / f"{name}.manifest.json"
    _write_json_atomic(manifest_path, manifest)
    os.replace(partial, final)
    for path in (final, manifest_path):
        path.chmod(0o640)
        pg.chown_to_postgres(path)
    log.info("logical dump done: %d bytes, %d tables", manifest["size_bytes"], len(counts))
    return final


# --------------------------------------------------------------------------- base backup


def _parse_backup_label(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _label_time(value: str) -> str:
    """backup_label's 'START TIME: 2026-11-26 01:20:00 UTC' as ISO 8601."""
    moment = datetime.strptime(value.replace(" UTC", ""), "%Y-%m-%d %H:%M:%S")
    return _iso(moment.replace(tzinfo=UTC))


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def backup_info(backup_dir: Path, label: str, end_time: datetime) -> dict[str, Any]:
    """Describe a plain base backup from its backup_label and backup_manifest."""
    fields = _parse_backup_label((backup_dir / "backup_label").read_text())
    manifest = json.loads((backup_dir / "backup_manifest").read_text())
    wal_range = manifest["WAL-Ranges"][-1]
    start_lsn = re.match(r"\S+", fields["START WAL LOCATION"])
    return {
        "label": label,
        "directory": backup_dir.name,
        "format": "plain",
        "start_time": _label_time(fields["START TIME"]),
        "end_time": _iso(end_time),
        "start_lsn": start_lsn.group(0) if start_lsn else wal_range["Start-LSN"],
        "stop_lsn": wal_range["End-LSN"],
        "timeline": int(wal_range["Timeline"]),
        "checkpoint_lsn": fields.get("CHECKPOINT LOCATION"),
        "manifest_checksums": "SHA256",
        "verified": True,
        "size_bytes": _dir_size(backup_dir),
    }


def verify_base_backup(bindir: Path, backup_dir: Path) -> None:
    """pg_verifybackup: every file against the manifest, and the WAL needed to restore."""
    pg.run(
        [str(bindir / "pg_verifybackup"), str(backup_dir)], what=f"pg_verifybackup of {backup_dir}"
    )


def take_base_backup(layout: SandboxLayout, secrets: SandboxSecrets, bindir: Path) -> Path:
    """Plain-format base backup of the primary, verified, owned by postgres."""
    folder = layout.base_backups
    folder.mkdir(parents=True, exist_ok=True)
    stamp = utc_stamp()
    name = f"base_{stamp}"
    final, partial = folder / name, folder / f".{name}.partial"
    label = f"tracktion-sandbox-initial-{stamp}"
    log.info("taking base backup %s", final)
    argv = [
        str(bindir / "pg_basebackup"),
        f"--pgdata={partial}",
        "--format=plain",
        "--wal-method=stream",
        "--checkpoint=fast",
        "--manifest-checksums=SHA256",
        f"--label={label}",
        f"--host={HOST}",
        f"--port={PRIMARY_PORT}",
        f"--username={REPLICATION_USER}",
        "--no-password",
    ]
    pg.run(argv, what="pg_basebackup", env=_client_env(secrets.replication_password))
    end_time = datetime.now(UTC)
    verify_base_backup(bindir, partial)
    info = backup_info(partial, label, end_time)
    info["directory"] = name
    partial.chmod(0o700)  # a restored data directory must be 0700 for the server to start
    pg.chown_to_postgres(partial, recursive=True)
    info_path = folder / f"{name}{INFO_SUFFIX}"
    _write_json_atomic(info_path, info)
    pg.chown_to_postgres(info_path)
    os.replace(partial, final)
    log.info(
        "base backup verified: %s..%s, %d bytes",
        info["start_lsn"],
        info["stop_lsn"],
        info["size_bytes"],
    )
    return final


# --------------------------------------------------------------------------- WAL archive


def switch_and_wait_archived(
    secrets: SandboxSecrets, timeout: float = ARCHIVE_WAIT_S
) -> str | None:
    """Close the current WAL segment and wait until the archiver has stored it."""
    with pg.connect(PRIMARY_PORT, SUPERUSER, secrets.postgres_password, "postgres") as conn:
        row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
        segment = str(row[0]) if row else None
        deadline = time.monotonic() + timeout
        while segment and time.monotonic() < deadline:
            archived = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()
            if archived and archived[0] and archived[0] >= segment:
                return segment
            time.sleep(0.5)
    log.warning("WAL segment %s not archived within %.0f s: see pg_stat_archiver", segment, timeout)
    return None


def existing_backups(layout: SandboxLayout) -> dict[str, list[Path]]:
    dumps = sorted(layout.logical_dumps.glob(DUMP_GLOB)) if layout.logical_dumps.is_dir() else []
    bases = (
        sorted(p for p in layout.base_backups.glob(BASE_GLOB) if p.is_dir())
        if layout.base_backups.is_dir()
        else []
    )
    return {"logical_dumps": dumps, "base_backups": bases}


def take_initial_backups(layout: SandboxLayout, secrets: SandboxSecrets) -> dict[str, Any]:
    """Take the first dump and base backup, each only if none exists yet."""
    bindir = pg.find_bindir()
    for folder in (layout.logical_dumps, layout.base_backups):
        folder.mkdir(parents=True, exist_ok=True)
        _remove_partials(folder)
    found = existing_backups(layout)
    result: dict[str, Any] = {"created": []}
    if found["logical_dumps"]:
        result["logical_dump"] = str(found["logical_dumps"][-1])
    else:
        result["logical_dump"] = str(take_logical_dump(layout, secrets, bindir))
        result["created"].append("logical_dump")
    if found["base_backups"]:
        result["base_backup"] = str(found["base_backups"][-1])
    else:
        result["base_backup"] = str(take_base_backup(layout, secrets, bindir))
        result["created"].append("base_backup")
    if result["created"]:
        result["archived_segment"] = switch_and_wait_archived(secrets)
    else:
        log.info("initial backups already present: %s", found)
    return result
