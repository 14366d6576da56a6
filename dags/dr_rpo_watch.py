"""
### RPO watch

Schedule: the plan's `backup_schedule.rpo_watch` (default every 5 minutes).

For each data category of the plan: the age of its **newest restorable point** against its
RPO target. Transactional data: the newest commit replayable from the WAL archive
(`pg_waldump`), or the newest good dump if later. Audio files, user uploads, logs: the
newest copy `dr_storage_recovery` can restore each area from - the start of the last sync
pass when the mirror is intact (every copy the sync recorded present at its recorded size),
else the newest snapshot; the figure names the copy (the oldest area counts).
Configuration: the newest configuration snapshot. A category with no data in the
environment is reported and skipped.

Any breach fails the run (visible as a failed run in the UI) and notifies (param `notify`)
with one sentence per category, e.g. `configuration: NO restorable point at all`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, task

from tracktion_dr.airflow.steps import on_host
from tracktion_dr.airflow.support import DEFAULT_ARGS, backup_params
from tracktion_dr.core.plan import load_plan

PLAN = load_plan()


@dag(
    dag_id="dr_rpo_watch",
    schedule=PLAN.backup_schedule.rpo_watch,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "backup", "watch", "rpo"],
    default_args=DEFAULT_ARGS,
    params=backup_params(PLAN),
    doc_md=__doc__,
)
def dr_rpo_watch():
    # Every figure is read from the backups (the WAL archive, dumps, storage mirrors and
    # snapshots, configuration snapshots): on the backup host.
    @task(retries=0, execution_timeout=timedelta(minutes=10), **on_host("backups"))
    def check_rpo(**context) -> list[dict]:
        from tracktion_dr.airflow import backup_jobs as jobs

        params = context["params"]
        return jobs.rpo_watch(PLAN, params["environment"], notify=params["notify"])

    check_rpo()


dr_rpo_watch()
