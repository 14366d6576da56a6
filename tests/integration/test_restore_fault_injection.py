"""dr_database_restore survives its own worker dying, and tells the truth.

Runbook-style, for each moment a worker can die:

    Given a fresh dump of tracktion, rows written after it, and rows destroyed (the incident)
    When  dr_database_restore runs in a child process group
    And   the whole group is SIGKILLed at <moment> (found by polling the real state)
    And   the run is triggered again with the same incident id and clock start, no manual step
    Then  tracktion holds exactly the dump's content (row counts vs the manifest, business
          rows byte for byte), no committed row from before the dump is missing
    And   the services are healthy
    And   there is exactly one set-aside copy, tracktion_pre_<incident>, holding the rows
          written after the dump, and the run reports them: count per table equal to an
          exact anti-join done by the test
    And   no half-restored copy is left without the run saying so; after the swap nothing is
          restored again and the services are not stopped again (no second outage)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psycopg
import pytest
from harness.killable_run import KillableRun, incident_task_states
from psycopg import sql
from restore_support import (
    DATABASE,
    ROW_IDENTITY,
    Incident,
    admin,
    connect,
    databases,
    fingerprint,
    fresh_dump,
    put_sandbox_back,
    rows_missing_from,
    write_after_dump_and_break,
)

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states
from tracktion_dr.postgres.restore import MarkerState, Phase, inspect_state

pytestmark = pytest.mark.sandbox

DAG_ID = "dr_database_restore"


# --- the real state the kill points poll ------------------------------------------------------


def child_task_states(incident_id: str) -> dict[str, str]:
    """Task instance states of the (child's) run of this incident, from the metadata DB."""
    return incident_task_states(DAG_ID, incident_id)


def backends(database: str | None = None, application: str | None = None) -> list[dict]:
    with connect("postgres") as conn:
        rows = conn.execute(
            "SELECT pid, datname, application_name, wait_event_type, state, query"
            " FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
        ).fetchall()
    found = [
        dict(zip(("pid", "datname", "application", "wait", "state", "query"), r, strict=True))
        for r in rows
    ]
    return [
        b
        for b in found
        if (database is None or b["datname"] == database)
        and (application is None or b["application"] == application)
    ]


def phase(incident: Incident) -> Phase:
    return inspect_state(admin(), DATABASE, incident.tag).phase


def service_states(supervisor_controller, services: list[str]) -> dict[str, str]:
    return {s: str(supervisor_controller.status(s).state) for s in services}


@dataclass
class Moment:
    """Where to kill, and what the state must look like right after (proof we hit it)."""

    name: str
    wait: Callable[[KillableRun, Incident, dict], object]
    expect_after_kill: set[Phase]
    mode: str = "side_by_side"


def after_the_guard(run: KillableRun, incident: Incident, ctx: dict) -> object:
    return run.wait_until(
        lambda: child_task_states(incident.incident_id).get("guard") == "success",
        what="the guard succeeded",
    )


def during_pg_restore(run: KillableRun, incident: Incident, ctx: dict) -> object:
    return run.wait_until(
        lambda: backends(incident.scratch, "pg_restore"),
        what=f"pg_restore is writing into {incident.scratch}",
        interval=0.02,
    )


def during_validation(run: KillableRun, incident: Incident, ctx: dict) -> object:
    return run.wait_until(
        lambda: (
            child_task_states(incident.incident_id).get("validate_restored") == "running"
            and backends(incident.scratch)
        ),
        what=f"validation is reading {incident.scratch}",
        interval=0.02,
    )


def between_the_renames(run: KillableRun, incident: Incident, ctx: dict) -> object:
    """Hold the lock the second rename needs (a COMMENT on the validated copy, in an open
    transaction of a session on another database: the swap ends sessions on the copy
    itself only), so the swap stops with the live database moved aside and the restored
    copy not yet renamed in; kill then."""
    run.wait_until(lambda: phase(incident) is Phase.VALIDATED, what="the copy is validated")
    holder = connect("postgres")
    ctx["holder"] = holder
    comment = holder.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
        (incident.scratch,),
    ).fetchone()[0]
    holder.execute(
        sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(incident.scratch), sql.Literal(comment)
        )
    )
    waiting = run.wait_until(
        lambda: [
            b
            for b in backends("postgres")
            if b["wait"] == "Lock" and "RENAME TO" in (b["query"] or "")
        ],
        what="the swap's second rename waits",
    )
    ctx["waiting_pid"] = waiting[0]["pid"]
    return waiting


