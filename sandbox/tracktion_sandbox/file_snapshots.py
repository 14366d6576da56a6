"""The sandbox's first file snapshots: one configuration archive, one full storage copy.

Why at ``up`` time: dr_config_recovery and dr_storage_recovery restore from the plan's
``backups.configuration`` and ``backups.storage``; on a fresh sandbox there must be
something real to restore from. Each is taken once, when none exists, in the formats
``tracktion_dr.files.snapshots`` reads (the backups issue's catalog will own them later).

The configuration archive also carries an ``environment_snapshot.txt`` with two allowed
``TRACKTION_*`` variables and one that the plan does not allow (it must be refused on
restore), one of them a token that must never appear in a log.
"""

from __future__ import annotations

import json
import logging
import os
import secrets as token_source
import shutil
from pathlib import Path

from tracktion_dr.files import snapshots
from tracktion_sandbox.layout import SandboxLayout

log = logging.getLogger(__name__)

STORAGE_AREAS = ("audio_files", "user_uploads")


def sandbox_environment_snapshot(layout: SandboxLayout) -> dict[str, str]:
    return {
        "TRACKTION_STORAGE_PATH": str(layout.app_data),
        "TRACKTION_API_TOKEN": f"sandbox-{token_source.token_hex(12)}",
        "AWS_SECRET_ACCESS_KEY": "not-allowed-by-the-plan",
    }


def take_config_snapshot(layout: SandboxLayout) -> Path | None:
    location = f"file://{layout.config_backups}"
    if snapshots.list_snapshots(location, "configuration"):
        return None
    path = snapshots.create_config_snapshot(
        [layout.app_config],
        layout.config_backups,
        environment=sandbox_environment_snapshot(layout),
    )
    log.info("initial configuration snapshot: %s", path)
    return path


def take_storage_snapshot(layout: SandboxLayout) -> Path | None:
    """Copy the storage areas into ``full_<stamp>/`` and write the manifest last."""
    location = f"file://{layout.storage_backups}"
    if snapshots.list_snapshots(location, "storage"):
        return None
    layout.storage_backups.mkdir(parents=True, exist_ok=True)
    name = f"{snapshots.STORAGE_PREFIX}{snapshots.utc_stamp()}"
    staging = layout.storage_backups / f".{name}.partial"
    if staging.exists():
        shutil.rmtree(staging)  # our own unfinished copy, never a listed snapshot
    areas = {}
    for area in STORAGE_AREAS:
        source = layout.app_data / area
        shutil.copytree(source, staging / area, ignore=shutil.ignore_patterns(".*"))
        areas[area] = snapshots.file_inventory(staging / area)
    manifest = {"format": 1, "taken_at": snapshots.utc_stamp(), "areas": areas}
    (staging / snapshots.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(staging, layout.storage_backups / name)
    log.info("initial storage snapshot: %s", layout.storage_backups / name)
    return layout.storage_backups / name


def take_initial_snapshots(layout: SandboxLayout) -> None:
    take_config_snapshot(layout)
    take_storage_snapshot(layout)
