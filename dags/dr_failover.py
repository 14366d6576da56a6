"""
### DR failover

Moves a service or the database from its primary to its secondary. Replaces the seed's
`automated_failover.sh` and `manual_failover.sh` (the latter is this DAG with
`mode = manual`).

**Target `service`** (through the load balancer API, `backends/{service}/servers/{host}`):
the primary server is confirmed **unhealthy** and the secondary confirmed **healthy**
(otherwise the run stops, says why, and switches nothing); the secondary is enabled at
weight 100, then the primary disabled at weight 0; `gate_failover` opens only when a
request routed through the balancer is answered by the secondary.

**Target `database`**: the primary is confirmed down and the replica a reachable standby;
then `fence_old_primary`, on the old primary's host (the worker queue of the cluster's
`host` in the plan), proves its data directory is the old primary (system identifier, not
in recovery, not the standby itself; otherwise it refuses and nothing is switched) and
**fences** it (a running postmaster stopped, `standby.signal` and a `DR_FENCED` note
written, so it comes back read-only); then `switch` promotes the replica (`pg_promote`)
and repoints the balancer's `database` backend to it (the services find the writable
database there), `gate_failover` opens when a write commits on the new primary and the
services using it answer healthy, and `measure_data_loss` reports the data lost:
incident time − newest canary heartbeat that survived.

**A run cut short** (its worker died after `pg_promote`): re-run the same `incident_id`. A
replica found promoted already passes the preconditions, and `fence_old_primary` goes on
only if the old primary carries this incident's `DR_FENCED` note; the switch then only
repoints what is left. Another incident finds the pair failed over and its fence refuses.

**The old primary's host is gone** (its worker never takes `fence_old_primary`): nothing
can be written to its disks. Once you know it is off, mark `fence_old_primary` *success* in
the UI: the switch goes on and records that only the balancer keeps writes away from the
old primary (rebuild it with `dr_standby_rebuild` before it starts again). Left alone, the
queued task is failed by the scheduler (`[scheduler] task_queued_timeout`) and nothing is
switched.

**Mode `manual`**: before anything is touched, `approve` (Airflow's human-in-the-loop
approval) shows what will happen and waits; the run proceeds only on **Approve**. Reject
(or no answer within the tier's RTO) switches nothing, and `approval_outcome` fails the
run saying so.

A database failover holds its cluster and database for the run (no restore or PITR of
them at the same time); the tail (`record` → `notify_outcome` + `publish` → `verdict`)
releases them.

**Params**: `target`, `mode`, `service` (for a service failover), `primary_server` /
`secondary_server` (names in the balancer backend; defaults `primary` and `secondary`, or
`replica` for the database), plus the common params (`dry_run` checks the preconditions and
prints the plan, touches nothing).
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, dag, task

from tracktion_dr.airflow.access import ACCESS
from tracktion_dr.airflow.dag_kit import RtoGate, open_incident, scenario_tail, take_exclusivity
from tracktion_dr.airflow.gate_triggers import named_check
from tracktion_dr.airflow.notifier import DrNotifier
from tracktion_dr.airflow.steps import guard, print_plan_of_actions, step
from tracktion_dr.airflow.support import DEFAULT_ARGS, common_params
from tracktion_dr.core.plan import load_plan
from tracktion_dr.notify.runs import notify_started
from tracktion_dr.scenarios import failover

PLAN = load_plan()
DAG_ID = "dr_failover"
SERVICES = failover.service_names(PLAN)
APPROVAL_TIMEOUT = failover.approval_timeout(PLAN)
ON_CALL = [n for n, c in PLAN.notifications.items() if c.kind in ("slack", "pagerduty")]


def record_fields(run: dict, context) -> dict:
    ti = context["ti"]
    return failover.record_fields(
        run,
        loss=ti.xcom_pull(task_ids="measure_data_loss"),
        decision=ti.xcom_pull(task_ids="approve"),
        switched=ti.xcom_pull(task_ids="switch"),
    )


def task_state(context, task_id: str) -> str | None:
    """This run's state of ``task_id`` (as Airflow's task runner sees it)."""
    ti = context["ti"]
    states = ti.get_task_states(dag_id=ti.dag_id, task_ids=[task_id], run_ids=[ti.run_id])
    state = (states or {}).get(ti.run_id, {}).get(task_id)
    return None if state is None else str(state)


@dag(
    dag_id=DAG_ID,
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "scenario", "failover"],
    default_args=DEFAULT_ARGS,
    params={
        **common_params(PLAN, environment_default=None),
        "target": Param(
            type="string",
            enum=["service", "database"],
            title="Target",
            description="Fail over one service (load balancer) or the database (promote the replica).",
            section="Failover",
        ),
        "mode": Param(
            "automatic",
            type="string",
            enum=["automatic", "manual"],
            title="Mode",
            description="manual: wait for a human approval in the Airflow UI before acting.",
            section="Failover",
        ),
        "service": Param(
            "",
            type="string",
            title="Service",
            description=f"For target=service: one of {', '.join(SERVICES)}.",
            section="Failover",
        ),
        "database": Param(
            "tracktion",
            type="string",
            title="Database",
            description="For target=database: the plan's database whose cluster fails over.",
            section="Failover",
        ),
        "primary_server": Param(
            "primary",
            type="string",
            title="Primary server",
            description="The server to move away from, as named in the load balancer backend.",
            section="Failover",
        ),
        "secondary_server": Param(
            "",
            type="string",
            title="Secondary server",
            description="The server to move to (empty: 'secondary' for a service, 'replica' "
            "for the database).",
            section="Failover",
        ),
    },
    doc_md=__doc__,
)
def dr_failover():
    @guard()
    def check_inputs(**context) -> dict:
        run = failover.check_inputs(PLAN, open_incident(context, PLAN), context["params"])
        if resources := failover.locked_resources(run, PLAN):
            run.update(take_exclusivity(context, run, resources))
        summary = failover.started_summary(run)
        print_plan_of_actions(run, failover.plan_of_actions(PLAN, run), header=summary)
        notify_started(PLAN, run, DAG_ID, summary)
        return run

    @step("check")
    def preconditions(run: dict, **context) -> dict:
        return failover.preconditions(PLAN, run, ACCESS)

    @task.branch(retries=0)
    def approval_path(run: dict) -> str:
        return failover.approval_branch(run)

    approve = ApprovalOperator(
        task_id="approve",
        subject="Failover {{ params.target }} in {{ params.environment }}: approve?",
        body=(
            "**Incident** {{ ti.xcom_pull(task_ids='guard')['incident_id'] }}\n\n"
            "**Found**: {{ ti.xcom_pull(task_ids='preconditions')['found'] }}\n\n"
            "**On Approve, this run will:**\n\n"
            "{{ ti.xcom_pull(task_ids='preconditions')['plan_text'] }}\n\n"
            "Reject (or no answer in time) switches nothing."
        ),
        defaults="Reject",
        response_timeout=APPROVAL_TIMEOUT,
        # The question and the link that answers it go to the on-call's chat and pager.
        notifiers=[DrNotifier(kind="hitl", channels=ON_CALL, severity="critical")],
        retries=0,
    )

    @task.branch(retries=0, trigger_rule="none_failed_min_one_success")
    def fence_path(run: dict) -> list[str]:
        return failover.fence_branch(run)

    @step("destructive", host="database_primary")
    def fence_old_primary(run: dict, **context) -> dict:
        return failover.fence(PLAN, run, ACCESS)

    @step("destructive", trigger_rule="none_failed_min_one_success")
    def switch(run: dict, **context) -> dict:
        fenced = context["ti"].xcom_pull(task_ids="fence_old_primary")
        return failover.switch(PLAN, run, ACCESS, fenced)

    @step("check")
    def measure_data_loss(run: dict, **context) -> dict:
        return failover.measure_data_loss(PLAN, run, ACCESS)

    # After all, and not wired to `approve`: a Reject skips approve's direct downstream.
    @step("check", after_all=True)
    def approval_outcome(run: dict, **context) -> str:
        asked = task_state(context, "approve") == "success"
        decision = context["ti"].xcom_pull(task_ids="approve")
        return failover.approval_outcome(run, asked, decision)

    run = check_inputs()
    path = approval_path(run)
    preconditions(run) >> path
    approved = [approve, EmptyOperator(task_id="automatic")]
    fencing = fence_path(run)
    switched = switch(run)
    # The switch is also directly below the approval: a Reject skips it by name (the
    # operator skips its direct downstream only), never through trigger rules.
    path >> approved >> fencing >> fence_old_primary(run) >> switched
    approved >> switched
    fencing >> switched
    gate = RtoGate(
        task_id="gate_failover",
        check=named_check("failover_serving"),
        incident=run,
        plan=PLAN,
    )
    decided = approval_outcome()
    switched >> gate >> measure_data_loss(run) >> decided
    scenario_tail(PLAN, run, [decided], record_fields=record_fields, exclusive=True)


dr_failover()
