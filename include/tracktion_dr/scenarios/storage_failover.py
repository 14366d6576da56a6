"""dr_storage_failover's decisions: switch a storage area's services to the area's backup
location (``failover``) or back to its primary path (``failback``).

The plan gives the area a ``backup_location`` (a ``file://`` path on other storage) and a
``path_setting`` (``<file>:<dotted.key>`` in the services' configuration that holds the
area's path). A switch:

1. takes ``dr_config_recovery``'s safety snapshot of the live configuration (the rollback's
   reference);
2. brings the side it switches to up to date: on failover, every file the backup location
   lacks (or holds corrupt) comes from the freshest verified copy (sync mirror or snapshot,
   ``files.storage_copies``); on failback, every file written on the backup location while
   failed over (missing on the primary, or newer there) is copied back. Nothing is deleted:
   a primary file replaced on failback is moved to ``.dr-quarantine/<incident>/``;
3. sets ``path_setting`` to the new path (nothing when it already says so);
4. restarts the services that depend on the area, unless their ``/health`` already reports
   the new path (a re-run converges without a second outage);
5. gates on their health and functional checks (and, where ``/health`` names paths, on
   the new path being the one in use).

A failed step is answered by the exact rollback of the configuration (``scenarios.config``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tracktion_dr.core.errors import InvalidInput, NoUsableBackup, StepFailed
from tracktion_dr.core.incident import check_confirmation
from tracktion_dr.core.plan import Environment, Plan, StorageArea
from tracktion_dr.files import storage_copies
from tracktion_dr.files.snapshots import (
    SnapshotError,
    extract_member,
    location_dir,
    pick_snapshot,
    sha256_file,
    storage_inventory,
)
from tracktion_dr.files.storage_integrity import QUARANTINE, audio_problem
from tracktion_dr.scenarios import GateCheck, SystemAccess, environment_of
from tracktion_dr.services.recovery import dependency_order, probe_services

log = logging.getLogger(__name__)

FAILOVER, FAILBACK = "failover", "failback"
DIRECTIONS = (FAILOVER, FAILBACK)
HEALTH_TIMEOUT_SECONDS = 3


def failover_areas(environment: Environment) -> list[str]:
    return [name for name, area in environment.storage.items() if area.backup_location]


def dependents(environment: Environment, area: str) -> list[str]:
    """The services that work on ``area`` (it is in their ``depends_on``), start order."""
    using = [name for name, s in environment.services.items() if area in s.depends_on]
    return dependency_order(environment, using)


def rto_seconds(plan: Plan) -> float:
    """The strictest tier among the services that use an area with a backup location."""
    targets = [
        plan.tiers[service.tier].rto.total_seconds()
        for environment in plan.environments.values()
        for area in failover_areas(environment)
        for service in environment.services.values()
        if area in service.depends_on
    ]
    return min(targets or [t.rto.total_seconds() for t in plan.tiers.values()])


# --- the setting -------------------------------------------------------------------------


def setting_file(environment: Environment, spec: StorageArea) -> tuple[Path, str]:
    """(the configuration file that holds the area's path, the dotted key)."""
    name, _, key = (spec.path_setting or "").partition(":")
    for root in environment.config_paths:
        if (Path(root) / name).is_file():
            return Path(root) / name, key
    raise InvalidInput(
        "path_setting",
        f"{name} is in none of the plan's config_paths {environment.config_paths}",
        hint="fix the area's path_setting, or restore the configuration first (dr_config_recovery)",
    )


def _load(path: Path) -> Any:
    if path.suffix == ".json":
        return json.loads(path.read_text())
    import yaml

    return yaml.safe_load(path.read_text())


def read_setting(path: Path, key: str) -> Any:
    value: Any = _load(path)
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def write_setting(path: Path, key: str, value: str) -> bool:
    """Set ``key`` in ``path`` to ``value`` (temp file, same mode, rename); False when it
    already says so."""
    document = _load(path)
    *parents, last = key.split(".")
    node = document
    for part in parents:
        node = node.setdefault(part, {})
    if node.get(last) == value:
        return False
    node[last] = value
    if path.suffix == ".json":
        text = json.dumps(document, indent=2) + "\n"
    else:
        import yaml

        text = yaml.safe_dump(document, sort_keys=False)
    partial = path.with_name(f".{path.name}.dr-partial")
    partial.write_text(text)
    info = path.stat()
    os.chmod(partial, info.st_mode & 0o7777)
    try:
        os.chown(partial, info.st_uid, info.st_gid)
    except PermissionError:  # not root: the file stays ours, as it was
        pass
    os.replace(partial, path)
    return True


# --- guard -------------------------------------------------------------------------------


def check_inputs(plan: Plan, incident: dict[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The run: area, direction, the two paths, the setting and the services. Refused
    (nothing touched): an area without a backup location, an unknown direction, a missing
    confirmation, a setting file that is not in the configuration."""
    environment = environment_of(plan, incident)
    area = params.get("area") or ""
    candidates = failover_areas(environment)
    if area not in candidates:
        raise InvalidInput(
            "area",
            f"{area!r} has no backup_location in the plan (areas that have one: {candidates})",
            hint="give the area backup_location and path_setting in the plan",
        )
    direction = params.get("direction") or FAILOVER
    if direction not in DIRECTIONS:
        raise InvalidInput("direction", f"{direction!r} is not one of {list(DIRECTIONS)}")
    if not incident["dry_run"]:
        check_confirmation(
            environment.destructive_requires_confirmation, params.get("confirm"), f"storage {area}"
        )
    spec = environment.storage[area]
    primary, backup = Path(spec.path), location_dir(spec.backup_location or "")
    target = backup if direction == FAILOVER else primary
    path, key = setting_file(environment, spec)
    if direction == FAILBACK and not backup.is_dir():
        raise NoUsableBackup(
            f"{backup} does not exist: nothing was failed over to it", hint="nothing to fail back"
        )
    pointed_at = read_setting(path, key)
    return {
        **incident,
        "area": area,
        "direction": direction,
        "primary": str(primary),
        "backup": str(backup),
        "target": str(target),
        "setting_file": str(path),
        "setting_key": key,
        "pointed_at": pointed_at,
        "services": dependents(environment, area),
    }


def plan_of_actions(run: dict[str, Any]) -> list[str]:
    source = (
        "from the freshest verified copy (sync mirror or snapshot): files it lacks or holds corrupt"
        if run["direction"] == FAILOVER
        else f"from {run['backup']}: files written there while failed over (primary copies "
        f"replaced are moved to .dr-quarantine/{run['incident_id']}/)"
    )
    already = run["pointed_at"] == run["target"]
    return [
        "safety_snapshot: archive the live configuration (the rollback's reference)",
        f"bring_up_to_date: {run['target']} {source}; nothing deleted",
        f"repoint: {run['setting_file']} {run['setting_key']} = {run['target']}"
        + (" (already so: nothing to change)" if already else f" (was {run['pointed_at']})"),
        f"restart_services: {', '.join(run['services']) or 'none'} (those not already on it)",
        "gate_services: those services healthy, functional checks passing, on the new path",
        "rollback (only if a step above fails): the configuration as the safety snapshot "
        "recorded, services restarted; the run fails",
    ]


def started_summary(run: dict[str, Any]) -> str:
    return f"{run['direction']} of storage {run['area']} to {run['target']}"


# --- bring the new side up to date ----------------------------------------------------------


def _ensure_directory(path: Path, spec: StorageArea) -> None:
    if path.is_dir():
        return
    path.mkdir(parents=True)
    if spec.mode:
        path.chmod(int(spec.mode, 8))


def _place(source_copy: dict[str, Any], target: Path) -> str | None:
    """Copy one verified copy to ``target`` (temp name, sha256 checked, rename); None or
    why it was not placed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".dr-restore-{target.name}")
    try:
        if source_copy.get("path"):
            shutil.copyfile(source_copy["path"], temporary)
        else:
            extract_member(Path(source_copy["archive"]), source_copy["member"], temporary)
    except (SnapshotError, OSError) as exc:
        temporary.unlink(missing_ok=True)
        return str(exc)
    if source_copy.get("sha256") and sha256_file(temporary) != source_copy["sha256"]:
        temporary.unlink()
        return "the copy does not match its checksum"
    os.replace(temporary, target)
    return None


def _sound(path: Path, spec: StorageArea) -> bool:
    if spec.audio:
        return audio_problem(path) is None
    return path.stat().st_size > 0


def fill_backup_location(environment: Environment, run: dict[str, Any]) -> dict[str, str]:
    """Failover: put in the backup location every file the freshest verified copies hold
    that it lacks (or holds corrupt); files already sound there are left alone (they may
    be newer: written during an earlier failover). relative path -> what was done."""
    spec = environment.storage[run["area"]]
    backup = Path(run["backup"])
    root = location_dir(environment.backups.storage)
    try:
        snapshot = pick_snapshot(environment.backups.storage, "storage", "latest")
        held = storage_inventory(snapshot).get(run["area"], {})
    except SnapshotError:
        snapshot, held = None, {}
    found = storage_copies.candidates(
        held,
        snapshot.taken_at if snapshot else None,
        snapshot.name if snapshot else None,
        storage_copies.read_mirror(root, run["area"]),
        "auto",
    )
    if not found:
        raise NoUsableBackup(
            f"no sync mirror and no snapshot of {run['area']} to fill {backup} from",
            hint="dr_backup_storage_sync or dr_backup_storage_full makes one",
        )
    if not run["dry_run"]:
        _ensure_directory(backup, spec)
    done: dict[str, str] = {}
    quarantine = backup.parent / QUARANTINE / run["incident_id"] / run["area"]
    for relative, copies in sorted(found.items()):
        target = backup / relative
        if target.is_file() and _sound(target, spec):
            continue
        copy, skipped = storage_copies.choose(copies, audio=spec.audio)
        if copy is None:
            done[relative] = "no usable copy: " + "; ".join(f"{c}: {w}" for c, w in skipped.items())
            continue
        if run["dry_run"]:
            done[relative] = f"would copy from {copy['copy']}"
            continue
        if target.exists():
            (quarantine / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(target, quarantine / relative)
        problem = _place(copy, target)
        done[relative] = f"not copied: {problem}" if problem else f"copied from {copy['copy']}"
    return done


def copy_back_to_primary(environment: Environment, run: dict[str, Any]) -> dict[str, str]:
    """Failback: every file of the backup location the primary lacks, or holds older,
    is copied to the primary (the primary's copy moved to quarantine first)."""
    spec = environment.storage[run["area"]]
    primary, backup = Path(run["primary"]), Path(run["backup"])
    if not run["dry_run"]:
        _ensure_directory(primary, spec)
    quarantine = primary.parent / QUARANTINE / run["incident_id"] / run["area"]
    done: dict[str, str] = {}
    for path in sorted(backup.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        relative = path.relative_to(backup)
        target = primary / relative
        if target.is_file():
            if sha256_file(target) == sha256_file(path):
                continue
            if target.stat().st_mtime >= path.stat().st_mtime and _sound(target, spec):
                continue  # the primary's is the newer sound version
        if run["dry_run"]:
            done[str(relative)] = f"would copy from {backup}"
            continue
        if target.exists():
            (quarantine / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(target, quarantine / relative)
        problem = _place({"path": str(path), "sha256": sha256_file(path)}, target)
        done[str(relative)] = f"not copied: {problem}" if problem else f"copied from {backup}"
    return done


def bring_up_to_date(plan: Plan, run: dict[str, Any]) -> dict[str, Any]:
    environment = environment_of(plan, run)
    if run["direction"] == FAILOVER:
        done = fill_backup_location(environment, run)
    else:
        done = copy_back_to_primary(environment, run)
    failed = {k: v for k, v in done.items() if v.startswith(("not copied", "no usable"))}
    if failed and not run["dry_run"]:
        raise StepFailed(
            f"{run['target']}: {len(failed)} file(s) could not be brought up to date: "
            + "; ".join(f"{k}: {v}" for k, v in list(failed.items())[:5])
        )
    copied = len(done) - len(failed)
    return {
        "detail": f"{copied} file(s) copied to {run['target']}"
        if copied
        else f"{run['target']} already up to date",
        "files": done,
    }


# --- repoint, restart, gate ----------------------------------------------------------------


def repoint(run: dict[str, Any]) -> dict[str, Any]:
    path = Path(run["setting_file"])
    changed = write_setting(path, run["setting_key"], run["target"])
    verb = "set to" if changed else "already"
    answer = {"detail": f"{path.name} {run['setting_key']} {verb} {run['target']}"}
    # ``result`` tells the rollback a change was made (scenarios.config.rollback_needed).
    return {**answer, "result": {"changed": str(path)}} if changed else answer


def health_paths(url: str, timeout: float = HEALTH_TIMEOUT_SECONDS) -> set[str] | None:
    """The ``path`` values a service's ``/health`` reports in its checks (None when it
    does not answer or names none): which storage it really uses."""
    import httpx

    try:
        payload = httpx.get(url, timeout=timeout, follow_redirects=False).json()
    except (httpx.HTTPError, ValueError):
        return None
    checks = payload.get("checks") if isinstance(payload, dict) else None
    paths = {
        str(check["path"])
        for check in (checks or {}).values()
        if isinstance(check, dict) and check.get("path")
    }
    return paths or None


def on_target(environment: Environment, run: dict[str, Any], name: str) -> bool | None:
    """Does the service use the run's target path (None: its health does not say)?"""
    paths = health_paths(environment.services[name].health_url)
    if paths is None:
        return None
    other = run["primary"] if run["direction"] == FAILOVER else run["backup"]
    return run["target"] in paths and other not in paths


def restart_services(plan: Plan, run: dict[str, Any], access: SystemAccess) -> dict[str, Any]:
    """Restart the area's services that do not already report the new path."""
    environment = environment_of(plan, run)
    restarted, left = [], []
    for name in run["services"]:
        if on_target(environment, run, name) is True:
            left.append(name)
            continue
        service = environment.services[name]
        access.controller(environment.controllers[service.controller]).restart(service.unit or name)
        restarted.append(name)
    detail = f"restarted {', '.join(restarted)}" if restarted else "nothing to restart"
    if left:
        detail += f"; already on {run['target']}: {', '.join(left)}"
    return {"detail": detail, "restarted": restarted}


def services_on_target(environment: Environment, run: dict[str, Any]) -> tuple[bool, str]:
    """(the area's services healthy, functional, and on the new path?, what was seen)."""
    if not run["services"]:
        return True, "no service uses the area"
    results = probe_services(environment, run["services"])
    down = {name: r["detail"] for name, r in results.items() if not r["healthy"]}
    if down:
        return False, "; ".join(f"{name}: {detail}" for name, detail in down.items())
    elsewhere = [name for name in run["services"] if on_target(environment, run, name) is False]
    if elsewhere:
        return False, f"{', '.join(elsewhere)}: healthy but not on {run['target']} yet"
    return True, f"{len(results)} service(s) healthy and functional on {run['target']}"


def gate_check(plan: Plan) -> GateCheck:
    def check(run: dict[str, Any]) -> tuple[bool, str]:
        return services_on_target(environment_of(plan, run), run)

    return check


def record_fields(
    run: dict[str, Any], rollback: dict[str, Any] | None, *, rto_target_seconds: float
) -> dict[str, Any]:
    return {
        "rto_target_seconds": rto_target_seconds,
        "backup_used": f"{run['area']}: {run['direction']} to {run['target']}",
        "details": {
            "area": run["area"],
            "direction": run["direction"],
            "target": run["target"],
            "services": run["services"],
            "rolled_back": bool((rollback or {}).get("result")),
        },
    }
