"""dr_storage_recovery's decisions: which copies (snapshot, sync mirror) and areas, what
is missing or corrupt (audio judged by content, ``files.storage_integrity``), what gets
restored from which copy, when the storage is sound again, and the sentence that names
what is not.

Two kinds of copies (``files.storage_copies``): a snapshot the storage backup DAGs took
(for each area, the newest full at or before it and the incrementals after it,
``files.snapshots.storage_inventory``) and the sync mirror (complete up to its last pass).
``source`` picks: ``auto`` (each file from the freshest copy verified good now),
``mirror`` or ``snapshot``. The age of the copy used at the time of the loss is the data
loss the restore achieved (the run's RPO figure).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from tracktion_dr.core.errors import InvalidInput, NoUsableBackup, ValidationFailed
from tracktion_dr.core.plan import HostRole, Plan
from tracktion_dr.files import storage_copies
from tracktion_dr.files.snapshots import (
    Snapshot,
    SnapshotError,
    location_dir,
    pick_snapshot,
    storage_inventory,
)
from tracktion_dr.files.storage_integrity import (
    AreaReport,
    inspect_area,
    render_report,
    repair_area,
)
from tracktion_dr.scenarios import GateCheck, environment_of

log = logging.getLogger(__name__)

# Where every step runs (the step kit's ``host``): the storage areas, their sync mirrors and
# snapshots (the plan's backups.storage, written there by dr_backup_storage_*) are that
# host's files.
HOST: HostRole = "storage"

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
    """The ``areas`` param: ``all`` (every plan area the copies hold) or plan area
    names, each of which the copies must hold."""
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


def _picked_snapshot(
    location: str, which: str, source: str, conn_id: str | None = None
) -> Snapshot | None:
    """The snapshot ``source`` may restore from (None for ``mirror``, and for ``auto``
    when no snapshot exists at all and ``latest`` was asked: the mirror may still serve)."""
    if source == storage_copies.MIRROR:
        return None
    try:
        return pick_snapshot(location, "storage", which, conn_id)
    except SnapshotError as exc:
        if source == "auto" and (which or "latest").strip() == "latest":
            log.warning("no storage snapshot: %s; the sync mirror only", exc)
            return None
        raise NoUsableBackup(
            f"snapshot: {exc}",
            hint="'latest', a day with a snapshot (YYYY-MM-DD) or a snapshot name from "
            "the plan's backups.storage; dr_backup_storage_full takes one",
        ) from None


def check_inputs(plan: Plan, incident: dict[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The run: the copies ``source`` may restore from (the snapshot picked, the areas'
    sync mirrors) and the areas in scope. A snapshot that does not exist or cannot be read
    is refused here, before anything is inspected or touched."""
    environment = environment_of(plan, incident)
    source = params.get("source") or "auto"
    if source not in storage_copies.SOURCES:
        raise InvalidInput(
            "source", f"{source!r} is not one of {list(storage_copies.SOURCES)}", hint="auto"
        )
    snapshot = _picked_snapshot(
        environment.backups.storage,
        params["snapshot"],
        source,
        environment.backups.offsite_conn_id,
    )
    try:
        held = set(storage_inventory(snapshot)) if snapshot else set()
        root = location_dir(environment.backups.storage, environment.backups.offsite_conn_id)
    except SnapshotError as exc:
        raise NoUsableBackup(f"snapshot: {exc}", hint="pick another snapshot") from None
    mirrors = {}
    if source != storage_copies.SNAPSHOT:
        for name in environment.storage:
            mirror = storage_copies.read_mirror(root, name)
            if mirror is not None:
                mirrors[name] = mirror.synced_at.isoformat()
    if not held and not mirrors:
        raise NoUsableBackup(
            f"source {source}: no storage snapshot and no checksummed sync mirror in "
            f"{environment.backups.storage}",
            hint="dr_backup_storage_sync or dr_backup_storage_full makes one",
        )
    copies = " and ".join(
        ([snapshot.name] if snapshot else []) + (["the sync mirror"] if mirrors else [])
    )
    areas = areas_in_scope(
        params["areas"], list(environment.storage), sorted(held | set(mirrors)), copies
    )
    return {
        **incident,
        "source": source,
        "snapshot": snapshot.as_dict() if snapshot else None,
        "mirrors": {name: at for name, at in mirrors.items() if name in areas},
        "areas": areas,
    }


