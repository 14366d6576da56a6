"""
### DR recovery site provisioning (whole-site disaster)

Makes the **recovery site**'s infrastructure in the backup region: the plan's "minimum" or
"full" recovery infrastructure as a CloudFormation stack (VPC over two or three zones,
security groups, PostgreSQL on RDS, the application hosts behind a load balancer, S3
storage and the hosts' access to the offsite backups, the site's names in Route53). The
environment's `recovery_site` in the plan names the stack, the template
(`include/config/cloudformation/recovery-<minimum|full>.yaml`), the region, the AWS
connection, the parameters (sizes) and how the stack's Outputs become the endpoints the
recovery uses.

**Flow**
1. `guard`: CloudFormation validates the template (**a template it refuses ends the run
   here, with CloudFormation's message; nothing is created**); the stack is looked at as
   it is: none (create), complete and as the plan wants it (reuse: nothing sent),
   complete but different (update: typed confirmation `RESTORE site <stack>` where the
   environment demands it), being created or updated (wait), failed (refused with
   CloudFormation's reasons: such a stack can only be deleted, by a human). Prints the
   plan of actions.
2. `create_stack`: the amazon provider's CloudFormationCreateStackOperator, only when no
   stack of that name exists.
3. `update_stack`: UpdateStack only when the stack is complete and differs from the plan.
4. `wait_for_stack`: the provider's CloudFormationCreateStackSensor (reschedule mode),
   until the stack is CREATE_ or UPDATE_COMPLETE, at most the plan's `create_timeout`; a
   failed or rolled-back stack fails it with CloudFormation's reasons.
5. `read_outputs`: the stack's Outputs and the **endpoints** made of them (XCom
   `endpoints`: e.g. `tracktion` = `postgresql://host:port/tracktion`, `load_balancer`).
6. `gate_site_ready`: the stack complete and every endpoint known, within the tier's RTO.

Resumable: a re-run (same incident or not) finds the stack it made and reuses it; a run
killed while the stack was being made waits for it instead of creating another. Nothing
is ever deleted: the database keeps a snapshot and the buckets are retained even if the
stack is removed later by hand.

**Params**: `confirm` (only for an update, where the environment demands it), plus the
common params (`dry_run` validates the template, looks at the stack and prints what
would be sent; nothing is created).

Not done here: starting PostgreSQL and the services on the new site, restoring data into
it, and pointing DNS at it (`dr_network_dns`).
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Param, dag

from tracktion_dr.airflow import steps
from tracktion_dr.airflow.dag_kit import RtoGate, open_incident, scenario_tail
from tracktion_dr.airflow.gate_triggers import named_check
from tracktion_dr.airflow.site_steps import (
    STACK_REQUEST_KEY,
    RecoveryStackCreateOperator,
    RecoveryStackSensor,
    cloudformation_client,
)
from tracktion_dr.airflow.support import DEFAULT_ARGS, common_params
from tracktion_dr.core.plan import load_plan
from tracktion_dr.notify.runs import notify_started
from tracktion_dr.scenarios import site

PLAN = load_plan()
DAG_ID = "dr_site_provision"
RTO_SECONDS = site.rto_seconds(PLAN)


def record_fields(run: dict, context) -> dict:
    outputs = context["ti"].xcom_pull(task_ids="read_outputs")
    return site.record_fields(run, outputs, rto_target_seconds=RTO_SECONDS)


@dag(
    dag_id=DAG_ID,
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "scenario", "site", "infrastructure"],
    default_args=DEFAULT_ARGS,
    params={
        **common_params(PLAN, environment_default=None),
        "confirm": Param(
            "",
            type="string",
            title="Confirmation",
            description="Only to update an existing stack where the environment demands it: "
            "type RESTORE site <stack name>.",
            section="Recovery site",
        ),
    },
    doc_md=__doc__,
)
def dr_site_provision():
    @steps.guard()
    def guard(**context) -> dict:
        run, request = site.check_inputs(
            PLAN, open_incident(context, PLAN), context["params"], cloudformation_client
        )
        context["ti"].xcom_push(key=STACK_REQUEST_KEY, value=request)
        steps.print_plan_of_actions(run, site.plan_of_actions(run))
        notify_started(PLAN, run, DAG_ID, site.started_summary(run))
        return run

    @steps.step("destructive")
    def update_stack(run: dict, created: dict, **context) -> dict:
        return site.update_stack(PLAN, run, cloudformation_client)

    @steps.step("check", skip_in_dry_run=True)
    def read_outputs(run: dict, ready: dict, **context) -> dict:
        return site.read_endpoints(PLAN, run, cloudformation_client)

    run = guard()
    created = RecoveryStackCreateOperator(
        task_id="create_stack", stack_request=run[STACK_REQUEST_KEY]
    )
    run >> created
    updated = update_stack(run, created.output)
    ready = RecoveryStackSensor(task_id="wait_for_stack")
    updated >> ready
    outputs = read_outputs(run, ready.output)
    gate = RtoGate(
        task_id="gate_site_ready",
        check=named_check("recovery_site_ready"),
        incident=run,
        plan=PLAN,
        rto_seconds=RTO_SECONDS,
        poke_interval=5,
    )
    outputs >> gate
    scenario_tail(PLAN, run, [gate], record_fields=record_fields)


dr_site_provision()
