"""Backup retention: the seed's daily and weekly levels, and nothing riskier.

This is the one place in the project that removes backups, so it is conservative:

* **Move aside, never delete.** Expired backups (with their sidecars) are moved into the
  plan's ``backups.expired`` area, keeping their relative layout; emptying that area is an
  operator's (or a storage lifecycle rule's) decision. With no ``expired`` area in the plan,
  retention only reports.
* **Kept, per group** (each database's dumps, the base backups, the configuration
  snapshots, each storage area's snapshots): every non-failed backup of the last
  ``keep_daily`` days that have one, and the newest of each of the last ``keep_weekly`` ISO
  weeks;
  always the newest *verified* backup, however old; a failed backup while it is younger
  than the oldest daily keeper (evidence for whoever investigates it); every snapshot a kept
  incremental builds on.
* **WAL**: a segment is expired only if it is older than the start segment of *every* kept
  base backup (failed ones included: never strand a backup someone may still repair).
  Without a kept base backup with a known start, no WAL is expired. ``.history`` files are
  always kept (tiny, and needed to follow timelines).
* **Dry run** computes and reports exactly the same decisions and moves nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tracktion_dr.backups.catalog import BackupEntry, BackupKind, Catalog, Status, local_path
from tracktion_dr.backups.snapshots import read_manifest
from tracktion_dr.core.plan import BackupRetention
from tracktion_dr.postgres import wal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    group: str
    id: str
    path: Path
    keep: bool
    reasons: tuple[str, ...]
    finished_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "id": self.id,
            "path": str(self.path),
            "keep": self.keep,
            "reasons": list(self.reasons),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }


@dataclass
class RetentionReport:
    dry_run: bool
    decisions: list[Decision] = field(default_factory=list)
    wal_cutoff: str | None = None
    moved: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def expired(self) -> list[Decision]:
        return [d for d in self.decisions if not d.keep]

    @property
    def kept(self) -> list[Decision]:
        return [d for d in self.decisions if d.keep]

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "wal_cutoff": self.wal_cutoff,
            "kept": [d.as_dict() for d in self.kept],
            "expired": [d.as_dict() for d in self.expired],
            "moved": self.moved,
            "notes": self.notes,
        }

    def summary(self) -> str:
        verb = "would move" if self.dry_run else "moved"
        expired_wal = sum(1 for d in self.expired if d.group == "wal_archive")
        return (
            f"{len(self.kept)} kept, {len(self.expired) - expired_wal} backups and "
            f"{expired_wal} WAL files expired ({verb} aside); WAL cutoff {self.wal_cutoff}"
        )


def _gfs(entries: Sequence[BackupEntry], keep: BackupRetention) -> dict[str, list[str]]:
    """id -> reasons to keep, for the daily/weekly levels, the newest verified backup and
    recent failures. ``entries`` is one group, any order."""
    reasons: dict[str, list[str]] = {e.id: [] for e in entries}
    usable = sorted(
        (e for e in entries if e.status is not Status.FAILED),
        key=lambda e: e.finished_at,
        reverse=True,
    )
    days: list[str] = []
    weeks: list[str] = []
    for entry in usable:
        # Daily level: *every* backup of the newest ``keep_daily`` days that have one (an
        # extra manual backup taken the same day is not thinned out). Days "that have one",
        # not calendar days: if backups stop, retention does not eat the last ones.
        day = entry.finished_at.date().isoformat()
        if day not in days and len(days) < keep.keep_daily:
            days.append(day)
        if day in days:
            reasons[entry.id].append(f"daily {day}")
        iso = entry.finished_at.isocalendar()
        week = f"{iso.year}-W{iso.week:02d}"
        if week not in weeks and len(weeks) < keep.keep_weekly:
            weeks.append(week)
            reasons[entry.id].append(f"weekly {week}")
    verified = [e for e in usable if e.status is Status.VERIFIED]
    if verified:
        reasons[verified[0].id].append("newest verified backup")
    daily_keepers = [e.finished_at for e in usable if reasons[e.id]]
    horizon = min(daily_keepers) if daily_keepers else None
    for entry in entries:
        if entry.status is Status.FAILED and (horizon is None or entry.finished_at >= horizon):
            reasons[entry.id].append("failed, kept as evidence within the retention window")
    return reasons


def _decide(group: str, entries: Sequence[BackupEntry], keep: BackupRetention) -> list[Decision]:
    reasons = _gfs(entries, keep)
    return [
        Decision(
            group,
            e.id,
            e.path,
            bool(reasons[e.id]),
            tuple(reasons[e.id]) or ("older than the daily and weekly levels",),
            e.finished_at,
        )
        for e in entries
    ]


def _keep_chains(decisions: list[Decision]) -> list[Decision]:
    """A kept incremental snapshot keeps every snapshot it builds on."""
    by_name = {d.path.name: d for d in decisions}
    needed: set[str] = set()
    for decision in decisions:
        if not decision.keep:
            continue
        manifest = read_manifest(decision.path) or {}
        base = manifest.get("based_on")
        while base and base in by_name and base not in needed:
            needed.add(base)
            base = (read_manifest(by_name[base].path) or {}).get("based_on")
    return [
        d
        if d.keep or d.path.name not in needed
        else Decision(
            d.group, d.id, d.path, True, ("a kept incremental builds on it",), d.finished_at
        )
        for d in decisions
    ]


def plan_retention(catalog: Catalog, keep: BackupRetention) -> RetentionReport:
    """Decide, for every backup at the catalog's locations, whether it is kept and why."""
    report = RetentionReport(dry_run=True)
    dumps = catalog.dumps()
    for database in sorted({e.database for e in dumps if e.database}):
        report.decisions += _decide(
            f"logical_dump:{database}", [e for e in dumps if e.database == database], keep
        )
    bases = catalog.base_backups()
    base_decisions = _decide("base_backup", bases, keep)
    report.decisions += base_decisions
    config = catalog.snapshots(BackupKind.CONFIG_SNAPSHOT)
    report.decisions += _keep_chains(_decide("config_snapshot", config, keep))
    storage = catalog.snapshots(BackupKind.STORAGE_SNAPSHOT)
    for area in sorted({Path(e.id).parts[0] for e in storage}):
        group = [e for e in storage if Path(e.id).parts[0] == area]
        report.decisions += _keep_chains(_decide(f"storage_snapshot:{area}", group, keep))

    # WAL: everything from the oldest start among the kept base backups is needed.
    kept_ids = {d.id for d in base_decisions if d.keep}
    starts = [
        wal.Segment.from_lsn(e.start_lsn, e.timeline or 1)
        for e in bases
        if e.id in kept_ids and e.start_lsn
    ]
    if not starts:
        report.notes.append("no kept base backup with a known start: every WAL file is kept")
        return report
    cutoff = min(starts)
    report.wal_cutoff = cutoff.name()
    archive = local_path(catalog.locations.wal_archive)
    for path in sorted(archive.iterdir()) if archive.is_dir() else []:
        segment = _segment_of(path.name)
        if segment is None:
            continue  # .history files, partials, anything we do not understand
        needed = segment.number >= cutoff.number
        report.decisions.append(
            Decision(
                "wal_archive",
                path.name,
                path,
                needed,
                (f"needed from {cutoff.name()} on",)
                if needed
                else (f"before {cutoff.name()}, the oldest kept base backup's start",),
            )
        )
    return report


