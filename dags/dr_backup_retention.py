"""
### Backup retention (the only place that prunes)

Schedule: the plan's `backup_schedule.retention` (default daily 07:00 UTC).

Per group (each database's dumps, base backups, configuration snapshots, each storage
area's snapshots) it **keeps** every good backup of the last `keep_daily` days that have one
and the newest of each of the last `keep_weekly` ISO weeks (plan `backup_schedule.keep`, default 7 and 4), **always the
newest verified backup**, recent failed backups (evidence), every snapshot a kept
incremental builds on, and **every WAL segment from the oldest kept base backup's start**.

Expired backups are **moved aside** (with their sidecars) into the plan's `backups.expired`
area, never deleted; with no such area, it only reports. `dry_run` reports the exact same
decisions and moves nothing. The XCom lists every kept and expired item with its reason.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, task

from tracktion_dr.airflow.steps import on_host
from tracktion_dr.airflow.support import DEFAULT_ARGS, backup_params
from tracktion_dr.core.plan import load_plan

PLAN = load_plan()


@dag(
    dag_id="dr_backup_retention",
    schedule=PLAN.backup_schedule.retention,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "backup", "retention"],
    default_args=DEFAULT_ARGS,
    params=backup_params(PLAN, with_dry_run=True),
    doc_md=__doc__,
)
def dr_backup_retention():
    @task(retries=0, execution_timeout=timedelta(hours=2), **on_host("backups"))
    def apply_retention(**context) -> dict:
        from tracktion_dr.airflow import backup_jobs as jobs

        params = context["params"]
        return jobs.apply_retention(PLAN, params["environment"], dry_run=params["dry_run"])

    apply_retention()


dr_backup_retention()
