"""Rebuild a former primary as a standby of the new one, and the planned switchover back.

After a failover the old primary is fenced (``standby.signal``, ``DR_FENCED``) and holds
the old timeline, possibly with transactions the promoted standby never received. It is
made a standby of the new primary again:

* **pg_rewind** when it can work: the directory is the same cluster as the new primary
  (system identifier), and hint bits are WAL-logged (data checksums or
  ``wal_log_hints``) - pg_rewind refuses otherwise. It copies only what changed since the
  timelines diverged, so it is much faster than a full copy.
* **a fresh base backup** otherwise, or when pg_rewind fails (``postgres.replica``'s
  re-seed code: ``pg_basebackup -R`` into a staging directory named for the incident).

Nothing is ever discarded: the old directory's WAL the archive lacks is salvaged, then
the directory is moved aside (``<dir>.pre_<tag>``, kept: it holds the rows the failover
lost, the evidence of what was lost). pg_rewind works on a *copy* of it in a staging
directory named for the incident (``.<dir>.rewind_<tag>``), so a rewind killed half-way
leaves nothing broken that a re-run cannot discard and redo. The standby settings
(``standby.signal``, ``primary_conninfo`` to the new primary, its replication slot, its own
port, a ``restore_command`` reading the WAL archive when this host has it) and this
incident's recovery marker are written into the staging copy before it is renamed into
place; then it is started (the plan's ``control``) and waited for until it streams on the
new primary's timeline (asked of both ends). A rewound copy replays from the last
checkpoint before the timelines diverged: WAL the new primary may have recycled since the
failover. The archive has it; when it does not either (not on this host), the copy can
never catch up and is replaced by a fresh base backup.

Resumable like the re-seed: a node that already streams from the new primary is left
alone; one that is this incident's rebuilt standby is only started; the original
directory is moved aside once; a staging directory of this incident is discarded.

The planned **switchover** (zero data loss, in a maintenance window) is here too, as
separate steps: :func:`switchover_preconditions` (refused before touching anything when
the standby does not stream or cannot catch up), :func:`stop_writes` (the primary made
read-only and its client sessions ended), :func:`wait_caught_up` (the standby has replayed
exactly the primary's current LSN), :func:`shut_down_cleanly` (a clean shutdown; its
shutdown checkpoint must reach the standby) and :func:`promote`; the old primary is then
rebuilt with :func:`rebuild_as_standby` (after a clean shutdown pg_rewind has nothing to
undo, which it says).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from tracktion_dr.core.errors import CommandError, FailoverRefused, StepFailed, WalUnavailable
from tracktion_dr.postgres.commands import DEFAULT_BINDIR, Endpoint, as_os_user, chown_tree, run
from tracktion_dr.postgres.control import ClusterControl
from tracktion_dr.postgres.identity import directory_identity, parse_controldata, server_identity
from tracktion_dr.postgres.pitr import (
    aside_path,
    clear_recovery_settings,
    restore_command_for,
    start_server,
    stop_server,
)
from tracktion_dr.postgres.recovery_marker import (
    RecoveryMarker,
    last_fatal_line,
    postmaster_pid,
    read_marker,
    write_marker,
)
from tracktion_dr.postgres.replica import SLOT, _clone_primary, standby_streaming
from tracktion_dr.postgres.salvage import salvage_wal

log = logging.getLogger(__name__)

STREAM_WAIT_SECONDS = 120
CATCH_UP_SECONDS = 60
POLL_SECONDS = 0.2
TIMELINE_FIELD = "Latest checkpoint's TimeLineID"  # pg_controldata's
FENCE_NOTE = "DR_FENCED"  # services.failover's; services is a higher layer, so repeated
# Files of the old directory that must not reach the rewound copy: a stale pid file, the
# fence (the rebuilt node is a standby by its own settings), recovery signals (pg_rewind's
# crash recovery of a not-cleanly-stopped copy runs in single-user mode, which refuses
# standby mode).
STALE_IN_COPY = ("postmaster.pid", "standby.signal", "recovery.signal", FENCE_NOTE)


@dataclass(frozen=True)
class Node:
    """One of the cluster's two database nodes, named as the plan and the balancer name it
    (``primary``: the cluster's ``conn_id`` / ``data_directory``; ``replica``: its
    ``replica_*``). The role moves between them; the names do not. A standby announces
    its node's name as ``application_name``. Endpoints hold passwords: never log them."""

    name: str
    admin: Endpoint  # a superuser on this node
    replication: Endpoint  # the replication role on this node
    control: ClusterControl  # its data directory and how its host starts it

    @property
    def data_directory(self) -> Path:
        return self.control.data_directory


