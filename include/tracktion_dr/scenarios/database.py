"""Database recovery, step by step: what the two database DAGs' tasks call.

Each function is one step of the plan's anatomy and is safe to run again (a cleared task
ends in the same state). Guards only read; they raise ``InvalidInput`` naming the field, or
``NoUsableBackup`` naming what was rejected, before anything is touched. Endpoints (with
their passwords) are passed in by the Airflow layer and never returned.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tracktion_dr.backups.catalog import Catalog, local_path
from tracktion_dr.core.errors import (
    AlreadyRecovered,
    NoUsableBackup,
    Refused,
    StepFailed,
    ValidationFailed,
)
from tracktion_dr.core.incident import InvalidInput
from tracktion_dr.core.incident import check_confirmation as incident_check_confirmation
from tracktion_dr.core.plan import Cluster, Database, Environment, Plan
from tracktion_dr.postgres import pitr, restore
from tracktion_dr.postgres.commands import DEFAULT_BINDIR, Endpoint
from tracktion_dr.postgres.dumps import read_manifest
from tracktion_dr.postgres.integrity import validate_database
from tracktion_dr.services.base import ServiceController

log = logging.getLogger(__name__)

# pg_restore of a compressed custom-format dump needs several times the dump's size.
RESTORE_SPACE_FACTOR = 5
# Rows the canary keeps writing while we work: not part of the backup's snapshot.
CANARY_TABLES = ("dr_canary.heartbeat",)


def check_confirmation(
    environment_name: str, environment: Environment, name: str, confirm: str | None
) -> None:
    incident_check_confirmation(
        environment.destructive_requires_confirmation, confirm, name, environment_name
    )


def catalog_for(environment: Environment, cluster: Cluster) -> Catalog:
    return Catalog(environment.backups, bindir=Path(cluster.bin_dir), os_user=cluster.os_user)


@dataclass(frozen=True)
class DatabaseTarget:
    name: str
    spec: Database
    cluster_name: str
    cluster: Cluster


def database_target(environment: Environment, database: str | None) -> DatabaseTarget:
    if not database or database not in environment.databases:
        raise InvalidInput(
            "database",
            f"{database!r} is not one of the plan's databases {sorted(environment.databases)}",
        )
    spec = environment.databases[database]
    return DatabaseTarget(database, spec, spec.cluster, environment.clusters[spec.cluster])


def cluster_target(environment: Environment, cluster: str | None) -> Cluster:
    if not cluster or cluster not in environment.clusters:
        raise InvalidInput(
            "cluster",
            f"{cluster!r} is not one of the plan's clusters {sorted(environment.clusters)}",
        )
    return environment.clusters[cluster]


def free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


# --- full restore -------------------------------------------------------------------------
#
# Every step below starts from the databases' actual state (restore.inspect_state: names,
# the marker on the scratch copy, datallowconn) and does only what is missing, so a run
# killed anywhere and run again with the same incident converges without a human and
# without a second outage. Each returns {"status", "detail", ...} for the step's event.


def read_restore_state(admin: Endpoint, database: str, tag: str) -> restore.RestoreState:
    """The restore's actual state; a cluster that does not answer is a refusal (a logical
    restore needs a running server: bring it back, or recover it with dr_database_pitr)."""
    import psycopg

    try:
        return restore.inspect_state(admin, database, tag)
    except psycopg.OperationalError as exc:
        raise Refused(
            f"the cluster of {database} does not answer: {str(exc).strip()[:300]}",
            hint="a logical restore needs a running PostgreSQL: start it, or recover the "
            "cluster with dr_database_pitr",
        ) from None


def refuse_unsafe_state(state: restore.RestoreState, incident_id: str) -> None:
    """States no run of this project leaves behind: refuse rather than guess."""
    if state.live and state.aside and state.phase is not restore.Phase.SWAPPED:
        raise Refused(
            f"{state.aside.name} (the kept copy of incident {incident_id}) already exists "
            f"beside {state.database}, which is not this incident's restore: a swap would "
            "have nowhere to set the live database aside",
            hint=f"inspect both; keep {state.aside.name} under another name "
            f"(ALTER DATABASE {state.aside.name} RENAME TO ...), then run again",
        )
    unfinished = [
        o
        for o in state.others
        if o.marker and o.marker.state is restore.MarkerState.VALIDATED and state.live is None
    ]
    if unfinished:
        other = unfinished[0].marker
        raise Refused(
            f"{state.database} is missing and incident {other.incident_id}'s validated copy "  # type: ignore[union-attr]
            f"{unfinished[0].name} is waiting to be swapped in: that incident's swap is unfinished",
            hint=f"re-run dr_database_restore with incident_id {other.incident_id} to finish it",  # type: ignore[union-attr]
        )


def pick_backup(
    catalog: Catalog, target: DatabaseTarget, requested: str, state: restore.RestoreState
) -> dict[str, Any]:
    """The dump to restore. A re-run of the same incident continues with the dump its
    first attempt chose (named in the marker), whatever 'latest' means by now; a dump taken
    in between - perhaps of the damaged database - must not slip in half-way."""
    pinned = state.marker
    if pinned is None:
        return catalog.newest_dump(target.spec.name, backup_id=requested).as_dict()
    chosen = pinned.backup["id"]
    if requested not in ("latest", chosen):
        raise InvalidInput(
            "backup",
            f"incident {pinned.incident_id} already restored {chosen} ({state.describe()}); "
            "a re-run of the same incident continues with that dump",
            hint=f"leave backup at 'latest' (or {chosen}); to restore another dump, open a new incident",
        )
    if state.phase in (restore.Phase.SWAPPED, restore.Phase.VALIDATED):
        # Restored and validated already: the dump is not read again.
        return {**pinned.backup, "status": "restored and validated by an earlier attempt"}
    try:
        return catalog.newest_dump(target.spec.name, backup_id=chosen).as_dict()
    except NoUsableBackup as exc:
        raise NoUsableBackup(
            f"{exc}; it is the dump this incident's earlier attempt restored from",
            hint=f"{state.scratch.name if state.scratch else 'its copy'} stays as it is; "
            "open a new incident to restore another dump",
        ) from None


def refuse_already_recovered(state: restore.RestoreState, backup: dict[str, Any], tag: str) -> None:
    """A new incident on a database that already is the validated restore of this very
    dump: restoring it again would be a second outage and would set aside everything
    written since. Say so instead."""
    marker = state.live_marker
    if (
        marker is None
        or marker.state is not restore.MarkerState.VALIDATED
        or marker.database != state.database
        or marker.tag == tag
        or not marker.same_backup(backup)
    ):
        return
    raise AlreadyRecovered(
        f"{state.database} already is the validated restore of {marker.backup.get('id')}, "
        f"made by incident {marker.incident_id} (validated {marker.at}): restoring the same "
        "dump again would cause a second outage and set aside every write since",
        hint=f"if that incident is the one you are handling, re-run with incident_id "
        f"{marker.incident_id}; if {state.database} was damaged again since, choose a newer "
        f"backup, or, to restore this very dump once more, first clear the marker: "
        f"COMMENT ON DATABASE {state.database} IS NULL",
    )


def resume_note(state: restore.RestoreState, backup_id: str) -> str:
    """What an earlier attempt of this incident already did (for the guard's log)."""
    phase = state.phase
    notes = {
        restore.Phase.NOT_STARTED: "",
        restore.Phase.INCOMPLETE: f"{state.scratch.name if state.scratch else ''} was left "
        "incomplete by an earlier attempt: it is dropped and restored again",
        restore.Phase.RESTORED: "the restore is complete: validation runs",
        restore.Phase.INVALID: "the restore is complete but failed validation: it is validated again",
        restore.Phase.VALIDATED: f"restored and validated from {backup_id}: only the swap "
        "and what follows remain",
        restore.Phase.SWAPPED: f"{state.database} already is this incident's validated restore "
        f"of {backup_id}: services are not stopped again; only starting them, the gates, the "
        "measurement and the record remain",
    }
    note = notes[phase]
    if state.others:
        note += ("; " if note else "") + (
            "left by other incidents, not touched: " + ", ".join(o.name for o in state.others)
        )
    return note


def guard_restore(
    plan: Plan,
    incident: dict[str, Any],
    params: dict[str, Any],
    admin_for: Callable[[str], Endpoint],
) -> dict[str, Any]:
    """Everything checked, nothing touched: the restore plan (safe for XCom).

    Inputs first, then the actual state of this incident's databases (read-only): a re-run
    resumes (same dump, only the missing steps), a new incident on a database already
    restored from the same dump is refused with ``AlreadyRecovered``."""
    environment = plan.environment(incident["environment"])
    target = database_target(environment, params.get("database"))
    check_confirmation(incident["environment"], environment, target.name, params.get("confirm"))
    mode = params.get("mode") or "side_by_side"
    if mode not in ("side_by_side", "in_place"):
        raise InvalidInput("mode", f"{mode!r} is not side_by_side or in_place")
    jobs = params.get("jobs") or target.spec.restore_jobs
    if not isinstance(jobs, int) or not 1 <= jobs <= 64:
        raise InvalidInput("jobs", f"{jobs!r} is not a number of parallel jobs between 1 and 64")
    requested = (params.get("backup") or "latest").strip()
    tag = restore.incident_tag(incident["incident_id"])
    try:
        new_name = restore.restore_name(target.spec.name, tag)
        kept = restore.aside_name(target.spec.name, tag)
    except ValueError as exc:
        raise InvalidInput("database", str(exc)) from None
    state = read_restore_state(admin_for(target.cluster.conn_id), target.spec.name, tag)
    refuse_unsafe_state(state, incident["incident_id"])
    backup = pick_backup(catalog_for(environment, target.cluster), target, requested, state)
    refuse_already_recovered(state, backup, tag)
    if state.phase in (restore.Phase.NOT_STARTED, restore.Phase.INCOMPLETE):
        needed = backup["size_bytes"] * RESTORE_SPACE_FACTOR
        # An incomplete copy of ours is dropped before the restore: its space counts.
        reclaimed = state.scratch.size_bytes if state.scratch else 0
        available = free_bytes(Path(target.cluster.data_directory)) + reclaimed
        if available < needed:
            raise InvalidInput(
                "backup",
                f"not enough disk for {backup['id']}: {available / 2**30:.1f} GiB free, "
                f"{needed / 2**30:.1f} GiB needed ({RESTORE_SPACE_FACTOR}x the dump)",
            )
    tier = plan.tiers[target.spec.tier]
    services = environment.dependents_of(target.name)
    name = target.spec.name
    actions = [
        f"stop services that depend on {target.name}: {', '.join(services) or 'none'}",
        f"pg_restore -j {jobs} of {backup['id']} into {new_name}"
        if mode == "side_by_side"
        else f"rename {name} to {kept}, then pg_restore -j {jobs} of {backup['id']} into {new_name}",
        f"validate {new_name}: table set, row counts vs manifest, FK orphans, duplicate PKs, "
        "business rules, pg_amcheck",
        f"swap: {name} -> {kept}, {new_name} -> {name}"
        if mode == "side_by_side"
        else f"rename {new_name} to {name} (on validation failure: {kept} is put back instead)",
        f"start services in dependency order: {', '.join(services) or 'none'}",
        "gates: database accepts connections, services healthy, functional checks pass",
        f"measure data lost from the canary and the rows written after the dump kept in {kept}; "
        "record the run in the ledger",
    ]
    return {
        "database": target.name,
        "database_name": name,
        "cluster": target.cluster_name,
        "mode": mode,
        "jobs": jobs,
        "backup": backup,
        "tag": tag,
        "restore_name": new_name,
        "kept_as": kept,
        "services": services,
        "rto_seconds": tier.rto.total_seconds(),
        "rpo_seconds": plan.data_categories[target.spec.data_category].rpo.total_seconds(),
        "actions": actions,
        "state": state.as_dict(),
        "resume": resume_note(state, backup["id"]),
    }


def database_owner(admin: Endpoint, database: str) -> str | None:
    import psycopg

    with psycopg.connect(admin.conninfo("postgres"), connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_catalog.pg_database WHERE datname = %s",
            (database,),
        ).fetchone()
    return str(row[0]) if row else None


def _state(admin: Endpoint, run: dict[str, Any]) -> restore.RestoreState:
    return restore.inspect_state(admin, run["database_name"], run["tag"])


def _outcome(detail: str, status: str = "succeeded", **extra: Any) -> dict[str, Any]:
    return {"status": status, "detail": detail, **extra}


def stop_services_for_restore(
    admin: Endpoint, run: dict[str, Any], environment: Environment, controller_for: Any
) -> dict[str, Any]:
    """Stop the dependents - unless ``<db>`` already is this incident's restore (an earlier
    attempt got past the swap): stopping them again would be a second outage."""
    state = _state(admin, run)
    if state.phase is restore.Phase.SWAPPED:
        return _outcome(
            f"not stopped again: {state.database} already is this incident's restore "
            "(start_services brings up any that are down)",
            "skipped",
        )
    return _outcome(stop_services(environment, run["services"], controller_for))


def restore_step(
    admin: Endpoint, run: dict[str, Any], bindir: Path = DEFAULT_BINDIR
) -> dict[str, Any]:
    """Restore the dump into ``<db>_restore_<tag>`` unless a complete copy of this
    incident is already there (or swapped in). In-place mode moves ``<db>`` aside first. A
    copy an earlier attempt left incomplete is dropped first - see
    :func:`restore.drop_incomplete_scratch` for why that, and only that, is safe."""
    state = _state(admin, run)
    database, backup = run["database_name"], run["backup"]
    if state.phase is restore.Phase.SWAPPED:
        return _outcome(
            f"nothing to restore: {database} already is this incident's restore of {backup['id']}",
            "skipped",
        )
    if state.phase in (restore.Phase.RESTORED, restore.Phase.INVALID, restore.Phase.VALIDATED):
        return _outcome(
            f"nothing to restore: {state.scratch.name} already holds the complete restore "  # type: ignore[union-attr]
            f"of {backup['id']} ({state.phase}, left by an earlier attempt)",
            "skipped",
        )
    done = []
    if run["mode"] == "in_place":
        done.append(restore.move_live_aside(admin, state))
    dropped = restore.drop_incomplete_scratch(admin, state)
    done.append(dropped)
    # The restored copy gets the live database's owner (or, if the live one is already
    # moved aside, the kept copy's).
    owner = database_owner(admin, database) or database_owner(admin, run["kept_as"])
    marker = restore.marker_for(
        database, run["incident_id"], run["tag"], backup, restore.MarkerState.RESTORING
    )
    dump = Path(backup["path"])
    name = restore.restore_into_scratch(
        admin, dump, marker, jobs=run["jobs"], owner=owner, bindir=bindir
    )
    done.append(f"restored {dump.name} into {name}")
    return _outcome("; ".join(d for d in done if d), dropped=dropped or None)


def validate_restored(
    admin: Endpoint, run: dict[str, Any], bindir: Path = DEFAULT_BINDIR
) -> dict[str, Any]:
    """Validate this incident's complete copy; mark it validated (with the baseline the
    set-aside measurement needs) or invalid. A copy validated by an earlier attempt is not
    validated again. Raises ``ValidationFailed`` - nothing swapped; in-place mode puts the
    original back first."""
    state = _state(admin, run)
    marker = state.marker
    if state.phase in (restore.Phase.SWAPPED, restore.Phase.VALIDATED):
        where = state.database if state.phase is restore.Phase.SWAPPED else state.scratch.name  # type: ignore[union-attr]
        return _outcome(
            f"validated at {marker.at} by an earlier attempt: {where} is not validated again",  # type: ignore[union-attr]
            "skipped",
            report={"database": where, "ok": True, "checks": marker.checks, "problems": []},  # type: ignore[union-attr]
        )
    if state.phase not in (restore.Phase.RESTORED, restore.Phase.INVALID):
        raise StepFailed(f"nothing to validate: {state.describe()}")
    scratch = state.scratch.name  # type: ignore[union-attr]
    manifest = read_manifest(Path(run["backup"]["path"]))
    report = validate_database(
        admin,
        scratch,
        expected_counts=manifest["row_counts"],
        expected_tables=sorted(manifest["row_counts"]),
        bindir=bindir,
    )
    if not report.ok:
        restore.mark_invalid(admin, state, report.problems)
        put_back = restore.put_back(admin, state) if run["mode"] == "in_place" else ""
        raise ValidationFailed(
            f"{scratch} failed validation, nothing swapped"
            + (f" ({put_back})" if put_back else "")
            + ": "
            + "; ".join(report.problems[:8])
        )
    baseline = restore.measure_baseline(admin, scratch, manifest["row_counts"])
    restore.mark_validated(admin, state, report.checks, baseline)
    return _outcome(f"{scratch}: all integrity checks passed", report=report.as_dict())


def swap_step(admin: Endpoint, run: dict[str, Any]) -> dict[str, Any]:
    """Finish the swap from the actual state (both renames, one, or none left), never
    restoring anything; see :func:`restore.swap`."""
    state = _state(admin, run)
    result = restore.swap(admin, state)
    kept = result["kept_as"]
    detail = "; ".join(result["done"]) + (
        f"; {run['database_name']} is the restored copy, the old one is kept as {kept}"
        if kept
        else f"; {run['database_name']} is the restored copy (there was no live database to keep)"
    )
    status = (
        "skipped"
        if state.phase is restore.Phase.SWAPPED and len(result["done"]) == 1
        else "succeeded"
    )
    return _outcome(detail, status, kept_as=kept)


def measure_restore_loss(admin: Endpoint, run: dict[str, Any]) -> dict[str, Any]:
    """Data lost from the live database, and where it is kept: the canary's newest
    surviving heartbeat gives the time lost; the rows of ``<db>_pre_<tag>`` written after
    the dump (:func:`restore.measure_set_aside`) give what it was and that it is not gone.

    The two agree by construction: both are measured against the same boundary, the dump
    (the restored database *is* the dump; the baseline in its marker describes it). When
    the kept copy holds no row written after the dump, nothing was lost: 0 seconds."""
    from tracktion_dr.postgres.measure import DataLoss, canary_data_loss

    state = _state(admin, run)
    if state.phase is not restore.Phase.SWAPPED:
        return _outcome(
            f"nothing was swapped in ({state.describe()}): the live database is the one the "
            "incident left, nothing was set aside",
            "skipped",
            data_loss=None,
            set_aside=None,
        )
    database = run["database_name"]
    incident_at = datetime.fromisoformat(run["started_at"])
    loss = canary_data_loss(
        admin.conninfo(database),
        incident_at,
        fallback=datetime.fromisoformat(run["backup"]["started_at"]),
        fallback_method="the dump's snapshot time",
    )
    marker = state.marker
    set_aside: restore.SetAside | None = None
    if state.aside and marker and marker.baseline:
        set_aside = restore.measure_set_aside(admin, state.aside.name, marker.baseline)
        if set_aside.rows == 0:
            loss = DataLoss(
                loss.incident_at,
                loss.newest_surviving_write,
                0.0,
                f"no row was written after the dump ({state.aside.name} compared per table)",
            )
    if set_aside is not None:
        where = set_aside.describe()
    elif state.aside is None:
        where = f"no live database was set aside ({database} did not exist before the swap)"
    else:
        where = f"rows kept in {state.aside.name} not measured: its marker has no baseline"
    data_loss = {
        **loss.as_dict(),
        "dump_newest_write": (marker.baseline.get("canary_newest") if marker else None),
        "rows_set_aside": set_aside.rows if set_aside else None,
        "tables_set_aside": len(set_aside.tables) if set_aside else None,
        "kept_as": set_aside.kept_as if set_aside else None,
    }
    return _outcome(
        f"{loss.describe()}; {where}",
        data_loss=data_loss,
        set_aside=set_aside.as_dict() if set_aside else None,
    )


# --- point-in-time recovery ---------------------------------------------------------------


def guard_pitr(
    plan: Plan, incident: dict[str, Any], params: dict[str, Any], now: datetime | None = None
) -> dict[str, Any]:
    environment = plan.environment(incident["environment"])
    cluster_name = params.get("cluster")
    cluster = cluster_target(environment, cluster_name)
    check_confirmation(
        incident["environment"], environment, str(cluster_name), params.get("confirm")
    )
    catalog = catalog_for(environment, cluster)
    window = catalog.recoverable_window()
    if window is None:
        raise InvalidInput("target", f"nothing can be recovered: {catalog.why_no_window()}")
    target = pitr.parse_target(
        params.get("target_type") or "", params.get("target"), window=window, now=now
    )
    base, archive = catalog.base_backup_for(target.time)
    databases = [name for name, db in environment.databases.items() if db.cluster == cluster_name]
    services = environment.start_order(
        {s for name in databases for s in environment.dependents_of(name)}
    )
    tiers = [plan.tiers[environment.databases[name].tier] for name in databases]
    rto = min((t.rto for t in tiers), default=max(t.rto for t in plan.tiers.values()))
    rpo = (
        min(plan.data_categories[environment.databases[n].data_category].rpo for n in databases)
        if databases
        else None
    )
    tag = restore.incident_tag(incident["incident_id"])
    data_directory = Path(cluster.data_directory)
    actions = [
        f"stop services that depend on cluster {cluster_name}: {', '.join(services) or 'none'}",
        f"stop PostgreSQL in {data_directory} (fast, then immediate)",
        f"move {data_directory} aside to {data_directory.name}.pre_{tag}",
        f"copy verified base backup {base.id} ({base.start_lsn}..{base.stop_lsn}) into place",
        f"write recovery.signal, restore_command from {environment.backups.wal_archive}, target {target.describe()}",
        "start PostgreSQL; gate: recovery reached the target and the server promoted",
        "validate: FK orphans, duplicate PKs, business rules, pg_amcheck",
        f"start services in dependency order: {', '.join(services) or 'none'}",
        "re-seed the streaming replica from the recovered primary"
        if cluster.replica_data_directory
        else "no replica in the plan",
        "measure data lost from the canary, record the run in the ledger",
    ]
    return {
        "cluster": cluster_name,
        "databases": [environment.databases[n].name for n in databases],
        "target": target.as_dict(),
        "window": [window[0].isoformat(), window[1].isoformat()] if window else None,
        "base_backup": base.as_dict(),
        "wal": {"first": archive.first, "last": archive.last, "continuous": archive.continuous},
        "data_directory": str(data_directory),
        "wal_archive": str(local_path(environment.backups.wal_archive)),
        "tag": tag,
        "services": services,
        "rto_seconds": rto.total_seconds(),
        "rpo_seconds": rpo.total_seconds() if rpo else None,
        "actions": actions,
    }


def target_from_plan(pitr_plan: dict[str, Any]) -> pitr.RecoveryTarget:
    data = pitr_plan["target"]
    moment = datetime.fromisoformat(data["time"]) if data.get("time") else None
    return pitr.RecoveryTarget(data["type"], data.get("value") or "", moment)


def prepare_data_directory(cluster: Cluster, pitr_plan: dict[str, Any]) -> str:
    """Stop, move aside, lay down the base backup, write the recovery settings."""
    paths = pitr.ClusterPaths(Path(cluster.data_directory), Path(cluster.bin_dir), cluster.os_user)
    stopped = pitr.stop_server(paths)
    aside = pitr.move_aside(paths.data_directory, pitr_plan["tag"])
    pitr.lay_down_base_backup(
        Path(pitr_plan["base_backup"]["path"]), paths.data_directory, cluster.os_user
    )
    pitr.write_recovery_settings(
        paths.data_directory,
        pitr.restore_command_for(Path(pitr_plan["wal_archive"])),
        target_from_plan(pitr_plan),
        port=None,
    )
    return f"{stopped}; old data directory kept at {aside}; base backup {pitr_plan['base_backup']['id']} laid down with recovery settings"


def recovery_log_file(cluster: Cluster, tag: str) -> Path:
    return Path(cluster.data_directory).with_name(f"recovery_{tag}.log")


# --- services -----------------------------------------------------------------------------


def stop_services(environment: Environment, services: list[str], controller_for: Any) -> str:
    """Stop dependents in reverse dependency order (consumers first)."""
    for name in reversed(services):
        controller: ServiceController = controller_for(
            environment.controllers[environment.services[name].controller]
        )
        controller.stop(environment.services[name].unit or name)
    return f"stopped {', '.join(reversed(services)) or 'nothing'}"


def start_services(environment: Environment, services: list[str], controller_for: Any) -> str:
    for name in services:
        controller: ServiceController = controller_for(
            environment.controllers[environment.services[name].controller]
        )
        controller.start(environment.services[name].unit or name)
    return f"started {', '.join(services) or 'nothing'}"


def utcnow() -> datetime:
    return datetime.now(UTC)


ARCHIVE_WAIT_SECONDS = 30


def segment_archived(conn: Any, segment: str) -> bool:
    """True once the archiver has stored ``segment``: no ``<segment>.ready`` is left in
    archive_status. (Comparing names with ``pg_stat_archiver.last_archived_wal`` breaks
    after a promotion, when that column holds a ``.history`` file name.)"""
    row = conn.execute(
        "SELECT count(*) FROM pg_catalog.pg_ls_archive_statusdir() WHERE name = %s",
        (f"{segment}.ready",),
    ).fetchone()
    return row[0] == 0


def salvage_current_wal(admin: Endpoint) -> str:
    """If the primary still answers, switch out its current WAL segment and wait until it
    is archived, so recovery can replay the newest commits. Read-only for the data."""
    import time

    import psycopg

    try:
        with psycopg.connect(
            admin.conninfo("postgres"), connect_timeout=3, autocommit=True
        ) as conn:
            if conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()[0]:  # type: ignore[index]
                return "server is in recovery: no WAL to salvage"
            segment = conn.execute(
                "SELECT pg_catalog.pg_walfile_name(pg_catalog.pg_switch_wal())"
            ).fetchone()[0]  # type: ignore[index]
            deadline = time.monotonic() + ARCHIVE_WAIT_SECONDS
            while time.monotonic() < deadline:
                if segment_archived(conn, segment):
                    return f"salvaged: WAL up to {segment} is archived"
                time.sleep(0.3)
            return f"WAL segment {segment} was not archived within {ARCHIVE_WAIT_SECONDS}s (see pg_stat_archiver)"
    except psycopg.OperationalError:
        return "the primary does not answer: recovering from what the archive already holds"
