"""A bad input is refused at the guard, and that refusal is the run's one failure.

For every scenario DAG on the step kit: the run fails, its guard is the only task that
failed, and every other task is skipped, upstream_failed or succeeded (steps that run
whatever happened, the record, notify and publish, see there is no run and say so instead
of failing on the missing guard result). Nothing is touched.
"""

from __future__ import annotations

import pytest

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states

pytestmark = pytest.mark.sandbox

NOT_FAILED = {"skipped", "upstream_failed", "success"}

# One input per DAG that passes the trigger form's schema but that the guard refuses.
BAD_INPUTS = {
    "dr_application_recovery": {"services": ["ghost-service"]},
    "dr_config_recovery": {"snapshot": "1999-01-01"},
    "dr_service_dependencies_recovery": {"incident_started_at": "2020-01-01T00:00:00Z"},
    "dr_storage_recovery": {"snapshot": "1999-01-01"},
    "dr_infrastructure_recovery": {"incident_started_at": "2026-11-26T03:12:00"},  # no zone
    "dr_failover": {"target": "service", "service": "ghost-service"},
    "dr_test_monthly": {"environment": "production"},  # a drill never runs there
    "dr_test_quarterly": {"environment": "production"},
    "dr_incident_response": {"severity": "critical", "description": "x", "affected": ["ghost"]},
}


@pytest.mark.parametrize("dag_id", sorted(BAD_INPUTS))
def test_a_refused_guard_is_the_runs_only_failure(sandbox, dag_id):
    dag_run = run_dag(dag_id, {"environment": "drill", **BAD_INPUTS[dag_id]})
    states = task_states(dag_run)
    assert str(dag_run.state) == "failed", states
    assert states["guard"] == "failed", states
    others = {task: state for task, state in states.items() if task != "guard"}
    assert set(others.values()) <= NOT_FAILED, {
        task: state for task, state in others.items() if state not in NOT_FAILED
    }
    assert states["verdict"] == "upstream_failed"
    assert task_result(dag_run, "record")["refused"] is True
