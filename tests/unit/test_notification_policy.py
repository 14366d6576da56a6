"""One notification policy: a success pages nobody; failures and breaches do."""

from __future__ import annotations

import pytest

from tracktion_dr.core.plan import load_plan
from tracktion_dr.notify.messages import DrMessage
from tracktion_dr.notify.policy import (
    NOTIFICATION_POLICY,
    PAGING_CHANNELS,
    RunEvent,
    channels_for,
    outcome_event,
)
from tracktion_dr.notify.runs import notify_outcome, outcome_message


@pytest.fixture(scope="module")
def plan():
    return load_plan()


def test_every_event_has_a_route_and_only_human_needing_ones_page():
    assert set(NOTIFICATION_POLICY) == set(RunEvent)
    paging = {e for e, channels in NOTIFICATION_POLICY.items() if PAGING_CHANNELS & set(channels)}
    assert paging == {RunEvent.FAILED, RunEvent.RTO_BREACHED, RunEvent.BACKUP_FAILED}


@pytest.mark.parametrize(
    ("outcome", "refused", "event"),
    [
        ("succeeded", False, RunEvent.SUCCEEDED),
        ("dry_run", False, RunEvent.DRY_RUN),
        ("failed", False, RunEvent.FAILED),
        ("failed", True, RunEvent.REFUSED),
    ],
)
def test_outcome_events(outcome, refused, event):
    assert outcome_event(outcome, refused=refused) is event


def test_a_successful_recovery_pages_nobody(plan, monkeypatch):
    sent: list[tuple[list[str], DrMessage]] = []

    def fake_deliver(plan, message, channels=None, **_):
        # Delivery itself is tested against the real sink (integration); here: who is asked.
        from tracktion_dr.notify.delivery import DeliveryReport

        sent.append((list(channels), message))
        return DeliveryReport(sent=list(channels))

    monkeypatch.setattr("tracktion_dr.notify.runs.deliver", fake_deliver)
    timeline = {
        "dag_id": "dr_database_pitr",
        "incident_id": "DR-20261126-030000",
        "environment": "production",
        "outcome": "succeeded",
        "rto_target_seconds": 1800,
        "rto_achieved_seconds": 600,
        "data_loss_seconds": 2.0,
        "details": {"failed_tasks": []},
    }
    notify_outcome(plan, {"notify": True}, timeline)
    notify_outcome(plan, {"notify": True}, {**timeline, "outcome": "failed"})
    (ok_channels, ok_message), (failed_channels, failed_message) = sent
    assert "pagerduty" not in ok_channels and ok_channels
    assert "pagerduty" in failed_channels
    assert failed_message.pagerduty_action == "trigger"
    assert outcome_message(plan, timeline).severity == "info"
    assert channels_for(plan, RunEvent.SUCCEEDED) == ok_channels
