"""dr_third_party_failover's decisions: a third party (an external provider we do not run)
is down, so the services that depend on it are switched to one of its fallbacks; when it is
healthy again they are switched back.

The plan says, per external dependency: its health check (``url``), the value its
dependents' setting holds on the primary (``endpoint``), the fallbacks in order of
preference (``backup_provider`` with its own health check, ``degraded_mode``,
``queue_and_replay``: each with the ``value`` the setting is switched to), and for each
dependent service where it reads that setting (``ServiceSetting``: an environment-file line
or a JSON key).

Decisions, all made before anything is touched:

* **where to go** (:func:`choose_target`): ``restore`` goes back to the primary and is
  refused while the primary is down; ``fallback`` goes to the fallback the services are
  already on when it is still up, else the requested one, else the first one that
  answers; a fallback that is itself down is refused, never switched to; ``auto`` is
  ``fallback`` while the primary is down and ``restore`` once it is healthy;
* **what is missing** (:func:`missing_switches`): only the services whose setting differs
  from the target are rewritten; a re-run of the same incident and direction that finds
  its own safety snapshot restarts the dependents again (the earlier run may have been
  killed between the switch and the restart), nothing else;
* **the rollback**: when the switched services do not pass their checks within the RTO,
  the configuration is put back exactly as the safety snapshot recorded it
  (``files.config_restore``, as ``dr_config_recovery`` does) and the services restarted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracktion_dr.backups.snapshots import SAFETY_FOLDER
from tracktion_dr.core.errors import InvalidInput, Refused
from tracktion_dr.core.plan import Environment, ExternalDependency, Plan
from tracktion_dr.files import config_restore
from tracktion_dr.files.service_settings import read_setting, write_setting
from tracktion_dr.files.snapshots import location_dir
from tracktion_dr.scenarios import GateCheck, SystemAccess, environment_of, joined
from tracktion_dr.services.checks import functional_checks, service_health
from tracktion_dr.services.probes import ProbeFailure, http_health

log = logging.getLogger(__name__)

PRIMARY = "primary"
DIRECTIONS = ("auto", "fallback", "restore")
UNKNOWN = "unknown"


class ProviderRefused(Refused):
    """The provider or fallback the run would switch to is not usable; nothing touched."""


@dataclass(frozen=True)
class Probe:
    """What a provider's health check answered."""

    up: bool
    detail: str


# A probe of one health URL with its timeout: (up?, what it answered).
Prober = Callable[[str, float], Probe]


def probe_url(url: str, timeout: float) -> Probe:
    try:
        return Probe(True, http_health(url)(timeout))
    except ProbeFailure as exc:
        return Probe(False, str(exc))


# --- parse time --------------------------------------------------------------------------


def switchable_dependencies(plan: Plan) -> list[str]:
    """The external dependencies of any environment that have fallbacks (the DAG's choices)."""
    return sorted(
        {
            name
            for environment in plan.environments.values()
            for name, dependency in environment.external_dependencies.items()
            if dependency.fallbacks
        }
    )


def rto_seconds_of(plan: Plan, environment: Environment, dependency: ExternalDependency) -> float:
    """The strictest tier among the dependency's dependents."""
    return min(
        plan.tiers[environment.services[service].tier].rto.total_seconds()
        for service in dependency.dependents
    )


def rto_seconds(plan: Plan) -> float:
    """Parse-time budget (the guard sets the run's own): the strictest dependent anywhere."""
    budgets = [
        rto_seconds_of(plan, environment, dependency)
        for environment in plan.environments.values()
        for dependency in environment.external_dependencies.values()
        if dependency.fallbacks
    ]
    return min(budgets, default=3600.0)


# --- where the services are, where they go -------------------------------------------------


def position_of(dependency: ExternalDependency, value: str | None) -> str:
    """Which provider a setting value points at: ``primary`` (also when the setting is
    absent: the service's own default is the primary), a fallback's name, or ``unknown``."""
    if value is None or value == dependency.endpoint:
        return PRIMARY
    for fallback in dependency.fallbacks:
        if fallback.value == value:
            return fallback.name
    return UNKNOWN


def value_of(dependency: ExternalDependency, target: str) -> str:
    if target == PRIMARY:
        return str(dependency.endpoint)
    fallback = dependency.fallback(target)
    if fallback is None:
        raise KeyError(target)
    return fallback.value


def probe_fallbacks(dependency: ExternalDependency, prober: Prober) -> dict[str, Probe]:
    """Each fallback's health; a mode of the service itself (no url) has nothing to probe."""
    return {
        fallback.name: prober(fallback.url, fallback.timeout.total_seconds())
        if fallback.url
        else Probe(True, f"{fallback.kind}: a mode of the service, nothing to probe")
        for fallback in dependency.fallbacks
    }


