"""dr_service_dependencies_recovery's decisions: the platform comes back layer by layer
(database → cache → queue → storage → application, the seed's order), each layer only
after the previous one is healthy, and anything already healthy is left alone.

| layer | healthy when | action when not |
|---|---|---|
| database | every plan database's cluster accepts a query | start it as the plan's ``control`` says, wait until it accepts connections |
| cache, queue, application | health URL (+ functional check) | restart via its controller |
| storage | every storage area present and writable | recreate a *missing* directory |
"""

from __future__ import annotations

import logging
from typing import Any

from tracktion_dr.core.plan import Environment, HostRole, Plan
from tracktion_dr.scenarios import GateCheck, SystemAccess, environment_of, joined
from tracktion_dr.services.dependencies import (
    LAYERS,
    database_probes,
    ensure_storage_area,
    start_cluster,
    storage_probes,
)
from tracktion_dr.services.recovery import probe_services, restart_unhealthy, services_in_layer

log = logging.getLogger(__name__)

__all__ = ["LAYERS"]

# What each layer's step does to a component that is not healthy.
LAYER_ACTIONS = {
    "database": "start its cluster the way its host runs it (the plan's control: pg_ctl, "
    "pg_ctlcluster or its systemd unit) and wait until it accepts connections (a missing "
    "data directory is a restore, not a restart: the run stops and says so)",
    "cache": "restart it through its controller",
    "queue": "restart it through its controller",
    "storage": "recreate the missing directory with the plan's owner and mode",
    "application": "restart it through its controller, in dependency order",
}


def step_host(plan: Plan, layer: str) -> HostRole | None:
    """Where a layer's step runs (the step kit's ``host``): a cluster is started on its
    host, a missing storage directory recreated on the storage host; a service is restarted
    where its controller runs a command (docker compose, systemd) or its check reads a
    sample file; supervisord and health URLs answer over the network (default queue)."""
    from tracktion_dr.scenarios.application import probes_host
    from tracktion_dr.scenarios.config import restart_host

    if layer == "database":
        return "database_primary"
    if layer == "storage":
        return "storage"
    if layer == "application":
        return restart_host(plan) or probes_host(plan)
    return restart_host(plan)


def gate_host(plan: Plan, layer: str) -> HostRole | None:
    """Where a layer's gate looks: a database answers over the network; storage directories
    are looked at on their host; the application's functional checks read their samples on
    the application host."""
    from tracktion_dr.scenarios.application import probes_host

    if layer == "storage":
        return "storage"
    if layer == "application":
        return probes_host(plan)
    return None


def rto_seconds(plan: Plan) -> float:
    """The platform is down while any layer is: the strictest tier of what the plan
    recovers (its databases and services, in any environment)."""
    return min(
        plan.tiers[item.tier].rto.total_seconds()
        for environment in plan.environments.values()
        for item in [*environment.databases.values(), *environment.services.values()]
    )


def layer_health(
    environment: Environment, layer: str, access: SystemAccess
) -> dict[str, dict[str, Any]]:
    """``{component: {"healthy", "detail"}}`` for one layer (empty when the plan has none)."""
    if layer == "database":
        return database_probes(environment, access.conninfo)
    if layer == "storage":
        return storage_probes(environment)
    return probe_services(environment, services_in_layer(environment, layer))


def layer_state(layer: str, health: dict[str, dict[str, Any]]) -> tuple[bool, str]:
    """(is the layer back?, what was seen): a layer the plan does not have is back."""
    if not health:
        return True, f"no {layer} in the plan"
    down = {name: r["detail"] for name, r in health.items() if not r["healthy"]}
    if down:
        return False, joined(down, "")
    return True, f"{len(health)} healthy: {', '.join(health)}"


def plan_of_actions(
    run: dict[str, Any], health: dict[str, dict[str, dict[str, Any]]] | None = None
) -> list[str]:
    """One line per layer, in order. With ``health`` (a dry run looks before it plans:
    layer -> component -> probe) each line says what the layer's step would do now."""
    actions = []
    for layer in LAYERS:
        line = f"{layer}: {LAYER_ACTIONS[layer]}; then gate_{layer} waits until it is healthy"
        if health is not None:
            down = [name for name, r in health[layer].items() if not r["healthy"]]
            line += f" (now: {'down: ' + ', '.join(down) if down else 'nothing to do'})"
        actions.append(line)
    return actions


def health_for_the_plan(
    plan: Plan, run: dict[str, Any], access: SystemAccess
) -> dict[str, dict[str, dict[str, Any]]] | None:
    """Every layer's health now, for a dry run's plan of actions (None on a real run: its
    steps look for themselves, each right before it acts)."""
    if not run["dry_run"]:
        return None
    environment = environment_of(plan, run)
    return {layer: layer_health(environment, layer, access) for layer in LAYERS}


def recover_layer(
    plan: Plan, run: dict[str, Any], layer: str, access: SystemAccess
) -> dict[str, Any]:
    """One layer's step: each unhealthy component started, restarted or recreated (looked
    at right before acting; a healthy one is left alone). Returns the actions by name."""
    environment = environment_of(plan, run)
    if layer in ("database", "storage"):
        actions: dict[str, str] = {}
        for name, result in layer_health(environment, layer, access).items():
            if result["healthy"]:
                actions[name] = "healthy, left alone"
            elif layer == "database":
                actions[name] = start_cluster(environment.clusters[name])
            else:
                actions[name] = ensure_storage_area(environment.storage[name])
    else:
        actions = restart_unhealthy(
            environment, services_in_layer(environment, layer), access.controller, dry_run=False
        )
    for name, action in actions.items():
        log.info("%s %-22s %s", layer, name, action)
    return {"detail": joined(actions, f"no {layer} in the plan"), "actions": actions}


def gate_check(plan: Plan, layer: str, access: SystemAccess) -> GateCheck:
    """The layer's gate: open when every component of the layer is healthy."""

    def check(run: dict[str, Any]) -> tuple[bool, str]:
        return layer_state(layer, layer_health(environment_of(plan, run), layer, access))

    return check
