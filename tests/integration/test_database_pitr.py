"""dr_database_pitr against the live sandbox, for real.

When a table is dropped at T while the canary writes, then PITR to T-1s brings the table
back with every row written before the target and none after, and the data lost is
measured from the canary. When the primary is killed and its data directory lost, PITR to
latest brings it back and the replica is re-seeded. Bad targets are refused in the guard
with the window in the message and the database unchanged.
"""

from __future__ import annotations

import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states
from tracktion_dr.airflow.support import endpoint
from tracktion_dr.backups.catalog import Catalog
from tracktion_dr.core.plan import load_plan
from tracktion_dr.postgres.commands import as_os_user, run
from tracktion_dr.postgres.wal import Segment, list_segments
from tracktion_dr.scenarios.database import segment_archived

pytestmark = pytest.mark.sandbox


def primary(dbname: str = "tracktion"):
    return psycopg.connect(
        endpoint("tracktion_pg_primary").conninfo(dbname), connect_timeout=5, autocommit=True
    )


def switch_wal() -> None:
    with primary("postgres") as conn:
        segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        for _ in range(100):
            if segment_archived(conn, segment):
                return
            time.sleep(0.3)
    raise AssertionError(f"{segment} not archived")


def wait_for_replica_streaming(timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with primary("postgres") as conn:
            rows = conn.execute("SELECT state FROM pg_stat_replication").fetchall()
        if ("streaming",) in rows:
            return
        time.sleep(1)
    raise AssertionError("the replica is not streaming from the recovered primary")


def probe_table() -> sql.Identifier:
    """A table of this test's own: the sandbox outlives test sessions."""
    return sql.Identifier(f"pitr_probe_{uuid.uuid4().hex[:10]}")


def test_drop_table_then_pitr_to_just_before(sandbox):
    probe = probe_table()
    with primary() as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(probe))
        conn.execute(sql.SQL("INSERT INTO {} (id) VALUES (1)").format(probe))
        tracklists = conn.execute("SELECT count(*) FROM tracklists").fetchone()[0]
        time.sleep(1.5)
        target = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        time.sleep(1.5)
        conn.execute(
            sql.SQL("INSERT INTO {} (id) VALUES (2)").format(probe)
        )  # after the target: must be lost
        incident = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        conn.execute("DROP TABLE tracklists")  # the incident
    switch_wal()

    dag_run = run_dag(
        "dr_database_pitr",
        {
            "environment": "drill",
            "cluster": "main",
            "target_type": "time",
            "target": target.isoformat(),
            "incident_started_at": incident.isoformat(),
        },
    )
    states = task_states(dag_run)
    assert states["verdict"] == "success", states

    with primary() as conn:
        assert conn.execute("SELECT count(*) FROM tracklists").fetchone()[0] == tracklists
        assert [
            r[0] for r in conn.execute(sql.SQL("SELECT id FROM {} ORDER BY id").format(probe))
        ] == [1]
        newest_before = conn.execute(
            "SELECT max(written_at) FROM dr_canary.heartbeat WHERE written_at <= %s", (incident,)
        ).fetchone()[0]
    assert newest_before <= target, "nothing written after the target survived"
    assert target - newest_before < timedelta(seconds=3), "everything before the target survived"
    timeline = task_result(dag_run, "record")
    assert timeline["outcome"] == "succeeded"
    assert timeline["data_loss_seconds"] == pytest.approx(
        (incident - newest_before).total_seconds(), abs=0.01
    )
    assert timeline["rto_achieved_seconds"] < timeline["rto_target_seconds"]
    wait_for_replica_streaming()


def test_primary_killed_and_data_directory_lost(sandbox):
    layout = sandbox.layout
    probe = probe_table()
    with primary() as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(probe))
        conn.execute(sql.SQL("INSERT INTO {} (id) VALUES (10)").format(probe))
    switch_wal()
    run(
        as_os_user(
            [
                "/usr/lib/postgresql/15/bin/pg_ctl",
                "-D",
                str(layout.primary_data),
                "stop",
                "-m",
                "immediate",
            ],
            "postgres",
        ),
        what="kill the primary",
    )
    lost = layout.primary_data.with_name("primary.lost-in-test")
    layout.primary_data.rename(lost)  # the disk is gone (kept here only to free the name)
    incident = datetime.now(UTC)
    try:
        dag_run = run_dag(
            "dr_database_pitr",
            {
                "environment": "drill",
                "cluster": "main",
                "target_type": "latest",
                "incident_started_at": incident.isoformat(),
            },
        )
        states = task_states(dag_run)
        assert states["verdict"] == "success", states
        with primary() as conn:
            assert conn.execute(
                sql.SQL("SELECT 1 FROM {} WHERE id = 10").format(probe)
            ).fetchone() == (1,)
        timeline = task_result(dag_run, "record")
        assert timeline["data_loss_seconds"] is not None
        assert task_states(dag_run)["gate_services_healthy"] == "success"
        wait_for_replica_streaming()
    finally:
        shutil.rmtree(lost, ignore_errors=True)


@pytest.mark.parametrize(
    ("target_type", "target", "message"),
    [
        ("time", "2099-01-01T00:00:00Z", "2099-01-01T00:00:00Z is in the future"),
        (
            "time",
            "2001-01-01T00:00:00Z",
            "before the oldest usable base backup ended; recoverable window is",
        ),
        ("time", "yesterday at noon", "not an ISO 8601 time"),
        ("time", "2026-11-26T03:00:00", "has no time zone"),
        ("lsn", "not-an-lsn", "not an LSN"),
    ],
)
def test_bad_targets_are_refused_with_the_window(sandbox, target_type, target, message, capfd):
    before = _business_fingerprint()
    dag_run = run_dag(
        "dr_database_pitr",
        {"environment": "drill", "cluster": "main", "target_type": target_type, "target": target},
    )
    states = task_states(dag_run)
    assert states["guard"] == "failed" and states["prepare_data_directory"] == "upstream_failed"
    assert message in capfd.readouterr().out
    assert _business_fingerprint() == before


def test_missing_wal_segment_is_refused_naming_it(sandbox, capfd):
    archive = sandbox.layout.wal_archive
    for _ in range(3):  # make sure segments exist after the newest base backup's start
        switch_wal()
    newest = Catalog(load_plan().environment("drill").backups).base_backups()[0]
    start = Segment.from_lsn(newest.start_lsn).number
    segments = list_segments(archive)
    needed = [n for n in sorted(segments) if start < n < max(segments)]
    victim = segments[needed[len(needed) // 2]]  # a segment every usable base backup needs
    hidden = victim.with_name(f".{victim.name}.hidden-by-test")
    victim.rename(hidden)
    try:
        dag_run = run_dag(
            "dr_database_pitr", {"environment": "drill", "cluster": "main", "target_type": "latest"}
        )
        assert task_states(dag_run)["guard"] == "failed"
        assert f"missing {victim.name}" in capfd.readouterr().out
    finally:
        hidden.rename(victim)


def test_production_needs_the_typed_confirmation(sandbox, capfd):
    dag_run = run_dag(
        "dr_database_pitr",
        {"environment": "production", "cluster": "main", "target_type": "latest"},
    )
    assert task_states(dag_run)["guard"] == "failed"
    assert "needs the typed confirmation 'RESTORE main'" in capfd.readouterr().out


def _business_fingerprint() -> tuple:
    with primary() as conn:
        return tuple(
            conn.execute(f"SELECT count(*), coalesce(max(id), 0) FROM {table}").fetchone()
            for table in ("audio_files", "analysis_results", "tracklists")
        )
