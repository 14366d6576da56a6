"""End to end, on a real Airflow (api-server + scheduler + dag-processor, SQLite,
LocalExecutor, temporary AIRFLOW_HOME) against the live sandbox:

When Alertmanager posts a firing TracktionServiceDown alert to POST /dr/alerts/alertmanager,
then the plan's route starts dr_incident_response, which alerts, activates, opens the war
room, starts dr_initial_assessment, watches it to the end, announces the restoration and
writes the post-incident review from the ledger. The same payload again starts nothing new.
A wrong token starts nothing. The README's direct REST trigger works.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(400)]


def alertmanager_payload(fingerprint: str, status: str = "firing") -> dict:
    """Alertmanager webhook v4, as Alertmanager 0.27 sends it."""
    alert = {
        "status": status,
        "labels": {
            "alertname": "TracktionServiceDown",
            "service": "tracklist-service",
            "severity": "page",
            "instance": "127.0.0.1:18003",
        },
        "annotations": {
            "summary": "tracklist-service is down",
            "description": 'Health check "GET /health" failed\nfor 5 minutes',
        },
        # Alertmanager's nanosecond timestamps; a minute ago, so only level 1 is due.
        "startsAt": (datetime.now(UTC) - timedelta(minutes=1)).strftime(
            "%Y-%m-%dT%H:%M:%S.123456789Z"
        ),
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-11-26T00:10:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=up%3D%3D0",
        "fingerprint": fingerprint,
    }
    return {
        "version": "4",
        "groupKey": '{}:{alertname="TracktionServiceDown"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "tracktion-dr",
        "groupLabels": {"alertname": "TracktionServiceDown"},
        "commonLabels": alert["labels"],
        "commonAnnotations": alert["annotations"],
        "externalURL": "http://alertmanager:9093",
        "alerts": [alert],
    }


def post_alert(stack, payload, token: str, source: str = "alertmanager"):
    return httpx.post(
        f"{stack.base_url}/dr/alerts/{source}",
        content=payload if isinstance(payload, bytes) else json.dumps(payload),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=30,
    )


def test_bad_token_starts_nothing(airflow, sandbox):
    before = len(airflow.dag_runs("dr_incident_response"))
    response = post_alert(airflow, alertmanager_payload(uuid.uuid4().hex[:16]), "wrong-token")
    assert response.status_code == 401
    no_header = httpx.post(
        f"{airflow.base_url}/dr/alerts/alertmanager", json=alertmanager_payload("x"), timeout=10
    )
    assert no_header.status_code == 401
    assert len(airflow.dag_runs("dr_incident_response")) == before


def test_malformed_payload_gets_400_with_the_reason(airflow, sandbox):
    token = sandbox.secrets.webhook_token
    response = post_alert(airflow, {"version": "4", "alerts": [{"labels": {}}]}, token)
    assert response.status_code == 400
    assert "alerts[0]: missing field 'status'" in response.json()["detail"]
    assert post_alert(airflow, b"{not json", token).status_code == 400


def test_firing_alert_runs_the_incident_response_once(airflow, sandbox):
    token = sandbox.secrets.webhook_token
    fingerprint = uuid.uuid4().hex[:16]
    first = post_alert(airflow, alertmanager_payload(fingerprint), token)
    assert first.status_code == 202, first.text
    (run_id,) = first.json()["started"]
    incident_id = first.json()["alerts"][0]["incident_id"]

    again = post_alert(airflow, alertmanager_payload(fingerprint), token)
    assert again.status_code == 202
    assert again.json()["started"] == [] and again.json()["existing"] == [run_id]

    state = airflow.wait_until(
        "dr_incident_response to finish",
        lambda: (
            (s := airflow.run_state("dr_incident_response", run_id)) in ("success", "failed") and s
        ),
        timeout=240,
    )
    assert state == "success", airflow.log_tail()
    assert airflow.run_state("dr_initial_assessment", f"incident__{incident_id}") == "success"
    runs = [r for r in airflow.dag_runs("dr_incident_response") if fingerprint in r["dag_run_id"]]
    assert len(runs) == 1

    # What the stakeholders received, as the sink recorded it.
    channel = "dr-" + incident_id.lower().removeprefix("dr-")
    hooks = [
        json.dumps(r)
        for r in map(json.loads, sandbox.layout.sink_webhooks.read_text().splitlines())
        if incident_id in json.dumps(r) or channel in json.dumps(r)
    ]
    assert any('"/slack' in h and "DISASTER RECOVERY ACTIVATED" in h for h in hooks)
    assert any("/slack-api/conversations.create" in h and channel in h for h in hooks)
    assert any('"event_action": "trigger"' in h for h in hooks)
    assert any('"event_action": "resolve"' in h for h in hooks)
    assert any("STATUS UPDATE" in h for h in hooks)
    home = sandbox.layout.home / "incidents" / incident_id
    review = (home / "post_incident_review.md").read_text()
    assert f"# Post-Incident Review: {incident_id}" in review
    for step in ("alert_stakeholders", "activate_team", "war_room", "watch_recovery"):
        assert step in review
    assert "Resolution" in review
    assert (home / "response.md").exists()

    resolved = post_alert(airflow, alertmanager_payload(fingerprint, "resolved"), token)
    assert resolved.status_code == 202
    assert resolved.json()["alerts"][0]["action"] == "resolved"
    assert resolved.json()["alerts"][0]["run_id"] == run_id


def test_readme_direct_rest_trigger(airflow):
    token = httpx.post(
        f"{airflow.base_url}/auth/token",
        json={"username": "admin", "password": airflow.admin_password()},
        timeout=10,
    ).json()["access_token"]
    response = httpx.post(
        f"{airflow.base_url}/api/v2/dags/dr_initial_assessment/dagRuns",
        headers={"Authorization": f"Bearer {token}"},
        json={"logical_date": None, "conf": {"environment": "drill"}},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    state = airflow.wait_until(
        "the REST-triggered run",
        lambda: (
            (s := airflow.run_state("dr_initial_assessment", run_id)) in ("success", "failed") and s
        ),
        timeout=120,
    )
    assert state == "success"
