"""Picking and reading the configuration and storage snapshots the backup DAGs take.

The format belongs to ``tracktion_dr.backups.snapshots`` (the one writer): every snapshot
is ``<name>.tar.gz`` with a ``<name>.tar.gz.manifest.json`` sidecar written before the
archive is renamed into place, so only snapshots with a manifest are complete.

* **configuration**: ``<backups.configuration>/config_full_<stamp>.tar.gz``, one top-level
  folder per configuration path (its base name), plus an optional
  ``environment_snapshot.txt``. Safety snapshots taken before a restore go to ``safety/``
  in the same location, so "latest" never picks one.
* **storage**: per area, ``<backups.storage>/<area>/<area>_{full,incremental}_<stamp>.tar.gz``.
  A restore point is a moment: for each area, the newest full taken at or before it and
  the incrementals after that full up to it; a file's newest copy in that chain wins.

An ``s3://`` location (the offsite copy, ``backups/offsite.py``) is read through its local
mirror (``backups/s3_objects.py``): every object downloaded once, its sha256 checked
against what the offsite copy recorded, under ``$DR_OFFSITE_CACHE`` (default
/var/lib/tracktion-dr/offsite-cache); the offsite copy holds only the newest snapshot of
each kind/area, which is what a restore reads anyway. Callers pass the plan's
``backups.offsite_conn_id`` for it.
"""

from __future__ import annotations

import json
import re
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tracktion_dr.backups import s3_objects
from tracktion_dr.backups.catalog import default_offsite_cache
from tracktion_dr.backups.snapshots import ENVIRONMENT_MEMBER, MANIFEST_SUFFIX
from tracktion_dr.core.errors import StepFailed
from tracktion_dr.core.safe_tar import extract_as_data

# Re-exported: the recovery modules and tests take them from here.
from tracktion_dr.postgres.dumps import sha256_file as sha256_file
from tracktion_dr.postgres.dumps import utc_stamp as utc_stamp

CONFIG_PREFIX = "config_"
_STAMP = re.compile(r"(\d{8}T\d{6}Z)")


class SnapshotError(StepFailed):
    """No usable snapshot, or a snapshot that cannot be read; the message says which."""


@dataclass(frozen=True)
class Snapshot:
    name: str
    path: Path
    taken_at: datetime

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "path": str(self.path), "taken_at": self.taken_at.isoformat()}

    @classmethod
    def from_dict(cls, value: dict[str, str]) -> Snapshot:
        return cls(value["name"], Path(value["path"]), datetime.fromisoformat(value["taken_at"]))


def location_dir(location: str, conn_id: str | None = None, *, field: str = "backups") -> Path:
    """The local folder of a snapshot location: itself (file://), or the verified mirror of
    an s3:// one (downloaded now where missing; ``InvalidInput`` naming ``field`` for a
    location without a bucket or an unknown connection)."""
    if location.startswith("file://"):
        return Path(location.removeprefix("file://"))
    if s3_objects.is_s3(location) and conn_id:
        mirror = s3_objects.S3Mirror(
            s3_objects.client_for(conn_id), location, default_offsite_cache(), field=field
        )
        try:
            mirror.fetch_all(lambda relative: not relative.endswith(".verification.json"))
        except (s3_objects.ChecksumMismatch, s3_objects.MissingObject) as exc:
            raise SnapshotError(str(exc)) from None
        mirror.local.mkdir(parents=True, exist_ok=True)
        return mirror.local
    raise SnapshotError(
        f"{location}: only file:// locations, or s3:// ones with the plan's "
        "backups.offsite_conn_id, can be restored from"
    )


def _manifest(archive: Path) -> dict[str, Any] | None:
    try:
        return json.loads(archive.with_name(archive.name + MANIFEST_SUFFIX).read_text())
    except (OSError, ValueError):
        return None


def _taken_at(archive: Path, manifest: dict[str, Any]) -> datetime | None:
    if manifest.get("started_at"):
        return datetime.fromisoformat(manifest["started_at"])
    match = _STAMP.search(archive.name)
    if not match:
        return None
    return datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def _complete(folder: Path, pattern: str) -> list[tuple[Snapshot, dict[str, Any]]]:
    found = []
    for path in folder.glob(pattern) if folder.is_dir() else []:
        manifest = _manifest(path)
        taken_at = _taken_at(path, manifest) if manifest else None
        if manifest and taken_at and not path.name.startswith("."):
            found.append((Snapshot(path.name, path, taken_at), manifest))
    return sorted(found, key=lambda pair: pair[0].taken_at)


