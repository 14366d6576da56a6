"""
### Test fixture DAG for the step kit (not shipped in dags/)

guard → act (destructive) → gate → check; `restart_anyway` runs after all (like starting
services again after a failed restore); then the one scenario tail.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Param, dag

from tracktion_dr.airflow.dag_kit import RtoGate, open_incident, scenario_tail
from tracktion_dr.airflow.steps import guard, step
from tracktion_dr.airflow.support import DEFAULT_ARGS, common_params
from tracktion_dr.core.errors import InvalidInput
from tracktion_dr.core.plan import load_plan

PLAN = load_plan()


@dag(
    dag_id="dr_step_kit_probe",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["dr", "test"],
    default_args=DEFAULT_ARGS,
    params={
        **common_params(PLAN, environment_default="drill"),
        "refuse": Param(False, type="boolean", description="the guard refuses"),
        "fail_act": Param(False, type="boolean", description="the act step fails"),
        "look_finds_failure": Param(False, type="boolean", description="look finds a failure"),
    },
    doc_md=__doc__,
)
def dr_step_kit_probe():
    @guard()
    def check_inputs(**context) -> dict:
        incident = open_incident(context, PLAN)
        if context["params"]["refuse"]:
            raise InvalidInput("refuse", "asked to refuse", hint="set refuse to false")
        return {**incident, "rto_seconds": 600}

    @step("destructive")
    def act(run: dict, **context) -> str:
        if context["params"]["fail_act"]:
            raise RuntimeError("act failed")
        return "acted"

    @step("check")
    def look(run: dict, **context) -> dict:
        if context["params"]["look_finds_failure"]:
            return {"status": "failed", "detail": "found it down", "seen": 0}
        return {"detail": "looked", "seen": 42}

    @step("destructive", after_all=True)
    def restart_anyway(run: dict, **context) -> str:
        return "restarted"

    run = check_inputs()
    acted = act(run)
    gate = RtoGate(
        task_id="gate_back", check=lambda incident: (True, "back"), incident=run, plan=PLAN
    )
    looked = look(run)
    restarted = restart_anyway()
    acted >> gate >> looked >> restarted
    scenario_tail(
        PLAN,
        run,
        [restarted],
        record_fields=lambda incident, context: {"rto_target_seconds": incident["rto_seconds"]},
    )


dr_step_kit_probe()
