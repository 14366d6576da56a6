"""
### Logical dump of every database

Schedule: the plan's `backup_schedule.logical_dump` (default daily 02:00 UTC, the seed's
Database Recovery Level 2).

For each database in the environment: `pg_dump --format=custom` (compressed; `pg_restore
-j N` reads it) into the plan's `backups.logical` location, with a manifest of exact row
counts taken **in the same snapshot** as the dump, its size and sha256. Written under a
temporary name and renamed, so the catalog never lists half a dump. Checked right after:
sha256 against the manifest and `pg_restore --list` against the manifest's tables; the
verdict is recorded beside the dump (`.verification.json`). The full test restore is
`dr_backup_verify`'s job.

A failed dump or check fails the run and (param `notify`, on by default) posts to Slack and
pages through PagerDuty.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, task

from tracktion_dr.airflow.steps import on_host
from tracktion_dr.airflow.support import DEFAULT_ARGS, backup_params
from tracktion_dr.core.plan import load_plan

PLAN = load_plan()


@dag(
    dag_id="dr_backup_logical_dump",
    schedule=PLAN.backup_schedule.logical_dump,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "backup", "database"],
    default_args=DEFAULT_ARGS,
    params=backup_params(PLAN),
    doc_md=__doc__,
)
def dr_backup_logical_dump():
    @task(execution_timeout=timedelta(hours=2), **on_host("backups"))
    def dump_and_check(**context) -> list[dict]:
        from tracktion_dr.airflow import backup_jobs as jobs

        params = context["params"]
        return jobs.logical_dumps(PLAN, params["environment"], notify=params["notify"])

    dump_and_check()


dr_backup_logical_dump()
