"""The initial assessment: which parts of the platform are up, measured all at once.

This replaces the seed's ``initial_assessment.sh``: the same components (every service's
health URL, every database, storage, external dependencies) but probed concurrently with a
timeout each, reported as one structured result and one readable table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tracktion_dr.core.plan import Environment
from tracktion_dr.services.probes import (
    ProbeResult,
    ProbeTarget,
    http_health,
    overall_status,
    postgres_ready,
    render_table,
    run_probes,
    storage_writable,
)

# (connection id, database name) -> libpq conninfo; supplied by the Airflow layer so this
# module never touches Airflow or sees where secrets come from.
ConninfoResolver = Callable[[str, str], str]


def assessment_targets(
    environment: Environment, conninfo_for: ConninfoResolver
) -> list[ProbeTarget]:
    timeout = environment.probe_timeout.total_seconds()
    targets = [
        ProbeTarget(
            name=name,
            kind="service",
            check=http_health(service.health_url),
            timeout=service.probe_timeout.total_seconds(),
        )
        for name, service in environment.services.items()
    ]
    for name, database in environment.databases.items():
        cluster = environment.clusters[database.cluster]
        targets.append(
            ProbeTarget(
                name=f"database:{name}",
                kind="database",
                check=postgres_ready(conninfo_for(cluster.conn_id, database.name)),
                timeout=timeout,
            )
        )
        if cluster.replica_conn_id:
            targets.append(
                ProbeTarget(
                    name=f"replica:{database.cluster}",
                    kind="database",
                    check=postgres_ready(conninfo_for(cluster.replica_conn_id, database.name)),
                    timeout=timeout,
                    # Losing the standby removes the failover option but serves no one less.
                    status_when_failing="DEGRADED",
                )
            )
    for name, area in environment.storage.items():
        targets.append(
            ProbeTarget(
                name=f"storage:{name}",
                kind="storage",
                check=storage_writable(area.path, area.must_be_writable),
                timeout=timeout,
            )
        )
    for name, dependency in environment.external_dependencies.items():
        targets.append(
            ProbeTarget(
                name=f"external:{name}",
                kind="external",
                check=http_health(dependency.url),
                timeout=dependency.timeout.total_seconds(),
                status_when_failing="DOWN"
                if dependency.severity_when_down == "down"
                else "DEGRADED",
            )
        )
    return targets


@dataclass(frozen=True)
class Assessment:
    results: list[ProbeResult]

    @property
    def status(self) -> str:
        return overall_status(self.results)

    @property
    def down(self) -> list[str]:
        return [r.name for r in self.results if r.status == "DOWN"]

    @property
    def degraded(self) -> list[str]:
        return [r.name for r in self.results if r.status == "DEGRADED"]

    def report(self, incident_id: str, environment: str) -> str:
        healthy = sum(r.healthy for r in self.results)
        return "\n".join(
            [
                "=== DISASTER RECOVERY - INITIAL ASSESSMENT ===",
                f"Incident: {incident_id}   Environment: {environment}",
                "",
                render_table(self.results),
                "",
                f"Overall: {self.status} ({healthy}/{len(self.results)} components operational)",
                "=== ASSESSMENT COMPLETE ===",
            ]
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "status": self.status,
            "down": self.down,
            "degraded": self.degraded,
            "results": [r.as_dict() for r in self.results],
        }


def assess(environment: Environment, conninfo_for: ConninfoResolver) -> Assessment:
    return Assessment(run_probes(assessment_targets(environment, conninfo_for)))
