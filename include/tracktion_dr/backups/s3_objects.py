"""Reading an ``s3://`` backup location: verified downloads into a local mirror.

The offsite copy (``backups/offsite.py``) writes every object with its sha256 in the
``x-amz-meta-sha256`` metadata and mirrors the local layout under its prefix. Reading is
the reverse: a location ``s3://bucket/prefix`` has one local mirror,
``<cache>/<bucket>/<prefix>``, and every object comes down to the same relative path
there - hashed while it streams into a hidden ``.<name>.partial`` file, compared with the
metadata, and only then renamed to its name. So a file under its own name in the mirror
has been verified, and a worker killed half-way leaves a ``.partial`` that the next
attempt starts again; an object already downloaded (same size) is never fetched again.

A mismatch is kept for inspection as ``<name>.sha256-mismatch`` (never served) and raised
as :class:`ChecksumMismatch` (a ``ValidationFailed``) naming the object; the catalog
records the backup as failed and moves on. Nothing here touches anything but the mirror.

The S3 client comes from the amazon provider's ``S3Hook`` on the plan's connection
(``backups.offsite_conn_id``), imported only when an ``s3://`` location is read; the
connection is looked up first so a wrong id is refused with its field before anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tracktion_dr.core.errors import InvalidInput, ValidationFailed
from tracktion_dr.postgres.commands import chown_tree

log = logging.getLogger(__name__)

SHA256_METADATA = "sha256"  # x-amz-meta-sha256: written by every offsite upload
S3_SCHEME = "s3://"
MISMATCH_SUFFIX = ".sha256-mismatch"
PARTIAL_SUFFIX = ".partial"
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Location:
        if not url.startswith("s3://"):
            raise ValueError(f"not an s3:// location: {url!r}")
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise ValueError(f"no bucket in {url!r}")
        return cls(bucket, prefix.strip("/"))

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


class ChecksumMismatch(ValidationFailed):
    """An offsite object's bytes do not match the sha256 the offsite copy recorded."""


class MissingObject(ValidationFailed):
    """An object the listing or a sidecar named is not in the bucket (any more)."""


def is_s3(location: str | None) -> bool:
    return bool(location) and str(location).startswith(S3_SCHEME)


def parse_location(url: str, field: str) -> S3Location:
    """``s3://bucket/prefix`` or ``InvalidInput`` naming ``field``."""
    if not is_s3(url):
        raise InvalidInput(field, f"{url!r} is not an s3:// location")
    bucket = url.removeprefix(S3_SCHEME).partition("/")[0]
    if not bucket:
        raise InvalidInput(
            field,
            f"{url!r} names no bucket",
            hint="write it as s3://<bucket>/<prefix>, e.g. s3://tracktion-dr-backups/production",
        )
    return S3Location.parse(url)


def client_for(conn_id: str, field: str = "backups.offsite_conn_id") -> Any:
    """A boto3 S3 client from the amazon provider's ``S3Hook`` on ``conn_id``.

    The connection is looked up first: ``S3Hook`` would otherwise fall back to whatever
    credentials the machine has and fail later, far from the real cause."""
    from airflow.sdk import Connection

    try:
        Connection.get(conn_id)
    except Exception as exc:  # AirflowNotFoundException, or no secrets backend at all
        raise InvalidInput(
            field,
            f"the Airflow connection {conn_id!r} is not defined ({type(exc).__name__})",
            hint=f"create an 'aws' connection {conn_id!r} (Admin > Connections, a secrets "
            f"backend, or AIRFLOW_CONN_{conn_id.upper()}) with the offsite bucket's credentials",
        ) from None
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=conn_id).get_conn()


def mirror_dir(cache_root: Path, location: S3Location) -> Path:
    """The local mirror of a location: ``<cache>/<bucket>/<prefix>``."""
    return cache_root.joinpath(location.bucket, *[p for p in location.prefix.split("/") if p])


@dataclass(frozen=True)
class RemoteObject:
    relative: str  # the path below the location's prefix
    key: str
    size_bytes: int
    last_modified: datetime | None = None


