"""Both Compose implementations accept the deployment file: Debian's docker-compose 1.29
and Compose v2 (``docker compose``). The deployment itself runs under one of them
(``$COMPOSE``); this checks the other reads the same file, profiles included."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.deploy

IMPLEMENTATIONS = {"docker-compose 1.29": ["docker-compose"], "compose v2": ["docker", "compose"]}


def _installed(command: list[str]) -> bool:
    if shutil.which(command[0]) is None:
        return False
    return subprocess.run([*command, "version"], capture_output=True).returncode == 0


@pytest.mark.parametrize("name", sorted(IMPLEMENTATIONS))
def test_the_compose_file_is_valid_for(name, deployment):
    command = IMPLEMENTATIONS[name]
    if not _installed(command):
        if os.environ.get("DEPLOY_TEST") == "required":
            pytest.fail(
                f"{name} is not installed (scripts/ensure-docker.sh, scripts/install-compose-v2.sh)"
            )
        pytest.skip(f"{name} is not installed")
    checked = subprocess.run(
        [*command, "--profile", "topology", "config", "-q"],
        cwd=deployment.root,
        env=deployment.env,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr[-2000:]
    services = subprocess.run(
        [*command, "--profile", "topology", "config", "--services"],
        cwd=deployment.root,
        env=deployment.env,
        capture_output=True,
        text=True,
    ).stdout.split()
    for host in ("db-primary", "db-replica", "app", "airflow-scheduler", "airflow-worker"):
        assert host in services, (name, services)
