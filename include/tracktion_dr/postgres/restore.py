"""Full database restore from a logical dump: beside, validate, then swap by rename -
resumable from whatever a killed worker left behind.

The seed dropped the database before it knew the backup was good. Here the live database is
never dropped by a recovery. Per incident (its ``tag``) there are three names:

* ``<db>``               the live database;
* ``<db>_restore_<tag>`` the scratch copy the dump is restored into, validated, swapped in;
* ``<db>_pre_<tag>``     the live database set aside by the swap (kept for the operator,
  with every row written after the dump).

**The marker.** Which of those a database is, and how far it got, is written on the scratch
copy itself with ``COMMENT ON DATABASE`` (``tracktion-dr restore {json}``): the incident,
the dump (id, path, sha256) and a ``state``:

* ``restoring`` - written right after ``CREATE DATABASE``, before ``pg_restore`` starts: a
  copy in this state may be half-restored;
* ``restored``  - written after ``pg_restore`` exited 0: complete, not validated yet;
* ``validated`` - every integrity check passed; carries the *baseline* (per table: the dump's
  row count and greatest primary key, and the canary's newest heartbeat) that the
  set-aside measurement compares the kept copy against;
* ``invalid``   - complete but failed validation; never swapped in.

A rename keeps a database's comment, so after the swap the live database carries its own
validated marker: a re-run sees "``<db>`` is this incident's restore" and only finishes
what is left; a *new* incident sees "``<db>`` already is the restore of this very dump".
``pg_restore`` without ``--create`` never restores a database comment, so only this module
writes markers.

**State, not history.** :func:`inspect_state` reads names, markers and
``datallowconn`` from ``pg_database``; every operation here starts from it and does only
what is missing, so a worker SIGKILLed anywhere (mid ``pg_restore``, between the two renames
of the swap, after it) is finished by running the same step again with the same tag.

Admin sessions set ``client_connection_check_interval``: if the worker dies while a
statement waits (a rename queued behind a lock), the server notices the closed socket and
abandons the statement instead of running it later, unattended.
"""

from __future__ import annotations

import enum
import json
import logging
import re
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tracktion_dr.core.errors import StepFailed
from tracktion_dr.postgres.commands import DEFAULT_BINDIR, Endpoint, run
from tracktion_dr.postgres.dumps import drop_database, user_tables
from tracktion_dr.postgres.measure import CANARY_TABLE

log = logging.getLogger(__name__)

MAX_IDENTIFIER = 63
MARKER_PREFIX = "tracktion-dr restore "
# How often a waiting server-side statement checks that our client is still there (ms).
CLIENT_CHECK_MS = 1000


def incident_tag(incident_id: str) -> str:
    """``DR-20261126-031205`` -> ``20261126_031205`` (valid in a database name)."""
    return re.sub(r"[^0-9a-z_]", "_", incident_id.lower().removeprefix("dr-"))


def restore_name(database: str, tag: str) -> str:
    return _bounded(f"{database}_restore_{tag}")


def aside_name(database: str, tag: str) -> str:
    return _bounded(f"{database}_pre_{tag}")


def _bounded(name: str) -> str:
    if len(name) > MAX_IDENTIFIER:
        raise ValueError(
            f"database name {name!r} is longer than PostgreSQL's {MAX_IDENTIFIER} bytes"
        )
    return name


def utcnow_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- the marker -----------------------------------------------------------------------------


class MarkerState(enum.StrEnum):
    RESTORING = "restoring"
    RESTORED = "restored"
    VALIDATED = "validated"
    INVALID = "invalid"


