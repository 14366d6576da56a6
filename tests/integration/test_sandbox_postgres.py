"""The sandbox's PostgreSQL half, checked against the live sandbox.

These are the promises the DR DAGs build on: the replica streams, the canary writes every
second, WAL reaches the archive, the initial dump restores and matches its manifest, the
base backup verifies, the seed is there with intact foreign keys, and ``up`` is
idempotent. The ``sandbox`` session fixture (tests/conftest.py) brings everything up.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import sql

from tracktion_dr.postgres.basebackups import verify_base_backup
from tracktion_dr.postgres.wal import archived_file
from tracktion_sandbox import backups, generate, pg
from tracktion_sandbox.layout import (
    APP_DATABASE,
    APP_USER,
    HOST,
    LEDGER_DATABASE,
    OPS_PORT,
    PRIMARY_PORT,
    REPLICA_PORT,
    SUPERUSER,
)

pytestmark = pytest.mark.sandbox

T = TypeVar("T")


@contextmanager
def connect(
    sandbox: Any, port: int = PRIMARY_PORT, *, user: str = SUPERUSER, dbname: str = APP_DATABASE
) -> Iterator[psycopg.Connection[Any]]:
    password = (
        sandbox.secrets.app_password if user == APP_USER else sandbox.secrets.postgres_password
    )
    with psycopg.connect(
        host=HOST,
        port=port,
        user=user,
        password=password,
        dbname=dbname,
        connect_timeout=5,
        autocommit=True,
    ) as conn:
        yield conn


def poll(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Return the first truthy result of ``check`` or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:.0f} s")
        time.sleep(0.3)


def scalar(conn: psycopg.Connection[Any], query: Any, params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def client_env(sandbox: Any) -> dict[str, str]:
    return {**os.environ, "PGPASSWORD": sandbox.secrets.postgres_password}


def newest(folder: Path, pattern: str, *, directory: bool = False) -> Path:
    found = sorted(p for p in folder.glob(pattern) if p.is_dir() == directory)
    assert found, f"nothing matches {pattern} in {folder}"
    return found[-1]


# --------------------------------------------------------------------------- replication


def test_replica_is_streaming_from_the_slot(sandbox: Any) -> None:
    with connect(sandbox, dbname="postgres") as conn:
        row = conn.execute(
            "SELECT state, sync_state FROM pg_stat_replication WHERE application_name = %s",
            (pg.REPLICA_APPLICATION_NAME,),
        ).fetchone()
        slot_active = scalar(
            conn, "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (pg.REPLICA_SLOT,)
        )
    assert row is not None and row[0] == "streaming", f"pg_stat_replication shows {row}"
    assert slot_active is True
    with connect(sandbox, REPLICA_PORT) as replica:
        assert scalar(replica, "SELECT pg_is_in_recovery()") is True


def test_row_written_on_primary_appears_on_replica(sandbox: Any) -> None:
    marker = f"pytest-replication-{uuid.uuid4()}"
    with connect(sandbox, user=APP_USER) as primary:
        primary.execute("INSERT INTO dr_canary.heartbeat (writer) VALUES (%s)", (marker,))
    with connect(sandbox, REPLICA_PORT) as replica:
        poll(
            lambda: scalar(
                replica, "SELECT count(*) FROM dr_canary.heartbeat WHERE writer = %s", (marker,)
            ),
            timeout=30,
            what="the row inserted on the primary did not reach the replica",
        )


# --------------------------------------------------------------------------- canary


def test_canary_writes_a_heartbeat_every_second(sandbox: Any) -> None:
    query = (
        "SELECT count(*), extract(epoch FROM now() - max(written_at)) "
        "FROM dr_canary.heartbeat WHERE writer LIKE %s"
    )
    with connect(sandbox, user=APP_USER) as conn:

        def fresh() -> tuple[int, float] | None:
            count, age = conn.execute(query, ("%sandbox-canary",)).fetchone() or (0, None)
            return (count, float(age)) if count and age is not None and age < 5 else None

        first_count, _ = poll(fresh, timeout=30, what="no canary heartbeat younger than 5 s")
        poll(
            lambda: (fresh() or (0, 0.0))[0] > first_count,
            timeout=15,
            what="the canary heartbeat count did not grow",
        )


# --------------------------------------------------------------------------- WAL archive


def test_switched_wal_segment_reaches_the_archive(sandbox: Any) -> None:
    archive: Path = sandbox.layout.wal_archive
    with connect(sandbox, dbname="postgres") as conn:
        # Make sure the current segment has something in it, or pg_switch_wal is a no-op.
        conn.execute("SELECT pg_logical_emit_message(false, 'pytest', 'wal-archive-check')")
        segment = scalar(conn, "SELECT pg_walfile_name(pg_switch_wal())")
    poll(
        lambda: archived_file(archive, segment) is not None,
        timeout=60,
        what=f"WAL segment {segment} did not appear in {archive}",
    )
    stored = archived_file(archive, segment)
    assert stored is not None and stored.name == f"{segment}.zst"  # compressed by zstd
    assert stored.stat().st_size < 16 * 1024 * 1024
    restored = subprocess.run(["zstd", "-dc", str(stored)], capture_output=True, check=True)
    assert len(restored.stdout) == 16 * 1024 * 1024


# --------------------------------------------------------------------------- initial backups


def test_initial_dump_matches_manifest_and_restores(sandbox: Any) -> None:
    bindir = pg.find_bindir()
    dump = newest(sandbox.layout.logical_dumps, "tracktion_*.dump")
    manifest = json.loads(dump.with_name(dump.name + ".manifest.json").read_text())
    assert manifest["format"] == "custom"
    assert manifest["database"] == APP_DATABASE
    assert manifest["size_bytes"] == dump.stat().st_size
    assert manifest["sha256"] == hashlib.sha256(dump.read_bytes()).hexdigest()
    assert manifest["row_counts"]["public.audio_files"] > 0

    listing = subprocess.run(
        [str(bindir / "pg_restore"), "--list", str(dump)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "TABLE DATA public audio_files" in listing

    scratch = f"pytest_restore_{uuid.uuid4().hex[:8]}"
    with connect(sandbox, OPS_PORT, dbname="postgres") as ops:
        ops.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
    try:
        subprocess.run(
            [
                str(bindir / "pg_restore"),
                "--jobs=2",
                "--no-owner",
                "--no-acl",
                "--exit-on-error",
                f"--host={HOST}",
                f"--port={OPS_PORT}",
                f"--username={SUPERUSER}",
                "--no-password",
                f"--dbname={scratch}",
                str(dump),
            ],
            env=client_env(sandbox),
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        with connect(sandbox, OPS_PORT, dbname=scratch) as restored:
            for qualified, expected in manifest["row_counts"].items():
                schema, table = qualified.split(".")
                got = scalar(
                    restored,
                    sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table)),
                )
                assert got == expected, (
                    f"{qualified}: {got} rows restored, manifest says {expected}"
                )
    finally:
        with connect(sandbox, OPS_PORT, dbname="postgres") as ops:
            ops.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(scratch))
            )


def test_initial_base_backup_passes_pg_verifybackup(sandbox: Any) -> None:
    base = newest(sandbox.layout.base_backups, "base_*", directory=True)
    info = json.loads(base.with_name(base.name + ".backup_info.json").read_text())
    verification = json.loads(base.with_name(base.name + ".verification.json").read_text())
    assert verification["status"] == "verified" and info["timeline"] >= 1
    assert info["start_lsn"] and info["stop_lsn"]
    # Compressed (tar, the default): pg_verifybackup of PostgreSQL 15 cannot read it where it
    # lies, so it is extracted into a scratch directory and verified there.
    assert info.get("format", "plain") == "plain" or (base / "base.tar.zst").is_file()
    assert "backup successfully verified" in verify_base_backup(base, bindir=pg.find_bindir())


# --------------------------------------------------------------------------- seed data


def test_seed_has_rows_and_no_orphans(sandbox: Any) -> None:
    with connect(sandbox, user=APP_USER) as conn:
        counts = {
            table: scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
            for table in ("audio_files", "analysis_results", "tracklists")
        }
        assert all(n > 0 for n in counts.values()), counts
        assert 2 * counts["audio_files"] <= counts["analysis_results"] <= 4 * counts["audio_files"]
        for child in ("analysis_results", "tracklists"):
            orphans = scalar(
                conn,
                sql.SQL(
                    "SELECT count(*) FROM {} c WHERE c.audio_file_id IS NOT NULL AND NOT EXISTS "
                    "(SELECT 1 FROM audio_files a WHERE a.id = c.audio_file_id)"
                ).format(sql.Identifier(child)),
            )
            assert orphans == 0, f"{orphans} orphan rows in {child}"
        assert scalar(conn, "SELECT count(*) FROM pg_extension WHERE extname = 'amcheck'") == 1
        owner = scalar(conn, "SELECT tableowner FROM pg_tables WHERE tablename = 'audio_files'")
        assert owner == APP_USER


def test_ops_cluster_holds_the_ledger_database(sandbox: Any) -> None:
    with connect(sandbox, OPS_PORT, dbname=LEDGER_DATABASE) as conn:
        assert scalar(conn, "SELECT current_database()") == LEDGER_DATABASE
        assert scalar(conn, "SELECT pg_is_in_recovery()") is False


def test_up_again_changes_nothing(sandbox: Any) -> None:
    layout = sandbox.layout
    before_dumps = sorted(layout.logical_dumps.glob("*"))
    before_bases = sorted(layout.base_backups.glob("*"))
    with connect(sandbox, user=APP_USER) as conn:
        files_before = scalar(conn, "SELECT count(*) FROM audio_files")
    pg.up(
        layout,
        sandbox.secrets,
        seed=lambda dsn: generate.generate(dsn, size="30MB"),
        initial_backups=lambda: backups.take_initial_backups(layout, sandbox.secrets),
    )
    with connect(sandbox, user=APP_USER) as conn:
        assert scalar(conn, "SELECT count(*) FROM audio_files") == files_before
    assert sorted(layout.logical_dumps.glob("*")) == before_dumps
    assert sorted(layout.base_backups.glob("*")) == before_bases
