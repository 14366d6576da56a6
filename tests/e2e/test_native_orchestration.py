"""Waits on the triggerer and DAGs chained through the scheduler, under a real Airflow.

When a service is still down after a gate's fast window, then the gate's task instance is
*deferred* (its worker slot released: the triggerer polls the check), and when the service
is back the gate opens and the run succeeds, the opening recorded at the moment the
triggerer saw it. When the quarterly drill runs, then its chain steps trigger their DAGs
through the scheduler (each a separate run of its DAG, waited for deferred), the lost
cluster is recovered by PITR, the drill's record shows each step on the RTO clock and the
data lost, and the sandbox is healthy again.
"""

from __future__ import annotations

import time
from datetime import datetime

import httpx
import psycopg
import pytest
from harness.offsite import base_backup_on_current_timeline

from tracktion_dr.core.drill_window import missed_window
from tracktion_dr.core.plan import load_plan
from tracktion_dr.evidence import reports
from tracktion_sandbox import layout as L

pytestmark = pytest.mark.sandbox

PLAN = load_plan()
CHAIN = [step.dag_id for step in PLAN.drills.quarterly.steps]
PROBE = "dr_gate_probe"


@pytest.fixture(scope="module")
def native_dags(airflow):
    """The DAGs these tests run, unpaused for the module (paused again after)."""
    dag_ids = [PROBE, "dr_test_quarterly", *CHAIN, "dr_test_site_failover", "dr_site_failover"]

    def listed() -> bool:
        return airflow.api("GET", f"/api/v2/dags/{PROBE}").status_code == 200

    airflow.wait_until("the fixture DAG parsed", listed, 120)
    for dag_id in dag_ids:
        response = airflow.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
        response.raise_for_status()
    yield
    for dag_id in dag_ids:
        airflow.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": True})


def task_state(airflow, dag_id: str, run_id: str, task_id: str) -> str | None:
    response = airflow.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")
    return response.json().get("state") if response.status_code == 200 else None


def test_a_gate_still_closed_after_its_fast_window_waits_on_the_triggerer(
    airflow, native_dags, supervisor_controller
):
    service = "notification-service"
    supervisor_controller.stop(service)
    try:
        run_id = airflow.trigger(PROBE, {"service": service})
        airflow.wait_until(
            "the gate deferred to the triggerer",
            lambda: task_state(airflow, PROBE, run_id, "gate_services_healthy") == "deferred",
            timeout=120,
            interval=0.5,
        )
        assert airflow.run_state(PROBE, run_id) == "running"
    finally:
        supervisor_controller.start(service)
    assert airflow.wait_for_run(PROBE, run_id, timeout=120) == "success"
    event = airflow.xcom(PROBE, run_id, "gate_services_healthy")["event"]
    assert event["status"] == "succeeded" and event["milestone"] == "service"
    gate = next(
        t for t in airflow.task_instances(PROBE, run_id) if t["task_id"] == "gate_services_healthy"
    )
    # Opened when the triggerer saw the service back, before the task resumed and ended.
    assert datetime.fromisoformat(event["finished_at"]) <= datetime.fromisoformat(gate["end_date"])


@pytest.mark.parametrize(
    ("dag_id", "cadence"),
    [("dr_test_quarterly", "quarterly"), ("dr_test_site_failover", "bi_annually")],
)
def test_a_drill_unpaused_after_its_window_skips_the_missed_run(
    airflow, native_dags, dag_id, cadence
):
    """Unpausing a drill DAG makes Airflow run its newest due interval (catchup=False still
    runs one): started after the window the plan gives the cadence, that run's guard skips
    it, touching nothing - no incident, no record, no child run - and the run ends without
    failing. (Before any run is triggered by hand: with one active, max_active_runs=1 keeps
    the scheduler from making it.)"""
    run = airflow.wait_until(
        f"the scheduler to make {dag_id}'s missed run",
        lambda: next((r for r in airflow.dag_runs(dag_id) if r["run_type"] == "scheduled"), None),
        120,
    )
    state = airflow.wait_for_run(dag_id, run["dag_run_id"], timeout=600)
    run = next(r for r in airflow.dag_runs(dag_id) if r["dag_run_id"] == run["dag_run_id"])
    late = missed_window(
        run_type="scheduled",
        due_at=datetime.fromisoformat(run["run_after"]),
        started_at=datetime.fromisoformat(run["start_date"]),
        window=PLAN.test_schedule[cadence].duration,
    )
    if late is None:
        pytest.skip(f"{dag_id}'s scheduled run started inside its window: it ran as a drill")
    states = {t["task_id"]: t["state"] for t in airflow.task_instances(dag_id, run["dag_run_id"])}
    assert state == "success", states
    for task_id in ("guard", "record", "notify_outcome", "publish", "verdict"):
        assert states[task_id] == "skipped", states
    assert not [s for s in states.values() if s == "failed"], states
    children = [
        r
        for child in [*CHAIN, "dr_site_failover"]
        for r in airflow.dag_runs(child)
        if r["dag_run_id"].startswith(run["dag_run_id"])
    ]
    assert children == [], children


def superuser_conninfo(sandbox, port: int) -> str:
    return (
        f"host={L.HOST} port={port} user={L.SUPERUSER} dbname=postgres "
        f"password={sandbox.secrets.postgres_password} connect_timeout=5"
    )


