"""The sandbox's first file snapshots: one configuration archive, one full storage snapshot
per area.

Why at ``up`` time: dr_config_recovery and dr_storage_recovery restore from the plan's
``backups.configuration`` and ``backups.storage``; on a fresh sandbox there must be
something real to restore from before the backup DAGs first run. Each is taken once, when
none exists, by the backups' own writer (``tracktion_dr.backups.snapshots``).

The configuration archive carries an ``environment_snapshot.txt`` with two allowed
``TRACKTION_*`` variables and one that the plan does not allow (the backup DAG never
writes such a one; it is here so the restore's refusal is exercised), one of them a token
that must never appear in a log.
"""

from __future__ import annotations

import logging
import secrets as token_source
from pathlib import Path

from tracktion_dr.backups import snapshots as writer
from tracktion_dr.files import snapshots as reader
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
    if reader.list_snapshots(f"file://{layout.config_backups}", "configuration"):
        return None
    path = writer.config_snapshot(
        [str(layout.app_config)],
        layout.config_backups,
        environment=sandbox_environment_snapshot(layout),
    )
    log.info("initial configuration snapshot: %s", path)
    return path


def take_storage_snapshots(layout: SandboxLayout) -> list[Path]:
    taken = []
    for area in STORAGE_AREAS:
        if writer.newest_snapshot(layout.storage_backups / area, area) is None:
            taken.append(
                writer.storage_snapshot(
                    area, layout.app_data / area, layout.storage_backups, "full"
                )
            )
            log.info("initial storage snapshot: %s", taken[-1])
    return taken


def take_initial_snapshots(layout: SandboxLayout) -> None:
    take_config_snapshot(layout)
    take_storage_snapshots(layout)