@dataclass(frozen=True)
class Marker:
    """What this module writes on a scratch copy (and what the copy keeps once swapped in)."""

    database: str  # the live name this copy is meant to become
    incident_id: str
    tag: str
    backup: dict[str, Any]  # id, path, sha256, started_at, finished_at, size_bytes
    state: MarkerState
    at: str  # when ``state`` was written
    checks: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    baseline: dict[str, Any] = field(default_factory=dict)

    def as_comment(self) -> str:
        data = asdict(self)
        data["state"] = str(self.state)
        return MARKER_PREFIX + json.dumps(data, sort_keys=True, default=str)

    @classmethod
    def from_comment(cls, comment: str | None) -> Marker | None:
        if not comment or not comment.startswith(MARKER_PREFIX):
            return None
        try:
            data = json.loads(comment.removeprefix(MARKER_PREFIX))
            return cls(**{**data, "state": MarkerState(data["state"])})
        except (ValueError, TypeError, KeyError):
            log.warning("unreadable restore marker ignored: %.200s", comment)
            return None

    def same_backup(self, backup: dict[str, Any]) -> bool:
        mine, theirs = self.backup.get("sha256"), backup.get("sha256")
        if mine and theirs:
            return bool(mine == theirs)
        return bool(self.backup.get("id") == backup.get("id"))


def marker_for(
    database: str, incident_id: str, tag: str, backup: dict[str, Any], state: MarkerState
) -> Marker:
    kept = ("id", "path", "sha256", "started_at", "finished_at", "size_bytes")
    return Marker(
        database=database,
        incident_id=incident_id,
        tag=tag,
        backup={k: backup.get(k) for k in kept},
        state=state,
        at=utcnow_iso(),
    )


def write_marker(conn: psycopg.Connection[Any], name: str, marker: Marker) -> None:
    # COMMENT is a utility statement: no bind parameters; the text goes in as a literal.
    conn.execute(
        sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(name), sql.Literal(marker.as_comment())
        )
    )
    log.info("marker on %s: %s (%s)", name, marker.state, marker.incident_id)


# --- the actual state -------------------------------------------------------------------


class Phase(enum.StrEnum):
    """How far this incident's restore got, read from the databases themselves."""

    NOT_STARTED = "not started"  # no scratch copy of this incident
    INCOMPLETE = "incomplete"  # a scratch copy that pg_restore may not have finished
    RESTORED = "restored"  # complete, not validated
    INVALID = "invalid"  # complete, failed validation
    VALIDATED = "validated"  # validated, waiting to be swapped in
    SWAPPED = "swapped"  # <db> is this incident's validated restore


@dataclass(frozen=True)
class DatabaseInfo:
    name: str
    marker: Marker | None
    allows_connections: bool
    size_bytes: int


@dataclass(frozen=True)
class RestoreState:
    database: str
    tag: str
    live: DatabaseInfo | None
    scratch: DatabaseInfo | None
    aside: DatabaseInfo | None
    # Scratch copies of this database left by *other* incidents (never touched here).
    others: tuple[DatabaseInfo, ...] = ()

    def _ours(self, info: DatabaseInfo | None) -> Marker | None:
        marker = info.marker if info else None
        if marker and marker.database == self.database and marker.tag == self.tag:
            return marker
        return None

    @property
    def live_marker(self) -> Marker | None:
        """The marker on ``<db>`` whoever wrote it (an earlier incident's restore, too)."""
        return self.live.marker if self.live and self.live.marker else None

    @property
    def phase(self) -> Phase:
        live = self._ours(self.live)
        if live and live.state is MarkerState.VALIDATED:
            return Phase.SWAPPED
        if self.scratch is None:
            return Phase.NOT_STARTED
        marker = self._ours(self.scratch)
        if marker is None or marker.state is MarkerState.RESTORING:
            return Phase.INCOMPLETE
        return {
            MarkerState.RESTORED: Phase.RESTORED,
            MarkerState.INVALID: Phase.INVALID,
            MarkerState.VALIDATED: Phase.VALIDATED,
        }[marker.state]

    @property
    def marker(self) -> Marker | None:
        """This incident's marker: on ``<db>`` once swapped, else on the scratch copy."""
        return self._ours(self.live) or self._ours(self.scratch)

    def describe(self) -> str:
        names = [
            f"{info.name}{'' if info.allows_connections else ' (connections blocked)'}"
            for info in (self.live, self.scratch, self.aside)
            if info
        ]
        return f"{self.phase}: " + (", ".join(names) or f"no database named {self.database}*")

    def as_dict(self) -> dict[str, Any]:
        marker = self.marker
        return {
            "phase": str(self.phase),
            "live": self.live.name if self.live else None,
            "scratch": self.scratch.name if self.scratch else None,
            "aside": self.aside.name if self.aside else None,
            "others": [o.name for o in self.others],
            "backup": marker.backup if marker else None,
            "described": self.describe(),
        }


