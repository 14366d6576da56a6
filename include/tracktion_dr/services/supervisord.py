"""Service controller for supervisord, over its XML-RPC API (the sandbox's process manager).

Calls carry a socket timeout so a wedged supervisord fails the step with a message instead
of hanging the task, and credentials are kept out of every error text.
"""

from __future__ import annotations

import http.client
import logging
import xmlrpc.client
from typing import Any

from tracktion_dr.core.errors import ControllerError
from tracktion_dr.services.base import (
    ServiceController,
    ServiceState,
    ServiceStatus,
)

log = logging.getLogger(__name__)

# supervisord fault codes (supervisor/xmlrpc.py Faults)
_BAD_NAME = 10
_ALREADY_STARTED = 60
_NOT_RUNNING = 70

_STATES = {
    "RUNNING": ServiceState.RUNNING,
    "STARTING": ServiceState.STARTING,
    "BACKOFF": ServiceState.STARTING,
    "STOPPED": ServiceState.STOPPED,
    "STOPPING": ServiceState.STOPPING,
    "EXITED": ServiceState.STOPPED,
    "FATAL": ServiceState.FAILED,
    "UNKNOWN": ServiceState.UNKNOWN,
}


class _TimeoutTransport(xmlrpc.client.Transport):
    def __init__(self, timeout: float):
        super().__init__()
        self._timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        connection = super().make_connection(host)
        connection.timeout = self._timeout
        return connection


class SupervisordController(ServiceController):
    """Drive programs of one supervisord through ``/RPC2``."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
    ):
        credentials = f"{username}:{password}@" if username else ""
        self._endpoint = f"{host}:{port}"
        self._proxy = xmlrpc.client.ServerProxy(
            f"http://{credentials}{host}:{port}/RPC2",
            transport=_TimeoutTransport(timeout),
            allow_none=True,
        )

    def _call(self, operation: str, *args: Any) -> Any:
        try:
            return getattr(self._proxy.supervisor, operation)(*args)
        except xmlrpc.client.Fault:
            raise
        except xmlrpc.client.ProtocolError as exc:
            # exc.url embeds the credentials: report only status and endpoint.
            raise ControllerError(
                f"supervisord at {self._endpoint} refused {operation}: "
                f"HTTP {exc.errcode} {exc.errmsg}"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise ControllerError(
                f"supervisord at {self._endpoint} is unreachable ({operation}): {exc}"
            ) from None

    def status(self, service: str) -> ServiceStatus:
        try:
            info = self._call("getProcessInfo", service)
        except xmlrpc.client.Fault as fault:
            raise self._fault_error("status", service, fault) from None
        state = _STATES.get(str(info.get("statename")), ServiceState.UNKNOWN)
        return ServiceStatus(service, state, str(info.get("description", "")))

    def stop(self, service: str) -> None:
        log.info("supervisord: stopping %s", service)
        try:
            self._call("stopProcess", service, True)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode != _NOT_RUNNING:
                raise self._fault_error("stop", service, fault) from None

    def start(self, service: str) -> None:
        log.info("supervisord: starting %s", service)
        try:
            self._call("startProcess", service, True)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode != _ALREADY_STARTED:
                raise self._fault_error("start", service, fault) from None

    def programs(self) -> list[str]:
        return [str(info["name"]) for info in self._call("getAllProcessInfo")]

    @staticmethod
    def _fault_error(operation: str, service: str, fault: xmlrpc.client.Fault) -> ControllerError:
        if fault.faultCode == _BAD_NAME:
            return ControllerError(f"supervisord has no program named {service!r}")
        return ControllerError(f"supervisord could not {operation} {service}: {fault.faultString}")
