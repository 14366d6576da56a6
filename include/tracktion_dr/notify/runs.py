"""The messages every recovery run sends: started, succeeded or failed (breach is the
RTO gate's own escalation, in ``dag_kit``). Sent only when the run's ``notify`` is on,
best effort (a delivery failure is logged and returned, never raised)."""

from __future__ import annotations

from typing import Any

from tracktion_dr.notify.delivery import deliver
from tracktion_dr.notify.messages import DrMessage
from tracktion_dr.plan import Plan

START_CHANNELS = ("slack",)
SUCCESS_CHANNELS = ("slack", "email", "status_page")
FAILURE_CHANNELS = ("slack", "pagerduty", "email")


def _known(plan: Plan, channels: tuple[str, ...]) -> list[str]:
    return [name for name in channels if name in plan.notifications]


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
    return deliver(plan, message, channels=_known(plan, START_CHANNELS)).as_dict()


def notify_outcome(
    plan: Plan, incident: dict[str, Any], timeline: dict[str, Any]
) -> dict[str, Any]:
    from tracktion_dr.dag_kit import outcome_message

    if not incident.get("notify"):
        return {"sent": [], "failed": {}, "skipped": "notify is off"}
    channels = FAILURE_CHANNELS if timeline.get("outcome") == "failed" else SUCCESS_CHANNELS
    return deliver(plan, outcome_message(plan, timeline), channels=_known(plan, channels)).as_dict()
