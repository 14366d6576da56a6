"""A real Airflow for end-to-end tests: api-server, scheduler and dag-processor as
separate processes on a temporary AIRFLOW_HOME (SQLite, LocalExecutor), wired to the live
sandbox through the same AIRFLOW_CONN_* environment as ``make airflow``.

Each component runs in its own process group; ``stop()`` signals every group (TERM, then
KILL after a grace period), so no process outlives the test session.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
# The DAGs the end-to-end tests start (both unscheduled): the only ones unpaused.
E2E_DAGS = ("dr_incident_response", "dr_initial_assessment")
API_PORT = 18280  # inside the test's own network namespace; not the UI's 8080
COMPONENTS = (
    ("api-server", ["api-server", "--port", str(API_PORT)]),
    ("scheduler", ["scheduler"]),
    ("dag-processor", ["dag-processor"]),
)


class AirflowStack:
    def __init__(self, home: Path):
        self.home = home
        self.base_url = f"http://127.0.0.1:{API_PORT}"
        self.processes: list[tuple[str, subprocess.Popen]] = []
        self.env = self._environment()

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
        airflow_bin = str(Path(sys.executable).parent)
        env.update(
            {
                "PATH": f"{airflow_bin}:{env.get('PATH', '')}",
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home}/airflow.db",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                # Paused, except what the tests run (E2E_DAGS): unpaused, the scheduled
                # backup, retention and drill DAGs would run against the shared sandbox
                # during the tests, and a stop mid-run leaves their scratch databases.
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                "AIRFLOW__CORE__DAG_DISCOVERY_SAFE_MODE": "False",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
                "AIRFLOW__API_AUTH__JWT_SECRET": "e2e-" + os.urandom(16).hex(),
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            }
        )
        return env

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["airflow", "db", "migrate"], env=self.env, check=True, capture_output=True, timeout=180
        )
        for name, args in COMPONENTS:
            log = open(self.home / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
            process = subprocess.Popen(
                ["airflow", *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() kills the whole tree
            )
            self.processes.append((name, process))

    def stop(self) -> None:
        for _, process in self.processes:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for _, process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process, signal.SIGKILL)
            process.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for name, _ in self.processes:
            text = (self.home / f"{name}.log").read_text(errors="replace").splitlines()
            parts.append(f"--- {name} ---\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)

    # -- REST helpers ---------------------------------------------------------------------

    def admin_password(self) -> str:
        path = self.home / "simple_auth_manager_passwords.json.generated"
        return json.loads(path.read_text())["admin"]

    def token(self) -> str:
        response = httpx.post(
            f"{self.base_url}/auth/token",
            json={"username": "admin", "password": self.admin_password()},
            timeout=10,
        )
        response.raise_for_status()
        return response.json()["access_token"]

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token()}"}
        return httpx.request(
            method, f"{self.base_url}{path}", headers=headers, timeout=15, **kwargs
        )

    def wait_until(self, what: str, check, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            for name, process in self.processes:
                if process.poll() is not None:
                    raise AssertionError(f"{name} exited ({process.returncode})\n{self.log_tail()}")
            try:
                last = check()
            except (httpx.HTTPError, OSError, KeyError, ValueError) as exc:
                last = exc
            if last and not isinstance(last, Exception):
                return last
            time.sleep(1)
        raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{self.log_tail()}")

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        response = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns")
        response.raise_for_status()
        return response.json()["dag_runs"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        response = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        response.raise_for_status()
        return response.json()["state"]


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def airflow(sandbox, tmp_path_factory):
    stack = AirflowStack(tmp_path_factory.mktemp("airflow-e2e"))
    try:
        stack.start()
        expected = len(list((ROOT / "dags").glob("*.py")))

        def all_dags_listed() -> list[dict[str, Any]] | None:
            listed = stack.api("GET", "/api/v2/dags?limit=100").json()
            return listed["dags"] if listed["total_entries"] >= expected else None

        dags = stack.wait_until(f"the api-server and all {expected} DAGs", all_dags_listed, 120)
        for dag_id in E2E_DAGS:
            response = stack.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
            response.raise_for_status()
        running = [d["dag_id"] for d in dags if not d["is_paused"] and d["dag_id"] not in E2E_DAGS]
        assert running == [], f"only {E2E_DAGS} may run here, not {running}"
        yield stack
    finally:
        stack.stop()
