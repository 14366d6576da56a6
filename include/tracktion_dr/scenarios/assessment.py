"""The initial assessment: which parts of the platform are up, measured all at once.

This replaces the seed's ``initial_assessment.sh``: the same components (every service's
health URL, every database, storage, external dependencies) but probed concurrently with a
timeout each, reported as one structured result and one readable table.

Storage is the one local check (a directory present and writable): under a plan that puts
the storage on a host of its own, that host's worker probes it (:func:`probe_storage`) while
the default worker probes the rest over the network, and :func:`assess` takes its results
(``storage_from``); an answer that does not come in time is reported as not assessed, DOWN,
never as healthy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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
    environment: Environment, conninfo_for: ConninfoResolver, *, storage: bool = True
) -> list[ProbeTarget]:
    """Every component's probe (``storage=False``: all but the storage areas)."""
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
    if storage:
        targets += storage_targets(environment)
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


def storage_targets(environment: Environment) -> list[ProbeTarget]:
    timeout = environment.probe_timeout.total_seconds()
    return [
        ProbeTarget(
            name=f"storage:{name}",
            kind="storage",
            check=storage_writable(area.path, area.must_be_writable),
            timeout=timeout,
        )
        for name, area in environment.storage.items()
    ]


def probe_storage(environment: Environment) -> list[dict[str, object]]:
    """The storage areas' probes, run where they are (the storage host's part)."""
    return [r.as_dict() for r in run_probes(storage_targets(environment))]


def storage_not_assessed(environment: Environment, why: str) -> list[ProbeResult]:
    """Each storage area DOWN with why it was not looked at: unknown is not healthy."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return [
        ProbeResult(f"storage:{name}", "storage", "DOWN", f"not assessed: {why}", 0.0, now)
        for name in environment.storage
    ]


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


def assess(
    environment: Environment,
    conninfo_for: ConninfoResolver,
    *,
    storage_from: Callable[[], list[dict[str, Any]] | None] | None = None,
) -> Assessment:
    """Probe every component at once. ``storage_from``: the storage is probed elsewhere;
    called once the other probes are done, it returns that host's results (None: they did
    not come, and the storage is reported not assessed)."""
    if storage_from is None:
        return Assessment(run_probes(assessment_targets(environment, conninfo_for)))
    results = run_probes(assessment_targets(environment, conninfo_for, storage=False))
    found = storage_from()
    storage = (
        [ProbeResult(**row) for row in found]
        if found is not None
        else storage_not_assessed(
            environment, "the storage host's worker did not report in time (is the host up?)"
        )
    )
    # the usual order: services and databases, storage, external dependencies
    external = [r for r in results if r.kind == "external"]
    return Assessment([*(r for r in results if r.kind != "external"), *storage, *external])