def _admin(endpoint: Endpoint) -> psycopg.Connection[Any]:
    return psycopg.connect(
        endpoint.conninfo("postgres"),
        connect_timeout=10,
        autocommit=True,
        options=f"-c client_connection_check_interval={CLIENT_CHECK_MS}",
    )


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%")


def read_state(conn: psycopg.Connection[Any], database: str, tag: str) -> RestoreState:
    scratch, aside = restore_name(database, tag), aside_name(database, tag)
    rows = conn.execute(
        "SELECT d.datname, d.datallowconn,"
        " pg_catalog.shobj_description(d.oid, 'pg_database'),"
        " pg_catalog.pg_database_size(d.oid)"
        " FROM pg_catalog.pg_database d"
        " WHERE d.datname = ANY(%s) OR d.datname LIKE %s",
        ([database, scratch, aside], _like_escape(f"{database}_restore_") + "%"),
    ).fetchall()
    found = {
        name: DatabaseInfo(name, Marker.from_comment(comment), bool(allowed), int(size))
        for name, allowed, comment, size in rows
    }
    others = tuple(
        info for name, info in sorted(found.items()) if name not in (database, scratch, aside)
    )
    return RestoreState(
        database, tag, found.get(database), found.get(scratch), found.get(aside), others
    )


def inspect_state(endpoint: Endpoint, database: str, tag: str) -> RestoreState:
    with _admin(endpoint) as conn:
        return read_state(conn, database, tag)


def database_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (name,)).fetchone()
        is not None
    )


def terminate_sessions(conn: psycopg.Connection[Any], database: str) -> int:
    rows = conn.execute(
        "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_catalog.pg_backend_pid()",
        (database,),
    ).fetchall()
    return len(rows)


def allow_connections(conn: psycopg.Connection[Any], name: str, allowed: bool = True) -> None:
    conn.execute(
        sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
            sql.Identifier(name), sql.SQL("true" if allowed else "false")
        )
    )


def rename_database(conn: psycopg.Connection[Any], old: str, new: str) -> None:
    """Rename, first blocking new connections and ending the ones present (a database with
    sessions cannot be renamed). A kill in between leaves connections blocked: the callers
    re-open them from the state (:func:`swap`)."""
    allow_connections(conn, old, False)
    try:
        terminated = terminate_sessions(conn, old)
        if terminated:
            log.info("terminated %d sessions on %s", terminated, old)
        conn.execute(
            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(old), sql.Identifier(new)
            )
        )
    finally:
        allow_connections(conn, new if database_exists(conn, new) else old)
    log.info("renamed database %s to %s", old, new)


# --- the steps ----------------------------------------------------------------------------


