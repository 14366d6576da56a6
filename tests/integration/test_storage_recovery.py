"""dr_storage_recovery: deleted and corrupted audio found by content and restored."""

from __future__ import annotations

import os
import shutil
from datetime import datetime

import pytest

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states
from tracktion_dr.backups.snapshots import newest_storage_point
from tracktion_dr.files.storage_integrity import audio_problem

pytestmark = pytest.mark.sandbox


def test_deleted_and_corrupted_audio_is_found_and_restored(sandbox, tmp_path):
    audio = sandbox.layout.audio_files
    deleted = audio / "wav/tone_a4_mono.wav"
    garbage = audio / "mp3/tone_e5_mono.mp3"  # right name, wrong bytes
    emptied = audio / "flac/tone_c5_mono.flac"
    disguised = audio / "wav/chord_c_major_stereo.wav"  # WAV name, FLAC-less text content
    untouched = audio / "flac/chord_a_minor_stereo.flac"
    originals = {p: p.read_bytes() for p in (deleted, garbage, emptied, disguised)}
    untouched_inode = os.stat(untouched).st_ino
    shutil.move(deleted, tmp_path / "deleted.wav")
    garbage.write_bytes(os.urandom(4096))
    emptied.write_bytes(b"")
    disguised.write_bytes(b"RIFF....WAVE but not really audio\n" * 10)
    try:
        dag_run = run_dag("dr_storage_recovery", {"environment": "drill"})
        states = task_states(dag_run)
        assert states["verdict"] == "success", states
        before = task_result(dag_run, "inspect_before")["areas"]["audio_files"]
        assert before["missing"] == ["wav/tone_a4_mono.wav"]
        assert set(before["corrupted"]) == {
            "mp3/tone_e5_mono.mp3",
            "flac/tone_c5_mono.flac",
            "wav/chord_c_major_stereo.wav",
        }
        assert before["corrupted"]["flac/tone_c5_mono.flac"] == "empty file"
        assert before["file_count"] == 5 and before["audio_checked"] == 5
        for path, content in originals.items():
            assert path.read_bytes() == content, f"{path.name} restored byte for byte"
            assert audio_problem(path) is None
        assert os.stat(untouched).st_ino == untouched_inode, "sound files are not rewritten"
        incident_id = task_result(dag_run, "guard")["incident_id"]
        quarantine = sandbox.layout.app_data / ".dr-quarantine" / incident_id / "audio_files"
        assert (quarantine / "mp3/tone_e5_mono.mp3").stat().st_size == 4096, "kept, not deleted"
        after = task_result(dag_run, "report")["areas"]
        assert all(area["clean"] for area in after.values())
        assert after["audio_files"]["file_count"] == 6
    finally:
        for path, content in originals.items():
            if audio_problem(path) if path.exists() else True:
                path.write_bytes(content)


def test_dry_run_lists_but_restores_nothing(sandbox, tmp_path):
    victim = sandbox.layout.user_uploads / "user_1002/notes.txt"
    shutil.move(victim, tmp_path / "notes.txt")
    try:
        dag_run = run_dag("dr_storage_recovery", {"environment": "drill", "dry_run": True})
        assert not victim.exists()
        # what would be restored is the inspection's answer; the restore step is skipped
        planned = task_result(dag_run, "inspect_before")["to_restore"]
        assert planned == {"user_uploads": ["user_1002/notes.txt"]}
        event = task_result(dag_run, "restore_from_backup")["event"]
        assert event["status"] == "skipped" and event["detail"] == "dry run"
        assert task_result(dag_run, "record")["outcome"] == "dry_run"
    finally:
        shutil.move(tmp_path / "notes.txt", victim)


@pytest.fixture()
def sync_mirror_kept(sandbox, tmp_path):
    """The sync mirror as it was before the test, put back after it (the test's files and
    any damage it did to the mirror go with the moved-aside copy into tmp_path)."""
    sync = sandbox.layout.storage_backups / "sync"
    saved = tmp_path / "sync-before"
    if sync.exists():
        shutil.copytree(sync, saved, copy_function=shutil.copy2)
    yield sync
    if sync.exists():
        shutil.move(sync, tmp_path / "sync-after-test")
    if saved.exists():
        shutil.move(saved, sync)


