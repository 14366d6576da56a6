"""The sandbox's processes behave like the production parts the DR DAGs will drive.

Runs against the live sandbox (the session fixture ``sandbox`` from tests/conftest.py has
PostgreSQL, supervisord and every program up). Each test leaves the services as it found
them. Waits are bounded polls, never wall-clock assertions.
"""

from __future__ import annotations

import json
import os
import smtplib
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests

from tracktion_sandbox import audio, supervisor
from tracktion_sandbox import layout as layout_mod
from tracktion_sandbox.sink import read_records

pytestmark = pytest.mark.sandbox

T = TypeVar("T")
POLL_TIMEOUT = 30.0
LB = f"http://{layout_mod.HOST}:{layout_mod.LOAD_BALANCER_PORT}"
SINK = f"http://{layout_mod.HOST}:{layout_mod.SINK_HTTP_PORT}"


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = POLL_TIMEOUT) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what``.

    (A ``requests.Response`` is falsy for 4xx/5xx: return ``.json()`` or a flag instead.)
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (requests.RequestException, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}; last probe result: {last!r}")


def health(service: str) -> requests.Response:
    port = layout_mod.SERVICE_PORTS[service]
    return requests.get(f"http://{layout_mod.HOST}:{port}/health", timeout=5)


def healthy_body(service: str) -> dict[str, Any] | None:
    answer = health(service)
    return answer.json() if answer.status_code == 200 else None


def storage_failed(service: str) -> tuple[int, dict[str, Any]] | None:
    answer = health(service)
    body = answer.json()
    return (answer.status_code, body) if "storage" in body.get("failed", []) else None


def is_healthy(service: str) -> bool:
    return health(service).status_code == 200