def choose_target(
    dependency_name: str,
    dependency: ExternalDependency,
    direction: str,
    primary: Probe,
    fallbacks: Mapping[str, Probe],
    positions: Mapping[str, str],
    requested: str = "",
) -> tuple[str, str]:
    """(target: ``primary`` or a fallback's name, why). Raises :class:`ProviderRefused`
    (nothing touched) when the target is down."""
    if direction == "auto":
        direction = "fallback" if not primary.up else "restore"
        if direction == "restore":
            return PRIMARY, f"auto: {dependency_name} answers again ({primary.detail})"
    if direction == "restore":
        if not primary.up:
            raise ProviderRefused(
                f"{dependency_name} is still down ({primary.detail}): not switching back",
                hint="wait until its health check answers (its status page says when), then "
                "run again with direction restore or auto",
            )
        return PRIMARY, f"{dependency_name} answers again ({primary.detail})"
    if requested:
        probe = fallbacks[requested]
        if not probe.up:
            raise ProviderRefused(
                f"fallback {requested!r} of {dependency_name} is itself down ({probe.detail}): "
                "not switching to it",
                hint=_other_fallbacks_hint(requested, fallbacks),
            )
        return requested, f"the requested fallback {requested} answers ({probe.detail})"
    current = {p for p in positions.values() if p in fallbacks}
    if len(current) == 1 and fallbacks[next(iter(current))].up:
        name = next(iter(current))
        return name, f"the services are already on {name}, which still answers"
    for name, probe in fallbacks.items():
        if probe.up:
            return name, f"{name} is the first fallback that answers ({probe.detail})"
    raise ProviderRefused(
        f"every fallback of {dependency_name} is down: "
        + joined({name: probe.detail for name, probe in fallbacks.items()}, "none listed"),
        hint="nothing was switched; wait for the primary or a fallback to answer",
    )


def _other_fallbacks_hint(refused: str, fallbacks: Mapping[str, Probe]) -> str:
    usable = [name for name, probe in fallbacks.items() if probe.up and name != refused]
    if usable:
        return f"choose a fallback that answers ({', '.join(usable)}) or leave fallback empty"
    return "no fallback answers now; wait for the primary or a fallback to answer"


def missing_switches(
    dependency: ExternalDependency, values: Mapping[str, str | None], target: str
) -> dict[str, dict[str, str | None]]:
    """service -> {from, to} for each dependent whose setting is not yet the target's
    value (an absent setting counts as the primary: it is the service's default)."""
    return {
        service: {"from": position_of(dependency, value), "to": target}
        for service, value in values.items()
        if position_of(dependency, value) != target
    }


# --- guard ---------------------------------------------------------------------------------


def safety_tag(incident_id: str, target: str) -> str:
    return f"{incident_id}-to-{target}"


def existing_safety(environment: Environment, tag: str) -> Path | None:
    """This incident's earlier safety snapshot for the same switch (a re-run), if any."""
    try:
        folder = location_dir(environment.backups.configuration) / SAFETY_FOLDER
    except Exception:  # an s3:// location: no local safety snapshots to find
        return None
    found = sorted(folder.glob(f"config_safety_*_{tag}.tar.gz")) if folder.is_dir() else []
    return found[0] if found else None


