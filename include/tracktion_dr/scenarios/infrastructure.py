"""dr_infrastructure_recovery's decisions: which checks run, which findings this DAG
repairs by itself (only what the plan allows, never a system file), when the repairs
hold, and the sentence naming what is still failing.

The checks and findings are ``tracktion_dr.services.infrastructure``'s; this module adds the
service-manager checks (they need the plan's controllers) and the repairs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from tracktion_dr.core.errors import InvalidInput, ValidationFailed
from tracktion_dr.core.plan import Controller, Environment, HostRole, Plan
from tracktion_dr.scenarios import GateCheck, SystemAccess, environment_of, joined
from tracktion_dr.services.commands import last_lines, run_command
from tracktion_dr.services.dependencies import ensure_storage_area
from tracktion_dr.services.infrastructure import (
    AREAS,
    Finding,
    infrastructure_findings,
    render_findings,
)
from tracktion_dr.services.probes import ProbeFailure
from tracktion_dr.services.systemd import SystemdController

log = logging.getLogger(__name__)

__all__ = ["AREAS"]

# The host the checks, the repairs and the gate run on (the step kit's ``host``): the
# storage areas (writable, free disk, a missing directory recreated) are that host's files,
# and so is the free memory measured. DNS and the service managers (supervisord's XML-RPC)
# answer over the network from there as well. The configuration paths are checked in the
# same pass: they are the application host's files (the same host in the compose plan).
HOST: HostRole = "storage"

MANAGER_PREFIX = "service manager "
PRUNE = ["docker", "system", "prune", "--force"]
PRUNE_TIMEOUT_SECONDS = 600
# What answers for each kind of service manager (supervisord answers over its XML-RPC).
MANAGER_COMMANDS = {
    "docker_compose": ["docker", "info", "--format", "{{.ServerVersion}}"],
    "systemd": ["systemctl", "is-system-running"],
}


def rto_seconds(plan: Plan) -> float:
    """Everything runs on the infrastructure: it is back when the most critical tier could be."""
    return min(tier.rto.total_seconds() for tier in plan.tiers.values())


# --- guard -------------------------------------------------------------------------------


def check_inputs(incident: dict[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    areas = list(params["areas"]) or list(AREAS)
    unknown = [a for a in areas if a not in AREAS]
    if unknown:
        raise InvalidInput("areas", f"unknown {unknown} (choose from {list(AREAS)})")
    return {**incident, "areas": areas, "prune_docker": bool(params["prune_docker"])}


def plan_of_actions(plan: Plan, run: dict[str, Any]) -> list[str]:
    environment = environment_of(plan, run)
    policy = environment.infrastructure
    actions = [f"check {', '.join(run['areas'])} (every check concurrent, time-bounded)"]
    if "storage" in run["areas"]:
        actions.append(
            "recreate a missing storage directory with the plan's owner and mode"
            if policy.repair_directories
            else "storage: findings only (the plan's repair_directories is off)"
        )
    if "compute" in run["areas"]:
        actions.append(
            "restart the Docker engine when a compose host's engine does not answer"
            if policy.restart_service_manager
            else "compute: findings only (the plan's restart_service_manager is off)"
        )
    if run["prune_docker"]:
        actions.append("docker system prune --force on compose hosts (asked for: prune_docker)")
    actions.append("network: findings only (system files are never rewritten)")
    actions.append("gate_repaired: the repaired findings are OK again, then report all findings")
    return actions


def started_summary(run: dict[str, Any]) -> str:
    return f"checking {', '.join(run['areas'])}"


# --- checks ------------------------------------------------------------------------------


def _supervisord_answers(spec: Controller, access: SystemAccess) -> Callable[[float], str]:
    def check(timeout: float) -> str:
        try:
            programs = access.controller(spec).programs()  # type: ignore[attr-defined]
        except Exception as exc:
            raise ProbeFailure(str(exc)[:200]) from None
        return f"supervisord answers ({len(programs)} programs)"

    return check


def _command_answers(argv: list[str]) -> Callable[[float], str]:
    def check(timeout: float) -> str:
        try:
            result = run_command(argv, timeout)
        except Exception as exc:
            raise ProbeFailure(str(exc)[:200]) from None
        output = last_lines(result.stdout or result.stderr, 1)
        if result.returncode != 0 and "degraded" not in output:
            raise ProbeFailure(f"{argv[0]}: {output}")
        return f"{argv[0]} answers: {output}"

    return check


def manager_checks(
    environment: Environment, access: SystemAccess
) -> dict[str, Callable[[float], str]]:
    """Controller name -> a check that its service manager answers."""
    return {
        name: _supervisord_answers(spec, access)
        if spec.kind == "supervisord"
        else _command_answers(MANAGER_COMMANDS[spec.kind])
        for name, spec in environment.controllers.items()
    }


def findings_now(plan: Plan, run: dict[str, Any], access: SystemAccess) -> list[Finding]:
    environment = environment_of(plan, run)
    return infrastructure_findings(environment, run["areas"], manager_checks(environment, access))


def automatic_repair(environment: Environment, finding: Finding) -> str | None:
    """What the repair step does by itself for a failing finding (None: an operator's job;
    the finding's own ``repair`` text says what to do)."""
    if finding.ok or not finding.repair:
        return None
    if finding.area == "storage":
        return "recreate the directory"
    if finding.subject.startswith(MANAGER_PREFIX):
        spec = environment.controllers[finding.subject.removeprefix(MANAGER_PREFIX)]
        if spec.kind == "docker_compose":
            return "systemctl restart docker"
    return None


def inspect(plan: Plan, run: dict[str, Any], access: SystemAccess) -> dict[str, Any]:
    environment = environment_of(plan, run)
    findings = findings_now(plan, run, access)
    log.info("\n%s", render_findings(findings))
    planned = {f.subject: repair for f in findings if (repair := automatic_repair(environment, f))}
    failing = [f for f in findings if not f.ok]
    return {
        "detail": f"{len(findings) - len(failing)}/{len(findings)} checks OK",
        "findings": [f.as_dict() for f in findings],
        "repairs_planned": planned,
    }


# --- repair ------------------------------------------------------------------------------


def _repair_one(environment: Environment, finding: Finding) -> str:
    if finding.area == "storage":
        return ensure_storage_area(environment.storage[finding.subject.split()[0]])
    spec = environment.controllers[finding.subject.removeprefix(MANAGER_PREFIX)]
    if spec.kind == "docker_compose":
        SystemdController().restart("docker")
        return "systemctl restart docker"
    return f"no automatic restart for {spec.kind}: restart it by hand"


def _prune_docker(environment: Environment) -> str:
    if not any(c.kind == "docker_compose" for c in environment.controllers.values()):
        return "prune_docker set, but no compose controller here: nothing pruned"
    result = run_command(PRUNE, PRUNE_TIMEOUT_SECONDS)
    return f"docker system prune --force: exit {result.returncode}"


def repair(
    plan: Plan, run: dict[str, Any], before: dict[str, Any], access: SystemAccess
) -> dict[str, Any]:
    """The repairs the plan allows for the failing findings of ``before`` (each one
    idempotent: a present directory is left, a restart repeats harmlessly), and the
    Docker prune when the run asked for it."""
    environment = environment_of(plan, run)
    actions: dict[str, str] = {}
    for finding in (Finding(**f) for f in before["findings"]):
        if not finding.ok and finding.repair:
            actions[finding.subject] = _repair_one(environment, finding)
    if run["prune_docker"]:
        actions["docker"] = _prune_docker(environment)
    for subject, action in actions.items():
        log.info("%s: %s", subject, action)
    repaired = [s for s, a in actions.items() if not a.startswith("no automatic")]
    return {
        "status": "succeeded" if actions else "skipped",
        "detail": joined(actions, "nothing to repair"),
        "actions": actions,
        "repaired": repaired,
    }


def repairs_hold(environment: Environment, findings: list[Finding]) -> tuple[bool, str]:
    """(no finding this DAG repairs by itself is failing?, what was seen). Findings it
    cannot repair are the report's business, not the gate's."""
    still = [
        f"{f.subject}: {f.detail}" for f in findings if automatic_repair(environment, f) is not None
    ]
    if still:
        return False, "; ".join(still)
    return True, f"{sum(f.ok for f in findings)}/{len(findings)} checks OK, no repair pending"


def gate_check(plan: Plan, access: SystemAccess) -> GateCheck:
    def check(run: dict[str, Any]) -> tuple[bool, str]:
        return repairs_hold(environment_of(plan, run), findings_now(plan, run, access))

    return check


def summary_now(plan: Plan, run: dict[str, Any], access: SystemAccess) -> list[Finding]:
    findings = findings_now(plan, run, access)
    log.info("\n%s", render_findings(findings))
    return findings


def judge_findings(run: dict[str, Any], findings: list[Finding]) -> str:
    """The report's sentence; any finding still failing fails the run, named (a dry run
    only reports)."""
    failing = [f for f in findings if not f.ok]
    if failing and not run["dry_run"]:
        raise ValidationFailed(
            "infrastructure findings still failing: "
            + "; ".join(f"{f.area} {f.subject}: {f.detail}" for f in failing)
        )
    return f"{len(findings) - len(failing)}/{len(findings)} checks OK"


def record_fields(
    before: dict[str, Any] | None,
    repaired: dict[str, Any] | None,
    after: list[dict[str, Any]] | None,
    *,
    rto_target_seconds: float,
) -> dict[str, Any]:
    return {
        "rto_target_seconds": rto_target_seconds,
        "details": {
            "findings_before": (before or {}).get("findings"),
            "repairs": (repaired or {}).get("actions"),
            "findings_after": after,
        },
    }
