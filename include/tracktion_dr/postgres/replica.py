"""Re-seed a streaming replica from a (recovered) primary - resumable.

After point-in-time recovery the primary runs on a new timeline; the old standby followed
the old one past the branch point and cannot stream again. It is re-seeded: its WAL the
archive lacks salvaged, stopped, its data directory moved aside (``<dir>.pre_<tag>``, kept),
a fresh ``pg_basebackup -R`` taken into a staging directory named for the incident
(``.<dir>.reseed_<tag>``), its own port set, renamed into place, started as a hot standby,
and waited for until it streams.

Every step looks first: a standby that already streams from the current primary on its
current timeline is left alone; a standby that is already this incident's re-seeded copy
is only started; a half-copied staging directory of this incident (provably ours by its
name: a copy of a primary that is still there) is discarded and copied again; the original
standby is never discarded, only moved aside once.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

import psycopg

from tracktion_dr.core.errors import StepFailed
from tracktion_dr.postgres.commands import DEFAULT_BINDIR, Endpoint, chown_tree, run
from tracktion_dr.postgres.control import ClusterControl
from tracktion_dr.postgres.pitr import (
    aside_path,
    clear_recovery_settings,
    current_timeline,
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
from tracktion_dr.postgres.salvage import salvage_wal

log = logging.getLogger(__name__)

SLOT = "replica_slot"
STREAM_WAIT_SECONDS = 120
SLOT_RELEASE_SECONDS = 30
# How often a wait asks again: each ask is one query per end (cheap); a second-long sleep
# would add up to a second to every recovery that waits here.
POLL_SECONDS = 0.2


def reseed_staging_path(data_directory: Path, tag: str) -> Path:
    return data_directory.with_name(f".{data_directory.name}.reseed_{tag}")


def standby_streaming(
    primary_admin: Endpoint, replica_admin: Endpoint | None, application_name: str
) -> tuple[bool, str]:
    """Does the standby stream from this primary, on the primary's current timeline?

    Asked of both ends: the primary's ``pg_stat_replication`` (a pg_basebackup's own WAL
    stream carries the same application name, so this alone proves nothing) and the
    standby's ``pg_stat_wal_receiver`` (streaming, on the primary's timeline)."""
    with psycopg.connect(primary_admin.conninfo("postgres"), connect_timeout=10) as conn:
        timeline = current_timeline(conn)
        senders = [
            row[0]
            for row in conn.execute(
                "SELECT state FROM pg_catalog.pg_stat_replication WHERE application_name = %s",
                (application_name,),
            ).fetchall()
        ]
    if "streaming" not in senders:
        return (
            False,
            f"no standby {application_name!r} streams from the primary (timeline {timeline})",
        )
    if replica_admin is None:
        return True, f"{application_name!r} streams from the primary (timeline {timeline})"
    try:
        with psycopg.connect(replica_admin.conninfo("postgres"), connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT status, received_tli FROM pg_catalog.pg_stat_wal_receiver"
            ).fetchone()
    except psycopg.OperationalError as exc:
        return False, f"the standby does not answer: {str(exc).strip().splitlines()[-1]}"
    if not row or row[0] != "streaming" or row[1] != timeline:
        return False, (
            f"the standby's WAL receiver is {row[0] if row else 'not running'} "
            f"on timeline {row[1] if row else '-'}, the primary is on timeline {timeline}"
        )
    return True, f"the standby streams from the primary on its timeline {timeline}"


def reseed_replica(
    primary_replication: Endpoint,
    primary_admin: Endpoint,
    replica: ClusterControl,
    replica_port: int,
    log_file: Path,
    *,
    tag: str,
    incident_id: str,
    cluster_name: str,
    wal_archive: Path,
    replica_admin: Endpoint | None = None,
    bindir: Path = DEFAULT_BINDIR,
    application_name: str = "replica",
    stream_wait_seconds: float = STREAM_WAIT_SECONDS,
) -> str:
    streaming, why = standby_streaming(primary_admin, replica_admin, application_name)
    if streaming:
        return f"nothing to do: {why}"
    data = replica.data_directory
    aside = aside_path(data, tag)
    notes = [why]
    marker = read_marker(data)
    if marker and marker.role == "standby" and marker.incident_id == incident_id:
        notes.append(f"{data} is already this incident's re-seeded standby")
        if postmaster_pid(data) is None:
            start_server(replica, log_file)
            notes.append("started it")
    else:
        if data.exists():
            if aside.exists():
                raise StepFailed(
                    f"{data} is not this incident's re-seeded standby, and this incident's kept "
                    f"copy {aside} already exists: compare the two and move one away by hand"
                )
            report = salvage_wal(
                [("standby", data)], wal_archive, os_user=replica.os_user, bindir=bindir
            )
            notes.append(report.describe())
            notes.append(stop_server(replica))
            data.rename(aside)
            notes.append(f"old standby kept at {aside}")
        elif aside.exists():
            notes.append(f"old standby already kept at {aside}")
        _clone_primary(
            primary_replication,
            primary_admin,
            replica,
            replica_port,
            tag=tag,
            incident_id=incident_id,
            cluster_name=cluster_name,
            bindir=bindir,
            application_name=application_name,
        )
        start_server(replica, log_file)
        notes.append(f"re-seeded from the primary and started on port {replica_port}")
    _wait_streaming(primary_admin, replica_admin, application_name, log_file, stream_wait_seconds)
    notes.append("streaming")
    return "; ".join(notes)


def _clone_primary(
    primary_replication: Endpoint,
    primary_admin: Endpoint,
    replica: ClusterControl,
    replica_port: int,
    *,
    tag: str,
    incident_id: str,
    cluster_name: str,
    bindir: Path,
    application_name: str,
) -> None:
    """pg_basebackup into this incident's staging directory, then rename it into place."""
    staging = reseed_staging_path(replica.data_directory, tag)
    if staging.exists():
        log.info("discarding this incident's own half-copied standby %s", staging)
        shutil.rmtree(staging)
    _drop_stale_slot(primary_admin)
    run(
        [
            str(bindir / "pg_basebackup"),
            f"--pgdata={staging}",
            "--format=plain",
            "--wal-method=stream",
            "--checkpoint=fast",
            "--write-recovery-conf",
            "--create-slot",
            f"--slot={SLOT}",
            # Written into primary_conninfo: the name the primary shows in pg_stat_replication.
            f"--dbname=application_name={application_name}",
            *primary_replication.client_args(),
        ],
        what="pg_basebackup for the new standby",
        env=primary_replication.client_env(),
    )
    # pg_basebackup copied the primary's recovery marker: this directory is the standby.
    copied = read_marker(staging)
    # The primary's own recovery target is not the standby's.
    clear_recovery_settings(staging, copied.recovery_settings if copied else None)
    with (staging / "postgresql.auto.conf").open("a") as conf:
        conf.write(f"port = '{int(replica_port)}'\n")
    write_marker(
        staging,
        replace(copied, role="standby", incident_id=incident_id, tag=tag)
        if copied
        else RecoveryMarker(
            incident_id=incident_id,
            cluster=cluster_name,
            tag=tag,
            target={},
            base_backup="(cloned from the primary)",
            base_start_lsn=None,
            role="standby",
        ),
        replica.os_user,
    )
    staging.chmod(0o700)
    chown_tree(staging, replica.os_user)
    staging.rename(replica.data_directory)


