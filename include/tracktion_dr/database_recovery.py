"""Database recovery, step by step: what the two database DAGs' tasks call.

Each function is one step of the plan's anatomy and is safe to run again (a cleared task
ends in the same state). Guards only read; they raise ``InvalidInput`` naming the field, or
``NoUsableBackup`` naming what was rejected, before anything is touched. Endpoints (with
their passwords) are passed in by the Airflow layer and never returned.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tracktion_dr.backups.catalog import Catalog, local_path
from tracktion_dr.incident import InvalidInput
from tracktion_dr.incident import check_confirmation as incident_check_confirmation
from tracktion_dr.plan import Cluster, Database, Environment, Plan
from tracktion_dr.postgres import pitr, restore
from tracktion_dr.postgres.commands import Endpoint
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


def guard_restore(plan: Plan, incident: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Everything checked, nothing touched: the restore plan (safe for XCom)."""
    environment = plan.environment(incident["environment"])
    target = database_target(environment, params.get("database"))
    check_confirmation(incident["environment"], environment, target.name, params.get("confirm"))
    mode = params.get("mode") or "side_by_side"
    if mode not in ("side_by_side", "in_place"):
        raise InvalidInput("mode", f"{mode!r} is not side_by_side or in_place")
    jobs = params.get("jobs") or target.spec.restore_jobs
    if not isinstance(jobs, int) or not 1 <= jobs <= 64:
        raise InvalidInput("jobs", f"{jobs!r} is not a number of parallel jobs between 1 and 64")
    backup_id = (params.get("backup") or "latest").strip()
    backup = catalog_for(environment, target.cluster).newest_dump(
        target.spec.name, backup_id=backup_id
    )
    needed = backup.size_bytes * RESTORE_SPACE_FACTOR
    available = free_bytes(Path(target.cluster.data_directory))
    if available < needed:
        raise InvalidInput(
            "backup",
            f"not enough disk for {backup.id}: {available / 2**30:.1f} GiB free, "
            f"{needed / 2**30:.1f} GiB needed ({RESTORE_SPACE_FACTOR}x the dump)",
        )
    tier = plan.tiers[target.spec.tier]
    services = environment.dependents_of(target.name)
    tag = restore.incident_tag(incident["incident_id"])
    new_name, kept = (
        restore.restore_name(target.spec.name, tag),
        restore.aside_name(target.spec.name, tag),
    )
    actions = [
        f"stop services that depend on {target.name}: {', '.join(services) or 'none'}",
        f"pg_restore -j {jobs} of {backup.id} into {new_name}"
        if mode == "side_by_side"
        else f"rename {target.spec.name} to {kept}, then pg_restore -j {jobs} of {backup.id} into {target.spec.name}",
        "validate: table set, row counts vs manifest, FK orphans, duplicate PKs, business rules, pg_amcheck",
        f"swap: {target.spec.name} -> {kept}, {new_name} -> {target.spec.name}"
        if mode == "side_by_side"
        else "on validation failure: put the original back",
        f"start services in dependency order: {', '.join(services) or 'none'}",
        "gates: database accepts connections, services healthy, functional checks pass",
        "measure data lost from the canary, record the run in the ledger",
    ]
    return {
        "database": target.name,
        "database_name": target.spec.name,
        "cluster": target.cluster_name,
        "mode": mode,
        "jobs": jobs,
        "backup": backup.as_dict(),
        "tag": tag,
        "restore_name": new_name,
        "kept_as": kept,
        "services": services,
        "rto_seconds": tier.rto.total_seconds(),
        "rpo_seconds": plan.data_categories[target.spec.data_category].rpo.total_seconds(),
        "actions": actions,
    }


def database_owner(admin: Endpoint, database: str) -> str | None:
    import psycopg

    with psycopg.connect(admin.conninfo("postgres"), connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_catalog.pg_database WHERE datname = %s",
            (database,),
        ).fetchone()
    return str(row[0]) if row else None


def restore_step(admin: Endpoint, restore_plan: dict[str, Any]) -> str:
    dump = Path(restore_plan["backup"]["path"])
    database, tag, jobs = restore_plan["database_name"], restore_plan["tag"], restore_plan["jobs"]
    # The restored copy gets the live database's owner (or, if the live one is gone or
    # already moved aside by an earlier attempt, the kept copy's).
    owner = database_owner(admin, database) or database_owner(
        admin, restore.aside_name(database, tag)
    )
    if restore_plan["mode"] == "side_by_side":
        name = restore.restore_beside(admin, dump, database, tag, jobs=jobs, owner=owner)
        return f"restored {dump.name} into {name} beside {database}"
    kept = restore.move_aside(admin, database, tag)
    try:
        with_name = restore.restore_name(database, tag)
        restore.restore_beside(admin, dump, database, tag, jobs=jobs, owner=owner)
        restore.swap_in(admin, database, tag)
    except Exception:
        restore.put_back(admin, database, tag)
        raise
    return f"moved {database} aside to {kept}; restored {dump.name} as {with_name} and renamed it to {database}"


def validate_restored(
    admin: Endpoint, restore_plan: dict[str, Any], bindir: Path
) -> dict[str, Any]:
    database = (
        restore_plan["restore_name"]
        if restore_plan["mode"] == "side_by_side"
        else restore_plan["database_name"]
    )
    manifest = read_manifest(Path(restore_plan["backup"]["path"]))
    report = validate_database(
        admin,
        database,
        expected_counts=manifest["row_counts"],
        expected_tables=sorted(manifest["row_counts"]),
        bindir=bindir,
    )
    if not report.ok and restore_plan["mode"] == "in_place":
        restore.put_back(admin, restore_plan["database_name"], restore_plan["tag"])
    return report.as_dict()


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