def list_snapshots(location: str, kind: str, conn_id: str | None = None) -> list[Snapshot]:
    """Complete snapshots of ``kind`` (``configuration``, or ``storage``: every area's
    archives), oldest first."""
    folder = location_dir(location, conn_id, field=f"backups.{kind}")
    if kind == "configuration":
        return [s for s, _ in _complete(folder, f"{CONFIG_PREFIX}*.tar.gz")]
    archives = [
        pair
        for area in (sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else [])
        for pair in _complete(area, f"{area.name}_*.tar.gz")
    ]
    return [s for s, _ in sorted(archives, key=lambda pair: pair[0].taken_at)]


def pick_snapshot(
    location: str, kind: str, which: str = "latest", conn_id: str | None = None
) -> Snapshot:
    """``latest``, a day (``2026-11-25`` / ``20261125``: the newest of that day), or a name."""
    snapshots = list_snapshots(location, kind, conn_id)
    if not snapshots:
        raise SnapshotError(f"no {kind} snapshot in {location}")
    which = (which or "latest").strip()
    if which == "latest":
        return snapshots[-1]
    by_name = [s for s in snapshots if s.name == which]
    if by_name:
        return by_name[0]
    day = which.replace("-", "")
    if not re.fullmatch(r"\d{8}", day):
        raise SnapshotError(
            f"snapshot: {which!r} is not 'latest', a date (YYYY-MM-DD) or a snapshot name"
        )
    on_day = [s for s in snapshots if s.taken_at.strftime("%Y%m%d") == day]
    if not on_day:
        raise SnapshotError(
            f"snapshot: no {kind} snapshot taken on {which} in {location} "
            f"(have {', '.join(s.name for s in snapshots)})"
        )
    return on_day[-1]


# --- configuration archives ------------------------------------------------------------


def extract_snapshot(archive: Path, destination: Path) -> Path:
    """Extract with tarfile's ``data`` filter: no absolute paths, no ``..``, no links out,
    no device files. A hostile or damaged archive fails here, before anything is swapped."""
    destination.mkdir(parents=True, exist_ok=False)
    try:
        with tarfile.open(archive, "r:gz") as opened:
            extract_as_data(opened, destination)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise SnapshotError(f"{archive.name} cannot be extracted: {exc}") from None
    return destination


def read_environment(extracted: Path) -> dict[str, str]:
    path = extracted / ENVIRONMENT_MEMBER
    if not path.is_file():
        return {}
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.lstrip().startswith("#"):
            values[key.strip()] = value
    return values


# --- storage restore points ------------------------------------------------------------


def _area_chain(area_dir: Path, point: datetime) -> list[tuple[Snapshot, dict[str, Any]]]:
    """The newest full of the area at or before ``point`` and the incrementals after it."""
    taken = [
        pair
        for pair in _complete(area_dir, f"{area_dir.name}_*.tar.gz")
        if pair[0].taken_at <= point
    ]
    fulls = [i for i, (_, manifest) in enumerate(taken) if manifest.get("level") == "full"]
    return taken[fulls[-1] :] if fulls else []


def storage_inventory(snapshot: Snapshot) -> dict[str, dict[str, dict[str, Any]]]:
    """area -> relative path -> {size, sha256, archive, member} at the restore point
    ``snapshot`` (a storage archive picked by ``pick_snapshot``): what the backups hold."""
    storage_root = snapshot.path.parent.parent
    areas: dict[str, dict[str, dict[str, Any]]] = {}
    for area_dir in sorted(p for p in storage_root.iterdir() if p.is_dir()):
        chain = _area_chain(area_dir, snapshot.taken_at)
        if not chain:
            continue
        files: dict[str, dict[str, Any]] = {}
        for archive, manifest in chain:
            source = str(manifest["sources"][0]).lstrip("/")
            for entry in manifest["files"]:
                relative = str(Path(entry["path"]).relative_to(source))
                files[relative] = {
                    "size": entry["size_bytes"],
                    "sha256": entry["sha256"],
                    "archive": str(archive.path),
                    "member": entry["path"],
                }
        areas[area_dir.name] = files
    return areas


def extract_member(archive: Path, member: str, target: Path) -> None:
    """Write one archived file to ``target`` (a temporary name chosen by the caller)."""
    try:
        with tarfile.open(archive, "r:gz") as opened:
            handle = opened.extractfile(member)
            if handle is None:
                raise SnapshotError(f"{archive.name}: {member} is not a regular file")
            with handle, target.open("wb") as out:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    out.write(block)
    except (tarfile.TarError, KeyError, EOFError, OSError) as exc:
        raise SnapshotError(f"{archive.name}: cannot read {member}: {exc}") from None
