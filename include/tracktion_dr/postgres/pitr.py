"""Point-in-time recovery of a cluster, the PostgreSQL 12+ way, that never promotes behind
the operator's back.

stop (fast, then immediate) → move the data directory aside (never ``rm -rf``) → lay the
base backup down (copied if plain, extracted if compressed) in a staging directory and
verify it there with ``pg_verifybackup`` → recovery settings in
``postgresql.auto.conf`` (``recovery.conf`` stops a PG 12+ server) → start → PostgreSQL
replays the archive (and the salvaged WAL) and **waits**; the DAG validates the server
read-only while it waits, then promotes it with ``pg_promote``.

Why it waits, and how:

* A targeted recovery (time, LSN, restore point, immediate) uses
  ``recovery_target_action = 'pause'``: at the target the server pauses, read-only, with
  ``hot_standby = on`` forced (without it PostgreSQL treats ``pause`` as ``shutdown``).
* ``latest`` has no target, and at the end of WAL PostgreSQL would promote by itself - in
  the measured failure it did so after the worker died, unwatched. So ``latest`` runs in
  **standby mode** (``standby.signal`` with ``restore_command`` only, ``primary_conninfo``
  emptied so it streams from nobody): it replays everything ``restore_command`` can fetch
  and then keeps waiting for more. The gate opens when replay has passed the last valid
  record held in the archive and the salvage folder (what restore_command can reach, see
  ``salvage.py``); nothing else writes there while the primary is down, so that end is
  fixed. A standby never promotes unless asked.

Targets are checked against the real archive *before* anything is touched (see
:class:`RecoverableWindow`): the window is stated in times for time targets and in LSNs for
LSN and restore-point targets.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psycopg

from tracktion_dr.core.errors import InvalidInput, ServerDied, StepFailed
from tracktion_dr.postgres import basebackup_format
from tracktion_dr.postgres.commands import DEFAULT_BINDIR, CommandError, chown_tree
from tracktion_dr.postgres.control import ClusterControl, PgCtlControl
from tracktion_dr.postgres.recovery_marker import (
    RECOVERY_SIGNALS,
    last_fatal_line,
    postmaster_pid,
)
from tracktion_dr.postgres.wal import COMPRESSED_SUFFIX, checked_length, int_to_lsn, lsn_to_int

log = logging.getLogger(__name__)

TargetType = Literal["latest", "time", "lsn", "restore_point", "immediate"]
TARGET_TYPES: tuple[str, ...] = ("latest", "time", "lsn", "restore_point", "immediate")
RECOVERY_MARKER = "# tracktion-dr point-in-time recovery"
RECOVERY_SIGNAL_NAME = "recovery.signal"
STANDBY_SIGNAL_NAME = "standby.signal"
_LSN = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")
_RESTORE_POINT = re.compile(r"^[A-Za-z0-9_.\-]{1,63}$")


@dataclass(frozen=True)
class RecoveryTarget:
    type: TargetType
    value: str = ""  # ISO time, LSN, or restore point name
    time: datetime | None = None  # parsed, for type "time"
    lsn: str | None = None  # for "lsn"; for "restore_point", resolved from the archived WAL
    timeline: int | None = None  # for "restore_point": the timeline its record is on

    @property
    def standby_mode(self) -> bool:
        """``latest`` recovers as a standby (see the module doc): it never self-promotes."""
        return self.type == "latest"

    def settings(self) -> dict[str, str]:
        """The recovery settings for this target (appended to ``postgresql.auto.conf``)."""
        settings = {
            "recovery_target_timeline": "latest",
            # pause needs a hot standby; and a recovering server must not stream from
            # whatever primary_conninfo a base backup of a former standby carries.
            "hot_standby": "on",
            "primary_conninfo": "",
            "primary_slot_name": "",
        }
        if self.standby_mode:
            return settings
        settings["recovery_target_action"] = "pause"
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
        text = self.type if self.type in ("latest", "immediate") else f"{self.type} {self.value}"
        if self.type == "restore_point" and self.lsn:
            text += f" (at {self.lsn} on timeline {self.timeline})"
        return text

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["time"] = self.time.isoformat() if self.time else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecoveryTarget:
        moment = datetime.fromisoformat(data["time"]) if data.get("time") else None
        return cls(
            data["type"],
            data.get("value") or "",
            moment,
            data.get("lsn"),
            data.get("timeline"),
        )


def parse_target(
    target_type: str, value: str | None, *, now: datetime | None = None
) -> RecoveryTarget:
    """The target's form: type, syntax, zone, not in the future. Cheap, touches nothing;
    :func:`check_in_window` then checks it against the WAL actually held."""
    now = now or datetime.now(UTC)
    value = (value or "").strip()
    if target_type not in TARGET_TYPES:
        raise InvalidInput("target_type", f"{target_type!r} is not one of {list(TARGET_TYPES)}")
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
            raise InvalidInput("target", f"{value} is in the future")
        return RecoveryTarget("time", value, moment)
    if target_type == "lsn":
        if not _LSN.match(value):
            raise InvalidInput("target", f"not an LSN: {value!r} (e.g. 0/5A000028)")
        normalized = int_to_lsn(lsn_to_int(value))
        return RecoveryTarget("lsn", normalized, lsn=normalized)
    if not _RESTORE_POINT.match(value):
        raise InvalidInput("target", f"not a restore point name: {value!r}")
    return RecoveryTarget("restore_point", value)


@dataclass(frozen=True)
class RecoverableWindow:
    """What point-in-time recovery can reach with the backups and WAL held right now.

    From the consistent point (end) of the oldest usable base backup to the newest WAL held
    along the replay path (archive, salvage folder, the old primary's and the standby's
    pg_wal, which are salvaged before anything moves them)."""

    earliest_time: datetime
    earliest_lsn: int
    latest_time: datetime | None  # newest commit held
    latest_lsn: int | None  # start of the last valid record held

    def time_text(self) -> str:
        latest = self.latest_time.isoformat() if self.latest_time else "(no commit held)"
        return f"recoverable window is {self.earliest_time.isoformat()} .. {latest}"

    def lsn_text(self) -> str:
        latest = int_to_lsn(self.latest_lsn) if self.latest_lsn is not None else "(no WAL held)"
        return f"recoverable window is {int_to_lsn(self.earliest_lsn)} .. {latest}"

    def as_list(self, target_type: str) -> list[str]:
        if target_type in ("lsn", "restore_point"):
            return [
                int_to_lsn(self.earliest_lsn),
                int_to_lsn(self.latest_lsn) if self.latest_lsn is not None else "",
            ]
        return [
            self.earliest_time.isoformat(),
            self.latest_time.isoformat() if self.latest_time else "",
        ]


def check_in_window(target: RecoveryTarget, window: RecoverableWindow) -> None:
    """Refuse a target replay cannot reach, naming the window in the target's own terms.

    Time: replay stops *before the first commit after* the target, so a commit after it
    must be held. LSN (and a resolved restore point): replay stops after the first record
    at or past it, so such a record must be held; and it must not lie before the
    consistent point of every usable base backup (PostgreSQL: "requested recovery stop
    point is before consistent recovery point")."""
    if target.type == "time":
        assert target.time is not None
        if target.time < window.earliest_time:
            raise InvalidInput(
                "target",
                f"{target.value} is before the oldest usable base backup ended; {window.time_text()}",
            )
        if window.latest_time is None or target.time >= window.latest_time:
            raise InvalidInput(
                "target",
                f"{target.value} is not before the newest commit held in the WAL archive, the "
                f"salvage folder or any pg_wal (replay stops only at a commit after the target); "
                f"{window.time_text()}",
                hint="choose an earlier time, or target_type latest to replay everything held",
            )
        return
    if target.type not in ("lsn", "restore_point") or target.lsn is None:
        return
    position = lsn_to_int(target.lsn)
    what = (
        f"{target.value}"
        if target.type == "lsn"
        else f"restore point {target.value!r} (at {target.lsn})"
    )
    if window.latest_lsn is None or position > window.latest_lsn:
        raise InvalidInput(
            "target",
            f"{what} is past the newest WAL held (archive, salvage folder, pg_wal); "
            f"{window.lsn_text()}",
            hint="pick an LSN inside the window (pg_current_wal_lsn() on the primary, or "
            "pg_waldump of the archive), or target_type latest",
        )
    if position < window.earliest_lsn:
        raise InvalidInput(
            "target",
            f"{what} is before the consistent point of every usable base backup; "
            f"{window.lsn_text()}",
            hint="an older base backup would be needed; none that is usable reaches back there",
        )


# --- the cluster's processes and files ----------------------------------------------------


# A cluster controlled with ``pg_ctl -D`` (the sandbox's, and the plan's default); every
# function here takes any ``ClusterControl`` (pg_ctlcluster, systemd: see control.py).
ClusterPaths = PgCtlControl


def server_running(cluster: ClusterControl) -> bool:
    return cluster.is_running()


def stop_server(cluster: ClusterControl, *, fast_timeout: int = 60) -> str:
    """Stop the postmaster: fast first (clean checkpoint), immediate if that hangs."""
    if not cluster.data_directory.exists() or not server_running(cluster):
        return "already stopped"
    try:
        cluster.stop("fast", timeout=fast_timeout)
        return "stopped (fast)"
    except CommandError as exc:
        log.warning("fast shutdown did not finish (%s): stopping immediately", exc)
        cluster.stop("immediate", timeout=30)
        return "stopped (immediate)"


def aside_path(data_directory: Path, tag: str) -> Path:
    """Where an incident keeps the data directory it replaced: ``<dir>.pre_<tag>``."""
    return data_directory.with_name(f"{data_directory.name}.pre_{tag}")


def staging_path(data_directory: Path, tag: str) -> Path:
    """Where an incident builds the replacement before renaming it into place. Its name
    carries the incident: a directory there is provably that incident's own partial copy
    (of a base backup that still exists), so a resumed run may discard it."""
    return data_directory.with_name(f".{data_directory.name}.restoring_{tag}")


def stage_base_backup(
    base_backup: Path,
    data_directory: Path,
    os_user: str,
    tag: str,
    finish_staging: Callable[[Path], None],
    *,
    bindir: Path = DEFAULT_BINDIR,
    is_complete: Callable[[Path], bool] | None = None,
) -> tuple[Path, str]:
    """Build the replacement BESIDE the data directory, touching nothing live: lay the base
    backup (plain or compressed) down into this incident's staging directory and verify it
    there with ``pg_verifybackup`` (the bytes that will be started, not the backup they
    came from: :func:`~tracktion_dr.postgres.basebackup_format.stage_base_backup`), then
    let ``finish_staging`` write the recovery settings and - last - the marker.

    Resumable: a staging directory ``is_complete`` (it carries the marker) is kept as it
    is; a partial one is provably this incident's own copy and is discarded. A copy that
    fails verification raises ``CommandError`` / ``ValidationFailed`` (the caller decides
    what that says of the backup). Returns the staging path and what was done."""
    staging = staging_path(data_directory, tag)
    if staging.exists() and is_complete is not None and is_complete(staging):
        return staging, f"{staging} already staged by an earlier attempt"
    if staging.exists():
        log.info("discarding this incident's own half-laid-down staging %s", staging)
        shutil.rmtree(staging)
    staged = basebackup_format.stage_base_backup(base_backup, staging, bindir, os_user=os_user)
    finish_staging(staging)
    chown_tree(staging, os_user)
    return staging, (
        f"{base_backup.name} ({staged['format']}) staged at {staging}, laid down in "
        f"{staged['lay_down_seconds']:.1f}s, backup successfully verified by pg_verifybackup in "
        f"{staged['verify_seconds']:.1f}s"
    )


def swap_in_staged(staging: Path, data_directory: Path) -> None:
    """Rename the staged replacement into place (atomic: the path holds either nothing or
    a complete, marked recovery directory)."""
    if data_directory.exists():
        raise StepFailed(
            f"{data_directory} exists: it must be moved aside before the staged copy goes in"
        )
    if not staging.exists():
        raise StepFailed(
            f"nothing staged at {staging}: the base backup must be staged (and verified) first"
        )
    staging.rename(data_directory)


def lay_down_base_backup(
    base_backup: Path,
    data_directory: Path,
    os_user: str,
    tag: str,
    finish_staging: Callable[[Path], None],
    *,
    bindir: Path = DEFAULT_BINDIR,
) -> str:
    """Stage the base backup and rename it into place in one go (the data directory must
    already be moved aside)."""
    if data_directory.exists():
        raise StepFailed(
            f"{data_directory} exists: it must be moved aside before the base backup is laid down"
        )
    staging, detail = stage_base_backup(
        base_backup, data_directory, os_user, tag, finish_staging, bindir=bindir
    )
    swap_in_staged(staging, data_directory)
    return detail


def write_recovery_settings(
    data_directory: Path, restore_command: str, target: RecoveryTarget, port: int | None = None
) -> dict[str, str]:
    """The signal file plus our settings block appended to ``postgresql.auto.conf`` (read
    last, so it wins): ``recovery.signal`` for a targeted recovery, ``standby.signal`` for
    ``latest``; the other one removed (a base backup of a standby carries standby.signal,
    which would take precedence). Returns the settings written (the marker keeps them)."""
    settings = {"restore_command": restore_command, **target.settings()}
    if port:
        settings["port"] = str(port)
    auto_conf = data_directory / "postgresql.auto.conf"
    text = auto_conf.read_text() if auto_conf.exists() else ""
    text = text.split(RECOVERY_MARKER)[0].rstrip("\n") + "\n" + RECOVERY_MARKER + "\n"
    for key, value in settings.items():
        text += _setting_line(key, value) + "\n"
    auto_conf.write_text(text)
    signal = STANDBY_SIGNAL_NAME if target.standby_mode else RECOVERY_SIGNAL_NAME
    for name in RECOVERY_SIGNALS:
        if name != signal:
            (data_directory / name).unlink(missing_ok=True)
    (data_directory / signal).write_text("")
    for path in (auto_conf, data_directory / signal):
        chown_tree(path, _owner_of(data_directory), recursive=False)
    return settings


def _setting_line(key: str, value: str) -> str:
    return f"{key} = '{_conf_escape(value)}'"


def clear_recovery_settings(data_directory: Path, written: dict[str, str] | None = None) -> bool:
    """Remove our recovery settings from ``postgresql.auto.conf`` once the server promoted.

    Harmless on a primary, but a standby cloned from it would inherit the old target and
    stop replaying there; and a later PITR must start from a clean file. Normally our
    commented block; but an ``ALTER SYSTEM`` run meanwhile (allowed on a server in
    recovery) rewrites the file without comments - then the lines are found by the exact
    settings ``written`` (kept in the recovery marker). True if anything was removed.
    """
    auto_conf = data_directory / "postgresql.auto.conf"
    if not auto_conf.exists():
        return False
    text = auto_conf.read_text()
    if RECOVERY_MARKER in text:
        kept = text.split(RECOVERY_MARKER)[0].rstrip("\n") + "\n"
    elif written:
        ours = {_setting_line(key, value) for key, value in written.items()}
        kept = "".join(line for line in text.splitlines(keepends=True) if line.strip() not in ours)
    else:
        return False
    if kept == text:
        return False
    auto_conf.write_text(kept)  # keeps owner and mode
    return True


def _conf_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "''")


