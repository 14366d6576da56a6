"""
### Test fixture DAG for the shared recovery mechanism (not shipped in dags/)

A step, a gate that opens on its third poke (or never), an optional failing step, then
record → verdict, exactly as the recovery DAGs wire them.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Param, dag, task

from tracktion_dr.airflow.dag_kit import (
    RtoGate,
    now_iso,
    open_incident,
    raise_for_outcome,
    record_timeline,
    step_event,
)
from tracktion_dr.airflow.support import DEFAULT_ARGS, common_params
from tracktion_dr.core.plan import load_plan

PLAN = load_plan()
POKES: dict[str, int] = {}


def opens_on_third_poke(incident: dict) -> tuple[bool, str]:
    key = incident["incident_id"]
    POKES[key] = POKES.get(key, 0) + 1
    return POKES[key] >= 3, f"poke {POKES[key]}"


def never_opens(incident: dict) -> tuple[bool, str]:
    return False, "still down"


@dag(
    dag_id="dr_kit_probe",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["dr", "test"],
    default_args=DEFAULT_ARGS,
    params={
        **common_params(PLAN, environment_default="drill"),
        "gate": Param(
            "opens",
            type="string",
            enum=["opens", "never"],
            title="Gate",
            description="gate behaviour",
        ),
        "rto_seconds": Param(60, type="number", title="RTO", description="RTO budget"),
        "fail_step": Param(False, type="boolean", title="Fail", description="fail the act step"),
    },
    doc_md=__doc__,
)
def dr_kit_probe():
    @task
    def guard(**context) -> dict:
        return open_incident(context, PLAN)

    @task
    def act(incident: dict, **context) -> dict:
        started = now_iso()
        if context["params"]["fail_step"]:
            raise RuntimeError("act failed on purpose")
        return {"event": step_event("act", started, detail="did the thing")}

    incident = guard()
    acted = act(incident)

    def gate_check(incident: dict) -> tuple[bool, str]:
        return (
            opens_on_third_poke(incident)
            if incident["gate_mode"] == "opens"
            else never_opens(incident)
        )

    @task
    def annotate(incident: dict, **context) -> dict:
        return {
            **incident,
            "gate_mode": context["params"]["gate"],
            "rto_seconds": context["params"]["rto_seconds"],
        }

    annotated = annotate(incident)
    gate = RtoGate(
        task_id="gate_service_back",
        check=gate_check,
        incident=annotated,
        plan=PLAN,
        poke_interval=1,
        minimum_wait_seconds=2,
    )
    acted >> gate

    @task(trigger_rule="all_done", retries=0)
    def record(incident: dict, **context) -> dict:
        return record_timeline(
            context, incident=incident, rto_target_seconds=float(context["params"]["rto_seconds"])
        )

    @task(retries=0)
    def verdict(timeline: dict) -> None:
        raise_for_outcome(timeline)

    recorded = record(incident)
    gate >> recorded
    verdict(recorded)


dr_kit_probe()
