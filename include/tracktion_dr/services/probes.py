"""Concurrent, time-bounded health probes.

The seed's assessment curls each service in turn with no timeout, so one hung endpoint
stalls the whole assessment during the incident's most expensive minutes. Here a batch of
probes runs at once and ends at its deadline (the slowest probe's timeout plus a small
grace), not after the sum: a probe that has not answered by then is reported DOWN with
"no answer within Ns" while the others are already done.

HTTP probes (``http_health``) share one client session per batch (aiohttp, Airflow's own
async HTTP client: the http and slack providers require it), one connection per endpoint,
in one event loop, each request bounded as a whole by its probe's timeout. The loop has a
thread of its own and the calling thread keeps the batch deadline, so a loop slowed by a
starved CPU cannot lengthen the batch. The other checks (PostgreSQL, storage, anything
given as a plain function) are few and run in threads beside it, up to the same deadline.

Why not a thread and a client per probe (the first version): 200 threads building 200
clients (a TLS context each) starved the thread that should end the batch, and 200
endpoints took 5-16 s for a 2 s timeout (bench/results/assessment_probes_before.md). Why
not httpx's AsyncClient: for 1,000 endpoints it spent two to four times the CPU (1.1-2.1 s
against 0.5-0.6 s here, measured side by side), and on a busy 2-core host that is past a
2 s timeout: healthy endpoints were reported as not answering. This version's numbers:
bench/results/assessment_probes.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import httpx
import psycopg

from tracktion_dr.core.errors import DrError

if TYPE_CHECKING:  # imported where used: DAG files import this module at parse time
    import aiohttp

log = logging.getLogger(__name__)

Status = Literal["OPERATIONAL", "DEGRADED", "DOWN"]
Kind = Literal["service", "database", "storage", "external"]

# Time allowed beyond a probe's own timeout for thread start-up and bookkeeping.
DEADLINE_GRACE_SECONDS = 0.5
# Time given to abandoned HTTP requests to unwind (close their sockets) after the deadline.
UNWIND_SECONDS = 0.2
# Requests started before the loop turns to the answers already in: started all at once,
# 1,000 requests are all connected before the first answer is read (about 0.7 s here), and
# on a starved CPU none is read before the timeout. In turns, the early ones end early.
STARTS_PER_LOOP_TURN = 50
# Threads resolving host names for one batch (the event loop's DNS lookups block a thread).
MAX_RESOLVER_THREADS = 32


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
    checks in one event loop on one client session, not a thread and a client each."""

    url: str

    def __call__(self, timeout: float) -> str:
        started = time.monotonic()
        alone = ProbeTarget(self.url, "service", self, timeout)
        deadline = started + timeout + DEADLINE_GRACE_SECONDS
        result = _run_http_probes({0: alone}, started, deadline, "").get(0)
        if result is None:
            raise ProbeFailure(_no_answer(timeout))
        if not result.healthy:
            raise ProbeFailure(result.detail)
        return result.detail

    async def fetch(
        self, session: aiohttp.ClientSession, timeout: float, proxy: str | None = None
    ) -> str:
        """One GET on ``session``, its body read whole (a service that sends its headers
        and stalls has not answered). The caller bounds the whole request by the probe's
        deadline; ``total`` here is only a second belt."""
        import aiohttp

        try:
            async with session.get(
                self.url,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
                proxy=proxy,
            ) as response:
                body = await response.read()
        except TimeoutError:
            raise ProbeFailure(_no_answer(timeout)) from None
        except aiohttp.ClientError as exc:
            raise ProbeFailure(_describe_http_error(exc)) from None
        if not 200 <= response.status < 300:
            text = body.decode("utf-8", "replace").strip()[:160]
            raise ProbeFailure(f"HTTP {response.status}: {text}")
        return f"HTTP {response.status}"


def http_health(url: str) -> HttpHealthCheck:
    """Healthy when ``GET url`` answers 2xx within the timeout."""
    return HttpHealthCheck(url)


def _no_answer(timeout: float) -> str:
    return f"no answer within {timeout:g}s"


