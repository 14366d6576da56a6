"""The run ledger: every DR run's timeline, in a real database of its own.

The ledger lives on its own Airflow connection (in the sandbox: the ``ops`` cluster), never
on a cluster a recovery touches, so the record of a restore survives the restore. Writes
are idempotent per (dag_id, run_id): a cleared and re-run ``record`` task replaces its row.

A recovery never waits for the ledger: when its database does not answer (a disaster that
took the ops host too), the run's timeline is kept in a spool folder on the worker
(:func:`record_or_spool`) and written by the next ledger access that succeeds
(:func:`flush_spool`: every run's record step, and the ``dr_ledger_sync`` DAG).
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tracktion_dr.core.timeline import Timeline, parse_time

log = logging.getLogger(__name__)

LEDGER_CONN_ID = "dr_ledger"
SPOOL_ENV = "DR_LEDGER_SPOOL"
# Errors that mean "the ledger's database is not there", as opposed to a bug in a query.
UNREACHABLE = (psycopg.OperationalError,)

SCHEMA = """
CREATE SCHEMA IF NOT EXISTS dr;
CREATE TABLE IF NOT EXISTS dr.runs (
    id                   bigserial PRIMARY KEY,
    dag_id               text NOT NULL,
    run_id               text NOT NULL,
    incident_id          text NOT NULL,
    environment          text NOT NULL,
    clock_started_at     timestamptz NOT NULL,
    recorded_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    outcome              text NOT NULL CHECK (outcome IN ('succeeded', 'failed', 'dry_run')),
    rto_target_seconds   double precision NOT NULL,
    rto_achieved_seconds double precision,
    rpo_target_seconds   double precision,
    data_loss_seconds    double precision,
    backup_used          text,
    details              jsonb NOT NULL DEFAULT '{}'::jsonb,
    UNIQUE (dag_id, run_id)
);
CREATE TABLE IF NOT EXISTS dr.events (
    run              bigint NOT NULL REFERENCES dr.runs(id) ON DELETE CASCADE,
    position         int NOT NULL,
    name             text NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('step', 'gate')),
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz NOT NULL,
    status           text NOT NULL,
    detail           text NOT NULL DEFAULT '',
    PRIMARY KEY (run, position)
);
-- Alerts received by the webhook (POST /dr/alerts/{source}): what started which run, and
-- the "resolved" notices recorded on the incident they belong to.
CREATE TABLE IF NOT EXISTS dr.alerts (
    id           bigserial PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    source       text NOT NULL,
    fingerprint  text NOT NULL,
    status       text NOT NULL,
    action       text NOT NULL,
    incident_id  text,
    dag_id       text,
    run_id       text,
    labels       jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS alerts_fingerprint ON dr.alerts (source, fingerprint);
ALTER TABLE dr.runs ADD COLUMN IF NOT EXISTS redundancy_restored_seconds double precision;
ALTER TABLE dr.events ADD COLUMN IF NOT EXISTS milestone text NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS runs_incident ON dr.runs (incident_id);
CREATE INDEX IF NOT EXISTS runs_recorded ON dr.runs (recorded_at);
"""


def ensure_schema(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute(SCHEMA)


def record_run(conninfo: str, timeline: Timeline) -> int:
    """Write (or replace) the run's row and its events; return the run's ledger id."""
    with psycopg.connect(conninfo, connect_timeout=10, autocommit=True) as conn:
        ensure_schema(conn)
        with conn.transaction():
            run_id = conn.execute(
                """
                INSERT INTO dr.runs (dag_id, run_id, incident_id, environment, clock_started_at,
                    outcome, rto_target_seconds, rto_achieved_seconds, rpo_target_seconds,
                    data_loss_seconds, backup_used, details, redundancy_restored_seconds)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT (dag_id, run_id) DO UPDATE SET
                    incident_id = EXCLUDED.incident_id, environment = EXCLUDED.environment,
                    clock_started_at = EXCLUDED.clock_started_at, outcome = EXCLUDED.outcome,
                    rto_target_seconds = EXCLUDED.rto_target_seconds,
                    rto_achieved_seconds = EXCLUDED.rto_achieved_seconds,
                    rpo_target_seconds = EXCLUDED.rpo_target_seconds,
                    data_loss_seconds = EXCLUDED.data_loss_seconds,
                    backup_used = EXCLUDED.backup_used, details = EXCLUDED.details,
                    redundancy_restored_seconds = EXCLUDED.redundancy_restored_seconds,
                    recorded_at = pg_catalog.now()
                RETURNING id
                """,
                (
                    timeline.dag_id,
                    timeline.run_id,
                    timeline.incident_id,
                    timeline.environment,
                    timeline.clock_started_at,
                    timeline.outcome,
                    timeline.rto_target_seconds,
                    timeline.rto_achieved_seconds,
                    timeline.rpo_target_seconds,
                    timeline.data_loss_seconds,
                    timeline.backup_used,
                    Jsonb(json.loads(json.dumps(timeline.details, default=str))),
                    timeline.redundancy_restored_seconds,
                ),
            ).fetchone()[0]  # type: ignore[index]
            conn.execute("DELETE FROM dr.events WHERE run = %s", (run_id,))
            with conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO dr.events (run, position, name, kind, started_at, finished_at,"
                    " status, detail, milestone) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [
                        (
                            run_id,
                            i,
                            e.name,
                            e.kind,
                            e.started_at,
                            e.finished_at,
                            e.status,
                            e.detail,
                            e.milestone,
                        )
                        for i, e in enumerate(timeline.events)
                    ],
                )
    return int(run_id)


def recent_runs(
    conninfo: str, *, dag_id: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    with psycopg.connect(conninfo, connect_timeout=10, row_factory=dict_row) as conn:
        ensure_schema(conn)
        return conn.execute(
            "SELECT * FROM dr.runs WHERE (%(dag)s::text IS NULL OR dag_id = %(dag)s)"
            " ORDER BY recorded_at DESC LIMIT %(limit)s",
            {"dag": dag_id, "limit": limit},
        ).fetchall()


def run_events(conninfo: str, ledger_id: int) -> list[dict[str, Any]]:
    with psycopg.connect(conninfo, connect_timeout=10, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT * FROM dr.events WHERE run = %s ORDER BY position", (ledger_id,)
        ).fetchall()


# --- backup checks --------------------------------------------------------------------------
# Backup DAGs are not incidents: their results go to a table of their own, one row per
# checked backup per run (idempotent per dag_id, run_id, backup), so trends ("how long
# since the last good test restore?") are one query away.

BACKUP_CHECKS_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS dr;
CREATE TABLE IF NOT EXISTS dr.backup_checks (
    dag_id      text NOT NULL,
    run_id      text NOT NULL,
    environment text NOT NULL,
    backup      text NOT NULL,
    kind        text NOT NULL,
    status      text NOT NULL,
    check_name  text NOT NULL,
    reason      text NOT NULL DEFAULT '',
    checked_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (dag_id, run_id, backup)
);
"""


def record_backup_checks(
    conninfo: str, *, dag_id: str, run_id: str, environment: str, checks: list[dict[str, Any]]
) -> int:
    """Write one row per check (keys: backup, kind, status, check, reason); return count."""
    with psycopg.connect(conninfo, connect_timeout=10, autocommit=True) as conn:
        with conn.transaction():
            conn.execute(BACKUP_CHECKS_SCHEMA)
        with conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO dr.backup_checks (dag_id, run_id, environment, backup, kind,"
                " status, check_name, reason) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (dag_id, run_id, backup) DO UPDATE SET status = EXCLUDED.status,"
                " check_name = EXCLUDED.check_name, reason = EXCLUDED.reason,"
                " checked_at = pg_catalog.now()",
                [
                    (
                        dag_id,
                        run_id,
                        environment,
                        c["backup"],
                        c["kind"],
                        c["status"],
                        c.get("check", ""),
                        c.get("reason", ""),
                    )
                    for c in checks
                ],
            )
    return len(checks)


def backup_checks(conninfo: str, *, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(conninfo, connect_timeout=10, row_factory=dict_row) as conn:
        with conn.transaction():
            conn.execute(BACKUP_CHECKS_SCHEMA)
        return conn.execute(
            "SELECT * FROM dr.backup_checks WHERE dag_id = %s AND run_id = %s ORDER BY backup",
            (dag_id, run_id),
        ).fetchall()


def incident_runs(
    conninfo: str, incident_id: str
) -> tuple[list[dict[str, Any]], dict[int, list[dict[str, Any]]]]:
    """Every run recorded for an incident (oldest first) and each run's events."""
    with psycopg.connect(conninfo, connect_timeout=10, row_factory=dict_row) as conn:
        ensure_schema(conn)
        runs = conn.execute(
            "SELECT * FROM dr.runs WHERE incident_id = %s ORDER BY clock_started_at, recorded_at",
            (incident_id,),
        ).fetchall()
        events: dict[int, list[dict[str, Any]]] = {}
        for run in runs:
            events[int(run["id"])] = conn.execute(
                "SELECT * FROM dr.events WHERE run = %s ORDER BY position", (run["id"],)
            ).fetchall()
    return runs, events


def record_alert(
    conninfo: str,
    *,
    source: str,
    fingerprint: str,
    status: str,
    action: str,
    incident_id: str | None,
    dag_id: str | None,
    run_id: str | None,
    labels: dict[str, str],
) -> None:
    with psycopg.connect(conninfo, connect_timeout=5, autocommit=True) as conn:
        ensure_schema(conn)
        conn.execute(
            "INSERT INTO dr.alerts (source, fingerprint, status, action, incident_id, dag_id,"
            " run_id, labels) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (source, fingerprint, status, action, incident_id, dag_id, run_id, Jsonb(labels)),
        )


def alerts_for(conninfo: str, fingerprint: str) -> list[dict[str, Any]]:
    with psycopg.connect(conninfo, connect_timeout=5, row_factory=dict_row) as conn:
        ensure_schema(conn)
        return conn.execute(
            "SELECT * FROM dr.alerts WHERE fingerprint = %s ORDER BY id", (fingerprint,)
        ).fetchall()


# --- spool: the ledger is down, the recovery is not -----------------------------------------


def spool_directory() -> Path:
    """Where timelines wait for the ledger: ``$DR_LEDGER_SPOOL``, else ``$AIRFLOW_HOME``'s
    ``dr_ledger_spool`` (a worker-local folder: the worker that ran the recovery flushes it)."""
    configured = os.environ.get(SPOOL_ENV)
    if configured:
        return Path(configured)
    return Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow") / "dr_ledger_spool"


def _spool_file(timeline: Timeline, folder: Path) -> Path:
    safe = "".join(
        c if c.isalnum() or c in "-_." else "_" for c in f"{timeline.dag_id}__{timeline.run_id}"
    )
    return folder / f"{safe}.json"


def spool(timeline: Timeline, folder: Path | None = None) -> Path:
    """Keep the timeline on disk (atomically) until the ledger is back."""
    folder = folder or spool_directory()
    folder.mkdir(parents=True, exist_ok=True)
    target = _spool_file(timeline, folder)
    staging = target.with_suffix(".json.tmp")
    staging.write_text(json.dumps(timeline.as_dict(), default=str, indent=1))
    staging.replace(target)
    return target


def spooled(folder: Path | None = None) -> list[Timeline]:
    folder = folder or spool_directory()
    if not folder.is_dir():
        return []
    return [Timeline.from_dict(json.loads(p.read_text())) for p in sorted(folder.glob("*.json"))]


def flush_spool(conninfo: str, folder: Path | None = None) -> list[str]:
    """Write every spooled timeline to the ledger; each one written is moved to ``sent/``
    (kept, not deleted). Returns the run ids written. Raises when the ledger is down."""
    folder = folder or spool_directory()
    if not folder.is_dir():
        return []
    written: list[str] = []
    for path in sorted(folder.glob("*.json")):
        timeline = Timeline.from_dict(json.loads(path.read_text()))
        record_run(conninfo, timeline)
        sent = folder / "sent"
        sent.mkdir(exist_ok=True)
        path.replace(sent / path.name)
        written.append(timeline.run_id)
        log.info(
            "ledger is back: wrote the spooled record of %s %s", timeline.dag_id, timeline.run_id
        )
    return written


def record_or_spool(conninfo: str, timeline: Timeline) -> tuple[int | None, Path | None]:
    """Record the run; when the ledger does not answer, spool it. Flushes older spooled
    records first when the ledger answers. Returns (ledger id, spool file)."""
    try:
        flush_spool(conninfo)
        return record_run(conninfo, timeline), None
    except UNREACHABLE as exc:
        path = spool(timeline)
        log.warning(
            "the ledger does not answer (%s): the run's record is kept in %s and written "
            "when the ledger is back",
            str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__,
            path,
        )
        return None, path


INCIDENTS_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS dr;
CREATE TABLE IF NOT EXISTS dr.incidents (
    incident_id       text PRIMARY KEY,
    clock_started_at  timestamptz NOT NULL,
    opened_at         timestamptz NOT NULL DEFAULT pg_catalog.now()
);
"""


def _clock_file(incident_id: str) -> Path:
    return spool_directory() / "incidents" / f"{incident_id}.txt"


def incident_clock(conninfo: str, incident_id: str, proposed: datetime) -> datetime:
    """The incident's RTO clock start, registered by its first run: ``proposed`` for the
    first run, the stored one for every re-run (so a re-run's downtime is the incident's,
    never "data loss"). Kept in the spool when the ledger does not answer."""
    clock_file = _clock_file(incident_id)
    local = parse_time(clock_file.read_text().strip()) if clock_file.exists() else None
    try:
        with psycopg.connect(conninfo, connect_timeout=5, autocommit=True) as conn:
            conn.execute(INCIDENTS_SCHEMA)
            conn.execute(
                "INSERT INTO dr.incidents (incident_id, clock_started_at) VALUES (%s, %s)"
                " ON CONFLICT (incident_id) DO UPDATE SET clock_started_at ="
                " LEAST(dr.incidents.clock_started_at, EXCLUDED.clock_started_at)",
                (incident_id, min(filter(None, (local, proposed)))),
            )
            stored = conn.execute(
                "SELECT clock_started_at FROM dr.incidents WHERE incident_id = %s",
                (incident_id,),
            ).fetchone()[0]  # type: ignore[index]
        return parse_time(stored)
    except UNREACHABLE:
        clock = min(filter(None, (local, proposed)))
        clock_file.parent.mkdir(parents=True, exist_ok=True)
        clock_file.write_text(clock.isoformat())
        log.warning("the ledger does not answer: the incident's clock is kept in %s", clock_file)
        return clock
