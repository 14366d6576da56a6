"""The deployment, run the way Tracktion would: CeleryExecutor, every step on its host.

Given the compose deployment with its ``topology`` profile up (tests/deploy/conftest.py:
``make deploy-up DEPLOY_PROFILES=topology``), when known rows are written to the primary and
``dr_database_pitr`` (target ``latest``) is triggered over the REST API as an operator would,
then the run succeeds; each task instance ran on the worker of the host it acts on (its
``hostname``: stop/start services on ``app``, the data directory on ``db-primary``, the
re-seed on ``db-replica``, gates and the record on the default worker); the services answer
healthy from another container; the replica streams from the recovered primary; and the
known rows are exactly there.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from urllib.parse import quote

import httpx
import pytest

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


def compose(deployment, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*deployment.compose, *args],
        cwd=deployment.root,
        env=deployment.env,
        capture_output=True,
        text=True,
        check=check,
        timeout=300,
    )


def psql(deployment, service: str, port: int, sql: str) -> str:
    """SQL on a DB host, over its local socket as the postgres OS user (peer auth)."""
    result = compose(
        deployment,
        "exec",
        "-T",
        service,
        "runuser",
        "-u",
        "postgres",
        "--",
        "psql",
        "-h",
        "/srv/tracktion/pg/sockets",
        "-p",
        str(port),
        "-d",
        "tracktion",
        "-v",
        "ON_ERROR_STOP=1",
        "-Atc",
        sql,
    )
    return result.stdout.strip()


def container_hostname(deployment, service: str) -> str:
    container = compose(deployment, "ps", "-q", service).stdout.strip()
    assert container, f"service {service} is not running"
    inspect = subprocess.run(
        ["docker", "inspect", "-f", "{{.Config.Hostname}}", container],
        capture_output=True,
        text=True,
        check=True,
    )
    return inspect.stdout.strip()


class Api:
    """The Airflow REST API (v2) with a bearer token from ``POST /auth/token``."""

    def __init__(self, url: str, password: str):
        self.http = httpx.Client(base_url=url, timeout=60)
        answer = self.http.post("/auth/token", json={"username": "admin", "password": password})
        answer.raise_for_status()
        self.http.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"

    def get(self, path: str) -> httpx.Response:
        return self.http.get(f"/api/v2{path}")

    def call(self, method: str, path: str, body: dict) -> dict:
        answer = self.http.request(method, f"/api/v2{path}", json=body)
        assert answer.status_code < 300, f"{method} {path}: {answer.status_code} {answer.text}"
        return answer.json()


def wait_for(predicate, timeout: float, interval: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(interval)


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


def test_pitr_over_rest_runs_each_step_on_its_host_and_keeps_every_row(deployment, api):
    # Given known rows on the primary, committed before the incident.
    marker = uuid.uuid4().hex
    psql(
        deployment,
        "db-primary",
        55432,
        f"CREATE TABLE IF NOT EXISTS {CHECK_TABLE} (id int, marker text, payload text, "
        "PRIMARY KEY (id, marker)); "
        f"INSERT INTO {CHECK_TABLE} SELECT i, '{marker}', md5(i::text || '{marker}') "
        f"FROM generate_series(1, {CHECK_ROWS}) AS i",
    )
    checksum_sql = (
        f"SELECT count(*) || ':' || md5(string_agg(id || '/' || payload, ',' ORDER BY id)) "
        f"FROM {CHECK_TABLE} WHERE marker = '{marker}'"
    )
    before = psql(deployment, "db-primary", 55432, checksum_sql)
    assert before.startswith(f"{CHECK_ROWS}:")

    # When dr_database_pitr is triggered over REST (the DAG unpaused first, as an operator).
    wait_for(
        lambda: api.get("/dags/dr_database_pitr").status_code == 200,
        DAG_VISIBLE_TIMEOUT_SECONDS,
        5,
        "the dag-processor to serialize dr_database_pitr",
    )
    api.call("PATCH", "/dags/dr_database_pitr", {"is_paused": False})
    run = api.call(
        "POST",
        "/dags/dr_database_pitr/dagRuns",
        {
            "logical_date": None,
            "conf": {"environment": "drill", "cluster": "main", "target_type": "latest"},
        },
    )
    run_path = f"/dags/dr_database_pitr/dagRuns/{quote(run['dag_run_id'], safe='')}"
    state = wait_for(
        lambda: (s := api.get(run_path).json()["state"]) in ("success", "failed") and s,
        RUN_TIMEOUT_SECONDS,
        10,
        f"run {run['dag_run_id']} to finish",
    )
    task_instances = api.get(f"{run_path}/taskInstances").json()["task_instances"]
    report = "\n".join(
        f"  {ti['task_id']}: {ti['state']} on {ti['hostname']!r} (queue {ti['queue']})"
        for ti in sorted(task_instances, key=lambda ti: ti["start_date"] or "")
    )
    print(f"dr_database_pitr {run['dag_run_id']}: {state}\n{report}")

    # Then the run succeeded,
    assert state == "success", report
    # each task ran on the worker of the host it acts on,
    default_worker = container_hostname(deployment, "airflow-worker")
    ran = {ti["task_id"]: ti for ti in task_instances}
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
