"""
### DR quarterly full-system recovery test

The plan's quarterly drill (`test_schedule.quarterly.cron`) against the **drill**
environment, with the RTO clock running from the simulated loss:

1. **guard** - skips a scheduled run started after its window
   (`test_schedule.quarterly.duration` from the cron's time: a DAG unpaused late does not
   hold a missed drill unattended; trigger by hand instead); refuses `production`; the chain's DAGs exist; the cluster can be recovered
   (a recoverable window exists in the backups); nothing touched yet.
2. **simulate_loss** - the drill cluster is lost: PostgreSQL stopped like a crash, its data
   directory moved aside to `<dir>.lost_<tag>` (kept, never deleted). The clock starts here.
3. **step_N_<dag>** - the plan's `drills.quarterly.steps`, in order: each step's own DAG is
   triggered through the scheduler (`TriggerDagRunOperator`, run id
   `<this run id>__step_N_<dag>`) with its conf plus this drill's incident id and clock
   start, and waited for on the triggerer (no worker slot held); the child run's state,
   task states and record (read back through the task SDK) are the step's result. The
   step DAGs must be unpaused: the guard refuses otherwise. The sandbox plan's chain is
   `dr_database_pitr` (PITR to latest) → `dr_initial_assessment` (infrastructure checks) →
   `dr_post_recovery_validation`; `dr_infrastructure_recovery`, `dr_application_recovery`
   and `dr_config_recovery` are added to the YAML list when they land - no code change.
4. **safety_net** (always runs) - if the cluster does not answer after the chain, the lost
   data directory is put back (the failed one moved aside) so the drill never leaves the
   environment down.
5. **record**: simulated loss and each step's time, RTO achieved (last step done - loss)
   vs the tier's target, data lost (measured from the canary by the PITR step) vs RPO;
   **notify_outcome** (the plan's notification policy, when `notify`); **publish** (the
   report); **verdict**.

A dry run prints the guard's plan of actions and touches nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import dag

from tracktion_dr.airflow import steps
from tracktion_dr.airflow.dag_kit import open_incident, scenario_tail, skip_a_missed_drill
from tracktion_dr.airflow.drill_steps import DrillStepOperator, dag_paused_in_airflow
from tracktion_dr.airflow.support import DEFAULT_ARGS, common_params
from tracktion_dr.core.plan import load_plan
from tracktion_dr.scenarios import drills

PLAN = load_plan()
SCHEDULE = PLAN.test_schedule["quarterly"].cron if "quarterly" in PLAN.test_schedule else None
STEPS = list(PLAN.drills.quarterly.steps) if PLAN.drills else []
CHAIN = [(drills.chain_task_id(i, step.dag_id), step) for i, step in enumerate(STEPS)]
STEP_TIMEOUT = PLAN.drills.quarterly.step_timeout.total_seconds() if PLAN.drills else None
# The drill is measured once: a retry would restart the clock's story, not the recovery.
ONCE = {"retries": 0}


def chain_outcome(pulled, task_id: str) -> dict | None:
    """What a chain step kept for the record (also when it failed), else its skip event."""
    return pulled(task_ids=task_id, key=drills.CHAIN_KEY) or (pulled(task_ids=task_id) or {}).get(
        "event"
    )


def record_fields(run: dict, context) -> dict:
    pulled = context["ti"].xcom_pull
    chain = [(task_id, step.label, chain_outcome(pulled, task_id)) for task_id, step in CHAIN]
    net = (pulled(task_ids="safety_net") or {}).get("event") or {}
    loss = pulled(task_ids="simulate_loss")
    return drills.quarterly_record_fields(PLAN, run, loss, chain, net.get("detail"))


@dag(
    dag_id="dr_test_quarterly",
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "drill"],
    default_args=DEFAULT_ARGS,
    params=common_params(PLAN, environment_default="drill"),
    doc_md=__doc__,
)
def dr_test_quarterly():
    # The guard reads the cluster's backups (its recoverable window); the loss and the
    # safety net act on the cluster's data directory: all on the primary's host.
    @steps.guard(host="database_primary", **ONCE)
    def guard(**context) -> dict:
        skip_a_missed_drill(context, PLAN, "quarterly")
        incident = open_incident(context, PLAN)
        paused = None if incident["dry_run"] else dag_paused_in_airflow(context["ti"])
        run = {**incident, **drills.guard_quarterly(PLAN, incident, paused)}
        steps.print_plan_of_actions(run, drills.quarterly_plan_of_actions(PLAN, run))
        return run

    @steps.step("destructive", host="database_primary", **ONCE)
    def simulate_loss(run: dict, **context) -> dict:
        return drills.lose_cluster(PLAN, run)

    @steps.step("destructive", after_all=True, host="database_primary", **ONCE)
    def safety_net(run: dict, **context) -> str:
        """Runs whatever happened: the drill never leaves the environment down."""
        return drills.safety_net(PLAN, run, context["ti"].xcom_pull(task_ids="simulate_loss"))

    run = guard()
    lost = simulate_loss(run)
    previous = lost
    for task_id, step in CHAIN:
        current = DrillStepOperator(
            task_id=task_id, step=step, run=run, loss=lost, timeout_seconds=STEP_TIMEOUT
        )
        previous >> current
        previous = current
    net = safety_net()
    previous >> net
    scenario_tail(PLAN, run, [net], record_fields=record_fields)


dr_test_quarterly()
