"""dr_storage_recovery's decisions: which snapshot and areas, what is missing or corrupt
(audio judged by content, ``files.storage_integrity``), what gets restored, when the
storage is sound again, and the sentence that names what is not.

A restore point is a snapshot the storage backup DAGs took: for each area, the newest full
at or before it and the incrementals after it (``files.snapshots.storage_inventory``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from tracktion_dr.core.errors import InvalidInput, NoUsableBackup, ValidationFailed
from tracktion_dr.core.plan import Plan
from tracktion_dr.files.snapshots import Snapshot, SnapshotError, pick_snapshot, storage_inventory
from tracktion_dr.files.storage_integrity import (
    AreaReport,
    inspect_area,
    render_report,
    repair_area,
)
from tracktion_dr.scenarios import GateCheck, environment_of

log = logging.getLogger(__name__)

ALL = ([], ["all"], "all")


def rto_seconds(plan: Plan) -> float:
    """The storage is back when the most critical service that needs it can work again
    (the strictest tier of all when no service names a storage area)."""
    return min(
        [
            plan.tiers[service.tier].rto.total_seconds()
            for environment in plan.environments.values()
            for service in environment.services.values()
            if set(service.depends_on) & set(environment.storage)
        ]
        or [tier.rto.total_seconds() for tier in plan.tiers.values()]
    )


# --- guard -------------------------------------------------------------------------------


def areas_in_scope(
    requested: Any, in_plan: list[str], in_backup: list[str], snapshot_name: str
) -> list[str]:
    """The ``areas`` param: ``all`` (every plan area the snapshot holds) or plan area
    names, each of which the snapshot must hold."""
    if requested in ALL:
        return [name for name in in_plan if name in in_backup]
    unknown = [a for a in requested if a not in in_plan]
    if unknown:
        raise InvalidInput(
            "areas", f"unknown {unknown} (the plan has {sorted(in_plan)})", hint="use 'all'"
        )
    not_backed = [a for a in requested if a not in in_backup]
    if not_backed:
        raise InvalidInput(
            "areas",
            f"{not_backed} are not in {snapshot_name}",
            hint="pick a snapshot that holds them, or leave them out",
        )
    return list(requested)


def check_inputs(plan: Plan, incident: dict[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The run: the snapshot picked and the areas in scope. A snapshot that does not exist
    or cannot be read is refused here, before anything is inspected or touched."""
    environment = environment_of(plan, incident)
    try:
        snapshot = pick_snapshot(environment.backups.storage, "storage", params["snapshot"])
        held = storage_inventory(snapshot)
    except SnapshotError as exc:
        raise NoUsableBackup(
            f"snapshot: {exc}",
            hint="'latest', a day with a snapshot (YYYY-MM-DD) or a snapshot name from "
            "the plan's backups.storage; dr_backup_storage_full takes one",
        ) from None
    areas = areas_in_scope(params["areas"], list(environment.storage), list(held), snapshot.name)
    return {**incident, "snapshot": snapshot.as_dict(), "areas": areas}


def plan_of_actions(run: dict[str, Any]) -> list[str]:
    snapshot = run["snapshot"]["name"]
    return [
        f"inspect {', '.join(run['areas'])}: directory, mode and owner; every file counted; "
        f"audio parsed; compared with {snapshot}",
        f"restore every missing or corrupt file from {snapshot}, each checked against its "
        f"sha256 (corrupt copies moved to .dr-quarantine/{run['incident_id']}/, never deleted)",
        "gate_integrity: inspect again until nothing the backup holds is missing or corrupt",
        "report: anything still missing or corrupt fails the run, naming it",
    ]


def started_summary(run: dict[str, Any]) -> str:
    return f"checking {', '.join(run['areas'])} against {run['snapshot']['name']}"


# --- steps -------------------------------------------------------------------------------


