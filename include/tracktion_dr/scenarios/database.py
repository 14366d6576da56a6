"""Database recovery, step by step: what the two database DAGs' tasks call.

Each function is one step of the plan's anatomy and is safe to run again (a cleared task
ends in the same state). Guards only read; they raise ``InvalidInput`` naming the field, or
``NoUsableBackup`` naming what was rejected, before anything is touched. Endpoints (with
their passwords) are passed in by the Airflow layer and never returned.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tracktion_dr.backups.catalog import (
    Catalog,
    Status,
    local_path,
    offsite_cache_beside,
    record_verification,
    restore_command_for,
)
from tracktion_dr.backups.s3_objects import forget_fetch_config, is_s3
from tracktion_dr.core.errors import (
    AlreadyRecovered,
    ControllerError,
    NoUsableBackup,
    Refused,
    StepFailed,
    ValidationFailed,
)
from tracktion_dr.core.incident import InvalidInput
from tracktion_dr.core.incident import check_confirmation as incident_check_confirmation
from tracktion_dr.core.plan import Cluster, Database, Environment, Plan
from tracktion_dr.postgres import basebackups, pitr, restore
from tracktion_dr.postgres.commands import DEFAULT_BINDIR, CommandError, Endpoint
from tracktion_dr.postgres.control import cluster_control
from tracktion_dr.postgres.dumps import read_manifest
from tracktion_dr.postgres.integrity import validate_database
from tracktion_dr.postgres.recovery_marker import (
    RecoveryMarker,
    mark_promoted,
    postmaster_pid,
    read_marker,
    recovery_pending,
    write_marker,
)
from tracktion_dr.postgres.salvage import (
    WalHoldings,
    WalSource,
    archive_salvaged_history,
    salvage_dir_for,
    salvage_wal,
)
from tracktion_dr.postgres.wal import lsn_to_int
from tracktion_dr.services.base import ServiceController, ServiceState

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
    return Catalog(
        environment.backups,
        bindir=Path(cluster.bin_dir),
        os_user=cluster.os_user,
        cache_dir=offsite_cache_beside(cluster.data_directory),
    )


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
    admin: Endpoint,
    run: dict[str, Any],
    bindir: Path = DEFAULT_BINDIR,
    stop_dependents: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Restore the dump into ``<db>_restore_<tag>`` unless a complete copy of this
    incident is already there (or swapped in). A copy an earlier attempt left incomplete is
    dropped first - see :func:`restore.drop_incomplete_scratch` for why that, and only
    that, is safe.

    Side by side, the restore runs while the services stop (it touches nothing live).
    In-place mode moves ``<db>`` aside first, so it makes sure the dependents are stopped
    before (``stop_dependents``; stopping a stopped service is a no-op)."""
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
        if stop_dependents is not None:
            stop_dependents()
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
#
# Every step below inspects the actual state first and does only what is missing, so a run
# SIGKILLed at any point and run again with the same incident converges with no human and
# no second outage. The state lives where it cannot drift from the truth: in the data
# directories themselves (the recovery marker, the signal files, postmaster.pid), the names
# of this incident's kept and staging directories, and the server's own answers.


@dataclass(frozen=True)
class PitrPaths:
    """Every place a PITR of one cluster for one incident reads or writes."""

    data_directory: Path
    replica_data_directory: Path | None
    wal_archive: Path
    tag: str

    @property
    def aside(self) -> Path:
        return pitr.aside_path(self.data_directory, self.tag)

    @property
    def staging(self) -> Path:
        return pitr.staging_path(self.data_directory, self.tag)

    @property
    def replica_aside(self) -> Path | None:
        return (
            pitr.aside_path(self.replica_data_directory, self.tag)
            if self.replica_data_directory
            else None
        )

    @property
    def salvage(self) -> Path:
        return salvage_dir_for(self.wal_archive)

    @property
    def log_file(self) -> Path:
        return self.data_directory.with_name(f"recovery_{self.tag}.log")

    def wal_sources(self) -> list[WalSource]:
        """The archive, the salvage folder, and every pg_wal a recovery would salvage
        before moving its directory: the data directory (or this incident's kept copy of
        it) and the standby."""
        sources = [
            WalSource("archive", self.wal_archive, restorable=True),
            WalSource("salvage", self.salvage, restorable=True),
            WalSource.pg_wal("primary pg_wal", self.data_directory),
            WalSource.pg_wal("kept primary pg_wal", self.aside),
        ]
        if self.replica_data_directory:
            sources.append(WalSource.pg_wal("standby pg_wal", self.replica_data_directory))
        return sources


