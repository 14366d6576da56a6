"""What a data directory *is*, so a killed recovery can be resumed instead of redone.

The marker is a small JSON file inside the data directory (``tracktion_dr_recovery.json``):
"this directory is incident X's recovery of cluster C to target T from base backup B".
Inside, not beside, on purpose: it moves with the directory, so a directory moved aside
takes its identity along and whatever later appears at the path is not mistaken for ours.
It is written into the staging copy before that copy is renamed into place, so "the path
holds a directory with our marker" means "our base backup is fully laid down with its
recovery settings". It survives promotion (PostgreSQL ignores unknown files).

``pg_basebackup`` copies files in PGDATA, so a standby cloned from the recovered primary
gets the primary's marker: :func:`write_marker` with ``role="standby"`` replaces it there,
which also tells a resumed re-seed that the standby at the path is this incident's.

Also here: whether the postmaster of a data directory is alive (``postmaster.pid`` and its
process, no connection needed) and the FATAL line of a server log, for the gates.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from tracktion_dr.postgres.commands import chown_tree

MARKER_NAME = "tracktion_dr_recovery.json"
RECOVERY_SIGNALS = ("recovery.signal", "standby.signal")


@dataclass(frozen=True)
class RecoveryMarker:
    incident_id: str
    cluster: str
    tag: str
    target: dict[str, Any]  # RecoveryTarget.as_dict()
    base_backup: str
    base_start_lsn: str | None
    role: Literal["primary", "standby"] = "primary"
    laid_down_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    promoted_at: str | None = None
    timeline: int | None = None
    # The recovery settings written into postgresql.auto.conf, to take out after promotion.
    recovery_settings: dict[str, str] = field(default_factory=dict)

    def same_target(self, target: dict[str, Any]) -> bool:
        return (self.target.get("type"), self.target.get("value") or "") == (
            target.get("type"),
            target.get("value") or "",
        )

    def describe_target(self) -> str:
        kind, value = self.target.get("type"), self.target.get("value")
        return f"{kind} {value}" if value else str(kind)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_marker(data_directory: Path) -> RecoveryMarker | None:
    try:
        data = json.loads((data_directory / MARKER_NAME).read_text())
        return RecoveryMarker(**data)
    except (OSError, ValueError, TypeError):
        return None


def write_marker(data_directory: Path, marker: RecoveryMarker, os_user: str) -> None:
    """Atomically (temp file + rename), 0600, owned by the cluster's OS user."""
    final = data_directory / MARKER_NAME
    partial = data_directory / f".{MARKER_NAME}.tmp"
    partial.write_text(json.dumps(marker.as_dict(), indent=2) + "\n")
    partial.chmod(0o600)
    chown_tree(partial, os_user, recursive=False)
    os.replace(partial, final)


def mark_promoted(
    data_directory: Path, timeline: int | None, os_user: str
) -> RecoveryMarker | None:
    marker = read_marker(data_directory)
    if marker is None or marker.promoted_at:
        return marker
    updated = replace(marker, promoted_at=datetime.now(UTC).isoformat(), timeline=timeline)
    write_marker(data_directory, updated, os_user)
    return updated


def recovery_pending(data_directory: Path) -> bool:
    """A recovery/standby signal file is present: the server has not finished recovery
    (PostgreSQL removes them when it promotes)."""
    return any((data_directory / name).exists() for name in RECOVERY_SIGNALS)


def postmaster_pid(data_directory: Path) -> int | None:
    """The live postmaster of ``data_directory``, or None.

    Read from ``postmaster.pid`` and checked in /proc: a crashed postmaster leaves its pid
    file behind, so the file alone proves nothing; a zombie counts as gone."""
    try:
        pid = int((data_directory / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    # The program, not any argument: a process whose arguments merely mention postgres (a
    # test runner given test_sandbox_postgres.py, an editor) is not a postmaster.
    program = Path(cmdline.split(b"\0", 1)[0].decode(errors="replace")).name
    if stat.rpartition(")")[2].split()[0] == "Z" or not program.startswith(
        ("postgres", "postmaster")
    ):
        return None
    return pid


def last_fatal_line(log_file: Path, *, tail_bytes: int = 256 * 1024, after: int = 0) -> str | None:
    """The newest FATAL or PANIC line of a server log (where a dying server says why);
    ``after``: only what was written past that offset (this start's lines, in a log
    appended to by an earlier one)."""
    try:
        with log_file.open("rb") as handle:
            handle.seek(max(after, log_file.stat().st_size - tail_bytes))
            text = handle.read().decode(errors="replace")
    except OSError:
        return None
    for line in reversed(text.splitlines()):
        if "FATAL:" in line or "PANIC:" in line:
            return line.strip()
    return None
