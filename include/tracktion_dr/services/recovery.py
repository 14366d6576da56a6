"""What service recovery needs to decide, independent of Airflow: order, health, scope.

* :func:`dependency_order` sorts services so each comes after the services it depends on
  (the plan's ``depends_on``; databases and storage areas there are other layers' business).
* :func:`service_check` is "is it back?": the health URL answers 2xx *and*, when the plan
  gives one, the functional check passes (analysis-service: ``POST /analyze`` with a real
  sample file answers ``{"status": "success"}``). A 200 from ``/health`` alone is not proof
  the service can do its job.
* :func:`probe_services` runs those checks concurrently, each within its own timeout.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from tracktion_dr.core.errors import Refused
from tracktion_dr.core.plan import Environment, FunctionalCheck, Plan
from tracktion_dr.services.probes import ProbeFailure, ProbeTarget, http_health, run_probes

STRATEGIES = ("restart_failed", "restart_all", "rebuild")


class UnknownService(Refused, ValueError):
    """A requested service is not in the plan's environment (raised before any action)."""


def dependency_order(environment: Environment, names: Iterable[str] | None = None) -> list[str]:
    """The services (all, or ``names``), each after its service dependencies, plan order
    otherwise. Dependencies outside ``names`` are not added: the caller chose the scope."""
    wanted = list(environment.services) if names is None else list(names)
    unknown = [n for n in wanted if n not in environment.services]
    if unknown:
        raise UnknownService(
            f"services: unknown {unknown} (the plan's environment has "
            f"{sorted(environment.services)})"
        )
    ordered: list[str] = []

    def visit(name: str) -> None:
        if name in ordered:
            return
        for dependency in environment.services[name].depends_on:
            if dependency in environment.services and dependency in wanted:
                visit(dependency)
        ordered.append(name)

    for name in environment.services:  # plan order, cycles are refused at plan load
        if name in wanted:
            visit(name)
    return ordered


def resolve_scope(environment: Environment, requested: Any) -> list[str]:
    """The ``services`` param: ``"all"``, ``["all"]``, a list, or a comma-separated string."""
    if requested in (None, "", "all", ["all"], []):
        return dependency_order(environment)
    if isinstance(requested, str):
        requested = [part.strip() for part in requested.split(",") if part.strip()]
    if not isinstance(requested, list) or not all(isinstance(n, str) for n in requested):
        raise UnknownService(f"services: expected 'all' or a list of names, got {requested!r}")
    return dependency_order(environment, requested)


def strictest_rto_seconds(plan: Plan, environment: Environment, services: Iterable[str]) -> float:
    """The tightest RTO among the services' tiers: the run is late when its most critical
    service is."""
    budgets = [plan.tiers[environment.services[name].tier].rto.total_seconds() for name in services]
    return min(budgets) if budgets else min(t.rto.total_seconds() for t in plan.tiers.values())


def functional_check(check: FunctionalCheck, timeout: float | None = None) -> str:
    """Run the plan's functional check; return what it saw or raise ProbeFailure."""
    seconds = timeout or check.timeout.total_seconds()
    try:
        if check.method == "POST" and check.sample_file:
            sample = Path(check.sample_file)
            if not sample.is_file():
                raise ProbeFailure(f"functional check sample {sample} is missing")
            with sample.open("rb") as handle:
                response = httpx.post(
                    check.url,
                    files={"file": (sample.name, handle, "application/octet-stream")},
                    timeout=seconds,
                )
        else:
            response = httpx.request(check.method, check.url, timeout=seconds)
    except httpx.TimeoutException:
        raise ProbeFailure(f"functional check: no answer within {seconds:g}s") from None
    except httpx.HTTPError as exc:
        raise ProbeFailure(f"functional check: {str(exc)[:160] or type(exc).__name__}") from None
    if response.status_code != check.expect_status:
        raise ProbeFailure(
            f"functional check: HTTP {response.status_code} (expected {check.expect_status}): "
            f"{response.text.strip()[:160]}"
        )
    if check.expect_json:
        try:
            body = response.json()
        except json.JSONDecodeError:
            raise ProbeFailure("functional check: the answer is not JSON") from None
        mismatched = {
            key: body.get(key) if isinstance(body, dict) else None
            for key, expected in check.expect_json.items()
            if not isinstance(body, dict) or body.get(key) != expected
        }
        if mismatched:
            raise ProbeFailure(f"functional check: expected {check.expect_json}, got {mismatched}")
    return f"functional check passed ({check.method} {check.url})"


def service_check(environment: Environment, name: str, *, functional: bool = True) -> Any:
    """A probe check (timeout -> detail, raises ProbeFailure): health, then functional
    (unless ``functional`` is False)."""
    service = environment.services[name]
    health = http_health(service.health_url)
    functional_spec = service.functional_check if functional else None

    def check(timeout: float) -> str:
        detail = health(timeout)
        if functional_spec is not None:
            detail += "; " + functional_check(functional_spec)
        return detail

    return check


def probe_services(
    environment: Environment, names: Iterable[str], *, functional: bool = True
) -> dict[str, dict[str, Any]]:
    """``{name: {"healthy": bool, "detail": str}}`` for each service, probed concurrently.
    ``functional=False``: the health endpoints only - for a check that runs away from the
    application host, where a functional check's sample file is not."""
    targets = []
    for name in names:
        service = environment.services[name]
        timeout = service.probe_timeout.total_seconds()
        if functional and service.functional_check is not None:
            timeout += service.functional_check.timeout.total_seconds()
        check = service_check(environment, name, functional=functional)
        targets.append(ProbeTarget(name, "service", check, timeout))
    return {r.name: {"healthy": r.healthy, "detail": r.detail} for r in run_probes(targets)}


def actions_for(strategy: str, healthy: bool) -> str | None:
    """What a strategy does to one service: ``restart``, ``rebuild`` or nothing."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: {strategy!r} is not one of {list(STRATEGIES)}")
    if strategy == "restart_failed":
        return None if healthy else "restart"
    return "rebuild" if strategy == "rebuild" else "restart"


def services_in_layer(environment: Environment, layer: str) -> list[str]:
    return dependency_order(
        environment, [n for n, s in environment.services.items() if s.layer == layer]
    )


def restart_unhealthy(
    environment: Environment,
    names: list[str],
    controller_for: Any,
    *,
    dry_run: bool,
) -> dict[str, str]:
    """Restart, in the given (dependency) order, each service that fails its probe now.

    Each service is probed right before acting: one whose dependency just came back may
    already be healthy, and a healthy service is never restarted. Returns name -> action.
    """
    actions: dict[str, str] = {}
    for name in names:
        result = probe_services(environment, [name])[name]
        if result["healthy"]:
            actions[name] = "healthy, left alone"
            continue
        service = environment.services[name]
        spec = environment.controllers[service.controller]
        if dry_run:
            actions[name] = f"dry run: would restart ({result['detail']})"
            continue
        controller_for(spec).restart(service.unit or name)
        actions[name] = f"restarted via {spec.kind} (was: {result['detail']})"
    return actions
