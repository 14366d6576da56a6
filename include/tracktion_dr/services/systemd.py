"""Service controller for systemd units (hosts where Tracktion runs without containers).

``systemctl`` verbs are already idempotent (starting an active unit and stopping an
inactive one succeed), so each operation is one command line. Status reads machine-readable
properties (``show --property=...``), never the human ``status`` output, whose wording
changes between systemd versions.
"""

from __future__ import annotations

import logging

from tracktion_dr.core.errors import ControllerError
from tracktion_dr.services.base import (
    ServiceController,
    ServiceState,
    ServiceStatus,
)
from tracktion_dr.services.commands import CommandRunner, last_lines, run_command

log = logging.getLogger(__name__)

SYSTEMCTL_TIMEOUT_SECONDS = 120.0

_ACTIVE_STATES = {
    "active": ServiceState.RUNNING,
    "reloading": ServiceState.RUNNING,
    "activating": ServiceState.STARTING,
    "deactivating": ServiceState.STOPPING,
    "inactive": ServiceState.STOPPED,
    "failed": ServiceState.FAILED,
}


class SystemdController(ServiceController):
    def __init__(
        self,
        *,
        runner: CommandRunner = run_command,
        systemctl: str = "systemctl",
        user_mode: bool = False,
    ):
        self._runner = runner
        self._systemctl = systemctl
        self._user_mode = user_mode

    @staticmethod
    def unit(service: str) -> str:
        return service if "." in service else f"{service}.service"

    def command(self, *args: str) -> list[str]:
        scope = ["--user"] if self._user_mode else []
        return [self._systemctl, *scope, "--no-pager", *args]

    def _run(self, operation: str, service: str, *args: str) -> str:
        result = self._runner(self.command(*args), SYSTEMCTL_TIMEOUT_SECONDS)
        if result.returncode != 0:
            detail = last_lines(result.stderr or result.stdout)
            if "not found" in detail or "not loaded" in detail:
                raise ControllerError(f"systemd has no unit named {self.unit(service)!r}")
            raise ControllerError(
                f"systemctl could not {operation} {self.unit(service)} "
                f"(exit {result.returncode}): {detail}"
            )
        return result.stdout

    def status(self, service: str) -> ServiceStatus:
        unit = self.unit(service)
        output = self._run(
            "inspect",
            service,
            "show",
            unit,
            "--property=LoadState,ActiveState,SubState,MainPID",
        )
        properties = dict(line.split("=", 1) for line in output.strip().splitlines() if "=" in line)
        if properties.get("LoadState") == "not-found":
            raise ControllerError(f"systemd has no unit named {unit!r}")
        state = _ACTIVE_STATES.get(properties.get("ActiveState", ""), ServiceState.UNKNOWN)
        detail = (
            f"{properties.get('ActiveState', '?')} ({properties.get('SubState', '?')}), "
            f"pid {properties.get('MainPID', '0')}"
        )
        return ServiceStatus(service, state, detail)

    def stop(self, service: str) -> None:
        log.info("systemd: stopping %s", self.unit(service))
        self._run("stop", service, "stop", self.unit(service))

    def start(self, service: str) -> None:
        log.info("systemd: starting %s", self.unit(service))
        self._run("start", service, "start", self.unit(service))

    def restart(self, service: str) -> None:
        log.info("systemd: restarting %s", self.unit(service))
        self._run("restart", service, "restart", self.unit(service))