def pitr_paths(cluster: Cluster, wal_archive: str | Path, tag: str) -> PitrPaths:
    return PitrPaths(
        Path(cluster.data_directory),
        Path(cluster.replica_data_directory) if cluster.replica_data_directory else None,
        Path(wal_archive) if isinstance(wal_archive, Path) else local_path(wal_archive),
        tag,
    )


def paths_from_plan(cluster: Cluster, pitr_plan: dict[str, Any]) -> PitrPaths:
    return pitr_paths(cluster, Path(pitr_plan["wal_archive"]), pitr_plan["tag"])


def own_recovery(data_directory: Path, incident_id: str) -> RecoveryMarker | None:
    """The marker, when the data directory is this incident's recovery (laid down, maybe
    running, maybe already promoted)."""
    marker = read_marker(data_directory)
    if marker and marker.role == "primary" and marker.incident_id == incident_id:
        return marker
    return None


def recovered_primary(cluster: Cluster, pitr_plan: dict[str, Any]) -> bool:
    """True once the cluster is this incident's recovery *and* it has promoted (PostgreSQL
    removed the signal files): from then on nothing may stop it."""
    data = Path(cluster.data_directory)
    return own_recovery(data, pitr_plan["incident_id"]) is not None and not recovery_pending(data)


def refuse_if_already_recovered(
    cluster_name: str, data_directory: Path, marker: RecoveryMarker, target: pitr.RecoveryTarget
) -> None:
    """A new incident asking for what an earlier incident already did (or is doing) to
    this cluster is refused instead of taking the cluster down a second time.

    Same target and that recovery unfinished: re-run the earlier incident instead. Same
    target and it finished: done already - for a time, LSN, restore point or immediate
    target recovering again would throw away everything written since. A finished recovery
    to ``latest`` does not stop a new one: "latest" then means the WAL written since."""
    if not marker.same_target(target.as_dict()):
        return
    unfinished = recovery_pending(data_directory)
    if target.type == "latest" and not unfinished:
        return
    what = f"cluster {cluster_name} to {marker.describe_target()}"
    if unfinished:
        running = postmaster_pid(data_directory) is not None
        raise AlreadyRecovered(
            f"incident {marker.incident_id} is already recovering {what} (base backup "
            f"{marker.base_backup}, laid down {marker.laid_down_at}); that recovery is "
            f"{'running (replaying or paused at the target)' if running else 'unfinished (server stopped)'} "
            f"in {data_directory}",
            hint=f"re-run dr_database_pitr with incident_id {marker.incident_id} and the same "
            "target to finish it; a new incident would throw that work away and stop the cluster again",
        )
    raise AlreadyRecovered(
        f"incident {marker.incident_id} already recovered {what} (base backup "
        f"{marker.base_backup}, promoted {marker.promoted_at or 'earlier'}"
        f"{f' on timeline {marker.timeline}' if marker.timeline else ''}); recovering to the "
        "same point again would throw away everything written since",
        hint="nothing to do for this target; to go back to another point in time, choose another target",
    )


