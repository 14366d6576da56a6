"""Fail back, as a runbook, against the sandbox's real clusters:

When the primary crashes with rows the replica never received, and dr_failover promotes
the replica, Then rows written on the new primary are kept there; `down` and `up` bring
the sandbox up on the new primary (the fenced old primary stays stopped, up says what to
run). When dr_standby_rebuild runs, Then the old primary is rewound (pg_rewind: its
diverged rows were really undone, its old directory kept aside) and streams from the new
primary with the rows written there; `down` and `up` keep that topology. When
dr_switchover moves the primary back while a writer commits rows continuously, Then no
acknowledged row is lost, the writer continues on the home primary, the old one streams
from it, and `down` and `up` come back in the standard topology.

``python -m tracktion_sandbox down`` / ``up`` are ``cli.down`` / ``cli.up``, called here
in-process.
"""

from __future__ import annotations

import shutil
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from harness.killable_run import KillableRun, fail_runs_left_running
from harness.topology import _pg_ctl, kill_primary_at_once, restore_standard_topology

from tracktion_dr.airflow import support as airflow_support
from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states
from tracktion_dr.core.errors import AlreadyRecovered
from tracktion_dr.core.plan import load_plan
from tracktion_dr.postgres.pitr import aside_path
from tracktion_dr.postgres.restore import incident_tag
from tracktion_dr.scenarios import rebuild as switchover
from tracktion_sandbox import cli, pg, topology
from tracktion_sandbox import layout as L

pytestmark = pytest.mark.sandbox

TABLE = "public.dr_failback_probe"
# this run's own incidents (a rebuilt directory keeps its incident's marker for life)
STARTED = datetime.now(UTC)
REBUILD = f"DR-{STARTED:%Y%m%d-%H%M%S}"
SWITCHOVER = f"DR-{STARTED + timedelta(seconds=1):%Y%m%d-%H%M%S}"


def connect(sandbox, port: int):
    return pg.connect(port, L.SUPERUSER, sandbox.secrets.postgres_password, L.APP_DATABASE)


def in_recovery(sandbox, port: int) -> bool:
    with connect(sandbox, port) as conn:
        return conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]


def rows_marked(sandbox, port: int, mark: str) -> int:
    with connect(sandbox, port) as conn:
        return conn.execute(f"SELECT count(*) FROM {TABLE} WHERE mark = %s", (mark,)).fetchone()[0]


def wait_for(predicate, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except psycopg.OperationalError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"not within {timeout:.0f}s: {what}")


def streams(sandbox, primary_port: int, standby: str) -> bool:
    with pg.connect(primary_port, L.SUPERUSER, sandbox.secrets.postgres_password, "postgres") as c:
        row = c.execute(
            "SELECT state FROM pg_stat_replication WHERE application_name = %s", (standby,)
        ).fetchone()
    return bool(row and row[0] == "streaming")


def down_and_up(layout) -> None:
    cli.down(layout)
    cli.up(layout, size="30MB")


class Writer(threading.Thread):
    """Commits one row at a time to whichever node takes writes; remembers every id whose
    commit was acknowledged."""

    def __init__(self, sandbox, mark: str):
        super().__init__(daemon=True)
        self.dsn = psycopg.conninfo.make_conninfo(
            host=f"{L.HOST},{L.HOST}",
            port=f"{L.PRIMARY_PORT},{L.REPLICA_PORT}",
            user=L.SUPERUSER,
            password=sandbox.secrets.postgres_password,
            dbname=L.APP_DATABASE,
            connect_timeout="2",
            target_session_attrs="read-write",
        )
        self.mark = mark
        self.acknowledged: list[tuple[int, int]] = []  # (id, port it was written on)
        self.failures = 0
        self.stop = threading.Event()

    def run(self) -> None:
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.dsn, autocommit=True)
                row = conn.execute(
                    f"INSERT INTO {TABLE} (mark) VALUES (%s) RETURNING id", (self.mark,)
                ).fetchone()
                self.acknowledged.append((row[0], int(conn.info.port)))
            except psycopg.Error:
                self.failures += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.1)
            time.sleep(0.02)
        if conn is not None:
            conn.close()


