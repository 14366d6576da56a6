"""dr_failover against the sandbox: a service through the load balancer, and the database
(promote the streaming replica, fence the old primary, measure the data lost).

The database test breaks the standard topology on purpose and puts it back afterwards:
the promoted server is stopped and its data directory moved aside, the fence is lifted
from the old primary, the new timeline's WAL is moved out of the archive (kept beside it),
the balancer's database backend is reset, and the sandbox's normal ``up`` restarts the
primary and re-seeds the replica with pg_basebackup from it. The test then checks that
the replica streams again on 55433 and every service is healthy.
"""

from __future__ import annotations

import copy
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml
from failover_support import SERVICE, backend, secondary_registered
from harness.topology import kill_primary_at_once, restore_standard_topology, set_server

from tracktion_dr.airflow.access import ACCESS
from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states
from tracktion_dr.airflow.support import conninfo
from tracktion_dr.core.errors import FailoverRefused
from tracktion_dr.core.plan import Plan, parse_plan
from tracktion_dr.scenarios import failover
from tracktion_dr.services.failover import FENCE_NOTE, fence_old_primary
from tracktion_sandbox import cli, pg
from tracktion_sandbox import layout as L

__all__ = ["secondary_registered"]  # a fixture, used by name

pytestmark = pytest.mark.sandbox

LB = f"http://{L.HOST}:{L.LOAD_BALANCER_PORT}"
SANDBOX_PLAN = Path(__file__).resolve().parents[2] / "include" / "config" / "sandbox.yaml"


def plan_with_primary_at(data_directory: Path) -> Plan:
    """The sandbox plan with the drill cluster's (old primary's) data directory somewhere
    else: what a plan whose primary and replica share a path looks like from the wrong
    host, or a plain mistake."""
    data = yaml.safe_load(SANDBOX_PLAN.read_text())
    drill = copy.deepcopy(data["environments"]["drill"])
    drill["clusters"]["main"]["data_directory"] = str(data_directory)
    data["environments"]["drill"] = drill
    return parse_plan(data, "wrong-primary-plan")


def postmaster_started(port: int, password: str):
    with pg.connect(port, L.SUPERUSER, password, "postgres") as conn:
        return conn.execute("SELECT pg_postmaster_start_time(), pg_is_in_recovery()").fetchone()


def test_service_failover_moves_traffic_to_the_secondary(sandbox, secondary_registered):
    dag_run = run_dag(
        "dr_failover", {"environment": "drill", "target": "service", "service": SERVICE}
    )
    states = task_states(dag_run)
    assert states["verdict"] == "success", states
    assert states["approve"] == "skipped" and states["automatic"] == "success"
    servers = backend(SERVICE)["servers"]
    assert servers["secondary"] == {**servers["secondary"], "weight": 100, "status": "enabled"}
    assert servers["primary"]["status"] == "disabled" and servers["primary"]["weight"] == 0
    answer = httpx.get(f"{LB}/route/{SERVICE}/health", timeout=5)
    assert answer.status_code == 200 and answer.headers["X-Backend"] == "secondary"
    gate = task_result(dag_run, "gate_failover")["event"]
    assert gate["detail"] == "routed request answered by secondary (HTTP 200)"


def test_failover_whose_secondary_is_also_down_switches_nothing(sandbox, secondary_registered):
    secondary_registered.terminate()
    secondary_registered.wait(10)
    before = backend(SERVICE)
    dag_run = run_dag(
        "dr_failover", {"environment": "drill", "target": "service", "service": SERVICE}
    )
    states = task_states(dag_run)
    assert states["preconditions"] == "failed" and states["verdict"] == "failed"
    assert states["switch"] in ("upstream_failed", "skipped")
    assert backend(SERVICE)["servers"] == before["servers"], "the balancer was not touched"
    assert task_result(dag_run, "record")["details"]["switched"] is False


def test_a_healthy_primary_is_not_failed_over(sandbox):
    before = backend("database")
    dag_run = run_dag("dr_failover", {"environment": "drill", "target": "database"})
    assert task_states(dag_run)["preconditions"] == "failed"
    assert backend("database") == before


# --- database ----------------------------------------------------------------------------


