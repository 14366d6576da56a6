"""Shared by the failover tests: a real secondary service instance behind the balancer."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
from harness.topology import set_server

from tracktion_sandbox import layout as L

LB = f"http://{L.HOST}:{L.LOAD_BALANCER_PORT}"
SERVICE = "notification-service"
SECONDARY_PORT = 18104


def backend(name: str) -> dict:
    return httpx.get(f"{LB}/api/v1/backends/{name}", timeout=5).json()


def wait_healthy(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} never became healthy")


@pytest.fixture()
def secondary_registered(sandbox, supervisor_controller):
    """A second notification-service (a real process) registered as the backend's
    ``secondary`` at weight 0; the primary instance is stopped. Everything is put back."""
    env = {**os.environ, "TRACKTION_SERVICE_NAME": SERVICE}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tracktion_sandbox.service",
            "--name",
            SERVICE,
            "--port",
            str(SECONDARY_PORT),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(f"http://{L.HOST}:{SECONDARY_PORT}/health")
        set_server(
            SERVICE, "secondary", address=f"{L.HOST}:{SECONDARY_PORT}", weight=0, status="disabled"
        )
        supervisor_controller.stop(SERVICE)
        yield process
    finally:
        set_server(SERVICE, "primary", weight=100, status="enabled")
        httpx.delete(f"{LB}/api/v1/backends/{SERVICE}/servers/secondary", timeout=5)
        process.terminate()
        process.wait(10)
        supervisor_controller.start(SERVICE)
