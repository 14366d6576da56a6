"""Offsite copies on S3: upload with a checksum, prove it by reading back, list them.

Works on a boto3 S3 client (the DAG gets it from the amazon provider's ``S3Hook``, whose
``transfer_config`` makes large files go up in parts). Every object carries its sha256 in
the ``x-amz-meta-sha256`` metadata; after an upload the object is read back and hashed,
so a copy is only reported as done when the bytes in S3 are the bytes on disk (the ETag
of a multipart upload is not an MD5 of the object and cannot prove that).

Key layout under the offsite prefix mirrors the local locations, so a second
environment can point its ``backups`` straight at the offsite copy::

    <prefix>/database/logical/<db>_<stamp>.dump (+ .manifest.json, .verification.json)
    <prefix>/database/base/base_<stamp>.tar     (+ .backup_info.json, .verification.json)
    <prefix>/wal_archive/<segment>.zst (or <segment>: archived before compression)
    <prefix>/configuration/config_full_<stamp>.tar.gz (+ .manifest.json)
    <prefix>/storage/<area>/<area>_<level>_<stamp>.tar.gz (+ .manifest.json)

A base backup is a folder (compressed archives + ``backup_manifest``, or a plain data
directory for old ones); offsite it travels as one tar of that folder (not compressed
again: the archives inside already are), built beside the backups and removed after upload.
"""

from __future__ import annotations

import hashlib
import logging
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

# Re-exported: the offsite location and the metadata key belong to the reading side too.
from tracktion_dr.backups.s3_objects import SHA256_METADATA as SHA256_METADATA
from tracktion_dr.backups.s3_objects import S3Location as S3Location
from tracktion_dr.core.errors import StepFailed
from tracktion_dr.postgres.dumps import sha256_file

log = logging.getLogger(__name__)

# Every write carries an S3 integrity checksum: S3 verifies the bytes it stores, and a
# bucket with Object Lock (write once: a compromised host cannot delete or rewrite a backup)
# accepts writes only with one.
INTEGRITY_CHECKSUM = {"ChecksumAlgorithm": "SHA256"}


class OffsiteError(StepFailed):
    """An offsite copy could not be made or does not match its source."""


@dataclass(frozen=True)
class Uploaded:
    key: str
    url: str
    size_bytes: int
    sha256: str
    multipart: bool
    skipped: bool  # already there with the same checksum

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "url": self.url,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "multipart": self.multipart,
            "skipped": self.skipped,
        }


