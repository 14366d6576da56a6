"""The compose deployment under test: started by the session, removed after it.

``deployment`` brings the ``topology`` profile of docker-compose.yaml up on this machine's
Docker engine (scripts/ensure-docker.sh installs and starts it when missing; the base image
and the project image are built when missing, then brought up to date from the build
cache), in a compose project of its own (``tracktion-deploy-test-<clone>``, named after
this clone's path, the REST API on 127.0.0.1:18380, or a free port when another clone's
deployment holds it) so it never touches an operator's deployment nor another checkout's
test run on the same engine. With ``DEPLOY_KEEP=1`` it stays up after the session (and is
reused by the next one from the same clone).

When Docker cannot be had (not root and no engine), the deployment tests are skipped with
the reason; ``DEPLOY_TEST=required`` (make deploy-test) makes that a failure, and
``DEPLOY_TEST=skip`` skips them on purpose.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import socket
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Named after the clone: two checkouts testing on one Docker engine (a developer's run
# beside CI's) would otherwise recreate, and then remove, each other's containers.
PROJECT = os.environ.get(
    "DEPLOY_TEST_PROJECT",
    "tracktion-deploy-test-" + hashlib.sha256(str(ROOT).encode()).hexdigest()[:8],
)
DEFAULT_API_PORT = 18380


def _port_taken(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _ours_is_running() -> bool:
    """Whether this clone's deployment (kept by DEPLOY_KEEP=1) already runs: it holds
    the default port itself."""
    try:
        found = subprocess.run(
            ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return bool(found.stdout.strip())


def _api_port() -> str:
    """DEPLOY_TEST_PORT, else 18380 unless something other than this clone's deployment
    holds it, else a free port the kernel picks."""
    if os.environ.get("DEPLOY_TEST_PORT"):
        return os.environ["DEPLOY_TEST_PORT"]
    if not _port_taken(DEFAULT_API_PORT) or _ours_is_running():
        return str(DEFAULT_API_PORT)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        return str(free.getsockname()[1])


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "deploy: needs the compose deployment (Docker; tests/deploy/conftest.py)"
    )


def _compose_command() -> list[str]:
    """``$COMPOSE`` (as the Makefile takes it, e.g. ``docker compose`` for v2), else
    docker-compose 1.29 when installed, else Compose v2."""
    if os.environ.get("COMPOSE"):
        return os.environ["COMPOSE"].split()
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return ["docker", "compose"]


def _unavailable(reason: str) -> None:
    if os.environ.get("DEPLOY_TEST") == "required":
        pytest.fail(f"the deployment test needs Docker: {reason}")
    pytest.skip(f"no Docker engine for the deployment test: {reason}")


@pytest.fixture(scope="session")
def deployment():
    if os.environ.get("DEPLOY_TEST") == "skip":
        pytest.skip("DEPLOY_TEST=skip")
    ensure = subprocess.run(
        ["bash", "scripts/ensure-docker.sh"], cwd=ROOT, capture_output=True, text=True
    )
    if ensure.returncode != 0:
        _unavailable((ensure.stderr or ensure.stdout).strip()[-500:])
    compose = [*_compose_command(), "--profile", "topology"]
    api_port = _api_port()
    print(f"deploy: compose project {PROJECT}, REST API on 127.0.0.1:{api_port}")
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": PROJECT,
        "AIRFLOW_PORT": api_port,
        "DEPLOY_PROFILES": "topology",
    }
    up = subprocess.run(
        ["make", "--no-print-directory", "deploy-up", "DEPLOY_PROFILES=topology"],
        cwd=ROOT,
        env=env,
    )
    handle = SimpleNamespace(
        compose=compose,
        env=env,
        url=f"http://127.0.0.1:{api_port}",
        password=_admin_password(),
        root=ROOT,
    )
    try:
        assert up.returncode == 0, "make deploy-up failed (its output is above)"
        yield handle
    finally:
        if os.environ.get("DEPLOY_KEEP") != "1":
            print("deploy: removing", PROJECT, "(", shlex.join([*compose, "down", "-v"]), ")")
            subprocess.run([*compose, "down", "-v", "--remove-orphans"], cwd=ROOT, env=env)


def _admin_password() -> str:
    for line in (ROOT / "deploy" / "airflow-admin.env").read_text().splitlines():
        if line.startswith("AIRFLOW_ADMIN_PASSWORD="):
            return line.split("=", 1)[1]
    raise AssertionError("deploy/airflow-admin.env has no AIRFLOW_ADMIN_PASSWORD")