def _drop_stale_slot(primary_admin: Endpoint) -> None:
    """The slot of a standby that is gone (or of a killed pg_basebackup): dropped so
    ``--create-slot`` can make it again. An active slot is waited for briefly (a killed
    client's walsender ends when its socket closes), then refused."""
    deadline = time.monotonic() + SLOT_RELEASE_SECONDS
    with psycopg.connect(
        primary_admin.conninfo("postgres"), connect_timeout=10, autocommit=True
    ) as conn:
        while True:
            row = conn.execute(
                "SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = %s", (SLOT,)
            ).fetchone()
            if row is None:
                return
            if not row[0]:
                conn.execute("SELECT pg_catalog.pg_drop_replication_slot(%s)", (SLOT,))
                return
            if time.monotonic() > deadline:
                raise StepFailed(
                    f"replication slot {SLOT} on the primary is in use by another client: "
                    "refusing to take it from a live standby"
                )
            time.sleep(POLL_SECONDS)


def _wait_streaming(
    primary_admin: Endpoint,
    replica_admin: Endpoint | None,
    application_name: str,
    log_file: Path,
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    why = ""
    while time.monotonic() < deadline:
        streaming, why = standby_streaming(primary_admin, replica_admin, application_name)
        if streaming:
            return
        time.sleep(POLL_SECONDS)
    fatal = last_fatal_line(log_file)
    raise StepFailed(
        f"the re-seeded standby does not stream after {timeout:.0f}s: {why}"
        + (f"; its log {log_file} says: {fatal}" if fatal else f" (see {log_file})")
    )
