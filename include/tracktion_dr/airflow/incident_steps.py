"""The steps of ``dr_incident_response``, each a plain function of the run.

The DAG file wires them through the step kit; the rules they apply (routes, the approval
question, restored-means-verified, who is told what) live in ``scenarios/`` and are unit
tested there. Airflow-facing: they read connections, variables and XCom.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tracktion_dr.core.plan import Plan, format_duration
from tracktion_dr.core.timeline import parse_time

log = logging.getLogger(__name__)


def channels(plan: Plan, *kinds: str) -> list[str]:
    chosen = plan.incident_response.channels or list(plan.notifications)
    return [n for n in chosen if not kinds or plan.notifications[n].kind in kinds]


def send(plan: Plan, run: dict[str, Any], message: Any, names: list[str]) -> dict[str, Any]:
    from tracktion_dr.notify.delivery import deliver

    if not run["notify"]:
        log.info("notify is off; not sent:\n%s", message.plain_text())
        return {"sent": [], "failed": {}, "skipped": "notify is off"}
    return deliver(plan, message, channels=names).as_dict()


def request_of(run: dict[str, Any]) -> Any:
    from tracktion_dr.airflow.incident_watch import incident_request

    return incident_request(run)


# --- opening ---------------------------------------------------------------------------


def open_incident(plan: Plan, context: Any) -> dict[str, Any]:
    from tracktion_dr.airflow.dag_kit import open_incident as common
    from tracktion_dr.airflow.dag_kit import refusing_bad_input
    from tracktion_dr.notify.delivery import slack_channel_name
    from tracktion_dr.scenarios.incident_response import resolve_request

    incident = common(context, plan)
    with refusing_bad_input():
        request = resolve_request(plan, {**context["params"], **incident})
    return {
        **incident,
        **request.as_dict(),
        "war_room": slack_channel_name(incident["incident_id"]),
        "rto_seconds": plan.tiers[request.severity].rto.total_seconds(),
        "detected_at": (context["dag_run"].start_date or datetime.now(UTC)).isoformat(),
    }


# --- the assessment (dr_incident_response, dr_initial_assessment) -----------------------

# The task that probes the storage areas on the storage host, beside the assessment, when
# the plan puts the storage on a host of its own (its directories are not on the default
# worker). The assessment waits for its results at most the probe timeout plus this long
# after its own probes are done (the queue's pick-up), then says the storage was not
# assessed - a dead storage host must not hold up the first minutes of an incident.
STORAGE_PROBE_TASK = "probe_storage"
STORAGE_REPORT_GRACE_SECONDS = 15.0


def storage_probed_on_its_host(plan: Plan) -> bool:
    from tracktion_dr.airflow.steps import host_queue

    return host_queue("storage", plan) is not None


def probe_storage(plan: Plan, environment: str) -> list[dict[str, Any]]:
    """The storage host's part of the assessment (names, statuses and details only)."""
    from tracktion_dr.scenarios.assessment import probe_storage as probe

    return probe(plan.environment(environment))


def storage_report(context: Any, wait_seconds: float) -> Callable[[], list[dict[str, Any]] | None]:
    """Reads :data:`STORAGE_PROBE_TASK`'s results (XCom) once they are there, waiting up to
    ``wait_seconds``; None when they did not come."""

    def read() -> list[dict[str, Any]] | None:
        deadline = time.monotonic() + wait_seconds
        while True:
            found = context["ti"].xcom_pull(task_ids=STORAGE_PROBE_TASK)
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                log.warning(
                    "%s reported nothing within %.0fs: storage not assessed",
                    STORAGE_PROBE_TASK,
                    wait_seconds,
                )
                return None
            time.sleep(0.25)

    return read


def assessment_of(plan: Plan, environment_name: str, context: Any) -> Any:
    """The platform assessed now; the storage from its host's probe when it has one."""
    from tracktion_dr.airflow.support import conninfo
    from tracktion_dr.scenarios.assessment import assess as run_assessment

    environment = plan.environment(environment_name)
    storage_from = None
    if storage_probed_on_its_host(plan) and environment.storage:
        wait = environment.probe_timeout.total_seconds() + STORAGE_REPORT_GRACE_SECONDS
        storage_from = storage_report(context, wait)
    return run_assessment(environment, conninfo, storage_from=storage_from)


