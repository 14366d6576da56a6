"""dr_application_recovery's decisions: the scope and its dependency order, what each
service gets under the strategy, when a service is back, and the honest summary.

Only what is broken is touched (``restart_failed``): a service is probed before the run
acts and probed again right before its own step (its dependencies may just have come
back), and a healthy one keeps its process. "Back" means the health URL answers 2xx *and*
the plan's functional check passes (``services.recovery.service_check``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from tracktion_dr.core.errors import InvalidInput, ValidationFailed
from tracktion_dr.core.plan import HostRole, Plan
from tracktion_dr.scenarios import GateCheck, SystemAccess, environment_of
from tracktion_dr.services.recovery import (
    STRATEGIES,
    actions_for,
    probe_services,
    resolve_scope,
    strictest_rto_seconds,
)

log = logging.getLogger(__name__)

# What each strategy does to one service, as the plan of actions says it.
STRATEGY_ACTIONS = {
    "restart_failed": "restart it if it fails its probe (probed again right before acting)",
    "restart_all": "restart it",
    "rebuild": "rebuild its image without cache and recreate it",
}


def task_name(service: str) -> str:
    """The task-id form of a service name (``tracklist-service`` -> ``tracklist_service``)."""
    return service.replace("-", "_")


# --- parse time: the graph has one step and one gate per service the plan knows ---------


def service_rto_seconds(plan: Plan) -> dict[str, float]:
    """Every service any environment of the plan knows, with its tier's RTO (first
    environment wins), in plan order."""
    budgets: dict[str, float] = {}
    for environment in plan.environments.values():
        for name, service in environment.services.items():
            budgets.setdefault(name, plan.tiers[service.tier].rto.total_seconds())
    return budgets


def service_dependencies(plan: Plan) -> dict[str, set[str]]:
    """Service -> the services it waits for (its ``depends_on`` that are services), over
    every environment: a recovery step starts after the gates of these."""
    known = service_rto_seconds(plan)
    return {
        name: {
            dependency
            for environment in plan.environments.values()
            if name in environment.services
            for dependency in environment.services[name].depends_on
            if dependency in known
        }
        for name in known
    }


def reads_local_files(plan: Plan, service: str) -> bool:
    """Whether probing ``service`` reads a file of the application host: its functional
    check uploads a sample file (in any environment of the plan)."""
    return any(
        spec.functional_check is not None and spec.functional_check.sample_file is not None
        for environment in plan.environments.values()
        if (spec := environment.services.get(service)) is not None
    )


def controlled_locally(plan: Plan, service: str) -> bool:
    """Whether ``service``'s controller is a command on its host (docker compose, systemd)
    rather than an API over the network (supervisord's XML-RPC)."""
    return any(
        environment.controllers[spec.controller].kind != "supervisord"
        for environment in plan.environments.values()
        if (spec := environment.services.get(service)) is not None
    )


def service_host(plan: Plan, service: str) -> HostRole | None:
    """Where ``service``'s step and gate run (the step kit's ``host``): on the application
    host when its probe uploads a sample file from there or its controller is a local
    command; else on the default queue (health URLs, the functional check's request and
    supervisord's XML-RPC all answer over the network)."""
    local = reads_local_files(plan, service) or controlled_locally(plan, service)
    return "application" if local else None


def probes_host(plan: Plan) -> HostRole | None:
    """Where a step probing every service (``probe``, ``report``) runs."""
    probed = service_rto_seconds(plan)
    return "application" if any(reads_local_files(plan, s) for s in probed) else None


# --- guard -------------------------------------------------------------------------------


def check_inputs(plan: Plan, incident: dict[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The run: the strategy and the services in scope, in dependency order, and the RTO
    target (the strictest tier among them). Raises a refusal before anything is touched."""
    environment = environment_of(plan, incident)
    strategy = params["strategy"]
    if strategy not in STRATEGIES:
        raise InvalidInput(
            "strategy", f"{strategy!r} is not one of {list(STRATEGIES)}", hint="pick one of them"
        )
    services = resolve_scope(environment, params["services"])
    return {
        **incident,
        "services": services,
        "strategy": strategy,
        "rto_target_seconds": strictest_rto_seconds(plan, environment, services),
    }


def plan_of_actions(plan: Plan, run: dict[str, Any]) -> list[str]:
    environment = environment_of(plan, run)
    actions = [f"probe {', '.join(run['services'])}: health URL and functional check"]
    for name in run["services"]:
        service = environment.services[name]
        waits = [d for d in service.depends_on if d in run["services"]]
        actions.append(
            f"{name}: {STRATEGY_ACTIONS[run['strategy']]} through "
            f"{environment.controllers[service.controller].kind}"
            + (f", after {', '.join(waits)} passed their gates" if waits else "")
            + f"; then gate_{task_name(name)} waits until it is back, within its tier's RTO"
        )
    actions.append("report healthy/total: a service still down fails the run, naming it")
    return actions


def started_summary(run: dict[str, Any]) -> str:
    return f"strategy {run['strategy']} on {', '.join(run['services'])}"


# --- steps -------------------------------------------------------------------------------


def planned_actions(strategy: str, health: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Service -> what the strategy does to it given the probe (``leave alone`` when
    nothing): the dry run's answer to "what would happen now"."""
    return {
        name: actions_for(strategy, result["healthy"]) or "leave alone"
        for name, result in health.items()
    }


def probe(plan: Plan, run: dict[str, Any]) -> dict[str, Any]:
    """Every service in scope, before acting: health, and what the strategy will do."""
    health = probe_services(environment_of(plan, run), run["services"])
    planned = planned_actions(run["strategy"], health)
    for name, result in health.items():
        log.info(
            "%-22s %s  %s -> %s",
            name,
            "OK  " if result["healthy"] else "DOWN",
            result["detail"],
            planned[name],
        )
    down = sum(not r["healthy"] for r in health.values())
    return {
        "detail": f"{len(health) - down}/{len(health)} healthy",
        "health": health,
        "planned": planned,
    }


def action_now(strategy: str, healthy_before: bool, look_again: Callable[[], bool]) -> str | None:
    """What to do to one service now: ``restart``, ``rebuild`` or nothing. A service found
    down before the run is looked at again under ``restart_failed`` (a dependency that just
    came back may have healed it: a healthy service is never restarted)."""
    healthy = healthy_before
    if not healthy and strategy == "restart_failed":
        healthy = look_again()
    return actions_for(strategy, healthy)


def recover_service(
    plan: Plan, run: dict[str, Any], service: str, before: dict[str, Any], access: SystemAccess
) -> dict[str, Any]:
    """One service's step: act per the strategy through its controller, or leave it."""
    if service not in run["services"]:
        return {"status": "skipped", "detail": "not in scope"}
    environment = environment_of(plan, run)
    action = action_now(
        run["strategy"],
        before["health"][service]["healthy"],
        lambda: probe_services(environment, [service])[service]["healthy"],
    )
    if action is None:
        log.info("%s is healthy: left alone", service)
        return {"status": "skipped", "detail": "healthy, left alone"}
    spec = environment.services[service]
    controller = environment.controllers[spec.controller]
    getattr(access.controller(controller), action)(spec.unit or service)
    return {"detail": f"{action} via {controller.kind}"}


def gate_check(plan: Plan, service: str) -> GateCheck:
    """The service's gate: open when it is back (health and functional check)."""

    def check(run: dict[str, Any]) -> tuple[bool, str]:
        if service not in run["services"]:
            return True, "not in scope"
        result = probe_services(environment_of(plan, run), [service])[service]
        return result["healthy"], result["detail"]

    return check


def health_summary(health: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``{"healthy": n, "total": m, "down": {service: what was seen}}``."""
    down = {name: result["detail"] for name, result in health.items() if not result["healthy"]}
    return {"healthy": len(health) - len(down), "total": len(health), "down": down}


def summary_now(plan: Plan, run: dict[str, Any]) -> dict[str, Any]:
    summary = health_summary(probe_services(environment_of(plan, run), run["services"]))
    log.info("%d/%d services healthy", summary["healthy"], summary["total"])
    return summary


def judge_health(run: dict[str, Any], summary: dict[str, Any]) -> str:
    """The report's sentence; a partial recovery is a failed run, naming what is still
    down (a dry run touched nothing: it only reports)."""
    if summary["down"] and not run["dry_run"]:
        still_down = ", ".join(f"{name} ({what})" for name, what in summary["down"].items())
        raise ValidationFailed(
            f"partial recovery: {summary['healthy']}/{summary['total']} services healthy; "
            f"still down: {still_down}"
        )
    return f"{summary['healthy']}/{summary['total']} services healthy"


def record_fields(run: dict[str, Any], summary: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "rto_target_seconds": run["rto_target_seconds"],
        "details": {
            "strategy": run["strategy"],
            "services": run["services"],
            "health": summary or {},
        },
    }
