"""dr_database_pitr against the live sandbox, for real.

When a table is dropped at T while the canary writes, then PITR to T-1s brings the table
back with every row written before the target and none after, and the data lost is
measured from the canary; a new incident asking for the same target again is refused
(AlreadyRecovered). When the primary is killed and its data directory lost, PITR to
latest brings it back - including rows only the standby still held (the archiver was
stopped) - and the replica is re-seeded. An LSN target is recovered from the base backup
before it even when a newer one exists; a restore point is found in the archived WAL.
Bad targets of every type are refused in the guard with the window in the message, the
primary untouched (not restarted, its WAL not even switched).
"""

from __future__ import annotations

import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from pitr_support import kill_primary, primary, switch_wal
from psycopg import sql

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states
from tracktion_dr.airflow.support import endpoint
from tracktion_dr.backups.catalog import Catalog, local_path
from tracktion_dr.core.plan import load_plan
from tracktion_dr.postgres.basebackups import take_base_backup
from tracktion_dr.postgres.salvage import salvage_dir_for
from tracktion_dr.postgres.wal import (
    Segment,
    archived_file,
    list_segments,
    segment_header_matches,
    segment_name_of,
)

pytestmark = pytest.mark.sandbox


def replica(dbname: str = "tracktion"):
    return psycopg.connect(
        endpoint("tracktion_pg_replica").conninfo(dbname), connect_timeout=5, autocommit=True
    )


def postmaster_started() -> datetime:
    with primary("postgres") as conn:
        return conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]


def pitr(conf: dict) -> object:
    return run_dag("dr_database_pitr", {"environment": "drill", "cluster": "main", **conf})


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


def test_drop_table_then_pitr_to_just_before(sandbox, capfd):
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

    # A new incident asking for the same target is told it is done, and nothing moves.
    started = postmaster_started()
    capfd.readouterr()
    again = pitr({"target_type": "time", "target": target.isoformat()})
    assert task_states(again)["guard"] == "failed"
    out = capfd.readouterr().out
    assert "already recovered cluster main to time" in out
    assert postmaster_started() == started


def test_primary_killed_and_data_directory_lost(sandbox):
    layout = sandbox.layout
    probe = probe_table()
    with primary() as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(probe))
        conn.execute(sql.SQL("INSERT INTO {} (id) VALUES (10)").format(probe))
    switch_wal()
    kill_primary(layout.primary_data)
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
        (
            "lsn",
            "FFFFFFFF/FFFFFFFF",
            "FFFFFFFF/FFFFFFFF is past the newest WAL held (archive, salvage folder, pg_wal); "
            "recoverable window is 0/",
        ),
        (
            "lsn",
            "0/10",
            "0/10 is before the consistent point of every usable base backup; "
            "recoverable window is 0/",
        ),
        (
            "restore_point",
            "no_such_point_anywhere",
            "'no_such_point_anywhere' is not in the WAL held",
        ),
        ("restore_point", "no_such_point_anywhere", "; recoverable window is 0/"),
    ],
)
def test_bad_targets_are_refused_with_the_window(sandbox, target_type, target, message, capfd):
    before = _business_fingerprint()
    started = postmaster_started()
    dag_run = pitr({"target_type": target_type, "target": target})
    states = task_states(dag_run)
    assert states["guard"] == "failed" and states["prepare_data_directory"] == "upstream_failed"
    out = capfd.readouterr().out
    assert message in out
    assert "salvaged: WAL up to" not in out, "the guard switched the WAL before refusing"
    assert _business_fingerprint() == before
    assert postmaster_started() == started