def port_refuses(port: int) -> bool:
    try:
        with socket.create_connection((layout_mod.HOST, port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


# --------------------------------------------------------------------------- supervisord


def test_service_stops_and_starts_through_supervisord_xmlrpc(sandbox: Any) -> None:
    proxy = supervisor.client(sandbox.secrets)
    name = "analysis-service"
    port = layout_mod.SERVICE_PORTS[name]
    wait_for(f"{name} healthy before the test", lambda: is_healthy(name))
    try:
        # When I stop analysis-service through supervisord
        assert proxy.supervisor.stopProcess(name, True) is True
        # Then supervisord reports it stopped and its port refuses connections
        assert proxy.supervisor.getProcessInfo(name)["statename"] == "STOPPED"
        wait_for(f"port {port} to refuse connections", lambda: port_refuses(port))
        # When I start it again, Then it is RUNNING and healthy
        assert proxy.supervisor.startProcess(name, True) is True
        assert proxy.supervisor.getProcessInfo(name)["statename"] == "RUNNING"
        body = wait_for(f"{name} healthy after start", lambda: healthy_body(name))
        assert body["status"] == "healthy"
        assert body["checks"]["database"]["ok"] and body["checks"]["storage"]["ok"]
    finally:
        if proxy.supervisor.getProcessInfo(name)["statename"] != "RUNNING":
            proxy.supervisor.startProcess(name, True)
        wait_for(f"{name} healthy after the test", lambda: is_healthy(name))


def test_every_program_is_running_under_supervisord(sandbox: Any) -> None:
    states = supervisor.status(sandbox.secrets)
    expected = {p.name for p in supervisor.default_programs(sandbox.layout, sandbox.secrets)}
    assert expected <= set(states), f"programs missing from supervisord: {expected - set(states)}"
    assert {name: states[name] for name in expected} == dict.fromkeys(expected, "RUNNING")


# --------------------------------------------------------------------------- health


@pytest.fixture
def storage_replaced_by_a_file(sandbox: Any) -> Iterator[Path]:
    """Make the storage path unwritable in a way root cannot bypass.

    chmod 0555 means nothing to root, so the directory is moved aside and a regular file
    takes its place: creating a file "in" it fails with ENOTDIR whoever we are.
    """
    storage = sandbox.layout.app_data
    aside = storage.with_name(f"{storage.name}.aside-{os.getpid()}")
    storage.rename(aside)
    try:
        storage.write_text("storage is gone\n")
        yield storage
    finally:
        if storage.is_file():
            storage.unlink()
        aside.rename(storage)
        for service in ("analysis-service", "file-watcher"):
            wait_for(f"{service} healthy again", lambda service=service: is_healthy(service))


def test_health_fails_naming_storage_when_storage_is_unwritable(
    sandbox: Any, storage_replaced_by_a_file: Path
) -> None:
    for service in ("analysis-service", "file-watcher"):
        status, body = wait_for(
            f"{service} to report storage down",
            lambda service=service: storage_failed(service),
        )
        assert status == 503
        assert body["status"] == "unhealthy"
        assert "storage" in body["failed"]
        assert body["checks"]["storage"]["ok"] is False
        assert str(storage_replaced_by_a_file) in body["checks"]["storage"]["error"]
    # tracklist-service does not depend on storage and must stay healthy
    assert is_healthy("tracklist-service")


# --------------------------------------------------------------------------- /analyze


ANALYZE = f"http://{layout_mod.HOST}:{layout_mod.SERVICE_PORTS['analysis-service']}/analyze"


@pytest.mark.parametrize(
    "tone", [*audio.SAMPLES, audio.FUNCTIONAL_SAMPLE], ids=lambda tone: tone.relative_path
)
def test_analyze_accepts_each_sample_file(sandbox: Any, tone: audio.Tone) -> None:
    base = (
        sandbox.layout.test_data if tone is audio.FUNCTIONAL_SAMPLE else sandbox.layout.audio_files
    )
    path = base / tone.relative_path
    assert path.is_file(), f"sample {path} missing: the sandbox did not seed application data"
    with path.open("rb") as handle:
        answer = requests.post(ANALYZE, files={"file": (path.name, handle)}, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "success"
    assert body["format"] == tone.audio_format
    assert body["sample_rate"] == tone.sample_rate
    assert body["channels"] == tone.channels
    assert body["bytes"] == path.stat().st_size
    assert body["duration_seconds"] == pytest.approx(tone.seconds, abs=0.1)


def test_analyze_accepts_a_raw_audio_body(sandbox: Any) -> None:
    data = (sandbox.layout.test_data / "sample.mp3").read_bytes()
    answer = requests.post(ANALYZE, data=data, headers={"Content-Type": "audio/mpeg"}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["format"] == "mp3"


@pytest.mark.parametrize(
    "payload",
    [b"this is not audio at all\n" * 200, b"RIFF\x00\x00\x00\x00WAVEjunk", b"fLaC" + b"\x00" * 64],
    ids=["text", "truncated-wav", "truncated-flac"],
)
def test_analyze_rejects_garbage_with_422(sandbox: Any, payload: bytes) -> None:
    answer = requests.post(ANALYZE, files={"file": ("garbage.mp3", payload)}, timeout=30)
    assert answer.status_code == 422, answer.text
    assert answer.json()["status"] == "error"
    assert answer.json()["reason"]


def test_analyze_requires_the_file_field(sandbox: Any) -> None:
    answer = requests.post(ANALYZE, files={"upload": ("x.wav", b"RIFF")}, timeout=30)
    assert answer.status_code == 400
    assert "file" in answer.json()["reason"]


# --------------------------------------------------------------------------- load balancer


def lb_set(service: str, host: str, **fields: Any) -> requests.Response:
    return requests.post(f"{LB}/api/v1/backends/{service}/servers/{host}", json=fields, timeout=5)


@pytest.fixture
def notification_backend_with_standby(sandbox: Any) -> Iterator[str]:
    """Add a ``standby`` server (pointing at analysis-service, so answers differ) and
    restore the original single-server backend afterwards."""
    service = "notification-service"
    before = requests.get(f"{LB}/api/v1/backends/{service}", timeout=5).json()
    try:
        answer = lb_set(
            service,
            "standby",
            address=f"{layout_mod.HOST}:{layout_mod.SERVICE_PORTS['analysis-service']}",
            weight=0,
            status="disabled",
        )
        assert answer.status_code == 200, answer.text
        yield service
    finally:
        requests.delete(f"{LB}/api/v1/backends/{service}/servers/standby", timeout=5)
        primary = before["servers"]["primary"]
        lb_set(service, "primary", weight=primary["weight"], status=primary["status"])


def routed(service: str) -> tuple[str, dict[str, Any]]:
    answer = requests.get(f"{LB}/route/{service}/", timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.headers["X-Backend"], answer.json()


def test_load_balancer_routes_to_the_enabled_backend_and_follows_weights(
    sandbox: Any, notification_backend_with_standby: str
) -> None:
    service = notification_backend_with_standby
    # Given only primary is enabled, traffic goes to primary (notification-service itself)
    assert routed(service) == ("primary", {"service": service, "version": "sandbox-1.0"})
    health_answer = requests.get(f"{LB}/route/{service}/health", timeout=10)
    assert health_answer.status_code == 200
    assert health_answer.headers["X-Backend"] == "primary"

    # When standby is enabled with a higher weight, traffic moves to it
    assert lb_set(service, "standby", weight=100, status="enabled").status_code == 200
    assert lb_set(service, "primary", weight=10).status_code == 200
    backend, body = routed(service)
    assert backend == "standby"
    assert body["service"] == "analysis-service"

    # And the change is persisted where a restarted load balancer reads it
    state = json.loads(sandbox.layout.load_balancer_state.read_text())
    assert state["backends"][service]["servers"]["standby"]["weight"] == 100

    # When standby is drained, traffic returns to primary
    assert lb_set(service, "standby", status="drain").status_code == 200
    assert routed(service)[0] == "primary"


def test_load_balancer_state_lists_the_database_backend(sandbox: Any) -> None:
    state = requests.get(f"{LB}/api/v1/backends", timeout=5).json()
    database = state["backends"]["database"]["servers"]
    assert database["primary"]["address"] == f"{layout_mod.HOST}:{layout_mod.PRIMARY_PORT}"
    assert database["replica"]["address"] == f"{layout_mod.HOST}:{layout_mod.REPLICA_PORT}"
    assert set(state["backends"]) >= set(layout_mod.SERVICE_PORTS)


@pytest.mark.parametrize(
    ("service", "raw_body", "field"),
    [
        ("notification-service", b'{"weight": 101}', "weight"),
        ("notification-service", b'{"weight": -1}', "weight"),
        ("notification-service", b'{"weight": "50"}', "weight"),
        ("notification-service", b'{"status": "online"}', "status"),
        ("notification-service", b'{"weight": 50', "body"),
        ("no-such-service", b'{"weight": 50}', "service"),
    ],
    ids=["weight-high", "weight-negative", "weight-string", "status", "bad-json", "service"],
)
def test_load_balancer_rejects_bad_input_naming_the_field(
    sandbox: Any, service: str, raw_body: bytes, field: str
) -> None:
    before = requests.get(f"{LB}/api/v1/backends", timeout=5).json()["backends"]
    answer = requests.post(
        f"{LB}/api/v1/backends/{service}/servers/primary",
        data=raw_body,
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert answer.status_code == 400
    assert answer.json()["field"] == field
    assert field in answer.json()["error"]
    assert requests.get(f"{LB}/api/v1/backends", timeout=5).json()["backends"] == before


# --------------------------------------------------------------------------- notification sink


def test_sink_records_a_webhook_post_without_the_credential(sandbox: Any) -> None:
    marker = f"drill-{uuid.uuid4().hex}"
    answer = requests.post(
        f"{SINK}/slack/services/T000/B000/sandbox",
        json={"text": f'Recovery finished "{marker}"'},
        headers={"Authorization": "Bearer not-to-be-recorded"},
        timeout=5,
    )
    assert answer.status_code == 200
    assert answer.text == "ok"
    record = wait_for(
        "the webhook record",
        lambda: next(
            (
                r
                for r in read_records(sandbox.layout.sink_webhooks)
                if marker in json.dumps(r.get("json"))
            ),
            None,
        ),
    )
    assert record["path"] == "/slack/services/T000/B000/sandbox"
    assert record["json"]["text"] == f'Recovery finished "{marker}"'
    assert record["headers"]["Authorization"] == "<present>"
    assert "not-to-be-recorded" not in sandbox.layout.sink_webhooks.read_text()


def test_sink_answers_pagerduty_events_like_the_events_api(sandbox: Any) -> None:
    dedup_key = f"DR-{uuid.uuid4().hex[:12]}"
    answer = requests.post(
        f"{SINK}/pagerduty/v2/enqueue",
        json={
            "routing_key": "x" * 32,
            "event_action": "trigger",
            "dedup_key": dedup_key,
            "payload": {"summary": "drill", "source": "sandbox", "severity": "critical"},
        },
        timeout=5,
    )
    assert answer.status_code == 202
    assert answer.json() == {
        "status": "success",
        "message": "Event processed",
        "dedup_key": dedup_key,
    }


def test_sink_records_a_mail(sandbox: Any) -> None:
    subject = f"[DR] drill {uuid.uuid4().hex}"
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = "dr-automation@tracktion.sandbox"
    message["To"] = "oncall@tracktion.sandbox"
    message.set_content("Database restored.\nRTO achieved: 4m 12s\n")
    with smtplib.SMTP(layout_mod.HOST, layout_mod.SINK_SMTP_PORT, timeout=10) as smtp:
        smtp.send_message(message)
    record = wait_for(
        "the mail record",
        lambda: next(
            (r for r in read_records(sandbox.layout.sink_mail) if r["subject"] == subject), None
        ),
    )
    assert record["mail_from"] == "dr-automation@tracktion.sandbox"
    assert record["rcpt_tos"] == ["oncall@tracktion.sandbox"]
    assert "RTO achieved: 4m 12s" in record["body"]
