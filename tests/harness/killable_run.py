"""A run that a test can SIGKILL at a chosen moment, the way a worker dies in production.

The run is a child process in its own process group (``start_new_session``), so killing the
group takes everything the task started with it - ``pg_restore`` and its parallel workers,
``psql`` and the like - exactly what an OOM kill or a lost node does to a worker. The moment
is found by polling real state (task instance states in the Airflow metadata database,
``pg_stat_activity``, database names), never by sleeping a guessed number of seconds.

    with KillableRun.dag_test("dr_database_restore", conf, log_path=tmp / "run.log") as run:
        run.wait_until(lambda: task_state(...) == "success", what="the guard succeeded")
        run.kill()
        run.wait_exit()

The timeouts below are safety nets against a hung test, not assertions about speed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# The child runs one DAG with dag.test(), in-process (tasks run inside this one process).
DAG_TEST_PROGRAM = (
    "import json, sys\n"
    "from tracktion_dr.airflow.dag_runs import run_dag\n"
    "run_dag(sys.argv[1], json.loads(sys.argv[2]))\n"
)


class RunEnded(AssertionError):
    """The run exited before the moment the test waited for (the log tail says why)."""


class KillableRun:
    """A child process in its own process group: start, wait until, kill the group, wait."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ):
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,  # its own session and process group: killpg takes all
        )
        self.pgid = os.getpgid(self.process.pid)
        self.dag_id: str | None = None

    @classmethod
    def dag_test(
        cls,
        dag_id: str,
        conf: dict[str, Any],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> KillableRun:
        """``dag.test()`` of ``dag_id`` with ``conf`` (via ``tracktion_dr.airflow.dag_runs``) in a
        child process that inherits this process's environment (Airflow home, sandbox
        connections, ``PYTHONPATH``) unless ``env`` is given."""
        run = cls(
            [sys.executable, "-c", DAG_TEST_PROGRAM, dag_id, json.dumps(conf)],
            log_path=log_path,
            env=env,
        )
        run.dag_id = dag_id
        return run

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def wait_until(
        self,
        condition: Callable[[], T],
        *,
        what: str,
        timeout: float = 900,
        interval: float = 0.05,
    ) -> T:
        """Poll ``condition`` until it returns something truthy, and return that. Raises
        :class:`RunEnded` if the run exits first, ``TimeoutError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if not self.running:
                raise RunEnded(
                    f"the run exited (code {self.process.returncode}) before {what}:\n"
                    + self.log_tail()
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout:.0f}s\n" + self.log_tail())
            time.sleep(interval)

    def kill(self) -> None:
        """SIGKILL the whole process group (no handler runs, nothing is cleaned up)."""
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait_exit(self, timeout: float = 60) -> int:
        """Wait for the child to exit and for every other process of its group to be gone
        (children of a killed leader are reparented and reaped by init). Returns the
        child's exit code (``-9`` after :meth:`kill`)."""
        code = self.process.wait(timeout=timeout)
        deadline = time.monotonic() + timeout
        while self._group_alive():
            if time.monotonic() > deadline:
                raise TimeoutError(f"process group {self.pgid} still has members")
            time.sleep(0.05)
        self._log.close()
        if code < 0 and self.dag_id:
            fail_runs_left_running(self.dag_id)
        return code

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # A zombie member still "exists" to kill(0): only count live ones.
        return any(_is_live_member(pid, self.pgid) for pid in _pids())

    def log_tail(self, lines: int = 40) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def __enter__(self) -> KillableRun:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.running:
            self.kill()
        if not self._log.closed:
            self.wait_exit()


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _is_live_member(pid: int, pgid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # Fields after the parenthesised command: state is the 1st, pgrp the 3rd.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0] != "Z" and int(fields[2]) == pgid


def fail_runs_left_running(dag_id: str) -> int:
    """Mark the runs of ``dag_id`` that a killed ``dag.test()`` left "running" (and their
    unfinished task instances) failed: what a real scheduler does once the dead worker's
    heartbeat times out. ``dag.test()`` has no scheduler to do it, and a run that stays
    "running" forever would block later runs' exclusivity checks."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState

    unfinished = [
        TaskInstanceState.RUNNING,
        TaskInstanceState.QUEUED,
        TaskInstanceState.SCHEDULED,
        TaskInstanceState.UP_FOR_RETRY,
    ]
    with create_session() as session:
        runs = session.query(DagRun).filter_by(dag_id=dag_id, state=DagRunState.RUNNING).all()
        for run in runs:
            for ti in session.query(TaskInstance).filter(
                TaskInstance.dag_id == dag_id,
                TaskInstance.run_id == run.run_id,
                TaskInstance.state.in_(unfinished),
            ):
                ti.state = TaskInstanceState.FAILED
            run.state = DagRunState.FAILED
        return len(runs)


def incident_task_states(dag_id: str, incident_id: str) -> dict[str, str]:
    """Task instance states of the newest run of ``dag_id`` whose conf names
    ``incident_id`` (the child's run, read from the metadata database): the usual way a
    test finds "the guard succeeded" or "the gate failed" in a run it cannot see into."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        runs = session.execute(
            select(DagRun.run_id, DagRun.conf)
            .where(DagRun.dag_id == dag_id)
            .order_by(DagRun.id.desc())
            .limit(20)
        ).all()
        run_ids = [r for r, conf in runs if (conf or {}).get("incident_id") == incident_id]
        if not run_ids:
            return {}
        rows = session.execute(
            select(TaskInstance.task_id, TaskInstance.state).where(
                TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_ids[0]
            )
        ).all()
    return {task_id: str(state) for task_id, state in rows}
