"""dr_post_recovery_validation for real (dag.test()) against the live sandbox.

On a healthy sandbox six checks pass with real evidence and monitoring is *skipped* (the
sandbox configures no Prometheus/Grafana) - shown as skipped, never as passed. When a
config file's permission is wrong, security_posture fails naming the file, and so does
the run. The report written from the ledger lists each check's real status.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states

pytestmark = pytest.mark.sandbox


def test_healthy_sandbox_passes_six_checks_and_skips_monitoring(sandbox):
    dag_run = run_dag("dr_post_recovery_validation", {"environment": "drill"})
    states = task_states(dag_run)
    assert states["verdict"] == "success", states
    recorded = task_result(dag_run, "record")
    checks = {c["name"]: c for c in recorded["details"]["checks"]}
    assert checks["monitoring_systems"]["status"] == "skipped"
    assert "no monitoring" in checks["monitoring_systems"]["detail"]
    assert {n for n, c in checks.items() if c["status"] == "passed"} == {
        "system_health",
        "data_integrity",
        "application_functionality",
        "performance_baseline",
        "security_posture",
        "backup_systems",
    }
    evidence = checks["security_posture"]["evidence"]
    assert 55432 in evidence["listening_ports"] and evidence["unexpected_ports"] == []
    assert set(checks["performance_baseline"]["evidence"]["seconds"]) == {
        "analysis-service",
        "file-watcher",
        "tracklist-service",
        "notification-service",
    }
    assert checks["data_integrity"]["evidence"]["tracktion"]["rows"] > 0

    published = task_result(dag_run, "publish")
    report = json.loads(Path(published["paths"]["json"]).read_text())
    assert {c["name"]: c["status"] for c in report["checks"]} == {
        n: c["status"] for n, c in checks.items()
    }
    page = Path(published["paths"]["html"]).read_text()
    assert "SKIPPED" in page and "<svg" in page


def test_a_wrong_config_file_permission_fails_security_posture(sandbox):
    config = sandbox.layout.app_config / "logging.conf"
    mode = config.stat().st_mode & 0o777
    config.chmod(0o644)
    try:
        dag_run = run_dag("dr_post_recovery_validation", {"environment": "drill"})
    finally:
        config.chmod(mode)
    states = task_states(dag_run)
    assert states["security_posture"] == "failed"
    assert states["verdict"] == "failed"
    assert states["system_health"] == "success"
    recorded = task_result(dag_run, "record")
    assert recorded["outcome"] == "failed"
    assert "security_posture" in recorded["details"]["failed_tasks"]
    check = next(c for c in recorded["details"]["checks"] if c["name"] == "security_posture")
    assert check["status"] == "failed"
    assert f"{config} is 0644, at most 0640" in check["detail"]