def copies_named(run: dict[str, Any]) -> str:
    names = [run["snapshot"]["name"]] if run.get("snapshot") else []
    for area, synced_at in (run.get("mirrors") or {}).items():
        names.append(f"sync/{area} ({synced_at})")
    return ", ".join(names) or "no copy"


def plan_of_actions(run: dict[str, Any]) -> list[str]:
    copies = copies_named(run)
    which = {
        "auto": "the freshest copy of each file verified good now (a damaged mirror copy "
        "is skipped for the snapshot's)",
        "mirror": "the sync mirror only (each copy checked against the sync's sha256)",
        "snapshot": "the snapshot only",
    }[run.get("source", "snapshot")]
    return [
        f"inspect {', '.join(run['areas'])}: directory, mode and owner; every file counted; "
        f"audio parsed; compared with {copies}",
        f"restore every missing or corrupt file from {which}, each checked against its "
        f"sha256 (corrupt copies moved to .dr-quarantine/{run['incident_id']}/, never "
        "deleted); the age of the copy used at the loss is the data lost (RPO)",
        "gate_integrity: inspect again until nothing the backup holds is missing or corrupt",
        "report: anything still missing or corrupt fails the run, naming it",
    ]


def started_summary(run: dict[str, Any]) -> str:
    return f"checking {', '.join(run['areas'])} against {copies_named(run)}"


# --- steps -------------------------------------------------------------------------------


def inventory(run: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """area -> relative path -> the snapshot's copy (what the snapshot picked holds)."""
    return storage_inventory(Snapshot.from_dict(run["snapshot"])) if run.get("snapshot") else {}


def copies_by_area(plan: Plan, run: dict[str, Any]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """area -> relative path -> the copies the run's ``source`` allows, freshest first."""
    environment = environment_of(plan, run)
    root = location_dir(environment.backups.storage, environment.backups.offsite_conn_id)
    held = inventory(run)
    snapshot = run.get("snapshot")
    point = datetime.fromisoformat(snapshot["taken_at"]) if snapshot else None
    found = {}
    for name in run["areas"]:
        mirror = storage_copies.read_mirror(root, name) if name in run.get("mirrors", {}) else None
        found[name] = storage_copies.candidates(
            held.get(name, {}),
            point,
            snapshot["name"] if snapshot else None,
            mirror,
            run.get("source", storage_copies.SNAPSHOT),
        )
    return found


def _usable(
    area_copies: dict[str, list[dict[str, Any]]], report: AreaReport, audio: bool
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, str]]]:
    """For each file to put back: the copy to use; and, per file, copies skipped (why)."""
    chosen: dict[str, dict[str, Any]] = {}
    skipped: dict[str, dict[str, str]] = {}
    for relative in sorted({*report.missing, *report.corrupted}):
        copy, passed_over = storage_copies.choose(area_copies.get(relative, []), audio=audio)
        if copy is not None:
            chosen[relative] = copy
        if passed_over:
            skipped[relative] = passed_over
    return chosen, skipped


def inspect(plan: Plan, run: dict[str, Any], areas: list[str] | None = None) -> list[AreaReport]:
    """Each area (default: the run's) now, compared with the freshest copy of each file.
    A file with no usable copy (every copy damaged) is reported unrecoverable."""
    environment = environment_of(plan, run)
    by_area = copies_by_area(plan, run)
    reports = []
    for name in run["areas"] if areas is None else areas:
        spec = environment.storage[name]
        report = inspect_area(name, spec, storage_copies.expected(by_area[name]))
        chosen, _ = _usable(by_area[name], report, spec.audio)
        report.unrecoverable = sorted(
            set(report.unrecoverable) | ({*report.missing, *report.corrupted} - set(chosen))
        )
        reports.append(report)
    return reports


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


