"""The incident response, as plain Python: inputs, the seed's messages, the escalation
schedule, status-update cadence, and the war-room and post-incident documents.

``dags/dr_incident_response.py`` wires these into tasks; nothing here imports Airflow, so
each rule (which level is due, when the next update is owed, what the review says) is
tested on its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tracktion_dr.core.incident import InvalidInput
from tracktion_dr.core.plan import EscalationLevel, Plan, format_duration
from tracktion_dr.core.timeline import parse_time
from tracktion_dr.notify.messages import DrMessage, Severity
from tracktion_dr.notify.templates import render

# Plan tier (business impact level) -> message severity.
SEVERITY_OF_TIER: dict[str, Severity] = {
    "critical": "critical",
    "important": "error",
    "standard": "warning",
    "non_critical": "info",
}


def pagerduty_dedup_key(incident_id: str) -> str:
    """One PagerDuty incident per DR incident: trigger, acknowledge and resolve share it."""
    return f"tracktion-dr/{incident_id}"


@dataclass(frozen=True)
class IncidentRequest:
    severity: str
    description: str
    scenario: str  # "" = no recovery DAG
    auto_recover: bool
    affected: list[str] = field(default_factory=list)  # the assessment's component names
    scenario_conf: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "description": self.description,
            "scenario": self.scenario,
            "auto_recover": self.auto_recover,
            "affected": self.affected,
            "scenario_conf": self.scenario_conf,
        }


def resolve_request(plan: Plan, params: dict[str, Any]) -> IncidentRequest:
    """Check the incident params (beyond the common ones) before anything is sent: a
    scenario the plan lists, the components it is about, the scenario's own params, and no
    unattended destructive recovery where the environment demands a human decision."""
    from tracktion_dr.scenarios import recovery_routes as routes

    severity = str(params.get("severity") or "")
    if severity not in plan.tiers:
        raise InvalidInput("severity", f"{severity!r} is not one of {list(plan.tiers)}")
    scenario = str(params.get("scenario") or "")
    if scenario and scenario not in plan.incident_response.scenarios:
        raise InvalidInput(
            "scenario",
            f"{scenario!r} is not one of the plan's scenarios {plan.incident_response.scenarios}",
        )
    description = str(params.get("description") or "").strip()
    if not description:
        raise InvalidInput("description", "describe the incident (one line is enough)")
    environment = plan.environment(str(params.get("environment") or plan.default_environment))
    auto_recover = bool(params.get("auto_recover", False))
    if auto_recover and routes.needs_approval(environment, scenario):
        raise InvalidInput(
            "auto_recover",
            f"{scenario} is destructive and this environment demands a human decision",
            hint="leave auto_recover off: the commander approves in the Airflow UI",
        )
    return IncidentRequest(
        severity=severity,
        description=description,
        scenario=scenario,
        auto_recover=auto_recover,
        affected=routes.check_affected(environment, params.get("affected")),
        scenario_conf=routes.check_scenario_conf(scenario, params.get("scenario_conf")),
    )


def _now_text(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def eta_text(plan: Plan, severity: str, started_at: str, now: datetime | None = None) -> str:
    """ETA = the tier's RTO from the incident start (what the plan promises)."""
    deadline = parse_time(started_at) + plan.tiers[severity].rto
    return f"{_now_text(deadline)} (RTO {format_duration(plan.tiers[severity].rto)})"


def _message(
    template: str,
    incident_id: str,
    message_severity: Severity,
    /,
    *,
    fields: dict[str, str] | None = None,
    pagerduty_action: str = "trigger",
    status_page_status: str | None = None,
    **values: object,
) -> DrMessage:
    rendered = render(template, incident_id=incident_id, **values)
    return DrMessage(
        title=rendered.subject,
        text=rendered.body,
        severity=message_severity,
        incident_id=incident_id,
        fields=fields or {},
        dedup_key=pagerduty_dedup_key(incident_id),
        pagerduty_action=pagerduty_action,  # type: ignore[arg-type]
        status_page_status=status_page_status,  # type: ignore[arg-type]
    )


def alert_message(incident: dict[str, Any], request: IncidentRequest) -> DrMessage:
    return _message(
        "alert",
        incident["incident_id"],
        SEVERITY_OF_TIER.get(request.severity, "error"),
        severity=request.severity,
        time=_now_text(),
        description=request.description,
        status_page_status="investigating",
    )


def activation_message(
    incident: dict[str, Any], request: IncidentRequest, role: str, war_room: str
) -> DrMessage:
    return _message(
        "activation",
        incident["incident_id"],
        SEVERITY_OF_TIER.get(request.severity, "error"),
        severity=request.severity,
        role=role.replace("_", " "),
        war_room_channel=war_room,
        description=request.description,
    )


