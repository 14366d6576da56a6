"""Run one quarterly-drill chain step as a real run of the step's own DAG.

Airflow-facing (it runs DAGs): ``dag.test()`` in a child process, so the step's tasks,
XCom and ledger record are exactly that DAG's. A LocalExecutor-style stop-gap: on a Celery
deployment the chain should trigger the step DAGs through the scheduler instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any


def run_step(dag_id: str, conf: dict[str, Any], timeout_seconds: float) -> dict[str, Any]:
    """Run one chain step as a real DAG run of the step's own DAG (``dag.test()`` in a
    child process, so its tasks, XCom and ledger record are exactly that DAG's) and
    return its outcome: {"dag_id", "run_id", "state", "record"}."""
    completed = subprocess.run(  # noqa: S603 - fixed argv, conf passed as JSON data
        [sys.executable, "-m", "tracktion_dr.airflow.drill_steps", dag_id, json.dumps(conf)],
        capture_output=True,
        text=True,
        timeout=timeout_seconds,
        check=False,
    )
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith("DRILL-STEP-RESULT "):
            return json.loads(line.removeprefix("DRILL-STEP-RESULT "))
    tail = (completed.stderr or completed.stdout)[-800:]
    return {
        "dag_id": dag_id,
        "run_id": None,
        "state": "failed",
        "record": None,
        "error": f"exit {completed.returncode}: {tail}",
    }


def _main(argv: list[str]) -> int:
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states

    dag_id, conf = argv[0], json.loads(argv[1])
    dag_run = run_dag(dag_id, conf)
    record = task_result(dag_run, "record")
    result = {
        "dag_id": dag_id,
        "run_id": dag_run.run_id,
        "state": str(dag_run.state),
        "record": record,
        "task_states": task_states(dag_run),
        "start_date": dag_run.start_date.isoformat() if dag_run.start_date else None,
        "end_date": dag_run.end_date.isoformat() if dag_run.end_date else None,
    }
    print("DRILL-STEP-RESULT " + json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
