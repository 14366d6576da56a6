"""Stopping the services of a recovery means they are gone, not merely asked to go.

Two tasks may stop the same services at once (a full restore in place stops them from
``restore_beside`` while ``stop_services`` runs): supervisord then answers the second
``stop`` at once with NOT_RUNNING while the process is still STOPPING. These fakes stand in
for a controller because that interleaving cannot be produced on demand with real
processes; the real supervisord mapping of STOPPING is checked against its state names."""

from __future__ import annotations

import pytest

from tracktion_dr.core.errors import ControllerError
from tracktion_dr.core.plan import load_plan
from tracktion_dr.scenarios import database
from tracktion_dr.services import supervisord
from tracktion_dr.services.base import ServiceController, ServiceState, ServiceStatus


class StillStopping(ServiceController):
    """``stop`` returns at once; the process reports STOPPING ``polls`` more times."""

    def __init__(self, polls: int):
        self.polls = polls
        self.events: list[str] = []

    def status(self, service: str) -> ServiceStatus:
        self.events.append(f"status {service}")
        if self.polls > 0:
            self.polls -= 1
            return ServiceStatus(service, ServiceState.STOPPING)
        return ServiceStatus(service, ServiceState.STOPPED)

    def stop(self, service: str) -> None:
        self.events.append(f"stop {service}")

    def start(self, service: str) -> None:
        self.events.append(f"start {service}")


@pytest.fixture()
def environment():
    return load_plan().environment("drill")


def test_stop_returns_only_once_every_service_reports_stopped(environment, monkeypatch):
    monkeypatch.setattr(database, "STOP_CONFIRM_POLL_SECONDS", 0.01)
    controller = StillStopping(polls=3)
    services = list(environment.services)[:1]
    database.stop_services(environment, services, lambda _config: controller)
    assert controller.events[0] == f"stop {environment.services[services[0]].unit or services[0]}"
    assert len([e for e in controller.events if e.startswith("status")]) == 4
    assert controller.polls == 0


def test_a_service_that_never_stops_fails_the_step_naming_it(environment, monkeypatch):
    monkeypatch.setattr(database, "STOP_CONFIRM_POLL_SECONDS", 0.01)
    monkeypatch.setattr(database, "STOP_CONFIRM_SECONDS", 0.05)
    controller = StillStopping(polls=10_000)
    name = list(environment.services)[0]
    unit = environment.services[name].unit or name
    with pytest.raises(ControllerError) as caught:
        database.stop_services(environment, [name], lambda _config: controller)
    assert unit in str(caught.value) and "still stopping" in str(caught.value)
    assert "HINT:" in str(caught.value)


def test_supervisord_stopping_is_not_reported_as_stopped():
    assert supervisord._STATES["STOPPING"] is ServiceState.STOPPING
    assert supervisord._STATES["STOPPED"] is ServiceState.STOPPED