def status_update_message(
    plan: Plan,
    incident: dict[str, Any],
    request: IncidentRequest,
    *,
    status: str,
    activities: str,
    next_update: str,
    war_room: str,
    impact: str,
) -> DrMessage:
    return _message(
        "status_update",
        incident["incident_id"],
        "warning",
        time=_now_text(),
        status=status,
        eta=eta_text(plan, request.severity, incident["started_at"]),
        next_update=next_update,
        activities=activities,
        impact=impact,
        war_room_channel=war_room,
        pagerduty_action="acknowledge",
        status_page_status="identified",
    )


def customer_initial_message(
    plan: Plan, incident: dict[str, Any], request: IncidentRequest, impact: str
) -> DrMessage:
    return _message(
        "customer_initial",
        incident["incident_id"],
        SEVERITY_OF_TIER.get(request.severity, "error"),
        status="Service disrupted; disaster recovery activated",
        impact=impact,
        eta=eta_text(plan, request.severity, incident["started_at"]),
        update_interval=format_duration(plan.incident_response.status_update_interval),
        status_page_status="investigating",
    )


def customer_impact(names: list[str]) -> str:
    """Component names as customers read them: no hosts, clusters or internal ids
    (``tracklist-service`` -> "Tracklist", ``database:tracktion`` -> "stored data")."""
    words: list[str] = []
    for name in names:
        kind, _, rest = name.partition(":")
        if not rest:
            word = name.removesuffix("-service").replace("-", " ").replace("_", " ").title()
        elif kind == "database":
            word = "stored data"
        elif kind == "storage":
            word = "audio file storage"
        elif kind == "external":
            word = "a third-party service we rely on"
        else:  # replicas and backups serve no customer directly
            continue
        if word not in words:
            words.append(word)
    return ", ".join(words) or "parts of the platform"


def data_impact(runs: list[dict[str, Any]]) -> tuple[str, str]:
    """(team text, customer text) from the data loss the incident's runs *measured* (the
    ledger); nothing measured is said as such, never as "none"."""
    losses = [r["data_loss_seconds"] for r in runs if r.get("data_loss_seconds") is not None]
    if not losses:
        return (
            "not measured by the recovery (no data was restored)",
            "none expected from this recovery; our review will confirm it",
        )
    worst = max(losses)
    if worst <= 0:
        return "measured: no data lost", "none: no data was lost"
    return (
        f"measured: the last {worst:.0f}s of changes before the incident were lost",
        f"changes made in the last {format_duration(timedelta(seconds=worst))} "
        "before the disruption may need to be repeated",
    )


def customer_restored_message(
    incident: dict[str, Any], request: IncidentRequest, *, duration: str, impact: str
) -> DrMessage:
    """The customer's notice, for the status page: only sent once the restoration is
    verified, and free of internal identifiers."""
    impact = customer_impact(request.affected) if request.affected else "the platform"
    return _message(
        "customer_restored",
        incident["incident_id"],
        "info",
        duration=duration,
        services_restored=f"{impact}: operating normally again, checked independently",
        data_impact=impact,
        description=f"A disruption affected {impact}.",
        pagerduty_action="resolve",
        status_page_status="resolved",
    )


def restored_message(
    incident: dict[str, Any],
    request: IncidentRequest,
    *,
    duration: str,
    recovery: str,
    recovery_outcome: str,
    verification: str,
    data_impact: str,
) -> DrMessage:
    """The team's notice (chat, e-mail, PagerDuty *resolve*): what ran and what proved it."""
    return _message(
        "restored",
        incident["incident_id"],
        "info",
        severity=request.severity,
        duration=duration,
        recovery=recovery,
        recovery_outcome=recovery_outcome,
        verification=verification,
        data_impact=data_impact,
        description=request.description,
        pagerduty_action="resolve",
        status_page_status="resolved",
    )


def stand_down_message(
    incident: dict[str, Any], request: IncidentRequest, *, finding: str
) -> DrMessage:
    """A false positive: the alert's components were healthy when checked."""
    return _message(
        "stand_down",
        incident["incident_id"],
        "info",
        description=request.description,
        affected=", ".join(request.affected),
        finding=finding,
    )


def escalation_message(
    incident: dict[str, Any],
    request: IncidentRequest,
    level: EscalationLevel,
    *,
    reason: str,
    elapsed: timedelta,
    war_room: str,
) -> DrMessage:
    return _message(
        "escalation",
        incident["incident_id"],
        "critical",
        level=level.level,
        level_name=level.name,
        severity=request.severity,
        reason=reason,
        elapsed=format_duration(elapsed),
        responders=", ".join(r.replace("_", " ") for r in level.responders),
        response_time=format_duration(level.response_time),
        authority=level.authority,
        war_room_channel=war_room,
        fields={"escalation level": str(level.level)},
    )