def node_role(node: Node, timeout: float = 5) -> tuple[str, str]:
    """("primary" | "standby" | "down", what it said)."""
    try:
        identity = server_identity(node.admin.conninfo("postgres"), timeout)
    except psycopg.Error as exc:
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        return "down", (lines[-1] if lines else type(exc).__name__)[:160]
    role = "standby" if identity.in_recovery else "primary"
    return role, f"{node.name}: {identity.describe()}"


# --- rebuild ---------------------------------------------------------------------------


def rewind_staging_path(data_directory: Path, tag: str) -> Path:
    return data_directory.with_name(f".{data_directory.name}.rewind_{tag}")


def controldata(data_directory: Path, bindir: Path, os_user: str) -> dict[str, str]:
    result = run(
        as_os_user([str(bindir / "pg_controldata"), str(data_directory)], os_user),
        what=f"pg_controldata {data_directory}",
        env={**os.environ, "LC_ALL": "C"},
        timeout=30,
    )
    return parse_controldata(result.stdout)


def rewind_possible(
    old_directory: Path, system_identifier: str, bindir: Path, os_user: str
) -> tuple[bool, str]:
    """Can pg_rewind make ``old_directory`` follow the new primary? (possible?, why)."""
    if not (old_directory / "global" / "pg_control").is_file():
        return False, f"{old_directory} holds no cluster"
    fields = controldata(old_directory, bindir, os_user)
    if fields.get("Database system identifier") != system_identifier:
        return False, (
            f"{old_directory} is another cluster (system identifier "
            f"{fields.get('Database system identifier')}, the new primary's is {system_identifier})"
        )
    checksums = fields.get("Data page checksum version", "0") != "0"
    hints = fields.get("wal_log_hints setting") == "on"
    if not (checksums or hints):
        return False, "neither data checksums nor wal_log_hints are on: pg_rewind cannot work"
    return True, (
        f"same cluster, {'data checksums' if checksums else 'wal_log_hints'} on, timeline "
        f"{fields.get(TIMELINE_FIELD)}, state "
        f"{fields.get('Database cluster state')!r}"
    )


