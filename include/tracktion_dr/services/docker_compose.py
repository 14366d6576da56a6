"""Service controller for docker compose (Tracktion production), scoped to one project.

Every command names the compose file *and* the project (``-f FILE -p PROJECT``), so a
recovery of the ``tracktion-drill`` project can never touch ``tracktion`` containers on a
shared host. Operations map to compose as follows (the seed's scripts, minus their damage):

=========  ===================================================================
status     ``ps --all --format json SERVICE`` (state and health of its containers)
stop       ``stop SERVICE``                 (idempotent: stopping stopped is success)
start      ``unpause SERVICE`` when a container of it is paused (``up`` cannot start a
           paused container), then ``up --detach --no-deps SERVICE`` (creates the
           container if it is gone)
restart    ``restart SERVICE`` then ``up --detach --no-deps SERVICE`` (compose restarts
           only existing containers and exits 0 when there is none)
pull       ``pull SERVICE``
rebuild    ``build --no-cache SERVICE`` then ``up --detach --no-deps --force-recreate``
=========  ===================================================================

Unlike the seed, nothing here runs ``down --rmi all --volumes`` (it deletes the volumes
with the data) and ``--no-deps`` keeps a restart from restarting the service's
dependencies behind the DAG's back: the DAG restarts in dependency order itself.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from tracktion_dr.core.errors import ControllerError
from tracktion_dr.services.base import (
    ServiceController,
    ServiceState,
    ServiceStatus,
)
from tracktion_dr.services.commands import (
    DEFAULT_TIMEOUT_SECONDS,
    CommandResult,
    CommandRunner,
    last_lines,
    run_command,
)

log = logging.getLogger(__name__)

# docker compose ps "State" values (the Docker Engine's container states)
_STATES = {
    "running": ServiceState.RUNNING,
    "restarting": ServiceState.STARTING,
    "created": ServiceState.STOPPED,
    "exited": ServiceState.STOPPED,
    "paused": ServiceState.STOPPED,
    "removing": ServiceState.STOPPING,
    "dead": ServiceState.FAILED,
}


class DockerComposeController(ServiceController):
    def __init__(
        self,
        compose_file: str,
        project: str,
        *,
        runner: CommandRunner = run_command,
        docker: str = "docker",
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ):
        self.compose_file = compose_file
        self.project = project
        self._runner = runner
        self._docker = docker
        self._timeout = timeout

    def command(self, *args: str) -> list[str]:
        """The full argv of one compose operation (public: tests and dry runs print it)."""
        return [self._docker, "compose", "-f", self.compose_file, "-p", self.project, *args]

    def _run(self, operation: str, service: str, *args: str) -> CommandResult:
        result = self._runner(self.command(*args), self._timeout)
        if result.returncode != 0:
            detail = last_lines(result.stderr or result.stdout)
            if "unknown shorthand flag" in detail or "unknown command" in detail:
                # what the docker CLI says when the compose v2 plugin is missing
                raise ControllerError(
                    f"{self._docker} has no 'compose' plugin on this host (install "
                    f"docker-compose-plugin): {detail}"
                )
            if "no such service" in detail.lower():
                raise ControllerError(
                    f"compose project {self.project} ({self.compose_file}) has no service "
                    f"named {service!r}"
                )
            raise ControllerError(
                f"docker compose could not {operation} {service} in project {self.project} "
                f"(exit {result.returncode}): {detail}"
            )
        return result

    def status(self, service: str) -> ServiceStatus:
        containers = self._containers(service)
        if not containers:
            return ServiceStatus(service, ServiceState.STOPPED, "no container")
        states = [_container_state(c) for c in containers]
        # One unhealthy replica makes the service not RUNNING: report the worst.
        order = [
            ServiceState.FAILED,
            ServiceState.STOPPED,
            ServiceState.STARTING,
            ServiceState.UNKNOWN,
            ServiceState.RUNNING,
        ]
        worst = min(states, key=lambda pair: order.index(pair[0]))
        return ServiceStatus(service, worst[0], worst[1])

    def stop(self, service: str) -> None:
        log.info("compose %s: stopping %s", self.project, service)
        self._run("stop", service, "stop", service)

    def _containers(self, service: str) -> list[dict[str, Any]]:
        result = self._run("inspect", service, "ps", "--all", "--format", "json", service)
        return parse_ps_json(result.stdout)

    def start(self, service: str) -> None:
        log.info("compose %s: starting %s", self.project, service)
        # status reads a paused container as stopped, and the engine refuses to start one
        if any(str(c.get("State", "")).lower() == "paused" for c in self._containers(service)):
            self._run("unpause", service, "unpause", service)
        self._run("start", service, "up", "--detach", "--no-deps", service)

    def restart(self, service: str) -> None:
        log.info("compose %s: restarting %s", self.project, service)
        self._run("restart", service, "restart", service)
        # a service whose container was removed is not restarted (exit 0): create it
        self._run("start", service, "up", "--detach", "--no-deps", service)

    def pull(self, service: str) -> None:
        log.info("compose %s: pulling %s", self.project, service)
        self._run("pull", service, "pull", service)

    def rebuild(self, service: str) -> None:
        log.info("compose %s: rebuilding %s without cache", self.project, service)
        self._run("build", service, "build", "--no-cache", service)
        self._run("recreate", service, "up", "--detach", "--no-deps", "--force-recreate", service)


def parse_ps_json(text: str) -> list[dict[str, Any]]:
    """``docker compose ps --format json``: a JSON array (compose < 2.21) or one JSON
    object per line (2.21 and later). Both are accepted."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        value = json.loads(text)
        return [item for item in value if isinstance(item, dict)]
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise ControllerError(f"unexpected docker compose ps output: {exc}") from None


def _container_state(container: dict[str, Any]) -> tuple[ServiceState, str]:
    state = str(container.get("State", "")).lower()
    health = str(container.get("Health", "")).lower()
    name = container.get("Name", "?")
    detail = f"{name}: {container.get('Status') or state}"
    mapped = _STATES.get(state, ServiceState.UNKNOWN)
    if mapped == ServiceState.RUNNING and health == "starting":
        return ServiceState.STARTING, detail
    if mapped == ServiceState.RUNNING and health == "unhealthy":
        return ServiceState.FAILED, detail
    return mapped, detail
