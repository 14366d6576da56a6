"""dr_storage_recovery: deleted and corrupted audio found by content and restored."""

from __future__ import annotations

import os
import shutil

import pytest

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states
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
