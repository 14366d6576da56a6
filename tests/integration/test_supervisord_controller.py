"""The supervisord controller against the sandbox's real supervisord."""

from __future__ import annotations

import httpx
import pytest

from tracktion_dr.services import ControllerError, ServiceState
from tracktion_dr.services.supervisord import SupervisordController
from tracktion_sandbox import layout as L

pytestmark = pytest.mark.sandbox

SERVICE = "notification-service"


def _health(sandbox) -> int | None:
    try:
        return httpx.get(f"{sandbox.layout.service_url(SERVICE)}/health", timeout=2).status_code
    except httpx.HTTPError:
        return None


def test_stop_and_start_are_real_and_idempotent(sandbox, supervisor_controller):
    try:
        supervisor_controller.stop(SERVICE)
        supervisor_controller.stop(SERVICE)  # stopping a stopped service is success
        assert supervisor_controller.status(SERVICE).state == ServiceState.STOPPED
        assert _health(sandbox) is None, "the process is really gone: its port refuses"
    finally:
        supervisor_controller.start(SERVICE)
    supervisor_controller.start(SERVICE)  # starting a running service is success
    assert supervisor_controller.status(SERVICE).state == ServiceState.RUNNING
    assert _health(sandbox) == 200


def test_restart_changes_the_process(sandbox, supervisor_controller):
    before = supervisor_controller.status(SERVICE).detail  # "pid 123, uptime ..."
    supervisor_controller.restart(SERVICE)
    after = supervisor_controller.status(SERVICE)
    assert after.state == ServiceState.RUNNING
    assert before.split(",")[0] != after.detail.split(",")[0]


def test_unknown_program(supervisor_controller):
    with pytest.raises(ControllerError, match="no program named 'ghost-service'"):
        supervisor_controller.status("ghost-service")


def test_wrong_credentials_are_reported_without_the_password(sandbox):
    controller = SupervisordController(L.HOST, L.SUPERVISOR_PORT, "dr", "not-the-password")
    with pytest.raises(ControllerError) as caught:
        controller.status(SERVICE)
    assert "401" in str(caught.value)
    assert "not-the-password" not in str(caught.value)


def test_unreachable_supervisord():
    controller = SupervisordController(L.HOST, 1, "dr", "secret", timeout=2)
    with pytest.raises(ControllerError, match="unreachable"):
        controller.status(SERVICE)
