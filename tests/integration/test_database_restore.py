"""dr_database_restore against the live sandbox, for real: the dump is restored beside the
live database, validated, swapped in; the old database is kept (and what it holds beyond
the dump is reported); bad inputs are refused in the guard with the production database
unchanged; a re-run of the same incident finishes, a new incident on the same dump is
refused. (Runs killed half-way: test_restore_fault_injection.py.)"""

from __future__ import annotations

import json

import psycopg
import pytest
from restore_support import (
    DATABASE,
    admin,
    connect,
    databases,
    fingerprint,
    fresh_dump,
    put_sandbox_back,
    write_after_dump_and_break,
)

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states
from tracktion_dr.airflow.support import endpoint
from tracktion_dr.postgres.dumps import exact_row_counts
from tracktion_dr.postgres.restore import MarkerState, Phase, inspect_state

pytestmark = pytest.mark.sandbox


@pytest.fixture()
def dependents():
    from tracktion_dr.core.plan import load_plan

    return load_plan().environment("drill").dependents_of(DATABASE)


def test_dry_run_prints_the_plan_and_touches_nothing(sandbox):
    before, dbs = fingerprint(), databases()
    dag_run = run_dag(
        "dr_database_restore", {"environment": "drill", "database": "tracktion", "dry_run": True}
    )
    states = task_states(dag_run)
    assert states["verdict"] == "success", states
    plan = task_result(dag_run, "guard")
    assert any("pg_restore -j 2" in action for action in plan["actions"])
    assert task_result(dag_run, "restore_beside")["event"]["status"] == "skipped"
    assert fingerprint() == before and databases() == dbs


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        (
            {"environment": "production", "database": "tracktion", "confirm": ""},
            "confirm: the production environment needs the typed confirmation 'RESTORE tracktion'",
        ),
        (
            {"environment": "production", "database": "tracktion", "confirm": "RESTORE tracktoin"},
            "confirm:",
        ),
        (
            {
                "environment": "drill",
                "database": "tracktion",
                "backup": "tracktion_19990101T000000Z.dump",
            },
            "no usable dump 'tracktion_19990101T000000Z.dump'",
        ),
    ],
)
def test_bad_inputs_are_refused_before_anything_is_touched(sandbox, conf, message, capfd):
    before, dbs = fingerprint(), databases()
    dag_run = run_dag("dr_database_restore", conf)
    states = task_states(dag_run)
    assert states["guard"] == "failed"
    assert states["stop_services"] == "upstream_failed"
    # The refusal is the run's one failure: nothing later fails on its absence.
    assert [task for task, state in states.items() if state == "failed"] == ["guard"], states
    assert states["verdict"] == "upstream_failed" and str(dag_run.state) == "failed"
    assert message in capfd.readouterr().out
    assert fingerprint() == before and databases() == dbs


