"""Running a controller's command line: argument lists, a timeout, no shell, no secrets.

The docker compose and systemd controllers are thin translations of an operation into one
command line. They take a ``CommandRunner`` so the tests can check the exact argv and feed
recorded outputs (there is no Docker engine or systemd on the test machine); production
uses :func:`run_command`.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tracktion_dr.core.errors import ControllerError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 600.0  # a compose build --no-cache can take minutes


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


CommandRunner = Callable[[Sequence[str], float], CommandResult]


# Compose settings of the worker's own environment that select a project or its files. The
# controllers name both on every command line (-f, -p); left in the environment, they still
# change what Compose v2 answers (with COMPOSE_PROJECT_NAME set, `ps` and `stop` of a service
# the file does not have exit 0 instead of "no such service").
_SELECTING_ENVIRONMENT = ("COMPOSE_PROJECT_NAME", "COMPOSE_FILE", "COMPOSE_PROFILES")


def run_command(argv: Sequence[str], timeout: float = DEFAULT_TIMEOUT_SECONDS) -> CommandResult:
    """Run ``argv`` (never through a shell); a missing binary or a hang is a ControllerError."""
    log.info("running: %s", " ".join(argv))
    environment = {k: v for k, v in os.environ.items() if k not in _SELECTING_ENVIRONMENT}
    try:
        completed = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env=environment,
            check=False,
        )
    except FileNotFoundError:
        raise ControllerError(f"{argv[0]} is not installed on this host") from None
    except subprocess.TimeoutExpired:
        raise ControllerError(f"{' '.join(argv)} did not finish within {timeout:.0f}s") from None
    return CommandResult(tuple(argv), completed.returncode, completed.stdout, completed.stderr)


def last_lines(text: str, count: int = 5) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-count:]) or "(no output)"
