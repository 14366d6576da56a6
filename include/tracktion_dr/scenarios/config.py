"""dr_config_recovery's decisions: which snapshot, the safety snapshot of what is live,
the restore (checked beside the live folders before anything is swapped), whether the
result works, and the exact rollback when it does not.

The restore and the rollback themselves are ``files.config_restore``; this module decides
when each runs and what the run says about it. Services are restarted through the
:class:`~tracktion_dr.scenarios.SystemAccess` the Airflow layer passes in.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tracktion_dr.core.errors import InvalidInput, NoUsableBackup, ValidationFailed
from tracktion_dr.core.incident import check_confirmation
from tracktion_dr.core.plan import Environment, HostRole, Plan
from tracktion_dr.files import config_restore
from tracktion_dr.files.snapshots import SnapshotError, location_dir, pick_snapshot
from tracktion_dr.scenarios import GateCheck, SystemAccess, environment_of
from tracktion_dr.services.recovery import dependency_order, probe_services

log = logging.getLogger(__name__)

# After a rollback, how long to watch the services come back before reporting their state
# (the run is failed either way: the restore it was asked for did not hold).
ROLLBACK_HEALTH_WAIT_SECONDS = 30
UNTOUCHED = "nothing was swapped: the live configuration was never touched"

# Where the steps that touch files run (the step kit's ``host``): the configuration paths
# and the environment file are the application host's files, and the snapshots are read
# from (guard, rollback) and written to (safety snapshot) the plan's backups.configuration,
# a local path that host mounts in the compose plan.
FILES_HOST: HostRole = "application"


def restart_host(plan: Plan) -> HostRole | None:
    """Where restarting the services runs: on the application host when a controller is a
    command there (docker compose, systemd); supervisord answers over the network."""
    local = any(
        controller.kind != "supervisord"
        for environment in plan.environments.values()
        for controller in environment.controllers.values()
    )
    return "application" if local else None


def gate_host(plan: Plan) -> HostRole | None:
    """Where the services' gate runs: it probes every service, functional checks included
    (a sample file read on the application host)."""
    from tracktion_dr.scenarios.application import probes_host

    return probes_host(plan)


def rto_seconds(plan: Plan) -> float:
    """Every service reads the configuration: the strictest tier of any service."""
    return min(
        plan.tiers[service.tier].rto.total_seconds()
        for environment in plan.environments.values()
        for service in environment.services.values()
    )


# --- guard -------------------------------------------------------------------------------


def check_inputs(plan: Plan, incident: dict[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The run: the snapshot picked and whether services restart. Refuses (nothing touched)
    an environment without configuration paths, a missing confirmation where the
    environment demands one, and a snapshot that does not exist."""
    environment = environment_of(plan, incident)
    if not environment.config_paths:
        raise InvalidInput("environment", "the plan lists no config_paths here")
    if not incident["dry_run"]:
        check_confirmation(
            environment.destructive_requires_confirmation, params["confirm"], "configuration"
        )
    try:
        snapshot = pick_snapshot(
            environment.backups.configuration,
            "configuration",
            params["snapshot"],
            environment.backups.offsite_conn_id,
        )
    except SnapshotError as exc:
        raise NoUsableBackup(
            str(exc),
            hint="'latest', a day with a snapshot (YYYY-MM-DD) or a snapshot file name from "
            "the plan's backups.configuration; dr_backup_config_snapshot takes one",
        ) from None
    log.info("restoring %s (taken %s)", snapshot.name, snapshot.taken_at)
    return {**incident, "snapshot": snapshot.as_dict(), "restart": bool(params["restart_services"])}


def plan_of_actions(run: dict[str, Any]) -> list[str]:
    snapshot = run["snapshot"]["name"]
    return [
        "safety_snapshot: archive the live configuration and environment file (safety/)",
        f"restore: extract {snapshot} beside the live folders, apply the plan's modes and "
        "owner, parse every JSON/YAML file; a bad snapshot is refused before anything live "
        f"changes; then move the live folders aside (.before-{run['incident_id']}) and swap",
        "validate_live: every JSON/YAML parses, modes and owner as planned",
        "restart_services: every service in dependency order"
        if run["restart"]
        else "restart_services: off (the services read the configuration at their next start)",
        "gate_services: every service healthy and its functional check passing",
        "rollback (only if a step above fails): put back exactly what the safety snapshot "
        "recorded, restart the services; the run fails",
    ]


def started_summary(run: dict[str, Any]) -> str:
    return f"restoring configuration from {run['snapshot']['name']}"


# --- steps -------------------------------------------------------------------------------


def take_safety(plan: Plan, run: dict[str, Any]) -> dict[str, Any]:
    """Archive what is live now, before anything changes (the rollback's reference)."""
    environment = environment_of(plan, run)
    path = config_restore.take_safety_snapshot(
        environment,
        location_dir(environment.backups.configuration, environment.backups.offsite_conn_id),
        run["incident_id"],
    )
    log.info("safety snapshot of the live configuration: %s", path)
    return {"detail": Path(path).name, "path": str(path)}