# --- escalation and status cadence -------------------------------------------------------


def due_escalations(
    plan: Plan,
    started_at: datetime,
    now: datetime,
    *,
    already_paged: set[int],
    resolved: bool,
) -> list[tuple[EscalationLevel, timedelta]]:
    """Levels whose threshold (from the incident start) has passed and that have not been
    paged yet. Nothing is due once the incident is resolved."""
    if resolved:
        return []
    elapsed = now - started_at
    return [
        (level, after)
        for level, after in plan.escalation_thresholds()
        if after <= elapsed and level.level not in already_paged
    ]


def next_status_update(last_sent: datetime | None, now: datetime, interval: timedelta) -> bool:
    """Is a status update owed? The first one at once, then one per interval."""
    return last_sent is None or now - last_sent >= interval


# --- documents -----------------------------------------------------------------------------


def incident_dir(plan: Plan, incident_id: str) -> Path:
    return Path(plan.incident_response.document_dir) / incident_id


def write_document(path: Path, text: str) -> Path:
    """Write atomically; an existing document (a re-run) is moved aside, never replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        path.rename(path.with_name(f"{path.stem}.{stamp}{path.suffix}"))
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
    return path


def incident_document(
    incident: dict[str, Any],
    request: IncidentRequest,
    *,
    assessment: str,
    war_room: str,
    commander: str,
    technical_lead: str,
) -> str:
    return render(
        "incident_document",
        incident_id=incident["incident_id"],
        start_time=incident["started_at"],
        severity=request.severity,
        environment=incident["environment"],
        incident_commander=commander,
        technical_lead=technical_lead,
        description=request.description,
        assessment=assessment,
        recovery=request.scenario or "no recovery DAG chosen",
        war_room_channel=war_room,
    ).body


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def post_incident_review(
    incident_id: str,
    runs: list[dict[str, Any]],
    events: dict[int, list[dict[str, Any]]],
    *,
    description: str,
    detected_at: str | None = None,
    resolved_at: str | None = None,
    review_date: str | None = None,
    outcome: str | None = None,
    still_down: list[str] | None = None,
) -> str:
    """The seed's review template, pre-filled from the ledger: every run recorded for the
    incident and every step/gate event of those runs, in time order."""
    starts = [parse_time(r["clock_started_at"]) for r in runs]
    start = min(starts) if starts else None
    rows: list[tuple[datetime, str, str, str]] = []
    if start:
        rows.append((start, "Incident start", "RTO clock started", "-"))
    if detected_at:
        rows.append(
            (parse_time(detected_at), "Detection", "dr_incident_response started", "Airflow")
        )
    for run in runs:
        for event in events.get(int(run["id"]), []):
            finished = event["finished_at"]
            finished = finished if isinstance(finished, datetime) else parse_time(finished)
            rows.append(
                (
                    finished,
                    f"{event['kind']} {event['name']} ({event['status']})",
                    event.get("detail") or "-",
                    run["dag_id"],
                )
            )
    if resolved_at:
        rows.append((parse_time(resolved_at), "Resolution", "Services restored and verified", "-"))
    rows.sort(key=lambda row: row[0])
    table = [
        "| Time | Event | Action Taken | Person Responsible |",
        "|------|-------|--------------|-------------------|",
    ]
    table += [
        f"| {_cell(t.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S UTC'))} | {_cell(e)} | {_cell(a)} | {_cell(p)} |"
        for t, e, a, p in rows
    ]
    end = parse_time(resolved_at) if resolved_at else (rows[-1][0] if rows else None)
    duration = format_duration(end - start) if (start and end) else "unknown"
    if not resolved_at:
        duration += " (not resolved when this review was generated)"
    if still_down:
        duration += f"; STILL DOWN: {', '.join(still_down)}"
    ending = {
        "restored": "restored, verified by an independent re-check",
        "not_restored": "NOT restored: "
        + (", ".join(still_down or []) or "unverified")
        + " still down; escalated",
        "false_positive": "false positive: the alerted components were healthy when checked",
        "approval_timed_out": "nobody decided on the recovery in time; escalated",
        "manual": "no automated recovery; worked by hand",
    }.get(outcome or "", outcome or "unknown")
    metrics = []
    for run in runs:
        achieved = run.get("rto_achieved_seconds")
        loss = run.get("data_loss_seconds")
        metrics.append(
            f"- {run['dag_id']} ({run['run_id']}): {run['outcome']}; RTO target "
            f"{format_duration(timedelta(seconds=run['rto_target_seconds']))}, achieved "
            + (format_duration(timedelta(seconds=achieved)) if achieved is not None else "n/a")
            + (f"; data lost {loss:.1f}s" if loss is not None else "")
        )
    losses = [r["data_loss_seconds"] for r in runs if r.get("data_loss_seconds") is not None]
    failed = [r["dag_id"] for r in runs if r["outcome"] == "failed"]
    return render(
        "post_incident_review",
        incident_id=incident_id,
        review_date=review_date or datetime.now(UTC).strftime("%Y-%m-%d"),
        duration=duration,
        summary=f"{description}\n\nOutcome: {ending}\n\nRuns recorded for this incident: "
        + (", ".join(f"{r['dag_id']} ({r['outcome']})" for r in runs) or "none"),
        timeline_table="\n".join(table),
        data_impact=f"measured data loss {max(losses):.1f}s"
        if losses
        else "not measured by these runs",
        components_affected="see the initial assessment in the incident document",
        detection=f"detected at {detected_at}"
        if detected_at
        else "[How long until incident was detected]",
        recovery="; ".join(f"{r['dag_id']}: {r['outcome']}" for r in runs) or "no recovery run",
        communication="every notification's delivery report is in the incident response run's details",
        recovery_metrics="\n".join(metrics) or "no runs recorded",
        communication_records="the notify tasks' XCom and the channels' own history",
        incident_logs="Airflow task logs of the runs listed under Recovery Metrics"
        + (f"; failed: {', '.join(failed)}" if failed else ""),
    ).body


# --- the commander's decision -------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    subject: str
    body: str


def approval_question(plan: Plan, run: dict[str, Any], assessment: dict[str, Any]) -> Question:
    """What the commander reads before choosing: what is down, what the routed recovery
    would do (its conf as it would be started), and what the other choices are."""
    from tracktion_dr.scenarios import recovery_routes as routes

    scenario = run.get("scenario") or ""
    environment = plan.environment(run["environment"])
    lines = [
        f"**{run.get('incident_id')}** ({run.get('severity')}, {run['environment']}): "
        f"{run.get('description', '')}",
        "",
        f"Assessment: {assessment.get('status', 'unknown')}; down: "
        f"{', '.join(assessment.get('down') or []) or 'none'}; degraded: "
        f"{', '.join(assessment.get('degraded') or []) or 'none'}",
        "",
    ]
    if scenario:
        conf = routes.recovery_conf(
            environment,
            scenario,
            affected=run.get("affected") or [],
            scenario_conf=run.get("scenario_conf") or {},
            incident=run,
            approved_by="(your approval)",
        )
        shown = {k: v for k, v in conf.items() if k not in ("incident_started_at", "notify")}
        destructive = routes.recovery_of(scenario).destructive
        lines += [
            f"Proposed recovery: **{scenario}**"
            + (" (destructive: data or services are moved aside)" if destructive else ""),
            "Plan of actions: start it with " + ", ".join(f"{k}={v}" for k, v in shown.items()),
            "then watch it, re-check the affected components independently, and only then "
            "announce the restoration.",
        ]
    else:
        lines.append("No recovery was routed for this alert: choose one, or recover by hand.")
    lines += [
        "",
        f"Choose a scenario to start it, or '{routes.NO_RECOVERY}'. Without a decision in "
        f"{format_duration(plan.incident_response.approval_timeout)} the incident escalates.",
    ]
    subject = f"Approve the recovery for {run.get('incident_id')}: {scenario or 'choose one'}?"
    return Question(subject=subject, body="\n".join(lines))


# --- closing the incident -----------------------------------------------------------------


@dataclass(frozen=True)
class Closing:
    """How the incident ends, decided from what happened (never from a run's state alone)."""

    outcome: str  # restored | not_restored | false_positive | manual | approval_timed_out
    detail: str
    still_down: list[str] = field(default_factory=list)

    @property
    def restored(self) -> bool:
        return self.outcome == "restored"

    @property
    def escalates(self) -> bool:
        return self.outcome in ("not_restored", "approval_timed_out")


def closing(
    *,
    triage: dict[str, Any] | None,
    decision: dict[str, Any] | None,
    recovery: dict[str, Any] | None,
    verification: dict[str, Any] | None,
) -> Closing:
    if triage and triage.get("false_positive"):
        return Closing("false_positive", triage.get("finding") or "healthy when checked")
    if decision and decision.get("timed_out"):
        return Closing("approval_timed_out", "nobody decided on the recovery in time")
    if recovery is None:
        if decision and decision.get("chosen"):
            return Closing("not_restored", "the chosen recovery did not start", ["recovery"])
        return Closing("manual", "no automated recovery (none routed, or none chosen)")
    if verification and verification.get("restored"):
        return Closing("restored", verification.get("detail") or "verified")
    still_down = list((verification or {}).get("still_down") or [])
    detail = (verification or {}).get("detail") or "not verified"
    if recovery.get("state") != "success":
        detail = f"recovery {recovery.get('dag_id')} ended {recovery.get('state')}; {detail}"
    return Closing("not_restored", detail, still_down or ["unverified"])
