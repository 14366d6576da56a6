"""A successful (or dry) scenario run pages nobody: with ``notify`` on, its start and
outcome reach the team's chat (and mail, for a success) through the one policy (the tail's
``notify_outcome``), and the sandbox's sink receives nothing for PagerDuty."""

from __future__ import annotations

import json

import pytest

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states

pytestmark = pytest.mark.sandbox

# Scenario DAGs that succeed on a healthy sandbox without changing it.
SUCCEEDING = [
    "dr_application_recovery",
    "dr_infrastructure_recovery",
    "dr_service_dependencies_recovery",
    "dr_storage_recovery",
    "dr_test_monthly",  # a drill: its scratch resources are gone again at the end
]


def received(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("dry_run", [False, True], ids=["real", "dry_run"])
@pytest.mark.parametrize("dag_id", SUCCEEDING)
def test_a_successful_run_pages_nobody(sandbox, dag_id, dry_run):
    hooks = sandbox.layout.sink_webhooks
    already = len(received(hooks))
    dag_run = run_dag(dag_id, {"environment": "drill", "notify": True, "dry_run": dry_run})
    assert str(dag_run.state) == "success", task_states(dag_run)
    outcome = task_result(dag_run, "notify_outcome")
    assert outcome["failed"] == {}
    if dry_run:
        assert outcome["event"] == "dry_run" and outcome["sent"] == ["slack"]
    else:
        assert outcome["event"] == "succeeded" and sorted(outcome["sent"]) == ["email", "slack"]
    channels = [r["path"].split("/")[1] for r in received(hooks)[already:]]
    assert "slack" in channels, "the team hears the start and the outcome"
    assert "pagerduty" not in channels, channels
