"""dr_plan_review_annual for real (dag.test()): the review is built from the ledger and
written to the plan's report location; a second review sees the first one's fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states

pytestmark = pytest.mark.sandbox


def test_annual_review_reads_the_ledger_and_remembers_the_plan(sandbox):
    first = run_dag("dr_plan_review_annual", {"days": 365})
    assert set(task_states(first).values()) == {"success"}
    result = task_result(first, "review")
    review = json.loads(Path(result["paths"]["json"]).read_text())
    assert review["drills"]["monthly"]["scheduled"] == 12
    assert review["drills"]["quarterly"]["scheduled"] == 4
    assert {o["dag_id"] for o in review["objectives"]}  # the session's runs are in the ledger
    markdown = Path(result["paths"]["markdown"]).read_text()
    assert "Drills held vs scheduled" in markdown and "Contacts needing review" in markdown

    second = run_dag("dr_plan_review_annual", {"days": 365})
    assert task_result(second, "review")["plan_changed_for"] == []
