"""Which recovery an incident starts, with what conf, and when it is restored."""

from __future__ import annotations

import pytest

from tracktion_dr.core.errors import InvalidInput
from tracktion_dr.core.plan import load_plan
from tracktion_dr.scenarios import recovery_routes as routes
from tracktion_dr.scenarios.incident_response import (
    IncidentRequest,
    approval_question,
    closing,
    customer_impact,
    customer_restored_message,
    data_impact,
    resolve_request,
)

PLAN = load_plan()
DRILL = PLAN.environment("drill")
PRODUCTION = PLAN.environment("production")
INCIDENT = {
    "incident_id": "DR-20261126-010000",
    "started_at": "2026-11-26T01:00:00+00:00",
    "environment": "drill",
    "dry_run": False,
    "notify": True,
}
SERVICE = next(iter(DRILL.services))


def conf(scenario, affected=(), scenario_conf=None, plan_env=DRILL, approved_by=None, **inc):
    return routes.recovery_conf(
        plan_env,
        scenario,
        affected=list(affected),
        scenario_conf=scenario_conf or {},
        incident={**INCIDENT, **inc},
        approved_by=approved_by,
    )


def test_service_down_recovers_that_service_only():
    derived = conf("dr_application_recovery", [SERVICE])
    assert derived["services"] == [SERVICE] and derived["strategy"] == "restart_failed"
    assert derived["incident_id"] == INCIDENT["incident_id"] and derived["environment"] == "drill"


def test_primary_down_fails_over_the_named_database():
    database = next(iter(DRILL.databases))
    derived = conf("dr_failover", [f"database:{database}"])
    assert derived["target"] == "database" and derived["database"] == database
    assert derived["mode"] == "automatic"  # the incident's approval was the human decision


def test_a_human_approval_stands_for_the_typed_confirmation_only_where_demanded():
    cluster = next(iter(PRODUCTION.clusters))
    with pytest.raises(InvalidInput) as refused:
        conf("dr_database_pitr", plan_env=PRODUCTION, environment="production")
    assert refused.value.field == "auto_recover"
    approved = conf("dr_database_pitr", plan_env=PRODUCTION, approved_by="alice")
    assert approved["confirm"] == f"RESTORE {cluster}" and approved["target_type"] == "latest"
    assert "confirm" not in conf("dr_database_pitr")  # the drill demands no confirmation


def test_operator_params_win_over_derived_ones_and_unknown_ones_are_refused():
    derived = conf("dr_database_pitr", scenario_conf={"target_type": "time", "target": "t"})
    assert derived["target_type"] == "time" and derived["target"] == "t"
    with pytest.raises(InvalidInput) as refused:
        routes.check_scenario_conf("dr_database_pitr", {"confirm": "RESTORE main"})
    assert refused.value.field == "scenario_conf.confirm"  # only an approval confirms
    with pytest.raises(InvalidInput):
        routes.check_scenario_conf("dr_database_pitr", ["latest"])


def test_backup_dags_get_no_incident_params():
    derived = conf("dr_backup_logical_dump", ["backups"])
    assert set(derived) == {"environment", "notify"}


def test_affected_components_are_checked_naming_the_position():
    assert routes.check_affected(DRILL, [SERVICE, SERVICE]) == [SERVICE]
    with pytest.raises(InvalidInput) as refused:
        routes.check_affected(DRILL, [SERVICE, "nope-service"])
    assert refused.value.field == "affected[1]"


def test_unattended_destructive_recovery_is_refused_where_a_human_must_decide():
    params = {
        "severity": "critical",
        "description": "primary down",
        "scenario": "dr_database_pitr",
        "environment": "production",
        "auto_recover": True,
    }
    with pytest.raises(InvalidInput) as refused:
        resolve_request(PLAN, params)
    assert refused.value.field == "auto_recover"
    assert resolve_request(PLAN, {**params, "auto_recover": False}).scenario == "dr_database_pitr"
    # A restart is not destructive: it may start at once, also in production.
    restart = {**params, "scenario": "dr_application_recovery", "affected": [SERVICE]}
    assert resolve_request(PLAN, restart).auto_recover is True


def test_restored_only_when_the_affected_components_pass_the_re_check():
    ok = routes.restoration_verdict(
        [SERVICE], {"down": ["storage:audio"], "degraded": []}, [{"name": "x", "status": "passed"}]
    )
    assert ok.restored and ok.still_down == []
    down = routes.restoration_verdict([SERVICE], {"down": [SERVICE], "degraded": []}, [])
    assert not down.restored and down.still_down == [SERVICE]
    failed_check = routes.restoration_verdict(
        [SERVICE], {"down": [], "degraded": []}, [{"name": "data_integrity", "status": "failed"}]
    )
    assert not failed_check.restored and failed_check.still_down == ["check data_integrity"]
    # Nothing named: every component must be up.
    assert not routes.restoration_verdict([], {"down": ["storage:audio"]}, []).restored