def guard_pitr(
    plan: Plan, incident: dict[str, Any], params: dict[str, Any], now: datetime | None = None
) -> dict[str, Any]:
    """Every check, nothing touched: the PITR plan (safe for XCom).

    In order: the cluster and confirmation; the target's form; what the data directory is
    (this incident's recovery to resume, another incident's recovery to the same target =
    ``AlreadyRecovered``); then the target against the WAL actually held - base backup
    chosen by the target's LSN, restore points resolved from the WAL, the window in the
    target's own terms, WAL continuity, ``pg_verifybackup``. The caller takes the locks and
    only then switches the primary's WAL (the one side effect, a salvage)."""
    environment = plan.environment(incident["environment"])
    cluster_name = params.get("cluster")
    cluster = cluster_target(environment, cluster_name)
    check_confirmation(
        incident["environment"], environment, str(cluster_name), params.get("confirm")
    )
    target = pitr.parse_target(params.get("target_type") or "", params.get("target"), now=now)
    tag = restore.incident_tag(incident["incident_id"])
    catalog = catalog_for(environment, cluster)
    paths = pitr_paths(cluster, catalog.wal_archive_dir(), tag)  # s3://: its verified mirror
    marker = read_marker(paths.data_directory)
    resuming = own_recovery(paths.data_directory, incident["incident_id"])
    window: pitr.RecoverableWindow | None = None
    if resuming is not None:
        if not resuming.same_target(target.as_dict()):
            raise InvalidInput(
                "target",
                f"incident {incident['incident_id']} is already recovering cluster {cluster_name} "
                f"to {resuming.describe_target()} in {paths.data_directory}; asked for {target.describe()}",
                hint="re-run with the same target to finish it, or use a new incident id for another target",
            )
        target = pitr.RecoveryTarget.from_dict(resuming.target)
        base = _base_backup_entry(catalog, resuming)
    else:
        if marker is not None and marker.role == "primary":
            refuse_if_already_recovered(str(cluster_name), paths.data_directory, marker, target)
        holdings = WalHoldings(paths.wal_sources(), Path(cluster.bin_dir))
        usable, rejected = catalog.usable_base_backups(holdings)
        window = catalog.window_held(usable, holdings)
        if window is None:
            raise InvalidInput(
                "target",
                "nothing can be recovered: "
                + ("; ".join(rejected) or f"no base backup in {environment.backups.base}"),
            )
        occurrences: list[Any] = []
        if target.type == "restore_point":
            target, occurrences = catalog.resolve_restore_point(target, usable, holdings, window)
        pitr.check_in_window(target, window)
        # Verified as staged, beside the live cluster, while services stop (off the path).
        base_entry = catalog.base_backup_for_target(target, usable, holdings, verify_now=False)
        if target.type == "restore_point":
            _refuse_ambiguous_restore_point(target, occurrences, base_entry)
        base = base_entry.as_dict()
        log.info("WAL held: %s", holdings.describe_sources())
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
    pitr_plan = {
        "cluster": cluster_name,
        "databases": [environment.databases[n].name for n in databases],
        "target": target.as_dict(),
        "window": window.as_list(target.type) if window else None,
        "window_text": (
            (window.lsn_text() if target.type in ("lsn", "restore_point") else window.time_text())
            if window
            else None
        ),
        "base_backup": base,
        "data_directory": str(paths.data_directory),
        "replica_data_directory": str(paths.replica_data_directory)
        if paths.replica_data_directory
        else None,
        "wal_archive": str(paths.wal_archive),
        "wal_location": environment.backups.wal_archive,
        "wal_conn_id": environment.backups.offsite_conn_id,
        "salvage_dir": str(paths.salvage),
        "tag": tag,
        "incident_id": incident["incident_id"],
        "resuming": resuming.as_dict() if resuming else None,
        "services": services,
        "rto_seconds": rto.total_seconds(),
        "rpo_seconds": rpo.total_seconds() if rpo else None,
    }
    pitr_plan["actions"] = pitr_actions(pitr_plan, target, cluster)
    return pitr_plan


def _base_backup_entry(catalog: Catalog, marker: RecoveryMarker) -> dict[str, Any]:
    """The base backup a resumed recovery was laid down from (already verified then; it is
    not re-chosen - a newer backup must not change a recovery half done)."""
    for entry in catalog.base_backups():
        if entry.id == marker.base_backup:
            return entry.as_dict()
    return {
        "id": marker.base_backup,
        "path": None,
        "start_lsn": marker.base_start_lsn,
        "stop_lsn": None,
    }


def _refuse_ambiguous_restore_point(
    target: pitr.RecoveryTarget, occurrences: list[Any], base: Any
) -> None:
    """PostgreSQL stops at the *first* restore point of that name after the base backup's
    start; if that is not the one we resolved, the operator must say which one."""
    start = lsn_to_int(base.start_lsn or "0/0")
    chosen = lsn_to_int(target.lsn or "0/0")
    earlier = [p for p in occurrences if start <= p.lsn < chosen]
    if earlier:
        raise InvalidInput(
            "target",
            f"restore point {target.value!r} occurs {len(earlier) + 1} times after base backup "
            f"{base.id} started (at {', '.join(p.lsn_text for p in earlier)} and {target.lsn}); "
            "PostgreSQL would stop at the first one",
            hint=f"use target_type lsn with the LSN of the one you mean (e.g. {target.lsn})",
        )


