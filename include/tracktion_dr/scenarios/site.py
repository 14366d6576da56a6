"""dr_site_provision's decisions: the recovery site's CloudFormation stack (the plan's
"minimum" or "full" recovery infrastructure) made, or brought up to date, or reused, and
its Outputs turned into the endpoints the recovery uses.

The guard validates the template with CloudFormation (a template CloudFormation refuses
ends the run there, with CloudFormation's message, before anything exists) and looks at
the stack as it is:

* none: the provider's ``CloudFormationCreateStackOperator`` creates it;
* complete and as the plan wants it (same template, same parameters): reused, nothing sent;
* complete but different: updated (``UpdateStack``), a typed confirmation where the
  environment demands one (an update may replace resources; the database and buckets keep
  a snapshot or are retained, see the templates' policies);
* being created or updated (a run killed while it waited): nothing sent, the run waits;
* failed (``ROLLBACK_COMPLETE``, ``*_FAILED``...): refused with CloudFormation's reasons.
  Such a stack can only be deleted, and a recovery never deletes: a human does, or the
  plan names another stack.

A re-run of the same incident therefore converges: it finds the stack it made and reuses
it. Reaching AWS needs an Airflow connection: the functions take ``connect(conn_id,
region)`` (a boto3 CloudFormation client through the amazon provider's hook, built by the
Airflow layer), so every decision here runs in a unit test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tracktion_dr.core.errors import InvalidInput, Refused, StepFailed
from tracktion_dr.core.incident import check_confirmation
from tracktion_dr.core.plan import Plan, RecoverySite, endpoint_placeholders
from tracktion_dr.core.site_templates import template_body
from tracktion_dr.scenarios import GateCheck, environment_of
from tracktion_dr.services import cloudformation as cfn
from tracktion_dr.services.cloudformation import StackState

# (AWS connection id, region) -> a boto3 CloudFormation client
Connect = Callable[[str, str], Any]

CREATE, UPDATE, REUSE, WAIT = "create", "update", "reuse", "wait"
STACK_TAGS = {"tracktion-dr": "recovery-site"}


class StackUnusable(Refused):
    """The stack exists in a state CloudFormation can neither update nor complete."""


def sites(plan: Plan) -> dict[str, RecoverySite]:
    """Environment name -> its recovery site, for the environments that have one."""
    return {name: env.recovery_site for name, env in plan.environments.items() if env.recovery_site}


def rto_seconds(plan: Plan) -> float:
    """The strictest RTO among the recovery sites' tiers (the gate's budget at parse time;
    each run uses its own environment's, see :func:`check_inputs`)."""
    targets = [plan.tiers[site.tier].rto.total_seconds() for site in sites(plan).values()]
    return min(targets or [t.rto.total_seconds() for t in plan.tiers.values()])


def site_of(plan: Plan, environment: str) -> RecoverySite:
    site = plan.environment(environment).recovery_site
    if site is None:
        raise InvalidInput(
            "environment",
            f"the plan gives the {environment} environment no recovery_site "
            f"(environments that have one: {sorted(sites(plan))})",
            hint="add a recovery_site section to the environment in the plan",
        )
    return site


def stack_request(plan: Plan, site: RecoverySite) -> dict[str, Any]:
    """The CreateStack (and UpdateStack) request: the plan's template and parameters."""
    return {
        "StackName": site.stack_name,
        "TemplateBody": template_body(site.template_path),
        "Parameters": [
            {"ParameterKey": key, "ParameterValue": value}
            for key, value in sorted(site.parameters.items())
        ],
        "Capabilities": list(cfn.CAPABILITIES),
        "Tags": [
            {"Key": k, "Value": v}
            for k, v in {**STACK_TAGS, "tracktion-dr-plan": plan.name}.items()
        ],
    }


def decide(state: StackState | None, changes: list[str], reasons: list[str]) -> str:
    """What to do with the stack as it is (see the module doc); refuses an unusable one."""
    if state is None:
        return CREATE
    if state.status in cfn.IN_PROGRESS:
        return WAIT
    if state.status in cfn.UPDATABLE:
        return UPDATE if changes else REUSE
    why = "; ".join(reasons) or state.reason or "no reason given"
    raise StackUnusable(
        f"the stack {state.name} is {state.status} and cannot be used or updated: {why}",
        hint="read its events in the CloudFormation console; a stack in this state can only "
        "be deleted, which a recovery never does: delete it by hand (or give the plan's "
        "recovery_site another stack_name) and run again",
    )


