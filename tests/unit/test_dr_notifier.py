"""The DR notifier's messages, from callback contexts shaped like Airflow's."""

from __future__ import annotations

from types import SimpleNamespace

from tracktion_dr.airflow.notifier import (
    DrNotifier,
    already_notified,
    failure_message,
    hitl_message,
    mark_notified,
    short_reason,
)

TI = SimpleNamespace(
    dag_id="dr_backup_base",
    task_id="base_backup",
    run_id="manual__2026-11-26T02:03:04+00:00",
    try_number=2,
    map_index=-1,
    log_url="http://airflow.example/dags/dr_backup_base/runs/r/tasks/base_backup?try_number=2",
)


class AirflowTaskTimeout(Exception):
    pass


def test_failure_message_names_the_task_try_reason_and_link():
    exc = RuntimeError("disk full\nTraceback line that stays in the log")
    message = failure_message({"ti": TI, "exception": exc, "dag_run": SimpleNamespace(conf={})})
    assert message.title == "Task failed: dr_backup_base.base_backup"
    assert message.fields["try"] == "2"
    assert message.fields["reason"] == "RuntimeError: disk full"
    assert message.fields["link"] == TI.log_url
    assert "Traceback" not in message.slack_text()


def test_a_timeout_says_timed_out_and_a_killed_task_says_why_no_exception():
    timed_out = failure_message({"ti": TI, "exception": AirflowTaskTimeout("took 60s")})
    assert timed_out.title.startswith("Task timed out")
    killed = failure_message({"ti": TI})
    assert "killed" in killed.fields["reason"]


def test_reasons_are_short():
    assert len(short_reason(ValueError("x" * 5000))) <= 300


def test_an_already_reported_failure_is_not_sent_again():
    exc = mark_notified(RuntimeError("Base backup failed"))
    assert already_notified(exc) and not already_notified(RuntimeError("x"))
    notifier = DrNotifier(kind="failure")
    assert notifier.message({"ti": TI, "exception": exc}) is None
    assert notifier.message({"ti": TI, "exception": RuntimeError("x")}) is not None


def test_hitl_message_carries_the_question_and_where_to_answer():
    task = SimpleNamespace(
        subject="Promote the replica?", body="Primary is gone.", options=["Promote", "Wait"]
    )
    ti = SimpleNamespace(dag_id="dr_failover", task_id="approve", run_id="manual__x", map_index=-1)
    message = hitl_message(
        {
            "ti": ti,
            "task": task,
            "dag_run": SimpleNamespace(conf={"incident_id": "DR-20261126-020304"}),
        },
        title=None,
        text=None,
    )
    assert message.title == "Promote the replica?"
    assert "Primary is gone." in message.text
    link = message.fields["answer here"]
    assert link.endswith(
        "/dags/dr_failover/runs/manual__x/tasks/approve/required_actions?map_index=-1"
    )
    assert message.incident_id == "DR-20261126-020304"
    assert message.fields["options"] == "Promote, Wait"


def test_hitl_link_is_airflows_own_for_a_real_hitl_operator(monkeypatch):
    from airflow.providers.standard.operators.hitl import HITLOperator

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow.example:8080")
    approve = HITLOperator(
        task_id="approve", subject="Swap the restored database in?", options=["Swap", "Abort"]
    )
    ti = SimpleNamespace(dag_id="dr_database_restore", task_id="approve", run_id="r1", map_index=-1)
    message = hitl_message({"ti": ti, "task": approve}, title=None, text=None)
    assert message.title == "Swap the restored database in?"
    assert message.fields["answer here"] == (
        "http://airflow.example:8080/dags/dr_database_restore/runs/r1/tasks/approve"
        "/required_actions?map_index=-1"
    )
