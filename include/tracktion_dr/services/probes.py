"""Concurrent, time-bounded health probes.

The seed's assessment curls each service in turn with no timeout, so one hung endpoint
stalls the whole assessment during the incident's most expensive minutes. Here a batch of
probes runs at once and ends at its deadline (the slowest probe's timeout plus a small
grace), not after the sum: a probe that has not answered by then is reported DOWN with
"no answer within Ns" while the others are already done.

HTTP probes (``http_health``) run together in one event loop with one TLS context, on
async clients of up to ``PROBES_PER_CLIENT`` connections (one per endpoint), each request
bounded as a whole by its probe's timeout. The first version ran every probe in its own
thread with its own client (a TLS context each): 200 threads doing that starved the thread
that should end the batch, and 200 endpoints took 5-16 s for a 2 s timeout
(bench/results/assessment_probes_before.md; now bench/results/assessment_probes.md). The
other checks (PostgreSQL, storage, anything given as a plain function) are few and run in
threads beside the loop, up to the same deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import httpx
import psycopg

from tracktion_dr.core.errors import DrError

log = logging.getLogger(__name__)

Status = Literal["OPERATIONAL", "DEGRADED", "DOWN"]
Kind = Literal["service", "database", "storage", "external"]

# Time allowed beyond a probe's own timeout for thread start-up and bookkeeping.
DEADLINE_GRACE_SECONDS = 0.5
# Time given to abandoned HTTP requests to unwind (close their sockets) after the deadline.
UNWIND_SECONDS = 0.2
# HTTP probes per client of a batch. httpcore's pool scans all its connections whenever a
# request starts or ends: one pool of 1,000 connections spent 2.2 s of CPU (24 s with
# keep-alive) on 1,000 requests, past a 2 s timeout on a busy host; pools of 50 keep that
# bookkeeping linear in the batch.
PROBES_PER_CLIENT = 50
# Threads resolving host names for one batch (the event loop's DNS lookups block a thread).
MAX_RESOLVER_THREADS = 32

T = TypeVar("T")


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


@dataclass(frozen=True)
class HttpHealthCheck:
    """Healthy when ``GET url`` answers 2xx within the timeout.

    A check like any other (``check(timeout) -> detail``, raises ``ProbeFailure``), so it
    can be called on its own; ``run_probes`` recognises it and runs all of a batch's HTTP
    checks in one event loop on shared async clients, not a thread and a client each."""

    url: str

    def __call__(self, timeout: float) -> str:
        return _run_in_new_loop(self._alone(timeout))

    async def _alone(self, timeout: float) -> str:
        async with httpx.AsyncClient(follow_redirects=False) as client:
            try:
                async with asyncio.timeout(timeout):
                    return await self.fetch(client, timeout)
            except TimeoutError:
                raise ProbeFailure(_no_answer(timeout)) from None

    async def fetch(self, client: httpx.AsyncClient, timeout: float) -> str:
        """One GET on ``client``. httpx bounds each phase (connect, each read) by
        ``timeout``; the caller bounds the whole request (a body trickling in byte by byte
        never trips a per-read timeout)."""
        try:
            response = await client.get(self.url, timeout=timeout)
        except httpx.TimeoutException:
            raise ProbeFailure(_no_answer(timeout)) from None
        except httpx.HTTPError as exc:
            raise ProbeFailure(_describe_http_error(exc)) from None
        if not response.is_success:
            raise ProbeFailure(f"HTTP {response.status_code}: {response.text.strip()[:160]}")
        return f"HTTP {response.status_code}"


def http_health(url: str) -> HttpHealthCheck:
    """Healthy when ``GET url`` answers 2xx within the timeout."""
    return HttpHealthCheck(url)


def _no_answer(timeout: float) -> str:
    return f"no answer within {timeout:g}s"


def _describe_http_error(exc: httpx.HTTPError) -> str:
    """The cause an operator can act on, found anywhere in the exception's chain (the async
    transport wraps the socket error in "All connection attempts failed")."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, ConnectionResetError):
            return "connection reset by the server"
        if isinstance(seen, socket.gaierror):
            return f"host name does not resolve: {seen.strerror or seen}"[:160]
        seen = seen.__cause__ or seen.__context__
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


def _result(
    target: ProbeTarget, status: Status, detail: str, since: float, checked_at: str
) -> ProbeResult:
    return ProbeResult(
        name=target.name,
        kind=target.kind,
        status=status,
        detail=detail,
        elapsed_seconds=round(time.monotonic() - since, 3),
        checked_at=checked_at,
    )


def _failure_detail(exc: Exception) -> str:
    if isinstance(exc, ProbeFailure):
        return str(exc)
    # A probe must report, never crash the assessment.
    return f"probe error: {type(exc).__name__}: {exc}"[:200]


def _run_one(target: ProbeTarget) -> ProbeResult:
    started = time.monotonic()
    checked_at = datetime.now(UTC).isoformat()
    try:
        return _result(target, "OPERATIONAL", target.check(target.timeout), started, checked_at)
    except Exception as exc:
        return _result(
            target, target.status_when_failing, _failure_detail(exc), started, checked_at
        )


