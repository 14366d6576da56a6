"""Locks in the ledger database: one destructive run per target; a re-run of the same
incident takes its own incident's locks over (its first run died before releasing them)."""

from __future__ import annotations

import psycopg
import pytest

from tracktion_dr.airflow.support import conninfo
from tracktion_dr.core.errors import TargetBusy
from tracktion_dr.evidence import ledger, locks

pytestmark = pytest.mark.sandbox


def holder(resource: str) -> tuple[str, str] | None:
    with psycopg.connect(conninfo(ledger.LEDGER_CONN_ID), connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT incident_id, run_id FROM dr.locks WHERE resource = %s", (resource,)
        ).fetchone()
    return (row[0], row[1]) if row else None


def test_same_incident_rerun_takes_over_another_incident_is_refused(sandbox):
    ledger_db = conninfo(ledger.LEDGER_CONN_ID)
    resources = ["database:locktest", "cluster:locktest"]
    dag = "dr_database_restore"
    try:
        locks.acquire(ledger_db, resources, incident_id="DR-1", dag_id=dag, run_id="killed")
        locks.acquire(ledger_db, resources, incident_id="DR-1", dag_id=dag, run_id="killed")
        # The killed run never released: its re-run (same incident, same DAG) takes over.
        locks.acquire(ledger_db, resources, incident_id="DR-1", dag_id=dag, run_id="rerun")
        assert holder("database:locktest") == ("DR-1", "rerun")
        # Another incident, or the same incident through another DAG, waits its turn.
        with pytest.raises(TargetBusy, match="locktest is being recovered by DR-1"):
            locks.acquire(ledger_db, resources, incident_id="DR-2", dag_id=dag, run_id="x")
        with pytest.raises(TargetBusy):
            locks.acquire(
                ledger_db, resources, incident_id="DR-1", dag_id="dr_database_pitr", run_id="y"
            )
        assert locks.release(ledger_db, dag_id=dag, run_id="killed") == 0
        assert locks.release(ledger_db, dag_id=dag, run_id="rerun") == 2
        assert holder("database:locktest") is None
    finally:
        with psycopg.connect(ledger_db, connect_timeout=10) as conn:
            conn.execute("DELETE FROM dr.locks WHERE resource = ANY(%s)", (resources,))
