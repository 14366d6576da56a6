"""Which cluster a data directory, or a server on a connection, is.

A step about to stop or fence "the old primary" by a local path must prove the path holds
that primary. A physical standby shares its primary's system identifier, and on a Debian
host pair also its data directory path (``/var/lib/postgresql/15/main`` on both hosts), so
the identifier alone cannot tell them apart: the role (``pg_controldata``'s cluster state:
a standby is "in archive recovery", or "shut down in recovery" once stopped), the live
postmaster (``postmaster.pid``: start time and port) and the timeline can.

Read without connecting (``pg_controldata``, ``postmaster.pid``): the old primary may be
down, and a running one on this host need not accept our connections.
"""

from __future__ import annotations

import math
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from tracktion_dr.postgres.commands import DEFAULT_BINDIR, as_os_user, run
from tracktion_dr.postgres.recovery_marker import postmaster_pid

# pg_controldata's "Database cluster state" of a standby, running or stopped
RECOVERY_STATES = ("in archive recovery", "shut down in recovery")

Runner = Callable[..., subprocess.CompletedProcess[str]]


@dataclass(frozen=True)
class DirectoryIdentity:
    """What a data directory says about itself."""

    data_directory: Path
    system_identifier: str
    state: str  # pg_controldata's "Database cluster state"
    timeline: int  # of its latest checkpoint (a restartpoint on a standby)
    postmaster_started: int | None  # epoch seconds of its live postmaster, None when down
    port: int | None  # of its live postmaster

    @property
    def in_recovery(self) -> bool:
        return self.state in RECOVERY_STATES

    def describe(self) -> str:
        running = (
            f"running on port {self.port}" if self.postmaster_started is not None else "stopped"
        )
        return (
            f"{self.data_directory}: system identifier {self.system_identifier}, state "
            f"{self.state!r}, timeline {self.timeline}, {running}"
        )


@dataclass(frozen=True)
class ServerIdentity:
    """What a running server says about itself over a connection."""

    system_identifier: str
    in_recovery: bool
    timeline: int
    postmaster_started: datetime
    port: int

    def describe(self) -> str:
        role = "standby (in recovery)" if self.in_recovery else "primary (not in recovery)"
        return (
            f"system identifier {self.system_identifier}, {role}, timeline {self.timeline}, "
            f"port {self.port}, started {self.postmaster_started.isoformat()}"
        )


def parse_controldata(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def directory_identity(
    data_directory: Path,
    *,
    bindir: Path = DEFAULT_BINDIR,
    os_user: str = "postgres",
    runner: Runner = run,
) -> DirectoryIdentity | None:
    """The data directory's identity, or None when it holds no cluster (no pg_control)."""
    if not (data_directory / "global" / "pg_control").is_file():
        return None
    result = runner(
        as_os_user([str(bindir / "pg_controldata"), str(data_directory)], os_user),
        what=f"pg_controldata {data_directory}",
        env={**os.environ, "LC_ALL": "C"},  # the field names are translated otherwise
        timeout=30,
    )
    fields = parse_controldata(result.stdout)
    started, port = _live_postmaster(data_directory)
    return DirectoryIdentity(
        data_directory,
        fields["Database system identifier"],
        fields["Database cluster state"],
        int(fields["Latest checkpoint's TimeLineID"]),
        started,
        port,
    )


def _live_postmaster(data_directory: Path) -> tuple[int | None, int | None]:
    """(start time in epoch seconds, port) from ``postmaster.pid`` of a live postmaster."""
    if postmaster_pid(data_directory) is None:
        return None, None
    try:
        lines = (data_directory / "postmaster.pid").read_text().splitlines()
        return int(lines[2]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None, None


def server_identity(conninfo: str, timeout: float = 5) -> ServerIdentity:
    """The identity of the server on ``conninfo`` (raises ``psycopg.Error`` when it does
    not answer)."""
    with psycopg.connect(
        conninfo,
        connect_timeout=max(2, math.ceil(timeout)),
        autocommit=True,
        options="-c statement_timeout=10000",
    ) as conn:
        row: Any = conn.execute(
            "SELECT s.system_identifier::text, pg_catalog.pg_is_in_recovery(),"
            " c.timeline_id, pg_catalog.pg_postmaster_start_time(),"
            " pg_catalog.current_setting('port')::int"
            " FROM pg_catalog.pg_control_system() s, pg_catalog.pg_control_checkpoint() c"
        ).fetchone()
        system_identifier, in_recovery, timeline, started, port = row
        if not in_recovery:
            # a promoted server writes on its new timeline before its first checkpoint
            # there: the current WAL file's name says it at once
            name = conn.execute(
                "SELECT pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn())"
            ).fetchone()[0]  # type: ignore[index]
            timeline = int(str(name)[:8], 16)
    return ServerIdentity(str(system_identifier), bool(in_recovery), int(timeline), started, port)
