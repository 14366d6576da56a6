"""dr_database_restore against the live sandbox, for real: the dump is restored beside the
live database, validated, swapped in; the old database is kept; bad inputs are refused in
the guard with the production database unchanged."""

from __future__ import annotations

import hashlib

import psycopg
import pytest
from psycopg import sql

from tracktion_dr.dag_runs import run_dag, task_result, task_states
from tracktion_dr.dag_support import endpoint
from tracktion_dr.postgres.dumps import exact_row_counts, read_manifest
from tracktion_dr.postgres.restore import aside_name, incident_tag

pytestmark = pytest.mark.sandbox


def admin():
    return endpoint("tracktion_pg_primary")


def fingerprint(database: str = "tracktion") -> str:
    """A checksum of the business tables' contents (the canary table keeps changing)."""
    digest = hashlib.sha256()
    with psycopg.connect(admin().conninfo(database), connect_timeout=10) as conn:
        for table, key in (("audio_files", "id"), ("analysis_results", "id"), ("tracklists", "id")):
            rows = conn.execute(
                sql.SQL("SELECT md5(string_agg(t::text, '|' ORDER BY {})) FROM {} t").format(
                    sql.Identifier(key), sql.Identifier("public", table)
                )
            ).fetchone()
            digest.update(str(rows[0]).encode())
    return digest.hexdigest()


def databases() -> set[str]:
    with psycopg.connect(admin().conninfo("postgres"), connect_timeout=10) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}


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
    assert states["verdict"] == "failed"
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


def test_full_restore_side_by_side(sandbox):
    with psycopg.connect(
        admin().conninfo("tracktion"), connect_timeout=10, autocommit=True
    ) as conn:
        # The incident: rows destroyed in the live database.
        conn.execute("DELETE FROM analysis_results WHERE id % 2 = 0")
    damaged = fingerprint()
    dag_run = run_dag(
        "dr_database_restore", {"environment": "drill", "database": "tracktion", "notify": True}
    )
    states = task_states(dag_run)
    assert states["verdict"] == "success", states
    run = task_result(dag_run, "guard")
    manifest = read_manifest(__import__("pathlib").Path(run["backup"]["path"]))
    with psycopg.connect(admin().conninfo("tracktion"), connect_timeout=10) as conn:
        counts = exact_row_counts(conn)
    for table in ("public.audio_files", "public.analysis_results", "public.tracklists"):
        assert counts[table] == manifest["row_counts"][table], table
    kept = aside_name("tracktion", incident_tag(run["incident_id"]))
    assert kept in databases(), "the old database is kept, never dropped"
    assert fingerprint(kept) == damaged
    timeline = task_result(dag_run, "record")
    assert timeline["outcome"] == "succeeded" and timeline["rto_achieved_seconds"] is not None
    assert timeline["data_loss_seconds"] is not None and timeline["data_loss_seconds"] > 0
    with psycopg.connect(admin().conninfo("postgres"), connect_timeout=10) as conn:
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
