"""dr_storage_recovery's decisions (scenarios.storage) on real files and real snapshots in
a temporary directory (the plan's paths follow DR_SANDBOX_HOME), without a sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracktion_dr.backups.snapshots import storage_snapshot
from tracktion_dr.core.errors import InvalidInput, NoUsableBackup, Refused, ValidationFailed
from tracktion_dr.core.plan import load_plan
from tracktion_dr.files.storage_integrity import AreaReport
from tracktion_dr.scenarios import storage

ROOT = Path(__file__).resolve().parents[2]
INCIDENT = {
    "incident_id": "DR-20261126-031200",
    "started_at": "2026-11-26T03:12:00+00:00",
    "environment": "drill",
    "dry_run": False,
    "notify": False,
}


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """A plan whose storage and backups live in tmp_path; user_uploads and logs hold files
    and a full snapshot of each was taken."""
    monkeypatch.setenv("DR_SANDBOX_HOME", str(tmp_path))
    plan = load_plan(ROOT / "include" / "config" / "sandbox.yaml")
    environment = plan.environment("drill")
    for name, content in (("user_uploads", "upload"), ("logs", "log line")):
        area = Path(environment.storage[name].path)
        (area / "sub").mkdir(parents=True)
        (area / "one.txt").write_text(f"{content} one\n")
        (area / "sub" / "two.txt").write_text(f"{content} two\n")
        storage_snapshot(name, area, tmp_path / "backups" / "storage", "full")
    return plan, environment


def inputs(**params):
    return {"snapshot": "latest", "areas": ["all"], **params}


def test_areas_in_scope():
    in_plan = ["audio_files", "user_uploads", "logs"]
    held = ["user_uploads", "logs"]
    assert storage.areas_in_scope(["all"], in_plan, held, "s") == ["user_uploads", "logs"]
    assert storage.areas_in_scope([], in_plan, held, "s") == ["user_uploads", "logs"]
    assert storage.areas_in_scope(["logs"], in_plan, held, "s") == ["logs"]
    with pytest.raises(InvalidInput, match=r"areas: unknown \['ghost'\]"):
        storage.areas_in_scope(["ghost"], in_plan, held, "s")
    with pytest.raises(InvalidInput, match=r"areas: \['audio_files'\] are not in s"):
        storage.areas_in_scope(["audio_files"], in_plan, held, "s")


def test_the_rto_is_the_most_critical_service_needing_storage():
    plan = load_plan(ROOT / "include" / "config" / "sandbox.yaml")
    assert storage.rto_seconds(plan) == 1800.0  # analysis-service needs audio_files


def test_the_guard_picks_the_snapshot_and_the_areas_it_holds(home):
    plan, _ = home
    run = storage.check_inputs(plan, dict(INCIDENT), inputs())
    assert run["areas"] == ["user_uploads", "logs"], "audio_files has no snapshot here"
    assert run["snapshot"]["name"].endswith(".tar.gz")
    assert any(".dr-quarantine/DR-20261126-031200/" in a for a in storage.plan_of_actions(run))


def test_a_snapshot_that_does_not_exist_is_refused_before_anything_is_looked_at(home):
    plan, _ = home
    with pytest.raises(NoUsableBackup, match="snapshot: .*no storage snapshot taken on") as e:
        storage.check_inputs(plan, dict(INCIDENT), inputs(snapshot="1999-01-01"))
    assert isinstance(e.value, Refused) and "HINT" in str(e.value)


def test_inspect_then_restore_puts_back_what_is_missing_or_corrupt_and_only_that(home):
    plan, environment = home
    run = storage.check_inputs(plan, dict(INCIDENT), inputs())
    uploads = Path(environment.storage["user_uploads"].path)
    (uploads / "one.txt").unlink()
    (uploads / "sub" / "two.txt").write_bytes(b"")  # emptied: the backup's copy is not
    (uploads / "new.txt").write_text("written after the snapshot")
    before = storage.inspect_before(plan, run)
    assert before["to_restore"] == {"user_uploads": ["one.txt", "sub/two.txt"]}
    assert before["detail"] == "2 file(s) to restore"
    assert before["areas"]["logs"]["clean"] is True
    opened, seen = storage.left_to_restore(storage.inspect(plan, run))
    assert not opened and "user_uploads/one.txt" in seen

    restored = storage.restore(plan, run, before)
    assert restored["actions"] == {
        "user_uploads": {
            "one.txt": "restored",
            "sub/two.txt": "restored (corrupt copy quarantined)",
        }
    }
    assert (uploads / "one.txt").read_text() == "upload one\n"
    assert (uploads / "sub" / "two.txt").read_text() == "upload two\n"
    assert (uploads / "new.txt").exists(), "files the backup does not know are left alone"
    quarantined = uploads.parent / ".dr-quarantine" / INCIDENT["incident_id"] / "user_uploads"
    assert (quarantined / "sub" / "two.txt").exists(), "the damaged copy is kept, not deleted"
    assert storage.left_to_restore(storage.inspect(plan, run))[0] is True

    # A retry (or a re-run of the incident) looks again first: nothing left, nothing done.
    again = storage.restore(plan, run, before)
    assert again == {"detail": "nothing to restore", "actions": {}}
    assert storage.judge_integrity(run, storage.summary_now(plan, run)) == (
        "5 files in 2 area(s), 0 area(s) not sound"
    )


def test_left_to_restore_ignores_what_the_backup_cannot_give_back():
    unrecoverable = AreaReport(
        "a", "/x", True, corrupted={"junk.wav": "not audio"}, unrecoverable=["junk.wav"]
    )
    assert storage.to_restore([unrecoverable]) == {}
    assert storage.left_to_restore([unrecoverable])[0] is True
    with pytest.raises(ValidationFailed, match="storage not sound: a: 0 missing, 1 corrupt"):
        storage.judge_integrity({"dry_run": False}, [unrecoverable])
    assert storage.judge_integrity({"dry_run": True}, [unrecoverable]).endswith(
        "1 area(s) not sound"
    )


def _synced(environment, name="user_uploads"):
    from tracktion_dr.backups.snapshots import sync_area

    root = Path(environment.backups.storage.removeprefix("file://"))
    return sync_area(name, Path(environment.storage[name].path), root), root / "sync" / name


def test_auto_restores_files_newer_than_the_snapshot_from_the_sync_mirror(home):
    plan, environment = home
    uploads = Path(environment.storage["user_uploads"].path)
    (uploads / "late.txt").write_text("written after the snapshot\n")
    synced, _ = _synced(environment)
    run = storage.check_inputs(
        plan, dict(INCIDENT, started_at="2099-01-01T00:00:00+00:00"), inputs()
    )
    assert run["source"] == "auto" and set(run["mirrors"]) == {"user_uploads"}
    (uploads / "late.txt").unlink()
    (uploads / "one.txt").unlink()
    before = storage.inspect_before(plan, run)
    assert before["to_restore"] == {"user_uploads": ["late.txt", "one.txt"]}
    restored = storage.restore(plan, run, before)
    copies = restored["copies"]["user_uploads"]
    assert {c["source"] for c in copies.values()} == {"mirror"}, "the freshest copy"
    assert (uploads / "late.txt").read_text() == "written after the snapshot\n"
    age = (
        storage.datetime.fromisoformat("2099-01-01T00:00:00+00:00") - synced.started_at
    ).total_seconds()
    assert restored["data_loss_seconds"] == age == copies["late.txt"]["age_seconds"]
    fields = storage.record_fields(run, before, restored, None, rto_target_seconds=1)
    assert fields["data_loss_seconds"] == age and "sync mirror" in fields["backup_used"]


def test_a_damaged_mirror_copy_is_never_restored_the_snapshot_copy_is(home):
    plan, environment = home
    uploads = Path(environment.storage["user_uploads"].path)
    _, mirror = _synced(environment)
    (mirror / "one.txt").write_text("bit rot in the mirror\n")
    run = storage.check_inputs(plan, dict(INCIDENT), inputs())
    (uploads / "one.txt").unlink()
    restored = storage.restore(plan, run, storage.inspect_before(plan, run))
    used = restored["copies"]["user_uploads"]["one.txt"]
    assert used["source"] == "snapshot"
    assert "checksum the sync recorded" in next(iter(used["skipped"].values()))
    assert (uploads / "one.txt").read_text() == "upload one\n"


def test_source_snapshot_ignores_the_mirror_and_mirror_ignores_the_snapshot(home):
    plan, environment = home
    uploads = Path(environment.storage["user_uploads"].path)
    (uploads / "late.txt").write_text("late\n")
    _synced(environment)
    (uploads / "late.txt").unlink()
    only_snapshot = storage.check_inputs(plan, dict(INCIDENT), inputs(source="snapshot"))
    assert only_snapshot["mirrors"] == {}
    assert storage.inspect_before(plan, only_snapshot)["to_restore"] == {}
    only_mirror = storage.check_inputs(plan, dict(INCIDENT), inputs(source="mirror"))
    assert only_mirror["snapshot"] is None and only_mirror["areas"] == ["user_uploads"]
    assert storage.inspect_before(plan, only_mirror)["to_restore"] == {"user_uploads": ["late.txt"]}
    with pytest.raises(InvalidInput, match="source: 'newest' is not one of"):
        storage.check_inputs(plan, dict(INCIDENT), inputs(source="newest"))