def restore(plan: Plan, run: dict[str, Any]) -> dict[str, Any]:
    """Swap the snapshot in (checked beside first). A dry run extracts and validates it in
    a temporary folder and touches nothing live. A snapshot that fails the checks is
    refused (:class:`ValidationFailed`) before anything live was touched."""
    environment = environment_of(plan, run)
    archive = Path(run["snapshot"]["path"])
    tag = run["incident_id"]
    try:
        if run["dry_run"]:
            with tempfile.TemporaryDirectory(prefix="dr-config-dry-run-") as scratch:
                config_restore.stage(environment, archive, tag, work_parent=Path(scratch))
            return {
                "status": "skipped",
                "detail": f"dry run: {archive.name} extracts and validates; nothing swapped",
            }
        result = config_restore.restore(environment, archive, tag)
    except config_restore.ConfigInvalid as exc:
        for problem in exc.problems:
            log.error("refused: %s", problem)
        raise ValidationFailed(
            f"{archive.name} refused before anything live was touched: {exc}"
        ) from None
    return {
        "detail": f"{archive.name} swapped in; previous moved aside: {result.swapped}",
        "result": result.as_dict(),
    }


def validate_live(plan: Plan, run: dict[str, Any]) -> str:
    problems = config_restore.validate_live(environment_of(plan, run))
    if problems:
        raise ValidationFailed("live configuration invalid: " + "; ".join(problems))
    return "every JSON/YAML parses; modes as planned"


def restart_all(environment: Environment, access: SystemAccess) -> list[str]:
    """Restart every service, dependencies first (they read the configuration at start)."""
    restarted = []
    for name in dependency_order(environment):
        service = environment.services[name]
        access.controller(environment.controllers[service.controller]).restart(service.unit or name)
        restarted.append(name)
    return restarted


def restart_services(plan: Plan, run: dict[str, Any], access: SystemAccess) -> dict[str, Any]:
    if not run["restart"]:
        return {"status": "skipped", "detail": "restart_services is off"}
    return {"detail": ", ".join(restart_all(environment_of(plan, run), access))}


def services_back(environment: Environment) -> tuple[bool, str]:
    """(every service healthy and its functional check passing?, what was seen)."""
    results = probe_services(environment, list(environment.services))
    down = {name: r["detail"] for name, r in results.items() if not r["healthy"]}
    if down:
        return False, "; ".join(f"{name}: {detail}" for name, detail in down.items())
    return True, f"{len(results)}/{len(results)} services healthy"


def gate_check(plan: Plan) -> GateCheck:
    def check(run: dict[str, Any]) -> tuple[bool, str]:
        return services_back(environment_of(plan, run))

    return check


# --- rollback ------------------------------------------------------------------------------


def rollback_needed(
    safety: dict[str, Any] | None,
    restored: dict[str, Any] | None,
    changed: Callable[[Path], list[str] | None],
) -> tuple[bool, str]:
    """(roll back?, why). The actual state decides, not what the restore step managed to
    report: it may have swapped and then failed (or been killed) before returning. With no
    safety snapshot the restore never ran; a live configuration identical to the safety
    snapshot's record needs nothing; a safety snapshot without a record (an older format)
    is rolled back to only when the restore reported a swap."""
    if not (safety or {}).get("path"):
        return False, UNTOUCHED
    swapped = bool((restored or {}).get("result"))
    differences = changed(Path(safety["path"]))  # type: ignore[index]
    if differences == [] or (differences is None and not swapped):
        if not swapped:
            return False, UNTOUCHED
        return False, "the live configuration is identical to the safety snapshot's record"
    return True, f"{len(differences or [])} path(s) differ from the safety snapshot"


def wait_for_services(
    environment: Environment,
    seconds: float = ROLLBACK_HEALTH_WAIT_SECONDS,
    check: Callable[[Environment], tuple[bool, str]] = services_back,
) -> str:
    """Watch the services come back for up to ``seconds``; what they answer then."""
    deadline = time.monotonic() + seconds
    healthy, detail = check(environment)
    while not healthy and time.monotonic() < deadline:
        time.sleep(2)
        healthy, detail = check(environment)
    return detail


def roll_back(
    plan: Plan,
    run: dict[str, Any],
    safety: dict[str, Any] | None,
    restored: dict[str, Any] | None,
    access: SystemAccess,
    health_wait_seconds: float = ROLLBACK_HEALTH_WAIT_SECONDS,
) -> dict[str, Any]:
    """Runs when a step after the safety snapshot failed: put back exactly what the safety
    snapshot recorded (when anything differs), restart the services, report their state.
    ``result`` in the answer says a rollback happened (the record's ``rolled_back``)."""
    environment = environment_of(plan, run)
    needed, why = rollback_needed(
        safety, restored, lambda path: config_restore.differences_from_safety(environment, path)
    )
    if not needed:
        log.info(why)
        return {"status": "skipped", "detail": why}
    log.warning("rolling back to the safety snapshot %s: %s", safety["path"], why)  # type: ignore[index]
    result = config_restore.roll_back(
        environment,
        Path(safety["path"]),  # type: ignore[index]
        f"{run['incident_id']}-rollback",
    )
    if run["restart"]:
        restart_all(environment, access)
    services = wait_for_services(environment, health_wait_seconds)
    log.warning("rolled back to %s; services: %s", result.snapshot, services)
    return {"detail": f"rolled back to {result.snapshot}; {services}", "result": result.as_dict()}


def record_fields(
    run: dict[str, Any], rollback: dict[str, Any] | None, *, rto_target_seconds: float
) -> dict[str, Any]:
    return {
        "rto_target_seconds": rto_target_seconds,
        "backup_used": run["snapshot"]["name"],
        "details": {"rolled_back": bool((rollback or {}).get("result"))},
    }