def test_database_failover_promotes_the_replica_and_measures_the_loss(sandbox):
    layout = sandbox.layout
    archive_before = {p.name for p in layout.wal_archive.iterdir()}
    try:
        kill_primary_at_once(layout)
        killed_at = datetime.now(UTC)
        dag_run = run_dag(
            "dr_failover",
            {
                "environment": "drill",
                "target": "database",
                "incident_started_at": killed_at.isoformat(),
            },
        )
        states = task_states(dag_run)
        assert states["verdict"] == "success", states
        timeline = task_result(dag_run, "record")
        loss = timeline["data_loss_seconds"]
        assert loss is not None and 0 <= loss < 60, "measured from the surviving heartbeats"
        assert timeline["rpo_met"] is True
        actions = task_result(dag_run, "switch")["actions"]
        assert "wrote standby.signal: a restart comes up read-only" in actions
        assert "promoted with pg_promote" in actions
        assert (layout.primary_data / "standby.signal").exists()
        servers = backend("database")["servers"]
        assert servers["replica"]["status"] == "enabled" and servers["replica"]["weight"] == 100
        assert servers["primary"]["status"] == "disabled"
        gate = task_result(dag_run, "gate_failover")["event"]["detail"]
        assert "write committed on the new primary" in gate
        assert "3 services using it healthy" in gate, "the services followed the repoint"
        with pg.connect(
            L.REPLICA_PORT, L.SUPERUSER, sandbox.secrets.postgres_password, L.APP_DATABASE
        ) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
        # A retry that now took the promoted standby's directory for the old primary (on a
        # host pair both have the same path) is refused: it is the standby itself.
        with pytest.raises(FailoverRefused, match="is the standby being promoted itself"):
            fence_old_primary(
                plan_with_primary_at(layout.replica_data).environment("drill").clusters["main"],
                "DR-20260101-000002",
                standby_conninfo=conninfo("tracktion_pg_replica", "tracktion"),
            )
        assert pg.port_open(L.REPLICA_PORT), "the new primary still runs"

        # A run of this incident cut short after pg_promote (the replica promoted, the
        # balancer not yet repointed): a re-run of the incident finishes the switch - the
        # fence on the old primary is this incident's own - and the gate opens.
        incident = task_result(dag_run, "guard")["incident_id"]
        set_server("database", "primary", weight=100, status="enabled")
        set_server("database", "replica", weight=0, status="disabled")
        rerun = run_dag(
            "dr_failover",
            {
                "environment": "drill",
                "target": "database",
                "incident_id": incident,
                "incident_started_at": killed_at.isoformat(),
            },
        )
        states = task_states(rerun)
        assert states["verdict"] == "success", states
        actions = task_result(rerun, "switch")["actions"]
        assert f"the standby was promoted by an earlier run of {incident}: resuming" in actions
        assert "already promoted" in actions
        servers = backend("database")["servers"]
        assert servers["replica"]["status"] == "enabled" and servers["replica"]["weight"] == 100
        assert servers["primary"]["status"] == "disabled"
        # Another incident finds the pair failed over by this one: its fence refuses (the
        # note is not its own), nothing is switched.
        before = backend("database")
        other = run_dag(
            "dr_failover",
            {"environment": "drill", "target": "database", "incident_id": "DR-20260101-000003"},
        )
        states = task_states(other)
        assert states["fence_old_primary"] == "failed", states
        assert states["switch"] in ("upstream_failed", "skipped"), states
        assert backend("database") == before
        assert (
            f"Fenced by dr_failover ({incident})" in (layout.primary_data / FENCE_NOTE).read_text()
        ), "the first incident's fence note kept"
    finally:
        restore_standard_topology(layout, archive_before)
    # the next test finds the standard sandbox: primary writable, replica streaming
    with pg.connect(
        L.PRIMARY_PORT, L.SUPERUSER, sandbox.secrets.postgres_password, "postgres"
    ) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
        deadline = time.monotonic() + 30
        state = None
        while time.monotonic() < deadline and state != "streaming":
            row = conn.execute("SELECT state FROM pg_stat_replication").fetchone()
            state = row[0] if row else None
            time.sleep(0.5)
        assert state == "streaming"
    with pg.connect(
        L.REPLICA_PORT, L.SUPERUSER, sandbox.secrets.postgres_password, "postgres"
    ) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True


def test_a_failover_pointed_at_the_wrong_cluster_fences_nothing(sandbox):
    """The old primary is down; the plan names the replica's data directory (or the ops
    cluster's) as the old primary. The fence checks what is there before it stops or
    writes anything, and refuses: the replica keeps running as a standby, no fence file
    is written anywhere, nothing is promoted, the balancer is not touched."""
    layout, password = sandbox.layout, sandbox.secrets.postgres_password
    balancer_before = backend("database")
    replica_before = postmaster_started(L.REPLICA_PORT, password)
    ops_before = postmaster_started(L.OPS_PORT, password)
    kill_primary_at_once(layout)
    try:
        for wrong, refusal in (
            (layout.replica_data, "is a standby (in archive recovery), not the old primary"),
            (layout.ops_data, "is another cluster (system identifier"),
        ):
            plan = plan_with_primary_at(wrong)
            run = failover.check_inputs(
                plan,
                {"environment": "drill", "incident_id": "DR-20260101-000001", "dry_run": False},
                {
                    "target": "database",
                    "mode": "automatic",
                    "database": "tracktion",
                    "primary_server": "primary",
                    "secondary_server": "",
                },
            )
            found = failover.preconditions(plan, run, ACCESS)["found"]
            assert found["system_identifier"].isdigit(), "the guard records the pair's identity"
            with pytest.raises(FailoverRefused) as refused:
                failover.fence(plan, run, ACCESS)
            assert refusal in str(refused.value)
            assert "HINT: run the fence on the old primary's host" in str(refused.value)
        assert postmaster_started(L.REPLICA_PORT, password) == replica_before, (
            "the replica was neither stopped nor promoted"
        )
        assert postmaster_started(L.OPS_PORT, password) == ops_before
        for data in (layout.replica_data, layout.ops_data, layout.primary_data):
            assert not (data / FENCE_NOTE).exists()
        assert not (layout.primary_data / "standby.signal").exists()
        assert not (layout.ops_data / "standby.signal").exists()
        assert backend("database") == balancer_before
    finally:
        cli.up(layout, size="30MB")  # the killed primary back; the replica streams again
