"""The recovery site's CloudFormation stack: validate a template, look at a stack, update
it, read its Outputs and why it failed.

Works on a boto3 CloudFormation client (the Airflow layer gets it from the amazon
provider's ``CloudFormationHook``); creating a stack is the provider's
``CloudFormationCreateStackOperator``'s job. Nothing here deletes a stack: a recovery never
removes infrastructure, and a stack CloudFormation can only delete is left to a human.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from tracktion_dr.core.errors import InvalidInput, StepFailed

log = logging.getLogger(__name__)

# Where a stack is usable as it stands.
COMPLETE = frozenset({"CREATE_COMPLETE", "UPDATE_COMPLETE"})
# An update that failed and was rolled back leaves the stack working on its previous
# version: it can be updated again.
UPDATABLE = COMPLETE | {"UPDATE_ROLLBACK_COMPLETE"}
# Still moving towards a complete state: wait.
IN_PROGRESS = frozenset(
    {"CREATE_IN_PROGRESS", "UPDATE_IN_PROGRESS", "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS"}
)
# The stack the recovery needs needs the IAM capability (the hosts' role and profile).
CAPABILITIES = ["CAPABILITY_IAM"]
NO_UPDATES = "No updates are to be performed"


class CloudFormationError(StepFailed):
    """CloudFormation refused or failed a request; the message quotes CloudFormation."""


def aws_message(exc: Exception) -> str:
    """CloudFormation's own sentence from a botocore ClientError (else the error's text)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        return str(error.get("Message") or error.get("Code") or exc)
    return str(exc)


@dataclass(frozen=True)
class StackState:
    """A stack as CloudFormation describes it."""

    name: str
    stack_id: str
    status: str
    reason: str = ""
    parameters: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stack_id": self.stack_id,
            "status": self.status,
            "reason": self.reason,
            "parameters": self.parameters,
            "outputs": self.outputs,
        }


def validate_template(client: Any, body: str, template: str) -> dict[str, Any]:
    """CloudFormation's ValidateTemplate: a template it refuses is refused here, with its
    message (nothing is created; ``template`` is the file, named in the refusal). Returns
    the template's description and capabilities."""
    from botocore.exceptions import ClientError

    try:
        answer = client.validate_template(TemplateBody=body)
    except ClientError as exc:
        raise InvalidInput(
            "recovery_site.template",
            f"CloudFormation refused the template {template}: {aws_message(exc)}",
            hint=f"fix {template} (cfn-lint {template} shows such problems locally)",
        ) from None
    return {
        "description": answer.get("Description", ""),
        "capabilities": answer.get("Capabilities", []),
    }


def describe_stack(client: Any, name: str) -> StackState | None:
    """The stack named ``name``, or None when there is none (a deleted stack is none)."""
    from botocore.exceptions import ClientError

    try:
        stacks = client.describe_stacks(StackName=name)["Stacks"]
    except ClientError as exc:
        if "does not exist" in aws_message(exc):
            return None
        raise CloudFormationError(f"cannot describe the stack {name}: {aws_message(exc)}") from None
    if not stacks or stacks[0]["StackStatus"] == "DELETE_COMPLETE":
        return None
    stack = stacks[0]
    return StackState(
        name=stack["StackName"],
        stack_id=stack["StackId"],
        status=stack["StackStatus"],
        reason=stack.get("StackStatusReason") or "",
        parameters={
            p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])
        },
        outputs={o["OutputKey"]: str(o["OutputValue"]) for o in stack.get("Outputs", [])},
    )


def stack_template(client: Any, name: str) -> str:
    """The template the stack was last created or updated with (its text)."""
    body = client.get_template(StackName=name, TemplateStage="Original")["TemplateBody"]
    if isinstance(body, dict):  # botocore parses a JSON template; ours are YAML text
        import json

        return json.dumps(body, sort_keys=True)
    return str(body)


def differences(
    state: StackState, current_template: str, body: str, parameters: dict[str, str]
) -> list[str]:
    """What an update would change: the template, and every parameter the plan sets that
    the stack holds otherwise. Empty: the stack is as the plan wants it."""
    changed = []
    if current_template.strip() != body.strip():
        changed.append("template")
    for key, value in sorted(parameters.items()):
        if state.parameters.get(key) != value:
            changed.append(f"{key}: {state.parameters.get(key)!r} -> {value!r}")
    return changed


def update_stack(client: Any, request: dict[str, Any]) -> bool:
    """UpdateStack with the same request a creation would send; False when CloudFormation
    finds nothing to change (a re-run of an update that already happened)."""
    from botocore.exceptions import ClientError

    allowed = ("StackName", "TemplateBody", "Parameters", "Capabilities", "Tags")
    try:
        client.update_stack(**{k: v for k, v in request.items() if k in allowed})
    except ClientError as exc:
        if NO_UPDATES in aws_message(exc):
            return False
        raise CloudFormationError(
            f"CloudFormation refused to update {request['StackName']}: {aws_message(exc)}"
        ) from None
    return True


def failure_reasons(client: Any, name: str, limit: int = 5) -> list[str]:
    """Why the stack failed, from its events (resource, status, CloudFormation's reason),
    oldest failure first: the first one is usually the cause, the rest its consequences."""
    from botocore.exceptions import ClientError

    try:
        events = client.describe_stack_events(StackName=name)["StackEvents"]
    except ClientError as exc:
        return [f"(events unavailable: {aws_message(exc)})"]
    failed = [
        f"{e['LogicalResourceId']} {e['ResourceStatus']}: {e.get('ResourceStatusReason', '')}"
        for e in events
        if str(e.get("ResourceStatus", "")).endswith("FAILED")
    ]
    return list(reversed(failed))[:limit]