def test_lsn_target_uses_the_base_backup_before_it(sandbox):
    """Measured before: a newer base backup than the LSN was picked (by time), the server
    died "requested recovery stop point is before consistent recovery point" and the gate
    polled for ten minutes. The base backup is now chosen by its consistent point."""
    probe = probe_table()
    with primary() as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(probe))
        conn.execute(sql.SQL("INSERT INTO {} (id) VALUES (1)").format(probe))
        target = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        conn.execute(sql.SQL("INSERT INTO {} (id) VALUES (2)").format(probe))  # after the target
    switch_wal()
    environment = load_plan().environment("drill")
    newer = take_base_backup(
        endpoint("tracktion_pg_replication"),
        local_path(environment.backups.base),
        label_prefix="pitr-test-newer-than-target",
    )
    dag_run = pitr({"target_type": "lsn", "target": target})
    states = task_states(dag_run)
    assert states["verdict"] == "success", states
    used = task_result(dag_run, "guard")["base_backup"]
    assert used["id"] != newer.name
    with primary() as conn:
        assert [
            r[0] for r in conn.execute(sql.SQL("SELECT id FROM {} ORDER BY id").format(probe))
        ] == [1]
    wait_for_replica_streaming()


def test_restore_point_target(sandbox):
    probe = probe_table()
    name = f"before_{uuid.uuid4().hex[:8]}"
    with primary() as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(probe))
        conn.execute(sql.SQL("INSERT INTO {} (id) VALUES (1)").format(probe))
        conn.execute("SELECT pg_create_restore_point(%s)", (name,))
        conn.execute(sql.SQL("INSERT INTO {} (id) VALUES (2)").format(probe))
    switch_wal()
    dag_run = pitr({"target_type": "restore_point", "target": name})
    states = task_states(dag_run)
    assert states["verdict"] == "success", states
    assert task_result(dag_run, "guard")["target"]["lsn"]  # resolved from the archived WAL
    with primary() as conn:
        assert [
            r[0] for r in conn.execute(sql.SQL("SELECT id FROM {} ORDER BY id").format(probe))
        ] == [1]
    wait_for_replica_streaming()


def test_rows_only_the_standby_held_come_back(sandbox):
    """Measured before: after a loss of the primary, 120 rows committed in the last 20 s
    were "lost" although every one was on the streaming replica, and the recovery then
    moved the replica aside. Now its WAL is salvaged first and replayed."""
    layout = sandbox.layout
    probe = probe_table()
    with primary("postgres") as conn:  # the archiver stops archiving (segments pile up)
        conn.execute("ALTER SYSTEM SET archive_command = ''")
        conn.execute("SELECT pg_reload_conf()")
    lost = layout.primary_data.with_name("primary.lost-in-standby-test")
    try:
        with primary() as conn:
            conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(probe))
            for i in range(1, 121):  # one commit each, across unarchived segments
                conn.execute(sql.SQL("INSERT INTO {} (id) VALUES (%s)").format(probe), (i,))
                if i in (40, 80):
                    conn.execute("SELECT pg_switch_wal()")
            newest = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        assert archived_file(layout.wal_archive, newest) is None
        deadline = time.monotonic() + 60
        while True:  # every committed row has reached the standby
            with replica() as conn:
                try:
                    on_standby = conn.execute(
                        sql.SQL("SELECT count(*) FROM {}").format(probe)
                    ).fetchone()[0]
                except psycopg.errors.UndefinedTable:
                    on_standby = 0
            if on_standby == 120:
                break
            assert time.monotonic() < deadline, f"the standby has {on_standby} of 120 rows"
            time.sleep(0.5)
        kill_primary(layout.primary_data)
        layout.primary_data.rename(lost)  # the disk is gone, with the unarchived WAL
        dag_run = pitr(
            {"target_type": "latest", "incident_started_at": datetime.now(UTC).isoformat()}
        )
        states = task_states(dag_run)
        assert states["verdict"] == "success", states
        assert (salvage_dir_for(layout.wal_archive) / newest).exists()
        with primary() as conn:
            assert (
                conn.execute(sql.SQL("SELECT count(*) FROM {}").format(probe)).fetchone()[0] == 120
            )
        wait_for_replica_streaming()
    finally:
        if not lost.exists():  # failed before the loss: give the primary its archiver back
            with primary("postgres") as conn:
                conn.execute("ALTER SYSTEM RESET archive_command")
                conn.execute("SELECT pg_reload_conf()")
        shutil.rmtree(lost, ignore_errors=True)


