"""
### Test fixture DAG for the task failure callback (not shipped in dags/)

`crash` raises on every try (it has one retry), `hang` outlives its execution timeout,
`fine` succeeds: the shared `DEFAULT_ARGS` callback must report `crash` and `hang` once
each, on their final failure, and say nothing about `fine`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, task

from tracktion_dr.airflow.support import DEFAULT_ARGS


@dag(
    dag_id="dr_failure_probe",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["dr", "test"],
    default_args={**DEFAULT_ARGS, "retries": 1, "retry_delay": timedelta(0)},
    doc_md=__doc__,
)
def dr_failure_probe():
    @task
    def crash() -> None:
        raise RuntimeError("probe crash: the scratch disk is full")

    @task(retries=0, execution_timeout=timedelta(seconds=2))
    def hang() -> None:
        time.sleep(120)

    @task
    def fine() -> int:
        return 1

    crash()
    hang()
    fine()


dr_failure_probe()
