"""A recovery does not need its ledger: with the ops cluster (ledger and locks) stopped,
dr_database_restore and dr_database_pitr run to success, one destructive run at a time
(exclusivity from Airflow's own run states), and their records reach the ledger once it is
back. Also: a lock held by a run that is no longer running is taken over, never one held by
a live run."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import psycopg
import pytest

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states
from tracktion_dr.airflow.support import conninfo
from tracktion_dr.core.errors import TargetBusy
from tracktion_dr.evidence import ledger, locks
from tracktion_sandbox import pg

pytestmark = pytest.mark.sandbox


def ledger_runs(run_ids: list[str]) -> dict[str, str]:
    with psycopg.connect(conninfo(ledger.LEDGER_CONN_ID), connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT run_id, outcome FROM dr.runs WHERE run_id = ANY(%s)", (run_ids,)
        ).fetchall()
    return dict(rows)


@pytest.fixture
def ledger_down(sandbox, tmp_path, monkeypatch):
    monkeypatch.setenv(ledger.SPOOL_ENV, str(tmp_path / "spool"))
    pg.stop_cluster(sandbox.layout, "ops")
    try:
        yield tmp_path / "spool"
    finally:
        pg.start_cluster(sandbox.layout, "ops")


def a_running_run_of(dag_id: str) -> str:
    """A run of ``dag_id`` the metadata database shows as running (as a live run would)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    run_id = f"manual__live_{uuid.uuid4().hex[:8]}"
    with create_session() as session:
        session.add(
            DagRun(
                dag_id=dag_id,
                run_id=run_id,
                run_type=DagRunType.MANUAL,
                run_after=datetime.now(UTC),
                start_date=datetime.now(UTC),
                state=DagRunState.RUNNING,
                triggered_by=DagRunTriggeredByType.TEST,
            )
        )
    return run_id


def finish(dag_id: str, run_id: str) -> None:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState

    with create_session() as session:
        for run in session.query(DagRun).filter_by(dag_id=dag_id, run_id=run_id):
            run.state = DagRunState.FAILED


def test_restore_and_pitr_run_without_the_ledger_and_record_later(sandbox, ledger_down):
    restore = run_dag("dr_database_restore", {"environment": "drill", "database": "tracktion"})
    assert task_states(restore)["verdict"] == "success", task_states(restore)
    assert task_result(restore, "guard")["exclusivity"] == "airflow"
    pitr = run_dag(
        "dr_database_pitr", {"environment": "drill", "cluster": "main", "target_type": "latest"}
    )
    assert task_states(pitr)["verdict"] == "success", task_states(pitr)
    recorded = task_result(pitr, "record")
    assert recorded["ledger_id"] is None and recorded["spooled"]
    spooled = {t.run_id for t in ledger.spooled(ledger_down)}
    assert {restore.run_id, pitr.run_id} <= spooled

    # While the ledger is down, a second destructive run is refused when another is live.
    live = a_running_run_of("dr_database_pitr")
    try:
        refused = run_dag("dr_database_restore", {"environment": "drill", "database": "tracktion"})
        states = task_states(refused)
        assert states["guard"] == "failed", states
        assert states.get("stop_services") in (None, "upstream_failed"), states
    finally:
        finish("dr_database_pitr", live)

    # The ledger comes back: the sync DAG writes what waited.
    pg.start_cluster(sandbox.layout, "ops")
    synced = run_dag("dr_ledger_sync")
    assert task_states(synced)["flush_spool"] == "success"
    assert ledger_runs([restore.run_id, pitr.run_id]) == {
        restore.run_id: "succeeded",
        pitr.run_id: "succeeded",
    }
    assert not list(ledger_down.glob("*.json")), "every spooled record was written"


def test_a_dead_runs_lock_is_taken_over_a_live_ones_is_not(sandbox):
    info = conninfo(ledger.LEDGER_CONN_ID)
    resource = f"database:lock_test_{uuid.uuid4().hex[:8]}"
    locks.acquire(info, [resource], incident_id="DR-20261126-000001", dag_id="d", run_id="r1")
    alive = {"r1": True}

    def run_alive(dag_id: str, run_id: str) -> bool | None:
        return alive.get(run_id)

    with pytest.raises(TargetBusy, match="DR-20261126-000001"):
        locks.acquire(
            info,
            [resource],
            incident_id="DR-20261126-000002",
            dag_id="d2",
            run_id="r2",
            run_alive=run_alive,
        )
    alive["r1"] = False  # the holder was killed and Airflow marked its run failed
    lines = locks.acquire(
        info,
        [resource],
        incident_id="DR-20261126-000002",
        dag_id="d2",
        run_id="r2",
        run_alive=run_alive,
    )
    assert lines and "no longer running" in lines[0]
    holder = {h["resource"]: h for h in locks.holders(info)}[resource]
    assert holder["run_id"] == "r2"
    # A re-run of the same incident by the same DAG takes over its own earlier lock.
    assert locks.acquire(
        info, [resource], incident_id="DR-20261126-000002", dag_id="d2", run_id="r3"
    )
    assert locks.release(info, dag_id="d2", run_id="r3") == 1
