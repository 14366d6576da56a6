"""
### Configuration snapshot

Schedule: the plan's `backup_schedule.config_snapshot` (default daily 04:00 UTC, the
seed's "daily configuration snapshots", RPO 24 h).

The environment's `config_paths` into `config_full_<ts>.tar.gz` in `backups.configuration`,
with `config_full_<ts>.tar.gz.manifest.json` (sha256, size_bytes, started_at, finished_at,
every file with its size and sha256). Written under a temporary name, manifest first, then
renamed; verified (sha256) right after. Members sit under each configuration folder's base
name (`config/app.json`), the layout `dr_config_recovery` restores; two config paths with
the same base name are refused. The plan's `config_env_file`, filtered to
`config_env_prefixes`, goes in as `environment_snapshot.txt` (the archive is then 0600;
no other variable is ever archived). A failure fails the run and notifies.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, task

from tracktion_dr.airflow.steps import on_host
from tracktion_dr.airflow.support import DEFAULT_ARGS, backup_params
from tracktion_dr.core.plan import load_plan

PLAN = load_plan()


@dag(
    dag_id="dr_backup_config_snapshot",
    schedule=PLAN.backup_schedule.config_snapshot,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "backup", "configuration"],
    default_args=DEFAULT_ARGS,
    params=backup_params(PLAN),
    doc_md=__doc__,
)
def dr_backup_config_snapshot():
    @task(execution_timeout=timedelta(hours=2), **on_host("application"))
    def snapshot_configuration(**context) -> dict:
        from tracktion_dr.airflow import backup_jobs as jobs

        params = context["params"]
        return jobs.config_snapshot(PLAN, params["environment"], notify=params["notify"])

    snapshot_configuration()


dr_backup_config_snapshot()
