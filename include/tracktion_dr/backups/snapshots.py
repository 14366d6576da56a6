"""Configuration and file-storage snapshots, and the near-real-time storage sync.

Snapshots are ``<name>.tar.gz`` with a ``<name>.tar.gz.manifest.json`` sidecar (sha256,
size_bytes, started_at, finished_at, level, the file list with each file's size and
sha256) - the format ``Catalog.snapshots()`` lists and verifies. The archive is written
under a hidden ``.partial`` name, its manifest is written, and only then is it renamed into
place, so a listed snapshot is always complete and described.

Levels (the seed's File System Recovery Levels):

* ``full``: every file of the area (weekly);
* ``incremental``: files changed since the newest snapshot of the area started (daily);
  its manifest names the snapshot it builds on (``based_on``) so retention keeps the chain
  and a restore knows what to unpack first;
* the **sync** (Level 1, every few minutes): a plain mirror of the area under
  ``<storage>/sync/<area>/``. It copies new and changed files (temp name, then rename) and
  never deletes a mirrored file whose source disappeared: an accidental deletion in
  production must not propagate into the copy meant to undo it.

Archive member names: a storage area's files under its source path without the leading
``/``; a configuration snapshot's under each configuration folder's *base name*
(``config/app.json``), the layout ``dr_config_recovery`` restores beside the live folder.
Two configuration paths with the same base name are refused rather than merged. A
configuration snapshot may carry the plan's environment file, filtered to the plan's
allowed prefixes, as ``environment_snapshot.txt``; such an archive is made 0600.

A *safety* snapshot (``dr_config_recovery``'s, taken before it touches anything) must give
back exactly what was there, so it carries two more private members: ``safety_state.json``
(every path's type, mode, owner and checksum, and whether the environment file existed)
and ``environment_file`` (that file's bytes, as they were). A configuration folder may not
be named like one of these members.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from tracktion_dr.core.errors import StepFailed
from tracktion_dr.postgres.dumps import sha256_file, utc_stamp, write_json_atomic

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".manifest.json"  # the catalog's SNAPSHOT_MANIFEST_SUFFIX
ENVIRONMENT_MEMBER = "environment_snapshot.txt"
# A safety snapshot's exact record: the state of every path, and the environment file's bytes.
SAFETY_STATE_MEMBER = "safety_state.json"
ENVIRONMENT_FILE_MEMBER = "environment_file"
RESERVED_MEMBERS = frozenset({ENVIRONMENT_MEMBER, SAFETY_STATE_MEMBER, ENVIRONMENT_FILE_MEMBER})
SAFETY_FOLDER = "safety"  # dr_config_recovery's safety snapshots, beside the daily ones
SYNC_FOLDER = "sync"
SYNC_STATE_SUFFIX = ".sync.json"
# Per mirrored file: size, mtime and the sha256 of the copy the sync made - how a restore
# (and the RPO watch) knows a mirror copy is still the one the sync wrote.
SYNC_FILES_SUFFIX = ".files.json"
Level = Literal["full", "incremental"]


class SnapshotError(StepFailed):
    """A snapshot cannot be taken; the message names the path and the reason."""


def _files(sources: Iterable[Path], *, by_base_name: bool) -> list[tuple[Path, str]]:
    """(file, member name) for every regular file below the sources, sorted."""
    found: list[tuple[Path, str]] = []
    roots: dict[str, Path] = {}
    for source in sources:
        if not source.exists():
            raise SnapshotError(f"{source}: does not exist (check the plan's paths)")
        if by_base_name and roots.setdefault(source.name, source) != source:
            raise SnapshotError(
                f"{source}: same base name as {roots[source.name]}; a configuration "
                "snapshot names its folders by base name, so the plan's config_paths must differ"
            )
        candidates = [source] if source.is_file() else sorted(source.rglob("*"))
        for path in candidates:
            # Only regular files are archived (and hashed); a symlink is not followed.
            if path.is_file() and not path.is_symlink():
                member = (
                    str(Path(source.name) / path.relative_to(source))
                    if by_base_name
                    else str(path).lstrip("/")
                )
                found.append((path, member))
    return found


def read_manifest(snapshot: Path) -> dict[str, Any] | None:
    try:
        return json.loads(snapshot.with_name(snapshot.name + MANIFEST_SUFFIX).read_text())
    except (OSError, ValueError):
        return None


def newest_snapshot(folder: Path, prefix: str) -> tuple[Path, dict[str, Any]] | None:
    """The newest complete snapshot ``<prefix>_*.tar.gz`` in ``folder`` with its manifest."""
    best: tuple[Path, dict[str, Any]] | None = None
    for path in folder.glob(f"{prefix}_*.tar.gz") if folder.is_dir() else []:
        manifest = read_manifest(path)
        if manifest and (best is None or manifest["started_at"] > best[1]["started_at"]):
            best = (path, manifest)
    return best


def take_snapshot(
    sources: list[Path],
    destination: Path,
    prefix: str,
    *,
    level: Level = "full",
    extra: dict[str, Any] | None = None,
    now: datetime | None = None,
    by_base_name: bool = False,
    private_members: dict[str, bytes] | None = None,
    name: str | None = None,
) -> Path:
    """Archive ``sources`` into ``destination/<prefix>_<level>_<stamp>.tar.gz`` (or ``name``).

    ``incremental`` takes only files modified since the newest snapshot with this prefix
    started; with no earlier snapshot it is refused (a chain needs a full to start from).
    ``private_members`` (member name -> bytes) are added with mode 0600 and make the
    archive itself 0600; they are listed in the manifest without a checksum of their own.
    """
    if not sources:
        raise SnapshotError(f"{prefix}: no source paths to snapshot (plan lists none)")
    destination.mkdir(parents=True, exist_ok=True)
    started = now or datetime.now(UTC)
    based_on: str | None = None
    since: float | None = None
    if level == "incremental":
        previous = newest_snapshot(destination, prefix)
        if previous is None:
            raise SnapshotError(
                f"{destination}: no earlier {prefix} snapshot to build an incremental on;"
                " take a full one first"
            )
        based_on = previous[0].name
        since = datetime.fromisoformat(previous[1]["started_at"]).timestamp()
    name = name or f"{prefix}_{level}_{utc_stamp(started)}.tar.gz"
    final, partial = destination / name, destination / f".{name}.partial"
    if final.exists():
        raise FileExistsError(f"{final} already exists (two snapshots in the same second?)")
    members: list[dict[str, Any]] = []
    if private_members:
        # Created 0600 before a byte is written: environment values are secrets.
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    with tarfile.open(partial, "w:gz", compresslevel=6) as archive:
        for member, data in (private_members or {}).items():
            info = tarfile.TarInfo(member)
            info.size, info.mode, info.mtime = len(data), 0o600, int(started.timestamp())
            archive.addfile(info, io.BytesIO(data))
            members.append({"path": member, "size_bytes": len(data), "private": True})
        for path, member in _files(sources, by_base_name=by_base_name):
            stat = path.stat()
            # Changed files only, for an incremental: mtime strictly after the base started
            # would miss a write in the same second, so ">=" (a file may appear twice).
            if since is not None and stat.st_mtime < since:
                continue
            archive.add(path, arcname=member, recursive=False)
            members.append(
                {"path": member, "size_bytes": stat.st_size, "sha256": sha256_file(path)}
            )
    manifest = {
        "file": name,
        "kind": prefix,
        "level": level,
        "based_on": based_on,
        "sources": [str(s) for s in sources],
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "size_bytes": partial.stat().st_size,
        "sha256": sha256_file(partial),
        "file_count": len(members),
        "files": members,
        **(extra or {}),
    }
    write_json_atomic(destination / f"{name}{MANIFEST_SUFFIX}", manifest)
    os.replace(partial, final)
    log.info("snapshot %s: %d files, %d bytes", final, len(members), manifest["size_bytes"])
    return final


def config_snapshot(
    config_paths: list[str],
    destination: Path,
    *,
    environment: dict[str, str] | None = None,
    name: str | None = None,
    now: datetime | None = None,
    exact_members: dict[str, bytes] | None = None,
) -> Path:
    """The plan's configuration folders as ``config_full_<stamp>.tar.gz`` (always full:
    configuration is small and a restore should need one file, not a chain), members
    under each folder's base name, plus ``environment`` as ``environment_snapshot.txt``
    and ``exact_members`` (a safety snapshot's ``safety_state.json`` and
    ``environment_file``) as private members."""
    for path in config_paths:
        if Path(path).name in RESERVED_MEMBERS:
            raise SnapshotError(
                f"{path}: a configuration folder cannot be named {Path(path).name!r}, the "
                "name of a snapshot's own member; rename it in the plan's config_paths"
            )
    private = dict(exact_members or {})
    if environment:
        private[ENVIRONMENT_MEMBER] = "".join(
            f"{k}={v}\n" for k, v in sorted(environment.items())
        ).encode()
    return take_snapshot(
        [Path(p) for p in config_paths],
        destination,
        "config",
        by_base_name=True,
        private_members=private or None,
        name=name,
        now=now,
    )


def read_environment_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of an environment file (``export`` and comments allowed)."""
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        if sep and key and not key.startswith("#"):
            values[key] = value
    return values


