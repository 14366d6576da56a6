"""Forensic evidence of a security incident: collected once, hashed, kept where a
compromised host cannot reach it.

The bundle (a local folder per incident, on the database host): a ``pg_dump -Fc`` of the
affected database, the tail of each PostgreSQL server log, the cluster's ``*.conf`` in one
tar, and ``manifest.json`` with every file's SHA-256. The application's configuration
files (the environment's config paths and environment file) live on another host: that
host's step archives them and stores the archive first (:func:`store_config_archive`); the
manifest lists it with the rest. It is uploaded to an S3 bucket created with **Object Lock**:
each object carries a retention (COMPLIANCE or GOVERNANCE mode) until which no one - not
the host that uploaded it, not an operator with its credentials - can delete or overwrite
that version. The manifest goes last, so its presence in S3 means the bundle is complete.

Re-runs: a bundle already in S3 (its manifest found) is verified by reading every object
back and comparing SHA-256s, never uploaded again; a bundle half-uploaded is completed
from the local copy (an object already there with the same hash is skipped), so the
evidence is collected exactly once per incident.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tracktion_dr.backups.offsite import S3Location, remote_sha256
from tracktion_dr.core.errors import StepFailed
from tracktion_dr.postgres.commands import DEFAULT_BINDIR, Endpoint
from tracktion_dr.postgres.dumps import sha256_file, take_logical_dump, write_json_atomic

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SHA256_METADATA = "sha256"
CONFIG_ARCHIVE = "configuration.tar.gz"  # the application's configuration files
POSTGRES_CONFIG_ARCHIVE = "postgres-configuration.tar.gz"  # the cluster's *.conf
DUMP_DIR = "database"


class EvidenceError(StepFailed):
    """The evidence could not be stored, or what is stored does not match its hashes."""


@dataclass(frozen=True)
class EvidenceSources:
    """What goes into the bundle (paths; the database through ``admin``)."""

    database: str  # the database to copy (the live name, or its kept copy after a swap)
    config_files: list[Path]
    postgres_logs: list[Path]
    log_tail_lines: int


def bucket_is_locked(client: Any, bucket: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        found = client.get_object_lock_configuration(Bucket=bucket)
    except ClientError:
        return False
    return found.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"


def tail_lines(path: Path, lines: int) -> bytes:
    """The last ``lines`` lines of a (possibly large) log, read in one pass."""
    with path.open("rb") as handle:
        return b"".join(deque(handle, maxlen=lines))


def _tar_config(files: list[Path], target: Path) -> list[str]:
    partial = target.with_name(f".{target.name}.partial")
    present = [f for f in files if f.is_file()]
    with tarfile.open(partial, "w:gz") as archive:
        for path in present:
            archive.add(path, arcname=str(path).lstrip("/"))
    os.replace(partial, target)
    return [str(p) for p in present]


def collect_bundle(
    admin: Endpoint,
    sources: EvidenceSources,
    bundle: Path,
    incident_id: str,
    *,
    bindir: Path = DEFAULT_BINDIR,
    stored_elsewhere: tuple[dict[str, Any], ...] = (),
) -> dict[str, Any]:
    """Make the local bundle (or return the one an earlier attempt completed): the
    manifest, written last, is the mark of a complete bundle. ``stored_elsewhere``: parts
    another host already stored under the incident (:func:`store_config_archive`'s
    entries), listed in the manifest with their hashes."""
    manifest_path = bundle / MANIFEST
    if manifest_path.is_file():
        return json.loads(manifest_path.read_text())
    bundle.mkdir(parents=True, exist_ok=True)
    os.chmod(bundle, 0o700)
    dump_dir = bundle / DUMP_DIR
    for leftover in dump_dir.glob("*") if dump_dir.exists() else []:
        leftover.unlink()  # an earlier attempt's incomplete copy: taken again
    dump = take_logical_dump(admin, sources.database, dump_dir, bindir=bindir)
    files = [dump, dump.with_name(dump.name + ".manifest.json")]
    for log_file in sources.postgres_logs:
        if log_file.is_file():
            tail = bundle / f"postgres-{log_file.stem}.tail.log"
            tail.write_bytes(tail_lines(log_file, sources.log_tail_lines))
            files.append(tail)
    archived = _tar_config(sources.config_files, bundle / POSTGRES_CONFIG_ARCHIVE)
    files.append(bundle / POSTGRES_CONFIG_ARCHIVE)
    manifest = {
        "incident_id": incident_id,
        "database": sources.database,
        "collected_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config_files": [*(f for part in stored_elsewhere for f in part["files"]), *archived],
        "postgres_logs": [str(p) for p in sources.postgres_logs if p.is_file()],
        "files": [
            *({k: part[k] for k in ("name", "size_bytes", "sha256")} for part in stored_elsewhere),
            *(
                {
                    "name": str(f.relative_to(bundle)),
                    "size_bytes": f.stat().st_size,
                    "sha256": sha256_file(f),
                }
                for f in files
            ),
        ],
    }
    write_json_atomic(manifest_path, manifest)
    return manifest


def store_config_archive(
    client: Any,
    location_url: str,
    incident_id: str,
    files: list[Path],
    work: Path,
    *,
    mode: str,
    retention: timedelta,
) -> dict[str, Any]:
    """The application host's part of the evidence: ``files`` in one archive
    (:data:`CONFIG_ARCHIVE`), stored with Object Lock under the incident's prefix and read
    back. Returns its manifest entry (name, size, sha256, the files archived: paths only,
    never their content). Captured once: an archive already stored for the incident is
    only read back (the files may have changed since - a rotation rewrites the environment
    file - and the evidence is what they held first)."""
    location = S3Location.parse(location_url)
    key = location.key(incident_id, CONFIG_ARCHIVE)
    if head_object(client, location.bucket, key) is None:
        work.mkdir(parents=True, exist_ok=True)
        os.chmod(work, 0o700)
        archive = work / CONFIG_ARCHIVE
        _tar_config(files, archive)
        retain_until = datetime.now(UTC) + retention
        _locked_upload(client, archive, location, key, sha256_file(archive), mode, retain_until)
    body = client.get_object(Bucket=location.bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as stored:
        archived = ["/" + member.name for member in stored.getmembers() if member.isfile()]
    return {
        "name": CONFIG_ARCHIVE,
        "size_bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "files": archived,
        **_lock_of(client, location.bucket, key),
    }


def head_object(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        return client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def _locked_upload(
    client: Any,
    path: Path,
    location: S3Location,
    key: str,
    sha256: str,
    mode: str,
    retain_until: datetime,
) -> dict[str, Any]:
    existing = head_object(client, location.bucket, key)
    if existing and existing.get("Metadata", {}).get(SHA256_METADATA) == sha256:
        return {"key": key, "version_id": existing.get("VersionId"), "uploaded": False}
    client.upload_file(
        str(path),
        location.bucket,
        key,
        ExtraArgs={
            "Metadata": {SHA256_METADATA: sha256},
            "ObjectLockMode": mode,
            "ObjectLockRetainUntilDate": retain_until,
            # Object Lock requires an integrity checksum on every write.
            "ChecksumAlgorithm": "SHA256",
        },
    )
    head = head_object(client, location.bucket, key) or {}
    return {"key": key, "version_id": head.get("VersionId"), "uploaded": True}


def verify_stored(client: Any, location: S3Location, prefix: str) -> dict[str, Any]:
    """Read the stored manifest and every object it names back; compare SHA-256s and
    check each version is under retention. Raises :class:`EvidenceError` on a mismatch."""
    manifest_key = location.key(prefix, MANIFEST)
    body = client.get_object(Bucket=location.bucket, Key=manifest_key)["Body"].read()
    manifest = json.loads(body)
    objects = [
        {
            "key": manifest_key,
            "sha256": hashlib.sha256(body).hexdigest(),
            **_lock_of(client, location.bucket, manifest_key),
        }
    ]
    for entry in manifest["files"]:
        key = location.key(prefix, entry["name"])
        digest, size = remote_sha256(client, location.bucket, key)
        if digest != entry["sha256"] or size != entry["size_bytes"]:
            raise EvidenceError(
                f"{location.url(key)}: stored copy has sha256 {digest[:12]}… ({size} bytes), "
                f"the manifest says {entry['sha256'][:12]}… ({entry['size_bytes']} bytes)"
            )
        objects.append({"key": key, "sha256": digest, **_lock_of(client, location.bucket, key)})
    unlocked = [o["key"] for o in objects if not o["retain_until"]]
    if unlocked:
        raise EvidenceError(f"evidence objects without an Object Lock retention: {unlocked}")
    return {"manifest": manifest, "objects": objects}


def _lock_of(client: Any, bucket: str, key: str) -> dict[str, Any]:
    head = head_object(client, bucket, key) or {}
    until = head.get("ObjectLockRetainUntilDate")
    return {
        "version_id": head.get("VersionId"),
        "lock_mode": head.get("ObjectLockMode"),
        "retain_until": until.isoformat() if isinstance(until, datetime) else until,
    }


def store_evidence(
    client: Any,
    location_url: str,
    incident_id: str,
    bundle: Path,
    manifest: dict[str, Any],
    *,
    mode: str,
    retention: timedelta,
) -> dict[str, Any]:
    """Upload the bundle under ``<prefix>/<incident_id>/`` with Object Lock, manifest last,
    then verify it from S3. An incident whose manifest is already stored is only
    verified (nothing uploaded twice)."""
    location = S3Location.parse(location_url)
    if head_object(client, location.bucket, location.key(incident_id, MANIFEST)):
        found = verify_stored(client, location, incident_id)
        return {**found, "uploaded": []}
    retain_until = datetime.now(UTC) + retention
    uploaded = []
    for entry in manifest["files"]:
        done = _locked_upload(
            client,
            bundle / entry["name"],
            location,
            location.key(incident_id, entry["name"]),
            entry["sha256"],
            mode,
            retain_until,
        )
        if done["uploaded"]:
            uploaded.append(done["key"])
    manifest_file = bundle / MANIFEST
    done = _locked_upload(
        client,
        manifest_file,
        location,
        location.key(incident_id, MANIFEST),
        sha256_file(manifest_file),
        mode,
        retain_until,
    )
    if done["uploaded"]:
        uploaded.append(done["key"])
    found = verify_stored(client, location, incident_id)
    log.info("evidence of %s stored and verified: %d object(s)", incident_id, len(found["objects"]))
    return {**found, "uploaded": uploaded}