def check_inputs(
    plan: Plan,
    incident: dict[str, Any],
    params: Mapping[str, Any],
    prober: Prober = probe_url,
) -> dict[str, Any]:
    """The run: which dependency, where its dependents go, what is missing. Refuses
    (nothing touched) an unknown dependency or fallback, and a target that is down."""
    environment = environment_of(plan, incident)
    name = str(params.get("dependency") or "")
    dependency = environment.external_dependencies.get(name)
    if dependency is None or not dependency.fallbacks:
        known = [n for n, d in environment.external_dependencies.items() if d.fallbacks]
        raise InvalidInput(
            "dependency",
            f"{name!r} is not an external dependency with fallbacks in {incident['environment']}",
            hint=f"one of {known}" if known else "the plan lists none in this environment",
        )
    direction = str(params.get("direction") or "auto")
    if direction not in DIRECTIONS:
        raise InvalidInput("direction", f"{direction!r} is not one of {list(DIRECTIONS)}")
    requested = str(params.get("fallback") or "")
    if requested and dependency.fallback(requested) is None:
        raise InvalidInput(
            "fallback",
            f"{name} has no fallback {requested!r}",
            hint=f"one of {[f.name for f in dependency.fallbacks]}, or empty",
        )
    if requested and direction == "restore":
        raise InvalidInput("fallback", "a restore goes back to the primary: leave it empty")
    primary = prober(dependency.url, dependency.timeout.total_seconds())
    fallbacks = probe_fallbacks(dependency, prober)
    values = {service: read_setting(s) for service, s in dependency.dependents.items()}
    positions = {service: position_of(dependency, value) for service, value in values.items()}
    log.info(
        "%s: primary %s (%s); fallbacks: %s; services on: %s",
        name,
        "up" if primary.up else "DOWN",
        primary.detail,
        joined({n: ("up: " if p.up else "DOWN: ") + p.detail for n, p in fallbacks.items()}, "-"),
        joined(positions, "-"),
    )
    target, why = choose_target(
        name, dependency, direction, primary, fallbacks, positions, requested
    )
    tag = safety_tag(incident["incident_id"], target)
    resumed = existing_safety(environment, tag)
    return {
        **incident,
        "dependency": name,
        "direction": direction,
        "target": target,
        "why": why,
        "services": environment.start_order(list(dependency.dependents)),
        "switch": missing_switches(dependency, values, target),
        "positions": positions,
        "safety_tag": tag,
        "resumed_safety": str(resumed) if resumed else None,
        "rto_seconds": rto_seconds_of(plan, environment, dependency),
    }


def work_to_do(run: Mapping[str, Any]) -> bool:
    """Whether anything is switched or restarted: a setting is not yet the target's, or an
    earlier run of this incident switched (it may not have restarted)."""
    return bool(run["switch"]) or bool(run["resumed_safety"])


def plan_of_actions(run: Mapping[str, Any]) -> list[str]:
    target = run["target"]
    services = ", ".join(run["services"])
    if not work_to_do(run):
        return [
            f"nothing to switch: {services} already on {target} ({run['why']})",
            f"gate_services: {services} read {target} and pass their checks",
        ]
    switch = joined({s: f"{m['from']} -> {m['to']}" for s, m in run["switch"].items()}, "")
    return [
        f"probe: {run['dependency']} {target} answers again right before the switch",
        "safety_snapshot: archive the live configuration and environment file (safety/)"
        + (f"; reusing {Path(run['resumed_safety']).name}" if run["resumed_safety"] else ""),
        f"switch_configuration: {switch or 'already switched by an earlier run'}",
        f"restart_dependents: {services} through the plan's controller (they read it at start)",
        f"gate_services: {services} read {target}, are healthy and pass their functional checks",
        "rollback (only if a step above fails): put back exactly what the safety snapshot "
        "recorded, restart the dependents; the run fails",
    ]


def started_summary(run: Mapping[str, Any]) -> str:
    return f"switching {', '.join(run['services'])} of {run['dependency']} to {run['target']}"


# --- steps ---------------------------------------------------------------------------------


def _dependency(plan: Plan, run: Mapping[str, Any]) -> tuple[Environment, ExternalDependency]:
    environment = environment_of(plan, dict(run))
    return environment, environment.external_dependencies[run["dependency"]]


def probe_target(plan: Plan, run: Mapping[str, Any], prober: Prober = probe_url) -> dict[str, Any]:
    """Right before anything changes: the target still answers (it may have failed since
    the guard looked). Refused, nothing touched, when it does not."""
    _, dependency = _dependency(plan, run)
    target = run["target"]
    if target == PRIMARY:
        url, timeout = dependency.url, dependency.timeout.total_seconds()
    else:
        fallback = dependency.fallback(target)
        if fallback is None or not fallback.url:
            return {"detail": f"{target}: a mode of the service, nothing to probe"}
        url, timeout = fallback.url, fallback.timeout.total_seconds()
    probe = prober(url, timeout)
    if not probe.up:
        raise ProviderRefused(
            f"{target} of {run['dependency']} stopped answering since the guard looked "
            f"({probe.detail}): nothing was switched",
            hint="run again once it answers (or choose another fallback)",
        )
    return {"detail": f"{target} answers ({probe.detail})"}


def take_safety(plan: Plan, run: Mapping[str, Any]) -> dict[str, Any]:
    """The live configuration archived before the switch (the rollback's reference); a
    re-run of the same switch keeps the first run's (the state before the incident's
    switch), it never snapshots its own half-done work."""
    if not work_to_do(run):
        return {"status": "skipped", "detail": f"nothing to switch: already on {run['target']}"}
    environment, _ = _dependency(plan, run)
    existing = existing_safety(environment, run["safety_tag"])
    if existing is not None:
        return {"detail": f"reusing {existing.name} (this incident's)", "path": str(existing)}
    path = config_restore.take_safety_snapshot(
        environment, location_dir(environment.backups.configuration), run["safety_tag"]
    )
    log.info("safety snapshot of the live configuration: %s", path)
    return {"detail": Path(path).name, "path": str(path)}


