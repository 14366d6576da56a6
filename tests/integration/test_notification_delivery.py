"""Delivery through the real providers to the sandbox's notification sink."""

from __future__ import annotations

import json

import pytest

from tracktion_dr.core.plan import load_plan
from tracktion_dr.notify.delivery import deliver
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
    assert event["dedup_key"] == "DR-20261126-010203"
    assert event["payload"]["severity"] == "critical"
    assert by_prefix["statuspage"]["json"]["incident"]["name"] == MESSAGE.title
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