def assess(plan: Plan, run: dict[str, Any], context: Any) -> dict[str, Any]:
    from tracktion_dr.scenarios.recovery_routes import false_positive

    assessment = assessment_of(plan, run["environment"], context)
    report = assessment.report(run["incident_id"], run["environment"])
    log.info("\n%s", report)
    found = assessment.as_dict()
    unconfirmed = false_positive(run.get("affected") or [], found)
    finding = (
        f"{', '.join(run['affected'])} healthy when checked"
        if unconfirmed
        else f"{assessment.status}: down {assessment.down or 'none'}, degraded "
        f"{assessment.degraded or 'none'}"
    )
    return {
        "detail": finding,
        "status": "succeeded",
        "assessment": assessment.status,
        "down": assessment.down,
        "degraded": assessment.degraded,
        "report": report,
        "false_positive": unconfirmed,
        "finding": finding,
    }


def stand_down(plan: Plan, run: dict[str, Any], triage: dict[str, Any]) -> dict[str, Any]:
    """A false positive: say so to the team's chat, page nobody, start nothing."""
    from tracktion_dr.scenarios.incident_response import stand_down_message

    message = stand_down_message(run, request_of(run), finding=triage["finding"])
    delivery = send(plan, run, message, channels(plan, "slack"))
    return {"detail": f"false positive: {triage['finding']}; no recovery", "delivery": delivery}


def alert_stakeholders(plan: Plan, run: dict[str, Any], triage: dict[str, Any]) -> dict:
    from tracktion_dr.scenarios.incident_response import (
        alert_message,
        customer_impact,
        customer_initial_message,
    )

    request = request_of(run)
    alert = send(
        plan, run, alert_message(run, request), channels(plan, "slack", "email", "pagerduty")
    )
    impact = customer_impact(triage.get("down", []) + triage.get("degraded", []))
    customer = send(
        plan,
        run,
        customer_initial_message(plan, run, request, impact),
        channels(plan, "status_page"),
    )
    return {
        "detail": f"sent {alert['sent']}, failed {sorted(alert['failed'])}",
        "alert": alert,
        "customer_notice": customer,
    }


def activate_team(plan: Plan, run: dict[str, Any]) -> dict[str, Any]:
    """Page each activation role (PagerDuty, and e-mail where the role has an address),
    then tell the team's chat who was activated."""
    from tracktion_dr.notify import delivery
    from tracktion_dr.scenarios.incident_response import activation_message

    request = request_of(run)
    paged: dict[str, str] = {}
    for role in plan.incident_response.activation_roles:
        message = activation_message(run, request, role, run["war_room"])
        if not run["notify"]:
            paged[role] = "not sent (notify is off)"
            continue
        paged[role] = delivery.page_role(plan, role, message)
    log.info("activation: %s", paged)
    summary = activation_message(run, request, "recovery team", run["war_room"])
    send(plan, run, summary, channels(plan, "slack"))
    return {"detail": ", ".join(f"{r}: {s}" for r, s in paged.items()), "paged": paged}


def war_room(plan: Plan, run: dict[str, Any], triage: dict[str, Any]) -> dict[str, Any]:
    from tracktion_dr.notify.delivery import create_slack_channel, resolve_contact
    from tracktion_dr.scenarios.incident_response import (
        incident_dir,
        incident_document,
        write_document,
    )

    conn_id = plan.incident_response.war_room_slack_conn_id
    channel: dict[str, Any] = {"name": run["war_room"], "created": False}
    if not conn_id:
        channel["detail"] = "no Slack bot-token connection in the plan"
    elif not run["notify"]:
        channel["detail"] = "not created (notify is off)"
    else:
        try:
            channel = create_slack_channel(
                conn_id, run["war_room"], f"Disaster recovery coordination for {run['incident_id']}"
            )
        except Exception as exc:  # the war room document still gets written
            channel["detail"] = f"failed: {type(exc).__name__}: {exc}"[:300]

    def name_of(role: str) -> str:
        return str((resolve_contact(plan, role) or {}).get("name") or "TBD")

    text = incident_document(
        run,
        request_of(run),
        assessment=f"```\n{triage['report']}\n```",
        war_room=run["war_room"],
        commander=name_of("incident_commander"),
        technical_lead=name_of("technical_lead"),
    )
    path = write_document(incident_dir(plan, run["incident_id"]) / "response.md", text)
    return {
        "detail": f"#{channel['name']} ({channel.get('detail', '')}); document {path}",
        "channel": channel,
        "document": str(path),
    }