async def _probe_http(
    client: httpx.AsyncClient, target: ProbeTarget, started: float, checked_at: str
) -> ProbeResult:
    check = cast(HttpHealthCheck, target.check)  # only HTTP checks are batched here
    # The deadline counts from the batch's start, not from when this coroutine first runs:
    # a busy loop must not lengthen the batch.
    deadline = asyncio.get_running_loop().time() + started + target.timeout - time.monotonic()
    try:
        async with asyncio.timeout_at(deadline):
            detail = await check.fetch(client, target.timeout)
        return _result(target, "OPERATIONAL", detail, started, checked_at)
    except TimeoutError:
        return _result(
            target, target.status_when_failing, _no_answer(target.timeout), started, checked_at
        )
    except Exception as exc:
        return _result(
            target, target.status_when_failing, _failure_detail(exc), started, checked_at
        )


async def _probe_http_batch(
    targets: dict[int, ProbeTarget], started: float, batch_deadline: float, checked_at: str
) -> dict[int, ProbeResult]:
    """Every HTTP probe of the batch in one event loop; those unfinished at the batch
    deadline are left out (the caller reports them as not answering)."""
    # One TLS context for the batch: building one (loading the CA bundle) is what made a
    # client per probe expensive.
    tls = httpx.create_ssl_context()
    items = list(targets.items())
    async with contextlib.AsyncExitStack() as clients:
        tasks: dict[int, asyncio.Task[ProbeResult]] = {}
        for first in range(0, len(items), PROBES_PER_CLIENT):
            share = items[first : first + PROBES_PER_CLIENT]
            client = await clients.enter_async_context(
                httpx.AsyncClient(
                    verify=tls,
                    follow_redirects=False,
                    # A connection per probe (a hung endpoint never makes another wait for
                    # the pool), closed after its one answer (no idle ones to sweep).
                    limits=httpx.Limits(max_connections=len(share), max_keepalive_connections=0),
                )
            )
            for index, target in share:
                tasks[index] = asyncio.create_task(_probe_http(client, target, started, checked_at))
        done, pending = await asyncio.wait(
            tasks.values(), timeout=max(0.0, batch_deadline - time.monotonic())
        )
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=UNWIND_SECONDS)
        return {index: task.result() for index, task in tasks.items() if task in done}


def _run_in_new_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` in an event loop of its own, from synchronous code.

    Not ``asyncio.run``: on the way out it waits for the loop's resolver threads, so one
    hung DNS lookup would hold the batch for minutes. Here they are abandoned (they end on
    their own). From a thread that already runs a loop, a helper thread runs it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dr-probe-loop") as helper:
            return helper.submit(_run_in_new_loop, coroutine).result()
    loop = asyncio.new_event_loop()
    loop.set_default_executor(
        ThreadPoolExecutor(max_workers=MAX_RESOLVER_THREADS, thread_name_prefix="dr-probe-dns")
    )
    try:
        return loop.run_until_complete(coroutine)
    finally:
        try:
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.wait(leftovers, timeout=UNWIND_SECONDS))
        finally:
            loop.close()  # shuts the resolver threads down without waiting for them


def run_probes(targets: Iterable[ProbeTarget]) -> list[ProbeResult]:
    """Run every probe at once; return one result per target, in the targets' order.

    The batch ends at its deadline, the largest single timeout plus a small grace, however
    many targets it holds. A probe unfinished by then is reported as not answering: an HTTP
    request is cancelled, a thread is abandoned (it ends on its own timeout).
    """
    targets = list(targets)
    if not targets:
        return []
    started = time.monotonic()
    checked_at = datetime.now(UTC).isoformat()
    deadline = started + max(t.timeout for t in targets) + DEADLINE_GRACE_SECONDS
    http = {i: t for i, t in enumerate(targets) if isinstance(t.check, HttpHealthCheck)}
    threaded = {i: t for i, t in enumerate(targets) if i not in http}
    executor = ThreadPoolExecutor(max_workers=max(1, len(threaded)), thread_name_prefix="dr-probe")
    futures: dict[int, Future[ProbeResult]] = {
        i: executor.submit(_run_one, t) for i, t in threaded.items()
    }
    try:
        results: dict[int, ProbeResult] = {}
        if http:
            results.update(_run_in_new_loop(_probe_http_batch(http, started, deadline, checked_at)))
        wait_for(futures.values(), timeout=max(0.0, deadline - time.monotonic()))
        results.update({i: f.result() for i, f in futures.items() if f.done()})
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
    silent = [t for i, t in enumerate(targets) if i not in results]
    if silent:
        names = ", ".join(t.name for t in silent[:10]) + (" ..." if len(silent) > 10 else "")
        log.warning("%d of %d probes did not answer in time: %s", len(silent), len(targets), names)
    return [
        results.get(i)
        or _result(t, t.status_when_failing, _no_answer(t.timeout), started, checked_at)
        for i, t in enumerate(targets)
    ]


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
