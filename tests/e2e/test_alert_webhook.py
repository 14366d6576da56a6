"""End to end, on a real Airflow (api-server + scheduler + dag-processor, SQLite,
LocalExecutor, temporary AIRFLOW_HOME) against the live sandbox:

When Alertmanager posts a firing TracktionServiceDown alert to POST /dr/alerts/alertmanager,
then the plan's route starts dr_incident_response (here about a healthy service: it stands
down; tests/e2e/test_alert_to_recovery.py covers real recoveries). The same payload again
starts nothing new. A wrong token, a malformed one or an oversized body starts nothing. The
README's direct REST trigger works.
"""

from __future__ import annotations

import json
import socket
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
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
    """The alert is about a service that is in fact healthy: one incident run, which finds
    it healthy, stands down (no recovery, nobody paged) and writes its review."""
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
    runs = [r for r in airflow.dag_runs("dr_incident_response") if fingerprint in r["dag_run_id"]]
    assert len(runs) == 1

    # What the team received, as the sink recorded it: the stand-down, and no page.
    hooks = [
        json.dumps(r)
        for r in map(json.loads, sandbox.layout.sink_webhooks.read_text().splitlines())
        if incident_id in json.dumps(r)
    ]
    assert any('"/slack' in h and "ALERT NOT CONFIRMED" in h for h in hooks)
    assert not any('"event_action": "trigger"' in h for h in hooks)
    home = sandbox.layout.home / "incidents" / incident_id
    review = (home / "post_incident_review.md").read_text()
    assert f"# Post-Incident Review: {incident_id}" in review
    assert "false positive" in review

    resolved = post_alert(airflow, alertmanager_payload(fingerprint, "resolved"), token)
    assert resolved.status_code == 202
    assert resolved.json()["alerts"][0]["action"] == "resolved"
    assert resolved.json()["alerts"][0]["run_id"] == run_id


def test_an_alert_without_a_label_its_route_needs_starts_nothing(airflow, sandbox):
    payload = alertmanager_payload(uuid.uuid4().hex[:16])
    del payload["alerts"][0]["labels"]["service"]
    response = post_alert(airflow, payload, sandbox.secrets.webhook_token)
    assert response.status_code == 202
    (answer,) = response.json()["alerts"]
    assert answer["action"] == "unroutable" and "'service'" in answer["detail"]
    assert response.json()["started"] == []


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


# --- hardening: malformed tokens, body limits, concurrent duplicates, resolution ---------
#
# The HTTP-behaviour tests post an alert no route matches (answered 202 "unrouted"), so they
# start nothing whatever the plan's routes become. The tests that need a run pause
# dr_incident_response first: the run is created (queued) but never acts on the sandbox, and
# is marked failed afterwards.

DEFAULT_MAX_BODY = 1024 * 1024


def unrouted_payload(fingerprint: str | None = None) -> dict:
    payload = alertmanager_payload(fingerprint or uuid.uuid4().hex[:16])
    payload["alerts"][0]["labels"] = {"alertname": "DrWebhookProbeNoRoute", "severity": "info"}
    return payload


def post_raw(stack, authorization: bytes | None, content, source: str = "alertmanager"):
    headers = {b"Content-Type": b"application/json"}
    if authorization is not None:
        headers[b"Authorization"] = authorization
    return httpx.post(
        f"{stack.base_url}/dr/alerts/{source}", content=content, headers=headers, timeout=60
    )


def test_non_ascii_token_gets_401_not_500(airflow, sandbox):
    token = sandbox.secrets.webhook_token.encode()
    body = json.dumps(unrouted_payload())
    for authorization in (
        "Bearer tëst-tökén".encode(),  # UTF-8, non-ASCII
        b"Bearer t\xe9st",  # latin-1 byte: not UTF-8
        b"Bearer " + token + "é".encode(),  # the right token and one more character
    ):
        response = post_raw(airflow, authorization, body)
        assert response.status_code == 401, (authorization, response.text)
        assert response.headers["www-authenticate"] == "Bearer"


def test_malformed_tokens_get_401(airflow, sandbox):
    token = sandbox.secrets.webhook_token.encode()
    body = json.dumps(unrouted_payload())
    malformed = {
        "no header": None,
        "empty": b"",
        "scheme only": b"Bearer",
        "wrong scheme": b"Basic " + token,
        "no scheme": token,
        "two spaces": b"Bearer  " + token,
        "tab": b"Bearer\t" + token,
        "token and more": b"Bearer " + token + b" " + token,
        "truncated": b"Bearer " + token[:-1],
        "prefix of a longer one": b"Bearer " + token + b"x",
        "not UTF-8": b"Bearer \xff\xfe" + token,
        "huge": b"Bearer " + b"A" * 16000,
    }
    for what, authorization in malformed.items():
        response = post_raw(airflow, authorization, body)
        assert response.status_code == 401, (what, response.status_code, response.text)
        assert response.headers["www-authenticate"] == "Bearer", what
    accepted = post_raw(airflow, b"Bearer " + token, body)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["alerts"][0]["action"] == "unrouted"