# --- the recovery ------------------------------------------------------------------------


def recovery_request(plan: Plan, run: dict[str, Any], decision: dict[str, Any] | None) -> dict:
    """The run to start: the commander's choice (or the routed scenario when no approval
    was needed), with the conf derived from the affected components. One recovery run per
    incident and scenario: a re-run of the incident cannot start a second one."""
    from tracktion_dr.scenarios.recovery_routes import recovery_conf

    scenario = (decision or {}).get("chosen") or run["scenario"]
    approved_by = (decision or {}).get("by")
    conf = recovery_conf(
        plan.environment(run["environment"]),
        scenario,
        affected=run.get("affected") or [],
        scenario_conf=run.get("scenario_conf") if scenario == run["scenario"] else {},
        incident=run,
        approved_by=approved_by,
    )
    log.info(
        "recovery %s for %s%s",
        scenario,
        run["incident_id"],
        f", approved by {approved_by}" if approved_by else " (no approval needed)",
    )
    return {
        "detail": f"{scenario}" + (f", approved by {approved_by}" if approved_by else ""),
        "dag_id": scenario,
        "run_id": f"incident__{run['incident_id']}__{scenario}",
        "conf": conf,
        "approved_by": approved_by,
    }


def verify_recovery(
    plan: Plan, run: dict[str, Any], recovery: dict | None, request: dict | None
) -> dict[str, Any]:
    """The independent check after the recovery run, whatever its state: the assessment
    again, and the post-recovery validation checks for the affected components."""
    from tracktion_dr.airflow.support import conninfo, endpoint
    from tracktion_dr.scenarios.assessment import assess as run_assessment
    from tracktion_dr.scenarios.recovery_routes import (
        checks_for,
        moved_connections,
        restoration_verdict,
    )
    from tracktion_dr.scenarios.validation import run_named_check

    if recovery is None or request is None:
        return {"status": "skipped", "detail": "no recovery ran: nothing to verify"}
    environment = plan.environment(run["environment"])
    moved = moved_connections(environment, request["dag_id"], request["conf"])
    if moved:
        log.info("re-checking the moved components at their new place: %s", moved)

    def conninfo_for(conn_id: str, dbname: str | None = None) -> str:
        return conninfo(moved.get(conn_id, conn_id), dbname)

    def endpoint_for(conn_id: str, dbname: str | None = None) -> Any:
        return endpoint(moved.get(conn_id, conn_id), dbname)

    affected = list(run.get("affected") or [])
    assessment = run_assessment(environment, conninfo_for)
    log.info("\n%s", assessment.report(run["incident_id"], run["environment"]))
    checks = [
        run_named_check(name, environment, conninfo_for, endpoint_for).as_dict()
        for name in checks_for(affected)
    ]
    for check in checks:
        log.info("check %s: %s (%s)", check["name"], check["status"], check["detail"])
    verdict = restoration_verdict(affected, assessment.as_dict(), checks)
    return {
        "status": "succeeded" if verdict.restored else "failed",
        "detail": verdict.detail,
        **verdict.as_dict(),
        "checks": checks,
    }


# --- closing -----------------------------------------------------------------------------


