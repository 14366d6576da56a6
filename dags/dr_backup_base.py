"""
### Base backup of every cluster

Schedule: the plan's `backup_schedule.base_backup` (default daily 01:00 UTC): the starting
point point-in-time recovery replays the WAL archive onto (Database Recovery Levels 1-2).

For each cluster naming a `replication_conn_id` (a role with REPLICATION, not the
superuser): `pg_basebackup` with streamed WAL and a SHA256 backup manifest, compressed as
the plan's `backup_schedule.base_backup_compression` says (default `server-zstd:level=3,workers=2`:
`base.tar.zst` + `pg_wal.tar.zst`; `none` = plain format), extracted into a scratch
directory and checked there with `pg_verifybackup` before it is renamed into place;
`base_<ts>.backup_info.json` (start/stop LSN, timeline, times, size, sha256 of each archive)
and `.verification.json` beside it.

A failure fails the run and notifies (param `notify`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, task

from tracktion_dr.airflow.steps import on_host
from tracktion_dr.airflow.support import DEFAULT_ARGS, backup_params
from tracktion_dr.core.plan import load_plan

PLAN = load_plan()


@dag(
    dag_id="dr_backup_base",
    schedule=PLAN.backup_schedule.base_backup,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "backup", "database"],
    default_args=DEFAULT_ARGS,
    params=backup_params(PLAN),
    doc_md=__doc__,
)
def dr_backup_base():
    @task(execution_timeout=timedelta(hours=2), **on_host("backups"))
    def base_backup(**context) -> list[dict]:
        from tracktion_dr.airflow import backup_jobs as jobs

        params = context["params"]
        return jobs.base_backups(PLAN, params["environment"], notify=params["notify"])

    base_backup()


dr_backup_base()