def right_after_the_swap(run: KillableRun, incident: Incident, ctx: dict) -> object:
    return run.wait_until(
        lambda: phase(incident) is Phase.SWAPPED, what="tracktion is the restored copy"
    )


def during_service_start(run: KillableRun, incident: Incident, ctx: dict) -> object:
    services, controller = ctx["services"], ctx["controller"]

    def some_up_some_not():
        if child_task_states(incident.incident_id).get("start_services") != "running":
            return None
        states = service_states(controller, services)
        up = [s for s, state in states.items() if state == "running"]
        return states if up and len(up) < len(services) else None

    return run.wait_until(some_up_some_not, what="start_services is half-way", interval=0.02)


MOMENTS = [
    Moment("after the guard", after_the_guard, {Phase.NOT_STARTED}),
    Moment("during pg_restore", during_pg_restore, {Phase.INCOMPLETE}),
    Moment("during pg_restore, in place", during_pg_restore, {Phase.INCOMPLETE}, "in_place"),
    Moment("during validation", during_validation, {Phase.RESTORED}),
    Moment("between the two renames", between_the_renames, {Phase.VALIDATED}),
    Moment("right after the swap", right_after_the_swap, {Phase.SWAPPED}),
    Moment("during service start", during_service_start, {Phase.SWAPPED}),
]


@pytest.fixture()
def dependents():
    from tracktion_dr.core.plan import load_plan

    return load_plan().environment("drill").dependents_of(DATABASE)


@pytest.mark.parametrize("moment", MOMENTS, ids=[m.name.replace(" ", "_") for m in MOMENTS])
def test_killed_run_is_finished_by_a_rerun_of_the_same_incident(
    sandbox, supervisor_controller, dependents, tmp_path, moment
):
    incident = fresh_dump(sandbox)
    ctx: dict = {"services": dependents, "controller": supervisor_controller}
    try:
        write_after_dump_and_break(incident)
        conf = incident.conf(mode=moment.mode)

        # When the run dies at the moment
        with KillableRun.dag_test(DAG_ID, conf, log_path=tmp_path / "killed.log") as run:
            moment.wait(run, incident, ctx)
            run.kill()
            assert run.wait_exit() == -9
        if "holder" in ctx:
            # The orphaned rename abandons itself (client_connection_check_interval):
            # wait for that, then let go of the lock. Nothing finishes it but the re-run.
            _wait_backend_gone(ctx["waiting_pid"])
            ctx["holder"].rollback()
            ctx["holder"].close()
        after_kill = inspect_state(admin(), DATABASE, incident.tag)
        assert after_kill.phase in moment.expect_after_kill, after_kill.describe()
        if moment.name.startswith("between"):
            assert after_kill.live is None and after_kill.aside is not None, after_kill.describe()

        # And the same incident is triggered again, with no manual step
        dag_run = run_dag(DAG_ID, conf)
        states = task_states(dag_run)
        assert states["verdict"] == "success", states

        _then_the_database_is_the_dump(incident)
        _then_services_are_healthy(dependents)
        _then_one_kept_copy_holds_the_later_rows(incident, dag_run)
        _then_nothing_was_done_twice(incident, dag_run, after_kill.phase)
    finally:
        if "holder" in ctx and not ctx["holder"].closed:
            ctx["holder"].rollback()
            ctx["holder"].close()
        put_sandbox_back(incident, supervisor_controller, dependents)


def _wait_backend_gone(pid: int) -> None:
    import time

    deadline = time.monotonic() + 60  # a safety net: the server checks every second
    while [b for b in backends() if b["pid"] == pid]:
        assert time.monotonic() < deadline, f"backend {pid} kept waiting after its client died"
        time.sleep(0.1)


