"""Alert payloads (the senders' real formats), routing by the plan, run ids for dedup."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from tracktion_dr.core.plan import load_plan
from tracktion_dr.scenarios.alerts import (
    MalformedPayload,
    UnroutableAlert,
    clock_start,
    fill_labels,
    find_route,
    parse_alerts,
    run_conf,
)

NOW = datetime(2026, 11, 26, 1, 0, tzinfo=UTC)

ALERTMANAGER = {
    "version": "4",
    "groupKey": "{}:{}",
    "status": "firing",
    "receiver": "dr",
    "groupLabels": {},
    "commonLabels": {},
    "commonAnnotations": {},
    "externalURL": "http://am:9093",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "TracktionServiceDown", "service": "tracklist-service"},
            "annotations": {"description": 'a "quoted"\nline'},
            "startsAt": "2026-11-26T00:30:00.123456789Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": "c0ffee0123456789",
        },
        {
            "status": "resolved",
            "labels": {"alertname": "Other"},
            "annotations": {},
            "startsAt": "2026-11-26T00:00:00Z",
            "fingerprint": "deadbeef",
        },
    ],
}

GRAFANA = {
    "receiver": "dr",
    "status": "firing",
    "orgId": 1,
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "TracktionServiceDown", "grafana_folder": "Tracktion"},
            "annotations": {"summary": "down"},
            "startsAt": "2026-11-26T00:40:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://grafana/alerting/grafana/x/view",
            "fingerprint": "57c6d9296de2ad39",
            "values": {"A": 0},
        }
    ],
    "groupLabels": {},
    "commonLabels": {},
    "commonAnnotations": {},
    "externalURL": "http://grafana/",
    "version": "1",
    "groupKey": "{}",
    "truncatedAlerts": 0,
    "title": "[FIRING:1] TracktionServiceDown",
    "state": "alerting",
    "message": "…",
}

PAGERDUTY = {
    "event": {
        "id": "01DEN8HSGCCXO3ICF2ILGMSKR2",
        "event_type": "incident.triggered",
        "resource_type": "incident",
        "occurred_at": "2026-11-26T00:50:00.000Z",
        "agent": {"type": "user_reference", "id": "PXPGF42"},
        "client": None,
        "data": {
            "id": "PGR0VU2",
            "type": "incident",
            "self": "https://api.pagerduty.com/incidents/PGR0VU2",
            "html_url": "https://acme.pagerduty.com/incidents/PGR0VU2",
            "number": 2,
            "status": "triggered",
            "incident_key": "d3640fbd41094207a1c11e58e46b1662",
            "created_at": "2026-11-26T00:50:00Z",
            "title": "Tracktion database unreachable",
            "service": {"id": "PF9KMXH", "type": "service_reference", "summary": "tracktion-db"},
            "urgency": "high",
        },
    }
}


def test_alertmanager_v4():
    firing, resolved = parse_alerts("alertmanager", ALERTMANAGER)
    assert (firing.status, firing.fingerprint) == ("firing", "c0ffee0123456789")
    assert firing.summary == 'a "quoted"\nline'
    assert resolved.status == "resolved"
    assert firing.run_id_prefix() == "alert__alertmanager__c0ffee0123456789__"


def test_grafana_and_pagerduty():
    (alert,) = parse_alerts("grafana", GRAFANA)
    assert alert.fingerprint == "57c6d9296de2ad39" and alert.status == "firing"
    (incident,) = parse_alerts("pagerduty", PAGERDUTY)
    assert incident.fingerprint == "PGR0VU2" and incident.status == "firing"
    assert incident.labels["service"] == "tracktion-db"
    acknowledged = {"event": {**PAGERDUTY["event"], "event_type": "incident.acknowledged"}}
    assert parse_alerts("pagerduty", acknowledged)[0].status == "ignored"


@pytest.mark.parametrize(
    ("source", "payload", "reason"),
    [
        ("alertmanager", [], "expected a JSON object"),
        ("alertmanager", {**ALERTMANAGER, "version": "3"}, "version: expected Alertmanager"),
        ("alertmanager", {"version": "4"}, "missing field 'alerts'"),
        ("alertmanager", {"version": "4", "alerts": []}, "alerts: empty"),
        (
            "grafana",
            {"alerts": [{"status": "pending", "labels": {}}]},
            "expected firing or resolved",
        ),
        ("pagerduty", {"event": {"event_type": "incident.triggered"}}, "missing field 'data'"),
    ],
)
def test_malformed_payloads_name_the_field(source, payload, reason):
    with pytest.raises(MalformedPayload, match=reason.replace("(", r"\(")):
        parse_alerts(source, payload)


def test_routing_follows_the_plan():
    plan = load_plan()
    firing, resolved = parse_alerts("alertmanager", ALERTMANAGER)
    route = find_route(plan, firing)
    assert route.name == "service-down" and route.dag_id == "dr_incident_response"
    assert find_route(plan, resolved) is None
    (incident,) = parse_alerts("pagerduty", PAGERDUTY)
    assert find_route(plan, incident).name == "pagerduty-incident"
    conf = run_conf(route, firing, "DR-20261126-010000", NOW)
    assert conf["incident_id"] == "DR-20261126-010000"
    assert conf["incident_started_at"] == "2026-11-26T00:30:00.123456+00:00"
    assert conf["scenario"] == "dr_application_recovery" and conf["auto_recover"] is True
    # The route's "{service}" is the alert's label: the recovery is about that service.
    assert conf["affected"] == [firing.labels["service"]]
    assert conf["description"] == '[alertmanager] a "quoted"\nline'


def test_a_route_label_the_alert_lacks_is_refused_naming_it():
    plan = load_plan()
    firing, _ = parse_alerts("alertmanager", ALERTMANAGER)
    route = find_route(plan, firing)
    unlabelled = replace(firing, labels={k: v for k, v in firing.labels.items() if k != "service"})
    with pytest.raises(UnroutableAlert, match="label 'service'"):
        run_conf(route, unlabelled, "DR-20261126-010000", NOW)


def test_labels_fill_nested_conf_as_text_only():
    labels = {"service": "web", "evil": "{service}"}
    filled = fill_labels({"a": ["{service}", {"b": "x-{evil}"}], "n": 3}, labels, "conf")
    # A label's value is inserted as text, never expanded again.
    assert filled == {"a": ["web", {"b": "x-{service}"}], "n": 3}


def test_clock_start_refuses_unusable_times():
    assert clock_start("0001-01-01T00:00:00Z", NOW) is None
    assert clock_start("2026-11-27T00:00:00Z", NOW) is None  # future
    assert clock_start("2026-10-01T00:00:00Z", NOW) is None  # weeks ago
    assert clock_start("garbage", NOW) is None
    assert clock_start("2026-11-26T00:59:00Z", NOW) == "2026-11-26T00:59:00+00:00"