def _describe_http_error(exc: aiohttp.ClientError) -> str:
    """The cause an operator can act on, found anywhere in the exception's chain."""
    import aiohttp

    seen: BaseException | None = exc
    for _ in range(10):  # a chain is short; never loop on a cyclic one
        if seen is None:
            break
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, ConnectionResetError):
            return "connection reset by the server"
        if isinstance(seen, socket.gaierror):
            return f"host name does not resolve: {seen.strerror or seen}"[:160]
        if isinstance(seen, aiohttp.ClientConnectorError) and seen.os_error is not seen:
            seen = seen.os_error
            continue
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, aiohttp.NonHttpUrlClientError):
        return f"not an http(s) URL: {exc}"[:160]
    if isinstance(exc, aiohttp.InvalidUrlClientError):
        return f"invalid URL: {exc}"[:160]
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without answering"
    return (str(exc) or type(exc).__name__)[:160]


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
    session: aiohttp.ClientSession,
    target: ProbeTarget,
    proxy: str | None,
    started: float,
    checked_at: str,
) -> ProbeResult:
    check = cast(HttpHealthCheck, target.check)  # only HTTP checks are batched here
    # The deadline counts from the batch's start, not from when this coroutine first runs:
    # a busy loop must not lengthen the batch.
    deadline = asyncio.get_running_loop().time() + started + target.timeout - time.monotonic()
    try:
        async with asyncio.timeout_at(deadline):
            detail = await check.fetch(session, target.timeout, proxy)
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
    targets: dict[int, ProbeTarget],
    started: float,
    checked_at: str,
    results: dict[int, ProbeResult],
) -> None:
    """Every HTTP probe of the batch at once on one client session, each result put in
    ``results`` (index -> result) as it comes; returns when all have ended, each at its own
    deadline at the latest (the caller may cancel it earlier)."""
    import aiohttp

    items = list(targets.items())
    tasks: list[asyncio.Task[None]] = []

    proxies: dict[tuple[str, str], str | None] = {}

    async def probe_into_results(index: int, session: aiohttp.ClientSession, target):
        proxy = _proxy_from_environment(cast(HttpHealthCheck, target.check).url, proxies)
        results[index] = await _probe_http(session, target, proxy, started, checked_at)

    try:
        connector = aiohttp.TCPConnector(
            # A connection per probe, so a hung endpoint never makes another wait for one;
            # closed after its one answer.
            limit=len(items),
            force_close=True,
            # The trust store of the project's other HTTP calls (httpx: certifi, or
            # SSL_CERT_FILE / SSL_CERT_DIR), built once for the batch.
            ssl=httpx.create_ssl_context(),
        )
        # Not trust_env: it reads ~/.netrc (credentials a health probe must not send) and
        # the proxy settings in a thread for every request; the proxy is looked up once
        # per host instead (_proxy_from_environment).
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
            try:
                for count, (index, target) in enumerate(items, start=1):
                    tasks.append(asyncio.create_task(probe_into_results(index, session, target)))
                    if count % STARTS_PER_LOOP_TURN == 0:
                        await asyncio.sleep(0)
                await asyncio.wait(tasks)
            finally:  # cancelled at the batch deadline: let the requests close their sockets
                for task in tasks:
                    task.cancel()
                if tasks:
                    await asyncio.wait(tasks, timeout=UNWIND_SECONDS)
    except Exception as exc:  # no session could be built (TLS, proxy settings): say why
        for index, target in items:
            detail = _failure_detail(exc)
            failing = _result(target, target.status_when_failing, detail, started, checked_at)
            results.setdefault(index, failing)


def _proxy_from_environment(url: str, seen: dict[tuple[str, str], str | None]) -> str | None:
    """The proxy ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``NO_PROXY`` name for ``url``, as httpx
    and curl read them; looked up once per scheme and host of a batch (``seen``)."""
    parts = urllib.parse.urlsplit(url)
    key = (parts.scheme, parts.hostname or "")
    if key not in seen:
        proxies = urllib.request.getproxies_environment()
        proxy = proxies.get(parts.scheme)
        if proxy and urllib.request.proxy_bypass_environment(key[1], proxies):
            proxy = None
        seen[key] = proxy
    return seen[key]


def _run_http_probes(
    targets: dict[int, ProbeTarget], started: float, deadline: float, checked_at: str
) -> dict[int, ProbeResult]:
    """The results of the HTTP probes that ended by ``deadline`` (index -> result).

    The event loop runs in a thread of its own and this thread keeps the deadline: a loop
    busy with a thousand requests on a starved CPU notices its own timers late, a waiting
    thread does not. At the deadline the loop is told to stop and left to unwind alone."""
    results: dict[int, ProbeResult] = {}
    loop = asyncio.new_event_loop()
    batch = loop.create_task(_probe_http_batch(targets, started, checked_at, results))
    runner = threading.Thread(
        target=_run_until_done, args=(loop, batch), name="dr-probe-loop", daemon=True
    )
    runner.start()
    runner.join(timeout=max(0.0, deadline - time.monotonic()))
    if runner.is_alive():
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing to stop
            loop.call_soon_threadsafe(batch.cancel)
    return dict(results)  # a copy: a late answer must not change what was reported


def _run_until_done(loop: asyncio.AbstractEventLoop, batch: asyncio.Task[None]) -> None:
    asyncio.set_event_loop(loop)
    # The loop's DNS lookups block threads of its default executor; more than the
    # default few, so a slow resolver does not queue the whole batch behind it.
    loop.set_default_executor(
        ThreadPoolExecutor(max_workers=MAX_RESOLVER_THREADS, thread_name_prefix="dr-probe-dns")
    )
    try:
        loop.run_until_complete(batch)
    except asyncio.CancelledError:
        pass  # the batch deadline
    finally:
        # Not asyncio.run(): on the way out it waits for resolver threads, so a hung DNS
        # lookup would hold this thread for minutes. loop.close() does not wait for them.
        loop.close()


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
            results.update(_run_http_probes(http, started, deadline, checked_at))
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