def test_failover_rebuild_and_switch_back_lose_nothing(sandbox, tmp_path):
    layout, password = sandbox.layout, sandbox.secrets.postgres_password
    archive_before = {p.name for p in layout.wal_archive.iterdir()}
    asides_before = set(layout.pg_root.iterdir())
    finished = False
    with connect(sandbox, L.PRIMARY_PORT) as conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, mark text NOT NULL,"
            " written_at timestamptz NOT NULL DEFAULT now())"
        )
    wait_for(lambda: streams(sandbox, L.PRIMARY_PORT, "replica"), what="replica streams")
    try:
        # --- the primary crashes with rows the replica never received ----------------
        with pg.connect(L.REPLICA_PORT, L.SUPERUSER, password, "postgres") as conn:
            conn.execute("ALTER SYSTEM SET primary_conninfo = ''")
            conn.execute("SELECT pg_reload_conf()")
        wait_for(lambda: not streams(sandbox, L.PRIMARY_PORT, "replica"), what="stream cut")
        with connect(sandbox, L.PRIMARY_PORT) as conn:
            conn.execute(
                f"INSERT INTO {TABLE} (mark) SELECT 'diverged' FROM generate_series(1, 50)"
            )
        kill_primary_at_once(layout)
        failover = run_dag(
            "dr_failover",
            {
                "environment": "drill",
                "target": "database",
                "incident_started_at": datetime.now(UTC).isoformat(),
            },
        )
        assert task_states(failover)["verdict"] == "success", task_states(failover)
        assert rows_marked(sandbox, L.REPLICA_PORT, "diverged") == 0, "the failover lost them"
        with connect(sandbox, L.REPLICA_PORT) as conn:
            conn.execute(
                f"INSERT INTO {TABLE} (mark) SELECT 'after failover' FROM generate_series(1, 40)"
            )

        # --- down and up on the new primary; the fenced old primary stays stopped --------
        down_and_up(layout)
        assert topology.detect(layout).kind == "failed_over"
        assert not pg.port_open(L.PRIMARY_PORT), "the fenced old primary stays stopped"
        assert in_recovery(sandbox, L.REPLICA_PORT) is False

        # --- rebuild: pg_rewind undoes the diverged rows, the old directory is kept ------
        # The worker dies right after the old directory was moved aside; the re-run of
        # the same incident converges.
        conf = {"environment": "drill", "cluster": "main", "incident_id": REBUILD}
        kept = aside_path(layout.primary_data, incident_tag(REBUILD))
        with KillableRun.dag_test(
            "dr_standby_rebuild", conf, log_path=tmp_path / "killed.log"
        ) as killed:
            killed.wait_until(kept.exists, what="the old primary moved aside", interval=0.01)
            killed.kill()
            assert killed.wait_exit() == -9
        fail_runs_left_running("dr_standby_rebuild")
        rebuilt = run_dag("dr_standby_rebuild", conf)
        assert task_states(rebuilt)["verdict"] == "success", task_states(rebuilt)
        result = task_result(rebuilt, "rebuild_primary")
        assert result["method"] == "pg_rewind", result["event"]["detail"]
        assert "no rewind required" not in result["event"]["detail"], "the timelines diverged"
        assert in_recovery(sandbox, L.PRIMARY_PORT) is True
        assert streams(sandbox, L.REPLICA_PORT, "primary")
        wait_for(
            lambda: rows_marked(sandbox, L.PRIMARY_PORT, "after failover") == 40,
            what="the new primary's rows replayed on the rebuilt standby",
        )
        assert rows_marked(sandbox, L.PRIMARY_PORT, "diverged") == 0
        assert (kept / "PG_VERSION").exists() and (kept / topology.FENCE_NOTE).exists()
        again = run_dag(
            "dr_standby_rebuild",
            {"environment": "drill", "cluster": "main", "incident_id": REBUILD},
        )
        assert task_result(again, "rebuild_primary")["method"] == "none", "a re-run does nothing"

        # --- down and up in the swapped topology ------------------------------------------
        down_and_up(layout)
        assert topology.detect(layout).kind == "swapped"
        wait_for(lambda: streams(sandbox, L.REPLICA_PORT, "primary"), what="swapped: streams")

        # --- switch back while a writer commits continuously --------------------------------
        refused = run_dag(
            "dr_switchover", {"environment": "drill", "cluster": "main", "to_node": "primary"}
        )
        assert task_states(refused)["guard"] == "failed", "no window confirmed: refused"
        writer = Writer(sandbox, "continuous")
        writer.start()
        wait_for(lambda: len(writer.acknowledged) >= 20, what="the writer commits")
        switched = run_dag(
            "dr_switchover",
            {
                "environment": "drill",
                "cluster": "main",
                "to_node": "primary",
                "maintenance_window_confirmed": True,
                "incident_id": SWITCHOVER,
            },
        )
        wait_for(
            lambda: sum(port == L.PRIMARY_PORT for _, port in writer.acknowledged) >= 20,
            what="the writer continues on the home primary",
        )
        writer.stop.set()
        writer.join(10)
        assert task_states(switched)["verdict"] == "success", task_states(switched)
        before = [i for i, port in writer.acknowledged if port == L.REPLICA_PORT]
        assert before, "rows were committed on the old primary up to the switch"
        with connect(sandbox, L.PRIMARY_PORT) as conn:
            present = {
                row[0]
                for row in conn.execute(
                    f"SELECT id FROM {TABLE} WHERE mark = 'continuous'"
                ).fetchall()
            }
        lost = [i for i, _ in writer.acknowledged if i not in present]
        assert not lost, f"{len(lost)} acknowledged rows lost: {lost[:10]}"
        assert in_recovery(sandbox, L.PRIMARY_PORT) is False
        wait_for(lambda: streams(sandbox, L.PRIMARY_PORT, "replica"), what="old one streams")
        # switched away from the replica node: its host's set ran
        detail = task_result(switched, "switch_from_replica")["event"]["detail"]
        assert "replayed its shutdown checkpoint" in detail and "promoted primary" in detail

        # --- and down and up in the standard topology again -------------------------------
        down_and_up(layout)
        assert topology.detect(layout).kind == "standard"
        wait_for(lambda: streams(sandbox, L.PRIMARY_PORT, "replica"), what="standard: streams")
        finished = True
    finally:
        if not finished:
            _back_to_standard(layout, archive_before)
        with connect(sandbox, L.PRIMARY_PORT) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        # the test's own kept copies go (disk); what the rebuilds kept is checked above
        for path in set(layout.pg_root.iterdir()) - asides_before:
            if ".pre_" in path.name and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)