def _sync_now() -> dict:
    from tracktion_dr.airflow.backup_jobs import storage_sync
    from tracktion_dr.core.plan import load_plan

    return {r["area"]: r for r in storage_sync(load_plan(), "drill", notify=False)}


def test_files_written_after_the_snapshot_come_back_from_the_sync_mirror(
    sandbox, tmp_path, sync_mirror_kept
):
    """When files are written minutes after the last snapshot and the 10-minute sync has
    mirrored them, and then the area loses them, Then source auto brings them back from
    the mirror, and the data loss reported is the mirror's age at the loss, not the
    snapshot's."""
    audio, uploads = sandbox.layout.audio_files, sandbox.layout.user_uploads
    late_take = audio / "wav/late_take.wav"
    late_note = uploads / "user_1002/late_note.txt"
    shutil.copy(audio / "wav/tone_a4_mono.wav", late_take)
    late_note.write_text("written minutes after the last snapshot\n")
    originals = {p: p.read_bytes() for p in (late_take, late_note)}
    try:
        synced = _sync_now()
        # The RPO watch counts what a recovery can restore from: the intact mirror
        assert newest_storage_point(sandbox.layout.storage_backups, "audio_files") == (
            datetime.fromisoformat(synced["audio_files"]["started_at"]),
            "sync mirror",
        )
        for path in originals:
            shutil.move(path, tmp_path / path.name)  # the loss
        dag_run = run_dag("dr_storage_recovery", {"environment": "drill"})
        assert task_states(dag_run)["verdict"] == "success", task_states(dag_run)
        for path, content in originals.items():
            assert path.read_bytes() == content, f"{path.name} back byte for byte"
        restored = task_result(dag_run, "restore_from_backup")
        take = restored["copies"]["audio_files"]["wav/late_take.wav"]
        note = restored["copies"]["user_uploads"]["user_1002/late_note.txt"]
        assert take["source"] == note["source"] == "mirror"
        record = task_result(dag_run, "record")
        clock = datetime.fromisoformat(record["clock_started_at"])
        mirror_age = max(
            (clock - datetime.fromisoformat(synced[a]["started_at"])).total_seconds()
            for a in ("audio_files", "user_uploads")
        )
        assert take["point"] == synced["audio_files"]["started_at"]
        assert record["data_loss_seconds"] == pytest.approx(mirror_age)
        assert record["data_loss_seconds"] == restored["data_loss_seconds"]
        assert "sync mirror" in record["backup_used"]
        assert record["details"]["copies"]["audio_files"]["wav/late_take.wav"] == take
    finally:
        for path in originals:
            path.unlink(missing_ok=True)


def test_a_damaged_mirror_copy_is_skipped_for_the_snapshot_copy(
    sandbox, tmp_path, sync_mirror_kept
):
    """When the mirror's copy of a file is damaged and the file is then lost, Then the
    snapshot's copy is restored (never the damaged one), and the result says so."""
    victim = sandbox.layout.user_uploads / "user_1002/notes.txt"
    original = victim.read_bytes()
    _sync_now()
    (sync_mirror_kept / "user_uploads/user_1002/notes.txt").write_text("bit rot\n")
    point, copy = newest_storage_point(sandbox.layout.storage_backups, "user_uploads")
    assert copy.startswith("user_uploads_"), "a damaged mirror is not counted by the RPO watch"
    shutil.move(victim, tmp_path / "notes.txt")
    try:
        dag_run = run_dag(
            "dr_storage_recovery", {"environment": "drill", "areas": ["user_uploads"]}
        )
        assert task_states(dag_run)["verdict"] == "success", task_states(dag_run)
        assert victim.read_bytes() == original
        used = task_result(dag_run, "restore_from_backup")["copies"]["user_uploads"]
        assert used["user_1002/notes.txt"]["source"] == "snapshot"
        (why,) = used["user_1002/notes.txt"]["skipped"].values()
        assert "checksum the sync recorded" in why
    finally:
        if not victim.exists():
            shutil.move(tmp_path / "notes.txt", victim)
