"""The layers under the application: databases, caches and queues, storage.

The seed's ``recover_service_dependencies.sh`` brings them back in order (database → cache
→ queue → storage → application). Each function here checks before it acts, so a layer
that is already healthy is left alone, and each action is idempotent.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
from collections.abc import Callable
from pathlib import Path

from tracktion_dr.core.errors import CommandError, ControllerError
from tracktion_dr.core.plan import Cluster, Environment, StorageArea
from tracktion_dr.postgres.control import cluster_control
from tracktion_dr.services.probes import ProbeTarget, postgres_ready, run_probes, storage_writable

log = logging.getLogger(__name__)

LAYERS = ("database", "cache", "queue", "storage", "application")
PG_START_TIMEOUT_SECONDS = 120

ConninfoResolver = Callable[[str, str], str]


def database_probes(
    environment: Environment, conninfo_for: ConninfoResolver
) -> dict[str, dict[str, object]]:
    """``{cluster: {"healthy", "detail"}}`` for each cluster holding a plan database."""
    timeout = environment.probe_timeout.total_seconds()
    targets = {}
    for database in environment.databases.values():
        cluster = environment.clusters[database.cluster]
        targets.setdefault(
            database.cluster,
            ProbeTarget(
                database.cluster,
                "database",
                postgres_ready(conninfo_for(cluster.conn_id, database.name)),
                timeout,
            ),
        )
    return {
        r.name: {"healthy": r.healthy, "detail": r.detail} for r in run_probes(targets.values())
    }


def start_cluster(cluster: Cluster) -> str:
    """Start the cluster the way its host runs it (``pg_ctl start -w``, ``pg_ctlcluster
    <version> <name> start``, ``systemctl start <unit>``: the plan's ``control``) and wait
    until it accepts connections. A running one is left alone."""
    control = cluster_control(cluster)
    status = control.status()
    if status == "running":
        return "already running"
    if status == "no data directory":
        raise ControllerError(
            f"{cluster.data_directory} holds no usable PostgreSQL data directory: this is a "
            "restore (dr_database_restore), not a restart"
        )
    try:
        control.start(wait=True, timeout=PG_START_TIMEOUT_SECONDS)
    except CommandError as exc:
        raise ControllerError(
            f"{control.describe()} could not start {cluster.data_directory}: {exc}"
        ) from None
    return f"started with {control.kind}"


def storage_probes(environment: Environment) -> dict[str, dict[str, object]]:
    timeout = environment.probe_timeout.total_seconds()
    targets = [
        ProbeTarget(name, "storage", storage_writable(area.path, area.must_be_writable), timeout)
        for name, area in environment.storage.items()
    ]
    return {r.name: {"healthy": r.healthy, "detail": r.detail} for r in run_probes(targets)}


def ensure_storage_area(area: StorageArea) -> str:
    """Recreate a missing storage directory with the plan's owner and mode.

    Only a *missing* directory is created: an existing one is never re-owned or re-moded
    here (that would hide what happened; dr_storage_recovery reports and repairs it)."""
    path = Path(area.path)
    if path.is_dir():
        return "present"
    if path.exists():
        raise ControllerError(f"{path} exists but is not a directory: move it aside first")
    path.mkdir(parents=True)
    if area.mode:
        path.chmod(int(area.mode, 8))
    if area.owner:
        user, _, group = area.owner.partition(":")
        os.chown(path, pwd.getpwnam(user).pw_uid, grp.getgrnam(group or user).gr_gid)
    return f"recreated (owner {area.owner or 'unchanged'}, mode {area.mode or 'default'})"
