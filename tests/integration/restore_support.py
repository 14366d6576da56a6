"""What the dr_database_restore tests share: a fresh dump of their own (a dump already
restored by an earlier test is, rightly, refused for a new incident), fingerprints of the
business tables, an exact cross-database comparison, and putting the sandbox back."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tracktion_dr.airflow.support import endpoint
from tracktion_dr.core.incident import new_incident_id
from tracktion_dr.postgres.dumps import read_manifest, take_logical_dump
from tracktion_dr.postgres.restore import aside_name, incident_tag, rename_database, restore_name

DATABASE = "tracktion"
BUSINESS_TABLES = ("audio_files", "analysis_results", "tracklists")
# Each table with the columns that identify one of its rows exactly (ids of the canary
# repeat after a restore: the sequence is restored too, so the writer's timestamp goes in).
ROW_IDENTITY = {
    "public.audio_files": ("id", "file_path"),
    "public.analysis_results": ("id", "audio_file_id", "created_at"),
    "public.tracklists": ("id", "created_at"),
    "dr_canary.heartbeat": ("id", "written_at"),
}


def admin():
    return endpoint("tracktion_pg_primary")


def connect(database: str = DATABASE, **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(admin().conninfo(database), connect_timeout=10, **kwargs)


def databases() -> set[str]:
    with connect("postgres") as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}


def fingerprint(database: str = DATABASE, up_to: dict[str, int] | None = None) -> str:
    """A checksum of the business tables' contents (the canary table keeps changing);
    with ``up_to``, only rows whose id is at most the table's given id."""
    digest = hashlib.sha256()
    with connect(database) as conn:
        for table in BUSINESS_TABLES:
            limit = (up_to or {}).get(table)
            where = sql.SQL("WHERE id <= {}").format(sql.Literal(limit)) if limit else sql.SQL("")
            rows = conn.execute(
                sql.SQL("SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM {} t {}").format(
                    sql.Identifier("public", table), where
                )
            ).fetchone()
            digest.update(str(rows[0]).encode())
    return digest.hexdigest()


def greatest_ids(database: str = DATABASE) -> dict[str, int]:
    with connect(database) as conn:
        return {
            table: conn.execute(
                sql.SQL("SELECT coalesce(max(id), 0) FROM {}").format(
                    sql.Identifier("public", table)
                )
            ).fetchone()[0]
            for table in BUSINESS_TABLES
        }


def rows_missing_from(kept: str, live: str, table: str) -> int:
    """Rows of ``kept`` that ``live`` lacks, by a real anti-join done here (the databases
    are small in the sandbox): the independent truth the DAG's cheap measure must match."""
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in ROW_IDENTITY[table])
    schema, _, name = table.partition(".")
    query = sql.SQL("SELECT {} FROM {}").format(columns, sql.Identifier(schema, name))
    with connect(kept) as a, connect(live) as b:
        kept_rows = Counter(a.execute(query).fetchall())
        live_rows = Counter(b.execute(query).fetchall())
    return sum((kept_rows - live_rows).values())


@dataclass
class Incident:
    """One test incident: its own fresh dump, id, clock start and database names."""

    dump: Path
    manifest: dict[str, Any]
    ids_at_dump: dict[str, int]
    fingerprint_at_dump: str
    incident_id: str = ""
    started_at: str = ""

    @property
    def tag(self) -> str:
        return incident_tag(self.incident_id)

    @property
    def kept(self) -> str:
        return aside_name(DATABASE, self.tag)

    @property
    def scratch(self) -> str:
        return restore_name(DATABASE, self.tag)

    def conf(self, **extra: Any) -> dict[str, Any]:
        return {
            "environment": "drill",
            "database": DATABASE,
            "backup": self.dump.name,
            "incident_id": self.incident_id,
            "incident_started_at": self.started_at,
            **extra,
        }


def fresh_dump(sandbox) -> Incident:
    """A dump of the live database taken now, with what it holds (ids, fingerprint)."""
    ids = greatest_ids()
    before = fingerprint(up_to=ids)
    dump = take_logical_dump(admin(), DATABASE, sandbox.layout.logical_dumps)
    manifest = read_manifest(dump)
    # The dump's snapshot came after ``ids`` was read: only rows written in between (none
    # but the canary's: the services write no business rows on their own) could differ.
    assert greatest_ids() == ids, "a business row was written while the dump was taken"
    return Incident(dump, manifest, ids, before)


def write_after_dump_and_break(incident: Incident, new_files: int = 3) -> None:
    """Rows written after the dump (they must end up reported, in the kept copy), then
    the incident: rows destroyed. The clock starts at the damage."""
    with connect(autocommit=True) as conn:
        for n in range(new_files):
            conn.execute(
                "INSERT INTO audio_files (file_path, file_name, format, file_size)"
                " VALUES (%s, %s, 'wav', 1000)",
                (f"/after-dump/{incident.dump.stem}/{n}.wav", f"{n}.wav"),
            )
        conn.execute("DELETE FROM analysis_results WHERE id % 2 = 0")
    now = datetime.now(UTC)
    incident.incident_id = new_incident_id(now)
    incident.started_at = now.isoformat().replace("+00:00", "Z")


def put_sandbox_back(incident: Incident, supervisor_controller, services: list[str]) -> None:
    """After a test, whatever happened: a live database under the real name, this
    incident's scratch and kept copies gone (the test already judged them), its locks
    released, the services up, its dump removed."""
    from tracktion_dr.airflow.support import conninfo
    from tracktion_dr.evidence import ledger, locks

    with connect("postgres", autocommit=True) as conn:
        present = {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}
        if DATABASE not in present and incident.incident_id:
            for candidate in (incident.kept, incident.scratch):
                if candidate in present:
                    rename_database(conn, candidate, DATABASE)
                    present.discard(candidate)
                    break
        for leftover in (incident.kept, incident.scratch):
            if incident.incident_id and leftover in present:
                conn.execute(
                    sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(leftover))
                )
    if incident.incident_id:
        with psycopg.connect(conninfo(ledger.LEDGER_CONN_ID), connect_timeout=10) as conn:
            conn.execute(locks.SCHEMA)
            conn.execute("DELETE FROM dr.locks WHERE incident_id = %s", (incident.incident_id,))
    for service in services:
        supervisor_controller.start(service)
    for path in (incident.dump, *incident.dump.parent.glob(incident.dump.name + ".*")):
        path.unlink(missing_ok=True)
