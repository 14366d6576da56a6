"""Watching the backups: WAL archive continuity and freshness, and RPO per data category.

Both answer one question an operator asks at 3 a.m.: *if we lost everything now, how much
would we lose?* - measured from what is actually on disk, never from a schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tracktion_dr.backups import snapshots
from tracktion_dr.backups.catalog import Catalog, Status, local_path
from tracktion_dr.core.plan import Environment, Plan, format_duration
from tracktion_dr.postgres import wal


@dataclass(frozen=True)
class WalWatch:
    since: str | None  # first segment required (the oldest kept base backup's start)
    base_backup: str | None
    last: str | None
    missing: list[str]
    newest_archived_at: datetime | None
    age_seconds: float | None
    rpo_seconds: float
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "since": self.since,
            "base_backup": self.base_backup,
            "last": self.last,
            "missing": self.missing,
            "newest_archived_at": self.newest_archived_at.isoformat()
            if self.newest_archived_at
            else None,
            "age_seconds": self.age_seconds,
            "rpo_seconds": self.rpo_seconds,
            "problems": self.problems,
        }


def transactional_rpo(plan: Plan, environment: Environment) -> timedelta:
    """The strictest RPO among the environment's databases (their tier's and category's)."""
    targets = [
        min(plan.tiers[db.tier].rpo, plan.data_categories[db.data_category].rpo)
        for db in environment.databases.values()
    ]
    return min(targets) if targets else plan.data_categories["transactional"].rpo


def watch_wal(catalog: Catalog, rpo: timedelta, *, now: datetime | None = None) -> WalWatch:
    """The archive must be continuous from the oldest kept base backup's start segment to
    its newest segment, and that newest segment must be younger than ``rpo``."""
    now = now or datetime.now(UTC)
    bases = [e for e in catalog.base_backups() if e.status is not Status.FAILED and e.start_lsn]
    problems: list[str] = []
    oldest = min(bases, key=lambda e: e.finished_at) if bases else None
    since = (
        wal.Segment.from_lsn(oldest.start_lsn, oldest.timeline or 1)  # type: ignore[arg-type]
        if oldest
        else None
    )
    if oldest is None:
        problems.append("no usable base backup: the WAL archive cannot be replayed from anything")
    state = catalog.wal_archive(since=since)
    if state.missing:
        shown = ", ".join(state.missing[:10])
        more = f" and {len(state.missing) - 10} more" if len(state.missing) > 10 else ""
        problems.append(
            f"WAL archive gap: missing segment(s) {shown}{more}"
            f" (needed from {since.name() if since else state.first} to {state.last})"
        )
    age = (now - state.newest_archived_at).total_seconds() if state.newest_archived_at else None
    if age is not None and age > rpo.total_seconds():
        problems.append(
            f"WAL archive stale: newest segment {state.last} archived "
            f"{format_duration(timedelta(seconds=age))} ago, RPO is {format_duration(rpo)}"
        )
    return WalWatch(
        since=since.name() if since else state.first,
        base_backup=oldest.id if oldest else None,
        last=state.last,
        missing=list(state.missing),
        newest_archived_at=state.newest_archived_at,
        age_seconds=age,
        rpo_seconds=rpo.total_seconds(),
        problems=problems,
    )


@dataclass(frozen=True)
class RpoStatus:
    category: str
    target_seconds: float
    newest_point: datetime | None
    age_seconds: float | None
    source: str
    present: bool = True

    @property
    def ok(self) -> bool:
        return not self.present or (
            self.age_seconds is not None and self.age_seconds <= self.target_seconds
        )

    def sentence(self) -> str:
        target = format_duration(timedelta(seconds=self.target_seconds))
        if not self.present:
            return f"{self.category}: nothing of this category in the environment"
        if self.newest_point is None or self.age_seconds is None:
            return f"{self.category}: NO restorable point at all ({self.source}); RPO {target}"
        age = format_duration(timedelta(seconds=self.age_seconds))
        verdict = "ok" if self.ok else "BREACHED"
        return (
            f"{self.category}: newest restorable point {self.newest_point.isoformat()} "
            f"({age} old, {self.source}) vs RPO {target}: {verdict}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "ok": self.ok,
            "target_seconds": self.target_seconds,
            "newest_point": self.newest_point.isoformat() if self.newest_point else None,
            "age_seconds": self.age_seconds,
            "source": self.source,
            "present": self.present,
            "sentence": self.sentence(),
        }


def rpo_statuses(
    plan: Plan, environment: Environment, catalog: Catalog, *, now: datetime | None = None
) -> list[RpoStatus]:
    """For each data category of the plan: age of its newest restorable point vs its RPO.

    Transactional data: the newest commit replayable from the WAL archive (or the newest
    good dump's start, if later). File storage: the newest copy dr_storage_recovery can
    restore each area from - the start of the last sync pass when the mirror is intact,
    else the newest snapshot - named in ``source``; the *oldest* of the areas counts.
    Configuration: the newest snapshot.
    """
    now = now or datetime.now(UTC)
    storage_root = local_path(environment.backups.storage)
    config_root = local_path(environment.backups.configuration)
    statuses = []
    for name, category in plan.data_categories.items():
        points: list[datetime | None] = []
        sources: list[str] = []
        present = False
        if any(db.data_category == name for db in environment.databases.values()):
            present = True
            wal_point = catalog.newest_restorable_point()
            dumps = [e for e in catalog.dumps() if e.status is not Status.FAILED]
            dump_point = max((e.started_at or e.finished_at for e in dumps), default=None)
            best = max((p for p in (wal_point, dump_point) if p), default=None)
            points.append(best)
            sources.append("WAL archive" if best is not None and best == wal_point else "dumps")
        for area_name, area in environment.storage.items():
            if area.data_category == name:
                present = True
                point, copy = snapshots.newest_storage_point(storage_root, area_name)
                points.append(point)
                sources.append(f"storage {area_name}: {copy}")
        if name == "configuration" and environment.config_paths:
            present = True
            points.append(snapshots.newest_config_point(config_root))
            sources.append("config snapshots")
        # The weakest source decides: one area never backed up is a breach.
        newest = None if not points or any(p is None for p in points) else min(points)  # type: ignore[type-var]
        statuses.append(
            RpoStatus(
                category=name,
                target_seconds=category.rpo.total_seconds(),
                newest_point=newest,
                age_seconds=(now - newest).total_seconds() if newest else None,
                source=", ".join(sources) or "-",
                present=present,
            )
        )
    return statuses


def storage_root(environment: Environment) -> Path:
    return local_path(environment.backups.storage)