def pitr_actions(
    pitr_plan: dict[str, Any], target: pitr.RecoveryTarget, cluster: Cluster
) -> list[str]:
    """The plan of actions the guard prints: the steps the DAG takes, in order."""
    data = Path(pitr_plan["data_directory"])
    tag = pitr_plan["tag"]
    base = pitr_plan["base_backup"]
    services = ", ".join(pitr_plan["services"]) or "none"
    actions = []
    if pitr_plan["resuming"]:
        marker = pitr_plan["resuming"]
        actions.append(
            f"RESUME incident {marker['incident_id']}'s recovery in {data} (base backup "
            f"{marker['base_backup']} laid down {marker['laid_down_at']}"
            f"{', already promoted' if not recovery_pending(data) else ''}): each step below "
            "checks the actual state and does only what is missing"
        )
    if target.standby_mode:
        how = (
            "standby mode (standby.signal, restore_command only): replays everything held and "
            "waits - it never promotes by itself"
        )
        gate = "replay caught up with the end of the WAL held in the archive and the salvage folder"
    else:
        how = f"target {target.describe()}, recovery_target_action = pause, hot_standby = on"
        gate = "the server is paused at the target"
    actions += [
        f"at the same time, touching nothing live: lay base backup {base['id']} "
        f"({base.get('start_lsn')}..{base.get('stop_lsn')}) down (copy, or extract if "
        f"compressed) into {pitr.staging_path(data, tag).name} beside the data directory, "
        "pg_verifybackup that copy, write the recovery settings and the recovery marker there",
        f"and stop services that depend on cluster {pitr_plan['cluster']}: {services} "
        "(not once the cluster is this incident's recovered primary)",
        f"stop PostgreSQL in {data} (fast, then immediate) - unless it is this incident's recovery",
        f"move {data} aside to {pitr.aside_path(data, tag).name} (kept, never deleted)",
        f"salvage the WAL the archive lacks from the old primary's pg_wal and the standby's "
        f"into {pitr_plan['salvage_dir']}",
        "rename the staged recovery directory into place",
        f"recovery settings: restore_command from {pitr_plan['wal_archive']} then the salvage "
        f"folder, {how}",
        f"start PostgreSQL; gate: {gate} (a server that dies fails the gate at once, quoting its FATAL line)",
        "validate read-only on the server in recovery: FK orphans, duplicate PKs, business "
        "rules, pg_amcheck (where the amcheck extension is installed)",
        "promote: pg_catalog.pg_promote(wait => true), then remove the recovery settings",
        f"start services in dependency order: {services}; gates: services healthy, functional checks pass",
        (
            f"re-seed the standby from the recovered primary unless it already streams from it: "
            f"salvage its WAL, move it aside to {Path(cluster.replica_data_directory).name}.pre_{tag}, "
            "pg_basebackup, start, wait until it streams"
        )
        if cluster.replica_data_directory
        else "no replica in the plan",
        "measure data lost from the canary, record the run in the ledger",
    ]
    return actions


def target_from_plan(pitr_plan: dict[str, Any]) -> pitr.RecoveryTarget:
    return pitr.RecoveryTarget.from_dict(pitr_plan["target"])