def test_truncated_dump_is_never_used(sandbox, tmp_path):
    folder = sandbox.layout.logical_dumps
    (original,) = sorted(folder.glob("tracktion_*.dump"))[:1]
    copy = folder / "tracktion_20000101T000000Z.dump"
    manifest = folder / (copy.name + ".manifest.json")
    try:
        copy.write_bytes(original.read_bytes()[: original.stat().st_size // 2])
        manifest.write_text(original.with_name(original.name + ".manifest.json").read_text())
        before = fingerprint()
        dag_run = run_dag(
            "dr_database_restore",
            {"environment": "drill", "database": "tracktion", "backup": copy.name},
        )
        assert task_states(dag_run)["guard"] == "failed"
        assert fingerprint() == before
    finally:
        for path in (copy, manifest, folder / (copy.name + ".verification.json")):
            path.unlink(missing_ok=True)


def test_full_restore_side_by_side(sandbox, supervisor_controller, dependents, capfd):
    incident = fresh_dump(sandbox)
    try:
        # Rows written after the dump, then the incident: rows destroyed in the live database.
        write_after_dump_and_break(incident)
        damaged = fingerprint()
        dag_run = run_dag("dr_database_restore", incident.conf(notify=True))
        states = task_states(dag_run)
        assert states["verdict"] == "success", states
        manifest = incident.manifest
        with connect() as conn:
            counts = exact_row_counts(conn)
        for table in ("public.audio_files", "public.analysis_results", "public.tracklists"):
            assert counts[table] == manifest["row_counts"][table], table
        assert incident.kept in databases(), "the old database is kept, never dropped"
        assert incident.scratch not in databases()
        assert fingerprint(incident.kept) == damaged
        timeline = task_result(dag_run, "record")
        assert timeline["outcome"] == "succeeded" and timeline["rto_achieved_seconds"] is not None
        assert timeline["data_loss_seconds"] is not None and timeline["data_loss_seconds"] > 0
        set_aside = timeline["details"]["set_aside"]
        assert set_aside["tables"]["public.audio_files"]["rows_after_dump"] == 3
        assert set_aside["sentence"].endswith(f"written after the dump are kept in {incident.kept}")
        assert timeline["details"]["data_loss"]["rows_set_aside"] == set_aside["rows"]
        with connect("postgres") as conn:
            owner = conn.execute(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'tracktion'"
            ).fetchone()[0]
        assert owner == "tracktion", "the services' role owns the restored database, as before"
        with psycopg.connect(
            endpoint("tracktion_pg_primary").conninfo("tracktion"), connect_timeout=10
        ) as conn:
            tables_owned = conn.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner = 'tracktion'"
            ).fetchone()[0]
        assert tables_owned == 3
        gates = [e["name"] for e in timeline["events"] if e["kind"] == "gate"]
        assert gates == ["gate_database_accepts", "gate_services_healthy", "gate_functional_checks"]

        # The same incident again (a re-run after success): nothing is done twice.
        names = databases()
        rerun = run_dag("dr_database_restore", incident.conf())
        assert task_states(rerun)["verdict"] == "success"
        for task_id in ("stop_services", "restore_beside", "validate_restored", "swap"):
            assert task_result(rerun, task_id)["event"]["status"] == "skipped", task_id
        assert databases() == names

        # A new incident on the same dump: refused, nothing touched.
        before = fingerprint()
        other = run_dag(
            "dr_database_restore",
            {"environment": "drill", "database": DATABASE, "backup": incident.dump.name},
        )
        states = task_states(other)
        assert states["guard"] == "failed" and states["stop_services"] == "upstream_failed"
        assert (
            f"tracktion already is the validated restore of {incident.dump.name}, made by "
            f"incident {incident.incident_id}"
        ) in capfd.readouterr().out
        assert fingerprint() == before and databases() == names
    finally:
        put_sandbox_back(incident, supervisor_controller, dependents)


def test_in_place_restore_that_fails_validation_puts_the_original_back(
    sandbox, supervisor_controller, dependents, capfd
):
    """A dump whose manifest promises rows it does not hold (the dump file itself is
    intact, so it verifies): the restore completes, validation fails on the row counts, the
    original goes back under its name, the failed copy stays marked invalid (evidence)."""
    incident = fresh_dump(sandbox)
    manifest_path = incident.dump.with_name(incident.dump.name + ".manifest.json")
    manifest = json.loads(manifest_path.read_text())
    manifest["row_counts"]["public.tracklists"] += 1
    manifest_path.write_text(json.dumps(manifest))
    try:
        write_after_dump_and_break(incident)
        before = fingerprint()
        dag_run = run_dag("dr_database_restore", incident.conf(mode="in_place"))
        states = task_states(dag_run)
        assert states["validate_restored"] == "failed", states
        assert states["swap"] == "upstream_failed" and states["verdict"] == "failed"
        assert states["start_services"] == "success", "the services come back on the original"
        assert "public.tracklists" in capfd.readouterr().out
        assert fingerprint() == before, "the original is back under its name, untouched"
        state = inspect_state(admin(), DATABASE, incident.tag)
        assert state.phase is Phase.INVALID and state.aside is None
        assert state.scratch.marker.state is MarkerState.INVALID
        assert any("public.tracklists" in p for p in state.scratch.marker.problems)
    finally:
        put_sandbox_back(incident, supervisor_controller, dependents)
