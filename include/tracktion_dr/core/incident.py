"""Incident identity and the inputs every recovery DAG shares.

``incident_id`` follows the seed's ``DR-YYYYMMDD-HHMMSS`` so ids from the old scripts, the
alerting rules and this project sort and grep the same way. Inputs are checked here, before
any action, and a bad one raises ``InvalidInput`` naming the field and the reason.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from tracktion_dr.core.errors import InvalidInput

__all__ = ["InvalidInput"]

INCIDENT_ID_PATTERN = r"^DR-\d{8}-\d{6}$"
_INCIDENT_ID = re.compile(INCIDENT_ID_PATTERN)

# A clock start further back than this is almost certainly a typo (wrong year or month);
# refusing it keeps an RTO report from claiming a 400-day outage.
MAX_INCIDENT_AGE = timedelta(days=7)
CLOCK_SKEW_ALLOWANCE = timedelta(minutes=5)


def new_incident_id(now: datetime | None = None) -> str:
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("DR-%Y%m%d-%H%M%S")


def parse_incident_started_at(value: str | None, default: datetime, now: datetime) -> datetime:
    """The RTO clock start: an ISO 8601 timestamp *with* a zone, or the run's start."""
    if value is None or not str(value).strip():
        return default.astimezone(UTC)
    try:
        moment = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            "incident_started_at",
            f"not an ISO 8601 timestamp: {value!r} (e.g. 2026-11-26T03:12:00Z)",
        ) from None
    if moment.tzinfo is None:
        raise InvalidInput(
            "incident_started_at",
            f"{value!r} has no time zone; add one (Z or +01:00) so the RTO clock is unambiguous",
        )
    if moment > now + CLOCK_SKEW_ALLOWANCE:
        raise InvalidInput("incident_started_at", f"{value!r} is in the future")
    if now - moment > MAX_INCIDENT_AGE:
        raise InvalidInput(
            "incident_started_at", f"{value!r} is more than {MAX_INCIDENT_AGE.days} days ago"
        )
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class IncidentContext:
    """What a run is about; safe to put in XCom (no secrets)."""

    incident_id: str
    started_at: str  # ISO 8601, UTC: when the RTO clock started
    environment: str
    dry_run: bool
    notify: bool
    plan_name: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def resolve_incident(
    params: dict[str, object],
    *,
    run_started_at: datetime,
    known_environments: list[str],
    plan_name: str,
    now: datetime | None = None,
) -> IncidentContext:
    """Check the common params and fill in the defaults (id from the clock start)."""
    now = now or datetime.now(UTC)
    environment = str(params.get("environment") or "")
    if environment not in known_environments:
        raise InvalidInput(
            "environment",
            f"{environment!r} is not one of the plan's environments {known_environments}",
        )
    started_at = parse_incident_started_at(
        params.get("incident_started_at"),
        default=run_started_at,
        now=now,  # type: ignore[arg-type]
    )
    incident_id = str(params.get("incident_id") or "").strip()
    if not incident_id:
        incident_id = new_incident_id(started_at)
    elif not _INCIDENT_ID.match(incident_id):
        raise InvalidInput("incident_id", f"{incident_id!r} does not match DR-YYYYMMDD-HHMMSS")
    return IncidentContext(
        incident_id=incident_id,
        started_at=started_at.isoformat(),
        environment=environment,
        dry_run=bool(params.get("dry_run", False)),
        notify=bool(params.get("notify", False)),
        plan_name=plan_name,
    )


def check_confirmation(
    required: bool, typed: object, target: str, environment: str = "this"
) -> None:
    """A destructive run against an environment that demands it must be confirmed by
    typing ``RESTORE <target>`` (like deleting a repository on GitHub)."""
    if not required:
        return
    expected = f"RESTORE {target}"
    if str(typed or "").strip() != expected:
        raise InvalidInput(
            "confirm",
            f"the {environment} environment needs the typed confirmation {expected!r} "
            f"for a destructive run (got {str(typed or '') or 'nothing'!r})",
        )
