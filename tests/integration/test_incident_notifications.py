"""Incident notifications through the real providers, as the sandbox's sink receives them:
templates with awkward descriptions, the PagerDuty lifecycle on one dedup key, the war-room
channel through the Slack provider's SlackHook, retries, and escalation by threshold.

The sandbox has no Slack workspace: the bot-token connection ``dr_slack_bot`` points the
SlackHook's Web API client at the sink, which records ``conversations.create`` and answers
like Slack. What would be created in Slack is exactly what the sink records.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
import yaml

from tracktion_dr.core.plan import load_plan, parse_plan
from tracktion_dr.notify.delivery import create_slack_channel, deliver, slack_channel_name
from tracktion_dr.scenarios.incident_response import (
    IncidentRequest,
    alert_message,
    restored_message,
    status_update_message,
)

pytestmark = pytest.mark.sandbox

INCIDENT_ID = "DR-20261126-020304"
DESCRIPTION = "Primary \"db-1\" unreachable\nsecond line with \\ and $PATH and 'single'"


def _incident(**extra):
    return {
        "incident_id": INCIDENT_ID,
        "started_at": datetime.now(UTC).isoformat(),
        "environment": "drill",
        "severity": "critical",
        "description": DESCRIPTION,
        "scenario": "",
        "auto_recover": False,
        "notify": True,
        "war_room": slack_channel_name(INCIDENT_ID),
        **extra,
    }


REQUEST = IncidentRequest("critical", DESCRIPTION, "", False)


class Sink:
    def __init__(self, layout):
        self.layout = layout
        self.hooks_at = self._count(layout.sink_webhooks)
        self.mail_at = self._count(layout.sink_mail)

    @staticmethod
    def _count(path) -> int:
        return len(path.read_text().splitlines()) if path.exists() else 0

    def hooks(self) -> list[dict]:
        return [
            json.loads(x)
            for x in self.layout.sink_webhooks.read_text().splitlines()[self.hooks_at :]
        ]

    def mail(self) -> list[dict]:
        if not self.layout.sink_mail.exists():
            return []
        return [
            json.loads(x) for x in self.layout.sink_mail.read_text().splitlines()[self.mail_at :]
        ]


def test_alert_reaches_every_channel_with_the_description_intact(sandbox):
    sink = Sink(sandbox.layout)
    report = deliver(load_plan(), alert_message(_incident(), REQUEST))
    assert report.failed == {}
    by_channel = {r["path"].split("/")[1]: r for r in sink.hooks()}
    assert DESCRIPTION in by_channel["slack"]["json"]["text"]
    assert by_channel["statuspage"]["json"]["incident"]["status"] == "investigating"
    assert DESCRIPTION in by_channel["statuspage"]["json"]["incident"]["body"]
    assert (
        by_channel["pagerduty"]["json"]["payload"]["custom_details"]["text"].count(DESCRIPTION) == 1
    )
    (mail,) = sink.mail()
    assert mail["subject"] == f"DISASTER RECOVERY: {INCIDENT_ID}"
    assert 'Primary "db-1" unreachable' in mail["body"] and "$PATH" in mail["body"]


def test_pagerduty_dedup_key_is_stable_from_trigger_to_resolve(sandbox):
    sink = Sink(sandbox.layout)
    plan = load_plan()
    incident = _incident()
    for message in (
        alert_message(incident, REQUEST),
        status_update_message(
            plan,
            incident,
            REQUEST,
            status="restoring",
            activities="-",
            next_update="soon",
            war_room=incident["war_room"],
            impact="db",
        ),
        restored_message(
            incident,
            REQUEST,
            duration="12m",
            recovery="dr_initial_assessment",
            recovery_outcome="success",
            verification="verified",
            data_impact="none",
        ),
    ):
        assert deliver(plan, message, channels=["pagerduty"]).sent == ["pagerduty"]
    events = [r["json"] for r in sink.hooks() if r["path"].startswith("/pagerduty")]
    assert [e["event_action"] for e in events] == ["trigger", "acknowledge", "resolve"]
    assert {e["dedup_key"] for e in events} == {f"tracktion-dr/{INCIDENT_ID}"}


def test_war_room_channel_through_the_slack_hook(sandbox):
    sink = Sink(sandbox.layout)
    name = slack_channel_name(INCIDENT_ID)
    assert name == "dr-20261126-020304"
    result = create_slack_channel("dr_slack_bot", name, f"Disaster recovery for {INCIDENT_ID}")
    assert result["created"] is True and result["id"].startswith("C")
    calls = {r["path"]: r for r in sink.hooks()}
    create = calls["/slack-api/conversations.create"]
    assert create["json"]["name"] == name if "json" in create else create["form"]["name"] == name
    assert create["headers"]["Authorization"] == "<present>"  # the bot token, never recorded
    assert "/slack-api/conversations.setPurpose" in calls


def test_a_failing_channel_is_retried_then_recorded(sandbox, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_DR_SLACK",
        json.dumps(
            {"conn_type": "slackwebhook", "host": "http://127.0.0.1:9/slack", "password": "T/B/x"}
        ),
    )
    report = deliver(
        load_plan(),
        alert_message(_incident(), REQUEST),
        channels=["slack", "pagerduty"],
        retry_delay=0,
    )
    assert report.sent == ["pagerduty"]
    assert report.attempts == {"slack": 3, "pagerduty": 1}
    assert "Connection refused" in report.failed["slack"]


def _fast_escalation_plan():
    """The sandbox plan with level 2 due one second after the start (3 and 4 much later)."""
    from tracktion_dr.core.plan import plan_path

    data = yaml.safe_load(plan_path().read_text())
    for level, after in zip(data["escalation"][1:], ("1s", "1h", "2h"), strict=True):
        level["escalate_after"] = after
    return parse_plan(data)


def test_escalation_fires_at_its_threshold_and_never_after_resolution(sandbox):
    """The real sensor, poked by hand; only the run-state lookup is a stand-in (the
    triggered run's state comes from the Airflow API, which a unit of the sensor lacks)."""
    from tracktion_dr.airflow.incident_watch import RecoveryWatch

    plan = _fast_escalation_plan()
    started = datetime.now(UTC) - timedelta(seconds=5)  # level 1 (0s) and 2 (1s) are due
    state = {"value": "running"}
    ti = SimpleNamespace(get_dagrun_state=lambda dag_id, run_id: state["value"])
    watch = RecoveryWatch(
        task_id="watch_recovery",
        plan=plan,
        incident=_incident(started_at=started.isoformat()),
        recovery={"dag_id": "dr_initial_assessment", "run_id": "incident__x"},
    )
    sink = Sink(sandbox.layout)
    assert watch.poke({"ti": ti}) is False
    titles = [r["json"]["text"] for r in sink.hooks() if r["path"].startswith("/slack")]
    assert any("ESCALATION Level 1" in t for t in titles)
    assert any("ESCALATION Level 2" in t for t in titles)
    assert not any("Level 3" in t for t in titles)
    assert any("STATUS UPDATE" in t for t in titles)
    mail = [m for m in sink.mail() if "ESCALATION Level 2" in m["subject"]]
    assert sorted(mail[0]["rcpt_tos"]) == [
        "em@sandbox.invalid",
        "ic@sandbox.invalid",
        "tl@sandbox.invalid",
    ]

    sink = Sink(sandbox.layout)
    assert watch.poke({"ti": ti}) is False  # nothing new is due: no repeat page
    assert not [r for r in sink.hooks() if "ESCALATION" in json.dumps(r)]

    state["value"] = "success"  # resolved: the sensor opens and pages nobody
    watch.incident["started_at"] = (started - timedelta(hours=3)).isoformat()  # all levels due
    done = watch.poke({"ti": ti})
    assert done.is_done and done.xcom_value["levels_paged"] == [1, 2]
    assert not [r for r in sink.hooks() if "ESCALATION" in json.dumps(r)]
