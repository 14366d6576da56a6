"""
### DR site-failover drill (the plan's bi-annual business-continuity exercise)

Schedule: the plan's `test_schedule.bi_annually.cron`. Runs **`dr_site_failover` with
`mode=drill`** for real against the drill environment's recovery site: the stack is made
or reused, the site's database restored from the offsite copy only, its services started,
its balancer enabled and validated, the data the offsite copy lacked measured - **without
touching production** (the primary site is not required down and is never stopped; DNS
stays on the primary). The drill's site is dismantled afterwards (services and server
stopped, the restored data directory moved aside, kept).

1. **guard** - skips a scheduled run started after its window
   (`test_schedule.bi_annually.duration` from the cron's time: a DAG unpaused late does
   not hold a missed drill unattended; trigger by hand instead); refuses `production`; prints the plan of actions.
2. **run_site_failover** - a run of the failover DAG through the scheduler, waited for on
   the triggerer (a real run of that DAG: its own tasks, XCom, ledger record and report).
   Its record is this step's result.
3. **record**: RTO achieved (the failover run's, against the recovery site's tier) and the
   data the offsite copy lacked (measured by that run, against the transactional RPO);
   **notify_outcome**, **publish** (the report), **verdict** (fails when the failover run
   failed or a target was missed).

A dry run prints the plan of actions and runs the failover DAG as a dry run.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import dag

from tracktion_dr.airflow import steps
from tracktion_dr.airflow.dag_kit import open_incident, scenario_tail, skip_a_missed_drill
from tracktion_dr.airflow.drill_steps import ChildDagRunOperator
from tracktion_dr.airflow.support import DEFAULT_ARGS, common_params
from tracktion_dr.core.errors import InvalidInput
from tracktion_dr.core.plan import load_plan

PLAN = load_plan()
SCHEDULE = PLAN.test_schedule["bi_annually"].cron if "bi_annually" in PLAN.test_schedule else None
FAILOVER_DAG = "dr_site_failover"
ONCE = {"retries": 0}  # a drill is measured once


def _record_fields(run: dict, context) -> dict:
    ran = context["ti"].xcom_pull(task_ids="run_site_failover") or {}
    record = ran.get("record") or {}
    return {
        "rto_target_seconds": run["rto_seconds"],
        "rpo_target_seconds": run.get("rpo_seconds"),
        "data_loss_seconds": record.get("data_loss_seconds"),
        "backup_used": record.get("backup_used"),
        "details": {
            "failover_run": ran.get("run_id"),
            "failover_state": ran.get("state"),
            "failover_rto_achieved_seconds": record.get("rto_achieved_seconds"),
            "failover_rto_met": record.get("rto_met"),
            "failover_rpo_met": record.get("rpo_met"),
            "failover_details": record.get("details"),
        },
    }


def failover_conf(run: dict) -> dict:
    """The failover DAG's conf: drill mode, this drill's incident and clock."""
    return {
        "environment": run["environment"],
        "mode": "drill",
        "incident_id": run["incident_id"],
        "incident_started_at": run["started_at"],
        "dry_run": run["dry_run"],
        "notify": False,
    }


@dag(
    dag_id="dr_test_site_failover",
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "drill", "site"],
    default_args=DEFAULT_ARGS,
    params=common_params(PLAN, environment_default="drill"),
    doc_md=__doc__,
)
def dr_test_site_failover():
    @steps.guard(**ONCE)
    def guard(**context) -> dict:
        from tracktion_dr.scenarios import site

        skip_a_missed_drill(context, PLAN, "bi_annually")
        incident = open_incident(context, PLAN)
        if incident["environment"] == "production":
            raise InvalidInput(
                "environment",
                "the site-failover drill runs against the drill environment only",
                hint="a real site failover is dr_site_failover with mode=failover",
            )
        recovery = site.site_of(PLAN, incident["environment"])
        rpo = min((c.rpo for c in PLAN.data_categories.values()), default=None)
        run = {
            **incident,
            "rto_seconds": PLAN.tiers[recovery.tier].rto.total_seconds(),
            "rpo_seconds": rpo.total_seconds() if rpo else None,
            "stack_name": recovery.stack_name,
        }
        steps.print_plan_of_actions(
            run,
            [
                f"run {FAILOVER_DAG} (mode=drill, environment {run['environment']}) into "
                f"{recovery.stack_name} and wait for it: its own guard prints its plan",
                "record its RTO and measured data loss against the tier's targets, report",
            ],
        )
        return run

    run = guard()
    ran = ChildDagRunOperator(
        task_id="run_site_failover", trigger_dag_id=FAILOVER_DAG, run=run, make_conf=failover_conf
    )
    scenario_tail(PLAN, run, [ran], record_fields=_record_fields)


dr_test_site_failover()
