"""Logical dumps: taken in custom format with a manifest, verified, test-restored.

A dump is only as good as a restore of it. Each dump ``<db>_<UTC stamp>.dump`` has a
sidecar ``.manifest.json`` (size, sha256, exact row counts taken in the *same snapshot* as
the dump) and, once checked, a ``.verification.json`` with the outcome. Files are written
under a hidden ``.partial`` name and renamed into place, so a listed dump is complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tracktion_dr.postgres.commands import DEFAULT_BINDIR, CommandError, Endpoint, run

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".manifest.json"
VERIFICATION_SUFFIX = ".verification.json"
DUMP_NAME = re.compile(r"^(?P<db>[a-z_][a-z0-9_]*)_(?P<stamp>\d{8}T\d{6}Z)\.dump$")


def utc_stamp(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(partial, path)


def user_tables(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    rows = conn.execute(
        """
        SELECT n.nspname, c.relname
          FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
           AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp%%'
         ORDER BY 1, 2
        """
    ).fetchall()
    return [(schema, table) for schema, table in rows]


def exact_row_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for schema, table in user_tables(conn):
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
        ).fetchone()
        counts[f"{schema}.{table}"] = int(row[0]) if row else 0
    return counts


def take_logical_dump(
    endpoint: Endpoint,
    database: str,
    destination: Path,
    *,
    bindir: Path = DEFAULT_BINDIR,
    compress: int = 6,
) -> Path:
    """``pg_dump -Fc`` of ``database`` into ``destination`` with its manifest; returns the
    dump's path. Row counts come from the snapshot pg_dump uses (exported and held open)."""
    destination.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    name = f"{database}_{utc_stamp(started)}.dump"
    final, partial = destination / name, destination / f".{name}.partial"
    if final.exists():
        raise FileExistsError(f"{final} already exists (two dumps in the same second?)")
    log.info("taking logical dump of %s into %s", database, final)
    with psycopg.connect(endpoint.conninfo(database), connect_timeout=10) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        snapshot = conn.execute("SELECT pg_catalog.pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
        server_version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        counts = exact_row_counts(conn)
        run(
            [
                str(bindir / "pg_dump"),
                "--format=custom",
                f"--compress={compress}",
                f"--snapshot={snapshot}",
                f"--file={partial}",
                *endpoint.client_args(),
                database,
            ],
            what=f"pg_dump of {database}",
            env=endpoint.client_env(),
        )
        conn.rollback()
    manifest = {
        "database": database,
        "format": "custom",
        "file": name,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "size_bytes": partial.stat().st_size,
        "sha256": sha256_file(partial),
        "row_counts": counts,
        "server_version": server_version,
    }
    write_json_atomic(destination / f"{name}{MANIFEST_SUFFIX}", manifest)
    os.replace(partial, final)
    log.info("dump %s: %d bytes, %d tables", name, manifest["size_bytes"], len(counts))
    return final


def read_manifest(dump: Path) -> dict[str, Any]:
    return json.loads(dump.with_name(dump.name + MANIFEST_SUFFIX).read_text())


@dataclass(frozen=True)
class DumpCheck:
    ok: bool
    reason: str
    tables: list[str]


def list_dump_tables(dump: Path, bindir: Path = DEFAULT_BINDIR) -> list[str]:
    """``schema.table`` for every TABLE DATA entry of the dump's table of contents."""
    result = run(
        [str(bindir / "pg_restore"), "--list", str(dump)], what=f"pg_restore --list {dump.name}"
    )
    tables = []
    for line in result.stdout.splitlines():
        # e.g. "3345; 0 16390 TABLE DATA public audio_files tracktion"
        match = re.match(r"^\d+; \d+ \d+ TABLE DATA (\S+) (\S+) ", line)
        if match:
            tables.append(f"{match.group(1)}.{match.group(2)}")
    return sorted(tables)


def check_dump(dump: Path, bindir: Path = DEFAULT_BINDIR) -> DumpCheck:
    """Size and sha256 against the manifest, then a readable table of contents."""
    try:
        manifest = read_manifest(dump)
    except (OSError, ValueError) as exc:
        return DumpCheck(False, f"manifest unreadable: {exc}", [])
    size = dump.stat().st_size
    if size != manifest["size_bytes"]:
        return DumpCheck(
            False, f"size {size} bytes, manifest says {manifest['size_bytes']} (truncated?)", []
        )
    digest = sha256_file(dump)
    if digest != manifest["sha256"]:
        return DumpCheck(
            False,
            f"sha256 {digest[:12]}… does not match the manifest's {manifest['sha256'][:12]}…",
            [],
        )
    try:
        tables = list_dump_tables(dump, bindir)
    except CommandError as exc:
        return DumpCheck(False, str(exc), [])
    expected = sorted(manifest["row_counts"])
    if tables != expected:
        return DumpCheck(
            False, f"table of contents {tables} differs from the manifest's {expected}", tables
        )
    return DumpCheck(True, f"sha256 ok, {len(tables)} tables in the table of contents", tables)


def restore_dump(
    endpoint: Endpoint,
    dump: Path,
    target_database: str,
    *,
    jobs: int = 2,
    bindir: Path = DEFAULT_BINDIR,
    owner: str | None = None,
) -> None:
    """Create ``target_database`` (must not exist) and ``pg_restore -j`` the dump into it."""
    with psycopg.connect(
        endpoint.conninfo("postgres"), connect_timeout=10, autocommit=True
    ) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (target_database,)
        ).fetchone()
        if exists:
            raise FileExistsError(
                f"database {target_database} already exists: refusing to restore over it"
            )
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target_database))
        if owner:
            statement = sql.SQL("{} OWNER {}").format(statement, sql.Identifier(owner))
        conn.execute(statement)
    # Ownership and grants are restored as dumped (we connect as a superuser): the
    # services' role must own and reach its tables exactly as before.
    run(
        [
            str(bindir / "pg_restore"),
            f"--jobs={jobs}",
            "--exit-on-error",
            f"--dbname={target_database}",
            *endpoint.client_args(),
            str(dump),
        ],
        what=f"pg_restore of {dump.name} into {target_database}",
        env=endpoint.client_env(),
    )


