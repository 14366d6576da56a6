"""The monthly drill for real (dag.test()) against the live sandbox.

When I run the monthly drill on a healthy sandbox, then it passes, every scratch resource
is gone, and the report's numbers are the ledger's. When the newest dump is corrupt, a
service will not start, or the target is production, then the drill fails (or refuses)
naming exactly that. (The quarterly drill chains its step DAGs through the scheduler, so
it runs under a real Airflow: tests/e2e/test_native_orchestration.py.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from harness.ports import service_cannot_start

from tracktion_dr.airflow.dag_kit import report_path
from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states
from tracktion_dr.core.incident import InvalidInput
from tracktion_dr.core.plan import load_plan
from tracktion_dr.evidence import reports
from tracktion_dr.scenarios.drills import guard_monthly
from tracktion_sandbox import layout as L

pytestmark = pytest.mark.sandbox


def ledger_conninfo(sandbox) -> str:
    return (
        f"host={L.HOST} port={L.OPS_PORT} user={L.SUPERUSER} dbname={L.LEDGER_DATABASE} "
        f"password={sandbox.secrets.postgres_password}"
    )


def app_conninfo(sandbox, port: int = L.PRIMARY_PORT, dbname: str = "postgres") -> str:
    return (
        f"host={L.HOST} port={port} user={L.SUPERUSER} dbname={dbname} "
        f"password={sandbox.secrets.postgres_password}"
    )


def scratch_databases(sandbox) -> list[str]:
    with psycopg.connect(app_conninfo(sandbox), connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'dr\\_test\\_%'"
        ).fetchall()
    return [r[0] for r in rows]


def test_monthly_drill_passes_cleans_up_and_reports_the_ledger_numbers(sandbox):
    dag_run = run_dag("dr_test_monthly", {"environment": "drill"})
    states = task_states(dag_run)
    assert states["verdict"] == "success", states
    assert scratch_databases(sandbox) == []
    recorded = task_result(dag_run, "record")
    names = [s["name"] for s in recorded["details"]["steps"]]
    assert names == [
        "database_restore:tracktion",
        "service_recovery:analysis-service",
        "service_recovery:file-watcher",
        "service_recovery:tracklist-service",
        "service_recovery:notification-service",
        "storage_recovery:user_uploads",
    ]
    assert all(s["status"] == "succeeded" for s in recorded["details"]["steps"])

    run, _ = reports.ledger_run(
        ledger_conninfo(sandbox), dag_id="dr_test_monthly", run_id=dag_run.run_id
    )
    published = task_result(dag_run, "publish")
    report = json.loads(Path(published["paths"]["json"]).read_text())
    assert report["ledger_id"] == run["id"]
    assert report["rto_achieved_seconds"] == run["rto_achieved_seconds"]
    assert report["rto_target_seconds"] == run["rto_target_seconds"] == 1800
    assert report["data_loss_seconds"] == run["data_loss_seconds"]
    assert report["rpo_target_seconds"] == run["rpo_target_seconds"] == 900
    assert report["steps"] == json.loads(json.dumps(run["details"]["steps"], default=str))
    assert report["rto"] == "met" and report["rpo"] == "met"
    assert report["trend"][-1]["incident_id"] == run["incident_id"]
    markdown = Path(published["paths"]["markdown"]).read_text()
    assert run["incident_id"] in markdown and "database_restore:tracktion" in markdown
    assert "<svg" in Path(published["paths"]["html"]).read_text()
    # the report went to the sink (e-mail) when notify is set - see the e2e quarterly test

    # "DR report" on the publish task in the UI: the link Airflow stored, served by the
    # dashboard plugin's own app as the very HTML file the run wrote
    link = task_result(dag_run, "publish", key="_link_DrReportLink")
    assert link == published["link"] == report_path("dr_test_monthly", dag_run.run_id)
    response = TestClient(dashboard_app()).get(link.removeprefix("/dr-dashboard"))
    assert response.status_code == 200
    assert response.text == Path(published["paths"]["html"]).read_text()


def dashboard_app():
    """The DR dashboard plugin's FastAPI app, imported from plugins/ as Airflow does, with
    its login dependency stood in for: there is no api-server (and so no auth manager) in
    this process. The login itself is tested on a real api-server (tests/e2e)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "plugins" / "dr_dashboard.py"
    spec = importlib.util.spec_from_file_location("dr_dashboard_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.app.dependency_overrides[module.authenticated_user] = lambda: None
    return module.app


@pytest.fixture()
def corrupt_newest_dump(sandbox):
    folder = sandbox.layout.logical_dumps
    newest = sorted(folder.glob("*.dump"), key=lambda p: p.stat().st_mtime)[-1]
    kept = newest.with_name(newest.name + ".pristine")
    shutil.copy2(newest, kept)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes: only the checksum sees it
    newest.write_bytes(bytes(data))
    try:
        yield newest
    finally:
        os_replace(kept, newest)
        for sidecar in folder.glob(newest.name + ".verif*"):
            sidecar.unlink()


def os_replace(src: Path, dst: Path) -> None:
    import os

    os.replace(src, dst)


def test_monthly_drill_fails_naming_a_corrupt_newest_dump(sandbox, corrupt_newest_dump):
    dag_run = run_dag("dr_test_monthly", {"environment": "drill"})
    states = task_states(dag_run)
    assert states["test_databases"] == "failed"
    assert states["test_services"] == "success" and states["verdict"] == "failed"
    recorded = task_result(dag_run, "record")
    step = recorded["details"]["steps"][0]
    assert step["status"] == "failed"
    assert corrupt_newest_dump.name in step["detail"] and "sha256" in step["detail"]
    assert scratch_databases(sandbox) == []


@pytest.fixture()
def notification_service_blocked(sandbox, supervisor_controller):
    with service_cannot_start(supervisor_controller, "notification-service"):
        yield


def test_monthly_drill_fails_naming_a_service_that_will_not_start(
    sandbox, notification_service_blocked
):
    dag_run = run_dag("dr_test_monthly", {"environment": "drill", "service_timeout_seconds": 8})
    states = task_states(dag_run)
    assert states["test_services"] == "failed" and states["verdict"] == "failed"
    assert states["test_databases"] == "success" and states["test_storage"] == "success"
    steps = {s["name"]: s for s in task_result(dag_run, "record")["details"]["steps"]}
    assert steps["service_recovery:notification-service"]["status"] == "failed"
    assert steps["service_recovery:analysis-service"]["status"] == "succeeded"


def test_monthly_drill_refuses_production(sandbox):
    dag_run = run_dag("dr_test_monthly", {"environment": "production"})
    states = task_states(dag_run)
    assert str(dag_run.state) == "failed" and states["guard"] == "failed"
    assert states["test_databases"] == "upstream_failed"
    # a step that runs whatever happened sees there is no run, and says so
    assert task_result(dag_run, "test_services")["event"]["status"] == "skipped"
    assert states["verdict"] == "upstream_failed"
    assert scratch_databases(sandbox) == []


def test_monthly_guard_refuses_targets_resolving_to_production(sandbox, tmp_path):
    plan = load_plan()
    incident = {"environment": "drill", "incident_id": "DR-20261126-000000"}
    assert guard_monthly(plan, incident, "t")["scratch_databases"] == {
        "tracktion": "dr_test_tracktion_t"
    }
    drill = plan.environments["drill"].model_copy(update={"shares_production_targets": False})
    unshared = plan.model_copy(update={"environments": {**plan.environments, "drill": drill}})
    with pytest.raises(InvalidInput) as refused:
        guard_monthly(unshared, incident, "t")
    assert refused.value.field == "drills.monthly.services" and "analysis-service" in str(
        refused.value
    )
    inside = plan.drills.monthly.model_copy(
        update={"scratch_dir": str(sandbox.layout.user_uploads / "scratch")}
    )
    bad_dir = plan.model_copy(update={"drills": plan.drills.model_copy(update={"monthly": inside})})
    with pytest.raises(InvalidInput) as refused:
        guard_monthly(bad_dir, incident, "t")
    assert refused.value.field == "drills.monthly.scratch_dir"