def drop_incomplete_scratch(endpoint: Endpoint, state: RestoreState) -> str:
    """Drop this incident's scratch copy that ``pg_restore`` may not have finished.

    Why dropping is safe here, and only here (a recovery never deletes anything else):

    * the name carries this incident's tag, and its marker (or the lack of one: the marker
      is written before ``pg_restore`` starts, so a copy without one is empty) says
      ``restoring`` - it was never complete, so it was never validated and never swapped
      in: no client ever used it (clients connect to ``<db>``), so nothing was ever written
      to it but rows from the dump;
    * the dump it came from is this incident's pinned dump, which the guard of this very run
      verified again (size, sha256, table of contents) - every row the copy holds is in it.

    So the copy is a partial duplicate of a file we still have, not anyone's only copy.
    Moving it aside instead would keep a useless half-restore and eat the disk the fresh
    restore needs (the guard's disk check counts on it). The step's result reports the drop.
    """
    scratch = state.scratch
    if scratch is None:
        return ""
    if state.phase is not Phase.INCOMPLETE:
        raise StepFailed(f"refusing to drop {scratch.name}: it is {state.phase}, not incomplete")
    drop_database(endpoint, scratch.name)
    marker = scratch.marker
    source = marker.backup.get("id") if marker else "nothing yet (no marker)"
    log.info("dropped the incomplete %s (restored from %s)", scratch.name, source)
    return (
        f"dropped {scratch.name} left incomplete by an earlier attempt of this incident "
        f"({scratch.size_bytes / 2**20:.0f} MiB, from {source}, never validated nor swapped in)"
    )


def restore_into_scratch(
    endpoint: Endpoint,
    dump: Path,
    marker: Marker,
    *,
    jobs: int,
    owner: str | None,
    bindir: Path = DEFAULT_BINDIR,
) -> str:
    """``CREATE DATABASE <db>_restore_<tag>``, mark it ``restoring``, ``pg_restore -j``
    the dump into it, mark it ``restored``. The copy must not exist (the caller drops an
    incomplete one first). Returns its name."""
    target = restore_name(marker.database, marker.tag)
    with _admin(endpoint) as conn:
        if database_exists(conn, target):
            raise StepFailed(f"{target} already exists: refusing to restore over it")
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target))
        if owner:
            statement = sql.SQL("{} OWNER {}").format(statement, sql.Identifier(owner))
        conn.execute(statement)
        write_marker(conn, target, marker)
    # Ownership and grants are restored as dumped (we connect as a superuser): the
    # services' role must own and reach its tables exactly as before.
    run(
        [
            str(bindir / "pg_restore"),
            f"--jobs={jobs}",
            "--exit-on-error",
            f"--dbname={target}",
            *endpoint.client_args(),
            str(dump),
        ],
        what=f"pg_restore of {dump.name} into {target}",
        env=endpoint.client_env(),
    )
    with _admin(endpoint) as conn:
        write_marker(conn, target, replace(marker, state=MarkerState.RESTORED, at=utcnow_iso()))
    return target


def mark_validated(
    endpoint: Endpoint, state: RestoreState, checks: dict[str, str], baseline: dict[str, Any]
) -> Marker:
    marker = _scratch_marker(state)
    done = replace(
        marker, state=MarkerState.VALIDATED, at=utcnow_iso(), checks=checks, baseline=baseline
    )
    with _admin(endpoint) as conn:
        write_marker(conn, state.scratch.name, done)  # type: ignore[union-attr]
    return done


def mark_invalid(endpoint: Endpoint, state: RestoreState, problems: list[str]) -> None:
    marker = _scratch_marker(state)
    with _admin(endpoint) as conn:
        write_marker(
            conn,
            state.scratch.name,  # type: ignore[union-attr]
            replace(marker, state=MarkerState.INVALID, at=utcnow_iso(), problems=problems[:50]),
        )


def _scratch_marker(state: RestoreState) -> Marker:
    if state.scratch is None or state.phase not in (
        Phase.RESTORED,
        Phase.INVALID,
        Phase.VALIDATED,
    ):
        raise StepFailed(f"no complete restore of this incident to mark ({state.describe()})")
    return state.scratch.marker  # type: ignore[return-value]


def move_live_aside(endpoint: Endpoint, state: RestoreState) -> str:
    """``<db>`` -> ``<db>_pre_<tag>`` (the swap's first rename; in-place mode does it before
    restoring). Nothing to do when ``<db>`` is missing or already this incident's restore."""
    if state.live is None or state.phase is Phase.SWAPPED:
        return ""
    aside = aside_name(state.database, state.tag)
    if state.aside is not None:
        raise StepFailed(
            f"{aside} already exists and {state.database} is not this incident's restore: "
            "refusing to overwrite the kept copy"
        )
    with _admin(endpoint) as conn:
        rename_database(conn, state.database, aside)
    return f"moved {state.database} aside to {aside}"


