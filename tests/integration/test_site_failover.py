"""dr_site_failover against the sandbox: the primary site lost, Tracktion back in the
recovery site from the S3 copy only.

Given rows committed before the offsite copy job (dr_backup_offsite, really run against
the sandbox's moto S3: it uploads to us-east-1 and copies cross-region to the us-west-2
bucket the recovery site reads) and rows committed after it (the WAL not offsite yet),
When the whole primary site stops (primary, replica, services, balancer, canary) and its
local backup directory is moved away,
And the site failover runs,
Then the recovery site's stack exists, its database was restored from the S3 copy alone
(through the catalog's mirror beside the site's data directory; restore_command fetching
from S3) - the rows from before the copy are there, the rows after it are not -, its services
answer, its balancer routes to it, Route53 points api at it, the validation passed,
And the data lost is measured against the primary's own last commit (read from its
pg_wal) and is exactly the commits the offsite copy lacked (the WAL S3 does not list).
Afterwards the sandbox is put back: the recovery site emptied (its data directory moved
aside), the backups and DNS back, the primary site started.

Also: a dry run touches nothing; while the primary site answers, a failover is refused.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import pytest
import yaml
from harness.killable_run import KillableRun, fail_runs_left_running
from harness.offsite import base_backup_on_current_timeline
from pitr_support import switch_wal

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states
from tracktion_dr.backups.catalog import Catalog
from tracktion_dr.backups.s3_objects import S3Location
from tracktion_dr.core.plan import load_plan
from tracktion_dr.postgres.recovery_marker import postmaster_pid, read_marker, recovery_pending
from tracktion_sandbox import layout as L
from tracktion_sandbox import recovery_site, s3

pytestmark = pytest.mark.sandbox

DAG_ID = "dr_site_failover"
ROOT = Path(__file__).resolve().parents[2]
SANDBOX_PLAN = ROOT / "include" / "config" / "sandbox.yaml"
API = f"api.{L.HOSTED_ZONE}"


def primary_conninfo(secrets, port: int = L.PRIMARY_PORT) -> str:
    return (
        f"host={L.HOST} port={port} user={L.SUPERUSER} password={secrets.postgres_password} "
        f"dbname={L.APP_DATABASE} connect_timeout=5"
    )


def write_marker(secrets, writer: str) -> datetime:
    with psycopg.connect(primary_conninfo(secrets), autocommit=True) as conn:
        (written_at,) = conn.execute(
            "INSERT INTO dr_canary.heartbeat (writer) VALUES (%s) RETURNING written_at", (writer,)
        ).fetchone()
    return written_at


def run_offsite_copy(secrets) -> dict:
    """The offsite copy job, really run: dr_backup_offsite against moto, from a verified
    newest base backup on the primary's current timeline (the job copies only verified
    backups; see harness.offsite). Returns its result."""

    def take_base_backup() -> None:
        dag_run = run_dag("dr_backup_base", {"environment": "drill", "notify": False})
        assert set(task_states(dag_run).values()) == {"success"}, task_states(dag_run)

    catalog = Catalog(load_plan(SANDBOX_PLAN).environment("drill").backups)
    base_backup_on_current_timeline(catalog, primary_conninfo(secrets), take_base_backup)
    dag_run = run_dag("dr_backup_offsite", {"environment": "drill", "notify": False})
    assert task_states(dag_run) == {"copy_offsite": "success"}
    return task_result(dag_run, "copy_offsite")


def listed_in_site_copy(name: str) -> list[str]:
    """Keys of the recovery site's S3 copy (the plan's recovery_site.backups) ending in
    ``name``: what the cross-region bucket holds."""
    site_backups = load_plan(SANDBOX_PLAN).environment("drill").recovery_site.backups
    location = S3Location.parse(site_backups.wal_archive)
    client = s3.client(L.S3_CROSS_REGION)
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=location.bucket, Prefix=location.prefix + "/"
    )
    return [o["Key"] for page in pages for o in page.get("Contents", []) if name in o["Key"]]


def route53_values(name: str) -> list[str]:
    client = s3.client(L.S3_REGION, "route53")
    answer = client.list_resource_record_sets(
        HostedZoneId=s3.ensure_hosted_zone(),
        StartRecordName=name + ".",
        StartRecordType="CNAME",
        MaxItems="1",
    )["ResourceRecordSets"]
    if not answer or answer[0]["Name"] != name + ".":
        return []
    return [r["Value"].rstrip(".") for r in answer[0]["ResourceRecords"]]


def upsert_primary_records() -> None:
    client = s3.client(L.S3_REGION, "route53")
    dns = load_plan(SANDBOX_PLAN).environment("drill").dns
    changes = [
        {
            "Action": "UPSERT",
            "ResourceRecordSet": {
                "Name": name + ".",
                "Type": record.type,
                "TTL": record.ttl,
                "ResourceRecords": [{"Value": v} for v in record.primary.values],
            },
        }
        for name, record in dns.records.items()
    ]
    client.change_resource_record_sets(
        HostedZoneId=s3.ensure_hosted_zone(), ChangeBatch={"Changes": changes}
    )


@pytest.fixture()
def own_site(sandbox, tmp_path, monkeypatch):
    """A plan whose recovery site is this test's own stack; the site empty before and
    after, DNS on the primary before and after."""
    suffix = uuid.uuid4().hex[:8]
    name = f"tracktion-recovery-failover-{suffix}"
    data = yaml.safe_load(SANDBOX_PLAN.read_text())
    for environment in data["environments"].values():
        site = environment["recovery_site"]
        environment["recovery_site"] = {
            **site,
            "stack_name": name,
            "parameters": {
                **site["parameters"],
                "EnvironmentName": name,
                "RecoverySubdomain": f"recovery-{suffix}",
            },
        }
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("DR_PLAN", str(plan_file))
    recovery_site.empty(sandbox.layout, sandbox.secrets)
    upsert_primary_records()
    yield name
    recovery_site.empty(sandbox.layout, sandbox.secrets)
    upsert_primary_records()


def test_a_dry_run_touches_nothing_and_a_site_that_answers_is_not_failed_over(own_site, sandbox):
    dry = run_dag(DAG_ID, {"environment": "drill", "mode": "failover", "dry_run": True})
    states = task_states(dry)
    assert states["guard"] == "failed", "the primary site answers: refused even in a dry run"
    assert not recovery_site.data_directory(sandbox.layout).exists()

    run_offsite_copy(sandbox.secrets)
    drill_plan = run_dag(DAG_ID, {"environment": "drill", "mode": "drill", "dry_run": True})
    states = task_states(drill_plan)
    assert states["verdict"] == "success", states
    guard = task_result(drill_plan, "guard")
    assert guard["primary_site"]["answering"], "a drill runs beside a primary that answers"
    assert any("stage base backup" in action for action in guard["actions"])
    assert not recovery_site.data_directory(sandbox.layout).exists(), "a dry run made nothing"


def test_the_site_failover_brings_tracktion_up_in_the_recovery_site_from_the_offsite_copy(
    own_site, sandbox
):
    layout, secrets = sandbox.layout, sandbox.secrets
    tag = uuid.uuid4().hex[:8]
    before = f"site-test-before-offsite-{tag}"
    after = f"site-test-after-offsite-{tag}"

    # The offsite copy job: everything archived up to the marker written before it, in S3
    # (us-east-1) and copied to the site's us-west-2 bucket.
    write_marker(secrets, before)
    segment = switch_wal()
    copied = run_offsite_copy(sandbox.secrets)
    assert copied["cross_region"], copied
    assert listed_in_site_copy(f"wal_archive/{segment}"), f"{segment} not in the site's copy"
    # Committed after the copy: in the primary's WAL (maybe even its local archive), never offsite.
    after_at = write_marker(secrets, after)
    time.sleep(1.5)  # the canary keeps committing: more the offsite copy lacks
    with psycopg.connect(primary_conninfo(secrets)) as conn:
        (primary_newest,) = conn.execute(
            "SELECT max(written_at) FROM dr_canary.heartbeat"
        ).fetchone()

    lost_at = datetime.now(UTC)
    local_backups = layout.backups
    moved_backups = local_backups.with_name(f"backups.away-{tag}")
    try:
        recovery_site.stop_primary_site(layout, secrets)
        local_backups.rename(moved_backups)  # after the archiver stopped with its primary
        dag_run = run_dag(
            DAG_ID,
            {
                "environment": "drill",
                "mode": "failover",
                "incident_started_at": lost_at.isoformat(),
                "notify": False,
            },
        )
        states = task_states(dag_run)
        assert states["verdict"] == "success", states

        guard = task_result(dag_run, "guard")
        assert not guard["primary_site"]["answering"], guard["primary_site"]
        # Read from S3 through the catalog's mirror beside the site's data directory.
        restored_from = guard["clusters"]["main"]
        mirror = recovery_site.data_directory(layout).parent / "offsite-cache"
        assert restored_from["wal_location"].startswith("s3://tracktion-dr-sandbox-us-west-2/")
        assert Path(restored_from["wal_archive"]).is_relative_to(mirror)
        assert Path(restored_from["base_backup"]["path"]).is_relative_to(mirror)
        staged = task_result(dag_run, "stage_database")["event"]["detail"]
        assert f"{restored_from['base_backup']['id']} from s3://" in staged, staged
        predicted = guard["predicted_loss"]["main"]
        assert predicted["measurable"] and predicted["wal_bytes_not_offsite"] > 0, predicted
        assert "s3://" in predicted["offsite"]["where"], predicted
        assert task_result(dag_run, "read_outputs")["endpoints"]["tracktion"].endswith(
            f":{L.RECOVERY_SITE_PORTS['database']}/tracktion"
        )

        # The site's database: from the offsite copy alone.
        with psycopg.connect(
            primary_conninfo(secrets, L.RECOVERY_SITE_PORTS["database"]), autocommit=True
        ) as conn:
            writers = {
                w
                for (w,) in conn.execute(
                    "SELECT writer FROM dr_canary.heartbeat WHERE writer IN (%s, %s)",
                    (before, after),
                ).fetchall()
            }
            (in_recovery,) = conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()
            (port,) = conn.execute("SELECT pg_catalog.current_setting('port')").fetchone()
        assert writers == {before}, "rows before the copy survive, rows after it are lost"
        assert in_recovery is False and port == str(L.RECOVERY_SITE_PORTS["database"])

        # Traffic: the site's balancer routes to the site, Route53 points api at it.
        answer = httpx.get(
            f"http://{L.HOST}:{L.RECOVERY_SITE_PORTS['load-balancer']}/route/analysis-service/health",
            timeout=5,
        )
        assert answer.status_code == 200 and answer.headers["X-Backend"] == "recovery"
        dns = load_plan().environment("drill").dns
        assert route53_values(API) == dns.records[API].secondary.values
        assert states["validate_site"] == "success" and states["gate_traffic_moved"] == "success"

        # The data lost: measured, against the primary's own last commit.
        loss = task_result(dag_run, "measure_data_loss")["data_loss"]["tracktion"]
        newest = datetime.fromisoformat(loss["newest_surviving_write"])
        assert newest < after_at, "nothing committed after the offsite copy survived"
        assert datetime.fromisoformat(loss["primary_last_commit"]) >= primary_newest
        assert loss["writes_lost_seconds"] > 0
        assert loss["writes_lost_seconds"] == pytest.approx(
            (datetime.fromisoformat(loss["primary_last_commit"]) - newest).total_seconds()
        )
        record = task_result(dag_run, "record")
        assert record["data_loss_seconds"] == pytest.approx(loss["writes_lost_seconds"])
        assert record["rto_achieved_seconds"] is not None
    finally:
        recovery_site.empty(layout, secrets)
        if moved_backups.exists() and not local_backups.exists():
            moved_backups.rename(local_backups)
        recovery_site.start_primary_site(layout, secrets)
        upsert_primary_records()


def test_the_drill_restores_into_the_site_beside_production_and_dismantles_it(own_site, sandbox):
    """mode=drill: production answers throughout, DNS stays on the primary, the drill's
    site is restored, validated and dismantled (its database kept aside, its ports closed)."""
    layout = sandbox.layout
    run_offsite_copy(sandbox.secrets)
    dns = load_plan().environment("drill").dns
    dag_run = run_dag(DAG_ID, {"environment": "drill", "mode": "drill", "notify": False})
    states = task_states(dag_run)
    assert states["verdict"] == "success", states
    assert states["validate_site"] == "success" and states["dismantle_drill_site"] == "success"
    guard = task_result(dag_run, "guard")
    assert guard["primary_site"]["answering"] and guard["dns_records"] == []
    assert route53_values(API) == dns.records[API].primary.values, "DNS stayed on the primary"
    with psycopg.connect(primary_conninfo(sandbox.secrets)) as conn:
        assert conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone() == (False,)
    data = recovery_site.data_directory(layout)
    tag = guard["clusters"]["main"]["tag"]
    assert not data.exists() and data.with_name(f"{data.name}.drill_{tag}").is_dir()
    for port in L.RECOVERY_SITE_PORTS.values():
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{L.HOST}:{port}/", timeout=2)
    loss = task_result(dag_run, "measure_data_loss")["data_loss"]["tracktion"]
    assert loss["newest_surviving_write"] is not None
    assert task_result(dag_run, "record")["rto_achieved_seconds"] is not None


def test_a_drill_killed_during_replay_is_resumed_by_a_rerun_of_its_incident(
    own_site, sandbox, tmp_path
):
    """SIGKILLed while the site's server replays the offsite WAL, then run again with the
    same incident: the staged and laid-down recovery is resumed, the running server is not
    restarted, and the drill ends with one kept copy of the site's database."""
    layout = sandbox.layout
    run_offsite_copy(sandbox.secrets)
    incident_id = datetime.now(UTC).strftime("DR-%Y%m%d-%H%M%S")
    conf = {
        "environment": "drill",
        "mode": "drill",
        "incident_id": incident_id,
        "incident_started_at": datetime.now(UTC).isoformat(),
        "notify": False,
    }
    data = recovery_site.data_directory(layout)

    def replaying() -> bool:
        marker = read_marker(data)
        return (
            marker is not None
            and marker.incident_id == incident_id
            and recovery_pending(data)
            and postmaster_pid(data) is not None
        )

    run = KillableRun.dag_test(DAG_ID, conf, log_path=tmp_path / "killed.log")
    run.wait_until(replaying, what="the site's server replaying", interval=0.01)
    run.kill()
    assert run.wait_exit() == -9
    fail_runs_left_running(DAG_ID)
    server = postmaster_pid(data)
    assert server is not None, "PostgreSQL outlives the killed worker"

    dag_run = run_dag(DAG_ID, conf)
    states = task_states(dag_run)
    assert states["verdict"] == "success", (states, run.log_path)
    assert (
        "already this incident's recovery"
        in task_result(dag_run, "stage_database")["event"]["detail"]
    )
    assert "already running" in task_result(dag_run, "start_postgres")["event"]["detail"]
    tag = task_result(dag_run, "guard")["clusters"]["main"]["tag"]
    with_tag = {p.name for p in data.parent.iterdir() if p.is_dir() and tag in p.name}
    assert with_tag == {f"{data.name}.drill_{tag}"}, with_tag
