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

from tracktion_dr.core.errors import ControllerError
from tracktion_dr.core.plan import Cluster, Environment, StorageArea
from tracktion_dr.services.commands import last_lines, run_command
from tracktion_dr.services.probes import ProbeTarget, postgres_ready, run_probes, storage_writable

log = logging.getLogger(__name__)

LAYERS = ("database", "cache", "queue", "storage", "application")
PG_START_TIMEOUT_SECONDS = 120
# pg_ctl's -l file: without one the server inherits our stdout pipe and the call never
# returns. Inside the data directory because that is the one place the OS user can write.
PG_CTL_LOG = "pg_ctl_dr_start.log"

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


def _as_os_user(cluster: Cluster, argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run the server binaries as the cluster's user."""
    if os.geteuid() == 0 and cluster.os_user != "root":
        return ["runuser", "-u", cluster.os_user, "--", *argv]
    return argv


def start_cluster(cluster: Cluster) -> str:
    """``pg_ctl start -w`` on the cluster's data directory (a running one is left alone)."""
    pg_ctl = str(Path(cluster.bin_dir) / "pg_ctl")
    status = run_command(_as_os_user(cluster, [pg_ctl, "status", "-D", cluster.data_directory]), 30)
    if status.returncode == 0:
        return "already running"
    if status.returncode == 4:
        raise ControllerError(
            f"{cluster.data_directory} holds no usable PostgreSQL data directory: this is a "
            "restore (dr_database_restore), not a restart"
        )
    argv = [
        pg_ctl,
        "start",
        "-D",
        cluster.data_directory,
        "-l",
        str(Path(cluster.data_directory) / PG_CTL_LOG),
        "-w",
        "-t",
        str(PG_START_TIMEOUT_SECONDS),
    ]
    result = run_command(_as_os_user(cluster, argv), PG_START_TIMEOUT_SECONDS + 30)
    if result.returncode != 0:
        raise ControllerError(
            f"pg_ctl could not start {cluster.data_directory} (exit {result.returncode}): "
            f"{last_lines(result.stderr or result.stdout)}"
        )
    return "started with pg_ctl"


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
