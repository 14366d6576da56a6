"""Configuration and storage snapshots read from the plan's backup locations.

A stop-gap reader until the backups catalog (the backups issue) owns listing, verifying and
picking every kind of backup; the formats here are what that catalog will take over:

* **configuration**: ``<backups.configuration>/config_<YYYYMMDDTHHMMSSZ>.tar.gz``; one
  top-level folder per configuration path (its base name), plus an optional
  ``environment_snapshot.txt`` (``NAME=value`` lines). Safety snapshots taken before a
  restore go to ``safety/`` under the same location, so "latest" never picks one.
* **storage**: ``<backups.storage>/full_<YYYYMMDDTHHMMSSZ>/`` holding one folder per
  storage area and ``manifest.json`` (per area: relative path -> size and sha256), written
  last, so a snapshot without a manifest is incomplete and ignored.

Only ``file://`` locations are read here; ``s3://`` is refused with a clear message.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CONFIG_PREFIX = "config_"
SAFETY_FOLDER = "safety"
STORAGE_PREFIX = "full_"
MANIFEST = "manifest.json"
ENVIRONMENT_MEMBER = "environment_snapshot.txt"
_STAMP = re.compile(r"(\d{8}T\d{6}Z)")


class SnapshotError(RuntimeError):
    """No usable snapshot, or a snapshot that cannot be read; the message says which."""


@dataclass(frozen=True)
class Snapshot:
    name: str
    path: Path
    taken_at: datetime

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "path": str(self.path), "taken_at": self.taken_at.isoformat()}


def utc_stamp(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


def location_dir(location: str) -> Path:
    if location.startswith("file://"):
        return Path(location.removeprefix("file://"))
    raise SnapshotError(
        f"{location}: only file:// locations are read by this module; s3:// comes with the "
        "backups catalog"
    )


def _stamp_of(name: str) -> datetime | None:
    match = _STAMP.search(name)
    if not match:
        return None
    return datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def list_snapshots(location: str, kind: str) -> list[Snapshot]:
    """Complete snapshots of ``kind`` (``configuration`` or ``storage``), oldest first."""
    folder = location_dir(location)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        if kind == "configuration":
            ok = (
                path.is_file()
                and path.name.startswith(CONFIG_PREFIX)
                and path.name.endswith(".tar.gz")
            )
        else:
            ok = (
                path.is_dir()
                and path.name.startswith(STORAGE_PREFIX)
                and (path / MANIFEST).is_file()
            )
        taken_at = _stamp_of(path.name)
        if ok and taken_at:
            found.append(Snapshot(path.name, path, taken_at))
    return sorted(found, key=lambda s: s.taken_at)


def pick_snapshot(location: str, kind: str, which: str = "latest") -> Snapshot:
    """``latest``, a day (``2026-11-25`` / ``20261125``: the newest of that day), or a name."""
    snapshots = list_snapshots(location, kind)
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


def create_config_snapshot(
    config_paths: Iterable[str | Path],
    destination: Path,
    *,
    name: str | None = None,
    environment: Mapping[str, str] | None = None,
) -> Path:
    """Write ``config_<stamp>.tar.gz`` (or ``name``) atomically; return its path."""
    destination.mkdir(parents=True, exist_ok=True)
    target = destination / (name or f"{CONFIG_PREFIX}{utc_stamp()}.tar.gz")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=destination)
    os.close(fd)
    try:
        with tarfile.open(tmp_name, "w:gz") as archive:
            for config_path in config_paths:
                path = Path(config_path)
                if path.is_dir():
                    archive.add(path, arcname=path.name)
            if environment:
                data = "".join(f"{k}={v}\n" for k, v in sorted(environment.items())).encode()
                info = tarfile.TarInfo(ENVIRONMENT_MEMBER)
                info.size, info.mode = len(data), 0o600
                archive.addfile(info, io.BytesIO(data))
        os.chmod(tmp_name, 0o600)  # may hold environment values
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def extract_snapshot(archive: Path, destination: Path) -> Path:
    """Extract with tarfile's ``data`` filter: no absolute paths, no ``..``, no links out,
    no device files. A hostile or damaged archive fails here, before anything is swapped."""
    destination.mkdir(parents=True, exist_ok=False)
    try:
        with tarfile.open(archive, "r:gz") as opened:
            opened.extractall(destination, filter="data")
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


# --- storage snapshots -----------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_inventory(root: Path) -> dict[str, dict[str, Any]]:
    """relative path -> {size, sha256} for every regular file under ``root``."""
    inventory = {}
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink() and not path.name.startswith(".dr-"):
                inventory[str(path.relative_to(root))] = {
                    "size": path.stat().st_size,
                    "sha256": sha256_file(path),
                }
    return inventory


def read_manifest(snapshot: Snapshot) -> dict[str, dict[str, dict[str, Any]]]:
    try:
        manifest = json.loads((snapshot.path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"{snapshot.name}: unreadable manifest: {exc}") from None
    return manifest["areas"]