def allowed_environment(path: str | None, prefixes: list[str]) -> dict[str, str]:
    """The variables of the environment file whose names start with an allowed prefix:
    nothing else (credentials of other systems) ever goes into a snapshot."""
    if not path or not Path(path).is_file():
        return {}
    return {
        k: v
        for k, v in read_environment_file(Path(path)).items()
        if any(k.startswith(prefix) for prefix in prefixes)
    }


def storage_snapshot(area: str, source: Path, storage_root: Path, level: Level) -> Path:
    """A full or incremental snapshot of one storage area into ``<storage>/<area>/``."""
    return take_snapshot([source], storage_root / area, area, level=level, extra={"area": area})


# --------------------------------------------------------------------------- sync


@dataclass(frozen=True)
class SyncResult:
    area: str
    files: int
    copied: int
    bytes_copied: int
    kept_deleted: int
    started_at: datetime
    finished_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "area": self.area,
            "files": self.files,
            "copied": self.copied,
            "bytes_copied": self.bytes_copied,
            "kept_deleted": self.kept_deleted,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
        }


def sync_mirror_dir(storage_root: Path, area: str) -> Path:
    return storage_root / SYNC_FOLDER / area


def sync_state_file(storage_root: Path, area: str) -> Path:
    return storage_root / SYNC_FOLDER / f"{area}{SYNC_STATE_SUFFIX}"


