"""
### Test fixture DAG: an RTO gate that waits on the triggerer (not shipped in dags/)

`open_probe` (the gate's run: the `service` param, a 10-minute budget from now) →
`gate_services_healthy`: the real named check every database scenario uses
(`services_healthy`), with a 2 s fast window, so a service that is still down after it
sends the gate to the triggerer.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Param, dag, task

from tracktion_dr.airflow.dag_kit import RtoGate, now_iso
from tracktion_dr.airflow.gate_triggers import named_check
from tracktion_dr.airflow.support import DEFAULT_ARGS
from tracktion_dr.core.plan import load_plan

PLAN = load_plan()


@dag(
    dag_id="dr_gate_probe",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["dr", "test"],
    default_args=DEFAULT_ARGS,
    params={"service": Param("notification-service", type="string", description="service")},
    doc_md=__doc__,
)
def dr_gate_probe():
    @task
    def open_probe(**context) -> dict:
        return {
            "incident_id": f"DR-{datetime.now(UTC):%Y%m%d-%H%M%S}",
            "environment": "drill",
            "started_at": now_iso(),
            "rto_seconds": 600,
            "services": [context["params"]["service"]],
            "dry_run": False,
        }

    RtoGate(
        task_id="gate_services_healthy",
        check=named_check("services_healthy"),
        incident=open_probe(),
        plan=PLAN,
        fast_window_seconds=2,
    )


dr_gate_probe()
