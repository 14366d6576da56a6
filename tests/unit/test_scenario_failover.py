"""dr_failover's decisions (scenarios.failover), without a sandbox."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from tracktion_dr.core.errors import FailoverRefused, InvalidInput, Refused
from tracktion_dr.core.plan import load_plan
from tracktion_dr.scenarios import failover

ROOT = Path(__file__).resolve().parents[2]
INCIDENT = {
    "incident_id": "DR-20261126-031200",
    "started_at": "2026-11-26T03:12:00+00:00",
    "environment": "drill",
    "dry_run": False,
    "notify": False,
}
PARAMS = {
    "target": "service",
    "mode": "automatic",
    "service": "notification-service",
    "database": "tracktion",
    "primary_server": "primary",
    "secondary_server": "",
}


@pytest.fixture(scope="module")
def plan():
    return load_plan(ROOT / "include" / "config" / "sandbox.yaml")


def run_for(plan, **params):
    return failover.check_inputs(plan, dict(INCIDENT), {**PARAMS, **params})


def test_a_service_failover_run(plan):
    run = run_for(plan)
    assert run["service"] == "notification-service" and "database" not in run
    assert run["secondary_server"] == "secondary"
    assert (run["rto_seconds"], run["rpo_seconds"]) == (14400.0, 14400.0), "standard tier"
    assert failover.locked_resources(run, plan) == []
    assert failover.started_summary(run) == (
        "automatic failover of notification-service: primary -> secondary"
    )


def test_a_database_failover_run_holds_its_cluster_and_database(plan):
    run = run_for(plan, target="database")
    assert run["database"] == "tracktion" and "service" not in run
    assert run["secondary_server"] == "replica"
    assert (run["rto_seconds"], run["rpo_seconds"]) == (1800.0, 900.0), "critical tier"
    assert failover.locked_resources(run, plan) == ["cluster:main", "database:tracktion"]
    assert failover.locked_resources({**run, "dry_run": True}, plan) == []


def test_unknown_targets_are_refused_naming_the_field(plan):
    with pytest.raises(InvalidInput, match="service: 'ghost' is not one of"):
        run_for(plan, service="ghost")
    with pytest.raises(InvalidInput, match="database: 'ghost' is not one of"):
        run_for(plan, target="database", database="ghost")


def test_an_environment_without_a_load_balancer_is_refused(plan):
    drill = plan.environment("drill").model_copy(update={"load_balancer": None})
    bare = plan.model_copy(update={"environments": {**plan.environments, "drill": drill}})
    with pytest.raises(InvalidInput, match="environment: 'drill' defines no load_balancer"):
        failover.check_inputs(bare, dict(INCIDENT), PARAMS)


def test_the_plan_of_actions_is_what_the_approval_shows(plan):
    service = failover.plan_of_actions(plan, run_for(plan))
    assert service[0] == (
        "enable `secondary` at weight 100 in the load balancer backend `notification-service`"
    )
    database = failover.plan_of_actions(plan, run_for(plan, target="database"))
    data_directory = plan.environment("drill").clusters["main"].data_directory
    assert database[0].startswith(f"fence the old primary ({data_directory})")
    assert "promote the streaming replica with pg_promote" in database


def test_manual_mode_goes_through_the_approval(plan):
    assert failover.approval_branch(run_for(plan, mode="manual")) == "approve"
    assert failover.approval_branch(run_for(plan)) == "automatic"
    assert failover.approval_timeout(plan) == timedelta(minutes=30)


def test_only_a_database_failover_goes_through_the_fence(plan):
    assert failover.fence_branch(run_for(plan, target="database")) == [
        "fence_old_primary",
        "switch",
    ]
    assert failover.fence_branch(run_for(plan)) == ["switch"], "a service has nothing to fence"


def test_an_unapproved_manual_failover_fails_saying_so(plan):
    manual = run_for(plan, mode="manual")
    approved = {"chosen_options": ["Approve"], "responded_by_user": {"id": "1", "name": "ana"}}
    assert failover.approval_outcome(manual, True, approved) == "approved by ana"
    # Airflow keeps no decision on Reject (nor on the timeout's default, Reject)
    with pytest.raises(FailoverRefused, match=r"not approved \(Reject, or no answer in time") as e:
        failover.approval_outcome(manual, True, None)
    assert isinstance(e.value, Refused), "final: never retried"
    with pytest.raises(FailoverRefused):
        failover.approval_outcome(manual, True, {"chosen_options": ["Reject"]})
    # never asked (the preconditions stopped the run), automatic mode, a dry run: no verdict
    assert failover.approval_outcome(manual, False, None).startswith("not asked")
    assert failover.approval_outcome(run_for(plan), False, None).startswith("automatic mode")
    assert failover.approval_outcome({**manual, "dry_run": True}, True, None).startswith("dry")


def test_the_record_has_an_rpo_only_for_the_database(plan):
    service = failover.record_fields(run_for(plan), None, None, None)
    assert service["rpo_target_seconds"] is None and service["details"]["switched"] is False
    database = failover.record_fields(
        run_for(plan, target="database"),
        {"data_loss_seconds": 1.5, "newest_surviving_write": "2026-11-26T03:11:58+00:00"},
        None,
        {"actions": ["promoted with pg_promote"]},
    )
    assert database["rpo_target_seconds"] == 900.0 and database["data_loss_seconds"] == 1.5
    assert database["details"]["switched"] is True
