"""The service-controller interface every recovery DAG drives.

Recovery steps speak of *services* ("stop analysis-service"); how that happens depends on the
deployment (supervisord in the sandbox, docker compose in production, systemd elsewhere).
Every operation is idempotent — stopping a stopped service or starting a running one is
success — so a cleared and re-run Airflow task ends in the same state.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass


class ServiceState(enum.StrEnum):
    RUNNING = "running"
    STARTING = "starting"
    STOPPING = "stopping"  # asked to stop, the process not gone yet
    STOPPED = "stopped"
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ServiceStatus:
    service: str
    state: ServiceState
    detail: str = ""


class ServiceController(abc.ABC):
    """Start, stop and inspect the platform's services."""

    @abc.abstractmethod
    def status(self, service: str) -> ServiceStatus: ...

    @abc.abstractmethod
    def stop(self, service: str) -> None: ...

    @abc.abstractmethod
    def start(self, service: str) -> None: ...

    def restart(self, service: str) -> None:
        self.stop(service)
        self.start(service)

    def rebuild(self, service: str) -> None:
        """Recreate the service from its image/source. Where there is nothing to rebuild
        (supervisord runs code in place), a restart is the honest equivalent."""
        self.restart(service)
