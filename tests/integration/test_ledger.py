"""The ledger on the sandbox's ops cluster: written, read back, idempotent per run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from psycopg.conninfo import make_conninfo

from tracktion_dr.core.timeline import Event, Timeline
from tracktion_dr.evidence import ledger
from tracktion_sandbox import layout as L

pytestmark = pytest.mark.sandbox


def test_record_twice_keeps_one_row_with_the_latest_events(sandbox):
    conninfo = make_conninfo(
        host=L.HOST,
        port=L.OPS_PORT,
        user=L.SUPERUSER,
        password=sandbox.secrets.postgres_password,
        dbname=L.LEDGER_DATABASE,
    )
    start = datetime.now(UTC).replace(microsecond=0)
    run_id = f"test-{start.timestamp():.0f}"
    timeline = Timeline(
        "DR-20261126-030000", "dr_test_ledger", run_id, "drill", start.isoformat(), 1800, 900
    )
    timeline.events = [
        Event(
            "restore",
            "step",
            start.isoformat(),
            (start + timedelta(seconds=40)).isoformat(),
            "succeeded",
        ),
        Event(
            "gate_db",
            "gate",
            (start + timedelta(seconds=40)).isoformat(),
            (start + timedelta(seconds=55)).isoformat(),
            "succeeded",
        ),
    ]
    timeline.data_loss_seconds = 2.5
    first = ledger.record_run(conninfo, timeline)
    timeline.events = timeline.events[:1]
    timeline.outcome = "failed"
    second = ledger.record_run(conninfo, timeline)
    assert first == second

    rows = [
        r for r in ledger.recent_runs(conninfo, dag_id="dr_test_ledger") if r["run_id"] == run_id
    ]
    assert len(rows) == 1
    assert rows[0]["outcome"] == "failed" and rows[0]["data_loss_seconds"] == 2.5
    assert rows[0]["rto_achieved_seconds"] is None  # the only gate was dropped on re-record
    assert [e["name"] for e in ledger.run_events(conninfo, first)] == ["restore"]
