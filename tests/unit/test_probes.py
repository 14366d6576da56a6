"""Probes against real loopback endpoints: a healthy one, a failing one, one that accepts
connections and never answers, and a closed port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tracktion_dr.services.probes import (
    ProbeTarget,
    http_health,
    overall_status,
    render_table,
    run_probes,
    storage_writable,
)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        code = 200 if self.path == "/health" else 503
        body = b'{"status":"healthy"}' if code == 200 else b'{"status":"unhealthy","reason":"db"}'
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture()
def hanging_endpoint() -> Iterator[str]:
    """Accepts TCP connections (the kernel completes the handshake) and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/health"
    listener.close()


@pytest.fixture()
def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_statuses_and_details(http_server, hanging_endpoint, closed_port, tmp_path):
    results = run_probes(
        [
            ProbeTarget("healthy", "service", http_health(f"{http_server}/health"), 2),
            ProbeTarget("failing", "service", http_health(f"{http_server}/broken"), 2),
            ProbeTarget("hung", "service", http_health(hanging_endpoint), 1),
            ProbeTarget("refused", "service", http_health(f"http://127.0.0.1:{closed_port}/"), 2),
            ProbeTarget("external", "external", http_health(hanging_endpoint), 1, "DEGRADED"),
            ProbeTarget("disk", "storage", storage_writable(tmp_path), 2),
            ProbeTarget("missing-disk", "storage", storage_writable(tmp_path / "nope"), 2),
        ]
    )
    by_name = {r.name: r for r in results}
    assert [r.name for r in results] == list(by_name), "results keep the targets' order"
    assert by_name["healthy"].status == "OPERATIONAL"
    assert by_name["failing"].status == "DOWN"
    assert "HTTP 503" in by_name["failing"].detail and "db" in by_name["failing"].detail
    assert by_name["hung"].status == "DOWN"
    assert by_name["hung"].detail == "no answer within 1s"
    assert by_name["refused"].detail == "connection refused"
    assert by_name["external"].status == "DEGRADED"
    assert by_name["disk"].status == "OPERATIONAL" and "writable" in by_name["disk"].detail
    assert by_name["missing-disk"].status == "DOWN"
    assert list(tmp_path.iterdir()) == [], "the writability probe cleans up after itself"
    assert overall_status(results) == "DOWN"
    table = render_table(results)
    assert "❌ DOWN" in table and "✅ OPERATIONAL" in table and "⚠️  DEGRADED" in table


def test_hung_endpoints_are_probed_concurrently(hanging_endpoint):
    """Five endpoints that never answer, 2 s timeout each: probed one after the other they
    would take 10 s. Concurrent probing takes about one timeout. The bound below is loose on
    purpose (this checks concurrency, not speed; bench/ measures speed)."""
    timeout, count = 2.0, 5
    started = time.monotonic()
    results = run_probes(
        [
            ProbeTarget(f"hung-{i}", "service", http_health(hanging_endpoint), timeout)
            for i in range(count)
        ]
    )
    elapsed = time.monotonic() - started
    assert all(r.status == "DOWN" for r in results)
    assert elapsed < timeout * count / 2, f"took {elapsed:.1f}s: probes ran one after another"


def test_a_crashing_check_is_reported_not_raised():
    def explode(timeout: float) -> str:
        raise RuntimeError("boom")

    (result,) = run_probes([ProbeTarget("weird", "service", explode, 1)])
    assert result.status == "DOWN"
    assert "RuntimeError: boom" in result.detail


def test_no_targets():
    assert run_probes([]) == []
    assert overall_status([]) == "OPERATIONAL"
