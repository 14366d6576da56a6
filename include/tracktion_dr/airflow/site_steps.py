"""The amazon provider's pieces for the whole-site DAGs (dr_site_provision, dr_network_dns).

Airflow-facing: AWS clients through the provider's hooks (so credentials stay in Airflow
connections), and the provider's CloudFormation operator and sensor made to fit the step
kit: they take the stack from the guard's run, skip in a dry run, return the step's event,
and the operator creates a stack only when there is none (a retried or re-run creation
finds the stack and leaves it alone).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from airflow.providers.amazon.aws.operators.cloud_formation import (
    CloudFormationCreateStackOperator,
)
from airflow.providers.amazon.aws.sensors.cloud_formation import CloudFormationCreateStackSensor
from airflow.sdk import PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException

from tracktion_dr.airflow.steps import event, guard_result, now_iso

log = logging.getLogger(__name__)

# The guard's run, read by Jinja in the operators' templated fields (their rendered values
# show in the UI: which stack, region and connection this run used).
_RUN = "ti.xcom_pull(task_ids='guard')"
STACK_NAME = "{{ " + _RUN + "['stack_name'] }}"
STACK_REGION = "{{ " + _RUN + "['region'] }}"
STACK_CONN_ID = "{{ " + _RUN + "['aws_conn_id'] }}"
# The guard also pushes the CreateStack request under this XCom key.
STACK_REQUEST_KEY = "stack_request"


def cloudformation_client(conn_id: str, region: str) -> Any:
    """A boto3 CloudFormation client on an Airflow AWS connection (the provider's hook)."""
    from airflow.providers.amazon.aws.hooks.cloud_formation import CloudFormationHook

    return CloudFormationHook(aws_conn_id=conn_id, region_name=region).get_conn()


def route53_client(conn_id: str) -> Any:
    """A boto3 Route53 client on an Airflow AWS connection (the provider has no Route53
    hook: its base hook makes the client, with the connection's credentials and endpoint)."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    return AwsBaseHook(aws_conn_id=conn_id, client_type="route53").get_conn()


class RecoveryStackCreateOperator(CloudFormationCreateStackOperator):
    """The provider's CloudFormationCreateStackOperator, resumable: it creates the stack
    only when CloudFormation has none of that name (a stack left by an earlier attempt
    is the update step's and the sensor's business, never created twice)."""

    def __init__(self, *, stack_request: Any, **kwargs: Any):
        kwargs.setdefault("retries", 2)
        super().__init__(
            stack_name=STACK_NAME,
            cloudformation_parameters=stack_request,
            aws_conn_id=STACK_CONN_ID,
            region_name=STACK_REGION,
            **kwargs,
        )

    def execute(self, context: Any) -> dict[str, Any]:
        started = now_iso()
        run = guard_result(context)
        if run is None:
            return {"event": event(self.task_id, started, "skipped", "the guard refused")}
        if run.get("dry_run"):
            log.info("DRY RUN: %s would create %s now", self.task_id, self.stack_name)
            return {"event": event(self.task_id, started, "skipped", "dry run")}
        status = self.hook.get_stack_status(self.stack_name)
        if status is not None:
            detail = f"{self.stack_name} exists ({status}): not created again"
            log.info("%s", detail)
            return {"event": event(self.task_id, started, "skipped", detail), "created": False}
        super().execute(context)
        detail = f"creation of {self.stack_name} in {self.region_name} requested"
        return {"event": event(self.task_id, started, "succeeded", detail), "created": True}


class RecoveryStackSensor(CloudFormationCreateStackSensor):
    """The provider's CloudFormationCreateStackSensor (reschedule mode: no worker slot held
    while RDS takes its time), waiting for a created *or updated* stack, for at most the
    plan's ``create_timeout``. A stack that fails or rolls back fails the task at once
    with CloudFormation's reasons (the provider's sensor says only "bad state")."""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("retries", 0)
        kwargs.setdefault("mode", "reschedule")
        kwargs.setdefault("poke_interval", 30)
        super().__init__(
            stack_name=STACK_NAME, aws_conn_id=STACK_CONN_ID, region_name=STACK_REGION, **kwargs
        )

    def execute(self, context: Any) -> Any:
        run = guard_result(context)
        if run is None or run.get("dry_run"):
            why = "dry run" if run else "the guard refused"
            return {"event": event(self.task_id, now_iso(), "skipped", why)}
        self.timeout = float(run["create_timeout_seconds"])
        return super().execute(context)

    def poke(self, context: Any) -> bool | PokeReturnValue:
        from tracktion_dr.services import cloudformation as cfn

        client = self.hook.get_conn()
        state = cfn.describe_stack(client, self.stack_name)
        status = state.status if state else None
        if status in cfn.COMPLETE:
            first = context["ti"].get_first_reschedule_date(context)
            started = (first or datetime.now(UTC)).isoformat()
            detail = f"{self.stack_name} {status}"
            return PokeReturnValue(
                is_done=True,
                xcom_value={"event": event(self.task_id, started, "succeeded", detail)},
            )
        if status is None or status in cfn.IN_PROGRESS:
            log.info("%s: %s, waiting", self.stack_name, status or "not visible yet")
            return False
        reasons = "; ".join(cfn.failure_reasons(client, self.stack_name)) or state.reason
        raise AirflowFailException(f"the stack {self.stack_name} is {status}: {reasons}")
