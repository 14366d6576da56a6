"""dr_infrastructure_recovery: findings, and only the repairs the plan allows."""

from __future__ import annotations

import shutil

import pytest
import yaml

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states

pytestmark = pytest.mark.sandbox

PLAN = "include/config/sandbox.yaml"


def test_a_missing_storage_directory_is_recreated(sandbox, tmp_path):
    uploads = sandbox.layout.user_uploads
    shutil.move(uploads, tmp_path / "user_uploads")
    try:
        dag_run = run_dag("dr_infrastructure_recovery", {"environment": "drill"})
        states = task_states(dag_run)
        assert states["verdict"] == "success", states
        before = {f["subject"]: f for f in task_result(dag_run, "inspect")["findings"]}
        finding = before[f"user_uploads {uploads}"]
        assert finding["ok"] is False and "missing" in finding["detail"]
        assert finding["repair"] == "recreate the directory with the plan's owner and mode"
        assert before["dns localhost"]["ok"] is True
        assert before["memory"]["ok"] is True and "CPUs" in before["memory"]["detail"]
        assert before["service manager sandbox_supervisor"]["detail"].startswith(
            "supervisord answers"
        )
        actions = task_result(dag_run, "repair")["actions"]
        assert actions == {f"user_uploads {uploads}": "recreated (owner unchanged, mode default)"}
        assert uploads.is_dir()
    finally:
        if uploads.is_dir() and not any(uploads.iterdir()):
            uploads.rmdir()
        shutil.move(tmp_path / "user_uploads", uploads)


def test_unresolvable_host_and_low_disk_are_reported_not_repaired(sandbox, tmp_path, monkeypatch):
    data = yaml.safe_load(open(PLAN).read())
    data["environments"]["drill"]["infrastructure"] = {
        "hosts": ["tracktion-db.invalid"],
        "min_free_disk_percent": 100,
    }
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("DR_PLAN", str(plan_file))
    resolv = open("/etc/resolv.conf").read()
    dag_run = run_dag("dr_infrastructure_recovery", {"environment": "drill"})
    states = task_states(dag_run)
    assert states["report"] == "failed" and states["verdict"] == "failed"
    after = {f["subject"]: f for f in task_result(dag_run, "record")["details"]["findings_after"]}
    dns = after["dns tracktion-db.invalid"]
    assert dns["ok"] is False and dns["repair"] is None
    disk = [f for s, f in after.items() if s.startswith("free ")]
    assert disk and all(not f["ok"] and "below the plan's 100%" in f["detail"] for f in disk)
    assert task_result(dag_run, "repair")["actions"] == {}
    assert open("/etc/resolv.conf").read() == resolv, "system files are never rewritten"
