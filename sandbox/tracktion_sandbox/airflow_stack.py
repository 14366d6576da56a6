"""A real Airflow on its own home: api-server, scheduler, dag-processor (and optionally the
triggerer) as separate processes, LocalExecutor, wired to the live sandbox through the same
AIRFLOW_CONN_* environment as ``make airflow``. Used by the end-to-end tests and by the
benchmarks, so both measure what an operator's deployment does, not ``dag.test()``.

Each component runs in its own process group; ``stop()`` signals every group (TERM, then
KILL after a grace period), so no process outlives its user.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]

# Scheduling latency is part of every recovery's time to service: the scheduler wakes
# often and the task runners start at once. These are the values the README recommends
# for a DR deployment (the defaults favour a busy, throughput-bound Airflow).
LOW_LATENCY = {
    "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.05",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
    # Plugins (plugins/dr_warm_start.py) imported when each process starts: task
    # processes fork with the DR library already loaded.
    "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "False",
}

TRIGGER_ATTEMPTS = 3  # see AirflowStack.trigger


class AirflowStack:
    def __init__(
        self,
        home: Path,
        *,
        api_port: int = 18280,
        triggerer: bool = False,
        extra_env: dict[str, str] | None = None,
    ):
        self.home = home
        self.api_port = api_port
        self.base_url = f"http://127.0.0.1:{api_port}"
        self.components = [
            ("api-server", ["api-server", "--port", str(api_port)]),
            ("scheduler", ["scheduler"]),
            ("dag-processor", ["dag-processor"]),
        ] + ([("triggerer", ["triggerer"])] if triggerer else [])
        self.processes: list[tuple[str, subprocess.Popen]] = []
        self.env = self._environment(extra_env or {})
        self._token: tuple[str, float] | None = None

    def _environment(self, extra: dict[str, str]) -> dict[str, str]:
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
                # Paused, except what the caller unpauses: unpaused, the scheduled backup,
                # retention and drill DAGs would run against the shared sandbox meanwhile.
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                "AIRFLOW__CORE__DAG_DISCOVERY_SAFE_MODE": "False",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
                "AIRFLOW__API_AUTH__JWT_SECRET": "stack-" + os.urandom(16).hex(),
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                **LOW_LATENCY,
                **extra,
            }
        )
        return env

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["airflow", "db", "migrate"], env=self.env, check=True, capture_output=True, timeout=180
        )
        for name, args in self.components:
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
        if self._token and self._token[1] > time.monotonic():
            return self._token[0]
        response = httpx.post(
            f"{self.base_url}/auth/token",
            json={"username": "admin", "password": self.admin_password()},
            timeout=10,
        )
        response.raise_for_status()
        # Tokens live for hours; renewed every 10 minutes all the same.
        self._token = (response.json()["access_token"], time.monotonic() + 600)
        return self._token[0]

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token()}"}
        return httpx.request(
            method, f"{self.base_url}{path}", headers=headers, timeout=15, **kwargs
        )

    def wait_until(
        self, what: str, check: Callable[[], Any], timeout: float, interval: float = 1
    ) -> Any:
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
            time.sleep(interval)
        raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{self.log_tail()}")

    def wait_for_dags(self, unpause: Iterable[str], timeout: float = 120) -> list[dict[str, Any]]:
        """Until every DAG file of dags/ is parsed (each defines the DAG named like it;
        other bundles may add more); then unpause ``unpause`` (only those)."""
        expected = {path.stem for path in (ROOT / "dags").glob("*.py")}

        def all_dags_listed() -> list[dict[str, Any]] | None:
            listed = self.api("GET", "/api/v2/dags?limit=200").json()["dags"]
            return listed if expected <= {d["dag_id"] for d in listed} else None

        dags = self.wait_until(
            f"the api-server and all {len(expected)} DAGs", all_dags_listed, timeout
        )
        for dag_id in unpause:
            response = self.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
            response.raise_for_status()
        return dags

    def trigger(self, dag_id: str, conf: dict[str, Any], run_id: str | None = None) -> str:
        """A run over REST. Its id is chosen here, so the trigger can be sent again: this
        stack's SQLite lets one writer in at a time, and two transactions of the api-server
        that wait on each other end with one rolled back and an HTTP 500 after sqlite3's
        5 s lock timeout (a longer one only lengthens the wait). The trigger is retried;
        a 409 on a retry means the earlier attempt got through after all."""
        run_id = run_id or f"manual__{datetime.now(UTC).isoformat()}"
        body: dict[str, Any] = {"logical_date": None, "conf": conf, "dag_run_id": run_id}
        for attempt in range(TRIGGER_ATTEMPTS):
            response = self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body)
            if attempt and response.status_code == 409:
                return run_id
            if response.status_code < 500 or attempt == TRIGGER_ATTEMPTS - 1:
                break
            time.sleep(1)
        response.raise_for_status()
        return response.json()["dag_run_id"]

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        response = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns")
        response.raise_for_status()
        return response.json()["dag_runs"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        response = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        response.raise_for_status()
        return response.json()["state"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float) -> str:
        def finished() -> str | None:
            state = self.run_state(dag_id, run_id)
            return state if state in ("success", "failed") else None

        return self.wait_until(f"{dag_id} {run_id} to finish", finished, timeout, interval=0.5)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        response = self.api(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=200"
        )
        response.raise_for_status()
        return response.json()["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        response = self.api(
            "GET",
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
            params={"deserialize": True, "stringify": False},
        )
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()["value"]


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass
