"""Running a controller's command line: argument lists, a timeout, no shell, no secrets.

The docker compose and systemd controllers are thin translations of an operation into one
command line. They take a ``CommandRunner`` so the tests can check the exact argv and feed
recorded outputs (there is no Docker engine or systemd on the test machine); production
uses :func:`run_command`.
"""

from __future__ import annotations

import logging
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


def run_command(argv: Sequence[str], timeout: float = DEFAULT_TIMEOUT_SECONDS) -> CommandResult:
    """Run ``argv`` (never through a shell); a missing binary or a hang is a ControllerError."""
    log.info("running: %s", " ".join(argv))
    try:
        completed = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
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
