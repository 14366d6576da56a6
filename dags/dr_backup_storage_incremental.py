"""
### File-storage snapshot: incremental

Schedule: the plan's `backup_schedule.storage_incremental` (default Monday to Saturday 03:00 UTC).
The seed's File System Recovery Level 2 - Daily Incremental: files changed since the newest snapshot of the area (its manifest names the snapshot it builds on; with none yet, a full is taken).

For every storage area of the environment (audio files, user uploads, logs):
`<area>_incremental_<ts>.tar.gz` in `backups.storage/<area>/` with a manifest (sha256,
size_bytes, started_at, finished_at, level, based_on, the file list), written atomically
and verified right after. A failure fails the run and notifies.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, task

from tracktion_dr.airflow.steps import on_host
from tracktion_dr.airflow.support import DEFAULT_ARGS, backup_params
from tracktion_dr.core.plan import load_plan

PLAN = load_plan()


@dag(
    dag_id="dr_backup_storage_incremental",
    schedule=PLAN.backup_schedule.storage_incremental,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "backup", "storage"],
    default_args=DEFAULT_ARGS,
    params=backup_params(PLAN),
    doc_md=__doc__,
)
def dr_backup_storage_incremental():
    @task(execution_timeout=timedelta(hours=2), **on_host("storage"))
    def snapshot_storage(**context) -> list[dict]:
        from tracktion_dr.airflow import backup_jobs as jobs

        params = context["params"]
        return jobs.storage_snapshots(
            PLAN, params["environment"], "incremental", notify=params["notify"]
        )

    snapshot_storage()


dr_backup_storage_incremental()