def _owner_of(path: Path) -> str:
    import pwd

    return pwd.getpwuid(path.stat().st_uid).pw_name


def start_server(cluster: ClusterControl, log_file: Path, *, wait_seconds: float = 20) -> int:
    """Start without waiting for recovery: wait only until the postmaster is up (its pid
    file names a live process). Everything after - replay, and a server dying during it -
    is the gate's to watch, reading ``log_file``. Raises ``ServerDied`` quoting the log when
    no postmaster comes up (a bad setting, a corrupt backup)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    chown_tree(log_file.parent, cluster.os_user, recursive=False)
    try:
        pid = cluster.start(wait=False, log_file=log_file, timeout=wait_seconds)
    except CommandError as exc:
        if postmaster_pid(cluster.data_directory) is None:
            raise server_died(cluster.data_directory, _readable_log(cluster, log_file)) from exc
        raise
    _readable_log(cluster, log_file)
    return pid


def _readable_log(cluster: ClusterControl, log_file: Path) -> Path:
    """``log_file``, made to show the server's log where its control writes elsewhere (a
    systemd unit logs where its host says): a symlink, so the gate reads the real one."""
    actual = cluster.server_log(log_file)
    if actual is not None and actual != log_file and not log_file.exists():
        log_file.symlink_to(actual)
    return log_file


def server_died(data_directory: Path, log_file: Path) -> ServerDied:
    fatal = last_fatal_line(log_file)
    return ServerDied(
        f"PostgreSQL in {data_directory} is not running: "
        + (f"its log {log_file} says: {fatal}" if fatal else f"no FATAL line in {log_file}")
    )


@dataclass(frozen=True)
class RecoveryState:
    """What a server says about its recovery (read-only queries; works while paused)."""

    in_recovery: bool
    replay_lsn: str | None
    pause_state: str | None  # 'not paused' | 'pause requested' | 'paused'
    last_replayed_commit: datetime | None

    def describe(self) -> str:
        if not self.in_recovery:
            return "recovery finished, server promoted"
        return (
            f"replay at {self.replay_lsn} ({self.pause_state}), "
            f"last replayed commit {self.last_replayed_commit.isoformat() if self.last_replayed_commit else 'none yet'}"
        )


def recovery_state(conninfo: str, timeout: int = 3) -> RecoveryState | str:
    """The server's recovery state, or why it cannot say (not accepting connections yet:
    a hot standby answers only once consistent)."""
    try:
        with psycopg.connect(conninfo, connect_timeout=max(2, timeout), autocommit=True) as conn:
            conn.execute("SET statement_timeout = '10s'")
            in_recovery, replay_lsn, replay_time = conn.execute(
                "SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.pg_last_wal_replay_lsn()::text,"
                " pg_catalog.pg_last_xact_replay_timestamp()"
            ).fetchone()  # type: ignore[misc]
            pause_state = (
                conn.execute("SELECT pg_catalog.pg_get_wal_replay_pause_state()").fetchone()[0]  # type: ignore[index]
                if in_recovery
                else None
            )
    except psycopg.OperationalError as exc:
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        return lines[-1] if lines else "not accepting connections"
    return RecoveryState(bool(in_recovery), replay_lsn, pause_state, replay_time)


def current_timeline(conn: psycopg.Connection[Any]) -> int:
    """The timeline a primary writes on now (its current WAL file's name starts with it)."""
    name = conn.execute(
        "SELECT pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn())"
    ).fetchone()[0]  # type: ignore[index]
    return int(str(name)[:8], 16)


def promote_server(conninfo: str, *, wait_seconds: int = 300) -> tuple[bool, int]:
    """``pg_promote(wait => true)`` unless already promoted. (promoted now?, timeline)."""
    with psycopg.connect(conninfo, connect_timeout=10, autocommit=True) as conn:
        in_recovery = conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()[0]  # type: ignore[index]
        promoted_now = False
        if in_recovery:
            done = conn.execute(
                "SELECT pg_catalog.pg_promote(wait => true, wait_seconds => %s)", (wait_seconds,)
            ).fetchone()[0]  # type: ignore[index]
            if not done:
                raise StepFailed(f"pg_promote did not finish within {wait_seconds}s")
            promoted_now = True
        conn.execute("SELECT pg_catalog.pg_reload_conf()")
        return promoted_now, current_timeline(conn)


def restore_command_for(archive: Path, salvage: Path | None = None) -> str:
    """``restore_command`` reading the archive first (``<segment>.zst`` decompressed, or a
    plain file copied), then the salvage folder (plain copies from a ``pg_wal``).

    A PostgreSQL setting run by the server's own shell (our code never uses one); ``%`` in
    a path is doubled for the server, paths are shell-quoted and named once each, in shell
    variables (the expanded command must stay short, see ``wal.checked_length``). Quiet
    when a file is in neither folder (standby mode asks for the next segment every few
    seconds)."""
    command = f"a={_shell_path(archive)}; "
    if salvage is not None:
        command += f"s={_shell_path(salvage)}; "
    command += (
        f'if test -f "$a/%f{COMPRESSED_SUFFIX}"; then zstd -dqf "$a/%f{COMPRESSED_SUFFIX}" -o %p; '
        'elif test -f "$a/%f"; then cp "$a/%f" %p; '
    )
    if salvage is not None:
        command += 'elif test -f "$s/%f"; then cp "$s/%f" %p; '
    return checked_length(command + "else exit 1; fi", "restore_command")


def _shell_path(path: Path) -> str:
    return shlex.quote(str(path).replace("%", "%%"))


def last_replayed_commit(log_text: str) -> str | None:
    """The 'last completed transaction was at log time ...' line PostgreSQL logs at the end
    of recovery: the real newest replayed commit (used where no canary exists)."""
    matches = re.findall(r"last completed transaction was at log time (\S+ \S+)", log_text)
    return matches[-1] if matches else None
