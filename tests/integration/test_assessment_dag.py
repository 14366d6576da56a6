"""dr_initial_assessment run for real (dag.test()) against the live sandbox.

When a service is stopped, the assessment says exactly that: the stopped service DOWN, the
rest OPERATIONAL. When an endpoint hangs, the assessment still finishes in about that
probe's timeout and names it.
"""

from __future__ import annotations

import json
import re
import socket

import pytest
import yaml

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states
from tracktion_dr.core.incident import INCIDENT_ID_PATTERN
from tracktion_dr.core.plan import PLAN_ENV_VAR, plan_path

pytestmark = pytest.mark.sandbox


def test_a_stopped_service_is_down_and_the_rest_operational(sandbox, supervisor_controller):
    supervisor_controller.stop("tracklist-service")
    try:
        dag_run = run_dag("dr_initial_assessment", {"environment": "drill"})
        result = task_result(dag_run, "probe_platform")
    finally:
        supervisor_controller.start("tracklist-service")

    assert set(task_states(dag_run).values()) == {"success"}
    statuses = {row["name"]: row["status"] for row in result["results"]}
    assert statuses.pop("tracklist-service") == "DOWN"
    assert statuses and set(statuses.values()) == {"OPERATIONAL"}, statuses
    assert {"analysis-service", "database:tracktion", "replica:main", "storage:audio_files"} <= set(
        statuses
    )
    assert result["status"] == "DOWN" and result["down"] == ["tracklist-service"]
    assert re.match(INCIDENT_ID_PATTERN, result["incident"]["incident_id"])


@pytest.fixture()
def hanging_endpoint():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/health"
    listener.close()


def test_a_hanging_endpoint_costs_only_its_timeout(
    sandbox, hanging_endpoint, tmp_path, monkeypatch
):
    data = yaml.safe_load(plan_path().read_text())
    drill = data["environments"]["drill"]
    drill["external_dependencies"] = {
        **drill.get("external_dependencies", {}),
        "hung-api": {"url": hanging_endpoint, "timeout": "3s", "severity_when_down": "down"},
    }
    plan_file = tmp_path / "hanging.yaml"
    plan_file.write_text(yaml.safe_dump(data))
    monkeypatch.setenv(PLAN_ENV_VAR, str(plan_file))

    dag_run = run_dag("dr_initial_assessment", {"environment": "drill"})
    result = task_result(dag_run, "probe_platform")

    rows = {row["name"]: row for row in result["results"]}
    hung = rows.pop("external:hung-api")
    assert hung["status"] == "DOWN" and hung["detail"] == "no answer within 3s"
    assert {row["status"] for row in rows.values()} == {"OPERATIONAL"}
    # The other probes did not wait for the hung one (loose bound: concurrency, not speed).
    assert max(row["elapsed_seconds"] for row in rows.values()) < 3


def test_a_bad_input_stops_the_run_before_any_probe(sandbox):
    dag_run = run_dag(
        "dr_initial_assessment", {"environment": "drill", "incident_started_at": "yesterday 3am"}
    )
    states = task_states(dag_run)
    assert states["open_incident"] == "failed"
    assert states["probe_platform"] == "upstream_failed"


def test_notify_sends_the_table_to_slack_and_mail(sandbox):
    webhooks_before, mail_before = (
        _lines(sandbox.layout.sink_webhooks),
        _lines(sandbox.layout.sink_mail),
    )
    dag_run = run_dag("dr_initial_assessment", {"environment": "drill", "notify": True})
    report = task_result(dag_run, "notify_channels")
    assert (report["sent"], report["failed"]) == (["slack", "email"], {})
    incident_id = task_result(dag_run, "open_incident")["incident_id"]
    webhooks = [
        json.loads(line) for line in _lines(sandbox.layout.sink_webhooks)[len(webhooks_before) :]
    ]
    slack = [record for record in webhooks if record["path"].startswith("/slack/")]
    assert slack and incident_id in json.dumps(slack[-1])
    mails = [json.loads(line) for line in _lines(sandbox.layout.sink_mail)[len(mail_before) :]]
    assert any(incident_id in mail["subject"] for mail in mails), mails


def _lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []
