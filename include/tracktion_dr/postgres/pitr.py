"""Point-in-time recovery of a cluster, the PostgreSQL 12+ way.

stop (fast, then immediate) → move the data directory aside (never ``rm -rf``) → copy the
verified base backup in → ``recovery.signal`` plus ``restore_command`` and
``recovery_target_*`` in ``postgresql.auto.conf`` (``recovery.conf`` stops a PG 12+ server)
→ start → PostgreSQL replays the archive to the target and promotes.

The target is checked against the recoverable window *before* anything is touched: after
the end of the oldest usable base backup, not after the newest archived commit, not in the
future.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psycopg

from tracktion_dr.core.incident import InvalidInput
from tracktion_dr.postgres.commands import DEFAULT_BINDIR, CommandError, as_os_user, chown_tree, run
from tracktion_dr.postgres.wal import lsn_to_int

log = logging.getLogger(__name__)

TargetType = Literal["latest", "time", "lsn", "restore_point", "immediate"]
TARGET_TYPES: tuple[str, ...] = ("latest", "time", "lsn", "restore_point", "immediate")
RECOVERY_MARKER = "# tracktion-dr point-in-time recovery"
_LSN = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")
_RESTORE_POINT = re.compile(r"^[A-Za-z0-9_.\-]{1,63}$")


@dataclass(frozen=True)
class RecoveryTarget:
    type: TargetType
    value: str = ""  # ISO time, LSN, or restore point name
    time: datetime | None = None  # parsed, for type "time"

    def settings(self) -> dict[str, str]:
        """The ``recovery_target_*`` settings for this target."""
        settings = {"recovery_target_action": "promote", "recovery_target_timeline": "latest"}
        if self.type == "time":
            assert self.time is not None
            settings["recovery_target_time"] = self.time.astimezone(UTC).strftime(
                "%Y-%m-%d %H:%M:%S.%f+00"
            )
            settings["recovery_target_inclusive"] = "true"
        elif self.type == "lsn":
            settings["recovery_target_lsn"] = self.value
        elif self.type == "restore_point":
            settings["recovery_target_name"] = self.value
        elif self.type == "immediate":
            settings["recovery_target"] = "immediate"
        return settings

    def describe(self) -> str:
        return self.type if self.type in ("latest", "immediate") else f"{self.type} {self.value}"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["time"] = self.time.isoformat() if self.time else None
        return data


def parse_target(
    target_type: str,
    value: str | None,
    *,
    window: tuple[datetime, datetime] | None,
    now: datetime | None = None,
) -> RecoveryTarget:
    """Check the target before anything is touched; the message shows the window.

    With ``window=None`` only the form is checked (type, syntax, zone, not in the future):
    the cheap check a guard runs before it looks at the archive."""
    now = now or datetime.now(UTC)
    value = (value or "").strip()
    if target_type not in TARGET_TYPES:
        raise InvalidInput("target_type", f"{target_type!r} is not one of {list(TARGET_TYPES)}")
    window_text = (
        f"recoverable window is {window[0].isoformat()} .. {window[1].isoformat()}"
        if window
        else ""
    )
    if target_type in ("latest", "immediate"):
        return RecoveryTarget(target_type)  # type: ignore[arg-type]
    if not value:
        raise InvalidInput("target", f"a value is required for target_type {target_type}")
    if target_type == "time":
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput("target", f"not an ISO 8601 time: {value!r}") from None
        if moment.tzinfo is None:
            raise InvalidInput("target", f"{value!r} has no time zone; add Z or +HH:MM")
        if moment > now:
            raise InvalidInput(
                "target", f"{value} is in the future" + (f"; {window_text}" if window else "")
            )
        if window and moment < window[0]:
            raise InvalidInput(
                "target", f"{value} is before the oldest usable base backup ended; {window_text}"
            )
        if window and moment > window[1]:
            raise InvalidInput(
                "target", f"{value} is after the newest archived commit; {window_text}"
            )
        return RecoveryTarget("time", value, moment)
    if target_type == "lsn":
        if not _LSN.match(value):
            raise InvalidInput("target", f"not an LSN: {value!r} (e.g. 0/5A000028)")
        return RecoveryTarget("lsn", value.upper())
    if not _RESTORE_POINT.match(value):
        raise InvalidInput("target", f"not a restore point name: {value!r}")
    return RecoveryTarget("restore_point", value)


@dataclass(frozen=True)
class ClusterPaths:
    data_directory: Path
    bindir: Path = DEFAULT_BINDIR
    os_user: str = "postgres"

    def pg_ctl(self, *args: str) -> list[str]:
        return as_os_user(
            [str(self.bindir / "pg_ctl"), "-D", str(self.data_directory), *args], self.os_user
        )


def server_running(cluster: ClusterPaths) -> bool:
    result = run(cluster.pg_ctl("status"), what="pg_ctl status", check=False, timeout=30)
    return result.returncode == 0


def stop_server(cluster: ClusterPaths, *, fast_timeout: int = 60) -> str:
    """Stop the postmaster: fast first (clean checkpoint), immediate if that hangs."""
    if not cluster.data_directory.exists() or not server_running(cluster):
        return "already stopped"
    try:
        run(
            cluster.pg_ctl("stop", "-m", "fast", "-w", "-t", str(fast_timeout)),
            what="pg_ctl stop -m fast",
        )
        return "stopped (fast)"
    except CommandError as exc:
        log.warning("fast shutdown did not finish (%s): stopping immediately", exc)
        run(
            cluster.pg_ctl("stop", "-m", "immediate", "-w", "-t", "30"),
            what="pg_ctl stop -m immediate",
        )
        return "stopped (immediate)"


def move_aside(data_directory: Path, tag: str) -> Path | None:
    """Rename the data directory to ``<dir>.pre_<tag>``; idempotent for the same tag."""
    aside = data_directory.with_name(f"{data_directory.name}.pre_{tag}")
    if aside.exists():
        if data_directory.exists() and (data_directory / RECOVERY_SIGNAL_NAME).exists():
            return aside  # an earlier attempt already moved it and started restoring
        if not data_directory.exists():
            return aside
        raise FileExistsError(
            f"{aside} already exists: refusing to overwrite a kept data directory"
        )
    if not data_directory.exists():
        log.warning(
            "%s does not exist (lost with the host?): nothing to move aside", data_directory
        )
        return None
    data_directory.rename(aside)
    log.info("moved %s aside to %s", data_directory, aside)
    return aside


RECOVERY_SIGNAL_NAME = "recovery.signal"


def lay_down_base_backup(base_backup: Path, data_directory: Path, os_user: str) -> None:
    """Copy the verified base backup into place (the backup itself stays untouched)."""
    staging = data_directory.with_name(f".{data_directory.name}.restoring")
    if staging.exists():
        shutil.rmtree(staging)  # our own half-copied staging area from an earlier attempt
    if data_directory.exists():
        if (data_directory / "postmaster.pid").exists():
            raise FileExistsError(f"{data_directory} belongs to a running server: stop it first")
        if (data_directory / RECOVERY_SIGNAL_NAME).exists():
            shutil.rmtree(data_directory)  # a restore of ours that never started: redo it
        else:
            raise FileExistsError(f"{data_directory} exists and is not ours: move it aside first")
    shutil.copytree(base_backup, staging, symlinks=True)
    staging.chmod(0o700)
    chown_tree(staging, os_user)
    staging.rename(data_directory)


def write_recovery_settings(
    data_directory: Path, restore_command: str, target: RecoveryTarget, port: int | None
) -> None:
    """``recovery.signal`` + settings appended to ``postgresql.auto.conf`` (read last)."""
    settings = {"restore_command": restore_command, **target.settings()}
    if port:
        settings["port"] = str(port)
    auto_conf = data_directory / "postgresql.auto.conf"
    text = auto_conf.read_text() if auto_conf.exists() else ""
    text = text.split(RECOVERY_MARKER)[0].rstrip("\n") + "\n" + RECOVERY_MARKER + "\n"
    for key, value in settings.items():
        text += f"{key} = '{_conf_escape(value)}'\n"
    auto_conf.write_text(text)
    (data_directory / RECOVERY_SIGNAL_NAME).write_text("")
    for path in (auto_conf, data_directory / RECOVERY_SIGNAL_NAME):
        chown_tree(path, _owner_of(data_directory), recursive=False)
    (data_directory / "standby.signal").unlink(missing_ok=True)


def clear_recovery_settings(data_directory: Path) -> bool:
    """Remove our recovery block from ``postgresql.auto.conf`` once the server promoted.

    Harmless on a primary, but a standby cloned from it would inherit the old target and
    stop replaying there; and a later PITR must start from a clean file. True if removed.
    """
    auto_conf = data_directory / "postgresql.auto.conf"
    if not auto_conf.exists():
        return False
    text = auto_conf.read_text()
    if RECOVERY_MARKER not in text:
        return False
    auto_conf.write_text(text.split(RECOVERY_MARKER)[0].rstrip("\n") + "\n")  # keeps owner and mode
    return True


def _conf_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "''")


def _owner_of(path: Path) -> str:
    import pwd

    return pwd.getpwuid(path.stat().st_uid).pw_name


def start_server(cluster: ClusterPaths, log_file: Path) -> None:
    """Start without waiting for recovery: the gate waits, with progress in its log."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    chown_tree(log_file.parent, cluster.os_user, recursive=False)
    run(cluster.pg_ctl("start", "-W", "-l", str(log_file)), what="pg_ctl start")
    time.sleep(1)