def sandbox_is_healthy(sandbox) -> bool:
    with psycopg.connect(superuser_conninfo(sandbox, L.PRIMARY_PORT)) as conn:
        replicas = conn.execute(
            "SELECT application_name, state FROM pg_stat_replication"
        ).fetchall()
    with psycopg.connect(superuser_conninfo(sandbox, L.REPLICA_PORT)) as conn:
        in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
    services = all(
        httpx.get(f"http://{L.HOST}:{port}/health", timeout=3).status_code == 200
        for port in L.SERVICE_PORTS.values()
    )
    return ("replica", "streaming") in replicas and in_recovery and services


def test_the_quarterly_drill_chains_its_steps_through_the_scheduler(airflow, native_dags, sandbox):
    run_id = airflow.trigger("dr_test_quarterly", {"environment": "drill", "notify": True})
    seen: set[tuple[str, str]] = set()

    def finished() -> str | None:
        seen.update(
            (t["task_id"], t["state"])
            for t in airflow.task_instances("dr_test_quarterly", run_id)
            if t["state"]
        )
        state = airflow.run_state("dr_test_quarterly", run_id)
        return state if state in ("success", "failed") else None

    state = airflow.wait_until("the quarterly drill", finished, timeout=1200, interval=2)
    states = {t["task_id"]: t["state"] for t in airflow.task_instances("dr_test_quarterly", run_id)}
    assert state == "success", states
    # Each step waited for its DAG deferred: no worker slot held while the child ran.
    assert ("step_1_dr_database_pitr", "deferred") in seen
    # Each step was a run of its own DAG, through the scheduler.
    for index, dag_id in enumerate(CHAIN):
        child = f"{run_id}__step_{index + 1}_{dag_id}"
        assert airflow.run_state(dag_id, child) == "success", (dag_id, child)

    recorded = airflow.xcom("dr_test_quarterly", run_id, "record")
    steps = recorded["details"]["steps"]
    assert steps[0]["name"] == "simulate_loss" and "moved aside" in steps[0]["detail"]
    assert [s["name"].split(" ")[0] for s in steps[1:]] == [
        f"step_{i + 1}_{dag_id}" for i, dag_id in enumerate(CHAIN)
    ]
    assert all(s["status"] == "succeeded" and s["seconds"] > 0 for s in steps[1:])
    assert recorded["data_loss_seconds"] is not None and recorded["rpo_met"] is not None
    assert recorded["rto_achieved_seconds"] == pytest.approx(steps[-1]["seconds"], abs=1)
    ledger = (
        f"host={L.HOST} port={L.OPS_PORT} user={L.SUPERUSER} dbname={L.LEDGER_DATABASE} "
        f"password={sandbox.secrets.postgres_password}"
    )
    run, _ = reports.ledger_run(ledger, dag_id="dr_test_quarterly", run_id=run_id)
    assert run["data_loss_seconds"] == recorded["data_loss_seconds"]
    # The PITR step recorded itself in the ledger under the drill's incident id.
    children = reports.trend_rows(ledger, "dr_database_pitr", 1)
    assert children[-1]["incident_id"] == recorded["incident_id"]
    published = airflow.xcom("dr_test_quarterly", run_id, "publish")
    assert "email" in published["delivery"]["sent"]

    deadline = time.monotonic() + 120
    while not sandbox_is_healthy(sandbox):
        assert time.monotonic() < deadline, "the sandbox is not healthy after the drill"
        time.sleep(1)


def test_the_site_failover_drill_runs_the_failover_dag_through_the_scheduler(
    airflow, native_dags, sandbox
):
    """dr_test_site_failover (dry run): the failover DAG runs as its own run (a dry run:
    it prints its plan, restores nothing), waited for deferred; production is refused."""
    from tracktion_dr.airflow.backup_jobs import base_backups, offsite_copy
    from tracktion_dr.backups.catalog import Catalog

    # The site's guard reads the cross-region copy: make it (the job dr_backup_offsite
    # runs), from a verified newest base backup the site can replay to the end of the
    # archive (on the primary's current timeline: earlier tests may have run a PITR).
    base_backup_on_current_timeline(
        Catalog(PLAN.environment("drill").backups),
        superuser_conninfo(sandbox, L.PRIMARY_PORT),
        lambda: base_backups(PLAN, "drill", notify=False),
    )
    copied = offsite_copy(PLAN, "drill", dry_run=False, notify=False)
    assert copied, copied
    run_id = airflow.trigger("dr_test_site_failover", {"environment": "drill", "dry_run": True})
    state = airflow.wait_for_run("dr_test_site_failover", run_id, timeout=600)
    states = {
        t["task_id"]: t["state"] for t in airflow.task_instances("dr_test_site_failover", run_id)
    }
    assert state == "success", states
    child = f"{run_id}__run_site_failover"
    assert airflow.run_state("dr_site_failover", child) == "success"
    ran = airflow.xcom("dr_test_site_failover", run_id, "run_site_failover")
    assert ran["dag_id"] == "dr_site_failover" and ran["state"] == "success", ran
    assert ran["record"]["outcome"] == "dry_run"
    refused = airflow.trigger(
        "dr_test_site_failover", {"environment": "production", "dry_run": True}
    )
    assert airflow.wait_for_run("dr_test_site_failover", refused, timeout=300) == "failed"
    guard = [
        t
        for t in airflow.task_instances("dr_test_site_failover", refused)
        if t["task_id"] == "guard"
    ]
    assert guard[0]["state"] == "failed"
