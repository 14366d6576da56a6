"""The sandbox's first backups: one logical dump and one verified base backup.

Why at ``up`` time: every restore scenario needs something to restore from, and the DR
DAGs must be testable on a fresh sandbox without first running a backup DAG. Both are
taken once, when none exist yet, in the formats the recovery DAGs restore from:

* a **custom-format** ``pg_dump`` of ``tracktion`` (``pg_restore -j N`` can read it; a
  plain ``.sql`` file cannot be), with a ``.manifest.json`` sidecar holding exact row
  counts taken in the *same snapshot* as the dump (``pg_dump --snapshot`` on a snapshot
  exported by a REPEATABLE READ transaction we hold open), its size and sha256;
* a **compressed** ``pg_basebackup`` (tar, server-side zstd: the plan's default) with a
  SHA256 backup manifest, extracted into a scratch directory and checked there with
  ``pg_verifybackup`` (which in PostgreSQL 15 cannot read tar archives), with a
  ``base_<ts>.backup_info.json`` sidecar beside the backup directory (the sha256 of each
  archive, for cheap checks later).

Everything is written under a hidden temporary name and renamed into place after the
sidecar, so a listed dump or backup directory is always complete. Passwords travel only
in ``PGPASSWORD`` of the client's environment.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from tracktion_dr.postgres import basebackups, dumps
from tracktion_dr.postgres.commands import Endpoint
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
ARCHIVE_WAIT_S = 30


def _remove_partials(folder: Path) -> None:
    """Drop leftovers of an interrupted run (hidden ``.*.partial`` names are only ours)."""
    for leftover in folder.glob(".*.partial"):
        log.warning("removing unfinished backup %s", leftover)
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()


def take_logical_dump(layout: SandboxLayout, secrets: SandboxSecrets, bindir: Path) -> Path:
    """The library's ``pg_dump -Fc`` with manifest, as the recovery DAGs' backups take it."""
    endpoint = Endpoint(HOST, PRIMARY_PORT, SUPERUSER, secrets.postgres_password)
    return dumps.take_logical_dump(endpoint, APP_DATABASE, layout.logical_dumps, bindir=bindir)


def take_base_backup(layout: SandboxLayout, secrets: SandboxSecrets, bindir: Path) -> Path:
    """The library's verified base backup (compressed as the plan's default), owned by postgres."""
    endpoint = Endpoint(HOST, PRIMARY_PORT, REPLICATION_USER, secrets.replication_password)
    return basebackups.take_base_backup(
        endpoint, layout.base_backups, label_prefix="tracktion-sandbox-initial", bindir=bindir
    )


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
    dump_files = (
        sorted(layout.logical_dumps.glob(DUMP_GLOB)) if layout.logical_dumps.is_dir() else []
    )
    bases = (
        sorted(p for p in layout.base_backups.glob(BASE_GLOB) if p.is_dir())
        if layout.base_backups.is_dir()
        else []
    )
    return {"logical_dumps": dump_files, "base_backups": bases}


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
