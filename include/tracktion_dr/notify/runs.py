"""The messages every recovery run sends: started, and its outcome (succeeded, failed,
dry run, refused); the RTO breach is the gate's own escalation. Channels come from the one
policy table (``notify.policy``). Sent only when the run's ``notify`` is on, best effort (a
delivery failure is logged and returned, never raised)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tracktion_dr.core.plan import Plan, format_duration
from tracktion_dr.notify.delivery import deliver
from tracktion_dr.notify.messages import DrMessage
from tracktion_dr.notify.policy import RunEvent, channels_for, outcome_event


def notify_started(
    plan: Plan, incident: dict[str, Any], dag_id: str, summary: str
) -> dict[str, Any]:
    if not incident.get("notify"):
        return {"sent": [], "failed": {}, "skipped": "notify is off"}
    message = DrMessage(
        title=f"{dag_id} {incident['incident_id']}: STARTED",
        text=summary,
        severity="warning",
        incident_id=incident["incident_id"],
        fields={"environment": incident["environment"], "dry run": str(incident["dry_run"])},
    )
    return deliver(plan, message, channels=channels_for(plan, RunEvent.STARTED)).as_dict()


def outcome_message(plan: Plan, timeline: dict[str, Any]) -> DrMessage:
    achieved = timeline.get("rto_achieved_seconds")
    fields = {
        "outcome": timeline["outcome"],
        "RTO target": format_duration(timedelta(seconds=timeline["rto_target_seconds"])),
        "RTO achieved": format_duration(timedelta(seconds=achieved))
        if achieved is not None
        else "not reached",
    }
    if timeline.get("data_loss_seconds") is not None:
        fields["data lost"] = f"{timeline['data_loss_seconds']:.1f}s"
    failed = timeline["outcome"] == "failed"
    return DrMessage(
        title=f"{timeline['dag_id']} {timeline['incident_id']}: {timeline['outcome'].upper()}",
        text=f"environment {timeline['environment']}; failed tasks: "
        f"{', '.join(timeline['details'].get('failed_tasks') or []) or 'none'}",
        severity="error" if failed else "info",
        incident_id=timeline["incident_id"],
        fields=fields,
        # One PagerDuty incident per recovery run: a re-sent failure groups with it.
        dedup_key=f"dr-run:{timeline['dag_id']}:{timeline['incident_id']}",
    )


def notify_outcome(
    plan: Plan, incident: dict[str, Any] | None, timeline: dict[str, Any]
) -> dict[str, Any]:
    """The outcome to the policy's channels: a success pages nobody."""
    if not incident or not incident.get("notify"):
        return {"sent": [], "failed": {}, "skipped": "notify is off"}
    if timeline.get("refused"):
        return {"sent": [], "failed": {}, "skipped": "refused before anything was touched"}
    event = outcome_event(timeline.get("outcome"))
    channels = channels_for(plan, event)
    return {
        **deliver(plan, outcome_message(plan, timeline), channels=channels).as_dict(),
        "event": str(event),
    }