def swap(endpoint: Endpoint, state: RestoreState) -> dict[str, Any]:
    """Finish the swap from wherever it stopped: ``<db>`` -> ``<db>_pre_<tag>`` (unless it
    is already aside, or there was no ``<db>``), then the validated scratch copy ->
    ``<db>``; finally connections are allowed again on both (a rename killed half-way
    leaves them blocked). Never restores anything."""
    done: list[str] = []
    if state.phase is not Phase.SWAPPED:
        if state.phase is not Phase.VALIDATED:
            raise StepFailed(f"nothing validated to swap in ({state.describe()})")
        moved = move_live_aside(endpoint, state)
        if moved:
            done.append(moved)
        with _admin(endpoint) as conn:
            rename_database(conn, state.scratch.name, state.database)  # type: ignore[union-attr]
        done.append(f"renamed {state.scratch.name} to {state.database}")  # type: ignore[union-attr]
    else:
        done.append(f"{state.database} already is this incident's restore")
    with _admin(endpoint) as conn:
        final = read_state(conn, state.database, state.tag)
        for info in (final.live, final.aside):
            if info is not None and not info.allows_connections:
                allow_connections(conn, info.name)
                done.append(f"connections to {info.name} allowed again")
    if final.phase is not Phase.SWAPPED:
        raise StepFailed(f"swap did not converge: {final.describe()}")
    return {
        "live": state.database,
        "kept_as": final.aside.name if final.aside else None,
        "done": done,
    }


def put_back(endpoint: Endpoint, state: RestoreState) -> str:
    """Undo an in-place move after a failed validation: ``<db>_pre_<tag>`` -> ``<db>``,
    when ``<db>`` is missing. The failed scratch copy stays, marked invalid: evidence."""
    if state.live is not None or state.aside is None:
        return ""
    with _admin(endpoint) as conn:
        rename_database(conn, state.aside.name, state.database)
    return f"put {state.aside.name} back as {state.database}"


# --- the baseline and what the swap set aside -----------------------------------------------

INTEGER_TYPES = ("int2", "int4", "int8")


def integer_primary_keys(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """``schema.table`` -> its primary key column, for single-column integer keys."""
    rows = conn.execute(
        """
        SELECT n.nspname, c.relname, a.attname
          FROM pg_catalog.pg_constraint k
          JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1]
          JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
         WHERE k.contype = 'p' AND pg_catalog.cardinality(k.conkey) = 1
           AND t.typname = ANY(%s)
        """,
        (list(INTEGER_TYPES),),
    ).fetchall()
    return {f"{schema}.{table}": column for schema, table, column in rows}


def _table(name: str) -> sql.Identifier:
    schema, _, table = name.partition(".")
    return sql.Identifier(schema, table)


def _canary_newest(conn: psycopg.Connection[Any]) -> str | None:
    exists = conn.execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL", (CANARY_TABLE,))
    if not exists.fetchone()[0]:  # type: ignore[index]
        return None
    newest = conn.execute(
        sql.SQL("SELECT max(written_at) FROM {}").format(_table(CANARY_TABLE))
    ).fetchone()[0]  # type: ignore[index]
    return newest.isoformat() if newest else None


def measure_baseline(
    endpoint: Endpoint, database: str, row_counts: dict[str, int]
) -> dict[str, Any]:
    """What the validated copy holds - the dump's content: per table its row count (the
    manifest's, which validation just matched exactly) and greatest primary key (one index
    probe), and the canary's newest heartbeat. Written into the validated marker so any
    later run can tell which rows of the kept copy came after the dump."""
    with psycopg.connect(endpoint.conninfo(database), connect_timeout=10) as conn:
        keys = integer_primary_keys(conn)
        tables: dict[str, dict[str, Any]] = {}
        for table, rows in sorted(row_counts.items()):
            key = keys.get(table)
            greatest = None
            if key:
                greatest = conn.execute(
                    sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier(key), _table(table))
                ).fetchone()[0]  # type: ignore[index]
            tables[table] = {"rows": rows, "key": key, "max_key": greatest}
        return {"tables": tables, "canary_newest": _canary_newest(conn)}


