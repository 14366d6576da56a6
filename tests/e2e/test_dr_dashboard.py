"""The DR dashboard plugin page on a real Airflow api-server, rendered by headless Chromium.

Given a run in the ledger, when Chromium opens ``/dr-dashboard/`` on the api-server, then
the rendered page lists that run's DAG with its incident, outcome and RTO against target,
draws the trend chart, and the screenshot is a real picture (not a blank or error page).
The UI lists the page in its navigation (the plugin's external view).
"""

from __future__ import annotations

import shutil
import subprocess
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tracktion_dr import ledger
from tracktion_dr.timeline import Event, Timeline
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
    dom = chromium(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Tracktion DR dashboard" in dom.stdout
    assert recorded_drill in dom.stdout
    assert "dr_test_monthly" in dom.stdout
    assert "42s / 30m" in dom.stdout and "met" in dom.stdout
    assert "<svg" in dom.stdout and "RTO trend" in dom.stdout

    shot = tmp_path / "dashboard.png"
    result = chromium(tmp_path, "--window-size=1200,900", f"--screenshot={shot}", url)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    (width, height), distinct_rows = png_size_and_colours(shot)
    assert (width, height) == (1200, 900)
    assert distinct_rows > 50  # text, tables and a chart; a blank page has a handful
    keep = Path(__file__).resolve().parents[2] / ".sandbox" / "dashboard.png"
    keep.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, keep)  # for a person to look at after the run