def inventory(run: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    return storage_inventory(Snapshot.from_dict(run["snapshot"]))


def inspect(plan: Plan, run: dict[str, Any], areas: list[str] | None = None) -> list[AreaReport]:
    """Each area (default: the run's) now, compared with the snapshot's manifest."""
    environment = environment_of(plan, run)
    manifest = inventory(run)
    return [
        inspect_area(name, environment.storage[name], manifest.get(name, {}))
        for name in (run["areas"] if areas is None else areas)
    ]


def restorable(report: AreaReport) -> list[str]:
    """What the backup can put back in one area: missing files and corrupt ones it holds."""
    return sorted({*report.missing, *report.corrupted} - set(report.unrecoverable))


def to_restore(reports: list[AreaReport]) -> dict[str, list[str]]:
    """Area -> files the restore step will put back (areas with nothing to do left out)."""
    return {r.name: todo for r in reports if (todo := restorable(r))}


def inspect_before(plan: Plan, run: dict[str, Any]) -> dict[str, Any]:
    reports = inspect(plan, run)
    log.info("\n%s", render_report(reports))
    planned = to_restore(reports)
    for area, files in planned.items():
        log.info("%s: %d file(s) to restore: %s", area, len(files), ", ".join(files[:10]))
    count = sum(len(files) for files in planned.values())
    return {
        "detail": f"{count} file(s) to restore" if count else "nothing to restore",
        "areas": {r.name: r.as_dict() for r in reports},
        "to_restore": planned,
    }


def restore(plan: Plan, run: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """Restore what is missing or corrupt *now* in the areas the inspection found damaged
    (looked at again first: a retry or a re-run restores only what is still wrong)."""
    environment = environment_of(plan, run)
    damaged = [name for name, found in before["areas"].items() if not found["clean"]]
    manifest = inventory(run)
    actions: dict[str, dict[str, str]] = {}
    for report in inspect(plan, run, damaged):
        if {*report.missing, *report.corrupted}:
            actions[report.name] = repair_area(
                environment.storage[report.name], report, manifest[report.name], run["incident_id"]
            )
    for area, done in actions.items():
        for relative, action in done.items():
            log.info("%s/%s: %s", area, relative, action)
    count = sum(len(done) for done in actions.values())
    snapshot = run["snapshot"]["name"]
    return {
        "detail": f"{count} file(s) handled from {snapshot}" if count else "nothing to restore",
        "actions": actions,
    }


def left_to_restore(reports: list[AreaReport]) -> tuple[bool, str]:
    """(nothing the backup holds is still missing or corrupt?, what was seen). Files the
    backup does not hold cannot come back this way: the report fails the run on them."""
    left = [f"{name}/{path}" for name, files in to_restore(reports).items() for path in files]
    if left:
        return False, f"{len(left)} file(s) still missing or corrupt: {', '.join(left[:5])}"
    return True, f"{sum(r.file_count for r in reports)} files sound in {len(reports)} area(s)"


def gate_check(plan: Plan) -> GateCheck:
    def check(run: dict[str, Any]) -> tuple[bool, str]:
        return left_to_restore(inspect(plan, run))

    return check


def summary_now(plan: Plan, run: dict[str, Any]) -> list[AreaReport]:
    reports = inspect(plan, run)
    log.info("\n%s", render_report(reports))
    return reports


def judge_integrity(run: dict[str, Any], reports: list[AreaReport]) -> str:
    """The report's sentence; anything still missing or corrupt (or a directory problem)
    fails the run, named (a dry run touched nothing: it only reports)."""
    bad = [r for r in reports if not r.clean]
    if bad and not run["dry_run"]:
        raise ValidationFailed(
            "storage not sound: "
            + "; ".join(
                f"{r.name}: {len(r.missing)} missing, {len(r.corrupted)} corrupt, "
                f"{'; '.join(r.problems) or 'directory ok'}"
                for r in bad
            )
        )
    files = sum(r.file_count for r in reports)
    return f"{files} files in {len(reports)} area(s), {len(bad)} area(s) not sound"


def record_fields(
    run: dict[str, Any],
    before: dict[str, Any] | None,
    restored: dict[str, Any] | None,
    after: dict[str, Any] | None,
    *,
    rto_target_seconds: float,
) -> dict[str, Any]:
    return {
        "rto_target_seconds": rto_target_seconds,
        "backup_used": run["snapshot"]["name"],
        "details": {
            "before": (before or {}).get("areas"),
            "restored": (restored or {}).get("actions"),
            "after": after,
        },
    }
