"""Concurrent, time-bounded health probes.

The seed's assessment curls each service in turn with no timeout, so one hung endpoint
stalls the whole assessment during the incident's most expensive minutes. Here every probe
runs in its own thread with its own timeout, and the whole batch is bounded by the slowest
probe's timeout (plus a small grace), not by the sum: a probe that has not answered by its
deadline is reported DOWN with "no answer within Ns" while the others are already done.
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import httpx
import psycopg

from tracktion_dr.core.errors import DrError

log = logging.getLogger(__name__)

Status = Literal["OPERATIONAL", "DEGRADED", "DOWN"]
Kind = Literal["service", "database", "storage", "external"]

# Time allowed beyond a probe's own timeout for thread start-up and bookkeeping.
DEADLINE_GRACE_SECONDS = 0.5


class ProbeFailure(DrError):
    """The component answered (or failed to) in a way that means it is not healthy."""


@dataclass(frozen=True)
class ProbeTarget:
    name: str
    kind: Kind
    check: Callable[[float], str]  # given the timeout, returns a detail or raises
    timeout: float
    status_when_failing: Status = "DOWN"


@dataclass(frozen=True)
class ProbeResult:
    name: str
    kind: Kind
    status: Status
    detail: str
    elapsed_seconds: float
    checked_at: str

    @property
    def healthy(self) -> bool:
        return self.status == "OPERATIONAL"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


# --- checks -------------------------------------------------------------------------------


def http_health(url: str) -> Callable[[float], str]:
    """Healthy when ``GET url`` answers 2xx within the timeout."""

    def check(timeout: float) -> str:
        try:
            response = httpx.get(url, timeout=timeout, follow_redirects=False)
        except httpx.TimeoutException:
            raise ProbeFailure(f"no answer within {timeout:g}s") from None
        except httpx.HTTPError as exc:
            raise ProbeFailure(_describe_http_error(exc)) from None
        if not response.is_success:
            raise ProbeFailure(f"HTTP {response.status_code}: {response.text.strip()[:160]}")
        return f"HTTP {response.status_code}"

    return check


def _describe_http_error(exc: httpx.HTTPError) -> str:
    text = str(exc) or type(exc).__name__
    if "Connection refused" in text or "[Errno 111]" in text:
        return "connection refused"
    return text[:160]


def postgres_ready(conninfo: str) -> Callable[[float], str]:
    """Healthy when the server accepts a connection and answers a query (pg_isready + 1)."""

    def check(timeout: float) -> str:
        # libpq's connect_timeout is whole seconds with a minimum of 2.
        connect_timeout = max(2, math.ceil(timeout))
        statement_ms = max(1, int(timeout * 1000))
        try:
            with psycopg.connect(
                conninfo,
                connect_timeout=connect_timeout,
                options=f"-c statement_timeout={statement_ms}",
                application_name="tracktion-dr-probe",
            ) as conn:
                in_recovery, version = conn.execute(
                    "SELECT pg_catalog.pg_is_in_recovery(), "
                    "pg_catalog.current_setting('server_version')"
                ).fetchone()  # type: ignore[misc]
        except psycopg.OperationalError as exc:
            raise ProbeFailure(_first_line(str(exc))) from None
        role = "standby, in recovery" if in_recovery else "primary"
        return f"accepting connections ({role}, PostgreSQL {version})"

    return check


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:160] if lines else "connection failed"


def storage_writable(path: str | Path, must_be_writable: bool = True) -> Callable[[float], str]:
    """Healthy when the directory exists and (if required) a file can be created in it."""

    def check(timeout: float) -> str:
        directory = Path(path)
        if not directory.is_dir():
            raise ProbeFailure(f"{directory} is missing or not a directory")
        if must_be_writable:
            probe_file = directory / f".dr-probe-{uuid.uuid4().hex}"
            try:
                fd = os.open(probe_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.write(fd, b"tracktion-dr probe\n")
                    os.fsync(fd)
                finally:
                    os.close(fd)
                probe_file.unlink()
            except OSError as exc:
                raise ProbeFailure(f"not writable: {exc.strerror}") from None
        usage = os.statvfs(directory)
        free_gib = usage.f_bavail * usage.f_frsize / 2**30
        return f"{'writable' if must_be_writable else 'readable'}, {free_gib:.1f} GiB free"

    return check


# --- running ------------------------------------------------------------------------------


def _run_one(target: ProbeTarget) -> ProbeResult:
    started = time.monotonic()
    checked_at = datetime.now(UTC).isoformat()
    try:
        detail = target.check(target.timeout)
        status: Status = "OPERATIONAL"
    except ProbeFailure as exc:
        detail, status = str(exc), target.status_when_failing
    except Exception as exc:  # a probe must report, never crash the assessment
        detail, status = (
            f"probe error: {type(exc).__name__}: {exc}"[:200],
            target.status_when_failing,
        )
    return ProbeResult(
        name=target.name,
        kind=target.kind,
        status=status,
        detail=detail,
        elapsed_seconds=round(time.monotonic() - started, 3),
        checked_at=checked_at,
    )


def run_probes(targets: Iterable[ProbeTarget]) -> list[ProbeResult]:
    """Run every probe at once; return results in the targets' order.

    Total time is about the largest single timeout. A probe still running at its deadline
    is reported as not answering; its thread is abandoned (it ends on its own timeout).
    """
    targets = list(targets)
    if not targets:
        return []
    started = time.monotonic()
    checked_at = datetime.now(UTC).isoformat()
    executor = ThreadPoolExecutor(max_workers=len(targets), thread_name_prefix="dr-probe")
    futures: list[Future[ProbeResult]] = [executor.submit(_run_one, t) for t in targets]
    try:
        overall = max(t.timeout for t in targets) + DEADLINE_GRACE_SECONDS
        wait_for(futures, timeout=overall)
        results = []
        for target, future in zip(targets, futures, strict=True):
            if future.done():
                results.append(future.result())
            else:
                log.warning("probe %s did not answer within %gs", target.name, target.timeout)
                results.append(
                    ProbeResult(
                        name=target.name,
                        kind=target.kind,
                        status=target.status_when_failing,
                        detail=f"no answer within {target.timeout:g}s",
                        elapsed_seconds=round(time.monotonic() - started, 3),
                        checked_at=checked_at,
                    )
                )
        return results
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


# --- reporting ----------------------------------------------------------------------------

_MARK = {"OPERATIONAL": "✅", "DEGRADED": "⚠️ ", "DOWN": "❌"}


def overall_status(results: Iterable[ProbeResult]) -> Status:
    statuses = {r.status for r in results}
    if "DOWN" in statuses:
        return "DOWN"
    if "DEGRADED" in statuses:
        return "DEGRADED"
    return "OPERATIONAL"


def render_table(results: list[ProbeResult]) -> str:
    """A fixed-width table a tired operator can read in a task log or a terminal."""
    header = ("COMPONENT", "KIND", "STATUS", "TIME", "DETAIL")
    rows = [
        (r.name, r.kind, f"{_MARK[r.status]} {r.status}", f"{r.elapsed_seconds:.2f}s", r.detail)
        for r in results
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(4)]
    lines = []
    for row in [header, *rows]:
        cells = [str(cell).ljust(widths[i]) for i, cell in enumerate(row[:4])]
        lines.append("  ".join([*cells, str(row[4])]).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 6)
    return "\n".join(lines)
