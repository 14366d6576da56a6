"""Offsite copies against moto's standalone S3 server on loopback (a real HTTP S3
endpoint run by the sandbox's supervisord), through the amazon provider's S3Hook."""

from __future__ import annotations

import os

import pytest

from tracktion_dr.airflow.backup_jobs import s3_hook
from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states
from tracktion_dr.backups import offsite
from tracktion_dr.core.plan import load_plan

pytestmark = pytest.mark.sandbox
MIB = 1024 * 1024


def test_round_trip_is_byte_identical_multipart_and_cross_region(sandbox, tmp_path):
    plan = load_plan()
    backups = plan.environment("drill").backups
    source = tmp_path / "big.bin"
    payload = os.urandom(13 * MIB)  # > 5 MiB parts: S3's multipart minimum
    source.write_bytes(payload)
    hook = s3_hook(backups.offsite_conn_id, plan)
    hook._transfer_config_args.update(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    client = hook.get_conn()
    location = offsite.S3Location.parse(backups.offsite)
    key = location.key("test", "big.bin")
    uploaded = offsite.upload_verified(
        client, source, location, key, transfer_config=hook.transfer_config
    )
    assert uploaded.multipart and not uploaded.skipped
    body = client.get_object(Bucket=location.bucket, Key=key)["Body"].read()
    assert body == payload
    again = offsite.upload_verified(
        client, source, location, key, transfer_config=hook.transfer_config
    )
    assert again.skipped, "same checksum already offsite: not uploaded twice"

    west = s3_hook(backups.offsite_cross_region_conn_id, plan)
    (copy,) = offsite.copy_cross_region(
        client, west.get_conn(), backups.offsite, backups.offsite_cross_region, [key]
    )
    target = offsite.S3Location.parse(backups.offsite_cross_region)
    assert copy.sha256 == uploaded.sha256
    region = west.get_conn().get_bucket_location(Bucket=target.bucket)["LocationConstraint"]
    assert region == "us-west-2"
    assert west.get_conn().get_object(Bucket=target.bucket, Key=copy.key)["Body"].read() == payload


def test_a_corrupted_offsite_object_is_detected_by_read_back(sandbox, tmp_path):
    plan = load_plan()
    backups = plan.environment("drill").backups
    client = s3_hook(backups.offsite_conn_id, plan).get_conn()
    location = offsite.S3Location.parse(backups.offsite)
    path = tmp_path / "small.bin"
    path.write_bytes(b"original")
    key = location.key("test", "small.bin")
    offsite.upload_verified(client, path, location, key)
    # Someone overwrites it with different bytes but keeps the old checksum metadata.
    sha = client.head_object(Bucket=location.bucket, Key=key)["Metadata"]["sha256"]
    client.put_object(
        Bucket=location.bucket,
        Key=key,
        Body=b"tampered",
        Metadata={"sha256": sha},
        ChecksumAlgorithm="SHA256",
    )
    remote, _ = offsite.remote_sha256(client, location.bucket, key)
    assert remote != sha


def test_offsite_backups_are_write_once(sandbox, tmp_path):
    """Object Lock (COMPLIANCE) on the offsite buckets: a backup version cannot be deleted,
    also not by the credentials that wrote it (a compromised host holds those)."""
    from botocore.exceptions import ClientError

    plan = load_plan()
    backups = plan.environment("drill").backups
    client = s3_hook(backups.offsite_conn_id, plan).get_conn()
    location = offsite.S3Location.parse(backups.offsite)
    lock = client.get_object_lock_configuration(Bucket=location.bucket)["ObjectLockConfiguration"]
    assert lock["Rule"]["DefaultRetention"]["Mode"] == "COMPLIANCE"
    path = tmp_path / "locked.bin"
    path.write_bytes(b"a backup")
    key = location.key("test", "locked.bin")
    offsite.upload_verified(client, path, location, key)
    version = client.head_object(Bucket=location.bucket, Key=key)["VersionId"]
    with pytest.raises(ClientError) as refused:
        client.delete_object(Bucket=location.bucket, Key=key, VersionId=version)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    assert client.get_object(Bucket=location.bucket, Key=key, VersionId=version)["Body"].read() == (
        b"a backup"
    )


def test_offsite_dag_copies_newest_backups_and_wal_and_the_catalog_lists_them(sandbox):
    dag_run = run_dag("dr_backup_offsite", {"environment": "drill", "notify": True})
    assert task_states(dag_run) == {"copy_offsite": "success"}
    result = task_result(dag_run, "copy_offsite")
    assert result["cross_region"] and all(c["sha256"] for c in result["cross_region"])
    plan = load_plan()
    backups = plan.environment("drill").backups
    client = s3_hook(backups.offsite_conn_id, plan).get_conn()
    entries = offsite.list_location(client, backups.offsite, with_checksums=True)
    kinds = {e.kind for e in entries}
    assert {"logical_dump", "base_backup", "wal_segment"} <= kinds
    assert all(e.sha256 for e in entries if e.kind != "other")
    # A second run uploads nothing new (checksums match) and still succeeds.
    second = run_dag("dr_backup_offsite", {"environment": "drill", "notify": True})
    result2 = task_result(second, "copy_offsite")
    # (New WAL segments may have been archived in between: those are new uploads.)
    backups_again = [
        u
        for u in result2["uploaded"]
        if not u["key"].endswith(".json") and "/wal_archive/" not in u["key"]
    ]
    assert backups_again and all(u["skipped"] for u in backups_again)
