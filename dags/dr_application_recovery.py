"""
### DR application recovery

Brings failed Tracktion services back, **restarting only what is broken**, in the plan's
dependency order, and proves each one works again. Merges the seed's
`application_recovery.sh` (containers / full_rebuild / partial) and
`recover_analysis_service.sh` (quick / full / rebuild).

**Flow**: `guard` (inputs, scope, nothing touched) → `probe` (health + functional check of
every service in scope, before acting) → per service, in dependency order:
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
- common params: `incident_id`, `incident_started_at`, `environment`, `dry_run` (prints
  every action, touches nothing), `notify` (start and outcome messages).

A partial success (some services still down) is a **failed** run, and `report` lists what
is still down.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from airflow.sdk import Param, dag, task

from tracktion_dr.dag_kit import RtoGate, finish_run
from tracktion_dr.dag_support import DEFAULT_ARGS, common_params
from tracktion_dr.plan import load_plan

log = logging.getLogger(__name__)

PLAN = load_plan()
DAG_ID = "dr_application_recovery"
# Every service any environment of the plan knows, with its tier's RTO (parse time, no I/O).
SERVICE_RTO: dict[str, float] = {}
for _env in PLAN.environments.values():
    for _name, _service in _env.services.items():
        SERVICE_RTO.setdefault(_name, PLAN.tiers[_service.tier].rto.total_seconds())
SERVICE_DEPENDENCIES: dict[str, set[str]] = {
    name: {
        dependency
        for env in PLAN.environments.values()
        if name in env.services
        for dependency in env.services[name].depends_on
        if dependency in SERVICE_RTO
    }
    for name in SERVICE_RTO
}


def task_name(service: str) -> str:
    return service.replace("-", "_")


def gate_check_for(service: str):
    def check(incident: dict) -> tuple[bool, str]:
        from tracktion_dr.plan import load_plan as current_plan
        from tracktion_dr.services.recovery import probe_services

        if service not in incident["services"]:
            return True, "not in scope"
        environment = current_plan().environment(incident["environment"])
        result = probe_services(environment, [service])[service]
        return result["healthy"], result["detail"]

    return check


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
    @task(retries=0)
    def guard(**context) -> dict:
        from tracktion_dr.dag_kit import open_incident
        from tracktion_dr.notify.runs import notify_started
        from tracktion_dr.services.recovery import (
            STRATEGIES,
            resolve_scope,
            strictest_rto_seconds,
        )

        incident = open_incident(context, PLAN)
        environment = PLAN.environment(incident["environment"])
        strategy = context["params"]["strategy"]
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy: {strategy!r} is not one of {list(STRATEGIES)}")
        services = resolve_scope(environment, context["params"]["services"])
        incident.update(
            services=services,
            strategy=strategy,
            rto_target_seconds=strictest_rto_seconds(PLAN, environment, services),
        )
        log.info("strategy %s on %s (dependency order)", strategy, " -> ".join(services))
        notify_started(PLAN, incident, DAG_ID, f"strategy {strategy} on {', '.join(services)}")
        return incident

    @task(retries=0)
    def probe(incident: dict) -> dict:
        from tracktion_dr.services.recovery import probe_services

        environment = PLAN.environment(incident["environment"])
        results = probe_services(environment, incident["services"])
        for name, result in results.items():
            log.info(
                "%-22s %s  %s", name, "OK  " if result["healthy"] else "DOWN", result["detail"]
            )
        return results

    def make_recover(service: str):
        @task(task_id=f"recover_{task_name(service)}")
        def recover(incident: dict, before: dict) -> dict:
            from tracktion_dr.dag_kit import now_iso, step_event
            from tracktion_dr.dag_support import controller
            from tracktion_dr.services.recovery import actions_for, probe_services

            started = now_iso()
            name = f"recover_{task_name(service)}"
            if service not in incident["services"]:
                return {"event": step_event(name, started, "skipped", "not in scope")}
            environment = PLAN.environment(incident["environment"])
            healthy = before[service]["healthy"]
            if not healthy and incident["strategy"] == "restart_failed":
                # Its dependencies may have just come back: look again before acting.
                healthy = probe_services(environment, [service])[service]["healthy"]
            action = actions_for(incident["strategy"], healthy)
            if action is None:
                log.info("%s is healthy: left alone", service)
                return {"event": step_event(name, started, "skipped", "healthy, left alone")}
            spec = environment.controllers[environment.services[service].controller]
            unit = environment.services[service].unit or service
            if incident["dry_run"]:
                log.info("DRY RUN: would %s %s through %s", action, unit, spec.kind)
                return {"event": step_event(name, started, "skipped", f"dry run: would {action}")}
            getattr(controller(spec), action)(unit)
            return {"event": step_event(name, started, detail=f"{action} via {spec.kind}")}

        return recover

    incident = guard()
    before = probe(incident)
    gates = {}
    recovers = {}
    for service in SERVICE_RTO:
        recovers[service] = make_recover(service)(incident, before)
        gates[service] = RtoGate(
            task_id=f"gate_{task_name(service)}",
            check=gate_check_for(service),
            incident=incident,
            plan=PLAN,
            rto_seconds=SERVICE_RTO[service],
            poke_interval=2,
        )
        recovers[service] >> gates[service]
    for service, dependencies in SERVICE_DEPENDENCIES.items():
        for dependency in dependencies:
            gates[dependency] >> recovers[service]

    @task(trigger_rule="all_done", retries=0)
    def report(incident: dict, **context) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from tracktion_dr.services.recovery import probe_services

        environment = PLAN.environment(incident["environment"])
        results = probe_services(environment, incident["services"])
        down = [name for name, result in results.items() if not result["healthy"]]
        summary = {
            "healthy": len(results) - len(down),
            "total": len(results),
            "down": {name: results[name]["detail"] for name in down},
        }
        context["ti"].xcom_push(key="summary", value=summary)
        log.info("%d/%d services healthy", summary["healthy"], summary["total"])
        if down and not incident["dry_run"]:
            still_down = ", ".join(f"{n} ({summary['down'][n]})" for n in down)
            raise AirflowFailException(
                f"partial recovery: {summary['healthy']}/{summary['total']} services healthy; "
                f"still down: {still_down}"
            )
        return summary

    @task(trigger_rule="all_done", retries=0)
    def record(incident: dict, **context) -> dict:
        from tracktion_dr.dag_kit import record_timeline

        summary = context["ti"].xcom_pull(task_ids="report", key="summary") or {}
        return record_timeline(
            context,
            incident=incident,
            rto_target_seconds=incident["rto_target_seconds"],
            details={
                "strategy": incident["strategy"],
                "services": incident["services"],
                "health": summary,
            },
        )

    reported = report(incident)
    for gate in gates.values():
        gate >> reported
    recorded = record(incident)
    reported >> recorded
    finish_run(PLAN, incident, recorded)


dr_application_recovery()
