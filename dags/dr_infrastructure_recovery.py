"""
### DR infrastructure recovery

The seed's network / storage / compute checks as probes with clear findings, and only the
repairs the plan allows. Replaces `infrastructure_recovery.sh`.

| area | checks (all concurrent, each time-bounded) | repair (only if the plan allows it) |
|---|---|---|
| network | DNS resolution of every host the plan's URLs use, plus `infrastructure.hosts` | none: findings only (this DAG never rewrites `/etc/resolv.conf`) |
| storage | every storage area present and writable, config paths present, free disk vs `min_free_disk_percent` | `repair_directories`: recreate a missing storage directory with the plan's owner and mode |
| compute | available memory vs `min_free_memory_percent` (CPUs, load shown), every service manager (supervisord, Docker engine, systemd) answers | `restart_service_manager`: `systemctl restart docker` for a compose controller |

Docker is pruned **only** when `prune_docker` is set (and only where a compose controller
is in use).

**Flow**: `guard` (logs the plan of actions) → `inspect` (findings before, and the
repairs this run will make) → `repair` → `gate_repaired` (no finding this DAG repairs by
itself is failing any more, within the critical tier's RTO) → `report` (all findings;
**fails the run** when anything is still failing, naming it) → `record` →
`notify_outcome` + `publish` (report) → `verdict`.

**Params**: `areas` (`network`, `storage`, `compute`; default all), `prune_docker`, and
the common params (`dry_run` lists the repairs it would make).
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
from tracktion_dr.scenarios import infrastructure

PLAN = load_plan()
DAG_ID = "dr_infrastructure_recovery"
AREAS = list(infrastructure.AREAS)
RTO_SECONDS = infrastructure.rto_seconds(PLAN)


def record_fields(run: dict, context) -> dict:
    ti = context["ti"]
    return infrastructure.record_fields(
        before=ti.xcom_pull(task_ids="inspect"),
        repaired=ti.xcom_pull(task_ids="repair"),
        after=ti.xcom_pull(task_ids="report", key="findings"),
        rto_target_seconds=RTO_SECONDS,
    )


@dag(
    dag_id=DAG_ID,
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "scenario", "infrastructure"],
    default_args=DEFAULT_ARGS,
    params={
        **common_params(PLAN, environment_default=None),
        "areas": Param(
            AREAS,
            type="array",
            items={"type": "string", "enum": AREAS},
            title="Areas",
            description="Which checks to run: network (DNS), storage (mounts, free disk), "
            "compute (memory, service managers).",
            section="Recovery",
        ),
        "prune_docker": Param(
            False,
            type="boolean",
            title="Prune Docker",
            description="Run 'docker system prune --force' on compose hosts. Off unless you "
            "set it: it removes stopped containers and unused images.",
            section="Recovery",
        ),
    },
    doc_md=__doc__,
)
def dr_infrastructure_recovery():
    @guard()
    def check_inputs(**context) -> dict:
        run = infrastructure.check_inputs(open_incident(context, PLAN), context["params"])
        print_plan_of_actions(run, infrastructure.plan_of_actions(PLAN, run))
        notify_started(PLAN, run, DAG_ID, infrastructure.started_summary(run))
        return run

    @step("check", host=infrastructure.HOST)
    def inspect(run: dict, **context) -> dict:
        return infrastructure.inspect(PLAN, run, ACCESS)

    @step("destructive", host=infrastructure.HOST)
    def repair(run: dict, before: dict, **context) -> dict:
        return infrastructure.repair(PLAN, run, before, ACCESS)

    @step("check", after_all=True, host=infrastructure.HOST)
    def report(run: dict, **context) -> dict:
        findings = infrastructure.summary_now(PLAN, run, ACCESS)
        after = [f.as_dict() for f in findings]
        context["ti"].xcom_push(key="findings", value=after)  # for the record, even failed
        return {
            "detail": infrastructure.judge_findings(run, findings),
            "checks": len(findings),
            "failing": sum(not f.ok for f in findings),
        }

    run = check_inputs()
    repaired = repair(run, inspect(run))
    gate = RtoGate(
        task_id="gate_repaired",
        check=named_check("infrastructure_repaired"),
        incident=run,
        plan=PLAN,
        rto_seconds=RTO_SECONDS,
        **on_host(infrastructure.HOST),  # it checks the same local paths again
    )
    reported = report()
    repaired >> gate >> reported
    scenario_tail(PLAN, run, [reported], record_fields=record_fields)


dr_infrastructure_recovery()