def test_missing_wal_segment_is_refused_naming_it(sandbox, capfd):
    archive = sandbox.layout.wal_archive
    for _ in range(3):  # make sure segments exist after the newest base backup's start
        switch_wal()
    _checkpoint_everywhere()
    newest = Catalog(load_plan().environment("drill").backups).base_backups()[0]
    start = Segment.from_lsn(newest.start_lsn).number
    segments = list_segments(archive)
    # A segment every usable base backup needs that nobody else holds either: the guard
    # counts the WAL still in the primary's and the standby's pg_wal and the salvage folder.
    held = _held_elsewhere(sandbox.layout)
    needed = [n for n in sorted(segments) if start < n < max(segments) and n not in held]
    assert needed, "no archived segment that only the archive holds"
    victim = segments[needed[len(needed) // 2]]
    hidden = victim.with_name(f".{victim.name}.hidden-by-test")
    victim.rename(hidden)
    try:
        dag_run = pitr({"target_type": "latest"})
        assert task_states(dag_run)["guard"] == "failed"
        assert f"missing {segment_name_of(victim)}" in capfd.readouterr().out
    finally:
        hidden.rename(victim)


def _checkpoint_everywhere() -> None:
    """Checkpoint the primary and then the standby (a restartpoint), so WAL the archive
    already has leaves their pg_wal."""
    with primary("postgres") as conn:
        conn.execute("CHECKPOINT")
        lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    deadline = time.monotonic() + 30
    with replica("postgres") as conn:
        while conn.execute("SELECT pg_last_wal_replay_lsn() < %s", (lsn,)).fetchone()[0]:
            assert time.monotonic() < deadline, "the standby does not replay"
            time.sleep(0.3)
        conn.execute("CHECKPOINT")


def _held_elsewhere(layout) -> set[int]:
    held = set()
    for folder in (
        layout.primary_data / "pg_wal",
        layout.replica_data / "pg_wal",
        salvage_dir_for(layout.wal_archive),
    ):
        for path in folder.iterdir() if folder.is_dir() else []:
            try:
                segment = Segment.parse(path.name)
            except ValueError:
                continue
            if segment_header_matches(path, segment.number):
                held.add(segment.number)
    return held


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


def test_a_corrupt_base_backup_is_caught_as_staged_with_nothing_live_touched(sandbox, tmp_path):
    """The base backup is verified as it is staged beside the live cluster (while the
    services stop), not in the guard: a copy that fails pg_verifybackup fails the run
    before PostgreSQL is stopped, marks the backup failed, and the next guard takes another."""
    layout = sandbox.layout
    replication = endpoint("tracktion_pg_replication")
    corrupt = take_base_backup(replication, layout.base_backups, label_prefix="corrupt-in-test")
    manifest = corrupt / "backup_manifest"
    text = manifest.read_text()
    manifest.write_text(text.replace('"Size": ', '"Size": 1', 1))  # one file's size is now wrong
    probe = probe_table()
    with primary() as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(probe))
        conn.execute(sql.SQL("INSERT INTO {} (id) VALUES (7)").format(probe))
    started_before = postmaster_started()
    try:
        dag_run = pitr({"target_type": "latest"})
        states = task_states(dag_run)
        assert states["stage_recovery"] == "failed", states
        assert states["prepare_data_directory"] == "upstream_failed", states
        assert states["start_services"] == "success", states  # what was stopped came back
        assert postmaster_started() == started_before  # never stopped
        with primary() as conn:
            assert conn.execute(sql.SQL("SELECT id FROM {}").format(probe)).fetchall() == [(7,)]
        plan = load_plan().environment("drill")
        catalog = Catalog(plan.backups)
        [entry] = [e for e in catalog.base_backups() if e.path == corrupt]
        assert entry.status.value == "failed" and "pg_verifybackup" in entry.reason, entry
        guard = task_result(pitr({"target_type": "latest", "dry_run": True}), "guard")
        assert guard["base_backup"]["id"] != corrupt.name
    finally:
        # The test's own corrupt backup (and its verification record) out of the catalog.
        for path in layout.base_backups.glob(f"{corrupt.name}*"):
            shutil.move(str(path), tmp_path / path.name)
        with primary() as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(probe))
