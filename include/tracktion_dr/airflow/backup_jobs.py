"""What each ``dr_backup_*`` DAG task does, as plain functions of the plan.

The DAG files only wire these together. Connections are resolved here, at run time, through
``airflow.sdk.Connection`` (never at parse time, never logged). Every job returns a small
JSON-able summary (it becomes the task's XCom: no passwords in it) and raises
``BackupJobFailed`` with a sentence an operator understands - after notifying, when asked.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tracktion_dr.airflow.notifier import mark_notified
from tracktion_dr.airflow.support import endpoint
from tracktion_dr.backups import offsite, retention, snapshots, watch
from tracktion_dr.backups.catalog import (
    BackupKind,
    Catalog,
    Status,
    base_backup_check,
    local_path,
)
from tracktion_dr.core.errors import StepFailed, ValidationFailed
from tracktion_dr.core.plan import Environment, Plan
from tracktion_dr.notify.messages import DrMessage
from tracktion_dr.notify.policy import RunEvent, channels_for
from tracktion_dr.postgres import basebackups, dumps
from tracktion_dr.postgres.commands import CommandError

log = logging.getLogger(__name__)


class BackupJobFailed(StepFailed):
    """A backup, check or watch failed; the message says what and why."""


def catalog_for(environment: Environment) -> Catalog:
    cluster = next(iter(environment.clusters.values()), None)
    if cluster is None:
        return Catalog(environment.backups)
    return Catalog(environment.backups, bindir=Path(cluster.bin_dir), os_user=cluster.os_user)


def alert(plan: Plan, title: str, text: str, *, fields: dict[str, str], notify: bool) -> dict:
    """Page and post about a backup failure (best effort); returns the delivery report."""
    if not notify:
        log.warning("notify is off, not sent: %s - %s", title, text)
        return {"sent": [], "failed": {}}
    from tracktion_dr.notify.delivery import deliver

    message = DrMessage(
        title=title, text=text, severity="error", fields=fields, dedup_key=f"dr-backup:{title}"
    )
    return deliver(plan, message, channels=channels_for(plan, RunEvent.BACKUP_FAILED)).as_dict()


def fail(plan: Plan, title: str, problems: list[str], *, env_name: str, notify: bool) -> None:
    text = "\n".join(problems)
    report = alert(plan, title, text, fields={"environment": env_name}, notify=notify)
    failure = BackupJobFailed(
        f"{title}: {'; '.join(problems)} (notified: {report['sent'] or 'no'})"
    )
    if report["sent"]:
        # Reported (with its problems) on at least one channel: the task failure callback
        # must not post it a second time. Not sent (notify off, every channel down): the
        # callback is the one report left, so a backup never fails silently.
        mark_notified(failure)
    raise failure


# --------------------------------------------------------------------------- database


def logical_dumps(plan: Plan, env_name: str, *, notify: bool) -> list[dict[str, Any]]:
    """``pg_dump -Fc`` of every database, each checked right after (sha256 against the
    manifest + ``pg_restore --list`` against the manifest's tables)."""
    environment = plan.environment(env_name)
    catalog = catalog_for(environment)
    destination = local_path(environment.backups.logical)
    results, problems = [], []
    for key, database in environment.databases.items():
        cluster = environment.clusters[database.cluster]
        try:
            path = dumps.take_logical_dump(
                endpoint(cluster.conn_id), database.name, destination, bindir=Path(cluster.bin_dir)
            )
        except (CommandError, OSError) as exc:
            problems.append(f"{key}: dump failed: {exc}")
            continue
        (entry,) = [e for e in catalog.dumps(database.name) if e.path == path]
        checked = catalog.verify(entry)
        results.append(checked.as_dict())
        if checked.status is not Status.VERIFIED:
            problems.append(f"{entry.id}: {checked.reason}")
    if problems:
        fail(plan, "Logical dump failed", problems, env_name=env_name, notify=notify)
    return results


def base_backups(plan: Plan, env_name: str, *, notify: bool) -> list[dict[str, Any]]:
    """A verified base backup of every cluster that names a replication connection,
    compressed as the plan's ``backup_schedule.base_backup_compression`` says."""
    environment = plan.environment(env_name)
    catalog = catalog_for(environment)
    results, problems = [], []
    for name, cluster in environment.clusters.items():
        if not cluster.replication_conn_id:
            log.warning("cluster %s has no replication_conn_id: no base backup", name)
            continue
        try:
            path = basebackups.take_base_backup(
                endpoint(cluster.replication_conn_id),
                local_path(environment.backups.base),
                label_prefix=f"dr-{env_name}-{name}",
                bindir=Path(cluster.bin_dir),
                os_user=cluster.os_user,
                compression=plan.backup_schedule.base_backup_compression,
            )
        except (CommandError, ValidationFailed, OSError) as exc:
            problems.append(f"{name}: base backup failed: {exc}")
            continue
        (entry,) = [e for e in catalog.base_backups() if e.path == path]
        results.append(entry.as_dict())
    if problems:
        fail(plan, "Base backup failed", problems, env_name=env_name, notify=notify)
    if not results:
        fail(
            plan,
            "Base backup failed",
            ["no cluster in the plan names a replication_conn_id"],
            env_name=env_name,
            notify=notify,
        )
    return results


def wal_watch(plan: Plan, env_name: str, *, notify: bool) -> dict[str, Any]:
    environment = plan.environment(env_name)
    result = watch.watch_wal(catalog_for(environment), watch.transactional_rpo(plan, environment))
    log.info("WAL archive: %s", result.as_dict())
    if not result.ok:
        fail(plan, "WAL archive watch failed", result.problems, env_name=env_name, notify=notify)
    return result.as_dict()


# --------------------------------------------------------------------------- files


def config_snapshot(plan: Plan, env_name: str, *, notify: bool) -> dict[str, Any]:
    environment = plan.environment(env_name)
    try:
        path = snapshots.config_snapshot(
            environment.config_paths,
            local_path(environment.backups.configuration),
            environment=snapshots.allowed_environment(
                environment.config_env_file, environment.config_env_prefixes
            ),
        )
    except (snapshots.SnapshotError, OSError) as exc:
        fail(plan, "Configuration snapshot failed", [str(exc)], env_name=env_name, notify=notify)
        raise  # unreachable: fail() raises
    return _verified_snapshot(environment, BackupKind.CONFIG_SNAPSHOT, path, plan, env_name, notify)


def storage_snapshots(
    plan: Plan, env_name: str, level: snapshots.Level, *, notify: bool
) -> list[dict[str, Any]]:
    """A full or incremental snapshot of every storage area. An incremental with no full
    to build on is taken as a full (and says so) rather than skipped."""
    environment = plan.environment(env_name)
    root = local_path(environment.backups.storage)
    results, problems = [], []
    for area, spec in environment.storage.items():
        effective = level
        if level == "incremental" and snapshots.newest_snapshot(root / area, area) is None:
            log.warning("%s: no earlier snapshot, taking a full one instead", area)
            effective = "full"
        try:
            path = snapshots.storage_snapshot(area, Path(spec.path), root, effective)
            results.append(
                _verified_snapshot(
                    environment, BackupKind.STORAGE_SNAPSHOT, path, plan, env_name, notify
                )
            )
        except (snapshots.SnapshotError, OSError) as exc:
            problems.append(f"{area}: {exc}")
    if problems:
        fail(plan, f"Storage {level} snapshot failed", problems, env_name=env_name, notify=notify)
    return results


def storage_sync(plan: Plan, env_name: str, *, notify: bool) -> list[dict[str, Any]]:
    environment = plan.environment(env_name)
    root = local_path(environment.backups.storage)
    results, problems = [], []
    for area, spec in environment.storage.items():
        try:
            results.append(snapshots.sync_area(area, Path(spec.path), root).as_dict())
        except (snapshots.SnapshotError, OSError) as exc:
            problems.append(f"{area}: {exc}")
    if problems:
        fail(plan, "Storage sync failed", problems, env_name=env_name, notify=notify)
    return results


def _verified_snapshot(
    environment: Environment, kind: BackupKind, path: Path, plan: Plan, env_name: str, notify: bool
) -> dict[str, Any]:
    catalog = catalog_for(environment)
    (entry,) = [e for e in catalog.snapshots(kind) if e.path == path]
    checked = catalog.verify(entry)
    if checked.status is not Status.VERIFIED:
        fail(
            plan,
            f"{kind} failed",
            [f"{entry.id}: {checked.reason}"],
            env_name=env_name,
            notify=notify,
        )
    return checked.as_dict()


# --------------------------------------------------------------------------- verify


def verify_all(plan: Plan, env_name: str) -> list[dict[str, Any]]:
    """Check every dump (sha256 + ``pg_restore --list``), base backup (``pg_verifybackup``;
    a compressed one: sha256 of its archives, then extracted into a scratch directory that
    is removed afterwards and ``pg_verifybackup``-ed there) and snapshot (sha256) now;
    outcomes recorded beside each."""
    environment = plan.environment(env_name)
    catalog = catalog_for(environment)
    checks = []
    entries = (
        catalog.dumps()
        + catalog.base_backups()
        + catalog.snapshots(BackupKind.CONFIG_SNAPSHOT)
        + catalog.snapshots(BackupKind.STORAGE_SNAPSHOT)
    )
    for entry in entries:
        checks.append(_check_row(catalog.verify(entry, full=True), _check_name(entry)))
    return checks


def _check_name(entry: Any) -> str:
    if entry.kind is BackupKind.BASE_BACKUP:
        return base_backup_check(entry.format not in (None, "plain"), full=True)
    return {BackupKind.LOGICAL_DUMP: "sha256 + pg_restore --list"}.get(entry.kind, "sha256")


def _check_row(entry: Any, check: str) -> dict[str, Any]:
    return {
        "backup": entry.id,
        "kind": str(entry.kind),
        "status": str(entry.status),
        "check": check,
        "reason": entry.reason,
        "path": str(entry.path),
    }


def test_restore_newest_dumps(plan: Plan, env_name: str) -> list[dict[str, Any]]:
    """The part others skip: restore the newest good dump of each database into a scratch
    database on its cluster, compare row counts with the manifest, drop the scratch."""
    environment = plan.environment(env_name)
    catalog = catalog_for(environment)
    checks = []
    for database in environment.databases.values():
        cluster = environment.clusters[database.cluster]
        candidates = [e for e in catalog.dumps(database.name) if e.status is not Status.FAILED]
        if not candidates:
            checks.append(
                {
                    "backup": f"{database.name} (none)",
                    "kind": "logical_dump",
                    "status": "failed",
                    "check": "test restore",
                    "reason": "no dump that is not already failed",
                }
            )
            continue
        checked = catalog.verify(candidates[0], restore_into=endpoint(cluster.conn_id, "postgres"))
        checks.append(_check_row(checked, "sha256 + pg_restore --list + test restore"))
    return checks


# --------------------------------------------------------------------------- offsite


def s3_hook(conn_id: str, plan: Plan) -> Any:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    mib = 1024 * 1024
    return S3Hook(
        aws_conn_id=conn_id,
        transfer_config_args={
            "multipart_threshold": plan.backup_schedule.multipart_threshold_mb * mib,
            "multipart_chunksize": plan.backup_schedule.multipart_chunk_mb * mib,
        },
    )


def offsite_copy(plan: Plan, env_name: str, *, dry_run: bool, notify: bool) -> dict[str, Any]:
    environment = plan.environment(env_name)
    backups = environment.backups
    if not backups.offsite:
        fail(
            plan,
            "Offsite copy failed",
            ["the plan names no backups.offsite location"],
            env_name=env_name,
            notify=notify,
        )
    assert backups.offsite
    hook = s3_hook(backups.offsite_conn_id, plan)
    client = hook.get_conn()
    try:
        result = offsite.copy_newest_backups(
            catalog_for(environment),
            client,
            backups.offsite,
            transfer_config=hook.transfer_config,
            dry_run=dry_run,
        )
        if backups.offsite_cross_region and not dry_run:
            target = s3_hook(backups.offsite_cross_region_conn_id or backups.offsite_conn_id, plan)
            copies = offsite.copy_cross_region(
                client,
                target.get_conn(),
                backups.offsite,
                backups.offsite_cross_region,
                [u["key"] for u in result["uploaded"]],
                transfer_config=target.transfer_config,
            )
            result["cross_region"] = [c.as_dict() for c in copies]
    except Exception as exc:  # any S3 or checksum problem: alert with the reason
        fail(
            plan,
            "Offsite copy failed",
            [f"{type(exc).__name__}: {exc}"],
            env_name=env_name,
            notify=notify,
        )
        raise
    return result


# --------------------------------------------------------------------------- retention


def apply_retention(plan: Plan, env_name: str, *, dry_run: bool) -> dict[str, Any]:
    environment = plan.environment(env_name)
    report = retention.apply_retention(
        catalog_for(environment),
        plan.backup_schedule.keep,
        expired_location=environment.backups.expired,
        dry_run=dry_run,
    )
    log.info("retention: %s", report.summary())
    for note in report.notes:
        log.warning("retention: %s", note)
    return {"summary": report.summary(), **report.as_dict()}


# --------------------------------------------------------------------------- RPO


def rpo_watch(plan: Plan, env_name: str, *, notify: bool) -> list[dict[str, Any]]:
    environment = plan.environment(env_name)
    statuses = watch.rpo_statuses(plan, environment, catalog_for(environment))
    for status in statuses:
        log.info("%s", status.sentence())
    breaches = [s.sentence() for s in statuses if not s.ok]
    if breaches:
        fail(plan, "RPO breached", breaches, env_name=env_name, notify=notify)
    return [s.as_dict() for s in statuses]