def fetch_base_backup(catalog: Catalog, pitr_plan: dict[str, Any]) -> str:
    """Bring an offsite (s3://) base backup down into the catalog's mirror before it is
    staged (the guard only listed it): downloaded with its sha256 checked against the
    object's metadata, its archives against its backup_info. Nothing to do for a file://
    location, or once this incident's recovery is staged or laid down. One that does not
    verify is marked failed (the next attempt's guard chooses another) and fails the
    step, nothing touched."""
    if catalog.mirror("base") is None:
        return ""
    data = Path(pitr_plan["data_directory"])
    staged = pitr.staging_path(data, pitr_plan["tag"])
    if any(own_recovery(path, pitr_plan["incident_id"]) is not None for path in (data, staged)):
        return ""
    wanted = pitr_plan["base_backup"]["id"]
    entry = next((e for e in catalog.base_backups() if e.id == wanted), None)
    if entry is None:
        raise StepFailed(
            f"base backup {wanted} is no longer in {catalog.locations.base}",
            hint="re-run with a new incident: its guard chooses from what the copy holds now",
        )
    checked = catalog.verify(entry)
    if checked.status is not Status.VERIFIED:
        raise ValidationFailed(
            f"base backup {wanted} from {catalog.locations.base} did not verify as "
            f"downloaded: {checked.reason}; it is now marked failed, nothing live was touched",
            hint="re-run: the guard then chooses the next usable base backup",
        )
    return (
        f"{wanted} from {catalog.locations.base}, in the mirror at {entry.path} ({checked.reason})"
    )


def stage_recovery(
    cluster: Cluster, pitr_plan: dict[str, Any], catalog: Catalog | None = None
) -> str:
    """Build the recovery directory beside the live one, touching nothing live (it runs
    while the services stop): an offsite base backup brought down into ``catalog``'s
    mirror first (:func:`fetch_base_backup`), then laid down (copied, or extracted if
    compressed) in this incident's staging directory, ``pg_verifybackup`` on that copy, the
    recovery settings and the marker.

    A copy that fails verification marks the backup failed (the next attempt's guard
    chooses another) and fails the step for good: nothing was stopped by it."""
    paths = paths_from_plan(cluster, pitr_plan)
    ours = own_recovery(paths.data_directory, pitr_plan["incident_id"])
    if ours is not None:
        return f"{paths.data_directory} is already this incident's recovery: nothing to stage"
    fetched = fetch_base_backup(catalog, pitr_plan) if catalog is not None else ""
    os_user, bindir = cluster.os_user, Path(cluster.bin_dir)
    target = target_from_plan(pitr_plan)
    base = pitr_plan["base_backup"]

    def finish_staging(staging: Path) -> None:
        restore_command = restore_command_for(
            pitr_plan.get("wal_location") or paths.wal_archive.as_uri(),
            paths.wal_archive,
            paths.salvage,
            conn_id=pitr_plan.get("wal_conn_id") or "aws_default",
            os_user=os_user,
        )
        written = pitr.write_recovery_settings(staging, restore_command, target)
        write_marker(
            staging,
            RecoveryMarker(
                incident_id=pitr_plan["incident_id"],
                cluster=pitr_plan["cluster"],
                tag=pitr_plan["tag"],
                target=target.as_dict(),
                base_backup=base["id"],
                base_start_lsn=base.get("start_lsn"),
                recovery_settings=written,
            ),
            os_user,
        )

    if base.get("path") is None:
        # A resumed plan names the backup a complete staged copy came from; only that copy
        # is usable then (stage_base_backup keeps it), the backup itself may be gone.
        staged = pitr.staging_path(paths.data_directory, pitr_plan["tag"])
        if own_recovery(staged, pitr_plan["incident_id"]) is None:
            raise StepFailed(
                f"base backup {base['id']} is no longer in the catalog and nothing complete "
                f"is staged at {staged}",
                hint="re-run with a new incident: its guard chooses from what is there now",
            )
    try:
        _, detail = pitr.stage_base_backup(
            Path(base["path"] or paths.data_directory),
            paths.data_directory,
            os_user,
            pitr_plan["tag"],
            finish_staging,
            bindir=bindir,
            is_complete=lambda staged: own_recovery(staged, pitr_plan["incident_id"]) is not None,
        )
    except (CommandError, ValidationFailed) as exc:
        _judge_backup_after_failed_staging(base, paths.data_directory, exc, bindir, os_user)
    return (
        (f"{fetched}; " if fetched else "")
        + detail
        + (
            "; standby-mode settings"
            if target.standby_mode
            else f"; target {target.describe()}, pause at it"
        )
    )


