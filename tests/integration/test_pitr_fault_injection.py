"""dr_database_pitr survives its own worker dying, at every step.

When the run (a child process in its own process group, like a worker) is SIGKILLed
after the guard / while the data directory is prepared / during WAL replay / during the
re-seed of the standby / right after promotion, and is then run again with the SAME
incident (same incident_id and incident_started_at) with no manual step in between,
then: the primary is healthy, the replica streams from it on its timeline, the services
are healthy, not one row committed before the target is missing (and none after it is
back), each data directory has exactly one kept copy for the incident, and a server that
was already our recovery (replaying, or promoted) was never stopped by the re-run.

Each moment is found by polling the real state (task states, files, the server), never
by sleeping. PostgreSQL daemonizes (pg_ctl), so it outlives the killed group - the
real-world case the recovery must cope with.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from harness.killable_run import KillableRun, incident_task_states
from pitr_support import primary, switch_wal
from psycopg import sql

from tracktion_dr.airflow.dag_runs import run_dag, task_states
from tracktion_dr.airflow.support import endpoint
from tracktion_dr.backups.catalog import Catalog
from tracktion_dr.core.plan import load_plan
from tracktion_dr.postgres.pitr import aside_path, staging_path
from tracktion_dr.postgres.recovery_marker import (
    postmaster_pid,
    read_marker,
    recovery_pending,
)
from tracktion_dr.postgres.replica import reseed_staging_path
from tracktion_dr.postgres.restore import incident_tag
from tracktion_dr.postgres.wal import Segment, archived_file, archived_segment
from tracktion_dr.services.checks import service_health

pytestmark = pytest.mark.sandbox

ROWS_BEFORE = 40
ROWS_AFTER = 10


class Incident:
    """Rows written around a target time, and the conf of the recovery to that target."""

    def __init__(self, layout):
        self.table = f"pitr_fault_{uuid.uuid4().hex[:10]}"
        with primary() as conn:
            conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(self.ident))
            for i in range(1, ROWS_BEFORE + 1):  # one commit each
                conn.execute(sql.SQL("INSERT INTO {} VALUES (%s)").format(self.ident), (i,))
            time.sleep(1.2)
            self.target, self.target_segment = conn.execute(
                "SELECT clock_timestamp(), pg_walfile_name(pg_current_wal_lsn())"
            ).fetchone()
            time.sleep(1.2)
            for i in range(1001, 1001 + ROWS_AFTER):  # after the target: must not come back
                conn.execute(sql.SQL("INSERT INTO {} VALUES (%s)").format(self.ident), (i,))
            incident_at = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        switch_wal()
        self.incident_id = datetime.now(UTC).strftime("DR-%Y%m%d-%H%M%S")
        self.tag = incident_tag(self.incident_id)
        self.conf = {
            "environment": "drill",
            "cluster": "main",
            "target_type": "time",
            "target": self.target.isoformat(),
            "incident_id": self.incident_id,
            "incident_started_at": incident_at.isoformat(),
        }
        self.primary_data = layout.primary_data
        self.replica_data = layout.replica_data

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.table)

    def ours(self, data: Path) -> bool:
        marker = read_marker(data)
        return marker is not None and marker.incident_id == self.incident_id


DAG_ID = "dr_database_pitr"


def after_the_guard(incident: Incident) -> Callable[[], bool]:
    return lambda: incident_task_states(DAG_ID, incident.incident_id).get("guard") == "success"


def while_preparing(incident: Incident) -> Callable[[], bool]:
    staging = staging_path(incident.primary_data, incident.tag)
    aside = aside_path(incident.primary_data, incident.tag)
    return lambda: staging.exists() or (aside.exists() and not incident.primary_data.exists())


def during_replay(incident: Incident) -> Callable[[], bool]:
    data = incident.primary_data
    return lambda: (
        incident.ours(data) and recovery_pending(data) and postmaster_pid(data) is not None
    )


def during_reseed(incident: Incident) -> Callable[[], bool]:
    staging = reseed_staging_path(incident.replica_data, incident.tag)
    return staging.exists


def right_after_promotion(incident: Incident) -> Callable[[], bool]:
    data = incident.primary_data
    return lambda: (
        incident.ours(data) and not recovery_pending(data) and postmaster_pid(data) is not None
    )


MOMENTS = {
    "after_the_guard": (after_the_guard, 0.2),
    "while_preparing": (while_preparing, 0.002),
    "during_replay": (during_replay, 0.01),
    "during_reseed": (during_reseed, 0.002),
    "right_after_promotion": (right_after_promotion, 0.005),
}


@pytest.mark.parametrize("moment_name", list(MOMENTS))
def test_killed_at_a_step_then_rerun_converges(sandbox, tmp_path, moment_name, capfd):
    incident = Incident(sandbox.layout)
    moment, poll = MOMENTS[moment_name]

    run = KillableRun.dag_test(DAG_ID, incident.conf, log_path=tmp_path / "killed.log")
    run.wait_until(moment(incident), what=moment_name, interval=poll)
    run.kill()
    assert run.wait_exit() == -9  # and nothing of its process group is left
    # The server our recovery started (if any) outlives the worker, as in real life.
    server_before_rerun = postmaster_pid(incident.primary_data)
    promoted_before_rerun = incident.ours(incident.primary_data) and not recovery_pending(
        incident.primary_data
    )

    if moment_name == "during_replay":
        # A NEW incident asking for the same target while this one's recovery is
        # unfinished is refused (re-run the first one instead), and nothing moves.
        capfd.readouterr()
        other = run_dag(
            "dr_database_pitr",
            {**incident.conf, "incident_id": datetime.now(UTC).strftime("DR-%Y%m%d-%H%M%S")},
        )
        assert task_states(other)["guard"] == "failed"
        assert f"incident {incident.incident_id} is already recovering cluster main" in (
            capfd.readouterr().out
        )
        assert postmaster_pid(incident.primary_data) == server_before_rerun

    dag_run = run_dag(DAG_ID, incident.conf)  # same incident, no manual step
    states = task_states(dag_run)
    assert states["verdict"] == "success", (states, run.log_path)

    # A healthy primary on the recovered timeline, never restarted once it was ours.
    with primary() as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
        kept = {r[0] for r in conn.execute(sql.SQL("SELECT id FROM {}").format(incident.ident))}
    if moment_name in ("during_replay", "during_reseed", "right_after_promotion"):
        assert server_before_rerun is not None
        assert postmaster_pid(incident.primary_data) == server_before_rerun, (
            "the re-run restarted a server that was already this incident's recovery"
        )
    if promoted_before_rerun:
        assert states["stop_services"] == "success"  # ran, and skipped stopping (see detail)

    # Not one committed row before the target is missing; none after it came back.
    assert kept == set(range(1, ROWS_BEFORE + 1))

    # The replica streams from the recovered primary on its timeline.
    _wait_for_streaming_on_current_timeline()

    # The services are healthy.
    environment = load_plan().environment("drill")
    healthy, detail = service_health(environment, sorted(environment.services))
    assert healthy, detail

    # Exactly one kept copy per data directory for this incident, no staging left over.
    pg_root = incident.primary_data.parent
    with_tag = {p.name for p in pg_root.iterdir() if p.is_dir() and incident.tag in p.name}
    assert with_tag == {
        aside_path(incident.primary_data, incident.tag).name,
        aside_path(incident.replica_data, incident.tag).name,
    }


def test_a_server_dying_in_recovery_fails_the_gate_at_once_then_the_rerun_resumes(
    sandbox, tmp_path
):
    """A WAL segment replay needs vanishes after the guard checked it: PostgreSQL exits
    (FATAL: recovery ended before configured recovery target was reached). The gate fails
    at once with ServerDied quoting that line - measured before: it polled "not yet" for
    ten minutes with no server running - and nothing promoted. With the segment back, the
    same incident's re-run starts the laid-down recovery again and finishes."""
    incident = Incident(sandbox.layout)
    archive = sandbox.layout.wal_archive
    run = KillableRun.dag_test(DAG_ID, incident.conf, log_path=tmp_path / "dying.log")
    run.wait_until(
        lambda: incident.ours(incident.primary_data),
        what="the base backup laid down",
        interval=0.002,
    )
    # The segment holding the target: replay needs it last, so the server is well into
    # replay, watched by the gate, when it finds it missing.
    victim = archived_file(archive, incident.target_segment)  # <segment>.zst
    assert victim is not None, f"{incident.target_segment} is not archived"
    marker = read_marker(incident.primary_data)
    base = next(
        b
        for b in Catalog(load_plan().environment("drill").backups).base_backups()
        if b.id == marker.base_backup
    )
    assert archived_segment(victim.name).number > Segment.from_lsn(base.stop_lsn).number
    hidden = victim.with_name(f".{victim.name}.hidden-by-test")
    victim.rename(hidden)
    try:
        run.wait_exit(timeout=600)  # the gate's budget is the RTO (30 min): not waited out
        log_text = run.log_path.read_text(errors="replace")
        states = incident_task_states(DAG_ID, incident.incident_id)
        assert states["gate_recovery_target_reached"] == "failed", states
        assert "ServerDied" in log_text and "is not running: its log" in log_text
        assert "recovery ended before configured recovery target was reached" in log_text
        assert states["promote"] == "upstream_failed"
        assert recovery_pending(incident.primary_data), "nothing may have promoted it"
    finally:
        hidden.rename(victim)

    dag_run = run_dag(DAG_ID, incident.conf)
    states = task_states(dag_run)
    assert states["verdict"] == "success", states
    with primary() as conn:
        kept = {r[0] for r in conn.execute(sql.SQL("SELECT id FROM {}").format(incident.ident))}
    assert kept == set(range(1, ROWS_BEFORE + 1))
    _wait_for_streaming_on_current_timeline()


def _wait_for_streaming_on_current_timeline(timeout: float = 90) -> None:
    replica = endpoint("tracktion_pg_replica")
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        with primary("postgres") as conn:
            timeline = int(
                conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0][:8], 16
            )
            senders = [r[0] for r in conn.execute("SELECT state FROM pg_stat_replication")]
        try:
            with psycopg.connect(replica.conninfo("postgres"), connect_timeout=5) as conn:
                row = conn.execute(
                    "SELECT status, received_tli FROM pg_stat_wal_receiver"
                ).fetchone()
        except psycopg.OperationalError as exc:
            row = None
            seen = str(exc)
        if "streaming" in senders and row and row[0] == "streaming" and row[1] == timeline:
            return
        seen = f"senders {senders}, receiver {row}, primary timeline {timeline}"
        time.sleep(1)
    raise AssertionError(f"the replica does not stream from the recovered primary: {seen}")