def _then_the_database_is_the_dump(incident: Incident) -> None:
    manifest_counts = incident.manifest["row_counts"]
    with connect() as conn:
        for table, expected in manifest_counts.items():
            schema, _, name = table.partition(".")
            if table == "dr_canary.heartbeat":
                continue  # the canary writes again once tracktion is back: checked below
            actual = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))
            ).fetchone()[0]
            assert actual == expected, f"{table}: {actual} rows, the dump has {expected}"
    # Every committed row from before the dump is there, byte for byte.
    assert fingerprint(up_to=incident.ids_at_dump) == incident.fingerprint_at_dump
    marker = inspect_state(admin(), DATABASE, incident.tag).marker
    baseline = marker.baseline["tables"]["dr_canary.heartbeat"]
    with connect() as conn:
        kept_heartbeats = conn.execute(
            "SELECT count(*) FROM dr_canary.heartbeat WHERE id <= %s", (baseline["max_key"],)
        ).fetchone()[0]
    assert kept_heartbeats == manifest_counts["dr_canary.heartbeat"]


def _then_services_are_healthy(dependents: list[str]) -> None:
    from tracktion_dr.core.plan import load_plan
    from tracktion_dr.services.checks import service_health

    healthy, detail = service_health(load_plan().environment("drill"), dependents)
    assert healthy, detail


def _then_one_kept_copy_holds_the_later_rows(incident: Incident, dag_run) -> None:
    names = databases()
    ours = sorted(n for n in names if n.startswith(f"{DATABASE}_") and incident.tag in n)
    assert ours == [incident.kept], f"exactly one set-aside copy, no scratch left: {ours}"
    measured = task_result(dag_run, "measure_data_loss")
    set_aside = measured["set_aside"]
    assert set_aside["kept_as"] == incident.kept
    # The DAG's cheap measure equals an exact anti-join, table by table.
    for table in ROW_IDENTITY:
        truth = rows_missing_from(incident.kept, DATABASE, table)
        reported = set_aside["tables"].get(table, {}).get("rows_after_dump", 0)
        assert reported == truth, f"{table}: reported {reported}, anti-join says {truth}"
    assert set_aside["tables"]["public.audio_files"]["rows_after_dump"] == 3
    rows, tables = set_aside["rows"], set_aside["table_count"]
    sentence = f"{rows} rows in {tables} tables written after the dump are kept in {incident.kept}"
    assert set_aside["sentence"] == sentence
    assert sentence in measured["event"]["detail"]
    timeline = task_result(dag_run, "record")
    assert timeline["outcome"] == "succeeded"
    assert timeline["details"]["set_aside"]["sentence"] == sentence
    assert timeline["details"]["kept_as"] == incident.kept
    loss = timeline["details"]["data_loss"]
    assert loss["rows_set_aside"] == rows and loss["kept_as"] == incident.kept
    assert timeline["data_loss_seconds"] == loss["seconds"] and loss["seconds"] > 0


def _then_nothing_was_done_twice(incident: Incident, dag_run, phase_after_kill: Phase) -> None:
    restored = task_result(dag_run, "restore_beside")
    stopped = task_result(dag_run, "stop_services")
    if phase_after_kill is Phase.RESTORED:
        # Complete but not validated: validated now, not restored again.
        assert restored["event"]["status"] == "skipped", restored
        assert task_result(dag_run, "validate_restored")["event"]["status"] == "succeeded"
    if phase_after_kill is Phase.INCOMPLETE:
        # The half-restored copy was dropped, and the run says so.
        assert restored["dropped"] and incident.scratch in restored["dropped"], restored
        assert restored["dropped"] in restored["event"]["detail"]
    if phase_after_kill in (Phase.VALIDATED, Phase.SWAPPED):
        assert restored["event"]["status"] == "skipped", restored
        assert task_result(dag_run, "validate_restored")["event"]["status"] == "skipped"
    if phase_after_kill is Phase.SWAPPED:
        assert stopped["event"]["status"] == "skipped", "services must not be stopped again"
    with connect("postgres") as conn:
        allowed = dict(
            conn.execute(
                "SELECT datname, datallowconn FROM pg_database WHERE datname = ANY(%s)",
                ([DATABASE, incident.kept],),
            ).fetchall()
        )
    assert allowed == {DATABASE: True, incident.kept: True}
    marker = inspect_state(admin(), DATABASE, incident.tag).marker
    assert marker.state is MarkerState.VALIDATED and marker.incident_id == incident.incident_id
    with psycopg.connect(admin().conninfo(DATABASE), connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