def _judge_backup_after_failed_staging(
    base: dict[str, Any], data_directory: Path, staged_error: Exception, bindir: Path, os_user: str
) -> None:
    """A lay-down that failed says nothing yet about the backup: the disk beside the data
    directory may be full, or its path unusable. The backup itself is checked where it lies
    (independently of the staging): only a backup that fails there is marked failed - the
    next guard then chooses another; otherwise the step fails, to be retried, the backup kept."""
    if not base.get("path") or not Path(base["path"]).exists():
        # an offsite backup's mirror copy (or a local one) gone since the guard chose it
        raise StepFailed(
            f"base backup {base['id']} could not be laid down beside {data_directory} "
            f"({staged_error}) and is no longer where the guard found it "
            f"({base.get('path') or 'no local copy'}): nothing live was touched",
            hint="re-run the same incident: the guard chooses again from what the catalog "
            "holds now (for s3://, the mirror fetches and verifies the backup again)",
        )
    source = Path(base["path"])
    try:
        basebackups.verify_base_backup(source, bindir=bindir, os_user=os_user)
    except (CommandError, ValidationFailed) as source_error:
        reason = f"{source_error}; as staged beside {data_directory}: {staged_error}"
        record_verification(source, Status.FAILED, reason, "pg_verifybackup of a staged copy")
        raise ValidationFailed(
            f"base backup {base['id']} failed verification as staged beside {data_directory} "
            f"and where it lies: {staged_error}; it is now marked failed, nothing live was touched",
            hint="re-run: the guard then chooses the next usable base backup",
        ) from None
    raise StepFailed(
        f"base backup {base['id']} could not be laid down beside {data_directory} "
        f"({staged_error}), yet it verifies where it lies: nothing live was touched",
        hint=f"check free space and permissions in {data_directory.parent}, then re-run the "
        "same incident",
    ) from None


def prepare_data_directory(cluster: Cluster, pitr_plan: dict[str, Any]) -> str:
    """Stop, move aside, salvage, rename the staged recovery directory into place.

    Resumable: a data directory that is already this incident's recovery is left alone
    (never stopped: it is our recovery in progress or our recovered primary); a directory
    already moved aside is not moved again."""
    paths = paths_from_plan(cluster, pitr_plan)
    data, aside = paths.data_directory, paths.aside
    os_user, bindir = cluster.os_user, Path(cluster.bin_dir)
    ours = own_recovery(data, pitr_plan["incident_id"])
    if ours is not None:
        return f"{data} is already this incident's recovery (laid down {ours.laid_down_at}): left as it is"
    staging = pitr.staging_path(data, pitr_plan["tag"])
    if own_recovery(staging, pitr_plan["incident_id"]) is None:
        # Checked before the server is stopped: no outage for a recovery that cannot go on.
        raise StepFailed(
            f"{staging} is not a complete staged recovery of incident {pitr_plan['incident_id']}: "
            "refusing to stop the cluster",
            hint="re-run the incident: stage_recovery builds it",
        )
    notes = []
    if data.exists():
        if aside.exists():
            raise StepFailed(
                f"{data} is not this incident's recovery, and this incident's kept copy {aside} "
                f"already exists: something put a new data directory at {data} after it was "
                "moved aside; compare the two and move one away by hand before re-running"
            )
        notes.append(pitr.stop_server(cluster_control(cluster)))
        data.rename(aside)
        notes.append(f"old data directory kept at {aside}")
    elif aside.exists():
        notes.append(f"old data directory already kept at {aside}")
    else:
        notes.append(f"{data} does not exist (lost with its host?): nothing to move aside")
    held = [("old primary", aside)]
    if paths.replica_data_directory:
        held.append(("standby", paths.replica_data_directory))
    notes.append(salvage_wal(held, paths.wal_archive, os_user=os_user, bindir=bindir).describe())
    pitr.swap_in_staged(staging, data)
    notes.append(f"staged recovery of {pitr_plan['base_backup']['id']} renamed into place")
    return "; ".join(notes)


def start_recovery_server(cluster: Cluster, pitr_plan: dict[str, Any]) -> str:
    """Start the laid-down recovery unless its postmaster is alive already."""
    paths = paths_from_plan(cluster, pitr_plan)
    if postmaster_pid(paths.data_directory) is not None:
        return "already running"
    if own_recovery(paths.data_directory, pitr_plan["incident_id"]) is None:
        raise StepFailed(
            f"{paths.data_directory} is not this incident's recovery (no recovery marker of "
            f"{pitr_plan['incident_id']}): refusing to start it"
        )
    pid = pitr.start_server(cluster_control(cluster), paths.log_file)
    return f"started (pid {pid}); recovery log {paths.log_file}"


