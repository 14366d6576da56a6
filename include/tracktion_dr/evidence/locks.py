"""One destructive run per target at a time: leases held in the ledger database.

A lock row per resource (``database:tracktion``, ``cluster:main``) names the incident and
run holding it, and a lease. A second run is refused with the holder's name instead of
racing the first. A lock cannot outlive its run:

* the holder itself re-acquiring (a cleared, re-run guard) renews it, and so does a
  re-run of the same incident by the same DAG (the scheduler runs one at a time per DAG:
  ``max_active_runs=1``), so a killed run never blocks its own re-run;
* a lock whose holder run is **no longer running** (Airflow says so: killed, failed,
  finished without releasing) is taken over, with a log line naming the dead holder;
* a lock whose holder Airflow does not know (run deleted, another Airflow) is taken over
  once its **lease lapsed**. Live holders renew the lease at every step, so a lapsed lease
  means nobody is working on the target.

Never two live holders: the check and the takeover happen under the row's lock
(``SELECT … FOR UPDATE``) in one transaction, and a running holder is never taken over
whatever its lease says.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tracktion_dr.core.errors import TargetBusy

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
ALTER TABLE dr.locks ADD COLUMN IF NOT EXISTS
    lease_until timestamptz NOT NULL DEFAULT pg_catalog.now() + interval '1 hour';
"""

# How long a lease lasts without renewal. Steps renew it as they start, so it only has to
# outlast the longest single step (a large pg_restore or base backup copy).
DEFAULT_LEASE = timedelta(hours=2)

# Answers "is this (dag_id, run_id) still running?": True, False, or None when unknown.
RunAlive = Callable[[str, str], bool | None]

ACTIVE_RUN_STATES = frozenset({"queued", "running"})


def _unknown(dag_id: str, run_id: str) -> bool | None:
    return None


def acquire(
    conninfo: str,
    resources: list[str],
    *,
    incident_id: str,
    dag_id: str,
    run_id: str,
    run_alive: RunAlive = _unknown,
    lease: timedelta = DEFAULT_LEASE,
) -> list[str]:
    """Take every resource for this run, or none (one transaction). Returns log lines of
    takeovers. Raises ``TargetBusy`` naming a live holder."""
    taken_over: list[str] = []
    with psycopg.connect(conninfo, connect_timeout=5, row_factory=dict_row) as conn:
        conn.execute(SCHEMA)
        conn.commit()
        for resource in sorted(resources):  # one order everywhere: no deadlock between runs
            conn.execute(
                "INSERT INTO dr.locks (resource, incident_id, dag_id, run_id, lease_until)"
                " VALUES (%s, %s, %s, %s, pg_catalog.now() + %s) ON CONFLICT (resource) DO NOTHING",
                (resource, incident_id, dag_id, run_id, lease),
            )
            holder: dict[str, Any] = conn.execute(
                "SELECT *, lease_until < pg_catalog.now() AS lapsed FROM dr.locks"
                " WHERE resource = %s FOR UPDATE",
                (resource,),
            ).fetchone()  # type: ignore[assignment]
            same_incident = (holder["incident_id"], holder["dag_id"]) == (incident_id, dag_id)
            if (holder["dag_id"], holder["run_id"]) != (dag_id, run_id) and not same_incident:
                alive = run_alive(holder["dag_id"], holder["run_id"])
                if alive or (alive is None and not holder["lapsed"]):
                    conn.rollback()
                    raise TargetBusy(
                        f"{resource} is being recovered by {holder['incident_id']} "
                        f"({holder['dag_id']} run {holder['run_id']}, since "
                        f"{holder['acquired_at']:%Y-%m-%d %H:%M:%S %Z})",
                        hint="wait for that run to finish; if it is dead, its lock is taken "
                        "over automatically once Airflow no longer shows it running",
                    )
                why = "is no longer running" if alive is False else "let its lease lapse"
                line = (
                    f"{resource}: taking over the lock of {holder['incident_id']} "
                    f"({holder['dag_id']} run {holder['run_id']}), which {why}"
                )
                log.warning(line)
                taken_over.append(line)
            elif holder["run_id"] != run_id:
                line = f"{resource}: re-run of {incident_id} takes over its own earlier run's lock ({holder['run_id']})"
                log.warning(line)
                taken_over.append(line)
            conn.execute(
                "UPDATE dr.locks SET incident_id = %s, dag_id = %s, run_id = %s,"
                " acquired_at = CASE WHEN run_id = %s THEN acquired_at ELSE pg_catalog.now() END,"
                " lease_until = pg_catalog.now() + %s WHERE resource = %s",
                (incident_id, dag_id, run_id, run_id, lease, resource),
            )
        conn.commit()
    return taken_over


def renew(conninfo: str, *, dag_id: str, run_id: str, lease: timedelta = DEFAULT_LEASE) -> int:
    """Extend this run's leases (a step starting); returns how many it holds."""
    with psycopg.connect(conninfo, connect_timeout=5) as conn:
        conn.execute(SCHEMA)
        renewed = conn.execute(
            "UPDATE dr.locks SET lease_until = pg_catalog.now() + %s"
            " WHERE dag_id = %s AND run_id = %s",
            (lease, dag_id, run_id),
        ).rowcount
        conn.commit()
    return renewed


def release(conninfo: str, *, dag_id: str, run_id: str) -> int:
    with psycopg.connect(conninfo, connect_timeout=5) as conn:
        conn.execute(SCHEMA)
        released = conn.execute(
            "DELETE FROM dr.locks WHERE dag_id = %s AND run_id = %s", (dag_id, run_id)
        ).rowcount
        conn.commit()
    return released


def holders(conninfo: str) -> list[dict[str, Any]]:
    with psycopg.connect(conninfo, connect_timeout=5, row_factory=dict_row) as conn:
        conn.execute(SCHEMA)
        return conn.execute("SELECT * FROM dr.locks ORDER BY resource").fetchall()
