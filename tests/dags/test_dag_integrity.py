"""Every DAG file imports cleanly, without I/O, and follows the project's DAG policy."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((ROOT / "dags").glob("*.py"))


class NetworkUsedAtParseTime(AssertionError):
    pass


@pytest.fixture(scope="module")
def dagbag():
    """Parse dags/ with every outgoing connection refused: parse time must do no I/O."""
    from airflow.dag_processing.dagbag import DagBag

    original_connect = socket.socket.connect

    def refuse(self, address):  # noqa: ARG001
        raise NetworkUsedAtParseTime(f"DAG parsing tried to connect to {address}")

    socket.socket.connect = refuse
    try:
        bag = DagBag(dag_folder=str(ROOT / "dags"))
    finally:
        socket.socket.connect = original_connect
    return bag


def test_dag_files_exist():
    assert DAG_FILES, "no DAG files under dags/"


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_each_file_defines_exactly_one_dag(dagbag, path):
    dags = [dag for dag in dagbag.dags.values() if Path(dag.fileloc) == path]
    assert len(dags) == 1, f"{path.name} defines {len(dags)} DAGs"
    assert dags[0].dag_id == path.stem, "the file is named after its DAG id"


def test_dag_ids_follow_the_contract(dagbag):
    for dag_id in dagbag.dag_ids:
        assert dag_id.startswith("dr_"), dag_id


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_policy(dagbag, path):
    (dag,) = [d for d in dagbag.dags.values() if Path(d.fileloc) == path]
    assert dag.doc_md and len(dag.doc_md) > 200, "a DAG explains itself in doc_md"
    assert "dr" in dag.tags and len(dag.tags) >= 2
    assert dag.owner not in ("", "airflow")
    for task in dag.tasks:
        assert task.retries is not None, f"{task.task_id} has no retries setting"
        assert task.owner == dag.owner
    for name in dag.params:
        param = dag.params.get_param(name)
        schema = param.schema
        assert param.description, f"param {name} has no description"
        assert schema.get("type"), f"param {name} is untyped"
        assert schema.get("title"), f"param {name} has no title"


def test_common_params_on_every_dr_dag(dagbag):
    common = {"incident_id", "incident_started_at", "environment", "dry_run", "notify"}
    for dag in dagbag.dags.values():
        if dag.tags and "scenario" in dag.tags:
            assert common <= set(dag.params), f"{dag.dag_id} misses {common - set(dag.params)}"


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_each_dag_serializes(dagbag, path):
    """What the dag-processor stores: a DAG that parses but does not serialize never shows up."""
    from airflow.serialization.serialized_objects import DagSerialization

    (dag,) = [d for d in dagbag.dags.values() if Path(d.fileloc) == path]
    DagSerialization.to_dict(dag)


def test_every_recovery_and_drill_run_publishes_a_linked_report(dagbag):
    """Each scenario and drill DAG has a ``publish`` task that runs whatever happened
    before it and carries the "DR report" link in the UI (kept through serialization)."""
    from airflow.serialization.serialized_objects import DagSerialization

    reporting = [
        dag
        for dag in dagbag.dags.values()
        if {"scenario", "drill", "validation"} & set(dag.tags or [])
        and "assessment" not in dag.tags  # a probe, not a recovery: its result is the table
    ]
    assert len(reporting) >= 11, sorted(d.dag_id for d in reporting)
    for dag in reporting:
        assert "publish" in dag.task_ids, f"{dag.dag_id} writes no report"
        publish = dag.get_task("publish")
        assert publish.trigger_rule == "all_done", dag.dag_id
        assert "verdict" in publish.downstream_task_ids, dag.dag_id
        serialized = DagSerialization.to_dict(dag)["dag"]["tasks"]
        (encoded,) = [t["__var"] for t in serialized if t["__var"]["task_id"] == "publish"]
        links = encoded["_operator_extra_links"]
        assert links == {"DR report": "_link_DrReportLink"}, (dag.dag_id, links)


@pytest.mark.parametrize("plan_file", ["sandbox.yaml", "tracktion.yaml"])
def test_every_alert_route_reaches_a_recovery_that_accepts_its_conf(dagbag, plan_file):
    """Each route of both plans, with its labels filled, makes an incident the guard
    accepts, and the recovery conf derived from it carries only params the recovery DAG
    declares (and every param it requires): no alert can reach a recovery that refuses the
    incident's conf."""
    import re

    from tracktion_dr.core.plan import load_plan
    from tracktion_dr.scenarios import recovery_routes as routes
    from tracktion_dr.scenarios.alerts import fill_labels
    from tracktion_dr.scenarios.incident_response import resolve_request

    plan = load_plan(ROOT / "include" / "config" / plan_file)
    for scenario in plan.incident_response.scenarios:
        assert scenario in dagbag.dags, f"{plan_file}: scenario {scenario} is not a DAG"
        assert scenario in routes.RECOVERIES, f"{scenario}: the incident response cannot start it"
    for route in plan.alert_routes:
        if route.dag_id != "dr_incident_response":
            continue
        environment = plan.environment(route.conf["environment"])
        # A label value that names a real component, for each label the route uses.
        components = routes.component_names(environment)
        switchable = [
            f"external:{name}"
            for name, dependency in environment.external_dependencies.items()
            if dependency.fallbacks
        ]
        labels = {}
        for name in set(re.findall(r"\{(\w+)\}", str(route.conf))):
            labels[name] = next(
                c.partition(":")[2] or c
                for c in components
                if (name == "service" and ":" not in c and c != "backups")
                or (name == "dependency" and c in switchable)
                or c.startswith(
                    {"database": "database:", "cluster": "replica:", "area": "storage:"}.get(
                        name, "?"
                    )
                )
            )
        conf = fill_labels(route.conf, labels, route.name)
        request = resolve_request(plan, {**conf, "description": "x"})
        incident = {
            "incident_id": "DR-20261126-010000",
            "started_at": "2026-11-26T01:00:00+00:00",
            "environment": conf["environment"],
            "dry_run": False,
            "notify": True,
        }
        if not request.scenario:
            continue
        recovery = routes.recovery_conf(
            environment,
            request.scenario,
            affected=request.affected,
            scenario_conf=request.scenario_conf,
            incident=incident,
            approved_by=None if request.auto_recover else "commander",
        )
        params = dagbag.dags[request.scenario].params
        unknown = set(recovery) - set(params)
        assert not unknown, f"{route.name}: {request.scenario} has no params {unknown}"
        for name in params:
            schema = params.get_param(name).schema
            enum = schema.get("enum")
            if name in recovery and enum:
                assert recovery[name] in enum, f"{route.name}: {name}={recovery[name]!r}"


