"""The docker compose service controller against real containers on this machine's engine.

tests/unit/test_command_controllers.py checks the controller's command lines and how it
reads recorded outputs; here ``DockerComposeController`` drives a compose project of its
own (``tracktion-ctl-test-<hex>``, its file in the session's tmp dir) whose services run
``python3 -m http.server``, and every claim is checked against the engine independently of
the controller: the containers are found by their compose labels and read with
``docker inspect``. The project is removed after the session (``down -v --remove-orphans
--rmi local``); the services' image (the base image plus python3) is kept, so a later
session rebuilds it from the build cache in about a second.

Docker is had as the deployment test has it (scripts/ensure-docker.sh, the base image by
scripts/build-base-image.sh; Compose v2 by scripts/install-compose-v2.sh when ``docker
compose`` is missing): skipped with the reason when it cannot be, a failure with
``DEPLOY_TEST=required``, skipped on purpose with ``DEPLOY_TEST=skip``. The controller
speaks Compose v2 only (``docker compose``; ``ps --format json`` has no 1.29 equivalent).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tracktion_dr.core.errors import ControllerError
from tracktion_dr.services.base import ServiceState, ServiceStatus
from tracktion_dr.services.docker_compose import DockerComposeController

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = os.environ.get("BASE_IMAGE", "debian:bookworm-slim")
SERVER_IMAGE = "tracktion-dr/compose-ctl-test:latest"
SERVER_DOCKERFILE = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \\
 && apt-get install -y --no-install-recommends python3 \\
 && rm -rf /var/lib/apt/lists/*
"""
# The bound of every wait for a container to reach a state: passing it is a failure of the
# test, never a timing measurement.
WAIT_SECONDS = 90
COMMAND_TIMEOUT_SECONDS = 300


def _http_server(**extra: Any) -> dict[str, Any]:
    return {
        "image": SERVER_IMAGE,
        "command": ["python3", "-m", "http.server", "8000"],
        # python as PID 1 has no SIGTERM handler, so SIGTERM would wait out the stop timeout
        "stop_signal": "SIGINT",
        **extra,
    }


SERVES_HTTP = {
    "test": [
        "CMD",
        "python3",
        "-c",
        "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/', timeout=2)",
    ],
    "interval": "1s",
    "timeout": "3s",
    "retries": 3,
}
COMPOSE_FILE = {
    "services": {
        "web": _http_server(healthcheck=SERVES_HTTP),
        "app": _http_server(
            healthcheck=SERVES_HTTP, depends_on={"web": {"condition": "service_healthy"}}
        ),
        "pair": _http_server(scale=2),
        "sick": _http_server(
            healthcheck={"test": ["CMD", "false"], "interval": "1s", "retries": 1}
        ),
        # the first probe runs an hour after the start: its health stays "starting"
        "slow": _http_server(healthcheck={"test": ["CMD", "true"], "interval": "1h"}),
        "spare": _http_server(),
        "built": {
            "build": {"context": ".", "dockerfile": "built.Dockerfile"},
            "command": ["python3", "-m", "http.server", "8000"],
            "stop_signal": "SIGINT",
            "volumes": ["data:/data"],
        },
        # .invalid never resolves (RFC 2606): a pull that fails wherever the test runs
        "unreachable": {"image": "registry.invalid/tracktion/none:1"},
    },
    "volumes": {"data": {}},
}
# A layer that differs at every build, so a build without the cache makes a new image.
BUILT_DOCKERFILE = f"FROM {SERVER_IMAGE}\nRUN cat /proc/sys/kernel/random/uuid > /built-id\n"


# --------------------------------------------------------------------------- the engine


def _unavailable(reason: str) -> None:
    if os.environ.get("DEPLOY_TEST") == "required":
        pytest.fail(f"the compose controller test needs Docker: {reason}")
    pytest.skip(f"no Docker engine for the compose controller test: {reason}")


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=kwargs.pop("cwd", ROOT),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
        check=False,
        **kwargs,
    )


def _tail(result: subprocess.CompletedProcess[str]) -> str:
    return (result.stderr or result.stdout).strip()[-1500:]


