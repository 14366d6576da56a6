"""dr_config_recovery against the sandbox's real configuration folder and snapshots."""

from __future__ import annotations

import json
import logging
import secrets
import shutil
from datetime import UTC, datetime, timedelta

import pytest

from tracktion_dr.backups import snapshots as writer
from tracktion_dr.dag_runs import run_dag, task_result, task_states
from tracktion_dr.files import snapshots
from tracktion_dr.files.config_restore import tree_digest

pytestmark = pytest.mark.sandbox


def later_snapshot(sandbox, tmp_path, edit, environment=None) -> object:
    """A snapshot newer than every other, made from a copy of the live config + ``edit``
    (and ``environment`` as its environment snapshot)."""
    copy = tmp_path / "config"
    shutil.copytree(sandbox.layout.app_config, copy)
    edit(copy)
    newest = snapshots.list_snapshots(f"file://{sandbox.layout.config_backups}", "configuration")
    later = max(datetime.now(UTC), newest[-1].taken_at) + timedelta(seconds=1)
    return writer.config_snapshot(
        [str(copy)], sandbox.layout.config_backups, environment=environment, now=later
    )


def set_aside(snapshot, folder) -> None:
    """Take a test's snapshot (and its manifest) out of the backups, so "latest" is the
    sandbox's own again."""
    for path in (snapshot, snapshot.with_name(snapshot.name + ".manifest.json")):
        shutil.move(path, folder / path.name)


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_a_bad_config_push_is_recovered_from_the_snapshot(sandbox, tmp_path):
    config = sandbox.layout.app_config
    app_json = config / "app.json"
    good = json.loads(app_json.read_text())
    # The newest snapshot: today's configuration, and an environment with one variable
    # the plan does not allow (the backup DAG never writes one; an older archive might).
    snapshot = later_snapshot(
        sandbox,
        tmp_path,
        lambda c: None,
        environment={
            "TRACKTION_API_TOKEN": f"test-{secrets.token_hex(12)}",
            "TRACKTION_STORAGE_PATH": str(sandbox.layout.app_data),
            "AWS_SECRET_ACCESS_KEY": "not-allowed-by-the-plan",
        },
    )
    app_json.write_text('{"app": "tracktion", "storage": ')  # a truncated push
    library_log = logging.getLogger("tracktion_dr")  # every library module logs below it
    collected = Collect()
    library_log.addHandler(collected)
    try:
        dag_run = run_dag("dr_config_recovery", {"environment": "drill"})
    finally:
        library_log.removeHandler(collected)
        set_aside(snapshot, tmp_path)
    states = task_states(dag_run)
    assert states["verdict"] == "success", states
    assert states["rollback"] == "skipped"
    assert json.loads(app_json.read_text()) == good
    assert oct(app_json.stat().st_mode & 0o777) == "0o644"
    assert oct((config / "logging.conf").stat().st_mode & 0o777) == "0o640"
    incident_id = task_result(dag_run, "guard")["incident_id"]
    aside = config.with_name(f"config.before-{incident_id}")
    assert (aside / "app.json").read_text().startswith('{"app": "tracktion", "storage": ')
    # environment: only the allowed prefix, in a 0600 file, and no value in any log
    env_file = sandbox.layout.app / "environment.env"
    restored = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert set(restored) == {"TRACKTION_API_TOKEN", "TRACKTION_STORAGE_PATH"}
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    logged = "\n".join(collected.messages)
    assert "2 variable(s) restored" in logged, "the restore was logged..."
    assert restored["TRACKTION_API_TOKEN"] not in logged, "...without any value"
    assert "not-allowed-by-the-plan" not in logged
    results = json.dumps([task_result(dag_run, t) for t in ("guard", "restore", "record")])
    assert restored["TRACKTION_API_TOKEN"] not in results, "nor in XCom or the ledger record"
    result = task_result(dag_run, "restore")["result"]
    assert result["environment_restored"] == 2 and result["environment_refused"] == 1


def test_a_corrupt_snapshot_is_refused_and_nothing_live_changes(sandbox, tmp_path):
    bad = later_snapshot(
        sandbox, tmp_path, lambda c: (c / "services.yaml").write_text("services: [unclosed\n")
    )
    before = tree_digest([str(sandbox.layout.app_config)])
    try:
        dag_run = run_dag("dr_config_recovery", {"environment": "drill"})
        states = task_states(dag_run)
        assert states["restore"] == "failed" and states["verdict"] == "failed"
        assert task_result(dag_run, "guard")["snapshot"]["name"] == bad.name
        rollback = task_result(dag_run, "rollback")["event"]
        assert rollback["detail"] == "nothing was swapped: the live configuration was never touched"
        assert tree_digest([str(sandbox.layout.app_config)]) == before
    finally:
        set_aside(bad, tmp_path)


def test_failed_health_gate_rolls_back_to_the_safety_snapshot(sandbox, tmp_path):
    """The restored config is valid but the platform does not come back (analysis-service's
    functional sample is gone): the gate breaches and the live config is rolled back."""
    changed = later_snapshot(
        sandbox,
        tmp_path,
        lambda c: (c / "app.json").write_text(json.dumps({"app": "tracktion", "v": 2}) + "\n"),
    )
    before = tree_digest([str(sandbox.layout.app_config)])
    sample = sandbox.layout.test_data / "sample.mp3"
    shutil.move(sample, tmp_path / "sample.mp3")
    started = (datetime.now(UTC) - timedelta(minutes=29, seconds=30)).isoformat()
    try:
        dag_run = run_dag(
            "dr_config_recovery", {"environment": "drill", "incident_started_at": started}
        )
        states = task_states(dag_run)
        assert states["restore"] == "success" and states["gate_services"] == "failed"
        assert states["rollback"] == "success" and states["verdict"] == "failed"
        assert tree_digest([str(sandbox.layout.app_config)]) == before
        timeline = task_result(dag_run, "record")
        assert timeline["details"]["rolled_back"] is True
        assert timeline["details"]["failed_tasks"] == ["gate_services"]
    finally:
        shutil.move(tmp_path / "sample.mp3", sample)
        set_aside(changed, tmp_path)