@dataclass(frozen=True)
class ReplayProgress:
    accepting: bool
    in_recovery: bool | None
    replay_lsn: str | None
    detail: str

    @property
    def promoted(self) -> bool:
        return self.accepting and self.in_recovery is False


def replay_progress(conninfo: str, target: RecoveryTarget, timeout: float = 5) -> ReplayProgress:
    """Where recovery is now: connectable? still in recovery? replayed LSN vs target."""
    try:
        with psycopg.connect(conninfo, connect_timeout=max(2, int(timeout))) as conn:
            in_recovery, replay_lsn, replay_time = conn.execute(
                "SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.pg_last_wal_replay_lsn()::text,"
                " pg_catalog.pg_last_xact_replay_timestamp()"
            ).fetchone()  # type: ignore[misc]
    except psycopg.OperationalError as exc:
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        return ReplayProgress(
            False, None, None, lines[-1] if lines else "not accepting connections"
        )
    if not in_recovery:
        return ReplayProgress(True, False, replay_lsn, "recovery finished, server promoted")
    detail = f"replaying: at {replay_lsn} (last replayed commit {replay_time})"
    if target.type == "lsn" and replay_lsn:
        detail += f", target {target.value}, {max(0, lsn_to_int(target.value) - lsn_to_int(replay_lsn))} bytes to go"
    elif target.type == "time":
        detail += f", target {target.value}"
    return ReplayProgress(True, True, replay_lsn, detail)


def restore_command_for(archive: Path) -> str:
    """``restore_command`` for a local (or mounted) WAL archive; run by the server's shell."""
    import shlex

    return f"cp {shlex.quote(str(archive))}/%f %p"


def last_replayed_commit(log_text: str) -> str | None:
    """The 'last completed transaction was at log time ...' line PostgreSQL logs at the end
    of recovery: the real newest replayed commit (used where no canary exists)."""
    matches = re.findall(r"last completed transaction was at log time (\S+ \S+)", log_text)
    return matches[-1] if matches else None