def recovery_target_reached(
    cluster: Cluster, pitr_plan: dict[str, Any], conninfo: str
) -> tuple[bool, str]:
    """The gate's check: open when the server is paused at the target (targeted) or has
    replayed past the last record held in the archive and salvage folder (latest), or has
    already been promoted by an earlier attempt. A dead postmaster raises ``ServerDied`` at
    once, quoting the FATAL line of its log."""
    paths = paths_from_plan(cluster, pitr_plan)
    if postmaster_pid(paths.data_directory) is None:
        raise pitr.server_died(paths.data_directory, paths.log_file)
    state = pitr.recovery_state(conninfo)
    if isinstance(state, str):
        if postmaster_pid(paths.data_directory) is None:
            raise pitr.server_died(paths.data_directory, paths.log_file)
        return False, f"not accepting connections yet ({state})"
    if not state.in_recovery:
        return True, "already promoted (an earlier attempt of this incident got that far)"
    target = target_from_plan(pitr_plan)
    if target.standby_mode:
        end = WalHoldings.restorable_only(paths.wal_archive, Path(cluster.bin_dir)).end(
            commit_lookback=0
        )
        if (
            end.last_record_lsn is not None
            and state.replay_lsn
            and lsn_to_int(state.replay_lsn) > end.last_record_lsn
        ):
            return True, (
                f"caught up: replayed to {state.replay_lsn}, past the last record held "
                f"({end.lsn_text} in {end.segment})"
            )
        return False, f"{state.describe()}; the WAL held ends at {end.lsn_text} ({end.segment})"
    if state.pause_state == "paused":
        return True, f"paused at the target {target.describe()}: {state.describe()}"
    detail = state.describe()
    if target.lsn and state.replay_lsn:
        to_go = max(0, lsn_to_int(target.lsn) - lsn_to_int(state.replay_lsn))
        detail += f"; target {target.lsn}, {to_go} bytes to go"
    elif target.type == "time":
        detail += f"; target {target.value}"
    return False, detail


def validate_recovered(admin: Endpoint, databases: list[str], bindir: Path) -> list[dict[str, Any]]:
    """Integrity checks on the server while it is still in recovery (read-only; also fine
    on an already promoted one)."""
    return [
        validate_database(admin, name, bindir=bindir, install_amcheck=False).as_dict()
        for name in databases
    ]


def promote_recovered(cluster: Cluster, pitr_plan: dict[str, Any], admin: Endpoint) -> str:
    """``pg_promote(wait => true)``, then the recovery settings out of
    ``postgresql.auto.conf``, the marker notes the promotion, and the salvaged segments the
    new timeline's history runs through are copied into a local archive (an s3:// one:
    :func:`salvaged_history_kept`). Idempotent."""
    data = Path(cluster.data_directory)
    marker = own_recovery(data, pitr_plan["incident_id"])
    if marker is None:
        raise StepFailed(f"{data} is not this incident's recovery: refusing to promote it")
    promoted_now, timeline = pitr.promote_server(admin.conninfo("postgres"))
    cleared = pitr.clear_recovery_settings(data, marker.recovery_settings)
    forget_fetch_config(Path(pitr_plan["wal_archive"]))  # S3 credentials of restore_command
    mark_promoted(data, timeline, cluster.os_user)
    return (
        f"{'promoted' if promoted_now else 'already promoted'}; now on timeline {timeline}; "
        f"recovery settings {'removed' if cleared else 'already removed'}"
        + salvaged_history_kept(cluster, pitr_plan)
    )


