"""
### DR application recovery

Brings failed Tracktion services back, **restarting only what is broken**, in the plan's
dependency order, and proves each one works again. Merges the seed's
`application_recovery.sh` (containers / full_rebuild / partial) and
`recover_analysis_service.sh` (quick / full / rebuild).

**Flow**: `guard` (inputs, scope, nothing touched; logs the plan of actions) → `probe`
(health + functional check of every service in scope before acting, and what the strategy
will do to each) → per service, in dependency order:
`recover_<service>` (acts per the strategy, after the gates of the services it depends on)
→ `gate_<service>` (RTO gate: health URL 2xx **and** the functional check, e.g.
analysis-service `POST /analyze` with a real sample file answers `status: success`, within
what is left of the service's tier RTO) → `report` (healthy/total, honestly) → `record`
(ledger) → `notify_outcome` + `publish` (report) → `verdict`.

**Params**
- `strategy`: `restart_failed` (default: only services that fail their probe are
  restarted; healthy ones keep their processes), `restart_all`, `rebuild` (compose
  `build --no-cache` + recreate; a restart where there is nothing to rebuild).
- `services`: `all` or a list of service names from the plan.
- common params: `incident_id`, `incident_started_at`, `environment`, `dry_run` (the
  guard prints every action and `probe` what each service would get; touches nothing),
  `notify` (start and outcome messages).

A partial success (some services still down) is a **failed** run, and `report` lists what
is still down.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Param, dag

from tracktion_dr.airflow.access import ACCESS
from tracktion_dr.airflow.dag_kit import RtoGate, open_incident, scenario_tail
from tracktion_dr.airflow.gate_triggers import named_check
from tracktion_dr.airflow.steps import guard, on_host, print_plan_of_actions, step
from tracktion_dr.airflow.support import DEFAULT_ARGS, common_params
from tracktion_dr.core.plan import load_plan
from tracktion_dr.notify.runs import notify_started
from tracktion_dr.scenarios import application
from tracktion_dr.scenarios.application import task_name

PLAN = load_plan()
DAG_ID = "dr_application_recovery"
SERVICE_RTO = application.service_rto_seconds(PLAN)  # parse time, no I/O
SERVICE_DEPENDENCIES = application.service_dependencies(PLAN)
# Probing a service whose functional check uploads a sample file reads the application
# host's files: those steps and gates run there (the compose plan's analysis-service).
PROBES_HOST = application.probes_host(PLAN)


def record_fields(run: dict, context) -> dict:
    summary = context["ti"].xcom_pull(task_ids="report", key="summary")
    return application.record_fields(run, summary)


@dag(
    dag_id=DAG_ID,
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,  # one destructive run per target at a time
    tags=["dr", "scenario", "services"],
    default_args=DEFAULT_ARGS,
    params={
        **common_params(PLAN, environment_default=None),
        "strategy": Param(
            "restart_failed",
            type="string",
            enum=["restart_failed", "restart_all", "rebuild"],
            title="Strategy",
            description="restart_failed: only services failing their probe; restart_all: "
            "every service in scope; rebuild: rebuild images without cache, then recreate.",
            section="Recovery",
        ),
        "services": Param(
            ["all"],
            type="array",
            items={"type": "string"},
            title="Services",
            description="'all', or the plan's service names to recover.",
            section="Recovery",
        ),
    },
    doc_md=__doc__,
)
def dr_application_recovery():
    @guard()
    def check_inputs(**context) -> dict:
        run = application.check_inputs(PLAN, open_incident(context, PLAN), context["params"])
        print_plan_of_actions(run, application.plan_of_actions(PLAN, run))
        notify_started(PLAN, run, DAG_ID, application.started_summary(run))
        return run

    @step("check", host=PROBES_HOST)
    def probe(run: dict, **context) -> dict:
        return application.probe(PLAN, run)

    def recover_step(service: str):
        @step(
            "destructive",
            task_id=f"recover_{task_name(service)}",
            host=application.service_host(PLAN, service),
        )
        def recover(run: dict, before: dict, **context) -> dict:
            return application.recover_service(PLAN, run, service, before, ACCESS)

        return recover

    @step("check", after_all=True, host=PROBES_HOST)
    def report(run: dict, **context) -> dict:
        summary = application.summary_now(PLAN, run)
        context["ti"].xcom_push(key="summary", value=summary)  # for the record, even failed
        return {"detail": application.judge_health(run, summary), **summary}

    run = check_inputs()
    before = probe(run)
    recovers, gates = {}, {}
    for service, rto_seconds in SERVICE_RTO.items():
        recovers[service] = recover_step(service)(run, before)
        gates[service] = RtoGate(
            task_id=f"gate_{task_name(service)}",
            check=named_check("application_service_back", service=service),
            incident=run,
            plan=PLAN,
            rto_seconds=rto_seconds,
            **on_host(application.service_host(PLAN, service)),
        )
        recovers[service] >> gates[service]
    for service, dependencies in SERVICE_DEPENDENCIES.items():
        [gates[dependency] for dependency in sorted(dependencies)] >> recovers[service]
    reported = report()
    list(gates.values()) >> reported
    scenario_tail(PLAN, run, [reported], record_fields=record_fields)


dr_application_recovery()
