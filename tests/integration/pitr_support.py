"""What the PITR tests share: a connection to the sandbox primary, a WAL switch that waits
for the archiver, and killing the primary (an immediate stop: the postmaster is gone as if
the host died)."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg

from tracktion_dr.airflow.support import endpoint
from tracktion_dr.postgres.commands import as_os_user, run
from tracktion_dr.scenarios.database import segment_archived

PG_CTL = "/usr/lib/postgresql/15/bin/pg_ctl"


def primary(dbname: str = "tracktion"):
    return psycopg.connect(
        endpoint("tracktion_pg_primary").conninfo(dbname), connect_timeout=5, autocommit=True
    )


def switch_wal() -> None:
    with primary("postgres") as conn:
        segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        for _ in range(100):
            if segment_archived(conn, segment):
                return
            time.sleep(0.3)
    raise AssertionError(f"{segment} not archived")


def kill_primary(data_directory: Path) -> None:
    """Stop the primary immediately (no checkpoint, no archiving of the current segment)."""
    run(
        as_os_user([PG_CTL, "-D", str(data_directory), "stop", "-m", "immediate"], "postgres"),
        what="kill the primary",
    )
