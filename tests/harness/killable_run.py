"""Run a DAG in a child process of its own process group, and SIGKILL the whole group at a
chosen moment - the way a worker dies (OOM killer, node loss, ``kill -9``).

The moment is found by polling the real state (task states in the metadata database,
files, the server), never by sleeping: :meth:`KillableRun.kill_when` takes a predicate and
kills the group the first time it holds. Servers that ``pg_ctl`` started have daemonized
into their own session (pg_ctl's child calls ``setsid``), so they survive the kill, as
they would in real life; :meth:`survivors` proves nothing of the group is left.

Usage::

    run = KillableRun("dr_database_pitr", conf, log_path=tmp_path / "killed.log").start()
    run.kill_when(lambda: staging.exists(), what="while the data directory is prepared")
    assert run.survivors() == []
    dag_run = run_dag("dr_database_pitr", conf)  # the re-run, same incident

The child runs ``tracktion_dr.dag_runs.run_dag`` (``dag.test()``), with this process's
environment (Airflow home, plan, the sandbox's connections).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

RUNNER = (
    "import json, sys\n"
    "from tracktion_dr.dag_runs import run_dag\n"
    "dag_run = run_dag(sys.argv[1], json.loads(sys.argv[2]))\n"
    "print('KILLABLE_RUN_FINISHED', dag_run.run_id, dag_run.state, flush=True)\n"
)


class RunEndedFirst(AssertionError):
    """The run finished (or died on its own) before the awaited moment came."""


class KillableRun:
    def __init__(self, dag_id: str, conf: dict[str, Any], *, log_path: Path):
        self.dag_id = dag_id
        self.conf = conf
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = datetime.now(UTC)
        self.killed_at: datetime | None = None

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> KillableRun:
        self.started_at = datetime.now(UTC) - timedelta(seconds=1)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", RUNNER, self.dag_id, json.dumps(self.conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: killed as a whole
                env=dict(os.environ),
            )
        return self

    @property
    def pgid(self) -> int:
        assert self.process is not None, "start() first"
        return self.process.pid  # a session leader's pid is its group id

    def kill_when(
        self,
        moment: Callable[[], bool],
        *,
        what: str,
        timeout: float = 900,
        poll_seconds: float = 0.005,
    ) -> None:
        """SIGKILL the whole process group the first time ``moment()`` is true."""
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout
        while True:
            if moment():
                self.kill()
                return
            if self.process.poll() is not None:
                raise RunEndedFirst(
                    f"the run ended (exit {self.process.returncode}) before {what}; "
                    f"see {self.log_path}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(
                    f"{what} did not come within {timeout:.0f}s; see {self.log_path}"
                )
            time.sleep(poll_seconds)

    def wait_until(
        self,
        moment: Callable[[], bool],
        *,
        what: str,
        timeout: float = 900,
        poll_seconds: float = 0.005,
    ) -> None:
        """Return (without killing) the first time ``moment()`` is true: to change the
        world under a live run at a precise point (hide a file, stop a service)."""
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout
        while not moment():
            if self.process.poll() is not None:
                raise RunEndedFirst(
                    f"the run ended (exit {self.process.returncode}) before {what}; "
                    f"see {self.log_path}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what} did not come within {timeout:.0f}s; see {self.log_path}"
                )
            time.sleep(poll_seconds)

    def kill(self) -> None:
        assert self.process is not None
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=60)
        self.killed_at = datetime.now(UTC)

    def wait(self, timeout: float = 1800) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def survivors(self, settle_seconds: float = 10) -> list[int]:
        """Processes still in the killed group (should be none), after letting the kernel
        reap them."""
        deadline = time.monotonic() + settle_seconds
        while True:
            alive = [pid for pid in _pids_in_group(self.pgid) if not _zombie(pid)]
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.1)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- the run's state in the metadata database -------------------------------------

    def task_state(self, task_id: str) -> str | None:
        """The state of ``task_id`` in this run (the newest task instance of the DAG
        started since this run started), or None before it starts."""
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            row = session.execute(
                select(TaskInstance.state)
                .where(
                    TaskInstance.dag_id == self.dag_id,
                    TaskInstance.task_id == task_id,
                    TaskInstance.start_date >= self.started_at,
                )
                .order_by(TaskInstance.start_date.desc())
                .limit(1)
            ).first()
        return str(row[0]) if row and row[0] is not None else None

    def task_reached(
        self, task_id: str, states: tuple[str, ...] = ("success",)
    ) -> Callable[[], bool]:
        """A moment: ``task_id`` of this run is in one of ``states``."""

        def moment() -> bool:
            return self.task_state(task_id) in states

        return moment


def _pids_in_group(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) == pgid:
                pids.append(int(entry.name))
        except (ProcessLookupError, PermissionError):
            continue
    return pids


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True
