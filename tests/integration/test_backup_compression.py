"""Compressed base backups and archived WAL, for real on the sandbox.

When a base backup is taken with the plan's compression, Then it is a folder of zstd
archives at most 0.35x of its laid-down size, verified (extracted into a scratch directory
and ``pg_verifybackup``-ed there, the scratch gone) and listed verified. When one byte of
an archive changes, Then the cheap check names the archive (sha256); when a file inside
is wrong although the archive's checksum was recorded over it, Then the full check names
that file (``pg_verifybackup``), and so does ``dr_backup_verify``. When the primary is
killed and its data directory lost, Then PITR from the compressed base backup, replaying
compressed WAL, brings back exactly the data there was.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pitr_support import kill_primary, primary, switch_wal
from psycopg import sql

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states
from tracktion_dr.backups.catalog import Catalog, Status
from tracktion_dr.core.plan import load_plan
from tracktion_dr.postgres import basebackup_format, basebackups
from tracktion_dr.postgres.commands import Endpoint
from tracktion_dr.postgres.recovery_marker import read_marker
from tracktion_dr.postgres.wal import archived_file
from tracktion_sandbox import layout as L

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def catalog(sandbox) -> Catalog:
    return Catalog(load_plan().environment("drill").backups)


def replication(sandbox) -> Endpoint:
    return Endpoint(
        L.HOST, L.PRIMARY_PORT, L.REPLICATION_USER, sandbox.secrets.replication_password
    )


def take(sandbox, prefix: str) -> Path:
    """A base backup compressed as the sandbox plan says (the dr_backup_base way)."""
    return basebackups.take_base_backup(
        replication(sandbox),
        sandbox.layout.base_backups,
        label_prefix=prefix,
        compression=load_plan().backup_schedule.base_backup_compression,
    )


def discard(backup: Path) -> None:
    shutil.rmtree(backup, ignore_errors=True)
    for sidecar in backup.parent.glob(backup.name + ".*"):
        sidecar.unlink()


def scratch_left(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(basebackup_format.SCRATCH_PREFIX)]


def test_a_compressed_base_backup_is_small_verified_and_listed(sandbox, catalog):
    backup = take(sandbox, "test-compressed")
    try:
        assert sorted(p.name for p in backup.iterdir()) == [
            "backup_manifest",
            "base.tar.zst",
            "pg_wal.tar.zst",
        ]
        info = json.loads(backup.with_name(backup.name + ".backup_info.json").read_text())
        assert info["format"] == "tar" and info["compression"].startswith("server-zstd")
        assert set(info["archives"]) == {"backup_manifest", "base.tar.zst", "pg_wal.tar.zst"}
        assert info["size_bytes"] <= 0.35 * info["plain_bytes"], info
        assert not scratch_left(backup.parent), "the verification scratch is removed"

        (entry,) = [e for e in catalog.base_backups() if e.path == backup]
        assert entry.status is Status.VERIFIED and entry.format == "tar"
        assert "extracted and backup successfully verified" in entry.reason
        cheap = catalog.verify(entry)
        assert cheap.status is Status.VERIFIED and "sha256 of 3 file(s) match" in cheap.reason
        full = catalog.verify(entry, full=True)
        assert full.status is Status.VERIFIED and "backup successfully verified" in full.reason
        assert not scratch_left(backup.parent)
    finally:
        discard(backup)


def test_a_changed_archive_byte_is_named_and_the_backup_never_picked(sandbox, catalog):
    backup = take(sandbox, "test-corrupt-archive")
    try:
        archive = backup / "base.tar.zst"
        data = bytearray(archive.read_bytes())
        data[len(data) // 2] ^= 0xFF
        archive.write_bytes(bytes(data))
        (entry,) = [e for e in catalog.base_backups() if e.path == backup]
        checked = catalog.verify(entry)
        assert checked.status is Status.FAILED
        assert f"{backup.name}/base.tar.zst: sha256" in checked.reason
        (relisted,) = [e for e in catalog.base_backups() if e.path == backup]
        assert relisted.status is Status.FAILED  # recorded beside it: never picked
        chosen, _ = catalog.base_backup_for(None)
        assert chosen.path != backup
    finally:
        discard(backup)


def test_a_wrong_file_inside_is_named_by_pg_verifybackup_and_dr_backup_verify(sandbox, catalog):
    """The archive's checksum matches (recorded over the bad bytes, as if the backup had
    been damaged before it was described): only the full check can see it."""
    backup = take(sandbox, "test-corrupt-inside")
    try:
        _flip_a_byte_inside(backup / "base.tar.zst", "global/pg_control")
        info_path = backup.with_name(backup.name + ".backup_info.json")
        info = json.loads(info_path.read_text())
        info["archives"] = basebackup_format.archive_checksums(backup)
        info_path.write_text(json.dumps(info))
        (entry,) = [e for e in catalog.base_backups() if e.path == backup]
        assert catalog.verify(entry).status is Status.VERIFIED  # the cheap check cannot see it
        full = catalog.verify(entry, full=True)
        assert full.status is Status.FAILED and "global/pg_control" in full.reason, full.reason
        assert not scratch_left(backup.parent), "the scratch is removed when it fails too"

        dag_run = run_dag("dr_backup_verify", {"environment": "drill", "notify": False})
        states = task_states(dag_run)
        assert states["verdict"] == "failed" and states["record"] == "success"
        failed = {c["backup"]: c for c in task_result(dag_run, "record")["failed"]}
        assert "global/pg_control" in failed[backup.name]["reason"]
        assert failed[backup.name]["check"] == "sha256 of archives + extract + pg_verifybackup"
    finally:
        discard(backup)


def _flip_a_byte_inside(archive: Path, member: str) -> None:
    """Rewrite a zstd tar archive with one byte of ``member`` changed."""
    plain = subprocess.run(["zstd", "-dc", str(archive)], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(plain)) as source:
        offset = source.getmember(member).offset_data
    changed = bytearray(plain)
    changed[offset + 100] ^= 0xFF
    packed = subprocess.run(
        ["zstd", "-q", "-c"], input=bytes(changed), capture_output=True, check=True
    ).stdout
    archive.write_bytes(packed)


TABLES = ("tracklists", "audio_files")


def _fingerprint(probe: sql.Identifier, upto: dict[str, int]) -> tuple:
    """Every row of the business tables (up to the ids there were when first taken: a
    service may add rows meanwhile) and of the test's own table, as digests."""
    query = sql.SQL(
        "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t.id), ''))"
        " FROM {} t WHERE t.id <= %s"
    )
    with primary() as conn:
        return tuple(
            conn.execute(query.format(sql.Identifier(name)), (upto[name],)).fetchone()
            for name in TABLES
        ) + (conn.execute(query.format(probe), (10**9,)).fetchone(),)


