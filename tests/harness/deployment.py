"""Reaching the compose deployment under test (tests/deploy/conftest.py's ``deployment``):
compose commands, SQL on a DB host, a container's hostname, the REST API, waiting."""

from __future__ import annotations

import subprocess
import time
import uuid
from typing import NamedTuple
from urllib.parse import quote

import httpx


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


def psql(deployment, service: str, port: int, sql: str, *, check: bool = True) -> str:
    """SQL on a DB host, over its local socket as the postgres OS user (peer auth);
    ``check=False``: an error is an empty answer (e.g. a table a standby has not replayed)."""
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
        check=check,
    )
    return result.stdout.strip() if result.returncode == 0 else ""


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

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        path = f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances?limit=200"
        answer = self.get(path)
        assert answer.status_code == 200, f"{path}: {answer.status_code} {answer.text}"
        return answer.json()["task_instances"]


def wait_for(predicate, timeout: float, interval: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(interval)


def describe(dag_id: str, run_id: str, state: str, task_instances: list[dict]) -> str:
    """A run's task instances, in the order they started: state, host and queue."""
    lines = [f"{dag_id} {run_id}: {state}"]
    for ti in sorted(task_instances, key=lambda ti: ti["start_date"] or "~"):
        lines.append(
            f"  {ti['task_id']}: {ti['state']} on {ti['hostname']!r} (queue {ti['queue']})"
        )
    return "\n".join(lines)


class KnownRows(NamedTuple):
    marker: str  # this batch's rows carry it
    checksum_sql: str  # count and md5 of the batch, in id order
    before: str  # that checksum when written


def write_known_rows(
    deployment, table: str, rows: int, *, service: str = "db-primary", port: int = 55432
) -> KnownRows:
    """``rows`` rows committed on the primary (db-primary unless a failover moved it) in
    ``table``, marked as one batch, and their checksum: what a recovery must bring back
    exactly."""
    marker = uuid.uuid4().hex
    psql(
        deployment,
        service,
        port,
        f"CREATE TABLE IF NOT EXISTS {table} (id int, marker text, payload text, "
        "PRIMARY KEY (id, marker)); "
        f"INSERT INTO {table} SELECT i, '{marker}', md5(i::text || '{marker}') "
        f"FROM generate_series(1, {rows}) AS i",
    )
    checksum_sql = (
        f"SELECT count(*) || ':' || md5(string_agg(id || '/' || payload, ',' ORDER BY id)) "
        f"FROM {table} WHERE marker = '{marker}'"
    )
    before = psql(deployment, service, port, checksum_sql)
    assert before.startswith(f"{rows}:"), before
    return KnownRows(marker, checksum_sql, before)
