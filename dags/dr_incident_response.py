"""
### DR incident response

The first thirty minutes of an incident, then the watch until the recovery ends - the
seed's *Immediate Response*, *Recovery Team Activation*, *War Room*, *Status Update*,
*Customer Communication*, *Escalation* and *Post-Incident Review*, as one run.

| step | what |
|---|---|
| `open_incident` | checks every input before anything is sent |
| `assess` | the `dr_initial_assessment` probes (same library), table in the log |
| `alert_stakeholders` | the seed's alert on every channel (Slack, PagerDuty *trigger*, e-mail, status page) and the initial customer notice on the status page |
| `activate_team` | pages each activation role of the plan by e-mail; contacts come from Airflow variables, never from the repo |
| `war_room` | Slack channel `dr-<incident>` (bot-token connection) and the incident document under the plan's `incident_response.document_dir` |
| `approve_recovery` | only when `auto_recover` is off: a human approves in the UI (*Required actions*) |
| `start_recovery` | triggers the chosen scenario DAG with this incident's id and clock |
| `watch_recovery` | while that run is active: status updates on the plan's cadence, and escalation levels paged as their thresholds pass |
| `close_incident` | restoration notice (PagerDuty *resolve*, status page *resolved*) or escalation of a failed recovery |
| `record`, `post_incident_review` | the ledger, then the seed's review template filled from the ledger's timeline |

Every delivery is retried per channel and recorded; a dead channel never stops the run.

**Params**: `severity` (the plan's business-impact tiers; ETA = the tier's RTO),
`description`, `scenario` (one of the plan's `incident_response.scenarios`, empty = none),
`auto_recover`, plus the common ones. Started by hand, or by the alert webhook
(`POST /dr/alerts/{source}`).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, dag, task

from tracktion_dr.airflow.incident_watch import RecoveryWatch
from tracktion_dr.airflow.support import DEFAULT_ARGS, common_params
from tracktion_dr.core.plan import load_plan

log = logging.getLogger(__name__)

PLAN = load_plan()

PARAMS = {
    **common_params(PLAN, environment_default=PLAN.default_environment),
    "severity": Param(
        type="string",
        enum=list(PLAN.tiers),
        title="Severity",
        description="The plan's business-impact tier of what is down; its RTO is the ETA.",
        section="Incident",
    ),
    "description": Param(
        type="string",
        minLength=1,
        title="Description",
        description="What is happening, as the stakeholders should read it.",
        section="Incident",
    ),
    "scenario": Param(
        "",
        type="string",
        enum=["", *PLAN.incident_response.scenarios],
        title="Recovery scenario",
        description="Which recovery DAG to start (empty: none, the team recovers by hand).",
        section="Recovery",
    ),
    "auto_recover": Param(
        False,
        type="boolean",
        title="Start the recovery without approval",
        description="Off: a human approves the recovery in the UI before it starts.",
        section="Recovery",
    ),
}
# An incident response exists to notify: on unless switched off.
PARAMS["notify"] = Param(
    True,
    type="boolean",
    title="Notify",
    description="Send the alert, activation, status and restoration messages (best effort).",
    section="Run",
)


def _channels() -> list[str]:
    return PLAN.incident_response.channels or list(PLAN.notifications)


def _deliver(incident: dict, message, channels: list[str]) -> dict:
    from tracktion_dr.notify.delivery import deliver

    if not incident["notify"]:
        log.info("notify is off; not sent:\n%s", message.plain_text())
        return {"sent": [], "failed": {}, "skipped": "notify is off"}
    return deliver(PLAN, message, channels=channels).as_dict()


@dag(
    dag_id="dr_incident_response",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=4,
    tags=["dr", "incident"],
    default_args=DEFAULT_ARGS,
    params=PARAMS,
    doc_md=__doc__,
)
def dr_incident_response():
    @task(retries=0)
    def open_incident(**context) -> dict:
        from tracktion_dr.airflow.dag_kit import open_incident as guard
        from tracktion_dr.notify.delivery import slack_channel_name
        from tracktion_dr.scenarios.incident_response import resolve_request

        incident = guard(context, PLAN)
        request = resolve_request(PLAN, context["params"])
        return {
            **incident,
            "severity": request.severity,
            "description": request.description,
            "scenario": request.scenario,
            "auto_recover": request.auto_recover,
            "war_room": slack_channel_name(incident["incident_id"]),
            "rto_seconds": PLAN.tiers[request.severity].rto.total_seconds(),
            "detected_at": (context["dag_run"].start_date or datetime.now(UTC)).isoformat(),
        }

    @task(retries=0)
    def assess(incident: dict) -> dict:
        from tracktion_dr.airflow.dag_kit import now_iso, step_event
        from tracktion_dr.airflow.support import conninfo
        from tracktion_dr.scenarios.assessment import assess as run_assessment

        started = now_iso()
        assessment = run_assessment(PLAN.environment(incident["environment"]), conninfo)
        report = assessment.report(incident["incident_id"], incident["environment"])
        log.info("\n%s", report)
        return {
            "event": step_event("assess", started, detail=assessment.status),
            "status": assessment.status,
            "down": assessment.down,
            "degraded": assessment.degraded,
            "report": report,
        }

    @task(retries=0)
    def alert_stakeholders(incident: dict, assessment: dict) -> dict:
        from tracktion_dr.airflow.dag_kit import now_iso, step_event
        from tracktion_dr.scenarios.incident_response import (
            alert_message,
            customer_initial_message,
            resolve_request,
        )

        started = now_iso()
        request = resolve_request(PLAN, incident)
        alert = _deliver(incident, alert_message(incident, request), _channels())
        impact = ", ".join(assessment["down"] + assessment["degraded"]) or "under assessment"
        public = [n for n in _channels() if PLAN.notifications[n].kind == "status_page"]
        customer = _deliver(
            incident, customer_initial_message(PLAN, incident, request, impact), public
        )
        detail = f"sent {alert['sent']}, failed {sorted(alert['failed'])}"
        return {
            "event": step_event("alert_stakeholders", started, detail=detail),
            "alert": alert,
            "customer_notice": customer,
        }

    @task(retries=0)
    def activate_team(incident: dict) -> dict:
        from tracktion_dr.airflow.dag_kit import now_iso, step_event
        from tracktion_dr.notify.delivery import resolve_contact, send_email_to
        from tracktion_dr.scenarios.incident_response import activation_message, resolve_request

        started = now_iso()
        request = resolve_request(PLAN, incident)
        mail = [n for n in _channels() if PLAN.notifications[n].kind == "email"]
        paged: dict[str, str] = {}
        for role in PLAN.incident_response.activation_roles:
            message = activation_message(incident, request, role, incident["war_room"])
            contact = resolve_contact(PLAN, role)
            if not contact or not contact.get("email"):
                paged[role] = "no contact (set the role's Airflow variable)"
            elif not incident["notify"]:
                paged[role] = "not sent (notify is off)"
            elif not mail:
                paged[role] = "no e-mail channel in the plan"
            else:
                try:  # the address is personal data: used, never logged or returned
                    send_email_to(
                        PLAN.notifications[mail[0]].conn_id,
                        [contact["email"]],
                        message.title,
                        message.text,
                    )
                    paged[role] = "paged"
                except Exception as exc:
                    paged[role] = f"failed: {type(exc).__name__}"
        log.info("activation: %s", paged)
        chat = [n for n in _channels() if PLAN.notifications[n].kind == "slack"]
        summary = activation_message(incident, request, "recovery team", incident["war_room"])
        _deliver(incident, summary, chat)
        detail = ", ".join(f"{role}: {state}" for role, state in paged.items())
        return {"event": step_event("activate_team", started, detail=detail), "paged": paged}

    @task(retries=0)
    def war_room(incident: dict, assessment: dict) -> dict:
        from tracktion_dr.airflow.dag_kit import now_iso, step_event
        from tracktion_dr.notify.delivery import create_slack_channel, resolve_contact
        from tracktion_dr.scenarios.incident_response import (
            incident_dir,
            incident_document,
            resolve_request,
            write_document,
        )

        started = now_iso()
        request = resolve_request(PLAN, incident)
        conn_id = PLAN.incident_response.war_room_slack_conn_id
        channel: dict = {"name": incident["war_room"], "created": False}
        if not conn_id:
            channel["detail"] = "no Slack bot-token connection in the plan"
        elif not incident["notify"]:
            channel["detail"] = "not created (notify is off)"
        else:
            try:
                channel = create_slack_channel(
                    conn_id,
                    incident["war_room"],
                    f"Disaster recovery coordination for {incident['incident_id']}",
                )
            except Exception as exc:  # the war room document still gets written
                channel["detail"] = f"failed: {type(exc).__name__}: {exc}"[:300]

        def name_of(role: str) -> str:
            contact = resolve_contact(PLAN, role) or {}
            return str(contact.get("name") or "TBD")

        text = incident_document(
            incident,
            request,
            assessment=f"```\n{assessment['report']}\n```",
            war_room=incident["war_room"],
            commander=name_of("incident_commander"),
            technical_lead=name_of("technical_lead"),
        )
        path = write_document(incident_dir(PLAN, incident["incident_id"]) / "response.md", text)
        detail = f"#{channel['name']} ({channel.get('detail', '')}); document {path}"
        return {
            "event": step_event("war_room", started, detail=detail),
            "channel": channel,
            "document": str(path),
        }

    @task(multiple_outputs=True, retries=0)
    def recovery_request(incident: dict) -> dict:
        scenario = incident["scenario"]
        return {
            "dag_id": scenario or "none",
            # One recovery run per incident: a re-trigger cannot start a second restore.
            "run_id": f"incident__{incident['incident_id']}",
            "conf": {
                "incident_id": incident["incident_id"],
                "incident_started_at": incident["started_at"],
                "environment": incident["environment"],
                "dry_run": incident["dry_run"],
                "notify": incident["notify"],
            },
        }

    @task.branch(retries=0)
    def choose_recovery(incident: dict) -> str:
        if not incident["scenario"]:
            return "no_recovery"
        return "start_recovery" if incident["auto_recover"] else "approve_recovery"

    incident = open_incident()
    assessment = assess(incident)
    request = recovery_request(incident)
    prepared = [
        alert_stakeholders(incident, assessment),
        activate_team(incident),
        war_room(incident, assessment),
    ]
    branch = choose_recovery(incident)
    assessment >> prepared
    prepared >> branch
    request >> branch

    approve_recovery = ApprovalOperator(
        task_id="approve_recovery",
        subject="Start the recovery for {{ ti.xcom_pull(task_ids='open_incident')['incident_id'] }}?",
        body=(
            "Scenario **{{ ti.xcom_pull(task_ids='open_incident')['scenario'] }}** for "
            "incident {{ ti.xcom_pull(task_ids='open_incident')['incident_id'] }} "
            "({{ ti.xcom_pull(task_ids='open_incident')['severity'] }}).\n\n"
            "{{ ti.xcom_pull(task_ids='open_incident')['description'] }}\n\n"
            "Assessment: {{ ti.xcom_pull(task_ids='assess')['status'] }}"
        ),
        response_timeout=timedelta(hours=4),
        retries=0,
    )
    start_recovery = TriggerDagRunOperator(
        task_id="start_recovery",
        # Jinja, not XComArgs: the DAG serializer reads trigger_dag_id for its dependency graph.
        trigger_dag_id="{{ ti.xcom_pull(task_ids='recovery_request', key='dag_id') }}",
        trigger_run_id="{{ ti.xcom_pull(task_ids='recovery_request', key='run_id') }}",
        conf=request["conf"],
        wait_for_completion=False,
        # Approved, or approval not needed (the approval task is then skipped).
        trigger_rule="none_failed_min_one_success",
        retries=0,
    )
    no_recovery = EmptyOperator(task_id="no_recovery")
    watch_recovery = RecoveryWatch(
        task_id="watch_recovery",
        plan=PLAN,
        incident=incident,
        recovery=request,
        poke_interval=5,
    )
    branch >> [approve_recovery, start_recovery, no_recovery]
    approve_recovery >> start_recovery >> watch_recovery

    @task(trigger_rule="all_done", retries=0)
    def close_incident(incident: dict, **context) -> dict:
        from tracktion_dr.airflow.dag_kit import now_iso, step_event
        from tracktion_dr.airflow.incident_watch import page_level
        from tracktion_dr.core.plan import format_duration
        from tracktion_dr.core.timeline import parse_time
        from tracktion_dr.scenarios.incident_response import (
            resolve_request,
            restoration_message,
            status_update_message,
        )

        started = now_iso()
        request = resolve_request(PLAN, incident)
        outcome = context["ti"].xcom_pull(task_ids="watch_recovery")
        clock = parse_time(incident["started_at"])
        if outcome and outcome.get("state") == "success":
            resolved_at = outcome["ended_at"]
            message = restoration_message(
                incident,
                request,
                duration=format_duration(parse_time(resolved_at) - clock),
                recovery=outcome["dag_id"],
                recovery_outcome="succeeded",
                data_impact="see the recovery run's measured data loss in the review",
            )
            delivery = _deliver(incident, message, _channels())
            return {
                "event": step_event("close_incident", started, detail="restored"),
                "resolved_at": resolved_at,
                "delivery": delivery,
            }
        if outcome:  # the recovery run failed: escalate past what was already paged
            paged = set(outcome.get("levels_paged") or [])
            remaining = sorted({level.level for level in PLAN.escalation} - paged)
            level = remaining[0] if remaining else 4
            result = page_level(
                PLAN,
                incident,
                level,
                reason=f"recovery {outcome['dag_id']} ended {outcome['state']}",
                elapsed=datetime.now(UTC) - clock,
            )
            return {
                "event": step_event(
                    "close_incident", started, status="failed", detail=f"escalated to {level}"
                ),
                "resolved_at": None,
                "escalation": result,
            }
        message = status_update_message(
            PLAN,
            incident,
            request,
            status="No automated recovery running (none chosen, or not approved)",
            activities="- The recovery team works the incident by hand in the war room",
            next_update=f"within {format_duration(PLAN.incident_response.status_update_interval)}",
            war_room=incident["war_room"],
            impact="see the initial assessment",
        )
        chat = [n for n in _channels() if PLAN.notifications[n].kind in ("slack", "email")]
        return {
            "event": step_event("close_incident", started, detail="left open for manual recovery"),
            "resolved_at": None,
            "delivery": _deliver(incident, message, chat),
        }

    @task(trigger_rule="all_done", retries=0)
    def record(incident: dict, **context) -> dict:
        from tracktion_dr.airflow.dag_kit import record_timeline

        return record_timeline(
            context, incident=incident, rto_target_seconds=incident["rto_seconds"]
        )

    @task(trigger_rule="all_done", retries=0)
    def post_incident_review(incident: dict, closed: dict, timeline: dict) -> dict:
        from tracktion_dr.airflow.support import conninfo
        from tracktion_dr.evidence import ledger
        from tracktion_dr.scenarios.incident_response import (
            incident_dir,
            write_document,
        )
        from tracktion_dr.scenarios.incident_response import (
            post_incident_review as review,
        )

        runs, events = ledger.incident_runs(
            conninfo(ledger.LEDGER_CONN_ID), incident["incident_id"]
        )
        text = review(
            incident["incident_id"],
            runs,
            events,
            description=incident["description"],
            detected_at=incident["detected_at"],
            resolved_at=(closed or {}).get("resolved_at"),
        )
        path = write_document(
            incident_dir(PLAN, incident["incident_id"]) / "post_incident_review.md", text
        )
        log.info("post-incident review: %s (%d runs from the ledger)", path, len(runs))
        return {"document": str(path), "runs": [r["dag_id"] for r in runs]}

    @task(retries=0)
    def verdict(timeline: dict) -> None:
        from tracktion_dr.airflow.dag_kit import raise_for_outcome

        raise_for_outcome(timeline)

    closed = close_incident(incident)
    [watch_recovery, no_recovery, approve_recovery, start_recovery] >> closed
    timeline = record(incident)
    closed >> timeline
    pir = post_incident_review(incident, closed, timeline)
    pir >> verdict(timeline)


dr_incident_response()
