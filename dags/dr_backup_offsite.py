"""
### Offsite copy to S3

Schedule: the plan's `backup_schedule.offsite` (default hourly at :30).

Through the amazon provider's `S3Hook` on the plan's `backups.offsite_conn_id`, to
`backups.offsite`: the newest **verified** dump of each database, the newest verified base
backup (as one tar), the newest configuration and storage snapshots (each with its
sidecars) and the WAL archive from the oldest usable base backup's start. Large files go
up in parts (boto3 `TransferConfig`, plan `multipart_threshold_mb`/`multipart_chunk_mb`).
Every object carries its sha256 as metadata and is **read back and hashed** after upload.
With `backups.offsite_cross_region` set, every uploaded object is also copied server-side
to that bucket (another region, its own connection) and checked again.

Idempotent: objects already there with the same checksum (WAL: same name and size;
segments are immutable) are not uploaded again. `dry_run` lists what would go. A failure
fails the run and notifies.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, task

from tracktion_dr.airflow.steps import on_host
from tracktion_dr.airflow.support import DEFAULT_ARGS, backup_params
from tracktion_dr.core.plan import load_plan

PLAN = load_plan()


@dag(
    dag_id="dr_backup_offsite",
    schedule=PLAN.backup_schedule.offsite,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "backup", "offsite"],
    default_args=DEFAULT_ARGS,
    params=backup_params(PLAN, with_dry_run=True),
    doc_md=__doc__,
)
def dr_backup_offsite():
    @task(execution_timeout=timedelta(hours=2), **on_host("backups"))
    def copy_offsite(**context) -> dict:
        from tracktion_dr.airflow import backup_jobs as jobs

        params = context["params"]
        return jobs.offsite_copy(
            PLAN, params["environment"], dry_run=params["dry_run"], notify=params["notify"]
        )

    copy_offsite()


dr_backup_offsite()
