"""The incident response rules: templates, escalation thresholds, status cadence, review."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tracktion_dr.core.incident import InvalidInput
from tracktion_dr.core.plan import load_plan
from tracktion_dr.notify.templates import TemplateError, placeholders, render, template_names
from tracktion_dr.scenarios.incident_response import (
    IncidentRequest,
    alert_message,
    due_escalations,
    next_status_update,
    pagerduty_dedup_key,
    post_incident_review,
    resolve_request,
    restored_message,
    status_update_message,
)

START = datetime(2026, 11, 26, 1, 0, tzinfo=UTC)
INCIDENT = {
    "incident_id": "DR-20261126-010000",
    "started_at": START.isoformat(),
    "environment": "drill",
}
REQUEST = IncidentRequest("critical", 'DB "primary" down\nsince 01:00 $HOME', "", False)


def test_every_seed_template_is_in_the_repo():
    assert set(template_names()) >= {
        "alert",
        "activation",
        "status_update",
        "customer_initial",
        "customer_restored",
        "escalation",
        "incident_document",
        "post_incident_review",
    }
    assert {"incident_id", "status", "eta", "next_update", "impact"} <= placeholders(
        "status_update"
    )


def test_a_missing_placeholder_is_an_error_naming_it():
    with pytest.raises(TemplateError, match="severity"):
        render("alert", incident_id="x", time="t", description="d")


def test_description_arrives_as_written():
    message = alert_message(INCIDENT, REQUEST)
    assert message.title == "DISASTER RECOVERY: DR-20261126-010000"
    assert 'Description: DB "primary" down\nsince 01:00 $HOME' in message.text
    assert message.dedup_key == pagerduty_dedup_key("DR-20261126-010000")


def test_pagerduty_dedup_key_is_stable_across_trigger_and_resolve():
    plan = load_plan()
    trigger = alert_message(INCIDENT, REQUEST)
    update = status_update_message(
        plan,
        INCIDENT,
        REQUEST,
        status="s",
        activities="a",
        next_update="n",
        war_room="w",
        impact="i",
    )
    resolve = restored_message(
        INCIDENT,
        REQUEST,
        duration="5m",
        recovery="r",
        recovery_outcome="ok",
        verification="v",
        data_impact="none",
    )
    assert [m.pagerduty_action for m in (trigger, update, resolve)] == [
        "trigger",
        "acknowledge",
        "resolve",
    ]
    assert trigger.dedup_key == update.dedup_key == resolve.dedup_key
    assert resolve.status_page_status == "resolved"
    assert "2026-11-26 01:30:00 UTC (RTO 30m)" in update.text  # ETA = critical tier's RTO


def test_escalation_thresholds_from_the_incident_start():
    plan = load_plan()
    assert [(level.level, after) for level, after in plan.escalation_thresholds()] == [
        (1, timedelta()),
        (2, timedelta(minutes=15)),
        (3, timedelta(minutes=30)),
        (4, timedelta(hours=1)),
    ]

    def due(minutes, paged=(), resolved=False):
        now = START + timedelta(minutes=minutes)
        levels = due_escalations(plan, START, now, already_paged=set(paged), resolved=resolved)
        return [level.level for level, _ in levels]

    assert due(0) == [1]
    assert due(14.9, paged=[1]) == []
    assert due(15, paged=[1]) == [2]
    assert due(61, paged=[1, 2]) == [3, 4]
    assert due(61, paged=[1, 2], resolved=True) == []  # never after resolution


def test_status_update_cadence():
    interval = timedelta(minutes=30)
    assert next_status_update(None, START, interval)
    assert not next_status_update(START, START + timedelta(minutes=29), interval)
    assert next_status_update(START, START + timedelta(minutes=30), interval)


def test_inputs_are_checked_naming_the_field():
    plan = load_plan()
    base = {"severity": "critical", "description": "x", "scenario": ""}
    assert resolve_request(plan, base).severity == "critical"
    for field, value in (("severity", "sev1"), ("scenario", "dr_nope"), ("description", " ")):
        with pytest.raises(InvalidInput) as caught:
            resolve_request(plan, {**base, field: value})
        assert caught.value.field == field


def test_post_incident_review_is_the_seed_template_with_the_real_timeline():
    runs = [
        {
            "id": 7,
            "dag_id": "dr_incident_response",
            "run_id": "r1",
            "clock_started_at": START,
            "outcome": "succeeded",
            "rto_target_seconds": 1800.0,
            "rto_achieved_seconds": 300.0,
            "data_loss_seconds": None,
        }
    ]
    events = {
        7: [
            {
                "name": "assess",
                "kind": "step",
                "status": "succeeded",
                "detail": "DEGRADED",
                "finished_at": START + timedelta(minutes=1),
            },
            {
                "name": "watch_recovery",
                "kind": "gate",
                "status": "succeeded",
                "detail": "a|b",
                "finished_at": START + timedelta(minutes=5),
            },
        ]
    }
    text = post_incident_review(
        "DR-20261126-010000",
        runs,
        events,
        description="DB down",
        detected_at=(START + timedelta(seconds=30)).isoformat(),
        resolved_at=(START + timedelta(minutes=6)).isoformat(),
        review_date="2026-11-27",
    )
    assert text.startswith("# Post-Incident Review: DR-20261126-010000")
    assert "**Duration of Incident**: 6m" in text
    lines = [line for line in text.splitlines() if line.startswith("| 2026")]
    assert [line.split(" | ")[1] for line in lines] == [
        "Incident start",
        "Detection",
        "step assess (succeeded)",
        "gate watch_recovery (succeeded)",
        "Resolution",
    ]
    assert "a\\|b" in text  # table cells are escaped
    assert "## Lessons Learned" in text  # the rest of the seed's template is kept
