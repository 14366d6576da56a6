"""Full database restore from a logical dump: beside, validate, then swap by rename.

The seed dropped the database before it knew the backup was good. Here the live database is
never dropped by a recovery: the dump is restored into ``<db>_restore_<tag>`` beside it,
validated, and only then swapped in by two renames; the old database stays as
``<db>_pre_<tag>`` for the operator to inspect or drop later.

``in_place`` mode renames the live database aside *first* (to ``<db>_pre_<tag>``) and
restores under the real name - for when clients must not see two databases at once - and
renames it back if the restore fails. Both modes are idempotent per ``tag`` (the incident).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tracktion_dr.postgres.commands import DEFAULT_BINDIR, Endpoint
from tracktion_dr.postgres.dumps import drop_database, restore_dump

log = logging.getLogger(__name__)

MAX_IDENTIFIER = 63


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


def database_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (name,)).fetchone()
        is not None
    )


def _admin(endpoint: Endpoint) -> psycopg.Connection[Any]:
    return psycopg.connect(endpoint.conninfo("postgres"), connect_timeout=10, autocommit=True)


def terminate_sessions(conn: psycopg.Connection[Any], database: str) -> int:
    rows = conn.execute(
        "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_catalog.pg_backend_pid()",
        (database,),
    ).fetchall()
    return len(rows)


def rename_database(conn: psycopg.Connection[Any], old: str, new: str) -> None:
    """Rename, first blocking new connections and ending the ones present (a database with
    sessions cannot be renamed)."""
    conn.execute(
        sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(old))
    )
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
        target = new if database_exists(conn, new) else old
        conn.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(target))
        )
    log.info("renamed database %s to %s", old, new)


def restore_beside(
    endpoint: Endpoint,
    dump: Path,
    database: str,
    tag: str,
    *,
    jobs: int,
    owner: str | None,
    bindir: Path = DEFAULT_BINDIR,
) -> str:
    """Restore the dump into ``<db>_restore_<tag>``; a leftover of an earlier attempt of the
    same incident (never the live database) is dropped first. Returns the new name."""
    target = restore_name(database, tag)
    with _admin(endpoint) as conn:
        if database_exists(conn, target):
            log.info("dropping %s left by an earlier attempt of this incident", target)
            drop_database(endpoint, target)
    restore_dump(endpoint, dump, target, jobs=jobs, bindir=bindir, owner=owner)
    return target


def swap_in(endpoint: Endpoint, database: str, tag: str) -> dict[str, str]:
    """``db`` -> ``db_pre_<tag>``, then ``db_restore_<tag>`` -> ``db``. Safe to re-run."""
    restored, aside = restore_name(database, tag), aside_name(database, tag)
    with _admin(endpoint) as conn:
        if not database_exists(conn, restored):
            if database_exists(conn, aside) and database_exists(conn, database):
                log.info("swap already done for %s", tag)
                return {"live": database, "kept_as": aside}
            raise RuntimeError(f"nothing to swap in: {restored} does not exist")
        if database_exists(conn, database):
            if database_exists(conn, aside):
                raise RuntimeError(f"{aside} already exists: refusing to overwrite the kept copy")
            rename_database(conn, database, aside)
        rename_database(conn, restored, database)
    return {"live": database, "kept_as": aside}


def move_aside(endpoint: Endpoint, database: str, tag: str) -> str:
    """In-place mode, step one: the live database becomes ``<db>_pre_<tag>``."""
    aside = aside_name(database, tag)
    with _admin(endpoint) as conn:
        if database_exists(conn, aside) and not database_exists(conn, database):
            return aside  # already moved by an earlier attempt
        rename_database(conn, database, aside)
    return aside


def put_back(endpoint: Endpoint, database: str, tag: str) -> None:
    """Undo ``move_aside`` after a failed in-place restore (the failed copy is renamed to
    ``<db>_failed_<tag>``, not dropped: it is evidence)."""
    aside = aside_name(database, tag)
    with _admin(endpoint) as conn:
        if not database_exists(conn, aside):
            return
        if database_exists(conn, database):
            rename_database(conn, database, _bounded(f"{database}_failed_{tag}"))
        rename_database(conn, aside, database)
