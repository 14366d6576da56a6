"""One destructive run per target at a time, held in the ledger database.

A lock row per resource (``database:tracktion``, ``cluster:main``) names the incident and
run holding it. A second run is refused with that name instead of racing the first; the
holder re-acquiring (a cleared, re-run guard) is fine. Released by the run's record task.

A new run of the *same incident and DAG* takes the locks over (with a log line): it is the
re-run that resumes a run whose worker died before its record task released them. (Interim
rule until locks become leases tied to a live run.)
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tracktion_dr.errors import TargetBusy

log = logging.getLogger(__name__)

SCHEMA = """
CREATE SCHEMA IF NOT EXISTS dr;
CREATE TABLE IF NOT EXISTS dr.locks (
    resource     text PRIMARY KEY,
    incident_id  text NOT NULL,
    dag_id       text NOT NULL,
    run_id       text NOT NULL,
    acquired_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
"""


def acquire(
    conninfo: str, resources: list[str], *, incident_id: str, dag_id: str, run_id: str
) -> None:
    with psycopg.connect(conninfo, connect_timeout=10, row_factory=dict_row) as conn:
        conn.execute(SCHEMA)
        for resource in resources:
            conn.execute(
                "INSERT INTO dr.locks (resource, incident_id, dag_id, run_id) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (resource) DO NOTHING",
                (resource, incident_id, dag_id, run_id),
            )
            holder: dict[str, Any] = conn.execute(
                "SELECT * FROM dr.locks WHERE resource = %s", (resource,)
            ).fetchone()  # type: ignore[assignment]
            if (holder["dag_id"], holder["run_id"]) == (dag_id, run_id):
                continue
            if (holder["incident_id"], holder["dag_id"]) == (incident_id, dag_id):
                conn.execute(
                    "UPDATE dr.locks SET run_id = %s, acquired_at = pg_catalog.now()"
                    " WHERE resource = %s",
                    (run_id, resource),
                )
                log.info(
                    "took over %s from run %s of the same incident %s (a re-run resumes it)",
                    resource,
                    holder["run_id"],
                    incident_id,
                )
                continue
            conn.rollback()
            raise TargetBusy(
                f"{resource} is being recovered by {holder['incident_id']} "
                f"({holder['dag_id']} run {holder['run_id']}, since {holder['acquired_at']:%Y-%m-%d %H:%M:%S %Z}); "
                "wait for it to finish, or release it with the README's unlock command if that run is dead"
            )
        conn.commit()


def release(conninfo: str, *, dag_id: str, run_id: str) -> int:
    with psycopg.connect(conninfo, connect_timeout=10) as conn:
        conn.execute(SCHEMA)
        released = conn.execute(
            "DELETE FROM dr.locks WHERE dag_id = %s AND run_id = %s", (dag_id, run_id)
        ).rowcount
        conn.commit()
    return released
