"""No silent task failure: the failure callback every DAG gets from ``DEFAULT_ARGS``.

When a task crashes (after its retry) or times out in a real ``dag.test()`` run, Then the
sink receives exactly one Slack message per failed task, with the link to the task, its
try number and the exception's class. When a backup DAG's task is SIGKILLed mid-run, Then
the callback the scheduler would have the DAG processor run reports it once.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest

from tracktion_dr.airflow.dag_runs import load_dag, task_states

pytestmark = pytest.mark.sandbox
ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "dags_fixtures"
BASE_URL = "http://airflow.tracktion.test:8080"


class SlackSink:
    def __init__(self, layout):
        self.path = layout.sink_webhooks
        self.start = len(self.path.read_text().splitlines()) if self.path.exists() else 0

    def texts(self, needle: str) -> list[str]:
        lines = self.path.read_text().splitlines()[self.start :] if self.path.exists() else []
        records = [json.loads(line) for line in lines]
        return [
            r["json"]["text"]
            for r in records
            if r["path"].startswith("/slack/") and needle in r.get("json", {}).get("text", "")
        ]


def test_a_crashed_and_a_timed_out_task_are_each_reported_once(sandbox, monkeypatch):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", BASE_URL)
    sink = SlackSink(sandbox.layout)
    dag_run = load_dag("dr_failure_probe", FIXTURES).test()
    states = task_states(dag_run)
    assert states == {"crash": "failed", "hang": "failed", "fine": "success"}, states

    (crash,) = sink.texts("dr_failure_probe.crash")  # once, though it ran twice
    assert "Task failed" in crash
    assert "*try*: 2" in crash
    assert "RuntimeError: probe crash: the scratch disk is full" in crash
    assert f"{BASE_URL}/dags/dr_failure_probe/runs/{quote(dag_run.run_id)}/tasks/crash" in crash
    (hang,) = sink.texts("dr_failure_probe.hang")
    assert "Task timed out" in hang and "AirflowTaskTimeout" in hang
    assert not sink.texts("dr_failure_probe.fine")


def _newest_running_ti(dag_id: str, task_id: str):
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        run_id = session.execute(
            select(DagRun.run_id).where(DagRun.dag_id == dag_id).order_by(DagRun.id.desc()).limit(1)
        ).scalar()
        if run_id is None:
            return None
        state = session.execute(
            select(TaskInstance.state).where(
                TaskInstance.dag_id == dag_id,
                TaskInstance.run_id == run_id,
                TaskInstance.task_id == task_id,
            )
        ).scalar()
    return run_id if str(state) == "running" else None


def _heartbeat_timeout_callback(dag_id: str, run_id: str, task_id: str) -> None:
    """What the scheduler does for a task whose worker died (``scheduler_job_runner``: a
    ``TaskCallbackRequest`` for the heartbeat timeout, no retry left) and what the DAG
    processor then runs (``dag_processing.processor._execute_task_callbacks``): the real
    callback path, driven by hand because ``dag.test()`` has no scheduler."""
    import structlog
    from airflow.api_fastapi.execution_api.datamodels.taskinstance import (
        DagRun as DRDataModel,
    )
    from airflow.api_fastapi.execution_api.datamodels.taskinstance import TIRunContext
    from airflow.callbacks.callback_requests import TaskCallbackRequest
    from airflow.dag_processing.dagbag import DagBag
    from airflow.dag_processing.processor import _execute_task_callbacks
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState

    with create_session() as session:
        ti = (
            session.query(TaskInstance)
            .filter_by(dag_id=dag_id, run_id=run_id, task_id=task_id)
            .one()
        )
        request = TaskCallbackRequest(
            filepath=f"{dag_id}.py",
            bundle_name="dags-folder",
            bundle_version=None,
            ti=ti,
            msg="Task Instance heartbeat timed out (its process was killed)",
            task_callback_type=TaskInstanceState.FAILED,
            context_from_server=TIRunContext(
                dag_run=DRDataModel.model_validate(ti.dag_run, from_attributes=True),
                max_tries=ti.max_tries,
                variables=[],
                connections=[],
                xcom_keys_to_clear=[],
            ),
        )
    dagbag = DagBag(dag_folder=str(ROOT / "dags" / f"{dag_id}.py"))
    _execute_task_callbacks(dagbag, request, structlog.get_logger())


def test_a_backup_task_killed_mid_run_is_reported_once(sandbox, tmp_path, monkeypatch):
    from harness.killable_run import KillableRun

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", BASE_URL)
    sink = SlackSink(sandbox.layout)
    conf = {"environment": "drill", "notify": True}
    with KillableRun.dag_test("dr_backup_base", conf, log_path=tmp_path / "run.log") as run:
        run_id = run.wait_until(
            lambda: _newest_running_ti("dr_backup_base", "base_backup"),
            what="base_backup is running",
        )
        run.kill()
        assert run.wait_exit() == -9
    # The task ran inside the killed process: nothing could run its callback there.
    assert not sink.texts("dr_backup_base.base_backup")

    _heartbeat_timeout_callback("dr_backup_base", run_id, "base_backup")
    (text,) = sink.texts("dr_backup_base.base_backup")
    assert "Task failed" in text and "killed" in text
    assert f"{BASE_URL}/dags/dr_backup_base/runs/{quote(run_id)}/tasks/base_backup" in text
