"""
### DR initial assessment

The first five minutes of any incident: **what is up and what is down, right now?**

Probes, all at once and each with its own timeout (one hung endpoint costs at most its
timeout, never the sum):

| component | check |
|---|---|
| every service in the plan | `GET` its health URL |
| every database (and its replica) | connect and run a query |
| every storage area | directory present and writable |
| external dependencies | `GET` their health URL (down = *degraded*, not ours to fix) |

**Where it runs**: over the network from the default worker; under a plan that puts the
storage on a host of its own, `probe_storage` checks the storage areas on that host's
worker at the same time and `probe_platform` takes its results (waiting at most the probe
timeout plus 15 s: a storage host that does not answer is reported *not assessed*, DOWN).

**Output**: a readable table in the `probe_platform` log, and the structured result in XCom
(`status`, `down`, `degraded`, `results`). Touches nothing, so `dry_run` changes nothing.

**Params**: `incident_id` is generated (`DR-YYYYMMDD-HHMMSS`) when empty;
`incident_started_at` starts the RTO clock (default: now); `environment` picks the plan's
targets; `notify` sends the result to the plan's Slack and e-mail channels (best effort:
a delivery failure is reported in the result, never fails the run).

Replaces the seed's `initial_assessment.sh`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from airflow.sdk import dag, task

from tracktion_dr.airflow.incident_steps import (
    STORAGE_PROBE_TASK,
    assessment_of,
    storage_probed_on_its_host,
)
from tracktion_dr.airflow.incident_steps import probe_storage as probe_storage_areas
from tracktion_dr.airflow.steps import on_host
from tracktion_dr.airflow.support import DEFAULT_ARGS, common_params
from tracktion_dr.core.plan import load_plan

log = logging.getLogger(__name__)

PLAN = load_plan()


@dag(
    dag_id="dr_initial_assessment",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=4,
    tags=["dr", "scenario", "assessment"],
    default_args=DEFAULT_ARGS,
    params=common_params(PLAN, environment_default="production"),
    doc_md=__doc__,
)
def dr_initial_assessment():
    @task
    def open_incident(**context) -> dict:
        from tracktion_dr.core.incident import resolve_incident

        run_started = context["dag_run"].start_date or datetime.now(UTC)
        incident = resolve_incident(
            context["params"],
            run_started_at=run_started,
            known_environments=sorted(PLAN.environments),
            plan_name=PLAN.name,
        )
        log.info(
            "incident %s, environment %s, clock started %s",
            incident.incident_id,
            incident.environment,
            incident.started_at,
        )
        return incident.as_dict()

    # Re-probing on retry would describe a different moment; the operator re-runs instead.
    @task(retries=0)
    def probe_platform(incident: dict, **context) -> dict:
        from tracktion_dr.core.plan import load_plan as load_current_plan

        assessment = assessment_of(load_current_plan(), incident["environment"], context)
        log.info("\n%s", assessment.report(incident["incident_id"], incident["environment"]))
        return {"incident": incident, **assessment.as_dict()}

    @task(retries=0)
    def notify_channels(result: dict) -> dict:
        from tracktion_dr.notify.assessment import assessment_message
        from tracktion_dr.notify.delivery import deliver

        if not result["incident"]["notify"]:
            log.info("notify is off: nothing sent")
            return {"sent": [], "failed": {}}
        # The assessment is a status report: chat and e-mail, no paging.
        return deliver(PLAN, assessment_message(result), channels=["slack", "email"]).as_dict()

    incident = open_incident()
    notify_channels(probe_platform(incident))
    if storage_probed_on_its_host(PLAN):
        # the storage areas are that host's directories: probed there, beside the rest
        @task(task_id=STORAGE_PROBE_TASK, retries=0, **on_host("storage"))
        def probe_storage(incident: dict) -> list[dict]:
            return probe_storage_areas(PLAN, incident["environment"])

        probe_storage(incident)


dr_initial_assessment()