def _newest_ids() -> dict[str, int]:
    with primary() as conn:
        return {
            name: conn.execute(
                sql.SQL("SELECT coalesce(max(id), 0) FROM {}").format(sql.Identifier(name))
            ).fetchone()[0]
            for name in TABLES
        }


def test_pitr_from_a_compressed_base_backup_recovers_exactly_the_data(sandbox):
    layout = sandbox.layout
    backup = take(sandbox, "test-compressed-pitr")
    probe = sql.Identifier(f"compressed_probe_{uuid.uuid4().hex[:10]}")
    with primary() as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, note text)").format(probe))
        for i in range(1, 51):  # after the backup: only the compressed WAL has them
            conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(probe), (i, f"row {i}"))
        conn.execute("UPDATE tracklists SET title = title || ' (v2)' WHERE id % 97 = 0")
        newest = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
    upto = _newest_ids()
    before = _fingerprint(probe, upto)
    assert before[-1][0] == 50
    switch_wal()
    assert archived_file(layout.wal_archive, newest).name == f"{newest}.zst"
    kill_primary(layout.primary_data)
    lost = layout.primary_data.with_name("primary.lost-in-compression-test")
    layout.primary_data.rename(lost)  # the disk is gone (kept here only to free the name)
    try:
        dag_run = run_dag(
            "dr_database_pitr",
            {
                "environment": "drill",
                "cluster": "main",
                "target_type": "latest",
                "incident_started_at": datetime.now(UTC).isoformat(),
            },
        )
        states = task_states(dag_run)
        assert states["verdict"] == "success", states
        used = task_result(dag_run, "guard")["base_backup"]
        assert used["id"] == backup.name and used["format"] == "tar"
        assert read_marker(layout.primary_data).base_backup == backup.name
        assert _fingerprint(probe, upto) == before
    finally:
        shutil.rmtree(lost, ignore_errors=True)
