"""
### WAL archive watch

Schedule: the plan's `backup_schedule.wal_watch` (default every 5 minutes: three looks per
15-minute transactional RPO).

The archive must be **continuous** from the start segment of the oldest kept base backup
to its newest segment, and that newest segment must be **younger than the RPO** of the
environment's databases (the strictest of their tier's and data category's). A gap fails
the run naming every missing segment (e.g. `missing segment(s) 00000001000000000000001A`);
a stale archive fails saying how old it is. Both notify (param `notify`).

Touches nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, task

from tracktion_dr.airflow.steps import on_host
from tracktion_dr.airflow.support import DEFAULT_ARGS, backup_params
from tracktion_dr.core.plan import load_plan

PLAN = load_plan()


@dag(
    dag_id="dr_backup_wal_watch",
    schedule=PLAN.backup_schedule.wal_watch,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "backup", "watch"],
    default_args=DEFAULT_ARGS,
    params=backup_params(PLAN),
    doc_md=__doc__,
)
def dr_backup_wal_watch():
    @task(retries=0, execution_timeout=timedelta(minutes=10), **on_host("backups"))
    def check_wal_archive(**context) -> dict:
        from tracktion_dr.airflow import backup_jobs as jobs

        params = context["params"]
        return jobs.wal_watch(PLAN, params["environment"], notify=params["notify"])

    check_wal_archive()


dr_backup_wal_watch()
