"""The shared recovery mechanism, run for real with dag.test() on a fixture DAG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracktion_dr.airflow.dag_runs import load_dag, task_result, task_states
from tracktion_dr.airflow.support import conninfo
from tracktion_dr.evidence import ledger

pytestmark = pytest.mark.sandbox
FIXTURES = Path(__file__).resolve().parents[1] / "dags_fixtures"


def run(conf: dict):
    dag = load_dag("dr_kit_probe", FIXTURES)
    dag_run = dag.test(run_conf={"environment": "drill", **conf})
    return dag_run, task_states(dag_run), task_result(dag_run, "record")


def test_gate_opens_and_the_run_is_recorded(sandbox):
    dag_run, states, timeline = run({"gate": "opens", "rto_seconds": 600})
    assert states["verdict"] == "success" and states["gate_service_back"] == "success"
    assert timeline["outcome"] == "succeeded"
    names = [e["name"] for e in timeline["events"]]
    assert names == ["act", "gate_service_back"]
    assert timeline["events"][1]["detail"] == "poke 3"
    assert 0 < timeline["rto_achieved_seconds"] < 600 and timeline["rto_met"] is True
    (row,) = [
        r
        for r in ledger.recent_runs(conninfo("dr_ledger"), dag_id="dr_kit_probe")
        if r["run_id"] == dag_run.run_id
    ]
    assert row["outcome"] == "succeeded" and row["rto_achieved_seconds"] == pytest.approx(
        timeline["rto_achieved_seconds"]
    )


def test_gate_that_never_opens_breaches_escalates_and_fails_the_run(sandbox):
    before = (
        sandbox.layout.sink_webhooks.read_text().count("\n")
        if sandbox.layout.sink_webhooks.exists()
        else 0
    )
    dag_run, states, timeline = run({"gate": "never", "rto_seconds": 1})
    assert states["gate_service_back"] == "failed"
    assert states["record"] == "success", "the record is written whatever happened"
    assert states["verdict"] == "failed", "a failed gate fails the run"
    assert timeline["outcome"] == "failed" and timeline["details"]["failed_tasks"] == [
        "gate_service_back"
    ]
    assert timeline["rto_achieved_seconds"] is None
    new = [
        json.loads(line) for line in sandbox.layout.sink_webhooks.read_text().splitlines()[before:]
    ]
    escalations = [r for r in new if "RTO breached at gate_service_back" in json.dumps(r)]
    assert {r["path"].split("/")[1] for r in escalations} == {"slack", "pagerduty"}


def test_a_failed_step_is_in_the_timeline_and_fails_the_run(sandbox):
    dag_run, states, timeline = run({"fail_step": True, "rto_seconds": 600})
    assert states["act"] == "failed" and states["gate_service_back"] == "upstream_failed"
    assert states["verdict"] == "failed"
    failed = {e["name"]: e["status"] for e in timeline["events"]}
    assert failed == {"act": "failed", "gate_service_back": "failed"}