@pytest.fixture(scope="session")
def server_image() -> str:
    """The engine answering, Compose v2 present, and the services' image built."""
    if os.environ.get("DEPLOY_TEST") == "skip":
        pytest.skip("DEPLOY_TEST=skip")
    ensure = _run(["bash", "scripts/ensure-docker.sh"])
    if ensure.returncode != 0:
        _unavailable(_tail(ensure))
    if _run(["docker", "compose", "version"]).returncode != 0:
        installed = _run(["bash", "scripts/install-compose-v2.sh"])
        if installed.returncode != 0:
            _unavailable(f"no Compose v2 (docker compose): {_tail(installed)}")
    base = _run(["bash", "scripts/build-base-image.sh", BASE_IMAGE])
    assert base.returncode == 0, f"the base image {BASE_IMAGE}: {_tail(base)}"
    # --network host: apt reaches the mirror through the host's network, as the project
    # image's build does (scripts/build-image.sh). No context: the Dockerfile is stdin.
    built = _run(
        ["docker", "build", "--network", "host", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}"]
        + ["--tag", SERVER_IMAGE, "-"],
        input=SERVER_DOCKERFILE,
    )
    assert built.returncode == 0, f"building {SERVER_IMAGE}: {_tail(built)}"
    return SERVER_IMAGE


# --------------------------------------------------------------------------- the project


@dataclass
class ComposeProject:
    """One compose project, driven and inspected *without* the controller under test."""

    file: Path
    name: str

    @property
    def controller(self) -> DockerComposeController:
        return DockerComposeController(
            str(self.file), self.name, timeout=float(COMMAND_TIMEOUT_SECONDS)
        )

    def compose(self, *args: str) -> None:
        result = _run(["docker", "compose", "-f", str(self.file), "-p", self.name, *args])
        assert result.returncode == 0, f"docker compose {' '.join(args)}: {_tail(result)}"

    def up(self, *services: str) -> None:
        """Running, and healthy where the service has a health check."""
        self.compose("up", "--detach", "--wait", *services)

    def containers(self, service: str) -> list[dict[str, Any]]:
        """``docker inspect`` of the service's containers, found by compose's labels."""
        ids = _run(
            ["docker", "ps", "--all", "--quiet", "--no-trunc"]
            + ["--filter", f"label=com.docker.compose.project={self.name}"]
            + ["--filter", f"label=com.docker.compose.service={service}"]
        )
        assert ids.returncode == 0, _tail(ids)
        if not ids.stdout.split():
            return []
        inspected = _run(["docker", "inspect", *ids.stdout.split()])
        assert inspected.returncode == 0, _tail(inspected)
        return sorted(json.loads(inspected.stdout), key=lambda c: c["Name"])

    def container(self, service: str) -> dict[str, Any]:
        (only,) = self.containers(service)
        return only

    def unpause(self, service: str) -> None:
        """Unpaused and healthy again: the health probes failed while it was paused, and
        ``up --wait`` refuses an unhealthy container at once."""
        self.compose("unpause", service)
        wait_for(f"health of {service} after unpause", lambda: self.container(service), _is_serving)

    def down(self, *extra: str) -> None:
        _run(
            ["docker", "compose", "-f", str(self.file), "-p", self.name]
            + ["down", "--volumes", "--remove-orphans", *extra]
        )


def _write_project(folder: Path, name: str) -> ComposeProject:
    (folder / "compose.yaml").write_text(yaml.safe_dump(COMPOSE_FILE, sort_keys=False))
    (folder / "built.Dockerfile").write_text(BUILT_DOCKERFILE)
    return ComposeProject(folder / "compose.yaml", name)


@pytest.fixture(scope="session")
def project(server_image, tmp_path_factory):
    """``web`` and ``app`` up and healthy; each test sets the state it starts from."""
    folder = tmp_path_factory.mktemp("compose-ctl")
    handle = _write_project(folder, f"tracktion-ctl-test-{secrets.token_hex(4)}")
    try:
        handle.up("web", "app")
        yield handle
    finally:
        # --rmi local: the image built for `built` (named after the project), not the
        # services' image, which has a tag of its own.
        handle.down("--rmi", "local")


@pytest.fixture
def other_project(project):
    """A second project from the same file: the same service names, other containers."""
    other = ComposeProject(project.file, f"{project.name}-other")
    try:
        other.up("web")
        yield other
    finally:
        other.down()


def wait_for(
    what: str, probe: Callable[[], Any], accept: Callable[[Any], bool]
) -> Any:  # the last value probed
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        value = probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {value!r} after {WAIT_SECONDS}s")
        time.sleep(0.2)