@dataclass(frozen=True)
class SetAside:
    """Rows of the kept copy ``<db>_pre_<tag>`` that the restored database lacks."""

    kept_as: str
    tables: dict[str, dict[str, Any]]  # only tables with rows after the dump
    newest_kept_write: str | None  # the canary's newest heartbeat in the kept copy
    method: str

    @property
    def rows(self) -> int:
        return sum(t["rows_after_dump"] for t in self.tables.values())

    def describe(self) -> str:
        if not self.rows:
            return (
                f"no row was written after the dump: {self.kept_as} holds nothing the restore lacks"
            )
        return (
            f"{self.rows} rows in {len(self.tables)} tables written after the dump "
            f"are kept in {self.kept_as}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "rows": self.rows,
            "table_count": len(self.tables),
            "sentence": self.describe(),
        }


SET_ASIDE_METHOD = (
    "per table of the kept copy: rows whose primary key is greater than the dump's greatest "
    "(an index range scan), plus any surplus of the rows at or below it over the dump's "
    "count; tables without an integer key by row count; tables the dump lacks in full"
)


def measure_set_aside(endpoint: Endpoint, kept_as: str, baseline: dict[str, Any]) -> SetAside:
    """Count, per table, the rows of the kept copy the restored database lacks.

    An anti-join by primary key across two databases is impossible in SQL, and shipping
    every key to compare is as costly as the restore. What is exact and cheap instead: the
    restored copy *is* the dump (validated), whose content the baseline describes. Keys of
    Tracktion's tables come from sequences, so a row written after the dump has a key above
    the dump's greatest - counted by an index range scan of the kept copy. A row whose key
    was drawn before the dump but committed after it lands at or below that key: the
    surplus of such rows over the dump's count is added (a delete after the dump hides one
    such row each, so that part is a lower bound; the rows above the greatest key are
    exact). Tables without a single integer key fall back to the row-count surplus. Updates
    in place after the dump are not rows "written after" by this measure; the kept copy
    holds them too. Read-only; the kept copy takes no writes (clients use ``<db>``)."""
    known = baseline.get("tables", {})
    tables: dict[str, dict[str, Any]] = {}
    with psycopg.connect(endpoint.conninfo(kept_as), connect_timeout=10) as conn:
        conn.execute("SET default_transaction_read_only = on")
        for schema, name in user_tables(conn):
            table = f"{schema}.{name}"
            total = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(_table(table))
            ).fetchone()[0]  # type: ignore[index]
            base = known.get(table)
            if base is None:
                entry = {"rows_after_dump": total, "how": "table not in the dump"}
            elif base.get("key") and base.get("max_key") is not None:
                above = conn.execute(
                    sql.SQL("SELECT count(*) FROM {} WHERE {} > %s").format(
                        _table(table), sql.Identifier(base["key"])
                    ),
                    (base["max_key"],),
                ).fetchone()[0]  # type: ignore[index]
                late = max(0, total - above - base["rows"])
                entry = {
                    "rows_after_dump": above + late,
                    "how": f"{base['key']} > {base['max_key']}"
                    + (f", plus {late} at or below it" if late else ""),
                }
            elif base.get("key"):  # the dump had no row: every row came after it
                entry = {"rows_after_dump": total, "how": "the table was empty in the dump"}
            else:
                entry = {"rows_after_dump": max(0, total - base["rows"]), "how": "row count"}
            entry["rows_in_kept_copy"] = total
            if entry["rows_after_dump"]:
                tables[table] = entry
        newest = _canary_newest(conn)
    return SetAside(kept_as, tables, newest, SET_ASIDE_METHOD)
