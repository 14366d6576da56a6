"""Integrity validation of a restored database, before anything is swapped in.

The seed's checks, done right: the table set against the backup's table of contents, row
counts against the backup manifest, foreign-key orphans by anti-join (the seed called a
function that does not exist), duplicate primary keys, the seed's business rules, and
``pg_amcheck`` for index corruption. Every identifier comes from the catalog and is quoted
with ``sql.Identifier``; nothing is formatted into SQL as text.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql

from tracktion_dr.postgres.commands import DEFAULT_BINDIR, CommandError, Endpoint, run
from tracktion_dr.postgres.dumps import exact_row_counts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    """A business rule of the seed's integrity SQL: rows matching ``violation`` are bad."""

    table: str
    column: str
    violation: Literal["in_future", "not_positive", "negative", "outside_0_1"]

    def condition(self) -> sql.Composable:
        column = sql.Identifier(self.column)
        return {
            "in_future": sql.SQL("{} > pg_catalog.now()").format(column),
            "not_positive": sql.SQL("{} <= 0").format(column),
            "negative": sql.SQL("{} < 0").format(column),
            "outside_0_1": sql.SQL("({} < 0 OR {} > 1)").format(column, column),
        }[self.violation]


# From the seed's "Verify data ranges and business logic" query.
TRACKTION_RULES = (
    Rule("audio_files", "created_at", "in_future"),
    Rule("audio_files", "file_size", "not_positive"),
    Rule("analysis_results", "confidence", "outside_0_1"),
    Rule("analysis_results", "processing_duration", "negative"),
)


@dataclass
class IntegrityReport:
    database: str
    checks: dict[str, str] = field(default_factory=dict)  # check -> "ok" or what was found
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, check: str, problems: list[str], ok_detail: str) -> None:
        self.checks[check] = "; ".join(problems[:5]) if problems else ok_detail
        self.problems.extend(f"{check}: {p}" for p in problems)

    def as_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "ok": self.ok,
            "checks": self.checks,
            "problems": self.problems,
        }


def foreign_key_orphans(conn: psycopg.Connection[Any]) -> list[str]:
    """Rows whose foreign key points at nothing, per constraint (anti-join)."""
    constraints = conn.execute(
        """
        SELECT c.conname, sn.nspname, st.relname, rn.nspname, rt.relname,
               ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(n, i)
                     JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n
                     ORDER BY k.i),
               ARRAY(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(n, i)
                     JOIN pg_catalog.pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n
                     ORDER BY k.i)
          FROM pg_catalog.pg_constraint c
          JOIN pg_catalog.pg_class st ON st.oid = c.conrelid
          JOIN pg_catalog.pg_namespace sn ON sn.oid = st.relnamespace
          JOIN pg_catalog.pg_class rt ON rt.oid = c.confrelid
          JOIN pg_catalog.pg_namespace rn ON rn.oid = rt.relnamespace
         WHERE c.contype = 'f'
         ORDER BY 1
        """
    ).fetchall()
    problems = []
    for name, schema, table, ref_schema, ref_table, columns, ref_columns in constraints:
        join = sql.SQL(" AND ").join(
            sql.SQL("r.{} = t.{}").format(sql.Identifier(rc), sql.Identifier(c))
            for c, rc in zip(columns, ref_columns, strict=True)
        )
        not_null = sql.SQL(" AND ").join(
            sql.SQL("t.{} IS NOT NULL").format(sql.Identifier(c)) for c in columns
        )
        query = sql.SQL(
            "SELECT count(*) FROM {} t WHERE {} AND NOT EXISTS (SELECT 1 FROM {} r WHERE {})"
        ).format(
            sql.Identifier(schema, table), not_null, sql.Identifier(ref_schema, ref_table), join
        )
        orphans = conn.execute(query).fetchone()[0]  # type: ignore[index]
        if orphans:
            problems.append(
                f"{schema}.{table} {name}: {orphans} rows reference no {ref_schema}.{ref_table} row"
            )
    return problems


def duplicate_primary_keys(conn: psycopg.Connection[Any]) -> list[str]:
    keys = conn.execute(
        """
        SELECT n.nspname, t.relname,
               ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(n, i)
                     JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n
                     ORDER BY k.i)
          FROM pg_catalog.pg_constraint c
          JOIN pg_catalog.pg_class t ON t.oid = c.conrelid
          JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
         WHERE c.contype = 'p' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
        """
    ).fetchall()
    problems = []
    for schema, table, columns in keys:
        column_list = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        query = sql.SQL(
            "SELECT count(*) FROM (SELECT 1 FROM {} GROUP BY {} HAVING count(*) > 1) d"
        ).format(sql.Identifier(schema, table), column_list)
        duplicates = conn.execute(query).fetchone()[0]  # type: ignore[index]
        if duplicates:
            problems.append(
                f"{schema}.{table}: {duplicates} primary-key values appear more than once"
            )
    return problems


