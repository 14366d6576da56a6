"""
### DR service dependencies recovery

Brings the platform back **layer by layer, in the seed's order**: database → cache →
message queue → storage → application services. Each layer's gate waits for that layer to
be healthy before the next layer is touched, and anything already healthy is skipped
(never restarted). Replaces the seed's `recover_service_dependencies.sh`.

| layer | check | action when unhealthy |
|---|---|---|
| database | every plan database's cluster accepts a connection and a query | `pg_ctl start -w` on the cluster's data directory (as its OS user) |
| cache, queue | health URL of the plan's services with `layer: cache` / `queue` | restart through their controller |
| storage | every storage area present (and writable where required) | recreate a **missing** directory with the plan's owner and mode |
| application | health URL + functional check of every application service | restart through its controller, in dependency order |

A database whose data directory is gone is not restarted: the run stops and says it needs
a restore (`dr_database_restore`).

**Params**: the common params (`incident_id`, `incident_started_at`, `environment`,
`dry_run`: print every action, touch nothing; `notify`: start and outcome messages).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from airflow.sdk import dag, task

from tracktion_dr.dag_kit import RtoGate, finish_run
from tracktion_dr.dag_support import DEFAULT_ARGS, common_params
from tracktion_dr.plan import load_plan

log = logging.getLogger(__name__)

PLAN = load_plan()
DAG_ID = "dr_service_dependencies_recovery"
LAYERS = ("database", "cache", "queue", "storage", "application")
# The platform is down while any layer is: the strictest tier of what the plan recovers.
RTO_SECONDS = min(
    PLAN.tiers[item.tier].rto.total_seconds()
    for env in PLAN.environments.values()
    for item in [*env.databases.values(), *env.services.values()]
)


def layer_health(layer: str, incident: dict) -> dict[str, dict]:
    """{component: {"healthy", "detail"}} for one layer (empty when the plan has none)."""
    from tracktion_dr.dag_support import conninfo
    from tracktion_dr.plan import load_plan as current_plan
    from tracktion_dr.services.dependencies import database_probes, storage_probes
    from tracktion_dr.services.recovery import probe_services, services_in_layer

    environment = current_plan().environment(incident["environment"])
    if layer == "database":
        return database_probes(environment, conninfo)
    if layer == "storage":
        return storage_probes(environment)
    return probe_services(environment, services_in_layer(environment, layer))


def gate_check_for(layer: str):
    def check(incident: dict) -> tuple[bool, str]:
        health = layer_health(layer, incident)
        if not health:
            return True, f"no {layer} in the plan"
        down = {name: r["detail"] for name, r in health.items() if not r["healthy"]}
        if down:
            return False, "; ".join(f"{name}: {detail}" for name, detail in down.items())
        return True, f"{len(health)} healthy: {', '.join(health)}"

    return check


def recover_layer(layer: str, incident: dict) -> dict[str, str]:
    from tracktion_dr.dag_support import controller
    from tracktion_dr.services.dependencies import ensure_storage_area, start_cluster
    from tracktion_dr.services.recovery import restart_unhealthy, services_in_layer

    environment = PLAN.environment(incident["environment"])
    dry_run = incident["dry_run"]
    actions: dict[str, str] = {}
    if layer in ("database", "storage"):
        for name, result in layer_health(layer, incident).items():
            if result["healthy"]:
                actions[name] = "healthy, left alone"
            elif dry_run:
                actions[name] = f"dry run: would {'start' if layer == 'database' else 'recreate'}"
            elif layer == "database":
                actions[name] = start_cluster(environment.clusters[name])
            else:
                actions[name] = ensure_storage_area(environment.storage[name])
        return actions
    return restart_unhealthy(
        environment, services_in_layer(environment, layer), controller, dry_run=dry_run
    )


@dag(
    dag_id=DAG_ID,
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "scenario", "services"],
    default_args=DEFAULT_ARGS,
    params=common_params(PLAN, environment_default=None),
    doc_md=__doc__,
)
def dr_service_dependencies_recovery():
    @task(retries=0)
    def guard(**context) -> dict:
        from tracktion_dr.dag_kit import open_incident
        from tracktion_dr.notify.runs import notify_started

        incident = open_incident(context, PLAN)
        notify_started(PLAN, incident, DAG_ID, "recovering " + " -> ".join(LAYERS))
        return incident

    def make_recover(layer: str):
        @task(task_id=f"recover_{layer}")
        def recover(incident: dict) -> dict:
            from tracktion_dr.dag_kit import now_iso, step_event

            started = now_iso()
            actions = recover_layer(layer, incident)
            for name, action in actions.items():
                log.info("%s %-22s %s", layer, name, action)
            detail = "; ".join(f"{n}: {a}" for n, a in actions.items()) or f"no {layer} in the plan"
            status = "skipped" if incident["dry_run"] else "succeeded"
            return {
                "event": step_event(f"recover_{layer}", started, status, detail),
                "actions": actions,
            }

        return recover

    incident = guard()
    previous = None
    gates = []
    for layer in LAYERS:
        recovered = make_recover(layer)(incident)
        if previous is not None:
            previous >> recovered
        gate = RtoGate(
            task_id=f"gate_{layer}",
            check=gate_check_for(layer),
            incident=incident,
            plan=PLAN,
            rto_seconds=RTO_SECONDS,
            poke_interval=2,
        )
        recovered >> gate
        previous = gate
        gates.append(gate)

    @task(trigger_rule="all_done", retries=0)
    def record(incident: dict, **context) -> dict:
        from tracktion_dr.dag_kit import record_timeline

        return record_timeline(context, incident=incident, rto_target_seconds=RTO_SECONDS)

    recorded = record(incident)
    gates[-1] >> recorded
    finish_run(PLAN, incident, recorded)


dr_service_dependencies_recovery()