def test_validation_checks_follow_the_affected_components():
    assert routes.checks_for([SERVICE]) == ["application_functionality"]
    assert routes.checks_for(["database:tracktion"]) == ["data_integrity"]
    assert routes.checks_for(["backups"]) == ["backup_systems"]
    assert set(routes.checks_for([])) == {"application_functionality", "data_integrity"}


def test_false_positive_only_when_every_named_component_is_healthy():
    assert routes.false_positive([SERVICE], {"down": [], "degraded": ["replica:main"]})
    assert not routes.false_positive([SERVICE], {"down": [SERVICE], "degraded": []})
    assert not routes.false_positive([], {"down": [], "degraded": []})  # nothing to judge


@pytest.mark.parametrize(
    ("inputs", "outcome"),
    [
        ({"triage": {"false_positive": True}}, "false_positive"),
        ({"decision": {"timed_out": True}}, "approval_timed_out"),
        ({"decision": {"chosen": None, "timed_out": False}}, "manual"),
        ({"recovery": {"state": "success"}, "verification": {"restored": True}}, "restored"),
        # A successful recovery run is not a restoration: only the re-check is.
        ({"recovery": {"state": "success"}, "verification": {"restored": False}}, "not_restored"),
        ({"recovery": {"state": "success"}, "verification": None}, "not_restored"),
        ({"recovery": {"state": "failed"}, "verification": {"restored": False}}, "not_restored"),
    ],
)
def test_closing(inputs, outcome):
    args = {"triage": None, "decision": None, "recovery": None, "verification": None, **inputs}
    ending = closing(**args)
    assert ending.outcome == outcome
    assert ending.escalates == (outcome in ("not_restored", "approval_timed_out"))


def test_customer_texts_carry_no_internal_identifiers():
    request = IncidentRequest(
        "important",
        "[alertmanager] x",
        "dr_application_recovery",
        True,
        [SERVICE, "database:tracktion"],
    )
    message = customer_restored_message(INCIDENT, request, duration="5m", impact="none")
    text = message.title + message.text
    for internal in (INCIDENT["incident_id"], "dr_", "database:", SERVICE, "alertmanager"):
        assert internal not in text, internal
    assert customer_impact(["replica:main"]) == "parts of the platform"


def test_the_approval_question_shows_the_plan_of_actions():
    run = {
        **INCIDENT,
        "severity": "critical",
        "description": "primary down",
        "scenario": "dr_failover",
        "affected": ["database:tracktion"],
        "scenario_conf": {},
    }
    question = approval_question(PLAN, run, {"status": "DOWN", "down": ["database:tracktion"]})
    assert "dr_failover" in question.subject
    assert "target=database" in question.body and "database=tracktion" in question.body
    assert "destructive" in question.body and routes.NO_RECOVERY in question.body


def test_reseed_inputs_name_the_cluster_field():
    from tracktion_dr.scenarios import replica_reseed

    incident = {**INCIDENT, "environment": "drill"}
    run = replica_reseed.check_inputs(PLAN, incident, {"cluster": "main"})
    assert run["tag"] == "20261126_010000" and run["wal_archive"]
    with pytest.raises(InvalidInput) as refused:
        replica_reseed.check_inputs(PLAN, incident, {"cluster": "nope"})
    assert refused.value.field == "cluster"


def test_a_third_party_still_down_is_restored_only_when_the_services_work_around_it():
    affected = ["external:delivery-gateway"]
    assert routes.checks_for(affected) == ["application_functionality"]
    assessment = {"down": [], "degraded": ["external:delivery-gateway"]}
    around = routes.restoration_verdict(
        affected, assessment, [{"name": "application_functionality", "status": "passed"}]
    )
    assert around.restored and "worked around" in around.detail
    broken = routes.restoration_verdict(
        affected, assessment, [{"name": "application_functionality", "status": "failed"}]
    )
    assert not broken.restored
    assert broken.still_down == ["external:delivery-gateway", "check application_functionality"]
    # Without the functional check having run, nothing is assumed.
    assert not routes.restoration_verdict(affected, assessment, []).restored


def test_storage_failover_from_an_incident_switches_the_named_area_with_its_confirmation():
    area = next(n for n, a in DRILL.storage.items() if a.backup_location)
    derived = conf("dr_storage_failover", [f"storage:{area}"])
    assert derived["area"] == area and derived["direction"] == "failover"
    assert "confirm" not in derived  # the drill demands none
    production = PRODUCTION.model_copy(
        update={"storage": {area: DRILL.storage[area]}, "destructive_requires_confirmation": True}
    )
    approved = conf(
        "dr_storage_failover", [f"storage:{area}"], plan_env=production, approved_by="a"
    )
    assert approved["confirm"] == f"RESTORE storage {area}"


def test_data_impact_says_only_what_was_measured():
    team, customer = data_impact([{"data_loss_seconds": None}])
    assert "not measured" in team and "none" not in team
    assert data_impact([{"data_loss_seconds": 0.0}])[1] == "none: no data was lost"
    team, customer = data_impact([{"data_loss_seconds": 3.0}, {"data_loss_seconds": 42.0}])
    assert "42s" in team and "42s" in customer  # the worst measured loss