def switch_configuration(plan: Plan, run: Mapping[str, Any]) -> dict[str, Any]:
    """Write the target's value into each dependent's setting that does not hold it yet
    (the actual files decide, not the guard's view: a killed run resumes)."""
    _, dependency = _dependency(plan, run)
    value = value_of(dependency, run["target"])
    switched = [
        service
        for service, setting in dependency.dependents.items()
        if write_setting(setting, value)
    ]
    if not switched:
        return {"status": "skipped", "detail": f"every setting already on {run['target']}"}
    for service in switched:
        log.info(
            "%s: %s now points at %s", service, dependency.dependents[service].key, run["target"]
        )
    return {"detail": f"{', '.join(switched)} -> {run['target']}", "switched": switched}


def restart_dependents(plan: Plan, run: Mapping[str, Any], access: SystemAccess) -> dict[str, Any]:
    """Restart the dependents through the plan's controller (they read the setting at
    start), dependencies first."""
    if not work_to_do(run):
        return {"status": "skipped", "detail": f"nothing switched: already on {run['target']}"}
    environment, _ = _dependency(plan, run)
    restart(environment, run["services"], access)
    return {"detail": ", ".join(run["services"]), "restarted": list(run["services"])}


def restart(environment: Environment, services: list[str], access: SystemAccess) -> None:
    for name in services:
        service = environment.services[name]
        access.controller(environment.controllers[service.controller]).restart(service.unit or name)


def settings_at(
    dependency: ExternalDependency, values: Mapping[str, str | None], target: str
) -> tuple[bool, str]:
    """(every dependent's setting points at the target?, what they point at)."""
    wrong = {
        service: position_of(dependency, value)
        for service, value in values.items()
        if missing_switches(dependency, {service: value}, target)
    }
    if wrong:
        return False, "setting not on " + target + ": " + joined(wrong, "")
    return True, f"settings on {target}"


def gate_check(plan: Plan) -> GateCheck:
    """Gate: the dependents read the target, answer their health URL and pass their
    functional checks (which exercise the provider they talk to)."""

    def check(run: dict[str, Any]) -> tuple[bool, str]:
        environment, dependency = _dependency(plan, run)
        values = {s: read_setting(setting) for s, setting in dependency.dependents.items()}
        ok, detail = settings_at(dependency, values, run["target"])
        if not ok:
            return False, detail
        healthy, health = service_health(environment, run["services"])
        if not healthy:
            return False, health
        working, functional = functional_checks(environment, run["services"])
        return working, f"{detail}; {functional}"

    return check


def roll_back(
    plan: Plan,
    run: Mapping[str, Any],
    safety: Mapping[str, Any] | None,
    access: SystemAccess,
    wait: Callable[[Environment, list[str]], str] | None = None,
) -> dict[str, Any]:
    """Runs when a step after the probe failed (or the gate breached): put back exactly
    what the safety snapshot recorded when anything differs, restart the dependents."""
    if not (safety or {}).get("path"):
        return {"status": "skipped", "detail": "no safety snapshot: nothing was switched"}
    environment, _ = _dependency(plan, run)
    archive = Path(safety["path"])  # type: ignore[index]
    differences = config_restore.differences_from_safety(environment, archive)
    if differences == []:
        return {"status": "skipped", "detail": "the configuration is as the safety snapshot"}
    log.warning("rolling back to %s: %d path(s) differ", archive.name, len(differences or []))
    result = config_restore.roll_back(environment, archive, f"{run['safety_tag']}-rollback")
    restart(environment, run["services"], access)
    seen = (wait or _services_now)(environment, run["services"])
    return {"detail": f"rolled back to {archive.name}; {seen}", "result": result.as_dict()}


def _services_now(environment: Environment, services: list[str]) -> str:
    return service_health(environment, services)[1]


def record_fields(run: Mapping[str, Any], rollback: Mapping[str, Any] | None) -> dict[str, Any]:
    return {
        "rto_target_seconds": run["rto_seconds"],
        "details": {
            "dependency": run["dependency"],
            "direction": run["direction"],
            "target": run["target"],
            "switched": sorted(run["switch"]),
            "rolled_back": bool((rollback or {}).get("result")),
        },
    }
