"""The RTO clock, gate budgets, and a run's timeline.

The clock starts at ``incident_started_at`` (default: the run's start). Each gate is a
sensor whose timeout is what is left of the tier's RTO when it starts waiting; it records
when it opened. RTO achieved = last gate opened - clock start. Data loss is measured, never
assumed (see ``measure``): the incident time minus the newest surviving committed write.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from tracktion_dr.core.plan import format_duration

Outcome = Literal["succeeded", "failed", "dry_run"]

# A gate always gets at least this long, even when the budget is spent: it still has to
# find out whether the system is back, to report "recovered, but late" honestly.
MINIMUM_GATE_SECONDS = 30.0


class RtoBreached(RuntimeError):
    """A gate did not open within what was left of the RTO budget."""

    def __init__(self, gate: str, elapsed: timedelta, budget: timedelta):
        self.gate, self.elapsed, self.budget = gate, elapsed, budget
        super().__init__(
            f"RTO breached at {gate}: {format_duration(elapsed)} of {format_duration(budget)}"
        )


def parse_time(value: str | datetime) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class RtoClock:
    started_at: datetime
    budget: timedelta

    def elapsed(self, now: datetime | None = None) -> timedelta:
        return (now or datetime.now(UTC)) - self.started_at

    def remaining(self, now: datetime | None = None) -> timedelta:
        return self.budget - self.elapsed(now)

    def gate_timeout_seconds(self, now: datetime | None = None) -> float:
        return max(self.remaining(now).total_seconds(), MINIMUM_GATE_SECONDS)

    def breach(self, gate: str, now: datetime | None = None) -> RtoBreached:
        return RtoBreached(gate, self.elapsed(now), self.budget)


@dataclass(frozen=True)
class Event:
    """One step or gate of a run, as recorded (times in UTC ISO 8601)."""

    name: str
    kind: Literal["step", "gate"]
    started_at: str
    finished_at: str
    status: Literal["succeeded", "failed", "skipped"]
    detail: str = ""
    # What the event restores when it succeeds. Service gates restore service (RTO);
    # re-seeding a standby or resuming backups restores redundancy, recorded separately.
    milestone: Literal["", "service", "redundancy"] = ""

    def duration(self) -> timedelta:
        return parse_time(self.finished_at) - parse_time(self.started_at)


@dataclass
class Timeline:
    incident_id: str
    dag_id: str
    run_id: str
    environment: str
    clock_started_at: str
    rto_target_seconds: float
    rpo_target_seconds: float | None = None
    events: list[Event] = field(default_factory=list)
    outcome: Outcome = "succeeded"
    data_loss_seconds: float | None = None
    backup_used: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def _since_clock(self, events: list[Event]) -> float | None:
        if not events:
            return None
        last = max(parse_time(e.finished_at) for e in events)
        return (last - parse_time(self.clock_started_at)).total_seconds()

    @property
    def rto_achieved_seconds(self) -> float | None:
        """When service was restored: the last service gate of the run opened (a gate is a
        service gate unless it says it restores redundancy)."""
        return self._since_clock(
            [
                e
                for e in self.events
                if e.kind == "gate" and e.status == "succeeded" and e.milestone != "redundancy"
            ]
        )

    @property
    def redundancy_restored_seconds(self) -> float | None:
        """When redundancy was back (standby streaming again): not part of the RTO."""
        return self._since_clock(
            [e for e in self.events if e.milestone == "redundancy" and e.status == "succeeded"]
        )

    @property
    def rto_met(self) -> bool | None:
        achieved = self.rto_achieved_seconds
        return None if achieved is None else achieved <= self.rto_target_seconds

    @property
    def rpo_met(self) -> bool | None:
        if self.data_loss_seconds is None or self.rpo_target_seconds is None:
            return None
        return self.data_loss_seconds <= self.rpo_target_seconds

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Timeline:
        """The inverse of :meth:`as_dict` (derived fields are recomputed, not read)."""
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["events"] = [Event(**e) for e in data.get("events") or []]
        return cls(**fields)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rto_achieved_seconds"] = self.rto_achieved_seconds
        data["redundancy_restored_seconds"] = self.redundancy_restored_seconds
        data["rto_met"] = self.rto_met
        data["rpo_met"] = self.rpo_met
        return data

    def render(self) -> str:
        """The timeline as a table an operator reads at the end of a run."""
        start = parse_time(self.clock_started_at)
        lines = [
            f"=== {self.dag_id} {self.incident_id} ({self.environment}): {self.outcome.upper()} ===",
            f"clock started {start.isoformat()}",
            f"{'T+':>10}  {'KIND':<5} {'STATUS':<10} {'TOOK':>8}  NAME / DETAIL",
        ]
        for event in sorted(self.events, key=lambda e: e.finished_at):
            offset = parse_time(event.finished_at) - start
            lines.append(
                f"{format_duration(offset):>10}  {event.kind:<5} {event.status:<10} "
                f"{format_duration(event.duration()):>8}  {event.name}"
                + (f" - {event.detail}" if event.detail else "")
            )
        achieved = self.rto_achieved_seconds
        target = format_duration(timedelta(seconds=self.rto_target_seconds))
        if achieved is None:
            lines.append(f"RTO: not reached (target {target})")
        else:
            verdict = "met" if self.rto_met else "MISSED"
            lines.append(
                f"RTO: {format_duration(timedelta(seconds=achieved))} achieved vs {target} target: {verdict}"
            )
        redundancy = self.redundancy_restored_seconds
        if redundancy is not None:
            lines.append(
                f"Redundancy restored at T+{format_duration(timedelta(seconds=redundancy))} (not part of the RTO)"
            )
        if self.data_loss_seconds is not None and self.rpo_target_seconds is not None:
            verdict = "met" if self.rpo_met else "MISSED"
            lines.append(
                f"Data lost: {self.data_loss_seconds:.1f}s of writes vs RPO "
                f"{format_duration(timedelta(seconds=self.rpo_target_seconds))}: {verdict}"
            )
        return "\n".join(lines)