class S3Mirror:
    """One ``s3://`` location and its local mirror; downloads are verified and resumable."""

    def __init__(
        self,
        client: Any,
        url: str,
        cache_root: Path,
        *,
        field: str = "backups",
        os_user: str | None = None,
    ):
        self.client = client
        self.url = url
        self.location = parse_location(url, field)
        self.field = field
        self.local = mirror_dir(cache_root, self.location)
        self.os_user = os_user
        self._listing: dict[str, RemoteObject] | None = None

    # -- listing ------------------------------------------------------------------------

    def objects(self, *, refresh: bool = False) -> dict[str, RemoteObject]:
        """relative path -> object, for every object under the prefix (listed once)."""
        if self._listing is not None and not refresh:
            return self._listing
        from botocore.exceptions import ClientError

        prefix = self.location.prefix + "/" if self.location.prefix else ""
        found: dict[str, RemoteObject] = {}
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    relative = item["Key"].removeprefix(prefix)
                    found[relative] = RemoteObject(
                        relative, item["Key"], int(item["Size"]), item.get("LastModified")
                    )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "NoSuchBucket":
                raise InvalidInput(
                    self.field,
                    f"bucket {self.location.bucket!r} of {self.url} does not exist",
                    hint="check the bucket name and the connection's region/endpoint",
                ) from None
            raise
        self._listing = found
        return found

    def remote(self, relative: str) -> RemoteObject | None:
        return self.objects().get(relative)

    def path(self, relative: str) -> Path:
        return self.local.joinpath(*relative.split("/"))

    # -- downloading --------------------------------------------------------------------

    def fetch(self, relative: str) -> Path:
        """The verified local copy of one object (downloaded unless already there)."""
        target = self.path(relative)
        listed = self.remote(relative)
        if listed is None:
            raise MissingObject(f"{self.location.url(self.location.key(relative))}: no such object")
        if target.is_file() and target.stat().st_size == listed.size_bytes:
            return target  # renamed into place only after its sha256 matched
        return download_verified(self.client, self.location.bucket, listed.key, target)

    def fetch_all(self, wanted: Callable[[str], bool]) -> list[Path]:
        """Every object whose relative path ``wanted`` accepts, verified, in key order."""
        paths = [self.fetch(relative) for relative in sorted(self.objects()) if wanted(relative)]
        self.hand_to_os_user()
        return paths

    def hand_to_os_user(self) -> None:
        """The mirror belongs to the cluster's OS user: ``restore_command`` (run by the
        server) reads it, and caches the segments it fetches later into it."""
        if self.os_user and self.local.exists():
            chown_tree(self.local, self.os_user)


def download_verified(client: Any, bucket: str, key: str, target: Path) -> Path:
    """Stream ``key`` into ``target`` through a hidden ``.partial`` file, hashing as it
    goes; rename into place only when the sha256 matches the object's metadata."""
    from botocore.exceptions import ClientError

    url = f"s3://{bucket}/{key}"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}{PARTIAL_SUFFIX}")
    try:
        response = client.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            raise MissingObject(f"{url}: no such object") from None
        raise
    expected = response.get("Metadata", {}).get(SHA256_METADATA)
    if not expected:
        raise ChecksumMismatch(
            f"{url}: has no sha256 metadata, so its bytes cannot be verified; not used"
        )
    digest, size = hashlib.sha256(), 0
    body = response["Body"]
    with partial.open("wb") as out:
        for block in iter(lambda: body.read(CHUNK_BYTES), b""):
            digest.update(block)
            out.write(block)
            size += len(block)
        out.flush()
        os.fsync(out.fileno())
    actual = digest.hexdigest()
    if actual != expected:
        kept = target.with_name(target.name + MISMATCH_SUFFIX)
        os.replace(partial, kept)
        raise ChecksumMismatch(
            f"{url}: downloaded {size} bytes with sha256 {actual[:12]}…, the offsite copy "
            f"recorded {expected[:12]}… (kept as {kept.name} for inspection, not used)"
        )
    os.replace(partial, target)
    log.info("downloaded %s (%d bytes, sha256 verified)", url, size)
    return target


def sidecars(relatives: Iterable[str], *suffixes: str) -> list[str]:
    return [r for r in relatives if r.endswith(suffixes)]


FETCH_CONFIG_SUFFIX = ".fetch.json"


def write_fetch_config(url: str, conn_id: str, mirror: Path, os_user: str, *, field: str) -> Path:
    """The file ``postgres/wal_fetch.py`` reads: where the archive is, where its mirror is,
    and the connection's endpoint, region and - when the connection holds them - keys.
    Beside the mirror (never inside a data directory a base backup would copy), mode 0600,
    owned by ``os_user``: credentials never go into ``postgresql.auto.conf``."""
    from tracktion_dr.postgres import wal_fetch

    location = parse_location(url, field)
    client_for(conn_id)  # refuses an unknown connection, naming the field
    from airflow.sdk import Connection

    connection = Connection.get(conn_id)
    extra = connection.extra_dejson or {}
    config: dict[str, Any] = {
        "bucket": location.bucket,
        "prefix": location.prefix,
        "mirror": str(mirror),
        "endpoint_url": extra.get("endpoint_url")
        or (extra.get("service_config", {}).get("s3", {}).get("endpoint_url")),
        "region_name": extra.get("region_name"),
        "sys_path": wal_fetch.worker_sys_path(),
    }
    if connection.login and connection.password:
        config["aws_access_key_id"] = connection.login
        config["aws_secret_access_key"] = connection.password
        if extra.get("aws_session_token"):
            config["aws_session_token"] = extra["aws_session_token"]
    path = mirror.with_name(mirror.name + FETCH_CONFIG_SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(config, handle)
    chown_tree(temporary, os_user, recursive=False)
    os.replace(temporary, path)
    return path


def forget_fetch_config(mirror: Path) -> bool:
    """Remove the credentials file of a recovery once it no longer needs it (promoted:
    ``restore_command`` is gone). True if there was one."""
    path = mirror.with_name(mirror.name + FETCH_CONFIG_SUFFIX)
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed
