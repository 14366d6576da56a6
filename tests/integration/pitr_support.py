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


# PostgreSQL's archiver waits a minute after three failed archive_command attempts (e.g.
# while an earlier test had the backup directory moved away): wait past that retry.
ARCHIVE_WAIT_SECONDS = 90


def switch_wal() -> str:
    """Switch the primary's WAL and wait until the segment is archived; its name."""
    with primary("postgres") as conn:
        segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        deadline = time.monotonic() + ARCHIVE_WAIT_SECONDS
        while time.monotonic() < deadline:
            if segment_archived(conn, segment):
                return segment
            time.sleep(0.3)
        (failed, last_failed) = conn.execute(
            "SELECT failed_count, last_failed_wal FROM pg_catalog.pg_stat_archiver"
        ).fetchone()
    raise AssertionError(
        f"{segment} not archived within {ARCHIVE_WAIT_SECONDS}s "
        f"(archiver: {failed} failures, last failed {last_failed})"
    )


def kill_primary(data_directory: Path) -> None:
    """Stop the primary immediately (no checkpoint, no archiving of the current segment)."""
    run(
        as_os_user([PG_CTL, "-D", str(data_directory), "stop", "-m", "immediate"], "postgres"),
        what="kill the primary",
    )
