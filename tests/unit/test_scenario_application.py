"""dr_application_recovery's decisions (scenarios.application), without a sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracktion_dr.core.errors import InvalidInput, Refused, StepFailed, ValidationFailed
from tracktion_dr.core.plan import load_plan
from tracktion_dr.scenarios import application

ROOT = Path(__file__).resolve().parents[2]
INCIDENT = {
    "incident_id": "DR-20261126-031200",
    "started_at": "2026-11-26T03:12:00+00:00",
    "environment": "drill",
    "dry_run": False,
    "notify": False,
}


@pytest.fixture(scope="module")
def plan():
    return load_plan(ROOT / "include" / "config" / "sandbox.yaml")


def run_for(plan, **params):
    return application.check_inputs(
        plan, dict(INCIDENT), {"strategy": "restart_failed", "services": ["all"], **params}
    )


def test_one_gate_per_service_with_its_tiers_rto_and_its_service_dependencies(plan):
    assert application.service_rto_seconds(plan) == {
        "analysis-service": 1800.0,
        "file-watcher": 7200.0,
        "tracklist-service": 7200.0,
        "notification-service": 14400.0,
    }
    # databases and storage areas in depends_on are other DAGs' business: no gate here
    assert application.service_dependencies(plan) == {
        "analysis-service": set(),
        "file-watcher": {"analysis-service"},
        "tracklist-service": set(),
        "notification-service": set(),
    }
    assert application.task_name("file-watcher") == "file_watcher"


def test_the_run_holds_the_scope_in_dependency_order_and_the_strictest_rto(plan):
    run = run_for(plan, services=["file-watcher", "analysis-service", "tracklist-service"])
    assert run["services"] == ["analysis-service", "file-watcher", "tracklist-service"]
    assert run["rto_target_seconds"] == 1800.0, "analysis-service is critical"
    assert run_for(plan, services=["tracklist-service"])["rto_target_seconds"] == 7200.0
    assert run["incident_id"] == INCIDENT["incident_id"], "the incident travels with the run"


def test_bad_inputs_are_refused_naming_the_field(plan):
    with pytest.raises(InvalidInput, match="strategy: 'reboot' is not one of") as refused:
        run_for(plan, strategy="reboot")
    assert "HINT" in str(refused.value)
    with pytest.raises(Refused, match=r"services: unknown \['ghost-service'\]"):
        run_for(plan, services=["ghost-service"])


def test_the_plan_of_actions_says_what_each_service_gets_and_after_what(plan):
    actions = application.plan_of_actions(plan, run_for(plan, strategy="restart_all"))
    assert actions[0].startswith("probe analysis-service, file-watcher")
    (watcher,) = [a for a in actions if a.startswith("file-watcher:")]
    assert "restart it through supervisord" in watcher
    assert "after analysis-service passed their gates" in watcher
    assert "gate_file_watcher" in watcher
    assert actions[-1].startswith("report healthy/total")


def test_what_each_strategy_does_given_the_probe():
    health = {"a": {"healthy": True, "detail": "ok"}, "b": {"healthy": False, "detail": "down"}}
    assert application.planned_actions("restart_failed", health) == {
        "a": "leave alone",
        "b": "restart",
    }
    assert application.planned_actions("rebuild", health) == {"a": "rebuild", "b": "rebuild"}


def test_a_service_found_down_is_looked_at_again_before_it_is_restarted():
    looked: list[bool] = []

    def healed() -> bool:
        looked.append(True)
        return True

    assert application.action_now("restart_failed", False, healed) is None, "it healed"
    assert looked == [True]
    assert application.action_now("restart_failed", False, lambda: False) == "restart"
    # healthy before: no second look, no action; other strategies act without looking
    assert application.action_now("restart_failed", True, healed) is None and looked == [True]
    assert application.action_now("restart_all", True, healed) == "restart"
    assert application.action_now("rebuild", False, healed) == "rebuild" and looked == [True]


def test_a_partial_recovery_fails_naming_what_is_still_down_but_a_dry_run_only_reports(plan):
    summary = application.health_summary(
        {
            "analysis-service": {"healthy": False, "detail": "functional check: sample missing"},
            "tracklist-service": {"healthy": True, "detail": "HTTP 200"},
        }
    )
    assert summary == {
        "healthy": 1,
        "total": 2,
        "down": {"analysis-service": "functional check: sample missing"},
    }
    with pytest.raises(ValidationFailed, match=r"1/2 services healthy; still down: analysis") as e:
        application.judge_health({"dry_run": False}, summary)
    assert isinstance(e.value, StepFailed) and not isinstance(e.value, Refused)
    assert application.judge_health({"dry_run": True}, summary) == "1/2 services healthy"
    assert application.judge_health({"dry_run": False}, application.health_summary({})) == (
        "0/0 services healthy"
    )


def test_the_record_carries_the_strategy_scope_and_health(plan):
    run = run_for(plan, services=["tracklist-service"])
    fields = application.record_fields(run, None)
    assert fields == {
        "rto_target_seconds": 7200.0,
        "details": {"strategy": "restart_failed", "services": ["tracklist-service"], "health": {}},
    }
