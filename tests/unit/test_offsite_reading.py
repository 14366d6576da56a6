"""Restore from offsite, the parts that need no S3: locations, the restore_command line,
which archive files are WAL, which snapshots a restore needs offsite."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tracktion_dr.backups import s3_objects
from tracktion_dr.backups.catalog import _is_wal_file, offsite_cache_beside
from tracktion_dr.backups.offsite import _restorable_snapshots
from tracktion_dr.core.errors import InvalidInput
from tracktion_dr.postgres import wal_fetch


@pytest.mark.parametrize("url", ["s3:///database/logical", "s3://", "file:///backups"])
def test_a_location_without_bucket_is_refused_naming_the_field(url):
    with pytest.raises(InvalidInput) as refused:
        s3_objects.parse_location(url, "backups.logical")
    assert refused.value.field == "backups.logical"


def test_the_mirror_mirrors_the_key_layout(tmp_path):
    location = s3_objects.parse_location("s3://bucket/a/b/wal_archive/", "backups.wal_archive")
    assert s3_objects.mirror_dir(tmp_path, location) == tmp_path / "bucket/a/b/wal_archive"
    assert offsite_cache_beside("/var/lib/postgresql/15/main") == Path(
        "/var/lib/postgresql/15/offsite-cache"
    )


def test_restore_command_tries_the_mirror_then_s3_then_the_salvage_folder():
    line = wal_fetch.restore_command(
        Path("/c/b/wal %x"),
        Path("/c/b/wal %x.salvage"),
        Path("/c/b/wal.fetch.json"),
        "/usr/bin/python3",
    )
    mirror, fetch, salvage = (line.index(s) for s in ('"$a/%f.zst"', "wal_fetch.py", '"$s/%f"'))
    assert mirror < fetch < salvage and line.endswith("else exit 1; fi")
    assert "'/c/b/wal %%x'" in line, "% doubled for the server, the path shell-quoted"
    assert "-I " in line and "/c/b/wal.fetch.json %f %p" in line


def test_which_archive_files_are_wal():
    assert _is_wal_file("000000010000000000000003.zst")
    assert _is_wal_file("000000010000000000000003")
    assert _is_wal_file("00000002.history")
    assert not _is_wal_file("000000010000000000000003.00000028.backup")
    assert not _is_wal_file("sub/000000010000000000000003")
    assert not _is_wal_file("x.json")


@dataclass
class Entry:
    id: str
    status: str = "verified"


def test_an_incremental_goes_offsite_with_the_full_it_builds_on():
    entries = [  # newest first, as the catalog lists them
        Entry("audio_files/audio_files_incremental_20261127T030000Z.tar.gz"),
        Entry("user_uploads/user_uploads_full_20261127T020000Z.tar.gz"),
        Entry("audio_files/audio_files_incremental_20261127T020000Z.tar.gz"),
        Entry("audio_files/audio_files_full_20261127T010000Z.tar.gz"),
        Entry("audio_files/audio_files_full_20261126T010000Z.tar.gz"),
        Entry("user_uploads/user_uploads_full_20261126T020000Z.tar.gz"),
    ]
    chosen = [e.id for e in _restorable_snapshots(entries)]
    assert chosen == [e.id for e in entries[:4]]


def test_wal_fetch_serves_the_mirror_and_refuses_a_bad_name(tmp_path, capsys):
    """A segment in the mirror is delivered without S3; a bad name is exit 2 (a problem,
    said on stderr), never a crash PostgreSQL would misread."""
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"mirror": str(tmp_path), "bucket": "b", "prefix": ""}))
    assert wal_fetch.main([str(config), "../etc/passwd", str(tmp_path / "x")]) == 2
    assert "not a WAL file name" in capsys.readouterr().err
    (tmp_path / "000000010000000000000001").write_bytes(b"segment")
    assert wal_fetch.main([str(config), "000000010000000000000001", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p").read_bytes() == b"segment"


def test_one_bad_wal_object_is_left_out_of_the_mirror_not_raised(tmp_path, monkeypatch):
    """A WAL object that fails verification (or is gone) does not stop the mirror: the
    others are fetched, it stays out, and the catalog names it for a refusal's hint."""
    import boto3
    from moto import mock_aws

    from tracktion_dr.backups.catalog import Catalog
    from tracktion_dr.core.plan import BackupLocations

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="copy")
        good = b"good segment bytes"
        for name, body, digest in [
            ("000000010000000000000001", good, hashlib.sha256(good).hexdigest()),
            ("000000010000000000000002", b"rotten bytes", hashlib.sha256(b"other").hexdigest()),
            ("000000010000000000000003", good, hashlib.sha256(good).hexdigest()),
        ]:
            client.put_object(
                Bucket="copy",
                Key=f"wal/{name}",
                Body=body,
                Metadata={s3_objects.SHA256_METADATA: digest},
            )
        locations = BackupLocations(
            logical="s3://copy/logical",
            base="s3://copy/base",
            wal_archive="s3://copy/wal",
            configuration="s3://copy/configuration",
            storage="s3://copy/storage",
        )
        catalog = Catalog(locations, cache_dir=tmp_path, s3_client=client, os_user="")
        mirror = catalog.wal_archive_dir()
    held = sorted(p.name for p in mirror.iterdir() if _is_wal_file(p.name))
    assert held == ["000000010000000000000001", "000000010000000000000003"], "the gap shows"
    assert list(catalog.unusable_wal) == ["000000010000000000000002"]
    assert "s3://copy/wal/000000010000000000000002" in catalog.describe_unusable_wal()


def test_salvaged_wal_is_not_put_into_an_s3_archives_mirror(tmp_path):
    """After a PITR against an s3:// archive the salvaged WAL stays in the salvage folder:
    the mirror holds only verified downloads, and the step says where the WAL is."""
    from types import SimpleNamespace

    from tracktion_dr.postgres.salvage import salvage_dir_for
    from tracktion_dr.scenarios.database import salvaged_history_kept

    mirror = tmp_path / "offsite-cache" / "bucket" / "wal_archive"
    mirror.mkdir(parents=True)
    salvage = salvage_dir_for(mirror)
    salvage.mkdir()
    (salvage / "000000010000000000000003").write_bytes(b"salvaged")
    cluster = SimpleNamespace(data_directory=str(tmp_path / "pg"), os_user="", bin_dir="/x")
    plan = {"wal_archive": str(mirror), "wal_location": "s3://bucket/wal_archive"}
    said = salvaged_history_kept(cluster, plan)
    assert list(mirror.iterdir()) == []
    assert str(salvage) in said and "NOT in the offsite archive s3://bucket/wal_archive" in said