def _head(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        return client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def remote_sha256(client: Any, bucket: str, key: str) -> tuple[str, int]:
    """Read the object back and hash it: (sha256, bytes)."""
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    digest, size = hashlib.sha256(), 0
    for block in iter(lambda: body.read(1 << 20), b""):
        digest.update(block)
        size += len(block)
    return digest.hexdigest(), size


def upload_verified(
    client: Any,
    path: Path,
    location: S3Location,
    key: str,
    *,
    transfer_config: Any = None,
    sha256: str | None = None,
) -> Uploaded:
    """Upload ``path`` to ``key`` with its sha256 as metadata, then read it back and
    compare. An object already there with the same size and sha256 metadata is kept."""
    size = path.stat().st_size
    digest = sha256 or sha256_file(path)
    existing = _head(client, location.bucket, key)
    if (
        existing
        and existing.get("ContentLength") == size
        and existing.get("Metadata", {}).get(SHA256_METADATA) == digest
    ):
        return Uploaded(key, location.url(key), size, digest, "-" in existing["ETag"], True)
    kwargs: dict[str, Any] = {
        "ExtraArgs": {"Metadata": {SHA256_METADATA: digest}, **INTEGRITY_CHECKSUM}
    }
    if transfer_config is not None:
        kwargs["Config"] = transfer_config
    client.upload_file(str(path), location.bucket, key, **kwargs)
    remote, remote_size = remote_sha256(client, location.bucket, key)
    if remote != digest or remote_size != size:
        raise OffsiteError(
            f"{location.url(key)}: read back {remote_size} bytes with sha256 {remote[:12]}…, "
            f"the local file has {size} bytes with sha256 {digest[:12]}…"
        )
    head = _head(client, location.bucket, key) or {}
    multipart = "-" in str(head.get("ETag", ""))
    log.info(
        "uploaded %s (%d bytes%s), read back and verified",
        key,
        size,
        ", multipart" if multipart else "",
    )
    return Uploaded(key, location.url(key), size, digest, multipart, False)


def copy_verified(
    source_client: Any,
    target_client: Any,
    source: S3Location,
    target: S3Location,
    key: str,
    *,
    transfer_config: Any = None,
) -> Uploaded:
    """Copy one object to another bucket (another region) server-side, keeping its
    metadata, then read the copy back and check it against the sha256 metadata."""
    head = _head(source_client, source.bucket, key)
    if head is None:
        raise OffsiteError(f"{source.url(key)}: no such object to copy")
    digest = head.get("Metadata", {}).get(SHA256_METADATA)
    if not digest:
        raise OffsiteError(
            f"{source.url(key)}: has no sha256 metadata; refusing an unverifiable copy"
        )
    relative = key.removeprefix(source.prefix).lstrip("/") if source.prefix else key
    target_key = target.key(relative)
    existing = _head(target_client, target.bucket, target_key)
    size = int(head["ContentLength"])
    if (
        existing
        and existing.get("Metadata", {}).get(SHA256_METADATA) == digest
        and existing.get("ContentLength") == size
    ):
        return Uploaded(target_key, target.url(target_key), size, digest, False, True)
    kwargs: dict[str, Any] = {
        "ExtraArgs": {"MetadataDirective": "COPY", **INTEGRITY_CHECKSUM},
        "SourceClient": source_client,
    }
    if transfer_config is not None:
        kwargs["Config"] = transfer_config
    target_client.copy({"Bucket": source.bucket, "Key": key}, target.bucket, target_key, **kwargs)
    copied = _head(target_client, target.bucket, target_key) or {}
    if copied.get("Metadata", {}).get(SHA256_METADATA) != digest:
        # A multipart managed copy does not carry metadata on every S3 implementation.
        target_client.copy_object(
            Bucket=target.bucket,
            Key=target_key,
            CopySource={"Bucket": target.bucket, "Key": target_key},
            Metadata={SHA256_METADATA: digest},
            MetadataDirective="REPLACE",
            **INTEGRITY_CHECKSUM,
        )
    remote, remote_size = remote_sha256(target_client, target.bucket, target_key)
    if remote != digest or remote_size != size:
        raise OffsiteError(f"{target.url(target_key)}: cross-region copy does not match its source")
    return Uploaded(target_key, target.url(target_key), size, digest, False, False)


def tar_directory(directory: Path, work_dir: Path) -> Path:
    """One uncompressed tar of ``directory`` (members relative to its parent), in
    ``work_dir``; the caller removes it."""
    handle = tempfile.NamedTemporaryFile(
        dir=work_dir, prefix=f".{directory.name}.", suffix=".tar.partial", delete=False
    )
    handle.close()
    target = Path(handle.name)
    with tarfile.open(target, "w") as archive:
        archive.add(directory, arcname=directory.name)
    return target


# --------------------------------------------------------------------------- listing


KIND_BY_PREFIX = (
    ("database/logical/", "logical_dump"),
    ("database/base/", "base_backup"),
    ("wal_archive/", "wal_segment"),
    ("configuration/", "config_snapshot"),
    ("storage/", "storage_snapshot"),
)


@dataclass(frozen=True)
class OffsiteObject:
    key: str
    url: str
    kind: str
    size_bytes: int
    last_modified: datetime
    sha256: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "url": self.url,
            "kind": self.kind,
            "size_bytes": self.size_bytes,
            "last_modified": self.last_modified.isoformat(),
            "sha256": self.sha256,
        }


