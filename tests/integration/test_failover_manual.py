"""The manual failover through a real Airflow (api-server, scheduler, dag-processor) and
its REST API: the run waits at the human-in-the-loop approval, touches nothing until a
human answers, switches on Approve and switches nothing on Reject.

``airflow standalone`` is started for this module in the test's network namespace, on its
own fresh AIRFLOW_HOME, with the sandbox's connections and the project's DAGs folder from
the environment.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import httpx
import pytest
from failover_support import SERVICE, backend, secondary_registered

pytestmark = pytest.mark.sandbox
__all__ = ["secondary_registered"]  # a fixture, used by name

API = "http://127.0.0.1:8080"
START_TIMEOUT = 240
# On SQLite the api-server serialises writes; on a loaded machine a request has been seen
# to wait ~40 s for the lock. Generous timeouts and a slow poll keep the test honest.
API_TIMEOUT = 120
POLL_SECONDS = 3
HUMAN_SECONDS = 20
DAG_ID = "dr_failover"


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _healthy() -> bool:
    try:
        health = httpx.get(f"{API}/api/v2/monitor/health", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return False
    return all(
        health.get(part, {}).get("status") == "healthy" for part in ("scheduler", "dag_processor")
    )


@pytest.fixture(scope="module")
def airflow_api(sandbox, tmp_path_factory):
    """A real Airflow on its own SQLite database (a fresh AIRFLOW_HOME): the test process's
    dag.test() runs keep connections to the project's database, and SQLite serialises
    writers, so sharing it can stall the api-server."""
    assert not _port_open(8080), "something already listens on 8080 in this namespace"
    home = tmp_path_factory.mktemp("airflow-home")
    env = {**os.environ, "AIRFLOW_HOME": str(home)}
    env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)
    process = subprocess.Popen(
        ["airflow", "standalone"],
        stdout=(home / "standalone.log").open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # its components are its children: stop them as a group
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _healthy():
            assert time.monotonic() < deadline, "airflow standalone did not become healthy"
            assert process.poll() is None, f"airflow standalone exited: see {home}"
            time.sleep(2)
        passwords = home / "simple_auth_manager_passwords.json.generated"
        username, password = next(iter(json.loads(passwords.read_text()).items()))
        token = httpx.post(
            f"{API}/auth/token",
            json={"username": username, "password": password},
            timeout=API_TIMEOUT,
        ).json()["access_token"]
        client = httpx.Client(
            base_url=f"{API}/api/v2",
            headers={"Authorization": f"Bearer {token}"},
            timeout=API_TIMEOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while client.get(f"/dags/{DAG_ID}").status_code != 200:
            assert time.monotonic() < deadline, f"{DAG_ID} was never parsed"
            time.sleep(2)
        client.patch(f"/dags/{DAG_ID}", json={"is_paused": False}).raise_for_status()
        yield client
    finally:
        stop_process_group(process)


def stop_process_group(process: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM the whole group (the standalone's scheduler, workers, api-server...), then
    SIGKILL what is left after ``grace``: the standalone process itself exits first and
    would leave its children behind."""
    pgid = process.pid  # start_new_session: the group is named after its leader
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        process.poll()  # reap the leader, or its zombie keeps the group alive
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(10)


def trigger(client: httpx.Client) -> str:
    response = client.post(
        f"/dags/{DAG_ID}/dagRuns",
        json={
            "logical_date": None,
            "conf": {
                "environment": "drill",
                "target": "service",
                "service": SERVICE,
                "mode": "manual",
            },
        },
    )
    response.raise_for_status()
    return response.json()["dag_run_id"]


def task_state(client: httpx.Client, run_id: str, task_id: str) -> str | None:
    return (
        client.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}").json().get("state")
    )


def wait_for(predicate, what: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(POLL_SECONDS)


def run_until_awaiting_approval(client: httpx.Client) -> str:
    run_id = trigger(client)
    wait_for(
        lambda: task_state(client, run_id, "approve") in ("awaiting_input", "deferred"),
        "the approval task to wait for a human",
    )
    # Airflow 3.3.2 race: an answer that arrives before the scheduler has processed the
    # executor's "success" event of the parking workload makes it mark the resumed approval
    # task FAILED ("state changed externally"). On a loaded machine that event has taken
    # more than 3 s; a human takes longer than this anyway.
    time.sleep(HUMAN_SECONDS)
    return run_id


def finished(client: httpx.Client, run_id: str) -> str | None:
    state = client.get(f"/dags/{DAG_ID}/dagRuns/{run_id}").json()["state"]
    return state if state in ("success", "failed") else None


def answer(client: httpx.Client, run_id: str, option: str) -> None:
    client.patch(
        f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails",
        json={"chosen_options": [option]},
    ).raise_for_status()


def test_manual_failover_waits_for_approval_then_switches(
    sandbox, airflow_api, secondary_registered
):
    before = backend(SERVICE)["servers"]
    run_id = run_until_awaiting_approval(airflow_api)
    detail = airflow_api.get(
        f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails"
    ).json()
    assert detail["options"] == ["Approve", "Reject"]
    assert "enable `secondary` at weight 100" in detail["body"], "the prompt says what will happen"
    # The question reached the on-call chat with the link that answers it.
    asked = [
        r
        for r in map(json.loads, sandbox.layout.sink_webhooks.read_text().splitlines())
        if r["path"].startswith("/slack")
        and f"runs/{run_id}/tasks/approve/required_actions" in json.dumps(r)
    ]
    assert asked, "no approval request on Slack"
    # nothing happens while the question is open
    assert task_state(airflow_api, run_id, "switch") in (None, "none", "scheduled")
    assert backend(SERVICE)["servers"] == before
    answer(airflow_api, run_id, "Approve")
    assert wait_for(lambda: finished(airflow_api, run_id), "the run to finish") == "success"
    servers = backend(SERVICE)["servers"]
    assert servers["secondary"]["weight"] == 100 and servers["primary"]["status"] == "disabled"


def test_rejected_manual_failover_switches_nothing(airflow_api, secondary_registered):
    before = backend(SERVICE)["servers"]
    run_id = run_until_awaiting_approval(airflow_api)
    answer(airflow_api, run_id, "Reject")
    assert wait_for(lambda: finished(airflow_api, run_id), "the run to finish") == "failed"
    for task_id in ("fence_path", "fence_old_primary", "switch"):
        assert task_state(airflow_api, run_id, task_id) == "skipped", task_id
    assert task_state(airflow_api, run_id, "verdict") == "failed"
    assert backend(SERVICE)["servers"] == before
