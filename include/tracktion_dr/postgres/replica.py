"""Re-seed a streaming replica from a (recovered) primary.

After point-in-time recovery the primary runs on a new timeline; the old standby followed
the old one past the branch point and cannot stream again. It is re-seeded: stopped, its
data directory moved aside (kept), a fresh ``pg_basebackup -R`` taken from the primary, its
own port set, and started as a hot standby.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from tracktion_dr.postgres.commands import DEFAULT_BINDIR, Endpoint, chown_tree, run
from tracktion_dr.postgres.pitr import (
    ClusterPaths,
    clear_recovery_settings,
    start_server,
    stop_server,
)

log = logging.getLogger(__name__)

SLOT = "replica_slot"


def reseed_replica(
    primary_replication: Endpoint,
    primary_admin: Endpoint,
    replica: ClusterPaths,
    replica_port: int,
    log_file: Path,
    *,
    bindir: Path = DEFAULT_BINDIR,
    application_name: str = "replica",
) -> str:
    stop_server(replica)
    if replica.data_directory.exists():
        aside = replica.data_directory.with_name(
            f"{replica.data_directory.name}.pre_reseed_{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
        )
        replica.data_directory.rename(aside)
        log.info("moved the old standby aside to %s", aside)
    with psycopg.connect(
        primary_admin.conninfo("postgres"), connect_timeout=10, autocommit=True
    ) as conn:
        if conn.execute(
            "SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = %s", (SLOT,)
        ).fetchone():
            conn.execute("SELECT pg_catalog.pg_drop_replication_slot(%s)", (SLOT,))
    staging = replica.data_directory
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
    clear_recovery_settings(staging)  # the primary's own recovery target is not the standby's
    with (staging / "postgresql.auto.conf").open("a") as conf:
        conf.write(f"port = '{int(replica_port)}'\n")
    staging.chmod(0o700)
    chown_tree(staging, replica.os_user)
    start_server(replica, log_file)
    return f"standby re-seeded from the primary and started on port {replica_port}"
