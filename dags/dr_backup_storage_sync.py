"""
### File-storage sync (near-real-time)

Schedule: the plan's `backup_schedule.storage_sync` (default every 10 minutes): the seed's
File System Recovery Level 1 ("real-time sync", RPO 1 h for audio files and uploads).

Mirrors every storage area into `backups.storage/sync/<area>/`: new and changed files
(size or mtime) are copied under a temporary name and renamed. A file deleted at the source
is **kept** in the mirror (an accidental deletion must not propagate into the copy meant to
undo it). `sync/<area>.sync.json` records when the pass started: the point the RPO watch
measures. A failure fails the run and notifies.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, task

from tracktion_dr.airflow.steps import on_host
from tracktion_dr.airflow.support import DEFAULT_ARGS, backup_params
from tracktion_dr.core.plan import load_plan

PLAN = load_plan()


@dag(
    dag_id="dr_backup_storage_sync",
    schedule=PLAN.backup_schedule.storage_sync,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "backup", "storage"],
    default_args=DEFAULT_ARGS,
    params=backup_params(PLAN),
    doc_md=__doc__,
)
def dr_backup_storage_sync():
    @task(execution_timeout=timedelta(minutes=30), **on_host("storage"))
    def sync_storage(**context) -> list[dict]:
        from tracktion_dr.airflow import backup_jobs as jobs

        params = context["params"]
        return jobs.storage_sync(PLAN, params["environment"], notify=params["notify"])

    sync_storage()


dr_backup_storage_sync()