def list_location(client: Any, url: str, *, with_checksums: bool = False) -> list[OffsiteObject]:
    """Every backup object under an ``s3://bucket/prefix`` location, newest first.

    Sidecars (``*.json``) are not listed as backups. ``with_checksums`` adds one HEAD per
    object to read its sha256 metadata.
    """
    location = S3Location.parse(url)
    paginator = client.get_paginator("list_objects_v2")
    found = []
    prefix = location.prefix + "/" if location.prefix else ""
    for page in paginator.paginate(Bucket=location.bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            if key.endswith(".json"):
                continue
            relative = key.removeprefix(prefix)
            kind = next((k for p, k in KIND_BY_PREFIX if relative.startswith(p)), "other")
            sha = None
            if with_checksums:
                sha = (
                    (_head(client, location.bucket, key) or {})
                    .get("Metadata", {})
                    .get(SHA256_METADATA)
                )
            found.append(
                OffsiteObject(
                    key, location.url(key), kind, int(item["Size"]), item["LastModified"], sha
                )
            )
    return sorted(found, key=lambda o: o.last_modified, reverse=True)


# --------------------------------------------------------------------------- what goes


def _existing_sizes(client: Any, location: S3Location, prefix: str) -> dict[str, int]:
    paginator = client.get_paginator("list_objects_v2")
    sizes: dict[str, int] = {}
    for page in paginator.paginate(Bucket=location.bucket, Prefix=location.key(prefix) + "/"):
        for item in page.get("Contents", []):
            sizes[item["Key"]] = int(item["Size"])
    return sizes


def copy_newest_backups(
    catalog: Any,
    client: Any,
    offsite_url: str,
    *,
    transfer_config: Any = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Copy the newest verified dump of each database, the newest verified base backup,
    the WAL archive from the oldest usable base backup's start, and the newest
    configuration and storage snapshots, to ``offsite_url``. Returns what was done.

    Only backups whose local verification passed go offsite: a copy of a broken backup
    would look like a second chance and is not one.
    """
    from tracktion_dr.backups.catalog import BackupKind, Status, local_path
    from tracktion_dr.postgres import wal

    location = S3Location.parse(offsite_url)
    plan: list[tuple[Path, str]] = []  # (file, key) in upload order: data before sidecars
    skipped: list[str] = []
    newest_dumps: dict[str, Any] = {}
    for entry in catalog.dumps():
        if entry.status is Status.VERIFIED and entry.database not in newest_dumps:
            newest_dumps[entry.database] = entry
    for entry in newest_dumps.values():
        plan.append((entry.path, location.key("database/logical", entry.path.name)))
        for suffix in (".manifest.json", ".verification.json"):
            plan.append(
                (
                    entry.path.with_name(entry.path.name + suffix),
                    location.key("database/logical", entry.path.name + suffix),
                )
            )
    bases = [e for e in catalog.base_backups() if e.status is Status.VERIFIED]
    base_entry = bases[0] if bases else None
    if base_entry is None:
        skipped.append("no verified base backup to copy")
    for kind in (BackupKind.CONFIG_SNAPSHOT, BackupKind.STORAGE_SNAPSHOT):
        folder = "configuration" if kind is BackupKind.CONFIG_SNAPSHOT else "storage"
        for entry in _restorable_snapshots(catalog.snapshots(kind)):
            plan.append((entry.path, location.key(folder, entry.id)))
            plan.append(
                (
                    entry.path.with_name(entry.path.name + ".manifest.json"),
                    location.key(folder, entry.id + ".manifest.json"),
                )
            )
    # WAL from the oldest usable base backup on (what PITR from any kept backup needs).
    usable = [e for e in catalog.base_backups() if e.status is not Status.FAILED and e.start_lsn]
    archive = local_path(catalog.locations.wal_archive)
    wal_files: list[Path] = []
    if usable:
        oldest = min(usable, key=lambda e: e.finished_at)
        since = wal.Segment.from_lsn(oldest.start_lsn, oldest.timeline or 1).number
        for path in sorted(archive.iterdir()) if archive.is_dir() else []:
            if path.name.endswith(".history"):
                wal_files.append(path)
                continue
            try:
                segment = wal.archived_segment(path.name)
            except ValueError:
                continue
            if segment.number >= since:
                wal_files.append(path)
    else:
        skipped.append("no usable base backup: WAL archive not copied")

    result: dict[str, Any] = {
        "offsite": offsite_url,
        "dry_run": dry_run,
        "uploaded": [],
        "skipped": skipped,
        "wal_segments": len(wal_files),
    }
    if dry_run:
        result["would_upload"] = [key for _, key in plan] + [
            location.key("wal_archive", p.name) for p in wal_files
        ]
        if base_entry:
            result["would_upload"].append(location.key("database/base", base_entry.id + ".tar"))
        return result
    uploads: list[Uploaded] = []
    for path, key in plan:
        if path.exists():
            uploads.append(
                upload_verified(client, path, location, key, transfer_config=transfer_config)
            )
    if base_entry is not None:
        uploads += _copy_base_backup(client, base_entry, location, transfer_config)
    present = _existing_sizes(client, location, "wal_archive")
    wal_uploaded = wal_present = 0
    for path in wal_files:
        key = location.key("wal_archive", path.name)
        # Archived segments are immutable (the archive command refuses to overwrite), so a
        # same-named object of the same size was uploaded and verified by an earlier run.
        if present.get(key) == path.stat().st_size:
            wal_present += 1
            continue
        uploads.append(
            upload_verified(client, path, location, key, transfer_config=transfer_config)
        )
        wal_uploaded += 1
    result["uploaded"] = [u.as_dict() for u in uploads]
    result["wal_uploaded"] = wal_uploaded
    result["wal_already_offsite"] = wal_present
    return result


def _restorable_snapshots(entries: list[Any]) -> list[Any]:
    """Per group (the configuration; each storage area), the snapshots a restore from the
    offsite copy needs: the newest one, and when it is an incremental, the ones back to
    and including the full it builds on (a storage restore point is a full plus the
    incrementals after it, see files/snapshots.py). Newest first, failed ones skipped."""
    from tracktion_dr.backups.catalog import Status

    chosen: list[Any] = []
    complete: set[str] = set()
    for entry in entries:  # newest first
        group = str(Path(entry.id).parent)
        if group in complete or entry.status is Status.FAILED:
            continue
        chosen.append(entry)
        if "_incremental_" not in Path(entry.id).name:
            complete.add(group)
    return chosen


def _copy_base_backup(
    client: Any, entry: Any, location: S3Location, transfer_config: Any
) -> list[Uploaded]:
    key = location.key("database/base", entry.id + ".tar")
    existing = _head(client, location.bucket, key)
    uploads: list[Uploaded] = []
    if existing and existing.get("Metadata", {}).get(SHA256_METADATA):
        log.info("base backup %s already offsite", entry.id)
    else:
        archive = tar_directory(entry.path, entry.path.parent)
        try:
            uploads.append(
                upload_verified(client, archive, location, key, transfer_config=transfer_config)
            )
        finally:
            archive.unlink(missing_ok=True)
    for suffix in (".backup_info.json", ".verification.json"):
        sidecar = entry.path.with_name(entry.id + suffix)
        if sidecar.exists():
            uploads.append(
                upload_verified(
                    client,
                    sidecar,
                    location,
                    location.key("database/base", sidecar.name),
                    transfer_config=transfer_config,
                )
            )
    return uploads


def copy_cross_region(
    source_client: Any,
    target_client: Any,
    source_url: str,
    target_url: str,
    keys: list[str],
    *,
    transfer_config: Any = None,
) -> list[Uploaded]:
    """The seed's S3 cross-region replication, as explicit verified copies of ``keys``."""
    source, target = S3Location.parse(source_url), S3Location.parse(target_url)
    return [
        copy_verified(
            source_client, target_client, source, target, key, transfer_config=transfer_config
        )
        for key in keys
    ]