def wait_for_state(project: ComposeProject, service: str, state: ServiceState) -> ServiceStatus:
    return wait_for(
        f"controller status of {service}",
        lambda: project.controller.status(service),
        lambda status: status.state is state,
    )


def _is_serving(container: dict[str, Any]) -> bool:
    """Running and its health check (an HTTP GET inside the container) passing."""
    state = container["State"]
    return state["Running"] and state.get("Health", {}).get("Status") == "healthy"


# --------------------------------------------------------------------------- status


def test_a_running_healthy_service_reads_running(project):
    project.up("web")
    container = project.container("web")
    assert _is_serving(container), container["State"]

    status = project.controller.status("web")

    assert status.state is ServiceState.RUNNING, status
    assert status.service == "web"
    assert status.detail.startswith(container["Name"].lstrip("/") + ": Up ")
    assert "(healthy)" in status.detail


def test_the_health_check_is_read_unhealthy_is_failed_and_starting_is_starting(project):
    project.compose("up", "--detach", "sick", "slow")
    wait_for(
        "health of sick",
        lambda: project.container("sick")["State"]["Health"]["Status"],
        lambda health: health == "unhealthy",
    )
    assert project.container("slow")["State"]["Health"]["Status"] == "starting"

    sick = project.controller.status("sick")
    slow = project.controller.status("slow")

    assert sick.state is ServiceState.FAILED, sick
    assert "unhealthy" in sick.detail
    assert slow.state is ServiceState.STARTING, slow


def test_one_stopped_replica_makes_the_service_stopped(project):
    project.up("pair")
    first, second = project.containers("pair")
    assert project.controller.status("pair").state is ServiceState.RUNNING

    stopped = _run(["docker", "stop", first["Id"]])
    assert stopped.returncode == 0, _tail(stopped)
    status = project.controller.status("pair")

    assert status.state is ServiceState.STOPPED, status
    assert status.detail.startswith(first["Name"].lstrip("/") + ": Exited")
    still = project.containers("pair")[1]
    assert still["Id"] == second["Id"] and still["State"]["Running"]


def test_created_and_paused_containers_read_stopped(project):
    project.compose("rm", "--stop", "--force", "spare")
    project.compose("create", "spare")
    assert project.container("spare")["State"]["Status"] == "created"
    assert project.controller.status("spare").state is ServiceState.STOPPED

    project.up("web")
    project.compose("pause", "web")
    try:
        assert project.container("web")["State"]["Status"] == "paused"
        assert project.controller.status("web").state is ServiceState.STOPPED
    finally:
        project.unpause("web")


# --------------------------------------------------------------------------- stop / start


def test_stop_stops_the_container_only_that_service_and_twice_is_success(project):
    project.up("web", "app")
    app_started = project.container("app")["State"]["StartedAt"]

    project.controller.stop("web")

    web = project.container("web")
    assert web["State"]["Status"] == "exited" and not web["State"]["Running"], web["State"]
    status = project.controller.status("web")
    assert status.state is ServiceState.STOPPED, status
    assert ": Exited (0)" in status.detail
    app = project.container("app")  # its dependency stopped, not itself
    assert app["State"]["Running"] and app["State"]["StartedAt"] == app_started

    project.controller.stop("web")  # stopping a stopped service is success

    again = project.container("web")
    assert again["Id"] == web["Id"] and again["State"]["Status"] == "exited"


def test_start_runs_a_stopped_service_again(project):
    project.up("web")
    project.compose("stop", "web")
    assert not project.container("web")["State"]["Running"]

    project.controller.start("web")

    wait_for_state(project, "web", ServiceState.RUNNING)
    assert _is_serving(project.container("web"))


def test_start_of_a_running_service_changes_nothing(project):
    project.up("web")
    before = project.container("web")

    project.controller.start("web")

    after = project.container("web")
    assert after["Id"] == before["Id"]
    assert after["State"]["StartedAt"] == before["State"]["StartedAt"]
    assert project.controller.status("web").state is ServiceState.RUNNING


def test_start_does_not_start_the_services_dependencies(project):
    project.up("web", "app")
    project.compose("stop", "app", "web")

    project.controller.start("app")  # app depends_on web (service_healthy)

    wait_for_state(project, "app", ServiceState.RUNNING)
    web = project.container("web")
    assert web["State"]["Status"] == "exited", web["State"]
    assert project.controller.status("web").state is ServiceState.STOPPED


