"""Who hears about what: the one notification policy of the project.

Every DAG asks this table which channels an event goes to; nothing else decides. The rule
behind it: **a page wakes somebody, so only what needs a human pages** (a failed recovery,
a breached RTO, a failed backup). A successful or dry run informs the team's chat and mail
and pages nobody; customers (the status page) hear "restored" only from the incident
response, after an independent check (``dr_incident_response``), never from a single run.
"""

from __future__ import annotations

from enum import StrEnum

from tracktion_dr.core.plan import Plan


class RunEvent(StrEnum):
    STARTED = "started"
    SUCCEEDED = "succeeded"
    DRY_RUN = "dry_run"
    FAILED = "failed"
    REFUSED = "refused"
    RTO_BREACHED = "rto_breached"
    BACKUP_FAILED = "backup_failed"


NOTIFICATION_POLICY: dict[RunEvent, tuple[str, ...]] = {
    RunEvent.STARTED: ("slack",),
    RunEvent.SUCCEEDED: ("slack", "email"),
    RunEvent.DRY_RUN: ("slack",),
    RunEvent.FAILED: ("slack", "pagerduty", "email"),
    RunEvent.REFUSED: ("slack",),
    RunEvent.RTO_BREACHED: ("slack", "pagerduty"),
    RunEvent.BACKUP_FAILED: ("slack", "pagerduty"),
}

# Channels that page a human (PagerDuty triggers an incident).
PAGING_CHANNELS = frozenset({"pagerduty"})


def channels_for(plan: Plan, event: RunEvent | str) -> list[str]:
    """The policy's channels for ``event`` that this plan has."""
    return [name for name in NOTIFICATION_POLICY[RunEvent(event)] if name in plan.notifications]


def outcome_event(outcome: str | None, *, refused: bool = False) -> RunEvent:
    """The event a finished run's outcome is ("succeeded", "failed", "dry_run")."""
    if refused:
        return RunEvent.REFUSED
    return {"failed": RunEvent.FAILED, "dry_run": RunEvent.DRY_RUN}.get(
        outcome or "", RunEvent.SUCCEEDED
    )