def close_incident(
    plan: Plan,
    run: dict[str, Any],
    *,
    triage: dict | None,
    decision: dict | None,
    recovery: dict | None,
    verification: dict | None,
) -> dict[str, Any]:
    """Restored only after the verification: then the team's notice (PagerDuty *resolve*)
    and the customers' (status page *resolved*). Otherwise the next escalation level is
    paged with what is still down, and nothing is resolved."""
    from tracktion_dr.airflow.incident_watch import page_level
    from tracktion_dr.scenarios import incident_response as rules

    ending = rules.closing(
        triage=triage, decision=decision, recovery=recovery, verification=verification
    )
    clock = parse_time(run["started_at"])
    now = datetime.now(UTC)
    result: dict[str, Any] = {"outcome": ending.outcome, "resolved_at": None}
    request = request_of(run)
    if ending.restored:
        duration = format_duration(now - clock)
        team_impact, customer_impact = rules.data_impact(measured_runs(run["incident_id"]))
        team = rules.restored_message(
            run,
            request,
            duration=duration,
            recovery=recovery["dag_id"],
            recovery_outcome=recovery["state"],
            verification=ending.detail,
            data_impact=team_impact,
        )
        result["delivery"] = send(plan, run, team, channels(plan, "slack", "email", "pagerduty"))
        customers = rules.customer_restored_message(
            run, request, duration=duration, impact=customer_impact
        )
        result["customer_notice"] = send(plan, run, customers, channels(plan, "status_page"))
        result["resolved_at"] = now.isoformat()
        return {"detail": f"restored: {ending.detail}", **result}
    if ending.escalates:
        paged = set((recovery or {}).get("levels_paged") or [])
        remaining = sorted({level.level for level in plan.escalation} - paged)
        level = remaining[0] if remaining else max(level.level for level in plan.escalation)
        reason = ending.detail + (
            f" - still down: {', '.join(ending.still_down)}" if ending.still_down else ""
        )
        result["escalation"] = page_level(plan, run, level, reason=reason, elapsed=now - clock)
        result["still_down"] = ending.still_down
        # Not a failure of this step (it escalated): the failed verification, approval or
        # recovery task is what fails the run.
        return {"detail": f"not restored, escalated to {level}: {reason}", **result}
    if ending.outcome == "false_positive":
        return {"detail": f"false positive: {ending.detail}", **result}
    message = rules.status_update_message(
        plan,
        run,
        request,
        status="No automated recovery running (none routed, or none chosen)",
        activities="- The recovery team works the incident by hand in the war room",
        next_update=f"within {format_duration(plan.incident_response.status_update_interval)}",
        war_room=run["war_room"],
        impact="see the initial assessment",
    )
    result["delivery"] = send(plan, run, message, channels(plan, "slack", "email"))
    return {"detail": "left open for manual recovery", **result}


def measured_runs(incident_id: str) -> list[dict[str, Any]]:
    """The incident's runs as the ledger recorded them (their measured data loss); none
    when the ledger does not answer (the notice then says nothing was measured)."""
    from tracktion_dr.airflow.support import conninfo
    from tracktion_dr.evidence import ledger

    try:
        runs, _ = ledger.incident_runs(conninfo(ledger.LEDGER_CONN_ID), incident_id)
    except ledger.UNREACHABLE:
        log.warning("the ledger does not answer: data loss not read for the notices")
        return []
    return runs


def post_incident_review(plan: Plan, run: dict[str, Any], closed: dict | None) -> dict:
    from tracktion_dr.airflow.support import conninfo
    from tracktion_dr.evidence import ledger
    from tracktion_dr.scenarios.incident_response import incident_dir, write_document
    from tracktion_dr.scenarios.incident_response import post_incident_review as review

    runs, events = ledger.incident_runs(conninfo(ledger.LEDGER_CONN_ID), run["incident_id"])
    closed = closed or {}
    text = review(
        run["incident_id"],
        runs,
        events,
        description=run["description"],
        detected_at=run["detected_at"],
        resolved_at=closed.get("resolved_at"),
        outcome=closed.get("outcome"),
        still_down=closed.get("still_down") or [],
    )
    path = write_document(incident_dir(plan, run["incident_id"]) / "post_incident_review.md", text)
    log.info("post-incident review: %s (%d runs from the ledger)", path, len(runs))
    return {"detail": str(path), "document": str(path), "runs": [r["dag_id"] for r in runs]}
