"""
### DR service dependencies recovery

Brings the platform back **layer by layer, in the seed's order**: database → cache →
message queue → storage → application services. Each layer's gate waits for that layer to
be healthy before the next layer is touched, and anything already healthy is skipped
(never restarted). Replaces the seed's `recover_service_dependencies.sh`.

| layer | check | action when unhealthy |
|---|---|---|
| database | every plan database's cluster accepts a connection and a query | start it the way its host runs it (the plan's `control`: `pg_ctl start -w`, `pg_ctlcluster <version> <name> start` as its OS user, or `systemctl start <unit>`) and wait until it accepts connections |
| cache, queue | health URL of the plan's services with `layer: cache` / `queue` | restart through their controller |
| storage | every storage area present (and writable where required) | recreate a **missing** directory with the plan's owner and mode |
| application | health URL + functional check of every application service | restart through its controller, in dependency order |

A database whose data directory is gone is not restarted: the run stops and says it needs
a restore (`dr_database_restore`).

**Params**: the common params (`incident_id`, `incident_started_at`, `environment`,
`dry_run`: the guard looks at every layer and prints what each step would do, touches
nothing; `notify`: start and outcome messages).
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import dag

from tracktion_dr.airflow.access import ACCESS
from tracktion_dr.airflow.dag_kit import RtoGate, open_incident, scenario_tail
from tracktion_dr.airflow.gate_triggers import named_check
from tracktion_dr.airflow.steps import guard, on_host, print_plan_of_actions, step
from tracktion_dr.airflow.support import DEFAULT_ARGS, common_params
from tracktion_dr.core.plan import load_plan
from tracktion_dr.notify.runs import notify_started
from tracktion_dr.scenarios import dependencies

PLAN = load_plan()
DAG_ID = "dr_service_dependencies_recovery"
LAYERS = dependencies.LAYERS
RTO_SECONDS = dependencies.rto_seconds(PLAN)


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
    # A dry run looks at every layer from the application host: the services' functional
    # checks read their samples there, and the storage areas are the ones its services use.
    @guard(host=dependencies.gate_host(PLAN, "application"))
    def check_inputs(**context) -> dict:
        run = open_incident(context, PLAN)
        health = dependencies.health_for_the_plan(PLAN, run, ACCESS)
        print_plan_of_actions(run, dependencies.plan_of_actions(run, health))
        notify_started(PLAN, run, DAG_ID, "recovering " + " -> ".join(LAYERS))
        return run

    def recover_step(layer: str):
        @step("destructive", task_id=f"recover_{layer}", host=dependencies.step_host(PLAN, layer))
        def recover(run: dict, **context) -> dict:
            return dependencies.recover_layer(PLAN, run, layer, ACCESS)

        return recover

    run = check_inputs()
    previous = run
    for layer in LAYERS:
        recovered = recover_step(layer)(run)
        previous >> recovered
        previous = RtoGate(
            task_id=f"gate_{layer}",
            check=named_check("dependency_layer_healthy", layer=layer),
            incident=run,
            plan=PLAN,
            rto_seconds=RTO_SECONDS,
            **on_host(dependencies.gate_host(PLAN, layer)),
        )
        recovered >> previous
    scenario_tail(
        PLAN,
        run,
        [previous],
        record_fields=lambda run, context: {"rto_target_seconds": RTO_SECONDS},
    )


dr_service_dependencies_recovery()