def _conf_value(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


# Settings a rebuilt standby must not keep: a switchover's write stop (ALTER SYSTEM on the
# old primary) would make it read-only again the day it is promoted (pg_rewind leaves the
# target's files alone when there is nothing to rewind).
DROPPED_FROM_STANDBY = ("default_transaction_read_only",)


def set_auto_conf(
    data_directory: Path, settings: dict[str, str], *, drop: tuple[str, ...] = ()
) -> None:
    """Set ``settings`` in ``postgresql.auto.conf``: earlier lines for the same keys (and
    the keys in ``drop``) go - the copy came from the new primary and names *its* former
    upstream -, the new values are appended. Keeps the file's owner and mode."""
    path = data_directory / "postgresql.auto.conf"
    text = path.read_text() if path.exists() else ""
    keys = {key.lower() for key in (*settings, *drop)}
    kept = [
        line
        for line in text.splitlines()
        if line.split("=", 1)[0].strip().lower() not in keys or line.lstrip().startswith("#")
    ]
    kept += [f"{key} = {_conf_value(value)}" for key, value in settings.items()]
    path.write_text("\n".join(kept) + "\n")


def standby_settings(
    new_primary: Node, standby_name: str, standby_port: int, wal_archive: Path | None = None
) -> dict[str, str]:
    """What makes a directory a standby of ``new_primary`` (the conninfo holds the
    replication password, as ``pg_basebackup -R`` writes it: the file is 0600), and with
    ``wal_archive`` a ``restore_command`` reading it: a rewound standby replays from the
    last checkpoint before the timelines diverged, and the new primary may have recycled
    that WAL since the failover (archived first: the archive still has it)."""
    upstream = new_primary.replication
    archive = {"restore_command": restore_command_for(wal_archive)} if wal_archive else {}
    return {
        "port": str(int(standby_port)),
        "primary_conninfo": make_conninfo(
            host=upstream.host,
            port=str(upstream.port),
            user=upstream.user,
            password=upstream.password,
            application_name=standby_name,
            connect_timeout="10",
        ),
        "primary_slot_name": SLOT,
        "recovery_target_timeline": "latest",
        **archive,
    }


def ensure_slot(admin: Endpoint, slot: str = SLOT) -> str:
    """The physical slot the standby streams through, on the new primary (slots are not
    copied by pg_basebackup or pg_rewind, and a promoted standby had none)."""
    with psycopg.connect(admin.conninfo("postgres"), connect_timeout=10, autocommit=True) as conn:
        row = conn.execute(
            "SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
        if row is not None:
            return f"slot {slot} exists"
        conn.execute("SELECT pg_catalog.pg_create_physical_replication_slot(%s, true)", (slot,))
    return f"created slot {slot} on the new primary"


def _copy_tree(source: Path, destination: Path) -> None:
    """A full copy keeping owners and modes (reflinks where the filesystem has them)."""
    run(
        ["cp", "-a", "--reflink=auto", str(source), str(destination)],
        what=f"copy of {source} for pg_rewind",
        timeout=3600,
    )


def rewind_into_staging(
    kept: Path,
    staging: Path,
    source_admin: Endpoint,
    *,
    os_user: str,
    bindir: Path,
) -> str:
    """Copy the kept old directory into ``staging`` and pg_rewind the copy from the new
    primary. Raises ``CommandError`` (the caller falls back to a base backup)."""
    if staging.exists():
        log.info("discarding this incident's own half-rewound copy %s", staging)
        shutil.rmtree(staging)
    _copy_tree(kept, staging)
    for name in STALE_IN_COPY:
        (staging / name).unlink(missing_ok=True)
    result = run(
        as_os_user(
            [
                str(bindir / "pg_rewind"),
                f"--target-pgdata={staging}",
                "--source-server="
                + make_conninfo(
                    host=source_admin.host,
                    port=str(source_admin.port),
                    user=source_admin.user,
                    dbname="postgres",
                    connect_timeout="10",
                ),
            ],
            os_user,
        ),
        what="pg_rewind of the old primary's copy",
        env=source_admin.client_env(),
        cwd=staging.parent,
        timeout=3600,
    )
    said = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return said[-1] if said else "pg_rewind done"


def _make_standby(
    staging: Path,
    new_primary: Node,
    old: Node,
    *,
    tag: str,
    incident_id: str,
    cluster_name: str,
    how: str,
    wal_archive: Path | None,
) -> None:
    """Standby settings and this incident's marker into ``staging``, then rename it in."""
    clear_recovery_settings(staging, None)
    _drop_copied_slots(staging)
    set_auto_conf(
        staging,
        standby_settings(new_primary, old.name, old.admin.port, wal_archive),
        drop=DROPPED_FROM_STANDBY,
    )
    (staging / "standby.signal").write_text("")
    copied = read_marker(staging)
    marker = (
        replace(copied, role="standby", incident_id=incident_id, tag=tag, base_backup=how)
        if copied
        else RecoveryMarker(
            incident_id=incident_id,
            cluster=cluster_name,
            tag=tag,
            target={},
            base_backup=how,
            base_start_lsn=None,
            role="standby",
        )
    )
    write_marker(staging, marker, old.control.os_user)
    staging.chmod(0o700)
    chown_tree(staging, old.control.os_user)
    staging.rename(old.data_directory)


def _drop_copied_slots(staging: Path) -> None:
    """The replication slots of the copy's primary days (pg_rewind removes them, except when
    there is nothing to rewind): a standby would keep WAL for them that no one reads, and a
    later promotion would start with them. The kept original still has them."""
    slots = staging / "pg_replslot"
    for slot in sorted(slots.iterdir()) if slots.is_dir() else []:
        if slot.is_dir():
            log.info("dropping the copied replication slot %s from %s", slot.name, staging)
            shutil.rmtree(slot)


def _move_old_aside(old: Node, aside: Path, wal_archive: Path, bindir: Path) -> list[str]:
    """Salvage its WAL the archive lacks, stop it, move it aside (kept)."""
    data = old.data_directory
    if aside.exists():
        # Only a person can tell which of the two to keep: refused, never retried.
        raise FailoverRefused(
            f"{data} is not this incident's rebuilt standby, and this incident's kept copy "
            f"{aside} already exists: nothing was touched",
            hint="compare the two, move one away by hand, then re-run the same incident",
        )
    found = directory_identity(data, bindir=bindir, os_user=old.control.os_user)
    if found is not None and found.postmaster_started is not None and not found.in_recovery:
        raise FailoverRefused(
            f"{data} runs as a writable primary ({found.describe()}): rebuilding it would "
            "throw away a live primary",
            hint="fence it first (dr_failover fences the old primary), or switch over "
            "(dr_switchover) if it is the primary you mean to keep",
        )
    notes = [
        salvage_wal(
            [("old primary", data)], wal_archive, os_user=old.control.os_user, bindir=bindir
        ).describe()
    ]
    notes.append(stop_server(old.control))
    data.rename(aside)
    notes.append(f"old data directory kept at {aside}")
    return notes


def rebuild_as_standby(
    new_primary: Node,
    old: Node,
    log_file: Path,
    *,
    tag: str,
    incident_id: str,
    cluster_name: str,
    wal_archive: Path,
    bindir: Path = DEFAULT_BINDIR,
    prefer_rewind: bool = True,
    stream_wait_seconds: float = STREAM_WAIT_SECONDS,
) -> dict[str, Any]:
    """Make ``old`` a streaming standby of ``new_primary`` (see the module doc). Returns
    ``{"detail", "method"}``; method is ``none`` (already streaming), ``started`` (already
    rebuilt by this incident), ``pg_rewind`` or ``pg_basebackup``."""
    streaming, why = standby_streaming(new_primary.admin, old.admin, old.name)
    if streaming:
        return {"detail": f"nothing to do: {why}", "method": "none"}
    role, said = node_role(new_primary)
    if role != "primary":
        raise FailoverRefused(
            f"the node to follow, {new_primary.name}, is not a writable primary ({said}): "
            "nothing was touched",
            hint="fail over first (dr_failover target=database), then rebuild",
        )
    data = old.data_directory
    aside = aside_path(data, tag)
    notes = [why]
    readable_archive = _archive_readable_here(wal_archive, notes)
    since = 0
    if rebuilt_by(data, incident_id):
        notes.append(f"{data} is already this incident's rebuilt standby")
        method = "started"
        if postmaster_pid(data) is None:
            since = _log_size(log_file)
            start_server(old.control, log_file)
            notes.append("started it")
    else:
        if data.exists():
            notes += _move_old_aside(old, aside, wal_archive, bindir)
        elif aside.exists():
            notes.append(f"old data directory already kept at {aside}")
        method = _lay_down_standby(
            new_primary,
            old,
            aside,
            notes,
            tag=tag,
            incident_id=incident_id,
            cluster_name=cluster_name,
            bindir=bindir,
            prefer_rewind=prefer_rewind,
            wal_archive=readable_archive,
        )
        since = _start_standby(new_primary, old, log_file, notes)
    try:
        wait_streaming(new_primary, old, log_file, stream_wait_seconds, log_offset=since)
    except WalUnavailable as exc:
        if method == "pg_basebackup":
            raise
        # The rewound copy can never catch up; a base backup carries its own WAL.
        log.warning("%s; replacing the rewound standby by a fresh base backup", exc)
        notes.append(f"{exc}: replaced by a fresh base backup")
        stop_server(old.control)
        _discard_rewound(old, tag)
        method = _base_backup_standby(
            new_primary,
            old,
            notes,
            tag=tag,
            incident_id=incident_id,
            cluster_name=cluster_name,
            bindir=bindir,
            wal_archive=readable_archive,
        )
        since = _start_standby(new_primary, old, log_file, notes)
        wait_streaming(new_primary, old, log_file, stream_wait_seconds, log_offset=since)
    notes.append(f"{old.name} streams from {new_primary.name}")
    return {"detail": "; ".join(notes), "method": method}


def _archive_readable_here(wal_archive: Path, notes: list[str]) -> Path | None:
    """The archive when this host sees it (then the standby's ``restore_command`` reads
    it), else None: the standby then catches up only from the new primary."""
    if wal_archive.is_dir():
        notes.append(f"the standby reads the WAL archive {wal_archive} when it lacks WAL")
        return wal_archive
    notes.append(
        f"the WAL archive {wal_archive} is not on this host: the standby catches up only "
        "by streaming"
    )
    return None


def _start_standby(new_primary: Node, old: Node, log_file: Path, notes: list[str]) -> int:
    """Start the laid-down standby; returns where this start's lines begin in its log."""
    since = _log_size(log_file)
    start_server(old.control, log_file)
    notes.append(f"started as a standby of {new_primary.name} on port {old.admin.port}")
    return since


def _log_size(log_file: Path) -> int:
    try:
        return log_file.stat().st_size
    except OSError:
        return 0


def _discard_rewound(old: Node, tag: str) -> None:
    """The rewound copy (made by this incident from the kept ``.pre_<tag>`` directory, so
    nothing is lost) goes the way a half-rewound one does: through the staging path."""
    staging = rewind_staging_path(old.data_directory, tag)
    if staging.exists():
        shutil.rmtree(staging)
    old.data_directory.rename(staging)
    shutil.rmtree(staging)


def rebuilt_by(data_directory: Path, incident_id: str) -> bool:
    """The directory is this incident's rebuilt standby: its marker says so *and* it is
    still a standby (a marker survives promotion: a node rebuilt once, promoted back by a
    switchover and fenced by a later failover still carries it)."""
    marker = read_marker(data_directory)
    return (
        marker is not None
        and marker.role == "standby"
        and marker.incident_id == incident_id
        and (data_directory / "standby.signal").exists()
        and not (data_directory / FENCE_NOTE).exists()
    )


def _lay_down_standby(
    new_primary: Node,
    old: Node,
    aside: Path,
    notes: list[str],
    *,
    tag: str,
    incident_id: str,
    cluster_name: str,
    bindir: Path,
    prefer_rewind: bool,
    wal_archive: Path | None,
) -> str:
    """pg_rewind a copy of the kept directory when possible, else a fresh base backup."""
    identity = server_identity(new_primary.admin.conninfo("postgres"))
    possible, why = (
        rewind_possible(aside, identity.system_identifier, bindir, old.control.os_user)
        if aside.exists() and prefer_rewind
        else (False, "no old data directory to rewind" if prefer_rewind else "rewind not wanted")
    )
    notes.append(f"pg_rewind {'possible' if possible else 'not possible'}: {why}")
    if possible:
        # pg_rewind reads the source's timeline from its control file, which a recently
        # promoted server updates only at its next checkpoint (the one after promotion is
        # spread out): before it, pg_rewind sees one timeline, says "no rewind required",
        # and the standby can never follow the new one. The pg_rewind docs ask for this.
        # The slot first: from here on the new primary keeps the WAL the standby will ask for.
        notes.append(ensure_slot(new_primary.admin))
        notes.append(checkpoint(new_primary))
        staging = rewind_staging_path(old.data_directory, tag)
        try:
            said = rewind_into_staging(
                aside, staging, new_primary.admin, os_user=old.control.os_user, bindir=bindir
            )
        except CommandError as exc:
            notes.append(f"pg_rewind failed, a fresh base backup instead: {exc}"[:600])
            shutil.rmtree(staging, ignore_errors=True)
        else:
            _make_standby(
                staging,
                new_primary,
                old,
                tag=tag,
                incident_id=incident_id,
                cluster_name=cluster_name,
                how=f"pg_rewind of {aside} from {new_primary.name}",
                wal_archive=wal_archive,
            )
            notes.append(f"rewound a copy of the old directory from {new_primary.name} ({said})")
            return "pg_rewind"
    return _base_backup_standby(
        new_primary,
        old,
        notes,
        tag=tag,
        incident_id=incident_id,
        cluster_name=cluster_name,
        bindir=bindir,
        wal_archive=wal_archive,
    )


def _base_backup_standby(
    new_primary: Node,
    old: Node,
    notes: list[str],
    *,
    tag: str,
    incident_id: str,
    cluster_name: str,
    bindir: Path,
    wal_archive: Path | None,
) -> str:
    """A fresh ``pg_basebackup`` of the new primary at the old node's path, as its standby."""
    _clone_primary(
        new_primary.replication,
        new_primary.admin,
        old.control,
        old.admin.port,
        tag=tag,
        incident_id=incident_id,
        cluster_name=cluster_name,
        bindir=bindir,
        application_name=old.name,
    )
    # the copy carries the new primary's own settings; this node streams from it
    set_auto_conf(
        old.data_directory,
        standby_settings(new_primary, old.name, old.admin.port, wal_archive),
        drop=DROPPED_FROM_STANDBY,
    )
    notes.append(f"fresh base backup of {new_primary.name} (pg_basebackup)")
    return "pg_basebackup"


def checkpoint(node: Node) -> str:
    """A ``CHECKPOINT`` on ``node`` (its control file then shows its current timeline)."""
    with _connect(node.admin) as conn:
        conn.execute("SET statement_timeout = 0")
        conn.execute("CHECKPOINT")
    return f"checkpoint on {node.name}"


# A standby still replaying (its replay LSN moves) is waited for up to this many times the
# stream wait: on a busy host, catching up from the archive takes longer, but is not stuck.
PROGRESS_WAIT_FACTOR = 5
# What a standby's log says when its upstream no longer has the WAL it asks for; its
# restore_command (tried first) did not have it either when replay stops moving.
WAL_GONE = "has already been removed"
# How long a standby may ask for such WAL without replaying anything before it is given up
# (restore_command runs between two requests: a replay that moves is never cut short).
WAL_GONE_GRACE_SECONDS = 30


def _replayed(standby: Node) -> str | None:
    try:
        return replay_lsn(standby)
    except psycopg.Error:  # not accepting connections yet (not consistent): no news
        return None


def _last_restored(log_file: Path, after: int) -> str | None:
    """The newest 'restored log file' line of this start (replay from the archive, also
    before the standby accepts connections)."""
    try:
        with log_file.open("rb") as handle:
            handle.seek(max(after, log_file.stat().st_size - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return None
    found = [line for line in text.splitlines() if "restored log file" in line]
    return found[-1] if found else None


def wait_streaming(
    new_primary: Node, standby: Node, log_file: Path, timeout: float, *, log_offset: int = 0
) -> None:
    """Until the standby streams from ``new_primary``. Gives up when it died, after
    ``timeout`` seconds in which its replay did not move, or after
    ``PROGRESS_WAIT_FACTOR`` x ``timeout`` in all. Raises ``WalUnavailable`` when its log
    (past ``log_offset``: this start's lines) says the new primary no longer has the WAL it
    asks for and nothing was replayed for ``WAL_GONE_GRACE_SECONDS``."""
    started = logged = moved = time.monotonic()
    deadline, last_progress, why = started + timeout, None, ""
    while time.monotonic() < min(deadline, started + PROGRESS_WAIT_FACTOR * timeout):
        streaming, why = standby_streaming(new_primary.admin, standby.admin, standby.name)
        if streaming:
            return
        if postmaster_pid(standby.data_directory) is None:
            break  # it died: waiting longer shows nothing new
        replayed = _replayed(standby)
        progress = (replayed, _last_restored(log_file, log_offset))
        if progress != last_progress and progress != (None, None):
            last_progress, moved = progress, time.monotonic()
            deadline = moved + timeout
            if moved - logged >= 10:
                log.info("%s not streaming yet, still replaying (at %s)", standby.name, replayed)
                logged = moved
        elif time.monotonic() - moved >= WAL_GONE_GRACE_SECONDS:
            fatal = last_fatal_line(log_file, after=log_offset)
            if fatal and WAL_GONE in fatal:
                raise WalUnavailable(
                    f"the rebuilt standby {standby.name} needs WAL that neither "
                    f"{new_primary.name} nor the archive it reads still holds (its log "
                    f"{log_file}: {fatal})"
                )
        time.sleep(POLL_SECONDS)
    fatal = last_fatal_line(log_file, after=log_offset)
    raise StepFailed(
        f"the rebuilt standby {standby.name} does not stream from {new_primary.name}: {why}"
        + (f"; its log {log_file} says: {fatal}" if fatal else f" (see {log_file})")
    )


# --- switchover ------------------------------------------------------------------------


def _connect(endpoint: Endpoint, timeout: float = 5) -> psycopg.Connection[Any]:
    return psycopg.connect(
        endpoint.conninfo("postgres"),
        connect_timeout=max(2, int(timeout)),
        autocommit=True,
        application_name="tracktion-dr-switchover",
        options="-c statement_timeout=30000",
    )


def current_lsn(primary: Node) -> str:
    with _connect(primary.admin) as conn:
        return str(conn.execute("SELECT pg_catalog.pg_current_wal_lsn()::text").fetchone()[0])  # type: ignore[index]


def replay_lsn(standby: Node) -> str | None:
    with _connect(standby.admin) as conn:
        row = conn.execute("SELECT pg_catalog.pg_last_wal_replay_lsn()::text").fetchone()
    return str(row[0]) if row and row[0] else None


def lsn_bytes(lsn: str) -> int:
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def switchover_preconditions(
    primary: Node, standby: Node, *, catch_up_seconds: float = CATCH_UP_SECONDS
) -> dict[str, Any]:
    """Refuse (``FailoverRefused``, nothing touched) unless ``primary`` is a writable
    primary, ``standby`` streams from it on its timeline, and the standby replays up to
    the primary's LSN of now within ``catch_up_seconds`` (with writes still running: if it
    cannot catch up now, it will not once they stop either, in any time worth a window)."""
    role, said = node_role(primary)
    if role != "primary":
        raise FailoverRefused(
            f"{primary.name} is not a writable primary ({said}): nothing to switch over from",
            hint="see which node is primary (pg_is_in_recovery) and switch from that one",
        )
    streaming, why = standby_streaming(primary.admin, standby.admin, standby.name)
    if not streaming:
        raise FailoverRefused(
            f"{standby.name} does not stream from {primary.name} ({why}): a switchover "
            "would lose what it lacks; nothing was touched",
            hint="rebuild it first (dr_standby_rebuild), then switch over",
        )
    target = current_lsn(primary)
    lag = wait_replayed(standby, target, catch_up_seconds)
    if lag is not None:
        raise FailoverRefused(
            f"{standby.name} did not replay up to {primary.name}'s LSN {target} within "
            f"{catch_up_seconds:.0f}s ({lag} bytes behind): nothing was touched",
            hint="find why it lags (pg_stat_replication on the primary), then try again",
        )
    return {
        "detail": f"{standby.name} streams from {primary.name} and replayed {target}",
        "primary_lsn": target,
    }


def wait_replayed(standby: Node, target: str, timeout: float) -> int | None:
    """None once the standby replayed ``target``; else the bytes it is still behind."""
    deadline = time.monotonic() + timeout
    want = lsn_bytes(target)
    behind = want
    while True:
        replayed = replay_lsn(standby)
        behind = want - lsn_bytes(replayed) if replayed else want
        if behind <= 0:
            return None
        if time.monotonic() > deadline:
            return behind
        time.sleep(POLL_SECONDS)


def stop_writes(primary: Node) -> str:
    """Make the primary refuse writes: ``default_transaction_read_only`` for every new
    transaction (ALTER SYSTEM + reload), then end the other client sessions, so nothing
    opened before keeps writing. Resumable: setting it twice is the same."""
    with _connect(primary.admin) as conn:
        conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        conn.execute("SELECT pg_catalog.pg_reload_conf()")
        ended = conn.execute(
            "SELECT count(*) FILTER (WHERE pg_catalog.pg_terminate_backend(pid))"
            " FROM pg_catalog.pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_catalog.pg_backend_pid()"
        ).fetchone()[0]  # type: ignore[index]
    return f"{primary.name} read-only for new transactions; ended {ended} client sessions"


def allow_writes(node: Node) -> str:
    """Undo :func:`stop_writes` (``ALTER SYSTEM RESET``): after a promotion the new
    primary must accept writes, and a switchover given up gives the primary back."""
    with _connect(node.admin) as conn:
        conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
        conn.execute("SELECT pg_catalog.pg_reload_conf()")
    return f"{node.name} accepts writes"


def wait_caught_up(primary: Node, standby: Node, timeout: float = CATCH_UP_SECONDS) -> dict:
    """With writes stopped: the standby replays exactly the primary's current LSN."""
    target = current_lsn(primary)
    behind = wait_replayed(standby, target, timeout)
    if behind is not None:
        raise StepFailed(
            f"{standby.name} is still {behind} bytes behind {primary.name}'s {target} after "
            f"{timeout:.0f}s with writes stopped"
        )
    return {"detail": f"{standby.name} replayed {primary.name}'s {target}", "lsn": target}


def shut_down_cleanly(primary: Node, standby: Node, timeout: float = CATCH_UP_SECONDS) -> str:
    """Stop the primary with a fast shutdown (a shutdown checkpoint; its walsenders send
    all WAL to the standby before they exit), then prove the standby replayed past that
    checkpoint (``pg_controldata`` of the stopped primary). A primary already stopped
    cleanly is only checked."""
    control = primary.control
    stopped = stop_server(control) if control.is_running() else "already stopped"
    if stopped == "stopped (immediate)":
        raise StepFailed(
            f"{primary.name} did not stop cleanly (an immediate stop): the standby may lack "
            "its last WAL; start it again and retry the switchover"
        )
    fields = controldata(control.data_directory, control.bindir, control.os_user)
    state = fields.get("Database cluster state")
    if state != "shut down":
        raise StepFailed(f"{primary.name} is {state!r}, not cleanly shut down")
    checkpoint = fields["Latest checkpoint location"]
    deadline = time.monotonic() + timeout
    while True:
        replayed = replay_lsn(standby)
        if replayed and lsn_bytes(replayed) > lsn_bytes(checkpoint):
            return (
                f"{primary.name} {stopped}; {standby.name} replayed its shutdown checkpoint "
                f"{checkpoint} (now at {replayed})"
            )
        if time.monotonic() > deadline:
            raise StepFailed(
                f"{standby.name} did not receive {primary.name}'s shutdown checkpoint "
                f"{checkpoint} (replayed {replayed}): not promoting; start {primary.name} "
                "again to give up the switchover"
            )
        time.sleep(POLL_SECONDS)


def forget_upstream(node: Node) -> str:
    """A promoted node's ``primary_conninfo`` / ``primary_slot_name`` (ALTER SYSTEM RESET):
    ignored by a primary, but a standby cloned from it later would inherit a conninfo to
    its own former upstream, password included."""
    with _connect(node.admin) as conn:
        conn.execute("ALTER SYSTEM RESET primary_conninfo")
        conn.execute("ALTER SYSTEM RESET primary_slot_name")
    return f"{node.name}: former upstream settings removed"


def promote(standby: Node, wait_seconds: int = 60) -> str:
    with _connect(standby.admin) as conn:
        in_recovery = conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()[0]  # type: ignore[index]
        if not in_recovery:
            return f"{standby.name} already promoted"
        # pg_promote waits up to wait_seconds: longer than the connection's statement_timeout
        conn.execute("SET statement_timeout = 0")
        done = conn.execute("SELECT pg_catalog.pg_promote(true, %s)", (wait_seconds,)).fetchone()[0]  # type: ignore[index]
    if not done:
        raise StepFailed(f"pg_promote of {standby.name} did not finish within {wait_seconds}s")
    return f"promoted {standby.name} with pg_promote"


# --- a switchover's own note: which incident stopped writes, towards which node ---------


def switchover_note_path(old: Node) -> Path:
    """Beside the data directory of the node the switchover moves the primary role away
    from (the old primary): every step that reads or writes the note (the preconditions, the
    switch, the give-back, the rebuild) acts on that node's host anyway. Beside, never
    inside: the rebuild moves that directory aside. One note per old primary; the next
    switchover away from it replaces it."""
    data = old.data_directory
    return data.with_name(f".{data.name}.switchover.json")


def write_switchover_note(target: Node, old: Node, incident_id: str) -> str:
    """Written (beside ``old``) before the first write stop, so a re-run of the same
    incident can tell its own half-done switchover from another's."""
    note = {
        "incident_id": incident_id,
        "to_node": target.name,
        "from_node": old.name,
        "started_at": datetime.now(UTC).isoformat(),
    }
    final = _write_note(old, note)
    return f"switchover of {incident_id} to {target.name} noted in {final}"


def note_balancer_switched(old: Node) -> None:
    """The switch away from ``old`` finished (the balancer points at the target): a re-run
    of the incident then has nothing of the switch left to resume (only the rebuild)."""
    note = read_switchover_note(old)
    if note is not None and not note.get("balancer_switched_at"):
        _write_note(old, {**note, "balancer_switched_at": datetime.now(UTC).isoformat()})


def _write_note(old: Node, note: dict[str, Any]) -> Path:
    """Temp file, fsync, rename: a note is whole or absent."""
    final = switchover_note_path(old)
    partial = final.with_name(final.name + ".tmp")
    with partial.open("w") as out:
        out.write(json.dumps(note, indent=2) + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, final)
    return final


def read_switchover_note(old: Node) -> dict[str, Any] | None:
    """The note of the last switchover away from ``old``, or None."""
    try:
        note = json.loads(switchover_note_path(old).read_text())
    except (OSError, ValueError):
        return None
    return note if isinstance(note, dict) else None


def shutdown_state(node: Node) -> str:
    """``pg_controldata``'s cluster state of a node that is not running ("shut down" after
    a clean shutdown), or why there is none; never raises."""
    control = node.control
    if control.is_running():
        return "running"
    if not (control.data_directory / "global" / "pg_control").is_file():
        return f"no cluster in {control.data_directory}"
    try:
        fields = controldata(control.data_directory, control.bindir, control.os_user)
    except CommandError as exc:
        return f"pg_controldata failed: {str(exc)[:160]}"
    return fields.get("Database cluster state", "unknown")


def read_only(node: Node) -> bool:
    """Does the node make new transactions read-only (a switchover's :func:`stop_writes`)?"""
    with _connect(node.admin) as conn:
        row = conn.execute(
            "SELECT pg_catalog.current_setting('default_transaction_read_only')"
        ).fetchone()
    return bool(row and row[0] == "on")