def salvaged_history_kept(cluster: Cluster, pitr_plan: dict[str, Any]) -> str:
    """Where the salvaged WAL the new timeline's history runs through now is, said as it
    is. A local archive gets copies (it is continuous again). An s3:// archive does not:
    its local folder is the mirror, whose contract is verified downloads of what S3 lists
    - a file put there would look offsite and is not - so the salvage folder keeps them."""
    archive = Path(pitr_plan["wal_archive"])
    location = pitr_plan.get("wal_location") or ""
    if is_s3(location):
        salvage = salvage_dir_for(archive)
        held = sorted(p.name for p in salvage.iterdir()) if salvage.is_dir() else []
        if not held:
            return ""
        return (
            f"; salvaged WAL ({len(held)} file(s)) stays in {salvage}, NOT in the offsite "
            f"archive {location} (its mirror holds only verified downloads): keep that "
            "folder - a recovery from the offsite archive alone cannot replay the old "
            "timeline's end without it"
        )
    archived = archive_salvaged_history(
        Path(cluster.data_directory), archive, os_user=cluster.os_user, bindir=Path(cluster.bin_dir)
    )
    if not archived:
        return ""
    return (
        f"; {len(archived)} salvaged WAL file(s) the new timeline's history runs through "
        f"copied into the archive {archive}"
    )


def kept_copies(pitr_plan: dict[str, Any]) -> list[str]:
    """The set-aside copies this incident made (one per data directory at most)."""
    kept = [pitr.aside_path(Path(pitr_plan["data_directory"]), pitr_plan["tag"])]
    if pitr_plan.get("replica_data_directory"):
        kept.append(pitr.aside_path(Path(pitr_plan["replica_data_directory"]), pitr_plan["tag"]))
    return [str(path) for path in kept if path.exists()]


def recovery_log_file(cluster: Cluster, tag: str) -> Path:
    return Path(cluster.data_directory).with_name(f"recovery_{tag}.log")


# --- services -----------------------------------------------------------------------------


def stop_services(environment: Environment, services: list[str], controller_for: Any) -> str:
    """Stop dependents in reverse dependency order (consumers first); the services of one
    level at the same time."""
    levels = environment.start_levels(services)[::-1]
    _each_level(environment, levels, controller_for, "stop")
    return f"stopped {', '.join(s for level in levels for s in level) or 'nothing'}"


def start_services(environment: Environment, services: list[str], controller_for: Any) -> str:
    """Start in dependency order; the services of one level at the same time."""
    levels = environment.start_levels(services)
    _each_level(environment, levels, controller_for, "start")
    return f"started {', '.join(s for level in levels for s in level) or 'nothing'}"


STOP_CONFIRM_SECONDS = 60
STOP_CONFIRM_POLL_SECONDS = 0.2


def _each_level(
    environment: Environment, levels: list[list[str]], controller_for: Any, operation: str
) -> None:
    # One controller per service, built here (connections are looked up in this thread);
    # each then talks to its host on its own connection.
    for level in levels:
        calls = []
        for name in level:
            service = environment.services[name]
            controller: ServiceController = controller_for(
                environment.controllers[service.controller]
            )
            calls.append((controller, service.unit or name))
        if len(calls) == 1:
            _apply(operation, *calls[0])
            continue
        with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="dr-svc") as pool:
            for future in [pool.submit(_apply, operation, c, unit) for c, unit in calls]:
                future.result()  # the first failure, as raised


def _apply(operation: str, controller: ServiceController, unit: str) -> None:
    getattr(controller, operation)(unit)
    if operation == "stop":
        _confirm_stopped(controller, unit)


def _confirm_stopped(controller: ServiceController, unit: str) -> None:
    """A stop returns before the process is gone when someone else is already stopping it
    (supervisord answers NOT_RUNNING for a process in STOPPING): the next level - or a
    database moved aside - must not go ahead while it may still write."""
    deadline = time.monotonic() + STOP_CONFIRM_SECONDS
    while True:
        status = controller.status(unit)
        if status.state in (ServiceState.STOPPED, ServiceState.FAILED):
            return
        if time.monotonic() >= deadline:
            raise ControllerError(
                f"{unit} was asked to stop but is still {status.state} after "
                f"{STOP_CONFIRM_SECONDS}s ({status.detail or 'no detail'})",
                hint=f"stop {unit} on its host by hand, then re-run the same incident",
            )
        time.sleep(STOP_CONFIRM_POLL_SECONDS)


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
                time.sleep(0.1)
            return f"WAL segment {segment} was not archived within {ARCHIVE_WAIT_SECONDS}s (see pg_stat_archiver)"
    except psycopg.OperationalError:
        return "the primary does not answer: recovering from what the archive already holds"