def test_a_service_without_a_container_reads_stopped_and_start_creates_it(project):
    project.compose("rm", "--stop", "--force", "spare")
    assert project.containers("spare") == []

    status = project.controller.status("spare")
    assert status.state is ServiceState.STOPPED and status.detail == "no container", status

    project.controller.start("spare")

    assert project.container("spare")["State"]["Running"]
    wait_for_state(project, "spare", ServiceState.RUNNING)


# --------------------------------------------------------------------------- restart


def test_restart_restarts_that_service_and_not_its_dependencies(project):
    project.up("web", "app")
    web_before, app_before = project.container("web"), project.container("app")

    project.controller.restart("app")

    app_after, web_after = project.container("app"), project.container("web")
    assert app_after["Id"] == app_before["Id"]
    assert app_after["State"]["StartedAt"] != app_before["State"]["StartedAt"]
    assert web_after["State"]["StartedAt"] == web_before["State"]["StartedAt"]
    wait_for_state(project, "app", ServiceState.RUNNING)
    assert _is_serving(project.container("app"))


def test_restart_runs_a_stopped_service(project):
    project.up("web")
    project.compose("stop", "web")

    project.controller.restart("web")

    assert project.container("web")["State"]["Running"]
    wait_for_state(project, "web", ServiceState.RUNNING)


def test_restart_of_a_service_without_a_container_runs_it(project):
    project.compose("rm", "--stop", "--force", "spare")

    project.controller.restart("spare")

    assert project.containers("spare"), "no container after restart"
    assert project.container("spare")["State"]["Running"]


def test_start_of_a_paused_service_runs_it(project):
    project.up("web")
    project.compose("pause", "web")
    try:
        project.controller.start("web")
        assert project.container("web")["State"]["Running"]
        assert not project.container("web")["State"]["Paused"]
    finally:
        if project.container("web")["State"]["Paused"]:
            project.unpause("web")


# --------------------------------------------------------------------------- rebuild / pull


def test_rebuild_builds_a_new_image_and_recreates_the_container_keeping_its_volume(project):
    project.up("built")
    before = project.container("built")
    built_id = _run(["docker", "exec", before["Id"], "cat", "/built-id"]).stdout
    wrote = _run(["docker", "exec", before["Id"], "sh", "-c", "echo kept > /data/marker"])
    assert wrote.returncode == 0, _tail(wrote)

    project.controller.rebuild("built")

    after = project.container("built")
    assert after["Id"] != before["Id"], "the container was not recreated"
    assert after["Image"] != before["Image"], "the image was not built anew"
    assert after["State"]["Running"]
    assert _run(["docker", "exec", after["Id"], "cat", "/built-id"]).stdout != built_id
    marker = _run(["docker", "exec", after["Id"], "cat", "/data/marker"])
    assert marker.stdout == "kept\n", _tail(marker)  # the named volume survived
    wait_for_state(project, "built", ServiceState.RUNNING)
    # the image the old container ran is no longer used: it is this test's to remove
    _run(["docker", "image", "rm", before["Image"]])


def test_a_pull_that_fails_is_a_clear_error(project):
    with pytest.raises(ControllerError) as raised:
        project.controller.pull("unreachable")

    message = str(raised.value)
    assert message.startswith(
        f"docker compose could not pull unreachable in project {project.name} (exit 1): "
    )
    assert "registry.invalid" in message


# --------------------------------------------------------------------------- scope


@pytest.mark.parametrize("operation", ["status", "stop", "start", "restart", "pull", "rebuild"])
def test_a_service_not_in_the_project_is_a_clear_error(project, operation):
    with pytest.raises(ControllerError) as raised:
        getattr(project.controller, operation)("no-such-service")

    assert str(raised.value) == (
        f"compose project {project.name} ({project.file}) has no service named 'no-such-service'"
    )


def test_operations_touch_only_their_own_project(project, other_project):
    project.up("web")
    theirs = other_project.container("web")
    assert theirs["Id"] != project.container("web")["Id"]

    project.controller.stop("web")
    assert not project.container("web")["State"]["Running"]
    assert project.controller.status("web").state is ServiceState.STOPPED
    assert other_project.controller.status("web").state is ServiceState.RUNNING
    project.controller.restart("web")
    project.controller.start("web")

    after = other_project.container("web")
    assert after["Id"] == theirs["Id"]
    assert after["State"]["StartedAt"] == theirs["State"]["StartedAt"]
    assert _is_serving(after)
