"""Which recovery an incident starts, with what conf, and when it counts as restored.

An alert or an operator names a scenario (a recovery DAG), the components it is about
(``affected``: the assessment's names - a service, ``database:<name>``,
``replica:<cluster>``, ``storage:<area>``, ``external:<name>``, or ``backups``) and
optionally some of the scenario's own params (``scenario_conf``). This module turns that
into the conf the recovery DAG accepts - the params an alert cannot know are derived from
the affected components and the plan - and, after the run, decides from an independent
re-check whether the incident is restored.

Plain Python, no Airflow: ``dags/dr_incident_response.py`` wires it in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tracktion_dr.core.errors import InvalidInput
from tracktion_dr.core.plan import Environment

NO_RECOVERY = "No automated recovery"

Defaults = Callable[[Environment, list[str], dict[str, Any]], dict[str, Any]]


def _first_database(environment: Environment, affected: list[str]) -> str:
    named = [a.removeprefix("database:") for a in affected if a.startswith("database:")]
    for name in named:
        if name in environment.databases:
            return name
    if not environment.databases:
        raise InvalidInput("affected", "the environment has no database to recover")
    return next(iter(environment.databases))


def _cluster_of(environment: Environment, affected: list[str]) -> str:
    for item in affected:
        if item.startswith("replica:") and item.removeprefix("replica:") in environment.clusters:
            return item.removeprefix("replica:")
    return environment.databases[_first_database(environment, affected)].cluster


def _services(environment: Environment, affected: list[str], conf: dict[str, Any]) -> dict:
    named = [a for a in affected if a in environment.services]
    return {"services": named or ["all"], "strategy": "restart_failed"}


def _failover(environment: Environment, affected: list[str], conf: dict[str, Any]) -> dict:
    services = [a for a in affected if a in environment.services]
    if conf.get("target") == "service" or (services and not conf.get("target")):
        return {
            "target": "service",
            "service": services[0] if services else "",
            "mode": "automatic",
        }
    return {
        "target": "database",
        "database": _first_database(environment, affected),
        "mode": "automatic",
    }


def _pitr(environment: Environment, affected: list[str], conf: dict[str, Any]) -> dict:
    return {"cluster": _cluster_of(environment, affected), "target_type": "latest"}


def _restore(environment: Environment, affected: list[str], conf: dict[str, Any]) -> dict:
    return {"database": _first_database(environment, affected)}


def _reseed(environment: Environment, affected: list[str], conf: dict[str, Any]) -> dict:
    return {"cluster": _cluster_of(environment, affected)}


def _storage(environment: Environment, affected: list[str], conf: dict[str, Any]) -> dict:
    areas = [a.removeprefix("storage:") for a in affected if a.startswith("storage:")]
    return {"areas": [a for a in areas if a in environment.storage] or ["all"]}


def _storage_failover(environment: Environment, affected: list[str], conf: dict[str, Any]) -> dict:
    areas = [a.removeprefix("storage:") for a in affected if a.startswith("storage:")]
    switchable = [name for name, area in environment.storage.items() if area.backup_location]
    named = [a for a in areas if a in switchable]
    return {"area": (named or switchable or [""])[0], "direction": "failover"}


def _third_party(environment: Environment, affected: list[str], conf: dict[str, Any]) -> dict:
    if conf.get("dependency"):
        return {"direction": "auto"}
    switchable = [
        name
        for name, dependency in environment.external_dependencies.items()
        if dependency.fallbacks
    ]
    named = [a.removeprefix("external:") for a in affected if a.startswith("external:")]
    for name in named:
        if name in switchable:
            return {"dependency": name, "direction": "auto"}
    raise InvalidInput(
        "affected",
        f"names no external dependency with fallbacks ({named or 'none named'})",
        hint=f"name one as external:<name>, one of {switchable}",
    )


def _nothing(environment: Environment, affected: list[str], conf: dict[str, Any]) -> dict:
    return {}


@dataclass(frozen=True)
class Recovery:
    """What the incident response knows of one recovery DAG."""

    destructive: bool  # moves data or takes a healthy part down: a human approves in production
    keys: frozenset[str]  # the scenario params an alert or an operator may set
    defaults: Defaults = _nothing
    # The typed confirmation ("RESTORE <what>") a human approval stands for, if the DAG has one.
    confirms: Callable[[dict[str, Any]], str] | None = None
    incident_params: bool = True  # takes the common incident params (backup DAGs do not)


RECOVERIES: dict[str, Recovery] = {
    "dr_initial_assessment": Recovery(False, frozenset()),
    "dr_post_recovery_validation": Recovery(False, frozenset()),
    "dr_application_recovery": Recovery(False, frozenset({"services", "strategy"}), _services),
    "dr_service_dependencies_recovery": Recovery(False, frozenset()),
    "dr_failover": Recovery(
        True,
        frozenset({"target", "service", "database", "primary_server", "secondary_server", "mode"}),
        _failover,
    ),
    "dr_database_pitr": Recovery(
        True,
        frozenset({"cluster", "target_type", "target"}),
        _pitr,
        confirms=lambda conf: f"RESTORE {conf['cluster']}",
    ),
    "dr_database_restore": Recovery(
        True,
        frozenset({"database", "backup", "mode", "jobs"}),
        _restore,
        confirms=lambda conf: f"RESTORE {conf['database']}",
    ),
    "dr_replica_reseed": Recovery(True, frozenset({"cluster"}), _reseed),
    "dr_storage_recovery": Recovery(True, frozenset({"snapshot", "areas"}), _storage),
    "dr_config_recovery": Recovery(
        True,
        frozenset({"snapshot", "restart_services"}),
        confirms=lambda conf: "RESTORE configuration",
    ),
    "dr_infrastructure_recovery": Recovery(True, frozenset({"areas", "prune_docker"})),
    # Switches configuration and restarts the dependents, nothing is lost: no approval.
    "dr_third_party_failover": Recovery(
        False, frozenset({"dependency", "direction"}), _third_party
    ),
    "dr_storage_failover": Recovery(
        True,
        frozenset({"area", "direction"}),
        _storage_failover,
        confirms=lambda conf: f"RESTORE storage {conf['area']}",
    ),
    "dr_backup_logical_dump": Recovery(False, frozenset(), incident_params=False),
    "dr_backup_base": Recovery(False, frozenset(), incident_params=False),
}


def recovery_of(scenario: str) -> Recovery:
    try:
        return RECOVERIES[scenario]
    except KeyError:
        raise InvalidInput(
            "scenario",
            f"{scenario!r} is not a recovery the incident response can start",
            hint=f"one of {sorted(RECOVERIES)}",
        ) from None


def needs_approval(environment: Environment, scenario: str) -> bool:
    """Destructive recoveries wait for a human where the environment demands confirmation."""
    return bool(scenario) and (
        environment.destructive_requires_confirmation and recovery_of(scenario).destructive
    )


def check_scenario_conf(scenario: str, scenario_conf: Any) -> dict[str, Any]:
    """The scenario params given with the incident: an object whose keys the scenario takes
    (the incident's own params - incident id, environment, dry run - are set here, not there)."""
    if scenario_conf in (None, ""):
        return {}
    if not isinstance(scenario_conf, dict):
        raise InvalidInput("scenario_conf", "expected an object of the scenario's params")
    if not scenario:
        if scenario_conf:
            raise InvalidInput("scenario_conf", "given without a scenario")
        return {}
    allowed = recovery_of(scenario).keys
    unknown = sorted(set(scenario_conf) - allowed)
    if unknown:
        raise InvalidInput(
            f"scenario_conf.{unknown[0]}",
            f"{scenario} takes no param {unknown[0]!r}",
            hint=f"its params: {sorted(allowed) or 'none'}",
        )
    return dict(scenario_conf)


def check_affected(environment: Environment, affected: Any) -> list[str]:
    """``affected``: the assessment's component names (see the module doc)."""
    if affected in (None, ""):
        return []
    if not isinstance(affected, list) or not all(isinstance(a, str) for a in affected):
        raise InvalidInput("affected", "expected a list of component names")
    known = set(component_names(environment))
    for i, name in enumerate(affected):
        if name not in known:
            raise InvalidInput(
                f"affected[{i}]",
                f"{name!r} is not a component of this environment",
                hint=f"one of {sorted(known)}",
            )
    return list(dict.fromkeys(affected))


def component_names(environment: Environment) -> list[str]:
    names = list(environment.services)
    for name, database in environment.databases.items():
        names.append(f"database:{name}")
        if environment.clusters[database.cluster].replica_conn_id:
            names.append(f"replica:{database.cluster}")
    names += [f"storage:{name}" for name in environment.storage]
    names += [f"external:{name}" for name in environment.external_dependencies]
    names.append("backups")
    return list(dict.fromkeys(names))


def recovery_conf(
    environment: Environment,
    scenario: str,
    *,
    affected: list[str],
    scenario_conf: dict[str, Any],
    incident: dict[str, Any],
    approved_by: str | None,
) -> dict[str, Any]:
    """The conf of the recovery run: defaults derived from the affected components, then
    what the alert or the operator set, then the incident's own params. A human approval
    stands for the typed confirmation of the DAGs that demand one; without it, an
    environment that demands confirmation refuses the destructive run (checked here, before
    anything is started)."""
    recovery = recovery_of(scenario)
    conf = {**recovery.defaults(environment, affected, scenario_conf), **scenario_conf}
    if recovery.confirms and environment.destructive_requires_confirmation:
        if not approved_by:
            raise InvalidInput(
                "auto_recover",
                f"{scenario} is destructive and the {incident['environment']} environment "
                "demands a human decision",
                hint="leave auto_recover off: the commander approves in the Airflow UI",
            )
        conf["confirm"] = recovery.confirms(conf)
    if recovery.incident_params:
        conf.update(
            incident_id=incident["incident_id"],
            incident_started_at=incident["started_at"],
            dry_run=incident["dry_run"],
        )
    conf.update(environment=incident["environment"], notify=incident["notify"])
    return conf


# --- restored means verified ---------------------------------------------------------------


def moved_connections(
    environment: Environment, scenario: str, conf: dict[str, Any]
) -> dict[str, str]:
    """Where the re-check must look after the recovery moved a component: after a database
    failover the primary is the promoted replica, so the database's checks go to the
    replica's connection (the old primary is fenced: checking it would find it down)."""
    if scenario != "dr_failover" or conf.get("target") != "database":
        return {}
    database = environment.databases.get(str(conf.get("database")))
    if database is None:
        return {}
    cluster = environment.clusters[database.cluster]
    return {cluster.conn_id: cluster.replica_conn_id} if cluster.replica_conn_id else {}


def checks_for(affected: Iterable[str]) -> list[str]:
    """Which post-recovery validation checks prove the affected components back: a service
    must answer its functional check (so must the services of an external dependency's
    dependents), a database must pass the integrity checks, backups must be fresh again.
    Health of every component is the re-run assessment's job."""
    checks = []
    items = list(affected)
    if not items or any(
        (":" not in a and a != "backups") or a.startswith("external:") for a in items
    ):
        checks.append("application_functionality")
    if not items or any(a.startswith(("database:", "replica:")) for a in items):
        checks.append("data_integrity")
    if "backups" in items:
        checks.append("backup_systems")
    return checks


@dataclass(frozen=True)
class Verdict:
    restored: bool
    still_down: list[str]
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"restored": self.restored, "still_down": self.still_down, "detail": self.detail}


