"""A sandbox service that cannot start: its port taken by a listener that never answers."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tracktion_sandbox import layout as L


@contextmanager
def service_cannot_start(supervisor_controller, service: str) -> Iterator[str]:
    """Stop ``service`` and hold its port, so a restart cannot bring it back; afterwards
    free the port, start it again and wait until supervisord has it running."""
    supervisor_controller.stop(service)
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind((L.HOST, L.SERVICE_PORTS[service]))
    blocker.listen(1)
    try:
        yield service
    finally:
        blocker.close()
        supervisor_controller.start(service)
        deadline = time.monotonic() + 30
        while supervisor_controller.status(service).state != "running":
            assert time.monotonic() < deadline, f"{service} did not start again"
            time.sleep(0.5)
