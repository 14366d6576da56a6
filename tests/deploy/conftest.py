"""The compose deployment under test: started by the session, removed after it.

``deployment`` brings the ``topology`` profile of docker-compose.yaml up on this machine's
Docker engine (scripts/ensure-docker.sh installs and starts it when missing; the base image
and the project image are built when missing, then brought up to date from the build
cache), in a compose project of its own (``tracktion-deploy-test``, the REST API on
127.0.0.1:18380) so it never touches an operator's deployment. With ``DEPLOY_KEEP=1`` it
stays up after the session (and is reused by the next one).

When Docker cannot be had (not root and no engine), the deployment tests are skipped with
the reason; ``DEPLOY_TEST=required`` (make deploy-test) makes that a failure, and
``DEPLOY_TEST=skip`` skips them on purpose.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = os.environ.get("DEPLOY_TEST_PROJECT", "tracktion-deploy-test")
API_PORT = os.environ.get("DEPLOY_TEST_PORT", "18380")


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
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": PROJECT,
        "AIRFLOW_PORT": API_PORT,
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
        url=f"http://127.0.0.1:{API_PORT}",
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
