"""The step kit, run for real with dag.test() on a fixture DAG: a refused guard is the run's
one failure (nothing later fails on its absence), a dry run skips acting steps, a failed
step fails the run through the verdict and the after-all step still runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracktion_dr.airflow.dag_runs import load_dag, task_result, task_states

pytestmark = pytest.mark.sandbox
FIXTURES = Path(__file__).resolve().parents[1] / "dags_fixtures"


def run(conf: dict):
    dag_run = load_dag("dr_step_kit_probe", FIXTURES).test(run_conf=conf)
    return dag_run, task_states(dag_run)


def test_a_refused_guard_is_the_runs_only_failure(sandbox):
    dag_run, states = run({"refuse": True})
    assert str(dag_run.state) == "failed"
    failed = sorted(t for t, s in states.items() if s == "failed")
    assert failed == ["guard"], states
    assert states["verdict"] == "upstream_failed"
    assert task_result(dag_run, "restart_anyway")["event"]["status"] == "skipped"
    assert task_result(dag_run, "record")["refused"] is True


def test_dry_run_skips_acting_steps_and_runs_checks(sandbox):
    dag_run, states = run({"dry_run": True})
    assert str(dag_run.state) == "success", states
    assert task_result(dag_run, "act")["event"]["status"] == "skipped"
    assert task_result(dag_run, "look")["seen"] == 42
    assert task_result(dag_run, "record")["outcome"] == "dry_run"


def test_a_failed_step_fails_the_run_and_after_all_steps_still_run(sandbox):
    dag_run, states = run({"fail_act": True})
    assert str(dag_run.state) == "failed"
    assert states["act"] == "failed" and states["restart_anyway"] == "success", states
    timeline = task_result(dag_run, "record")
    assert timeline["outcome"] == "failed" and "act" in timeline["details"]["failed_tasks"]
    assert states["verdict"] == "failed"


def test_a_clean_run_records_every_step(sandbox):
    dag_run, states = run({})
    assert str(dag_run.state) == "success", states
    names = [e["name"] for e in task_result(dag_run, "record")["events"]]
    assert names == ["act", "gate_back", "look", "restart_anyway"]


def test_a_step_that_finds_a_failure_fails_its_task_and_keeps_what_it_measured(sandbox):
    dag_run, states = run({"look_finds_failure": True})
    assert str(dag_run.state) == "failed"
    assert states["look"] == "failed" and states["restart_anyway"] == "success", states
    looked = task_result(dag_run, "look")  # kept for the steps after it
    assert looked["seen"] == 0 and looked["event"]["status"] == "failed"
    assert looked["event"]["detail"] == "found it down"
    assert "look" in task_result(dag_run, "record")["details"]["failed_tasks"]