def copy_used(copy: dict[str, Any], lost_at: datetime) -> dict[str, Any]:
    return {
        "source": copy["source"],
        "copy": copy["copy"],
        "point": copy["point"],
        "age_seconds": storage_copies.age_at_loss(copy, lost_at),
    }


def restore(plan: Plan, run: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """Restore what is missing or corrupt *now* in the areas the inspection found damaged
    (looked at again first: a retry or a re-run restores only what is still wrong), each
    file from the copy ``source`` picks; say which copy each came from and its age at the
    loss (the incident's start): the data that restore lost."""
    environment = environment_of(plan, run)
    damaged = [name for name, found in before["areas"].items() if not found["clean"]]
    by_area = copies_by_area(plan, run)
    lost_at = datetime.fromisoformat(run["started_at"])
    actions: dict[str, dict[str, str]] = {}
    used: dict[str, dict[str, dict[str, Any]]] = {}
    for report in inspect(plan, run, damaged):
        if not {*report.missing, *report.corrupted}:
            continue
        spec = environment.storage[report.name]
        chosen, skipped = _usable(by_area[report.name], report, spec.audio)
        done = repair_area(spec, report, chosen, run["incident_id"])
        for relative, passed_over in skipped.items():
            for copy, why in passed_over.items():
                log.warning("%s/%s: not restored from %s: %s", report.name, relative, copy, why)
            if relative not in chosen:
                done[relative] = "no usable copy: " + "; ".join(
                    f"{copy}: {why}" for copy, why in passed_over.items()
                )
        actions[report.name] = done
        used[report.name] = {
            relative: {**copy_used(copy, lost_at), "skipped": skipped.get(relative, {})}
            for relative, copy in chosen.items()
            if done.get(relative, "").startswith("restored")
        }
    for area, done in actions.items():
        for relative, action in done.items():
            copy = used[area].get(relative)
            log.info("%s/%s: %s%s", area, relative, action, f" from {copy['copy']}" if copy else "")
    count = sum(len(done) for done in actions.values())
    if not count:
        return {"detail": "nothing to restore", "actions": actions}
    loss = data_loss(used)
    return {
        "detail": f"{count} file(s) handled from {copies_named(run)}"
        + (f"; data lost: {loss:.0f}s (age of the oldest copy used)" if loss is not None else ""),
        "actions": actions,
        "copies": used,
        "data_loss_seconds": loss,
    }


def data_loss(used: dict[str, dict[str, dict[str, Any]]]) -> float | None:
    """The RPO the restore achieved: the age at the loss of the oldest copy it used."""
    ages = [copy["age_seconds"] for files in used.values() for copy in files.values()]
    return max(ages) if ages else None


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


def rpo_target_seconds(plan: Plan, run: dict[str, Any]) -> float | None:
    """The strictest RPO of the data categories of the run's areas."""
    environment = environment_of(plan, run)
    targets = [
        plan.data_categories[environment.storage[name].data_category].rpo.total_seconds()
        for name in run["areas"]
        if environment.storage[name].data_category in plan.data_categories
    ]
    return min(targets) if targets else None


def record_fields(
    run: dict[str, Any],
    before: dict[str, Any] | None,
    restored: dict[str, Any] | None,
    after: dict[str, Any] | None,
    *,
    rto_target_seconds: float,
    rpo_target_seconds: float | None = None,
) -> dict[str, Any]:
    restored = restored or {}
    copies = restored.get("copies") or {}
    used = sorted({c["copy"] for files in copies.values() for c in files.values()})
    return {
        "rto_target_seconds": rto_target_seconds,
        "rpo_target_seconds": rpo_target_seconds,
        "data_loss_seconds": restored.get("data_loss_seconds"),
        "backup_used": ", ".join(used) or copies_named(run),
        "details": {
            "source": run.get("source", storage_copies.SNAPSHOT),
            "before": (before or {}).get("areas"),
            "restored": restored.get("actions"),
            "copies": copies,
            "after": after,
        },
    }
