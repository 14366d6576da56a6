"""Service controllers: one interface over supervisord (sandbox), docker compose, systemd."""

from tracktion_dr.core.errors import ControllerError
from tracktion_dr.services.base import (
    ServiceController,
    ServiceState,
    ServiceStatus,
)

__all__ = ["ControllerError", "ServiceController", "ServiceState", "ServiceStatus"]