def _segment_of(name: str) -> wal.Segment | None:
    """The segment a WAL archive file belongs to: ``<segment>``, ``<segment>.zst`` or
    ``<segment>.<off>.backup``."""
    head = name.split(".", 1)[0]
    if name != head and not name.endswith((".backup", wal.COMPRESSED_SUFFIX)):
        return None
    try:
        return wal.Segment.parse(head)
    except ValueError:
        return None


def _sidecars(path: Path) -> list[Path]:
    """A backup's description files beside it: ``<name>.manifest.json``, ``.verification.json``,
    ``.backup_info.json`` (not ``<name>.*`` in general: a dump's name is a prefix of nothing
    else, but be exact anyway)."""
    return [
        path.with_name(path.name + suffix)
        for suffix in (".manifest.json", ".verification.json", ".backup_info.json")
        if path.with_name(path.name + suffix).exists()
    ]


def _move(path: Path, source_root: Path, expired_root: Path) -> Path:
    target = expired_root / path.relative_to(source_root)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        raise FileExistsError(f"{target} already exists in the expired area: not overwriting")
    try:
        os.rename(path, target)
    except OSError:  # another file system: copy then remove the source (shutil does both)
        shutil.move(str(path), str(target))
    return target


def apply_retention(
    catalog: Catalog,
    keep: BackupRetention,
    *,
    expired_location: str | None,
    dry_run: bool,
    on_move: Callable[[Path, Path], None] | None = None,
) -> RetentionReport:
    """Decide, then (unless ``dry_run`` or no expired area) move expired backups aside."""
    report = plan_retention(catalog, keep)
    if expired_location is None and not dry_run:
        report.notes.append("the plan names no backups.expired area: nothing moved (report only)")
        dry_run = True
    report.dry_run = dry_run
    if dry_run:
        for decision in report.expired:
            log.info("would move aside %s (%s)", decision.path, "; ".join(decision.reasons))
        return report
    assert expired_location is not None
    expired_root = local_path(expired_location)
    roots = {
        "logical_dump": local_path(catalog.locations.logical),
        "base_backup": local_path(catalog.locations.base),
        "config_snapshot": local_path(catalog.locations.configuration),
        "storage_snapshot": local_path(catalog.locations.storage),
        "wal_archive": local_path(catalog.locations.wal_archive),
    }
    for decision in report.expired:
        kind = decision.group.split(":", 1)[0]
        source_root = roots[kind]
        destination = expired_root / kind
        # The backup itself first, then its sidecars: a backup without sidecars left behind
        # is never listed, while sidecars without their backup would be harmless either way.
        for path in [decision.path, *_sidecars(decision.path)]:
            target = _move(path, source_root, destination)
            report.moved.append(str(target))
            if on_move:
                on_move(path, target)
        log.info("moved aside %s (%s)", decision.path, "; ".join(decision.reasons))
    return report
