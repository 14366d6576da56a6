"""The fault-injection harness kills a whole process group, grandchildren included."""

from __future__ import annotations

import os
import sys

import pytest
from harness.killable_run import KillableRun, RunEnded, _is_live_member

# A child that starts a grandchild (as a task starts pg_restore), then waits on it.
PARENT = (
    "import subprocess, sys\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
    "print(child.pid, flush=True)\n"
    "child.wait()\n"
)


def test_kill_takes_the_whole_group(tmp_path):
    with KillableRun([sys.executable, "-c", PARENT], log_path=tmp_path / "run.log") as run:
        grandchild = run.wait_until(
            lambda: (tmp_path / "run.log").read_text().strip(), what="the grandchild started"
        )
        assert os.getpgid(int(grandchild)) == run.pgid != os.getpgid(0)
        run.kill()
        assert run.wait_exit() == -9
    # Gone, or a zombie waiting for init to reap it: nothing of the group runs any more.
    assert not _is_live_member(int(grandchild), run.pgid)


def test_waiting_for_a_moment_that_never_comes_says_the_run_ended(tmp_path):
    run = KillableRun([sys.executable, "-c", "print('bye')"], log_path=tmp_path / "run.log")
    with pytest.raises(RunEnded, match="bye"):
        run.wait_until(lambda: False, what="something")
    assert run.wait_exit() == 0
