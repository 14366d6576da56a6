"""Probes against a real HTTP server in another process (tests/harness/http_endpoints.py):
healthy endpoints, failing ones, ones that accept the request and never answer, one that
trickles its body forever, one that hangs up, and a closed port; plus checks that run in
threads.

No wall-clock asserts (bench/bench_assessment_probes.py measures time): that the batch
ends at its deadline is shown by results that could not exist otherwise (a blocked check
reported as not answering while it is still blocked; the server's count of requests that
waited at once)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tracktion_dr.services.probes import (
    ProbeFailure,
    ProbeTarget,
    http_health,
    overall_status,
    render_table,
    run_probes,
    storage_writable,
)

SERVER = Path(__file__).resolve().parents[1] / "harness" / "http_endpoints.py"


@pytest.fixture(scope="module")
def endpoints() -> Iterator[str]:
    """Base URL of the endpoint server, started in its own process on a free port."""
    server = subprocess.Popen([sys.executable, str(SERVER)], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    port = server.stdout.readline().strip()
    assert port.isdigit(), f"the endpoint server did not start: {port!r}"
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(10)


@pytest.fixture()
def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


@pytest.fixture()
def blocked_check() -> Iterator[object]:
    """A check that blocks its thread until the test ends (at most 60 s), then answers:
    reported as not answering only if the batch ended without waiting for it."""
    release = threading.Event()

    def check(timeout: float) -> str:
        release.wait(60)
        return "answered after the batch"

    yield check
    release.set()


def hanging_peak(base_url: str, group: str) -> int:
    return httpx.get(f"{base_url}/stats/{group}", timeout=5).json()["hanging_peak"]


def test_a_mixed_batch_gets_one_right_result_per_target_in_order(
    endpoints, closed_port, blocked_check, tmp_path
):
    def crashes(timeout: float) -> str:
        raise RuntimeError("boom")

    group = uuid.uuid4().hex
    targets = [
        ProbeTarget("healthy-1", "service", http_health(f"{endpoints}/health/1"), 1),
        ProbeTarget("hung-1", "service", http_health(f"{endpoints}/hang/{group}/1"), 1),
        ProbeTarget("disk", "storage", storage_writable(tmp_path), 1),
        ProbeTarget("error-500", "service", http_health(f"{endpoints}/status/500"), 1),
        ProbeTarget("healthy-2", "service", http_health(f"{endpoints}/health/2"), 1),
        ProbeTarget("blocked-thread", "database", blocked_check, 1),
        ProbeTarget("refused", "service", http_health(f"http://127.0.0.1:{closed_port}/"), 1),
        ProbeTarget("hung-2", "service", http_health(f"{endpoints}/hang/{group}/2"), 1),
        ProbeTarget("dripping", "service", http_health(f"{endpoints}/drip/1"), 1),
        ProbeTarget("crashing", "service", crashes, 1),
        ProbeTarget("closes", "service", http_health(f"{endpoints}/close/1"), 1),
        ProbeTarget("not-http", "external", http_health("ftp://127.0.0.1/health"), 1),
        ProbeTarget("missing-disk", "storage", storage_writable(tmp_path / "nope"), 1),
        ProbeTarget("healthy-3", "service", http_health(f"{endpoints}/health/3"), 1),
    ]
    results = run_probes(targets)
    assert [r.name for r in results] == [t.name for t in targets], "one each, in input order"
    by_name = {r.name: r for r in results}

    for name in ("healthy-1", "healthy-2", "healthy-3"):
        assert (by_name[name].status, by_name[name].detail) == ("OPERATIONAL", "HTTP 200")
    for name in ("hung-1", "hung-2", "dripping", "blocked-thread"):
        assert (by_name[name].status, by_name[name].detail) == ("DOWN", "no answer within 1s")
    assert by_name["error-500"].status == "DOWN"
    assert by_name["error-500"].detail.startswith("HTTP 500: ")
    assert json.loads(by_name["error-500"].detail.removeprefix("HTTP 500: "))["code"] == 500
    assert (by_name["refused"].status, by_name["refused"].detail) == (
        "DOWN",
        "connection refused",
    )
    assert by_name["closes"].status == "DOWN"
    assert by_name["closes"].detail == "the server closed the connection without answering"
    assert by_name["not-http"].status == "DOWN"
    assert by_name["not-http"].detail == "not an http(s) URL: ftp://127.0.0.1/health"
    assert by_name["crashing"].status == "DOWN"
    assert by_name["crashing"].detail == "probe error: RuntimeError: boom"
    assert by_name["disk"].status == "OPERATIONAL" and "writable" in by_name["disk"].detail
    assert by_name["missing-disk"].status == "DOWN"
    assert list(tmp_path.iterdir()) == [], "the writability probe cleans up after itself"
    assert overall_status(results) == "DOWN"


def test_every_hung_endpoint_is_waited_on_at_once(endpoints):
    """Sixty endpoints that never answer: the server saw all sixty requests waiting at the
    same moment (probed one after another, it would have seen one at a time)."""
    group = uuid.uuid4().hex
    count = 60
    targets = [
        ProbeTarget(f"hung-{i}", "service", http_health(f"{endpoints}/hang/{group}/{i}"), 1)
        for i in range(count)
    ]
    results = run_probes(targets)
    assert [(r.name, r.status, r.detail) for r in results] == [
        (t.name, "DOWN", "no answer within 1s") for t in targets
    ]
    assert hanging_peak(endpoints, group) == count


def test_a_large_batch_with_a_tenth_hung(endpoints):
    """Three hundred endpoints (more than one client's share), every tenth hung: every
    healthy one is UP and every hung one DOWN, each in its place. The timeout is generous:
    this checks what is reported where, not how fast (bench/bench_assessment_probes.py
    measures that); on a loaded CI machine a 2 s one once let a healthy endpoint's first
    answer miss it."""
    group = uuid.uuid4().hex
    targets = []
    for i in range(300):
        path = f"/hang/{group}/{i}" if i % 10 == 9 else f"/health/{i}"
        targets.append(ProbeTarget(f"endpoint-{i}", "service", http_health(endpoints + path), 6))
    results = run_probes(targets)
    assert [r.name for r in results] == [t.name for t in targets]
    for i, result in enumerate(results):
        expected = ("DOWN", "no answer within 6s") if i % 10 == 9 else ("OPERATIONAL", "HTTP 200")
        assert (result.status, result.detail) == expected, result.name
    assert hanging_peak(endpoints, group) == 30


def test_failing_status_follows_the_target(endpoints):
    """An external dependency that does not answer degrades, it does not take us down."""
    group = uuid.uuid4().hex
    results = run_probes(
        [
            ProbeTarget("svc", "service", http_health(f"{endpoints}/status/503"), 1),
            ProbeTarget(
                "external:cdn",
                "external",
                http_health(f"{endpoints}/hang/{group}/1"),
                1,
                "DEGRADED",
            ),
        ]
    )
    assert [r.status for r in results] == ["DOWN", "DEGRADED"]
    assert results[0].detail.startswith("HTTP 503: ")
    assert overall_status(results[1:]) == "DEGRADED"
    table = render_table(results)
    assert "❌ DOWN" in table and "⚠️  DEGRADED" in table


def test_an_http_check_called_on_its_own(endpoints, closed_port):
    """Callers outside a batch (third-party probes, service checks) call the check itself;
    the whole request is bounded, even a body that trickles in forever."""
    assert http_health(f"{endpoints}/health/alone")(1) == "HTTP 200"
    with pytest.raises(ProbeFailure, match=r"^no answer within 1s$"):
        http_health(f"{endpoints}/hang/{uuid.uuid4().hex}/alone")(1)
    with pytest.raises(ProbeFailure, match=r"^no answer within 1s$"):
        http_health(f"{endpoints}/drip/alone")(1)
    with pytest.raises(ProbeFailure, match=r"^connection refused$"):
        http_health(f"http://127.0.0.1:{closed_port}/")(1)
    with pytest.raises(ProbeFailure, match=r"^HTTP 500: "):
        http_health(f"{endpoints}/status/500")(1)


def test_the_proxy_settings_of_the_environment_apply(endpoints, closed_port, monkeypatch):
    """HTTP_PROXY is honoured (here a proxy that refuses), and NO_PROXY exempts a host."""
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port}")
    through_proxy = ProbeTarget("via-proxy", "service", http_health(f"{endpoints}/health/p"), 1)
    assert run_probes([through_proxy])[0].detail == "connection refused"
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert run_probes([through_proxy])[0].detail == "HTTP 200"


def test_probes_called_from_inside_an_event_loop(endpoints):
    """A caller that is itself async (a trigger, a FastAPI handler) can still call them."""

    async def caller() -> tuple[str, list[str]]:
        alone = http_health(f"{endpoints}/health/in-loop")(1)
        batch = run_probes(
            [ProbeTarget("in-loop", "service", http_health(f"{endpoints}/health/batch"), 1)]
        )
        return alone, [r.detail for r in batch]

    assert asyncio.run(caller()) == ("HTTP 200", ["HTTP 200"])


def test_no_targets():
    assert run_probes([]) == []
    assert overall_status([]) == "OPERATIONAL"


def test_a_health_only_probe_of_services_leaves_out_their_functional_checks(
    endpoints, tmp_path, monkeypatch
):
    """The failover gate runs on the triggerer, away from the application host where a
    functional check's sample file is: it probes the health endpoints only. A service
    probe with its functional check still needs the sample."""
    from tracktion_dr.core.plan import load_plan
    from tracktion_dr.services.recovery import probe_services

    monkeypatch.setenv("DR_SANDBOX_HOME", str(tmp_path))  # no sample file there
    root = Path(__file__).resolve().parents[2]
    environment = load_plan(root / "include" / "config" / "sandbox.yaml").environment("drill")
    service = environment.services["analysis-service"]
    assert service.functional_check is not None and service.functional_check.sample_file
    answering = service.model_copy(update={"health_url": f"{endpoints}/health/analysis"})
    environment = environment.model_copy(
        update={"services": {**environment.services, "analysis-service": answering}}
    )

    full = probe_services(environment, ["analysis-service"])["analysis-service"]
    assert not full["healthy"] and "sample" in full["detail"] and "missing" in full["detail"]
    health = probe_services(environment, ["analysis-service"], functional=False)
    assert health["analysis-service"]["healthy"], health
