"""
### Backup verification: prove the backups restore

Schedule: the plan's `backup_schedule.verify` (default daily 06:00 UTC).

| task | what it proves |
|---|---|
| `check_backups` | every dump: sha256 vs its manifest + `pg_restore --list` vs the manifest's tables; every base backup: `pg_verifybackup` (a compressed one: sha256 of its archives, then extracted into a scratch directory beside it, verified there, the scratch removed); every snapshot: sha256 |
| `check_wal_continuity` | the WAL archive is continuous from the oldest kept base backup's start and fresher than the RPO |
| `test_restore` | **the part others skip**: the newest dump of each database is restored into a scratch database (`dr_verify_<db>_<ts>`) on its cluster, exact row counts compared with the manifest, scratch dropped |
| `record` | every outcome into the ledger (`dr.backup_checks` on `dr_ledger`); each verdict is also kept beside its backup (`.verification.json`), which is what the catalog reads: a failed backup is never picked |
| `verdict` | fails the run if anything failed, and notifies (param `notify`) naming each failed backup and the reason |

Touches no backup: a test restore only creates and drops its own scratch database, a base
backup check only its own scratch directory (`.verify_base_<ts>`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, task

from tracktion_dr.airflow.steps import on_host
from tracktion_dr.airflow.support import DEFAULT_ARGS, backup_params
from tracktion_dr.core.plan import load_plan

PLAN = load_plan()


@dag(
    dag_id="dr_backup_verify",
    schedule=PLAN.backup_schedule.verify,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "backup", "verify"],
    default_args=DEFAULT_ARGS,
    params=backup_params(PLAN),
    doc_md=__doc__,
)
def dr_backup_verify():
    @task(retries=0, execution_timeout=timedelta(hours=2), **on_host("backups"))
    def check_backups(**context) -> list[dict]:
        from tracktion_dr.airflow import backup_jobs as jobs

        return jobs.verify_all(PLAN, context["params"]["environment"])

    @task(retries=0, execution_timeout=timedelta(minutes=10), **on_host("backups"))
    def check_wal_continuity(**context) -> list[dict]:
        from tracktion_dr.airflow import backup_jobs as jobs
        from tracktion_dr.backups import watch

        environment = PLAN.environment(context["params"]["environment"])
        result = watch.watch_wal(
            jobs.catalog_for(environment), watch.transactional_rpo(PLAN, environment)
        )
        return [
            {
                "backup": f"wal_archive {result.since}..{result.last}",
                "kind": "wal_archive",
                "status": "verified" if result.ok else "failed",
                "check": "continuity + freshness",
                "reason": "; ".join(result.problems) or "continuous and fresh",
            }
        ]

    @task(retries=0, execution_timeout=timedelta(hours=4), **on_host("backups"))
    def test_restore(**context) -> list[dict]:
        from tracktion_dr.airflow import backup_jobs as jobs

        return jobs.test_restore_newest_dumps(PLAN, context["params"]["environment"])

    @task(retries=0, trigger_rule="all_done")
    def record(checks: list, wal: list, restores: list, **context) -> dict:
        from tracktion_dr.airflow.support import conninfo
        from tracktion_dr.evidence import ledger

        rows = []
        for name, part in (
            ("check_backups", checks),
            ("check_wal_continuity", wal),
            ("test_restore", restores),
        ):
            if part is None:  # the task failed before returning: that is a failed check too
                rows.append(
                    {
                        "backup": f"({name})",
                        "kind": "task",
                        "status": "failed",
                        "check": name,
                        "reason": f"task {name} did not finish",
                    }
                )
            rows += part or []
        for row in rows:
            # A test restore supersedes the plain check of the same dump in the ledger row.
            row["backup"] = row["backup"] + (
                " (test restore)" if "test restore" in row["check"] else ""
            )
        count = ledger.record_backup_checks(
            conninfo(ledger.LEDGER_CONN_ID),
            dag_id=context["dag"].dag_id,
            run_id=context["run_id"],
            environment=context["params"]["environment"],
            checks=rows,
        )
        failed = [r for r in rows if r["status"] == "failed"]
        return {"recorded": count, "failed": failed, "checks": rows}

    @task(retries=0)
    def verdict(summary: dict, **context) -> dict:
        from tracktion_dr.airflow import backup_jobs as jobs

        if summary["failed"]:
            jobs.fail(
                PLAN,
                "Backup verification failed",
                [f"{r['backup']}: {r['reason']}" for r in summary["failed"]],
                env_name=context["params"]["environment"],
                notify=context["params"]["notify"],
            )
        return {"verified": summary["recorded"]}

    checks = check_backups()
    wal = check_wal_continuity()
    restores = test_restore()
    checks >> restores  # restore only after the cheap checks recorded their verdicts
    verdict(record(checks, wal, restores))


dr_backup_verify()