def _back_to_standard(layout, archive_before: set[str]) -> None:
    """Best effort after a failure: the primary's directory writable, the replica
    re-seeded from it (the next test needs the standard sandbox)."""
    found = topology.read_nodes(layout)
    if found[0].standby and pg.port_open(L.PRIMARY_PORT):
        _pg_ctl(layout, layout.primary_data, "stop", "-m", "fast", "-w", check=False)
    restore_standard_topology(layout, archive_before)


def test_a_switchover_to_a_standby_that_does_not_stream_is_refused(sandbox):
    """Refused before anything is touched: the primary keeps taking writes, the services
    keep running, the standby stays a standby; switching to the primary itself is nothing
    to do."""
    layout = sandbox.layout
    conf = {
        "environment": "drill",
        "cluster": "main",
        "maintenance_window_confirmed": True,
        "catch_up_seconds": 5,
    }
    already = run_dag("dr_switchover", {**conf, "to_node": "primary"})
    assert task_states(already)["preconditions_from_replica"] == "failed"
    assert task_states(already)["switch_from_replica"] in ("upstream_failed", "skipped")
    assert task_states(already)["preconditions_from_primary"] == "skipped", "the other set"
    # failed for the reason it should: asked again with the run's own guard result
    with pytest.raises(AlreadyRecovered, match="primary is already the primary .*streams"):
        switchover.switchover_preconditions(
            load_plan(), task_result(already, "guard"), airflow_support.endpoint
        )
    _pg_ctl(layout, layout.replica_data, "stop", "-m", "fast", "-w")
    try:
        refused = run_dag("dr_switchover", {**conf, "to_node": "replica"})
        states = task_states(refused)
        assert states["preconditions_from_primary"] == "failed"
        assert states["verdict"] == "failed"
        assert states["stop_services"] in ("upstream_failed", "skipped")
        assert states["switch_from_primary"] in ("upstream_failed", "skipped")
        assert states["gate_new_primary"] in ("upstream_failed", "skipped")
        assert in_recovery(sandbox, L.PRIMARY_PORT) is False
        with connect(sandbox, L.PRIMARY_PORT) as conn:
            assert conn.execute("SHOW default_transaction_read_only").fetchone()[0] == "off"
        assert (layout.replica_data / "standby.signal").exists()
    finally:
        pg.start_cluster(layout, "replica")
    wait_for(lambda: streams(sandbox, L.PRIMARY_PORT, "replica"), what="the replica streams")