def test_body_over_the_limit_with_content_length_gets_413(airflow, sandbox):
    token = sandbox.secrets.webhook_token.encode()
    padded = json.dumps(unrouted_payload()).encode()
    too_big = padded + b" " * (DEFAULT_MAX_BODY + 1 - len(padded))
    assert len(too_big) == DEFAULT_MAX_BODY + 1
    response = post_raw(airflow, b"Bearer " + token, too_big)
    assert response.status_code == 413, response.text
    # Authentication first: without the token the same body is a 401, not a 413.
    assert post_raw(airflow, b"Bearer wrong", too_big).status_code == 401
    # Exactly at the limit is read (and then judged: whitespace-padded JSON is fine).
    at_limit = padded + b" " * (DEFAULT_MAX_BODY - len(padded))
    response = post_raw(airflow, b"Bearer " + token, at_limit)
    assert response.status_code == 202, response.text

    # Refused from Content-Length alone: the answer comes before any body byte is sent.
    with socket.create_connection(("127.0.0.1", int(airflow.base_url.rsplit(":", 1)[1]))) as s:
        s.settimeout(30)
        s.sendall(
            b"POST /dr/alerts/alertmanager HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + token + b"\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(50 * DEFAULT_MAX_BODY).encode() + b"\r\n\r\n"
        )
        status_line = s.recv(4096).split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 413"), status_line


def test_chunked_body_over_the_limit_gets_413_before_it_is_read_whole(airflow, sandbox):
    token = sandbox.secrets.webhook_token.encode()
    chunk = b" " * (64 * 1024)
    total_chunks = 1024  # 64 MiB: far more than the server may read
    sent = []

    def endless_body():
        yield json.dumps(unrouted_payload()).encode()
        for _ in range(total_chunks):
            sent.append(len(chunk))
            yield chunk

    response = post_raw(airflow, b"Bearer " + token, endless_body())
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.status_code == 413, response.text
    assert sum(sent) < total_chunks * len(chunk), "the whole body was read"

    # A chunked body under the limit is read and handled.
    small = json.dumps(unrouted_payload()).encode()
    response = post_raw(airflow, b"Bearer " + token, iter([small[:10], small[10:]]))
    assert response.status_code == 202, response.text
    assert response.json()["alerts"][0]["action"] == "unrouted"


@pytest.fixture()
def incident_response_paused(airflow):
    """dr_incident_response paused: alert runs are created (queued) but do not act."""
    dag_id = "dr_incident_response"
    airflow.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": True}).raise_for_status()
    started: list[str] = []
    try:
        yield started
    finally:
        for run_id in started:
            response = airflow.api(
                "PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", json={"state": "failed"}
            )
            assert response.status_code == 200, response.text
        airflow.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False}).raise_for_status()


def alert_runs(stack, fingerprint: str) -> list[dict]:
    response = stack.api("GET", "/api/v2/dags/dr_incident_response/dagRuns", params={"limit": 100})
    response.raise_for_status()
    return [r for r in response.json()["dag_runs"] if f"__{fingerprint}__" in r["dag_run_id"]]


def test_concurrent_identical_alerts_start_one_run(airflow, sandbox, incident_response_paused):
    token = sandbox.secrets.webhook_token
    fingerprint = uuid.uuid4().hex[:16]
    body = json.dumps(alertmanager_payload(fingerprint))
    posters = 8
    barrier = threading.Barrier(posters)

    def post_at_once(_: int) -> httpx.Response:
        barrier.wait(timeout=30)
        return post_alert(airflow, body.encode(), token)

    with ThreadPoolExecutor(posters) as pool:
        answers = list(pool.map(post_at_once, range(posters)))

    runs = alert_runs(airflow, fingerprint)
    incident_response_paused.extend(r["dag_run_id"] for r in runs)
    assert [a.status_code for a in answers] == [202] * posters, [a.text for a in answers]
    assert len(runs) == 1, runs
    (run,) = runs
    run_id, conf_incident = run["dag_run_id"], run["conf"]["incident_id"]
    started = [a.json()["started"] for a in answers]
    assert sorted(started, key=len) == [[]] * (posters - 1) + [[run_id]], started
    for answer in answers:
        (alert,) = answer.json()["alerts"]
        assert alert["action"] in ("started", "existing"), alert
        assert alert["run_id"] == run_id
        assert alert["incident_id"] == conf_incident, (alert, conf_incident)
        assert answer.json()["started"] + answer.json()["existing"] == [run_id]


def test_resolved_alert_is_recorded_on_its_run(airflow, sandbox, incident_response_paused):
    from tracktion_dr.airflow.support import conninfo
    from tracktion_dr.evidence import ledger

    token = sandbox.secrets.webhook_token
    fingerprint = uuid.uuid4().hex[:16]
    firing = post_alert(airflow, alertmanager_payload(fingerprint), token)
    assert firing.status_code == 202, firing.text
    (run_id,) = firing.json()["started"]
    incident_response_paused.append(run_id)

    resolved = post_alert(airflow, alertmanager_payload(fingerprint, "resolved"), token)
    assert resolved.status_code == 202, resolved.text
    (alert,) = resolved.json()["alerts"]
    assert alert["action"] == "resolved" and alert["run_id"] == run_id
    assert alert["incident_id"] == firing.json()["alerts"][0]["incident_id"]
    assert alert["recorded"] is True

    run = airflow.api("GET", f"/api/v2/dags/dr_incident_response/dagRuns/{run_id}").json()
    assert "resolved alert received" in (run["note"] or ""), run["note"]
    rows = ledger.alerts_for(conninfo(ledger.LEDGER_CONN_ID), fingerprint)
    assert [(r["status"], r["action"], r["run_id"]) for r in rows] == [
        ("firing", "started", run_id),
        ("resolved", "resolved", run_id),
    ]
    assert rows[1]["incident_id"] == alert["incident_id"]
