"""Delivery through the real providers to the sandbox's notification sink."""

from __future__ import annotations

import json

import pytest

from tracktion_dr.core.plan import load_plan
from tracktion_dr.notify.delivery import deliver, page_role
from tracktion_dr.notify.messages import DrMessage

pytestmark = pytest.mark.sandbox

MESSAGE = DrMessage(
    title='DR test "quoted" <alert> DR-20261126-010203',
    text='Line one\nwith a quote " and a backslash \\ in it',
    severity="critical",
    incident_id="DR-20261126-010203",
    fields={"tier": "critical", "rto": "30m"},
)


def _new_records(path, before: int) -> list[dict]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines[before:]]


def _count(path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_every_channel_kind_reaches_the_sink(sandbox):
    hooks_before, mail_before = (
        _count(sandbox.layout.sink_webhooks),
        _count(sandbox.layout.sink_mail),
    )
    report = deliver(load_plan(), MESSAGE)
    assert report.failed == {}
    assert sorted(report.sent) == ["email", "pagerduty", "slack", "status_page"]

    records = _new_records(sandbox.layout.sink_webhooks, hooks_before)
    by_prefix = {r["path"].split("/")[1]: r for r in records}
    assert by_prefix["slack"]["json"]["text"].count('"quoted"') == 1
    event = by_prefix["pagerduty"]["json"]
    assert event["routing_key"] == "sandbox-routing-key"
    assert event["event_action"] == "trigger"
    assert event["dedup_key"] == "DR-20261126-010203"
    assert event["payload"]["severity"] == "critical"
    assert event["payload"]["source"] == "tracktion-dr"
    assert event["payload"]["custom_details"]["tier"] == "critical"
    assert "aiohttp" in by_prefix["pagerduty"]["headers"]["User-Agent"]  # the provider's async hook
    status_page = [r for r in records if r["path"].startswith("/statuspage/")]
    assert status_page[0]["method"] == "GET"  # ours is looked for before anything is written
    written = status_page[-1]["json"]["incident"]
    assert written["status"] == "investigating"
    assert "DR-20261126-010203" not in json.dumps(
        {k: v for k, v in written.items() if k != "metadata"}
    )
    (mail,) = _new_records(sandbox.layout.sink_mail, mail_before)
    assert mail["subject"] == MESSAGE.title
    assert sorted(mail["rcpt_tos"]) == [
        "em@sandbox.invalid",
        "ic@sandbox.invalid",
        "tl@sandbox.invalid",
    ]


def test_a_dead_channel_is_reported_not_raised(sandbox, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_DR_SLACK",
        json.dumps(
            {"conn_type": "slackwebhook", "host": "http://127.0.0.1:9/slack", "password": "T/B/x"}
        ),
    )
    report = deliver(load_plan(), MESSAGE, channels=["slack", "pagerduty", "nonexistent"])
    assert report.sent == ["pagerduty"]
    assert "slack" in report.failed and "Connection refused" in report.failed["slack"]
    assert report.failed["nonexistent"] == "no such channel in the plan"


def test_page_role_pages_and_mails_one_role_without_revealing_it(sandbox, monkeypatch):
    plan = load_plan()
    hooks_before, mail_before = (
        _count(sandbox.layout.sink_webhooks),
        _count(sandbox.layout.sink_mail),
    )
    message = DrMessage(
        title="DR ACTIVATION: DR-20261126-010203",
        text="You are activated as database administrator",
        severity="critical",
        incident_id="DR-20261126-010203",
        dedup_key="tracktion-dr/DR-20261126-010203",
    )
    monkeypatch.setenv(
        "AIRFLOW_VAR_DR_CONTACT_DATABASE_ADMINISTRATOR",
        json.dumps(
            {
                "name": "Sandbox DBA",
                "email": "dba@sandbox.invalid",
                "phone": "+15550100",
                "pagerduty_routing_key": "dba-own-routing-key",
            }
        ),
    )
    states = {
        role: page_role(plan, role, message)
        for role in ("database_administrator", "technical_lead")
    }
    assert states == {
        "database_administrator": "paged, e-mailed",
        "technical_lead": "paged, e-mailed",
    }

    events = {
        r["json"]["dedup_key"]: r["json"]
        for r in _new_records(sandbox.layout.sink_webhooks, hooks_before)
        if r["path"].startswith("/pagerduty")
    }
    dba = events["tracktion-dr/DR-20261126-010203/database_administrator"]
    assert dba["routing_key"] == "dba-own-routing-key"  # the role's own
    assert dba["payload"]["custom_details"]["role"] == "database_administrator"
    lead = events["tracktion-dr/DR-20261126-010203/technical_lead"]
    assert lead["routing_key"] == "sandbox-routing-key"  # the plan's pagerduty channel
    mails = _new_records(sandbox.layout.sink_mail, mail_before)
    assert sorted(m["rcpt_tos"][0] for m in mails) == ["dba@sandbox.invalid", "tl@sandbox.invalid"]


def test_page_role_reports_a_missing_contact_and_a_dead_pager(sandbox, monkeypatch):
    plan = load_plan()
    message = DrMessage(title="t", text="x", incident_id="DR-20261126-010203", severity="error")
    monkeypatch.delenv("AIRFLOW_VAR_DR_CONTACT_EXECUTIVE", raising=False)
    assert page_role(plan, "executive", message).startswith("no contact for role executive")
    monkeypatch.setenv(
        "AIRFLOW_CONN_DR_PAGERDUTY",
        json.dumps(
            {
                "conn_type": "pagerduty_events",
                "password": "k",
                "extra": {"events_api_url": "http://127.0.0.1:9"},
            }
        ),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_DR_SMTP", json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": 9})
    )
    state = page_role(plan, "on_call_engineer", message)
    assert state.startswith("failed: page failed (")
    assert "oncall@sandbox.invalid" not in state
