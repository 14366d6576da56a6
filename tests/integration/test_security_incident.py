"""dr_security_incident against the live sandbox, like a runbook:

Given a clean dump, when a rogue role appears and writes rows after a known time (one of
its sessions still open), and the DAG runs for that compromise, then: the rogue's login is
refused and its session ended while DR access works; the evidence is in the object-locked
bucket, a delete of its versions is refused by S3 and its hashes match; the app password
is rotated (the old one refused, the services healthy on the new one); the database is the
clean point from before the compromise (rogue rows absent) and the compromised one is kept
aside. A re-run of the same incident uploads nothing again. Bad inputs are refused in the
guard with nothing touched. Everything the test creates is removed, and the app's
original password put back, so the suite stays repeatable.

(dag.test() cannot answer a human approval: the drill environment swaps without one;
production's approval is answered over the REST API of a real Airflow in
tests/e2e/test_security_approval.py.)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from botocore.exceptions import ClientError
from psycopg import sql
from restore_support import DATABASE, admin, connect, fresh_dump, put_sandbox_back

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states
from tracktion_dr.core.incident import new_incident_id
from tracktion_dr.core.plan import load_plan

pytestmark = pytest.mark.sandbox

ROGUE = "dr_test_rogue"
ROGUE_PASSWORD = "rogue-sandbox-only"  # noqa: S105 - a throwaway role of this test
ROGUE_PREFIX = "/rogue/"


def _app_conninfo(password: str) -> str:
    from tracktion_sandbox import layout as L

    return psycopg.conninfo.make_conninfo(
        host=L.HOST,
        port=str(L.PRIMARY_PORT),
        user=L.APP_USER,
        password=password,
        dbname=L.APP_DATABASE,
        connect_timeout="5",
    )


def _login_error(conninfo: str) -> str | None:
    try:
        with psycopg.connect(conninfo) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        return str(exc)
    return None


def _rogue_conninfo() -> str:
    from dataclasses import replace

    return replace(admin(), user=ROGUE, password=ROGUE_PASSWORD).conninfo(
        DATABASE, connect_timeout="5"
    )


def _put_app_password_back(sandbox) -> None:
    with connect("postgres", autocommit=True) as conn:
        verifier = conn.pgconn.encrypt_password(
            sandbox.secrets.app_password.encode(), b"tracktion", b"scram-sha-256"
        )
        conn.execute(
            sql.SQL("ALTER ROLE tracktion WITH LOGIN PASSWORD {}").format(
                sql.Literal(verifier.decode())
            )
        )


def _drop_rogue() -> None:
    """The rogue role and its rows (a run that stopped before the swap leaves them live)."""
    with connect(autocommit=True) as conn:
        conn.execute("DELETE FROM audio_files WHERE file_path LIKE %s", (ROGUE_PREFIX + "%",))
    with connect("postgres", autocommit=True) as conn:
        conn.execute(
            "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity"
            " WHERE usename = %s",
            (ROGUE,),
        )
        present = {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}
    for database in present - {"template0", "template1"}:
        with connect(database, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROGUE,)).fetchone():
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(ROGUE)))
    with connect("postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROGUE)))


@pytest.fixture()
def compromise(sandbox, supervisor_controller):
    """A clean dump, then a rogue role writing rows after a known time (one of its
    sessions left open). Teardown: everything put back as it was."""
    plan = load_plan()
    environment = plan.environment("drill")
    env_file = environment.config_env_file
    _drop_rogue()  # a run stopped before its teardown may have left it
    incident = fresh_dump(sandbox)
    time.sleep(1.5)  # the dump's finish time (whole seconds) is strictly before the compromise
    compromised_at = datetime.now(UTC)
    with connect("postgres", autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(ROGUE), sql.Literal(ROGUE_PASSWORD)
            )
        )
    with connect(autocommit=True) as conn:
        conn.execute(
            sql.SQL("GRANT SELECT, INSERT ON audio_files TO {}").format(sql.Identifier(ROGUE))
        )
        conn.execute(
            sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {}").format(
                sql.Identifier(ROGUE)
            )
        )
    held = psycopg.connect(_rogue_conninfo(), autocommit=True)
    for n in range(3):
        held.execute(
            "INSERT INTO audio_files (file_path, file_name, format, file_size)"
            " VALUES (%s, %s, 'wav', 1000)",
            (f"{ROGUE_PREFIX}{n}.wav", f"{n}.wav"),
        )
    now = datetime.now(UTC)
    incident.incident_id = new_incident_id(now)
    incident.started_at = now.isoformat()
    env_path = Path(env_file)
    env_before = env_path.read_text() if env_path.exists() else None
    yield {
        "incident": incident,
        "compromised_at": compromised_at.isoformat(),
        "held": held,
        "environment": environment,
        "plan": plan,
    }
    held.close()
    # The app's original password and environment file, the services restarted on them.
    _put_app_password_back(sandbox)
    if env_before is None:
        env_path.unlink(missing_ok=True)
    else:
        env_path.write_text(env_before)
        os.chmod(env_path, 0o600)
    for leftover in env_path.parent.glob(env_path.name + ".pre_*"):
        leftover.unlink()
    services = environment.dependents_of(DATABASE)
    for service in services:
        supervisor_controller.stop(service)
    put_sandbox_back(incident, supervisor_controller, services)
    _drop_rogue()
    shutil.rmtree(Path(plan.security.work_dir) / incident.tag, ignore_errors=True)
    # The load balancer as the sandbox starts it (the DAG put it back; this is the net).
    from tracktion_sandbox import layout as L

    for service in services:
        httpx.post(
            f"http://{L.HOST}:{L.LOAD_BALANCER_PORT}/api/v1/backends/{service}/servers/primary",
            json={"weight": 100, "status": "enabled"},
            timeout=5,
        )


def _evidence(sandbox, incident_id: str) -> tuple[dict, list[dict]]:
    from tracktion_sandbox import s3

    client = s3.client()
    listed = client.list_object_versions(
        Bucket=s3.EVIDENCE_BUCKET, Prefix=f"incidents/{incident_id}/"
    )
    versions = listed.get("Versions", [])
    manifest = json.loads(
        client.get_object(Bucket=s3.EVIDENCE_BUCKET, Key=f"incidents/{incident_id}/manifest.json")[
            "Body"
        ].read()
    )
    return manifest, versions


def test_a_compromise_is_contained_preserved_recovered_and_rotated(sandbox, compromise):
    from tracktion_sandbox import s3

    incident = compromise["incident"]
    environment = compromise["environment"]
    conf = {
        "environment": "drill",
        "database": DATABASE,
        "compromised_at": compromise["compromised_at"],
        "roles": [ROGUE],
        "incident_id": incident.incident_id,
        "incident_started_at": incident.started_at,
    }
    dag_run = run_dag("dr_security_incident", conf)
    states = task_states(dag_run)
    failed = [t for t, s in states.items() if s == "failed"]
    assert not failed, states
    assert states["approve_swap"] == "skipped" and states["approval_not_required"] == "success"
    assert states["verdict"] == "success", states

    # Then the rogue is locked out, its open session ended; DR access works.
    assert "not permitted to log in" in (_login_error(_rogue_conninfo()) or "accepted")
    with pytest.raises(psycopg.OperationalError):
        compromise["held"].execute("SELECT 1")
    with connect("postgres") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)

    # The evidence is stored, locked (a delete of a version is refused), and matches.
    manifest, versions = _evidence(sandbox, incident.incident_id)
    client = s3.client()
    names = {f["name"] for f in manifest["files"]}
    assert any(n.startswith("database/") and n.endswith(".dump") for n in names), names
    assert "configuration.tar.gz" in names and "postgres-primary.tail.log" in names
    assert len(versions) == len(names) + 1  # each file once, plus the manifest
    for entry in manifest["files"]:
        key = f"incidents/{incident.incident_id}/{entry['name']}"
        body = client.get_object(Bucket=s3.EVIDENCE_BUCKET, Key=key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == entry["sha256"]
        head = client.head_object(Bucket=s3.EVIDENCE_BUCKET, Key=key)
        assert head["ObjectLockMode"] == "COMPLIANCE"
        with pytest.raises(ClientError) as refused:
            client.delete_object(Bucket=s3.EVIDENCE_BUCKET, Key=key, VersionId=head["VersionId"])
        assert refused.value.response["Error"]["Code"] == "AccessDenied"
    assert manifest["database"] == DATABASE

    # Credentials: the old password refused, the services healthy on the new one.
    assert "password authentication failed" in (
        _login_error(_app_conninfo(sandbox.secrets.app_password)) or "accepted"
    )
    from tracktion_dr.scenarios.security import read_env_file

    new_dsn = read_env_file(Path(environment.config_env_file))["TRACKTION_DATABASE_URL"]
    assert _login_error(new_dsn) is None
    for name in environment.dependents_of(DATABASE):
        assert httpx.get(environment.services[name].health_url, timeout=5).status_code == 200
    rotated = task_result(dag_run, "rotate_credentials")
    assert rotated["credentials_rotated"] == ["tracktion"]
    assert sandbox.secrets.app_password not in json.dumps(rotated)
    assert new_dsn.split("@")[0].split(":")[-1] not in json.dumps(rotated)
    # Airflow's connection follows: its secrets-backend entry holds the new credential.
    from airflow.providers.amazon.aws.hooks.secrets_manager import SecretsManagerHook

    spec = load_plan().security.app_roles["tracktion"]
    secrets = SecretsManagerHook(aws_conn_id=spec.secrets_conn_id).get_conn()
    stored = secrets.get_secret_value(SecretId=spec.connection_secret)["SecretString"]
    assert stored == new_dsn and _login_error(stored) is None
    assert rotated["proofs"]["tracktion"]["airflow_connection"].startswith(spec.connection_secret)

    # The clean point from before the compromise is live; the compromised one kept aside.
    rogue_rows = "SELECT count(*) FROM audio_files WHERE file_path LIKE %s"
    with connect() as conn:
        assert conn.execute(rogue_rows, (ROGUE_PREFIX + "%",)).fetchone() == (0,)
    with connect(incident.kept) as conn:
        assert conn.execute(rogue_rows, (ROGUE_PREFIX + "%",)).fetchone() == (3,)
    report = task_result(dag_run, "report")
    assert report["backup_used"] == incident.dump.name
    assert report["details"]["compromised_database_kept_as"] == incident.kept
    assert report["details"]["roles_blocked"] == [ROGUE]
    assert {e["key"] for e in report["details"]["evidence"]} == {v["Key"] for v in versions}

    # A re-run of the same incident converges: nothing uploaded or blocked again.
    again = run_dag("dr_security_incident", conf)
    states = task_states(again)
    assert states["verdict"] == "success", states
    assert task_result(again, "preserve_evidence")["uploaded"] == []
    assert task_result(again, "isolate")["event"]["status"] == "skipped"
    _, versions_after = _evidence(sandbox, incident.incident_id)
    assert len(versions_after) == len(versions)


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"roles": ["postgres"]}, "roles: 'postgres' is the DR connection's own role"),
        ({"roles": ["tracktion"]}, "roles: 'tracktion' is an application role"),
        ({"roles": ["no_such_role_x"]}, "roles: 'no_such_role_x' does not exist"),
        (
            {"compromised_at": (datetime.now(UTC) + timedelta(days=1)).isoformat()},
            "compromised_at:",
        ),
        ({"compromised_at": "1999-01-01T00:00:00Z"}, "compromised_at: no verified dump"),
        ({"environment": "production"}, "confirm:"),
    ],
)
def test_bad_inputs_are_refused_before_anything_is_touched(sandbox, conf, message, capfd):
    full = {
        "environment": "drill",
        "database": DATABASE,
        "compromised_at": datetime.now(UTC).isoformat(),
        "roles": ["replicator_x"],
        **conf,
    }
    dag_run = run_dag("dr_security_incident", full)
    states = task_states(dag_run)
    assert states["guard"] == "failed"
    assert [t for t, s in states.items() if s == "failed"] == ["guard"], states
    out, err = capfd.readouterr()
    assert message in out + err
