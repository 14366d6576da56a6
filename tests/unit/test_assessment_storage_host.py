"""The assessment's storage check runs where the storage is.

Under a plan that puts the storage on a host of its own, that host's worker probes the
storage areas (``probe_storage``) while the default worker probes the rest; the assessment
takes the storage host's results, and reports the storage *not assessed* (DOWN, never
healthy) when they do not come in time. The storage paths of the compose plan do not exist
on this machine: a storage line reported OPERATIONAL below can only come from the results
handed over, not from a local look.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tracktion_dr.airflow import incident_steps
from tracktion_dr.core.plan import load_plan
from tracktion_dr.scenarios.assessment import assess

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def environment(monkeypatch):
    monkeypatch.setenv("DR_SANDBOX_HOME", "/srv/tracktion-absent")
    plan = load_plan(ROOT / "include" / "config" / "compose.yaml")
    # storage only: nothing else is probed over the network here
    return plan.environment("drill").model_copy(
        update={"services": {}, "databases": {}, "external_dependencies": {}}
    )


def conninfo(conn_id: str, database: str) -> str:
    raise AssertionError("no database is probed in these tests")


def reported(environment, status: str) -> list[dict]:
    return [
        {
            "name": f"storage:{name}",
            "kind": "storage",
            "status": status,
            "detail": "writable (on the storage host)",
            "elapsed_seconds": 0.01,
            "checked_at": "2026-11-27T18:00:00+00:00",
        }
        for name in environment.storage
    ]


def test_the_storage_host_results_are_taken_not_probed_here(environment):
    assert environment.storage, "the compose plan has storage areas"
    local = assess(environment, conninfo)  # probed here: the paths are absent
    assert local.status == "DOWN"
    handed_over = assess(
        environment, conninfo, storage_from=lambda: reported(environment, "OPERATIONAL")
    )
    assert handed_over.status == "OPERATIONAL"
    assert [r.name for r in handed_over.results] == [f"storage:{n}" for n in environment.storage]


def test_storage_results_that_do_not_come_are_not_assessed_and_down(environment):
    found = assess(environment, conninfo, storage_from=lambda: None)
    assert found.status == "DOWN"
    assert found.down == [f"storage:{n}" for n in environment.storage]
    assert all(r.detail.startswith("not assessed:") for r in found.results)


class FakeTaskInstance:
    """xcom_pull answers None until ``ready_after`` calls, then the storage host's rows."""

    def __init__(self, rows, ready_after: int | None):
        self.rows, self.ready_after, self.calls = rows, ready_after, 0

    def xcom_pull(self, task_ids):
        assert task_ids == incident_steps.STORAGE_PROBE_TASK
        self.calls += 1
        if self.ready_after is not None and self.calls > self.ready_after:
            return self.rows
        return None


def test_the_report_is_waited_for_then_given_up_on(environment):
    rows = reported(environment, "OPERATIONAL")
    late = FakeTaskInstance(rows, ready_after=2)
    assert incident_steps.storage_report({"ti": late}, wait_seconds=5)() == rows
    assert late.calls == 3
    never = FakeTaskInstance(rows, ready_after=None)
    started = time.monotonic()
    assert incident_steps.storage_report({"ti": never}, wait_seconds=0.6)() is None
    assert time.monotonic() - started >= 0.6 and never.calls >= 2


def test_only_a_plan_with_a_storage_host_splits_the_assessment(monkeypatch, tmp_path):
    monkeypatch.setenv("DR_SANDBOX_HOME", str(tmp_path))
    compose = load_plan(ROOT / "include" / "config" / "compose.yaml")
    sandbox = load_plan(ROOT / "include" / "config" / "sandbox.yaml")
    assert incident_steps.storage_probed_on_its_host(compose)
    assert not incident_steps.storage_probed_on_its_host(sandbox)
