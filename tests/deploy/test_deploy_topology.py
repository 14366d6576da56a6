"""The deployment, run the way Tracktion would: CeleryExecutor, every step on its host.

Given the compose deployment with its ``topology`` profile up (tests/deploy/conftest.py:
``make deploy-up DEPLOY_PROFILES=topology``), when known rows are written to the primary and
``dr_database_pitr`` (target ``latest``) is triggered over the REST API as an operator would,
then the run succeeds; each task instance ran on the worker of the host it acts on (its
``hostname``: stop/start services on ``app``, the data directory on ``db-primary``, the
re-seed on ``db-replica``, gates and the record on the default worker); the services answer
healthy from another container; the replica streams from the recovered primary; and the
known rows are exactly there. Then a logical dump and a restore from it over REST run
where the backups are (db-primary) and the services are (app), and bring back destroyed
rows exactly; the monthly drill runs each test where what it tests is; then a database
failover (its own docstring) and the fail-back: the old primary rebuilt as a standby on its
own host, and a switchover back whose old-primary steps run on db-replica.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from urllib.parse import quote

import pytest
from harness.deployment import (
    Api,
    compose,
    container_hostname,
    describe,
    psql,
    wait_for,
    write_known_rows,
)

pytestmark = pytest.mark.deploy

RUN_TIMEOUT_SECONDS = 1800  # a bound on the wait, not a measurement (no timing asserted)
DAG_VISIBLE_TIMEOUT_SECONDS = 600

# The host each task of dr_database_pitr acts on, by the compose plan's hosts
# (tests/unit/test_host_routing.py checks the same queues without Docker). None: the
# default worker (airflow-worker).
EXPECTED_HOST = {
    "guard": "db-primary",
    "stage_recovery": "db-primary",
    "stop_services": "app",
    "prepare_data_directory": "db-primary",
    "start_postgres": "db-primary",
    "gate_recovery_target_reached": "db-primary",
    "validate_recovered": None,
    "promote": "db-primary",
    "start_services": "app",
    "gate_services_healthy": None,
    "gate_functional_checks": "app",  # its sample file is on the app host
    "measure_data_loss": "db-primary",
    "reseed_replica": "db-replica",
    "record": None,
    "notify_outcome": None,
    "publish": None,
    "verdict": None,
}
SERVICE_PORTS = {
    "analysis-service": 18001,
    "file-watcher": 18002,
    "tracklist-service": 18003,
    "notification-service": 18004,
}
CHECK_TABLE = "dr_deploy_check"
CHECK_ROWS = 2000


# --------------------------------------------------------------------------- helpers


def run_over_rest(api: Api, dag_id: str, conf: dict) -> tuple[str, dict, str, str]:
    """Trigger ``dag_id`` over REST as an operator would (unpaused first), wait for it to
    end; (state, task instances by id, a printable report, the run's API path)."""
    wait_for(
        lambda: api.get(f"/dags/{dag_id}").status_code == 200,
        DAG_VISIBLE_TIMEOUT_SECONDS,
        5,
        f"the dag-processor to serialize {dag_id}",
    )
    api.call("PATCH", f"/dags/{dag_id}", {"is_paused": False})
    run = api.call("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
    run_path = f"/dags/{dag_id}/dagRuns/{quote(run['dag_run_id'], safe='')}"
    state = wait_for(
        lambda: (s := api.get(run_path).json()["state"]) in ("success", "failed") and s,
        RUN_TIMEOUT_SECONDS,
        10,
        f"run {run['dag_run_id']} to finish",
    )
    task_instances = api.task_instances(dag_id, run["dag_run_id"])
    report = describe(dag_id, run["dag_run_id"], state, task_instances)
    for ti in task_instances:  # what a failed task said, for the one reading a CI log
        if ti["state"] == "failed":
            log = api.get(f"{run_path}/taskInstances/{ti['task_id']}/logs/{ti['try_number']}")
            report += f"\n--- {ti['task_id']}: its errors ---\n" + errors_in(log)
    print(report)
    return state, {ti["task_id"]: ti for ti in task_instances}, report, run_path


def errors_in(log) -> str:
    """The error entries of a task's log (the API's structured log): each event and its
    exception's type and message, not the traceback's frames."""
    try:
        entries = log.json().get("content", [])
    except ValueError:
        return log.text[-2000:]
    said = []
    for entry in entries:
        if isinstance(entry, dict) and entry.get("level") in ("error", "critical"):
            details = entry.get("error_detail") or []
            causes = [f"{d.get('exc_type')}: {d.get('exc_value')}" for d in details]
            said.append(" | ".join([str(entry.get("event", "")), *causes]))
    return "\n".join(said[-5:])[-4000:]


def assert_succeeded_on(ran: dict, expected: dict[str, str], report: str) -> None:
    """Each task of ``expected`` succeeded on the host (container hostname) it names."""
    for task_id, host in expected.items():
        assert (ran[task_id]["state"], ran[task_id]["hostname"]) == ("success", host), (
            f"{task_id}\n{report}"
        )


# --------------------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def api(deployment) -> Api:
    return Api(deployment.url, deployment.password)


def test_every_service_of_the_deployment_is_healthy(deployment):
    """``docker-compose ps`` of the topology: every container running and healthy."""
    ids = compose(deployment, "ps", "-q").stdout.split()
    template = (
        "{{.Name}} {{.State.Status}} "
        "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.State.ExitCode}}"
    )
    states = subprocess.run(
        ["docker", "inspect", "-f", template, *ids], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    services = {line.split()[0].lstrip("/"): line.split()[1:] for line in states}
    for name in ("db-primary", "db-replica", "app", "ops-db", "load-balancer", "s3", "sink"):
        assert any(name in container for container in services), f"{name} is not running"
    # airflow-init is the one container that exits, successfully, when its job is done.
    expected = {
        n: ["exited", "none", "0"] if "airflow-init" in n else ["running", "healthy", "0"]
        for n in services
    }
    assert services == expected


def test_the_assessment_looks_at_the_storage_on_its_host(deployment, api):
    """dr_initial_assessment over REST: the storage areas are app's directories (the default
    worker does not mount them), so probe_storage runs there and probe_platform, on the
    default worker, reports what it found - operational, not a false DOWN."""
    state, ran, report, run_path = run_over_rest(
        api, "dr_initial_assessment", {"environment": "drill", "notify": False}
    )
    assert state == "success", report
    assert_succeeded_on(ran, {"probe_storage": "app"}, report)
    default_worker = container_hostname(deployment, "airflow-worker")
    assert ran["probe_platform"]["hostname"] == default_worker, report
    result = api.get(
        f"{run_path}/taskInstances/probe_platform/xcomEntries/return_value"
        "?deserialize=true&stringify=false"
    ).json()["value"]
    storage = {r["name"]: r for r in result["results"] if r["kind"] == "storage"}
    assert storage and {r["status"] for r in storage.values()} == {"OPERATIONAL"}, storage
    assert not any(r["detail"].startswith("not assessed") for r in storage.values())


def test_pitr_over_rest_runs_each_step_on_its_host_and_keeps_every_row(deployment, api):
    # Given known rows on the primary, committed before the incident.
    marker, checksum_sql, before = write_known_rows(deployment, CHECK_TABLE, CHECK_ROWS)

    # When dr_database_pitr is triggered over REST (the DAG unpaused first, as an operator).
    state, ran, report, _ = run_over_rest(
        api,
        "dr_database_pitr",
        {"environment": "drill", "cluster": "main", "target_type": "latest"},
    )
    task_instances = list(ran.values())

    # Then the run succeeded,
    assert state == "success", report
    # each task ran on the worker of the host it acts on,
    default_worker = container_hostname(deployment, "airflow-worker")
    assert set(ran) == set(EXPECTED_HOST), report
    for task_id, host in EXPECTED_HOST.items():
        ti = ran[task_id]
        assert ti["state"] == "success", f"{task_id}: {ti['state']}\n{report}"
        assert ti["hostname"] == (host or default_worker), f"{task_id}\n{report}"
    assert {ti["hostname"] for ti in task_instances} == {
        "db-primary",
        "db-replica",
        "app",
        default_worker,
    }

    # the services answer healthy from another container (the default worker),
    for service, port in SERVICE_PORTS.items():
        probe = compose(
            deployment,
            "exec",
            "-T",
            "airflow-worker",
            "curl",
            "--fail",
            "--silent",
            "--max-time",
            "10",
            f"http://app:{port}/health",
            check=False,
        )
        assert probe.returncode == 0, f"{service}: {probe.stdout} {probe.stderr}"

    # the re-seeded replica streams from the recovered primary,
    streaming = wait_for(
        lambda: (
            psql(
                deployment,
                "db-primary",
                55432,
                "SELECT count(*) FROM pg_catalog.pg_stat_replication WHERE state = 'streaming'",
            )
            != "0"
        ),
        120,
        2,
        "the replica to stream from the recovered primary",
    )
    assert streaming

    # and the data check is exact: every known row, byte for byte, on the new timeline.
    assert psql(deployment, "db-primary", 55432, checksum_sql) == before
    assert psql(deployment, "db-primary", 55432, "SELECT pg_catalog.pg_is_in_recovery()") == "f"
    timeline = psql(
        deployment,
        "db-primary",
        55432,
        "SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()",
    )
    assert int(timeline) > 1  # really recovered: a new timeline, not the old server


def test_a_dump_taken_and_restored_over_rest_runs_where_the_backups_are(deployment, api):
    """dr_backup_logical_dump, then dr_database_restore after rows are destroyed, both over
    REST: the dump is written and read on db-primary (the plan's backup_host: the backups
    volume), the services stopped and started on app, the swap over the network from the
    default worker; every row committed before the dump is back exactly."""
    # Given known rows, committed before the dump,
    marker, checksum_sql, before = write_known_rows(deployment, CHECK_TABLE, CHECK_ROWS)
    default_worker = container_hostname(deployment, "airflow-worker")

    # when the dump job runs, it runs on the backup host,
    state, ran, report, run_path = run_over_rest(
        api, "dr_backup_logical_dump", {"environment": "drill", "notify": False}
    )
    assert state == "success", report
    assert ran["dump_and_check"]["hostname"] == "db-primary", report
    # (its dump, by id: unpausing the job also runs its missed nightly dump, which may
    # come after this one - and after the rows are destroyed below)
    xcom = api.get(
        f"{run_path}/taskInstances/dump_and_check/xcomEntries/return_value"
        "?deserialize=true&stringify=false"
    ).json()["value"]
    (dump,) = [d["id"] for d in xcom if d["database"] == "tracktion"]

    # and when the rows are destroyed and the database restored from that dump,
    psql(
        deployment,
        "db-primary",
        55432,
        f"DELETE FROM {CHECK_TABLE} WHERE marker = '{marker}' AND id % 2 = 0; "
        f"UPDATE {CHECK_TABLE} SET payload = 'garbage' WHERE marker = '{marker}'",
    )
    assert psql(deployment, "db-primary", 55432, checksum_sql) != before
    state, ran, report, _ = run_over_rest(
        api,
        "dr_database_restore",
        {"environment": "drill", "database": "tracktion", "backup": dump},
    )

    # then each step ran where it acts: the dump (and its manifest) read on db-primary,
    # services on app,
    assert state == "success", report
    expected = {
        "guard": "db-primary",
        "restore_beside": "db-primary",
        "stop_services": "app",
        "start_services": "app",
        "gate_functional_checks": "app",
        "validate_restored": "db-primary",
        "swap": default_worker,
        "gate_services_healthy": default_worker,
    }
    assert_succeeded_on(ran, expected, report)
    # and every row is back as it was committed before the dump.
    assert psql(deployment, "db-primary", 55432, checksum_sql) == before


def test_the_monthly_drill_runs_each_test_where_what_it_tests_is(deployment, api):
    """dr_test_monthly over REST (after the dump test: it restores the newest dump into a
    scratch database): the database test on db-primary (the backup host), the service and
    storage tests and the teardown on app, the RPO measured where the archive is."""
    state, ran, report, _ = run_over_rest(
        api, "dr_test_monthly", {"environment": "drill", "notify": False}
    )
    assert state == "success", report
    expected = {
        "test_databases": "db-primary",
        "test_services": "app",
        "test_storage": "app",
        "teardown": "app",
        "measure_rpo": "db-primary",
    }
    assert_succeeded_on(ran, expected, report)


# --------------------------------------------------------------------------- failover

PRIMARY_DATA = "/srv/tracktion/pg/primary"
PG_BIN = "/usr/lib/postgresql/15/bin"
FENCE_NOTE = "DR_FENCED"  # tracktion_dr.services.failover.FENCE_NOTE


def on_host(deployment, service: str, *argv: str, check: bool = True):
    """A command on a host container, as root (the DR agent's user there)."""
    return compose(deployment, "exec", "-T", service, *argv, check=check)


def as_postgres(deployment, service: str, *argv: str):
    return on_host(deployment, service, "runuser", "-u", "postgres", "--", *argv)


def exists_on(deployment, service: str, path: str) -> bool:
    return on_host(deployment, service, "test", "-e", path, check=False).returncode == 0


def test_database_failover_fences_on_the_primary_host_and_refuses_the_wrong_cluster(
    deployment, api
):
    """The primary's PostgreSQL stops (after the PITR test: it streams to the replica).

    First its data directory on db-primary is not the old primary at all (moved aside, a
    fresh cluster of its own made at that path, as after a host rebuilt by mistake):
    dr_failover's fence, run on db-primary, finds another system identifier and refuses -
    nothing is written there, the replica is not promoted. Then the real directory is put
    back and the failover runs again: fenced on db-primary (standby.signal and the note
    written), the replica promoted on db-replica, every row committed before the stop
    there. The deployment stays failed over until the fail-back tests after it (the session
    removes it at the end)."""
    # Given known rows, streamed to the replica, and the primary stopped cleanly.
    marker, checksum_sql, before = write_known_rows(deployment, CHECK_TABLE, CHECK_ROWS)
    as_postgres(
        deployment, "db-primary", f"{PG_BIN}/pg_ctl", "-D", PRIMARY_DATA, "-m", "fast", "-w", "stop"
    )
    replica_in_recovery = "SELECT pg_catalog.pg_is_in_recovery()"
    assert psql(deployment, "db-replica", 55433, replica_in_recovery) == "t"
    default_worker = container_hostname(deployment, "airflow-worker")
    conf = {"environment": "drill", "target": "database", "database": "tracktion"}

    # When the directory at the old primary's path is another cluster,
    real, wrong = f"{PRIMARY_DATA}.real-{marker[:8]}", f"{PRIMARY_DATA}.wrong-{marker[:8]}"
    on_host(deployment, "db-primary", "mv", PRIMARY_DATA, real)
    on_host(
        deployment,
        "db-primary",
        "install",
        "-d",
        "-o",
        "postgres",
        "-g",
        "postgres",
        "-m",
        "0700",
        PRIMARY_DATA,
    )
    as_postgres(
        deployment, "db-primary", f"{PG_BIN}/initdb", "--no-sync", "-A", "peer", "-D", PRIMARY_DATA
    )
    state, ran, report, run_path = run_over_rest(api, "dr_failover", conf)
    # then the fence, on db-primary, refused it and nothing was switched,
    assert state == "failed", report
    fence = ran["fence_old_primary"]
    assert (fence["state"], fence["hostname"]) == ("failed", "db-primary"), report
    assert ran["switch"]["state"] == "upstream_failed", report
    log = api.get(f"{run_path}/taskInstances/fence_old_primary/logs/{fence['try_number']}")
    assert "is another cluster (system identifier" in log.text, log.text[-2000:]
    assert not exists_on(deployment, "db-primary", f"{PRIMARY_DATA}/{FENCE_NOTE}")
    assert not exists_on(deployment, "db-primary", f"{PRIMARY_DATA}/standby.signal")
    assert psql(deployment, "db-replica", 55433, replica_in_recovery) == "t", "not promoted"

    # When the real old primary is back at its path and the failover runs again,
    on_host(deployment, "db-primary", "mv", PRIMARY_DATA, wrong)
    on_host(deployment, "db-primary", "mv", real, PRIMARY_DATA)
    state, ran, report, _ = run_over_rest(api, "dr_failover", conf)

    # then the old primary was fenced on its host and the replica promoted from the default
    # worker (pg_promote over the network),
    assert state == "success", report
    assert ran["fence_old_primary"]["hostname"] == "db-primary", report
    for task_id in ("guard", "preconditions", "switch", "gate_failover", "measure_data_loss"):
        assert ran[task_id]["state"] == "success", f"{task_id}\n{report}"
        assert ran[task_id]["hostname"] == default_worker, f"{task_id}\n{report}"
    assert exists_on(deployment, "db-primary", f"{PRIMARY_DATA}/standby.signal")
    assert exists_on(deployment, "db-primary", f"{PRIMARY_DATA}/{FENCE_NOTE}")
    assert not exists_on(deployment, "db-primary", f"{wrong}/{FENCE_NOTE}"), (
        "the wrong one untouched"
    )
    assert psql(deployment, "db-replica", 55433, replica_in_recovery) == "f"
    # and every row committed before the stop is on the new primary.
    assert psql(deployment, "db-replica", 55433, checksum_sql) == before


def test_after_the_failover_the_old_primary_is_rebuilt_as_a_standby_on_its_own_host(
    deployment, api
):
    """dr_standby_rebuild over REST after the failover test: the roles are read over the
    network (db-replica is the primary now), the branch picks the node that is not the
    primary, and its rebuild runs on that node's host (db-primary), the other node's step
    skipped; db-primary then streams from db-replica and replays what is written there.
    Its fenced directory is kept beside (``<dir>.pre_<incident>``), never deleted."""
    replica_in_recovery = "SELECT pg_catalog.pg_is_in_recovery()"
    assert psql(deployment, "db-replica", 55433, replica_in_recovery) == "f", "failed over"
    default_worker = container_hostname(deployment, "airflow-worker")
    stamp = datetime.now(UTC)
    incident = f"DR-{stamp:%Y%m%d-%H%M%S}"
    state, ran, report, _ = run_over_rest(
        api,
        "dr_standby_rebuild",
        {"environment": "drill", "cluster": "main", "incident_id": incident, "notify": False},
    )
    assert state == "success", report
    assert_succeeded_on(ran, {"rebuild_primary": "db-primary"}, report)
    assert ran["rebuild_replica"]["state"] == "skipped", report
    for task_id in ("find_roles", "rebuild_where", "gate_standby_streaming"):
        assert (ran[task_id]["state"], ran[task_id]["hostname"]) == ("success", default_worker), (
            f"{task_id}\n{report}"
        )
    assert psql(deployment, "db-primary", 55432, replica_in_recovery) == "t"
    streaming = (
        "SELECT state FROM pg_catalog.pg_stat_replication WHERE application_name = 'primary'"
    )
    assert psql(deployment, "db-replica", 55433, streaming) == "streaming"
    kept = f"{PRIMARY_DATA}.pre_{stamp:%Y%m%d_%H%M%S}"  # <dir>.pre_<incident tag>
    assert exists_on(deployment, "db-primary", f"{kept}/{FENCE_NOTE}"), "the fenced copy kept"
    # what the new primary commits reaches the rebuilt standby
    _, checksum_sql, on_new_primary = write_known_rows(
        deployment, f"{CHECK_TABLE}_rebuilt", 100, service="db-replica", port=55433
    )
    wait_for(
        lambda: psql(deployment, "db-primary", 55432, checksum_sql, check=False) == on_new_primary,
        120,
        2,
        "the rows written on db-replica to be replayed on db-primary",
    )


def test_a_switchover_back_runs_the_old_primarys_steps_on_its_host(deployment, api):
    """dr_switchover over REST after the rebuild (db-replica primary, db-primary its
    standby): back to the home primary. The branch picks the set of steps laid out for the
    node the role moves away from (replica): its preconditions, switch (note, write stop,
    clean shutdown, promotion, balancer), give-back and rebuild run on db-replica; the
    primary's set is skipped. Afterwards db-primary takes writes, db-replica streams from it
    and every row committed before the switch is there."""
    in_recovery = "SELECT pg_catalog.pg_is_in_recovery()"
    assert psql(deployment, "db-primary", 55432, in_recovery) == "t", "after the rebuild"
    _, checksum_sql, before = write_known_rows(
        deployment, f"{CHECK_TABLE}_switch", 500, service="db-replica", port=55433
    )
    state, ran, report, _ = run_over_rest(
        api,
        "dr_switchover",
        {
            "environment": "drill",
            "cluster": "main",
            "to_node": "primary",
            "maintenance_window_confirmed": True,
            "notify": False,
        },
    )
    assert state == "success", report
    on_replica = (
        "preconditions_from_replica",
        "switch_from_replica",
        "give_writes_back_from_replica",
    )
    assert_succeeded_on(
        ran, {**dict.fromkeys(on_replica, "db-replica"), "rebuild_replica": "db-replica"}, report
    )
    for task_id in ("preconditions_from_primary", "switch_from_primary", "rebuild_primary"):
        assert ran[task_id]["state"] == "skipped", f"{task_id}\n{report}"
    assert psql(deployment, "db-primary", 55432, in_recovery) == "f"
    assert psql(deployment, "db-replica", 55433, in_recovery) == "t"
    assert psql(deployment, "db-primary", 55432, checksum_sql) == before, "nothing lost"
    streaming = (
        "SELECT state FROM pg_catalog.pg_stat_replication WHERE application_name = 'replica'"
    )
    wait_for(
        lambda: psql(deployment, "db-primary", 55432, streaming, check=False) == "streaming",
        120,
        2,
        "db-replica to stream from db-primary again",
    )
