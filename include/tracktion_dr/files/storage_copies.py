"""Where a lost storage file can come back from, and which copy a restore uses.

Two kinds of copies hold an area's files (``tracktion_dr.backups.snapshots`` writes both):

* the **snapshots** (daily incremental, weekly full): a file as it was at the restore point
  picked (``files.snapshots.storage_inventory``), with the sha256 its manifest recorded;
* the **sync mirror** (``<storage>/sync/<area>/``, every few minutes): plain copies,
  complete up to the start of the last sync pass, each with the sha256 the sync recorded
  when it made the copy (``<area>.files.json``).

A copy is *usable* only when it is verified good now: its bytes still match the sha256
recorded when it was made, and in an ``audio: true`` area mutagen still reads it as audio.
``auto`` takes the freshest usable copy of each file; a damaged mirror copy is skipped
(and named) in favour of the snapshot's, never restored.

The age of the copy used, at the time of the loss, is the data loss (RPO) a restore
achieves for that file: what was written after the copy was made is not in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from tracktion_dr.backups import snapshots as writer
from tracktion_dr.files.snapshots import sha256_file
from tracktion_dr.files.storage_integrity import audio_problem

Source = Literal["auto", "mirror", "snapshot"]
SOURCES: tuple[str, ...] = ("auto", "mirror", "snapshot")
MIRROR = "mirror"
SNAPSHOT = "snapshot"


@dataclass(frozen=True)
class MirrorState:
    """One area's sync mirror: up to when it is complete, and its recorded copies."""

    area: str
    folder: Path
    synced_at: datetime
    files: dict[str, dict[str, Any]]  # relative path -> {size, mtime, sha256}

    @property
    def name(self) -> str:
        return f"sync mirror {writer.SYNC_FOLDER}/{self.area} ({self.synced_at.isoformat()})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "area": self.area,
            "folder": str(self.folder),
            "synced_at": self.synced_at.isoformat(),
            "files": len(self.files),
        }


def read_mirror(storage_root: Path, area: str) -> MirrorState | None:
    """The area's mirror after a completed sync pass that recorded checksums, else None
    (a mirror without checksums cannot be verified, so it is not restored from)."""
    state = writer.read_sync_state(storage_root, area)
    recorded = writer.read_sync_files(storage_root, area)
    if not state or not recorded:
        return None
    return MirrorState(
        area=area,
        folder=writer.sync_mirror_dir(storage_root, area),
        synced_at=datetime.fromisoformat(state["started_at"]),
        files=recorded,
    )


def candidates(
    held: dict[str, dict[str, Any]],
    snapshot_point: datetime | None,
    snapshot_name: str | None,
    mirror: MirrorState | None,
    source: str,
) -> dict[str, list[dict[str, Any]]]:
    """relative path -> the copies ``source`` allows, freshest first. Each copy: size,
    sha256 (as recorded when it was made), source (``mirror``/``snapshot``), copy (its
    name), point (ISO time it is complete up to) and where to read it (``path``, or
    ``archive`` + ``member``)."""
    found: dict[str, list[dict[str, Any]]] = {}
    if mirror is not None and source in ("auto", MIRROR):
        for relative, entry in mirror.files.items():
            found.setdefault(relative, []).append(
                {
                    "size": entry.get("size"),
                    "sha256": entry.get("sha256"),
                    "source": MIRROR,
                    "copy": mirror.name,
                    "point": mirror.synced_at.isoformat(),
                    "path": str(mirror.folder / relative),
                }
            )
    if snapshot_point is not None and source in ("auto", SNAPSHOT):
        for relative, entry in held.items():
            found.setdefault(relative, []).append(
                {
                    **entry,
                    "source": SNAPSHOT,
                    "copy": snapshot_name,
                    "point": snapshot_point.isoformat(),
                }
            )
    for copies in found.values():
        copies.sort(key=lambda c: c["point"], reverse=True)
    return found


def expected(found: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """relative path -> the freshest copy: what the area is compared with (its size and
    sha256 say whether a file on disk is missing, emptied or changed since)."""
    return {relative: copies[0] for relative, copies in found.items() if copies}


def copy_problem(copy: dict[str, Any], *, audio: bool) -> str | None:
    """None when ``copy`` is verified good now, else why it must not be restored. Mirror
    copies are read here; snapshot copies are checked against their manifest's sha256
    when they are extracted (``storage_integrity.repair_area``)."""
    if copy["source"] != MIRROR:
        return None
    path = Path(copy["path"])
    if not path.is_file():
        return "gone from the mirror"
    if not copy.get("sha256"):
        return "no checksum recorded by the sync"
    if sha256_file(path) != copy["sha256"]:
        return "does not match the checksum the sync recorded (damaged in the mirror)"
    if audio:
        problem = audio_problem(path)
        if problem:
            return f"not sound audio: {problem}"
    return None


def choose(
    copies: list[dict[str, Any]], *, audio: bool
) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """(the freshest usable copy or None, copy name -> why each fresher one was skipped)."""
    skipped: dict[str, str] = {}
    for copy in copies:
        problem = copy_problem(copy, audio=audio)
        if problem is None:
            return copy, skipped
        skipped[copy["copy"]] = problem
    return None, skipped


def age_at_loss(copy: dict[str, Any], lost_at: datetime) -> float:
    """Seconds between the copy's point and the loss: the data a restore from it loses."""
    return max(0.0, (lost_at - datetime.fromisoformat(copy["point"])).total_seconds())