def test_a_switchover_killed_after_the_clean_shutdown_is_finished_by_its_own_incident(sandbox):
    """The state a switch leaves when killed between its write stop and its promotion, made
    by the same library calls: its give_writes_back gives writes back to the read-only old
    primary; once the old primary is also shut down cleanly, another incident is refused
    (nothing touched), and a re-run of the same incident promotes the target, repoints the
    balancer, restarts the services and rebuilds the old primary. Then switched back."""
    from failover_support import backend

    from tracktion_dr.airflow.support import endpoint
    from tracktion_dr.core.plan import load_plan
    from tracktion_dr.postgres import rebuild
    from tracktion_dr.scenarios import rebuild as scenario

    layout = sandbox.layout
    asides_before = set(layout.pg_root.iterdir())
    archive_before = {p.name for p in layout.wal_archive.iterdir()}
    killed_one = f"DR-{datetime.now(UTC) + timedelta(seconds=2):%Y%m%d-%H%M%S}"
    another = f"DR-{datetime.now(UTC) + timedelta(seconds=3):%Y%m%d-%H%M%S}"
    back = f"DR-{datetime.now(UTC) + timedelta(seconds=4):%Y%m%d-%H%M%S}"
    plan = load_plan()
    conf = {"environment": "drill", "cluster": "main", "maintenance_window_confirmed": True}
    run = {**conf, "to_node": "replica", "incident_id": killed_one}
    nodes = scenario.cluster_nodes(plan.environment("drill").clusters["main"], endpoint)
    old, target = nodes["primary"], nodes["replica"]
    wait_for(lambda: streams(sandbox, L.PRIMARY_PORT, "replica"), what="the replica streams")
    finished = False
    try:
        rebuild.write_switchover_note(target, old, killed_one)
        rebuild.stop_writes(old)
        given_back = scenario.writes_given_back(plan, run, endpoint)
        assert "left primary read-only" in given_back, given_back
        with connect(sandbox, L.PRIMARY_PORT) as conn:
            assert conn.execute("SHOW default_transaction_read_only").fetchone()[0] == "off"

        rebuild.stop_writes(old)
        rebuild.wait_caught_up(old, target)
        rebuild.shut_down_cleanly(old, target)  # ... and the worker dies here
        refused = run_dag("dr_switchover", {**conf, "to_node": "replica", "incident_id": another})
        assert task_states(refused)["preconditions_from_primary"] == "failed", task_states(refused)
        assert in_recovery(sandbox, L.REPLICA_PORT) is True, "another incident touched nothing"

        resumed = run_dag(
            "dr_switchover", {**conf, "to_node": "replica", "incident_id": killed_one}
        )
        assert task_states(resumed)["verdict"] == "success", task_states(resumed)
        assert "resuming" in task_result(resumed, "preconditions_from_primary")["event"]["detail"]
        assert "promoted replica" in task_result(resumed, "switch_from_primary")["event"]["detail"]
        assert in_recovery(sandbox, L.REPLICA_PORT) is False
        servers = backend("database")["servers"]
        assert (
            servers["replica"]["status"] == "enabled" and servers["primary"]["status"] == "disabled"
        )
        wait_for(lambda: streams(sandbox, L.REPLICA_PORT, "primary"), what="old one streams")

        switched_back = run_dag(
            "dr_switchover", {**conf, "to_node": "primary", "incident_id": back}
        )
        assert task_states(switched_back)["verdict"] == "success", task_states(switched_back)
        wait_for(lambda: streams(sandbox, L.PRIMARY_PORT, "replica"), what="standard: streams")
        finished = True
    finally:
        if not finished:
            _back_to_standard(layout, archive_before)
        # the test's own kept copies and notes go (disk); what they hold is checked above
        for path in set(layout.pg_root.iterdir()) - asides_before:
            if ".pre_" in path.name and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.name.endswith(".switchover.json"):
                path.unlink()
