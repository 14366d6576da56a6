"""Replica re-seed, as plain Python: a standby that stopped streaming (lagging past the
archive, diverged, or gone) is rebuilt from the primary - the redundancy half of Database
Recovery, on its own.

The work is ``postgres.replica.reseed_replica`` (resumable: it looks first, keeps the old
standby moved aside, never deletes it); this module checks the inputs before anything is
touched and says what the run will do.
"""

from __future__ import annotations

from typing import Any

from tracktion_dr.backups.catalog import local_path
from tracktion_dr.core.errors import InvalidInput
from tracktion_dr.core.plan import Plan
from tracktion_dr.postgres.restore import incident_tag


def clusters_with_replicas(plan: Plan) -> list[str]:
    names = {
        name
        for environment in plan.environments.values()
        for name, cluster in environment.clusters.items()
        if cluster.replica_conn_id
    }
    return sorted(names)


def check_inputs(plan: Plan, incident: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    environment = plan.environment(incident["environment"])
    name = str(params.get("cluster") or "")
    if name not in environment.clusters:
        raise InvalidInput(
            "cluster",
            f"{name or 'nothing'!r} is not a cluster of {incident['environment']}",
            hint=f"one of {sorted(environment.clusters)}",
        )
    cluster = environment.clusters[name]
    missing = [
        field
        for field in ("replica_conn_id", "replica_data_directory", "replication_conn_id")
        if not getattr(cluster, field)
    ]
    if missing:
        raise InvalidInput(
            "cluster",
            f"the plan names no complete replica for {name!r} (missing {', '.join(missing)})",
            hint="add them to the cluster in the plan, or rebuild the standby by hand",
        )
    return {
        **incident,
        "cluster": name,
        "replica_data_directory": cluster.replica_data_directory,
        "wal_archive": str(local_path(environment.backups.wal_archive)),
        "tag": incident_tag(incident["incident_id"]),
        "rto_seconds": max(
            plan.tiers[db.tier].rto.total_seconds()
            for db in environment.databases.values()
            if db.cluster == name
        )
        if any(db.cluster == name for db in environment.databases.values())
        else min(t.rto.total_seconds() for t in plan.tiers.values()),
    }


def plan_of_actions(run: dict[str, Any]) -> list[str]:
    data = run["replica_data_directory"]
    return [
        f"check whether the standby of {run['cluster']} streams from the primary on its "
        "timeline; if it does, stop here (nothing to do)",
        f"salvage the standby's WAL the archive lacks into {run['wal_archive']}",
        f"stop the standby and move {data} aside to {data}.pre_{run['tag']} (kept)",
        "pg_basebackup -R from the primary into a staging directory, then rename it into place",
        "start it as a hot standby and wait until it streams",
    ]
