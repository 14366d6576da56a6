"""dr_service_dependencies_recovery: the database comes back first, then the services."""

from __future__ import annotations

import pytest

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states
from tracktion_dr.services import ServiceState
from tracktion_sandbox import cli, pg

pytestmark = pytest.mark.sandbox

OTHERS = ["analysis-service", "tracklist-service", "notification-service", "load-balancer"]


def stop_primary(layout) -> None:
    bindir = pg.find_bindir()
    argv = [str(bindir / "pg_ctl"), "stop", "-D", str(layout.primary_data), "-m", "fast", "-w"]
    pg.run(pg.as_postgres(argv), what="stop the primary", cwd=layout.pg_root)


def test_database_then_services_in_order_skipping_what_is_healthy(sandbox, supervisor_controller):
    stop_primary(sandbox.layout)
    supervisor_controller.stop("file-watcher")
    pids = {name: supervisor_controller.status(name).detail.split(",")[0] for name in OTHERS}
    try:
        dag_run = run_dag("dr_service_dependencies_recovery", {"environment": "drill"})
        states = task_states(dag_run)
        assert states["verdict"] == "success", states
        actions = {
            layer: task_result(dag_run, f"recover_{layer}")["actions"]
            for layer in ("database", "cache", "queue", "storage", "application")
        }
        assert actions["database"] == {"main": "started with pg_ctl"}
        assert actions["cache"] == {} and actions["queue"] == {}
        assert set(actions["storage"].values()) == {"healthy, left alone"}
        assert actions["application"]["file-watcher"].startswith("restarted via supervisord")
        # with the database back, the others answer healthy again by themselves
        for name in OTHERS[:3]:
            assert actions["application"][name] == "healthy, left alone"
        after = {name: supervisor_controller.status(name).detail.split(",")[0] for name in OTHERS}
        assert after == pids, "healthy services keep their processes"
        assert supervisor_controller.status("file-watcher").state == ServiceState.RUNNING
        events = {e["name"]: e for e in task_result(dag_run, "record")["events"]}
        # each layer starts only after the previous layer's gate opened
        for gate, step in [
            ("gate_database", "recover_cache"),
            ("gate_cache", "recover_queue"),
            ("gate_queue", "recover_storage"),
            ("gate_storage", "recover_application"),
        ]:
            assert events[gate]["finished_at"] <= events[step]["started_at"]
    finally:
        supervisor_controller.start("file-watcher")
        cli.up(sandbox.layout, size="30MB")  # idempotent: starts whatever is still stopped