def restoration_verdict(
    affected: list[str],
    assessment: dict[str, Any],
    checks: list[dict[str, Any]],
) -> Verdict:
    """Restored only when the re-run assessment finds every affected component up (every
    component, when none was named) and every validation check for them passed. A check
    that did not run counts as failed: evidence is measured, never assumed.

    A third party (``external:``) is not Tracktion's to bring back: while it is still down,
    the incident is restored when the services work around it - the application's
    functional checks ran and passed (on a fallback provider, or a degraded mode)."""
    down = set(assessment.get("down") or []) | set(assessment.get("degraded") or [])
    still_down = sorted(down & set(affected)) if affected else sorted(down)
    functional = [c for c in checks if c["name"] == "application_functionality"]
    worked_around = [
        name
        for name in still_down
        if name.startswith("external:") and functional and functional[0].get("status") == "passed"
    ]
    still_down = [name for name in still_down if name not in worked_around]
    failed = [c["name"] for c in checks if c.get("status") == "failed"]
    still_down += [f"check {name}" for name in failed]
    if still_down:
        return Verdict(False, still_down, "still down after the recovery: " + ", ".join(still_down))
    scope = ", ".join(affected) if affected else "every component"
    ran = ", ".join(c["name"] for c in checks) or "no validation check"
    around = (
        f"; {', '.join(worked_around)} still down, worked around (functional checks pass)"
        if worked_around
        else ""
    )
    return Verdict(True, [], f"verified: {scope} up on re-assessment; {ran} passed{around}")


def false_positive(affected: list[str], assessment: dict[str, Any]) -> bool:
    """An alert about components the assessment finds all healthy: nothing is recovered.
    Without named components nothing can be judged a false positive."""
    if not affected or "backups" in affected:
        return False
    down = set(assessment.get("down") or []) | set(assessment.get("degraded") or [])
    return not (down & set(affected))