def sync_files_file(storage_root: Path, area: str) -> Path:
    return storage_root / SYNC_FOLDER / f"{area}{SYNC_FILES_SUFFIX}"


def read_sync_files(storage_root: Path, area: str) -> dict[str, dict[str, Any]]:
    """relative path -> {size, mtime, sha256} of each copy the sync made ({} before the
    first sync that kept this record)."""
    try:
        recorded = json.loads(sync_files_file(storage_root, area).read_text())
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _record_copy(target: Path) -> dict[str, Any]:
    info = target.stat()
    return {"size": info.st_size, "mtime": int(info.st_mtime), "sha256": sha256_file(target)}


def sync_area(area: str, source: Path, storage_root: Path) -> SyncResult:
    """Mirror ``source`` into ``<storage>/sync/<area>/``: new or changed files (by size
    and mtime) are copied under a temp name and renamed; nothing is ever deleted. The
    sha256 of every copy is recorded (``<area>.files.json``; a copy made before that
    record existed is hashed once), so a restore can tell a damaged copy from a good one."""
    if not source.is_dir():
        raise SnapshotError(f"{source}: storage area {area!r} is not a directory")
    started = datetime.now(UTC)
    mirror = sync_mirror_dir(storage_root, area)
    mirror.mkdir(parents=True, exist_ok=True)
    recorded = read_sync_files(storage_root, area)
    files = copied = copied_bytes = 0
    seen: set[Path] = set()
    for path in sorted(source.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        files += 1
        relative = path.relative_to(source)
        seen.add(relative)
        target = mirror / relative
        stat = path.stat()
        if target.exists():
            current = target.stat()
            if current.st_size == stat.st_size and int(current.st_mtime) == int(stat.st_mtime):
                known = recorded.get(str(relative))
                if not known or known.get("size") != current.st_size:
                    recorded[str(relative)] = _record_copy(target)
                continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        shutil.copy2(path, partial)
        record = _record_copy(partial)
        os.replace(partial, target)
        recorded[str(relative)] = record
        copied += 1
        copied_bytes += stat.st_size
    kept_deleted = sum(
        1
        for p in mirror.rglob("*")
        if p.is_file() and not p.name.endswith(".partial") and p.relative_to(mirror) not in seen
    )
    result = SyncResult(area, files, copied, copied_bytes, kept_deleted, started, datetime.now(UTC))
    write_json_atomic(sync_files_file(storage_root, area), recorded)
    # The state says up to when the mirror is complete: its start (later writes may be
    # missed). The RPO watch reads it; written last, after the per-file record.
    write_json_atomic(
        sync_state_file(storage_root, area), {**result.as_dict(), "source": str(source)}
    )
    log.info(
        "sync %s: %d files, %d copied (%d bytes), %d kept though deleted at the source",
        area,
        files,
        copied,
        copied_bytes,
        kept_deleted,
    )
    return result


def read_sync_state(storage_root: Path, area: str) -> dict[str, Any] | None:
    try:
        return json.loads(sync_state_file(storage_root, area).read_text())
    except (OSError, ValueError):
        return None


def mirror_problems(storage_root: Path, area: str) -> list[str]:
    """Why the area's sync mirror cannot be counted on as a whole ([] when it can): no
    completed pass, no per-file record, or a recorded copy gone or changed in size. (A
    cheap look, for the RPO watch; a restore checks each copy's sha256 before using it.)"""
    if read_sync_state(storage_root, area) is None:
        return ["no completed sync pass"]
    recorded = read_sync_files(storage_root, area)
    if not recorded:
        return ["the sync recorded no checksums (older sync format): run the sync again"]
    mirror = sync_mirror_dir(storage_root, area)
    problems = []
    for relative, entry in sorted(recorded.items()):
        path = mirror / relative
        try:
            size = path.stat().st_size
        except OSError:
            problems.append(f"{relative}: gone from the mirror")
            continue
        if size != entry.get("size"):
            problems.append(f"{relative}: {size} bytes, the sync copied {entry.get('size')}")
    return problems


def newest_storage_point(storage_root: Path, area: str) -> tuple[datetime | None, str]:
    """(newest moment dr_storage_recovery can restore the area to, which copy that is):
    the start of the last completed sync pass when its mirror is intact (see
    :func:`mirror_problems`), else the newest snapshot of the area (full or incremental)."""
    candidates: list[tuple[datetime, str]] = []
    state = read_sync_state(storage_root, area)
    if state and not mirror_problems(storage_root, area):
        candidates.append((datetime.fromisoformat(state["started_at"]), "sync mirror"))
    newest = newest_snapshot(storage_root / area, area)
    if newest:
        candidates.append((datetime.fromisoformat(newest[1]["started_at"]), newest[0].name))
    if not candidates:
        return None, "no sync and no snapshot"
    return max(candidates)


def newest_config_point(config_root: Path) -> datetime | None:
    newest = newest_snapshot(config_root, "config")
    return datetime.fromisoformat(newest[1]["started_at"]) if newest else None
