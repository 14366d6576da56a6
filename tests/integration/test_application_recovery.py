"""dr_application_recovery against the live sandbox: only what is broken is touched."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states
from tracktion_dr.services import ServiceState
from tracktion_sandbox import layout as L

pytestmark = pytest.mark.sandbox

PROGRAMS = [*L.SERVICE_PORTS, "load-balancer", "notification-sink", "canary-writer"]


def pids(controller) -> dict[str, str]:
    return {name: controller.status(name).detail.split(",")[0] for name in PROGRAMS}


def healthy(sandbox, service: str) -> bool:
    try:
        url = f"{sandbox.layout.service_url(service)}/health"
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_stopped_service_is_restarted_and_nothing_else_is_touched(sandbox, supervisor_controller):
    victim = "tracklist-service"
    supervisor_controller.stop(victim)
    before = pids(supervisor_controller)
    try:
        dag_run = run_dag("dr_application_recovery", {"environment": "drill"})
        states = task_states(dag_run)
        assert states["verdict"] == "success", states
        after = pids(supervisor_controller)
        assert supervisor_controller.status(victim).state == ServiceState.RUNNING
        assert healthy(sandbox, victim)
        untouched = {name: pid for name, pid in before.items() if name != victim}
        assert {name: after[name] for name in untouched} == untouched, "others kept their PIDs"
        events = {e["name"]: e for e in task_result(dag_run, "record")["events"]}
        assert events["recover_tracklist_service"]["detail"] == "restart via supervisord"
        assert events["recover_analysis_service"]["detail"] == "healthy, left alone"
        assert events["gate_analysis_service"]["status"] == "succeeded"
        assert "functional check passed" in events["gate_analysis_service"]["detail"]
        summary = task_result(dag_run, "report")
        assert summary["event"]["status"] == "succeeded"
        assert {k: v for k, v in summary.items() if k != "event"} == {
            "healthy": 4,
            "total": 4,
            "down": {},
        }
    finally:
        supervisor_controller.start(victim)


def test_a_hung_service_process_is_killed_and_restarted_alone(sandbox, supervisor_controller):
    """A process frozen by SIGSTOP is alive to supervisord ("RUNNING") but dead to its
    users: the probe finds it unhealthy, the restart replaces it (supervisord ends it with
    SIGKILL when TERM is not acted on), and every other process keeps its PID."""
    victim = "file-watcher"
    before = pids(supervisor_controller)
    frozen = int(before[victim].removeprefix("pid "))
    os.kill(frozen, signal.SIGSTOP)
    try:
        assert supervisor_controller.status(victim).state == ServiceState.RUNNING
        assert not healthy(sandbox, victim)
        dag_run = run_dag("dr_application_recovery", {"environment": "drill"})
        states = task_states(dag_run)
        assert states["verdict"] == "success", states
        after = pids(supervisor_controller)
        assert after[victim] != before[victim], "the hung process was replaced"
        assert healthy(sandbox, victim)
        untouched = {name: pid for name, pid in before.items() if name != victim}
        assert {name: after[name] for name in untouched} == untouched, "others kept their PIDs"
        events = {e["name"]: e for e in task_result(dag_run, "record")["events"]}
        assert events["recover_file_watcher"]["detail"] == "restart via supervisord"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(frozen, signal.SIGCONT)


def test_dry_run_touches_nothing(sandbox, supervisor_controller):
    victim = "notification-service"
    supervisor_controller.stop(victim)
    try:
        dag_run = run_dag(
            "dr_application_recovery",
            {"environment": "drill", "dry_run": True, "services": [victim]},
        )
        assert supervisor_controller.status(victim).state == ServiceState.STOPPED
        # what would happen is the probe's answer; the acting step is skipped by the kit
        assert task_result(dag_run, "probe")["planned"] == {victim: "restart"}
        event = task_result(dag_run, "recover_notification_service")["event"]
        assert event["status"] == "skipped" and event["detail"] == "dry run"
        assert task_result(dag_run, "record")["outcome"] == "dry_run"
    finally:
        supervisor_controller.start(victim)


def test_unknown_service_is_refused_before_anything_is_touched(sandbox, supervisor_controller):
    before = pids(supervisor_controller)
    dag_run = run_dag(
        "dr_application_recovery", {"environment": "drill", "services": ["ghost-service"]}
    )
    states = task_states(dag_run)
    assert states["guard"] == "failed" and states["verdict"] != "success"
    assert pids(supervisor_controller) == before


def test_a_partial_recovery_is_a_failed_run_listing_what_is_still_down(
    sandbox, supervisor_controller
):
    """The functional check's sample file is gone: analysis-service answers /health but
    cannot pass its functional check, so its gate breaches (clock started 29.5 minutes ago
    against the critical tier's 30) and the run fails naming it."""
    sample = sandbox.layout.test_data / "sample.mp3"
    aside = sample.with_name("sample.mp3.aside")
    shutil.move(sample, aside)
    started = (datetime.now(UTC) - timedelta(minutes=29, seconds=30)).isoformat()
    try:
        dag_run = run_dag(
            "dr_application_recovery",
            {
                "environment": "drill",
                "services": ["analysis-service", "tracklist-service"],
                "incident_started_at": started,
            },
        )
        states = task_states(dag_run)
        assert states["gate_analysis_service"] == "failed"
        assert states["gate_tracklist_service"] == "success"
        assert states["report"] == "failed" and states["verdict"] == "failed"
        timeline = task_result(dag_run, "record")
        health = timeline["details"]["health"]
        assert health["healthy"] == 1 and health["total"] == 2
        assert list(health["down"]) == ["analysis-service"]
        assert "sample" in health["down"]["analysis-service"]
    finally:
        shutil.move(aside, sample)
    assert healthy(sandbox, "analysis-service")