def drop_database(endpoint: Endpoint, database: str) -> None:
    with psycopg.connect(
        endpoint.conninfo("postgres"), connect_timeout=10, autocommit=True
    ) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
        )


def compare_counts(endpoint: Endpoint, database: str, expected: dict[str, int]) -> list[str]:
    """Differences between a database's exact row counts and ``expected`` (empty: equal)."""
    with psycopg.connect(endpoint.conninfo(database), connect_timeout=10) as conn:
        actual = exact_row_counts(conn)
    problems = [f"{t}: missing" for t in sorted(set(expected) - set(actual))]
    problems += [f"{t}: not in the backup" for t in sorted(set(actual) - set(expected))]
    problems += [
        f"{t}: {actual[t]} rows, manifest says {expected[t]}"
        for t in sorted(set(actual) & set(expected))
        if actual[t] != expected[t]
    ]
    return problems


def verify_by_restore(
    endpoint: Endpoint, dump: Path, *, bindir: Path = DEFAULT_BINDIR, jobs: int = 2
) -> DumpCheck:
    """The part others skip: restore into a scratch database, compare counts, drop it."""
    manifest = read_manifest(dump)
    scratch = f"dr_verify_{manifest['database']}_{utc_stamp().lower()}"
    try:
        restore_dump(endpoint, dump, scratch, jobs=jobs, bindir=bindir)
        problems = compare_counts(endpoint, scratch, manifest["row_counts"])
    except (CommandError, psycopg.Error, FileExistsError) as exc:
        return DumpCheck(False, f"test restore failed: {exc}", [])
    finally:
        drop_database(endpoint, scratch)
    if problems:
        return DumpCheck(False, "test restore differs: " + "; ".join(problems[:5]), [])
    total = sum(manifest["row_counts"].values())
    return DumpCheck(
        True,
        f"test restore into {scratch}: {total} rows match the manifest",
        sorted(manifest["row_counts"]),
    )
