"""The one exception tree of the project (after Barman's and Patroni's): every error the
library raises on purpose is a :class:`DrError`.

Two branches matter to the step kit:

* :class:`Refused` - checked and refused *before anything was touched*. Never retried
  (trying again cannot make a wrong input right, and it delays the operator); the run ends
  with one clear failure. A refusal may carry a ``hint``: the remedy, printed as a HINT line.
* :class:`StepFailed` - something was attempted and did not work. Retried by the step
  kit's policy for its kind of step; every destructive step is resumable, so a retry (or a
  same-incident re-run) continues from the actual state.

Anything else (a bug, an ``OSError`` from the machine) is treated like ``StepFailed``.
"""

from __future__ import annotations


class DrError(Exception):
    """Root of every error this project raises on purpose."""

    hint: str = ""

    def __init__(self, message: str, *, hint: str = ""):
        super().__init__(message)
        if hint:
            self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text}\nHINT: {self.hint}" if self.hint else text


class Refused(DrError):
    """Refused before anything was touched: never retried."""


class InvalidInput(Refused, ValueError):
    """A run input is wrong. Raised before anything is touched, naming the field."""

    def __init__(self, field: str, reason: str, *, hint: str = ""):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}", hint=hint)


class NoUsableBackup(Refused, LookupError):
    """Nothing at the location satisfies the request; the message lists what was rejected."""


class TargetBusy(Refused):
    """Another live destructive run holds the target."""


class FailoverRefused(Refused):
    """Preconditions not met; nothing was switched. The message says why."""


class AlreadyRecovered(Refused):
    """A new incident's run found its target already recovered (by an earlier incident):
    nothing to do, and it says so instead of causing a second outage."""


class StepFailed(DrError):
    """A step attempted something and it did not work (the message says what and where)."""


class CommandError(StepFailed):
    """An external program failed; the message names the step and quotes its stderr."""


class ControllerError(StepFailed):
    """A service controller could not do what was asked."""


class ValidationFailed(StepFailed):
    """A restored copy or recovered system failed its checks; nothing was swapped."""


class WalUnavailable(StepFailed):
    """A standby asks for WAL that neither its upstream nor the archive it reads still holds:
    it can never catch up by replaying (a fresh base backup can)."""


class ServerDied(StepFailed):
    """PostgreSQL exited while we waited for it; the message quotes its FATAL line."""


class PlanProblem(DrError, ValueError):
    """The DR plan itself is wrong (raised at load time, with file and field path)."""
