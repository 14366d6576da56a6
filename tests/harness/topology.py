"""The sandbox's standard topology (primary writable on its port, replica streaming),
broken on purpose by a test and put back afterwards.

A database failover promotes the replica and fences the old primary; the next test needs
the standard layout again: the promoted server is stopped and its data directory moved
aside (kept), the fence lifted, the new timeline's WAL moved out of the archive (kept
beside it), the balancer's database backend reset, and the sandbox's ``up`` restarts the
primary and re-seeds the replica from it.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import httpx

from tracktion_sandbox import cli, pg
from tracktion_sandbox import layout as L

LB = f"http://{L.HOST}:{L.LOAD_BALANCER_PORT}"


def set_server(service: str, server: str, **body) -> None:
    response = httpx.post(f"{LB}/api/v1/backends/{service}/servers/{server}", json=body, timeout=5)
    response.raise_for_status()


def kill_primary_at_once(layout) -> None:
    """A crash: the postmaster and its backends stop without a checkpoint."""
    _pg_ctl(layout, layout.primary_data, "stop", "-m", "immediate", "-w")


def _pg_ctl(layout, data_dir, *args, check=True):
    argv = [str(pg.find_bindir() / "pg_ctl"), *args, "-D", str(data_dir)]
    return pg.run(pg.as_postgres(argv), what=f"pg_ctl {args[0]}", cwd=layout.pg_root, check=check)


def _timeline(name: str) -> str:
    return name[:8]


def restore_standard_topology(layout, archive_before: set[str]) -> None:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    if pg.port_open(L.REPLICA_PORT):
        _pg_ctl(layout, layout.replica_data, "stop", "-m", "fast", "-w")
    if layout.replica_data.exists():
        layout.replica_data.rename(layout.replica_data.with_name(f"replica.failover-{stamp}"))
    for name in ("standby.signal", "DR_FENCED"):
        (layout.primary_data / name).unlink(missing_ok=True)
    # the promoted server's timeline must not be followed by the next replica or restore
    old_timelines = {_timeline(n) for n in archive_before if n[:8].isalnum() and len(n) >= 24}
    aside = layout.backups / f"wal_archive.failover-{stamp}"
    for path in layout.wal_archive.iterdir():
        if path.name not in archive_before and (
            _timeline(path.name) not in old_timelines or path.name.endswith(".partial")
        ):
            aside.mkdir(exist_ok=True)
            shutil.move(path, aside / path.name)
    set_server("database", "primary", weight=100, status="enabled")
    set_server("database", "replica", weight=0, status="disabled")
    cli.up(layout, size="30MB")
