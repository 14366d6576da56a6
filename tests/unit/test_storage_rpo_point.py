"""The RPO watch's storage figure: the newest copy dr_storage_recovery can restore from."""

from __future__ import annotations

import json

from tracktion_dr.backups import snapshots


def test_the_mirror_counts_only_while_intact_and_the_figure_names_the_copy(tmp_path):
    area, root = tmp_path / "area", tmp_path / "storage"
    area.mkdir()
    (area / "a.txt").write_text("a\n")
    assert snapshots.newest_storage_point(root, "area") == (None, "no sync and no snapshot")
    archive = snapshots.storage_snapshot("area", area, root, "full")
    point, copy = snapshots.newest_storage_point(root, "area")
    assert copy == archive.name
    synced = snapshots.sync_area("area", area, root)
    assert snapshots.newest_storage_point(root, "area") == (synced.started_at, "sync mirror")

    (root / "sync" / "area" / "a.txt").write_text("damaged, and longer than before\n")
    assert snapshots.mirror_problems(root, "area") == ["a.txt: 32 bytes, the sync copied 2"]
    assert snapshots.newest_storage_point(root, "area") == (point, archive.name)

    (root / "sync" / "area.files.json").write_text(json.dumps({}))
    assert "recorded no checksums" in snapshots.mirror_problems(root, "area")[0]


def test_the_sync_records_the_sha256_of_every_copy_and_hashes_older_copies_once(tmp_path):
    area, root = tmp_path / "area", tmp_path / "storage"
    area.mkdir()
    (area / "a.txt").write_text("a\n")
    snapshots.sync_area("area", area, root)
    recorded = snapshots.read_sync_files(root, "area")
    assert recorded["a.txt"]["sha256"] == snapshots.sha256_file(area / "a.txt")
    snapshots.sync_files_file(root, "area").unlink()  # a mirror from before the record
    snapshots.sync_area("area", area, root)
    assert snapshots.read_sync_files(root, "area") == recorded