def business_rule_violations(conn: psycopg.Connection[Any], rules: tuple[Rule, ...]) -> list[str]:
    existing = {
        (table, column)
        for table, column in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"
        ).fetchall()
    }
    problems = []
    for rule in rules:
        if (rule.table, rule.column) not in existing:
            continue
        query = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
            sql.Identifier("public", rule.table), rule.condition()
        )
        count = conn.execute(query).fetchone()[0]  # type: ignore[index]
        if count:
            problems.append(
                f"{rule.table}.{rule.column}: {count} rows {rule.violation.replace('_', ' ')}"
            )
    return problems


def amcheck(
    endpoint: Endpoint,
    database: str,
    bindir: Path = DEFAULT_BINDIR,
    *,
    install_missing: bool = True,
) -> list[str]:
    """``pg_amcheck`` of every table and B-tree index (installs amcheck if missing, unless
    ``install_missing`` is off: a server in recovery is read-only, and pg_amcheck's
    ``CREATE EXTENSION IF NOT EXISTS`` fails there even when the extension exists)."""
    try:
        run(
            [
                str(bindir / "pg_amcheck"),
                *(["--install-missing"] if install_missing else []),
                f"--database={database}",
                *endpoint.client_args(),
            ],
            what=f"pg_amcheck of {database}",
            env=endpoint.client_env(),
        )
    except CommandError as exc:
        return [str(exc)]
    return []


def validate_database(
    endpoint: Endpoint,
    database: str,
    *,
    expected_counts: dict[str, int] | None = None,
    expected_tables: list[str] | None = None,
    rules: tuple[Rule, ...] = TRACKTION_RULES,
    bindir: Path = DEFAULT_BINDIR,
    ignore_tables: tuple[str, ...] = (),
    install_amcheck: bool = True,
) -> IntegrityReport:
    """Run every check; the report lists each check's finding.

    ``install_amcheck=False`` for a server in recovery (read-only): pg_amcheck then runs
    only where the amcheck extension is already installed (a standby or a restored base
    backup has whatever its primary had), and the report says when it was skipped."""
    report = IntegrityReport(database)
    conninfo = endpoint.conninfo(database)

    def on_own_connection(check: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        with psycopg.connect(conninfo, connect_timeout=10) as conn:
            conn.execute("SET statement_timeout = '10min'")
            return check(conn)

    with psycopg.connect(conninfo, connect_timeout=10) as conn:
        has_amcheck = install_amcheck or bool(
            conn.execute(
                "SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'amcheck'"
            ).fetchone()
        )
    # The checks are independent reads: each runs on its own connection at the same time
    # (validation sits on the path to service restored), reported in a fixed order.
    with ThreadPoolExecutor(max_workers=5, thread_name_prefix="dr-validate") as pool:
        # Counting every row is a full scan of each table: only when there is a count
        # or a table set to compare with (a restore from a dump; not a PITR).
        counting = (
            pool.submit(on_own_connection, exact_row_counts)
            if expected_counts is not None or expected_tables is not None
            else None
        )
        orphans = pool.submit(on_own_connection, foreign_key_orphans)
        duplicates = pool.submit(on_own_connection, duplicate_primary_keys)
        violations = pool.submit(
            on_own_connection, lambda conn: business_rule_violations(conn, rules)
        )
        amchecked = (
            pool.submit(amcheck, endpoint, database, bindir, install_missing=install_amcheck)
            if has_amcheck
            else None
        )
        counts = (
            {t: n for t, n in counting.result().items() if t not in ignore_tables}
            if counting is not None
            else {}
        )
        if expected_tables is not None:
            wanted = sorted(t for t in expected_tables if t not in ignore_tables)
            missing = sorted(set(wanted) - set(counts))
            extra = sorted(set(counts) - set(wanted))
            report.add(
                "table set",
                [f"missing {t}" for t in missing] + [f"unexpected {t}" for t in extra],
                f"{len(counts)} tables, as in the backup's table of contents",
            )
        if expected_counts is not None:
            differences = [
                f"{t}: {counts.get(t)} rows, backup manifest says {n}"
                for t, n in sorted(expected_counts.items())
                if t not in ignore_tables and counts.get(t) != n
            ]
            report.add(
                "row counts", differences, f"{sum(counts.values())} rows match the backup manifest"
            )
        report.add("foreign keys", orphans.result(), "no orphans")
        report.add("primary keys", duplicates.result(), "no duplicates")
        report.add("business rules", violations.result(), "no violations")
        if amchecked is not None:
            report.add("pg_amcheck", amchecked.result(), "tables and indexes check clean")
        else:
            report.add(
                "pg_amcheck",
                [],
                "skipped: the amcheck extension is not installed in this database, and a server "
                "in recovery cannot install it",
            )
    for check, finding in report.checks.items():
        log.info("integrity %s / %s: %s", database, check, finding)
    return report