def inspect_stack(
    client: Any, site: RecoverySite, request: dict[str, Any]
) -> tuple[StackState | None, list[str], list[str]]:
    """(the stack as it is, what an update would change, why it failed if it did)."""
    state = cfn.describe_stack(client, site.stack_name)
    if state is None:
        return None, [], []
    changes: list[str] = []
    reasons: list[str] = []
    if state.status in cfn.UPDATABLE:
        current = cfn.stack_template(client, site.stack_name)
        changes = cfn.differences(state, current, request["TemplateBody"], site.parameters)
    elif state.status not in cfn.IN_PROGRESS:
        reasons = cfn.failure_reasons(client, site.stack_name)
    return state, changes, reasons


def check_inputs(
    plan: Plan, incident: dict[str, Any], params: Any, connect: Connect
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the run, the CreateStack request). Refused, with nothing created: no recovery site
    in the plan, a template CloudFormation refuses, an unusable stack, an update without
    the confirmation the environment demands."""
    site = site_of(plan, incident["environment"])
    environment = environment_of(plan, incident)
    request = stack_request(plan, site)
    client = connect(site.aws_conn_id, site.region)
    validation = cfn.validate_template(client, request["TemplateBody"], str(site.template_path))
    state, changes, reasons = inspect_stack(client, site, request)
    action = decide(state, changes, reasons)
    if action == UPDATE and not incident["dry_run"]:
        check_confirmation(
            environment.destructive_requires_confirmation,
            params.get("confirm"),
            f"site {site.stack_name}",
            incident["environment"],
        )
    run = {
        **incident,
        "stack_name": site.stack_name,
        "template": site.template,
        "template_file": str(site.template_path),
        "template_description": validation["description"],
        "region": site.region,
        "aws_conn_id": site.aws_conn_id,
        "parameters": dict(site.parameters),
        "action": action,
        "stack_status": state.status if state else None,
        "changes": changes,
        "endpoint_map": dict(site.endpoints),
        "rto_seconds": plan.tiers[site.tier].rto.total_seconds(),
        "create_timeout_seconds": site.create_timeout.total_seconds(),
    }
    return run, request


def plan_of_actions(run: dict[str, Any]) -> list[str]:
    where = f"{run['stack_name']} in {run['region']} (connection {run['aws_conn_id']})"
    act = {
        CREATE: f"create_stack: create {where} from the {run['template']} template with "
        + ", ".join(f"{k}={v}" for k, v in sorted(run["parameters"].items())),
        UPDATE: f"update_stack: update {where} ({run['stack_status']}): "
        + "; ".join(run["changes"]),
        REUSE: f"reuse {where}: {run['stack_status']}, same template and parameters (nothing sent)",
        WAIT: f"{where} is {run['stack_status']} (an earlier run's request): nothing sent, wait",
    }[run["action"]]
    return [
        f"template {run['template_file']} ({run['template']}) validated by CloudFormation",
        act,
        f"wait_for_stack: until the stack is complete (at most {run['create_timeout_seconds']:.0f}s)",
        "read_outputs: the stack's Outputs -> endpoints: "
        + ", ".join(f"{k} = {v}" for k, v in run["endpoint_map"].items()),
        "gate_site_ready: the stack complete and every endpoint known, within the tier's RTO",
    ]


def started_summary(run: dict[str, Any]) -> str:
    return (
        f"recovery site {run['stack_name']} ({run['template']}, {run['region']}): {run['action']}"
    )


# --- act -----------------------------------------------------------------------------------


def update_stack(plan: Plan, run: dict[str, Any], connect: Connect) -> dict[str, Any]:
    """Send UpdateStack when the stack, as it is now, is complete but not as the plan wants
    it; nothing when it is being created or updated (this run's creation, or an earlier
    run's request) or already right."""
    site = site_of(plan, run["environment"])
    request = stack_request(plan, site)
    client = connect(site.aws_conn_id, site.region)
    state, changes, reasons = inspect_stack(client, site, request)
    if state is None:
        raise StepFailed(
            f"the stack {site.stack_name} does not exist (create_stack should have made it)"
        )
    action = decide(state, changes, reasons)
    if action == WAIT:
        return {
            "detail": f"{site.stack_name} is {state.status}: nothing to update now",
            "status": "skipped",
        }
    if action == REUSE:
        return {
            "detail": f"{site.stack_name} is {state.status} as the plan wants it: reused",
            "status": "skipped",
        }
    if action == UPDATE and run["action"] != UPDATE:
        # The guard saw no update to make, so it asked no confirmation for one.
        raise StepFailed(
            f"{site.stack_name} changed since the guard looked ({'; '.join(changes)}): "
            "run again to review the update"
        )
    sent = cfn.update_stack(client, request)
    return {
        "detail": f"update of {site.stack_name} started: {'; '.join(changes)}"
        if sent
        else f"{site.stack_name}: CloudFormation found nothing to update",
        "updated": sent,
        "changes": changes,
    }


# --- the endpoints -----------------------------------------------------------------------------


def endpoints_from_outputs(endpoint_map: dict[str, str], outputs: dict[str, str]) -> dict[str, str]:
    """The recovery's endpoints: each of the plan's URL templates with the stack's Outputs
    filled in. A missing Output, or a result that is not a URL, is a StepFailed naming it."""
    endpoints: dict[str, str] = {}
    missing: dict[str, list[str]] = {}
    for name, template in endpoint_map.items():
        wanted = endpoint_placeholders(template)
        absent = [key for key in wanted if key not in outputs]
        if absent:
            missing[name] = absent
            continue
        url = template.format(**{key: outputs[key] for key in wanted})
        if "://" not in url or url.startswith("://"):
            raise StepFailed(f"endpoint {name}: {template} gives {url!r}, not a URL")
        endpoints[name] = url
    if missing:
        raise StepFailed(
            "the stack has no Outputs "
            + "; ".join(f"{keys} (for {name})" for name, keys in missing.items())
            + f" (it has {sorted(outputs)})"
        )
    return endpoints


def read_endpoints(plan: Plan, run: dict[str, Any], connect: Connect) -> dict[str, Any]:
    """The complete stack's Outputs, and the endpoints the plan makes of them."""
    site = site_of(plan, run["environment"])
    state = cfn.describe_stack(connect(site.aws_conn_id, site.region), site.stack_name)
    if state is None or state.status not in cfn.COMPLETE:
        raise StepFailed(
            f"the stack {site.stack_name} is {state.status if state else 'missing'}: no Outputs to read"
        )
    endpoints = endpoints_from_outputs(site.endpoints, state.outputs)
    return {
        "detail": "; ".join(f"{name} = {url}" for name, url in endpoints.items()),
        "stack_id": state.stack_id,
        "stack_status": state.status,
        "outputs": state.outputs,
        "endpoints": endpoints,
    }


def site_ready(plan: Plan, connect: Connect) -> GateCheck:
    """Gate: the stack is complete and every endpoint the plan maps can be made from its
    Outputs (read again from CloudFormation)."""

    def check(run: dict[str, Any]) -> tuple[bool, str]:
        site = site_of(plan, run["environment"])
        state = cfn.describe_stack(connect(site.aws_conn_id, site.region), site.stack_name)
        if state is None or state.status not in cfn.COMPLETE:
            return False, f"{site.stack_name} is {state.status if state else 'missing'}"
        try:
            endpoints = endpoints_from_outputs(site.endpoints, state.outputs)
        except StepFailed as exc:
            return False, str(exc)
        return True, f"{site.stack_name} {state.status}, {len(endpoints)} endpoint(s) known"

    return check


def record_fields(
    run: dict[str, Any], outputs: dict[str, Any] | None, *, rto_target_seconds: float
) -> dict[str, Any]:
    return {
        "rto_target_seconds": run.get("rto_seconds") or rto_target_seconds,
        "details": {
            "stack_name": run["stack_name"],
            "template": run["template"],
            "region": run["region"],
            "action": run["action"],
            "changes": run["changes"],
            "endpoints": (outputs or {}).get("endpoints", {}),
        },
    }