def test_every_task_reports_its_failure_through_the_dr_notifier(dagbag):
    """No silent failure: a crashed, timed-out or killed task of any DAG is posted once."""
    from tracktion_dr.airflow.notifier import DrNotifier

    for dag in dagbag.dags.values():
        for task in dag.tasks:
            callbacks = task.on_failure_callback
            callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
            assert any(isinstance(c, DrNotifier) for c in callbacks), (
                f"{dag.dag_id}.{task.task_id} has no DrNotifier failure callback"
            )


def test_no_wait_holds_a_worker_slot(dagbag):
    """Every RTO gate can defer to the triggerer (a named check the triggerer rebuilds),
    and DAGs run other DAGs through the scheduler
    (``TriggerDagRunOperator``, waiting deferrably when they wait), never ``dag.test()``."""
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator

    from tracktion_dr.airflow.dag_kit import RtoGate
    from tracktion_dr.airflow.gate_triggers import NamedCheck

    gates = 0
    for dag in dagbag.dags.values():
        for task in dag.tasks:
            where = f"{dag.dag_id}.{task.task_id}"
            if isinstance(task, RtoGate):
                gates += 1
                assert isinstance(task.check, NamedCheck), f"{where}: a bare callable cannot defer"
            if isinstance(task, TriggerDagRunOperator) and task.wait_for_completion:
                assert task.deferrable, f"{where} waits for its DAG run in a worker slot"
    assert gates >= 19
    for path in DAG_FILES:
        assert ".test(" not in path.read_text(), f"{path.name} runs a DAG with dag.test()"
