"""Retention decisions on a backups tree built in a temp dir (real files, real catalog;
no PostgreSQL needed: listing reads only names and sidecars)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tracktion_dr.backups import retention, snapshots
from tracktion_dr.backups.catalog import BackupKind, Catalog
from tracktion_dr.core.plan import BackupLocations, BackupRetention
from tracktion_dr.postgres import wal

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%SZ")


@pytest.fixture()
def tree(tmp_path: Path):
    folders = {n: tmp_path / n for n in ("logical", "base", "wal", "config", "storage")}
    for folder in folders.values():
        folder.mkdir()
    locations = BackupLocations(
        logical=f"file://{folders['logical']}",
        base=f"file://{folders['base']}",
        wal_archive=f"file://{folders['wal']}",
        configuration=f"file://{folders['config']}",
        storage=f"file://{folders['storage']}",
        expired=f"file://{tmp_path / 'expired'}",
    )
    return folders, locations, tmp_path / "expired"


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload))


def add_dump(folder: Path, moment: datetime, status: str | None = "verified") -> Path:
    path = folder / f"tracktion_{stamp(moment)}.dump"
    path.write_bytes(b"PGDMP" + stamp(moment).encode())
    write_json(
        path.with_name(path.name + ".manifest.json"),
        {"finished_at": moment.isoformat(), "size_bytes": path.stat().st_size, "sha256": "x"},
    )
    if status:
        write_json(
            path.with_name(path.name + ".verification.json"), {"status": status, "reason": "t"}
        )
    return path


def add_base(folder: Path, moment: datetime, segment: int, status: str = "verified") -> Path:
    path = folder / f"base_{stamp(moment)}"
    path.mkdir()
    (path / "PG_VERSION").write_text("15\n")
    lsn = f"0/{segment * 16 * 1024 * 1024 + 40:X}"
    write_json(
        path.with_name(path.name + ".backup_info.json"),
        {
            "end_time": moment.isoformat(),
            "start_time": moment.isoformat(),
            "start_lsn": lsn,
            "stop_lsn": lsn,
            "timeline": 1,
            "size_bytes": 6,
        },
    )
    write_json(path.with_name(path.name + ".verification.json"), {"status": status, "reason": "t"})
    return path


def add_wal(folder: Path, first: int, last: int) -> None:
    for number in range(first, last + 1):
        (folder / wal.Segment.from_number(number).name()).write_bytes(b"w")
    (folder / "00000002.history").write_text("1\t0/5000000\tno recovery target\n")


def test_daily_levels_keep_the_newest_per_day_and_the_wal_they_need(tree):
    folders, locations, _ = tree
    for day in range(10):  # one base backup a day, segment 10*day at its start
        add_base(folders["base"], NOW - timedelta(days=day), segment=100 - 10 * day)
    add_wal(folders["wal"], 1, 105)
    keep = BackupRetention(keep_daily=3, keep_weekly=0)
    report = retention.plan_retention(Catalog(locations), keep)
    kept_bases = sorted(d.id for d in report.kept if d.group == "base_backup")
    assert kept_bases == sorted(f"base_{stamp(NOW - timedelta(days=d))}" for d in range(3))
    # The oldest kept base backup starts at segment 80: everything from there is needed.
    assert report.wal_cutoff == wal.Segment.from_number(80).name()
    wal_kept = {d.id for d in report.kept if d.group == "wal_archive"}
    wal_expired = {d.id for d in report.expired if d.group == "wal_archive"}
    assert wal.Segment.from_number(80).name() in wal_kept
    assert wal.Segment.from_number(79).name() in wal_expired
    assert len(wal_kept) == 105 - 80 + 1
    assert "00000002.history" not in wal_kept | wal_expired, "history files are never touched"


def test_newest_verified_is_kept_however_old_and_failures_do_not_take_a_slot(tree):
    folders, locations, _ = tree
    old_good = add_dump(folders["logical"], NOW - timedelta(days=30), "verified")
    for day in range(3):
        add_dump(folders["logical"], NOW - timedelta(days=day, hours=1), None)  # unverified
    failed_today = add_dump(folders["logical"], NOW, "failed")
    report = retention.plan_retention(
        Catalog(locations), BackupRetention(keep_daily=2, keep_weekly=0)
    )
    by_id = {d.id: d for d in report.decisions}
    assert by_id[old_good.name].keep and "newest verified backup" in by_id[old_good.name].reasons
    assert by_id[failed_today.name].keep, "a recent failure is kept as evidence"
    # Today's slot went to the unverified dump of today, not to the failed one.
    assert by_id[f"tracktion_{stamp(NOW - timedelta(hours=1))}.dump"].keep
    assert not by_id[f"tracktion_{stamp(NOW - timedelta(days=2, hours=1))}.dump"].keep


def test_weekly_level_keeps_one_per_iso_week(tree):
    folders, locations, _ = tree
    for day in range(0, 35):
        add_dump(folders["logical"], NOW - timedelta(days=day))
    report = retention.plan_retention(
        Catalog(locations), BackupRetention(keep_daily=1, keep_weekly=4)
    )
    kept = [d for d in report.kept if d.group.startswith("logical_dump")]
    assert len(kept) == 4  # today (daily + weekly) and the newest of 3 earlier weeks
    weeks = {d.finished_at.isocalendar().week for d in kept}
    assert len(weeks) == 4


def test_without_a_kept_base_backup_no_wal_is_expired(tree):
    folders, locations, _ = tree
    add_wal(folders["wal"], 1, 5)
    report = retention.plan_retention(Catalog(locations), BackupRetention())
    assert not [d for d in report.decisions if d.group == "wal_archive"]
    assert "every WAL file is kept" in report.notes[0]


def test_a_kept_incremental_keeps_its_chain(tree, tmp_path):
    folders, locations, _ = tree
    source = tmp_path / "audio"
    source.mkdir()
    (source / "a.mp3").write_bytes(b"a")
    full = snapshots.storage_snapshot("audio", source, folders["storage"], "full")
    (source / "b.mp3").write_bytes(b"b")
    incremental = snapshots.storage_snapshot("audio", source, folders["storage"], "incremental")
    manifest = snapshots.read_manifest(incremental)
    assert manifest["based_on"] == full.name and manifest["level"] == "incremental"
    # Age the full one far beyond the levels: the incremental still needs it.
    for path in (full,):
        m = snapshots.read_manifest(path)
        m["finished_at"] = (NOW - timedelta(days=90)).isoformat()
        write_json(path.with_name(path.name + ".manifest.json"), m)
    report = retention.plan_retention(
        Catalog(locations), BackupRetention(keep_daily=1, keep_weekly=0)
    )
    by_name = {d.path.name: d for d in report.decisions}
    assert by_name[full.name].keep and by_name[full.name].reasons == (
        "a kept incremental builds on it",
    )
    assert Catalog(locations).snapshots(BackupKind.STORAGE_SNAPSHOT)[0].path == incremental


def test_dry_run_moves_nothing_and_apply_moves_aside_with_sidecars(tree):
    folders, locations, expired = tree
    for day in range(4):
        add_base(folders["base"], NOW - timedelta(days=day), segment=50 - 10 * day)
        add_dump(folders["logical"], NOW - timedelta(days=day))
    add_wal(folders["wal"], 15, 55)
    keep = BackupRetention(keep_daily=2, keep_weekly=0)
    before = sorted(p.name for folder in folders.values() for p in folder.iterdir())
    dry = retention.apply_retention(
        Catalog(locations), keep, expired_location=locations.expired, dry_run=True
    )
    assert dry.expired and not dry.moved
    assert sorted(p.name for folder in folders.values() for p in folder.iterdir()) == before
    assert not expired.exists()

    done = retention.apply_retention(
        Catalog(locations), keep, expired_location=locations.expired, dry_run=False
    )
    assert done.moved
    oldest = f"base_{stamp(NOW - timedelta(days=3))}"
    assert (expired / "base_backup" / oldest / "PG_VERSION").exists()
    assert (expired / "base_backup" / f"{oldest}.backup_info.json").exists()
    assert (expired / "base_backup" / f"{oldest}.verification.json").exists()
    catalog = Catalog(locations)
    assert len(catalog.base_backups()) == 2 and len(catalog.dumps()) == 2
    # Every segment the kept base backups need is still in the archive, continuous.
    oldest_kept = min(catalog.base_backups(), key=lambda e: e.finished_at)
    state = catalog.wal_archive(since=wal.Segment.from_lsn(oldest_kept.start_lsn))
    assert state.continuous and state.first == wal.Segment.from_number(40).name()
    assert (expired / "wal_archive" / wal.Segment.from_number(39).name()).exists()
    # Running it again changes nothing more.
    again = retention.apply_retention(
        Catalog(locations), keep, expired_location=locations.expired, dry_run=False
    )
    assert not again.moved


def test_no_expired_area_means_report_only(tree):
    folders, locations, _ = tree
    for day in range(3):
        add_dump(folders["logical"], NOW - timedelta(days=day))
    report = retention.apply_retention(
        Catalog(locations),
        BackupRetention(keep_daily=1, keep_weekly=0),
        expired_location=None,
        dry_run=False,
    )
    assert report.dry_run and not report.moved and len(report.expired) == 2
    assert "nothing moved" in report.notes[-1]
    assert len(list(folders["logical"].glob("*.dump"))) == 3


def test_every_backup_of_a_kept_day_is_kept(tree):
    folders, locations, _ = tree
    for hour in (1, 5, 9):
        add_dump(folders["logical"], NOW - timedelta(hours=hour))
    add_dump(folders["logical"], NOW - timedelta(days=1))
    add_dump(folders["logical"], NOW - timedelta(days=2))
    report = retention.plan_retention(
        Catalog(locations), BackupRetention(keep_daily=2, keep_weekly=0)
    )
    assert len([d for d in report.kept]) == 4 and len(report.expired) == 1
