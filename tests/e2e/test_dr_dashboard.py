"""The DR dashboard plugin page on a real Airflow api-server, rendered by headless Chromium.

Given a run in the ledger, when Chromium, logged in to Airflow (the UI's session cookie,
set through the DevTools protocol), opens ``/dr-dashboard/`` on the api-server, then the
rendered page lists that run's DAG with its incident, outcome and RTO against target, draws
the trend chart, and the screenshot is a real picture (not a blank or error page). Without
a login the page and the report route answer 401. The UI lists the page in its navigation
(the plugin's external view).
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import socket
import subprocess
import time
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tracktion_dr.core.timeline import Event, Timeline
from tracktion_dr.evidence import ledger
from tracktion_sandbox import layout as L

pytestmark = pytest.mark.sandbox

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium")
    assert binary, "chromium is missing: make test installs it (scripts/ensure-chromium.sh)"
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


class DevTools:
    """Chromium's DevTools protocol over its websocket: commands by id, events collected."""

    def __init__(self, websocket):
        self.websocket = websocket
        self.ids = itertools.count(1)
        self.events: list[str] = []

    def __call__(self, method: str, **params) -> dict:
        command_id = next(self.ids)
        self.websocket.send(json.dumps({"id": command_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.websocket.recv(timeout=60))
            if message.get("id") == command_id:
                assert "error" not in message, message
                return message.get("result", {})
            self.events.append(message.get("method", ""))

    def wait_for(self, event: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while event not in self.events:
            assert time.monotonic() < deadline, f"no {event} within {timeout}s"
            message = json.loads(self.websocket.recv(timeout=deadline - time.monotonic()))
            self.events.append(message.get("method", ""))


def logged_in_page(tmp_path: Path, base_url: str, token: str, url: str) -> tuple[str, bytes]:
    """Open ``url`` in headless Chromium carrying Airflow's session cookie (``_token``, as
    the UI's login sets it); return the rendered DOM and a 1200x900 PNG screenshot."""
    binary = shutil.which("chromium")
    assert binary, "chromium is missing: make test installs it (scripts/ensure-chromium.sh)"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile-devtools'}",
            f"--remote-debugging-port={port}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=2).json()
                page = next(t for t in targets if t["type"] == "page")
                break
            except (httpx.HTTPError, StopIteration, ValueError):
                assert time.monotonic() < deadline, "Chromium's DevTools did not answer"
                time.sleep(0.5)
        with connect(page["webSocketDebuggerUrl"], max_size=None) as websocket:
            devtools = DevTools(websocket)
            devtools("Network.enable")
            devtools("Network.setCookie", name="_token", value=token, url=base_url)
            devtools(
                "Emulation.setDeviceMetricsOverride",
                width=1200,
                height=900,
                deviceScaleFactor=1,
                mobile=False,
            )
            devtools("Page.enable")
            devtools("Page.navigate", url=url)
            devtools.wait_for("Page.loadEventFired")
            dom = devtools("Runtime.evaluate", expression="document.documentElement.outerHTML")[
                "result"
            ]["value"]
            png = base64.b64decode(devtools("Page.captureScreenshot", format="png")["data"])
        return dom, png
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def png_size_and_colours(path: Path) -> tuple[tuple[int, int], int]:
    """Width/height and the number of distinct pixel rows (a blank page has one)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    chunks, position = b"", 8
    while position < len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        if kind == b"IDAT":
            chunks += data[position + 8 : position + 8 + length]
        position += 12 + length
    raw = zlib.decompress(chunks)
    stride = len(raw) // height
    return (width, height), len({raw[i * stride + 1 : (i + 1) * stride] for i in range(height)})


@pytest.fixture()
def recorded_drill(sandbox):
    conninfo = (
        f"host={L.HOST} port={L.OPS_PORT} user={L.SUPERUSER} dbname={L.LEDGER_DATABASE} "
        f"password={sandbox.secrets.postgres_password}"
    )
    start = datetime.now(UTC) - timedelta(minutes=3)
    incident = f"DR-{start:%Y%m%d-%H%M%S}"
    timeline = Timeline(
        incident_id=incident,
        dag_id="dr_test_monthly",
        run_id=f"dashboard_test__{start.isoformat()}",
        environment="drill",
        clock_started_at=start.isoformat(),
        rto_target_seconds=1800,
        rpo_target_seconds=900,
        events=[
            Event(
                "test_services",
                "gate",
                start.isoformat(),
                (start + timedelta(seconds=42)).isoformat(),
                "succeeded",
                "every service healthy again",
            )
        ],
        data_loss_seconds=7.5,
    )
    ledger.record_run(conninfo, timeline)
    return incident


def test_dashboard_renders_the_ledger_in_chromium(airflow, recorded_drill, tmp_path):
    plugins = airflow.api("GET", "/api/v2/plugins").json()
    views = [v for p in plugins["plugins"] for v in p.get("external_views", [])]
    assert any(v["name"] == "DR dashboard" and v["href"] == "/dr-dashboard/" for v in views)

    url = f"{airflow.base_url}/dr-dashboard/"
    # Not logged in: nothing of the ledger is shown, not even in Chromium.
    for path in ("/dr-dashboard/", "/dr-dashboard/report/dr_test_monthly/any"):
        assert httpx.get(f"{airflow.base_url}{path}", timeout=15).status_code == 401, path
    anonymous = chromium(tmp_path, "--dump-dom", url)
    assert anonymous.returncode == 0, anonymous.stderr[-2000:]
    assert recorded_drill not in anonymous.stdout and "Not authenticated" in anonymous.stdout

    dom, png = logged_in_page(tmp_path, airflow.base_url, airflow.token(), url)
    assert "Tracktion DR dashboard" in dom
    assert recorded_drill in dom
    assert "dr_test_monthly" in dom
    assert "42s / 30m" in dom and "met" in dom
    assert "<svg" in dom and "RTO trend" in dom

    shot = tmp_path / "dashboard.png"
    shot.write_bytes(png)
    (width, height), distinct_rows = png_size_and_colours(shot)
    assert (width, height) == (1200, 900)
    assert distinct_rows > 50  # text, tables and a chart; a blank page has a handful
    keep = Path(__file__).resolve().parents[2] / ".sandbox" / "dashboard.png"
    keep.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, keep)  # for a person to look at after the run
