"""The dr_backup_* DAGs and dr_rpo_watch, run for real with dag.test() on the sandbox.

Runbook style: When the backup DAGs run, Then the catalog lists verified backups; When a
dump is truncated or a base backup file corrupted, Then it is listed failed with the reason
and never picked; When one archived WAL segment disappears, Then the WAL watch fails naming
it. Corruption is only ever done to backups these tests take themselves (the sandbox's
initial backups are used by other tests); the WAL segment is put back in ``finally``.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta

import pytest

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states
from tracktion_dr.airflow.support import conninfo
from tracktion_dr.backups import watch
from tracktion_dr.backups.catalog import BackupKind, Catalog, NoUsableBackup, Status
from tracktion_dr.core.plan import load_plan
from tracktion_dr.evidence import ledger
from tracktion_dr.postgres import basebackups, dumps, wal
from tracktion_dr.postgres.commands import Endpoint
from tracktion_sandbox import layout as L
from tracktion_sandbox.backups import switch_and_wait_archived

pytestmark = pytest.mark.sandbox
CONF = {"environment": "drill", "notify": True}


@pytest.fixture(scope="module")
def catalog(sandbox) -> Catalog:
    return Catalog(load_plan().environment("drill").backups)


def sink_lines(layout) -> list[str]:
    path = layout.sink_webhooks
    return path.read_text().splitlines() if path.exists() else []


def run(dag_id: str, **conf):
    dag_run = run_dag(dag_id, {**CONF, **conf})
    return dag_run, task_states(dag_run)


def test_backup_dags_leave_verified_backups_the_catalog_lists(sandbox, catalog):
    before_dumps = {e.id for e in catalog.dumps()}
    before_bases = {e.id for e in catalog.base_backups()}
    for dag_id in (
        "dr_backup_logical_dump",
        "dr_backup_base",
        "dr_backup_config_snapshot",
        "dr_backup_storage_full",
        "dr_backup_storage_incremental",
        "dr_backup_storage_sync",
    ):
        _, states = run(dag_id)
        assert set(states.values()) == {"success"}, (dag_id, states)
    (new_dump,) = [e for e in catalog.dumps() if e.id not in before_dumps]
    assert new_dump.status is Status.VERIFIED and new_dump.database == "tracktion"
    (new_base,) = [e for e in catalog.base_backups() if e.id not in before_bases]
    assert new_base.status is Status.VERIFIED and new_base.start_lsn
    config = catalog.snapshots(BackupKind.CONFIG_SNAPSHOT)[0]
    assert config.status is Status.VERIFIED and config.id.startswith("config_full_")
    manifest = json.loads(config.path.with_name(config.path.name + ".manifest.json").read_text())
    assert {"sha256", "size_bytes", "finished_at", "files"} <= set(manifest)
    storage: dict = {}  # the newest per area: what the DAG just took
    for entry in catalog.snapshots(BackupKind.STORAGE_SNAPSHOT):
        storage.setdefault(entry.id.split("/")[0], entry)
    assert set(storage) == {"audio_files", "user_uploads", "logs"}
    assert all(e.status is Status.VERIFIED for e in storage.values())
    mirror = sandbox.layout.storage_backups / "sync" / "audio_files"
    source_files = sorted(p.name for p in sandbox.layout.audio_files.rglob("*") if p.is_file())
    assert sorted(p.name for p in mirror.rglob("*") if p.is_file()) == source_files


def test_rpo_watch_passes_with_fresh_backups_and_names_breaches_later(sandbox, catalog):
    run("dr_backup_config_snapshot")
    run("dr_backup_storage_sync")
    dag_run, states = run("dr_rpo_watch")
    assert states == {"check_rpo": "success"}
    statuses = {s["category"]: s for s in task_result(dag_run, "check_rpo")}
    assert statuses["transactional"]["source"] == "WAL archive"
    assert statuses["transactional"]["age_seconds"] < 15 * 60
    # Two days from now every category is past its RPO: each is named.
    plan = load_plan()
    later = watch.rpo_statuses(
        plan, plan.environment("drill"), catalog, now=datetime.now(UTC) + timedelta(days=2)
    )
    breached = {s.category for s in later if not s.ok}
    assert breached == {"transactional", "audio_files", "configuration", "logs", "user_uploads"}
    assert "BREACHED" in next(s for s in later if s.category == "configuration").sentence()


def test_verify_restores_the_newest_dump_into_a_scratch_database(sandbox):
    dag_run, states = run("dr_backup_verify")
    assert states["verdict"] == "success", states
    summary = task_result(dag_run, "record")
    restores = [c for c in summary["checks"] if "test restore" in c["check"]]
    assert restores and restores[0]["status"] == "verified"
    assert "rows match the manifest" in restores[0]["reason"]
    rows = ledger.backup_checks(
        conninfo("dr_ledger"), dag_id="dr_backup_verify", run_id=dag_run.run_id
    )
    assert len(rows) == summary["recorded"] and all(r["status"] == "verified" for r in rows)
    # The scratch database was dropped.
    import psycopg

    with psycopg.connect(conninfo("tracktion_pg_primary", "postgres")) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_catalog.pg_database WHERE datname LIKE 'dr_verify_%'"
        ).fetchone()[0]
    assert left == 0


def test_truncated_dump_and_corrupted_base_backup_are_failed_and_never_picked(sandbox, catalog):
    secrets = sandbox.secrets
    layout = sandbox.layout
    superuser = Endpoint(L.HOST, L.PRIMARY_PORT, L.SUPERUSER, secrets.postgres_password)
    replication = Endpoint(L.HOST, L.PRIMARY_PORT, L.REPLICATION_USER, secrets.replication_password)
    # New backups of our own, newer than every other: the ones a careless picker would take.
    bad_dump = dumps.take_logical_dump(superuser, "tracktion", layout.logical_dumps)
    bad_base = basebackups.take_base_backup(  # plain: the format older backups have
        replication, layout.base_backups, label_prefix="test-corrupt", compression="none"
    )
    try:
        with bad_dump.open("r+b") as handle:
            handle.truncate(bad_dump.stat().st_size // 2)
        victim = bad_base / "global" / "pg_control"
        data = bytearray(victim.read_bytes())
        data[100] ^= 0xFF
        victim.write_bytes(bytes(data))

        (listed,) = [e for e in catalog.dumps() if e.path == bad_dump]
        assert listed.status is Status.FAILED and "truncated" in listed.reason
        picked = catalog.newest_dump("tracktion")
        assert picked.path != bad_dump and picked.status is Status.VERIFIED

        (base_entry,) = [e for e in catalog.base_backups() if e.path == bad_base]
        checked = catalog.verify(base_entry)
        assert checked.status is Status.FAILED and "pg_control" in checked.reason
        (relisted,) = [e for e in catalog.base_backups() if e.path == bad_base]
        assert relisted.status is Status.FAILED and "pg_control" in relisted.reason
        try:
            chosen, _ = catalog.base_backup_for(None)
            assert chosen.path != bad_base
        except NoUsableBackup as exc:  # acceptable only if it names the corrupt one
            assert bad_base.name in str(exc)

        before = len(sink_lines(layout))
        dag_run, states = run("dr_backup_verify")
        assert states["verdict"] == "failed" and states["record"] == "success"
        failed = {c["backup"]: c["reason"] for c in task_result(dag_run, "record")["failed"]}
        assert "truncated" in failed[bad_dump.name]
        assert "pg_control" in failed[bad_base.name]
        alerts = [
            line for line in sink_lines(layout)[before:] if "Backup verification failed" in line
        ]
        assert alerts and bad_dump.name in alerts[0]
    finally:
        for path in (bad_dump, *bad_dump.parent.glob(bad_dump.name + ".*")):
            path.unlink(missing_ok=True)
        shutil.rmtree(bad_base, ignore_errors=True)
        for sidecar in bad_base.parent.glob(bad_base.name + ".*"):
            sidecar.unlink()


def test_missing_wal_segment_fails_the_watch_naming_it(sandbox, catalog):
    switch_and_wait_archived(sandbox.secrets)
    _, states = run("dr_backup_wal_watch")
    assert states == {"check_wal_archive": "success"}
    oldest = min(
        (e for e in catalog.base_backups() if e.status is not Status.FAILED),
        key=lambda e: e.finished_at,
    )
    first = wal.Segment.from_lsn(oldest.start_lsn, oldest.timeline or 1).number
    segments = wal.list_segments(sandbox.layout.wal_archive)
    newest = max(segments)
    assert newest - first >= 2, "need a segment strictly inside the required range"
    number = first + 1
    victim = segments[number]
    name = wal.segment_name_of(victim)  # the archive holds <segment>.zst
    parked = sandbox.layout.backups / f".parked-{victim.name}"
    before = len(sink_lines(sandbox.layout))
    victim.rename(parked)
    try:
        _, states = run("dr_backup_wal_watch")
        assert states == {"check_wal_archive": "failed"}
        alerts = [x for x in sink_lines(sandbox.layout)[before:] if "WAL archive watch failed" in x]
        assert alerts and name in alerts[0]
        result = watch.watch_wal(catalog, timedelta(minutes=15))
        assert result.missing == [name]
        assert f"missing segment(s) {name}" in result.problems[0]
    finally:
        parked.rename(victim)
    assert watch.watch_wal(catalog, timedelta(minutes=15)).ok


def test_retention_dry_run_keeps_every_base_backup_and_the_wal_they_need(sandbox, catalog):
    dag_run, states = run("dr_backup_retention", dry_run=True)
    assert states == {"apply_retention": "success"}
    report = task_result(dag_run, "apply_retention")
    assert report["dry_run"] is True and report["moved"] == []
    kept_bases = {d["id"] for d in report["kept"] if d["group"] == "base_backup"}
    assert kept_bases == {e.id for e in catalog.base_backups()}  # all from today
    expired_wal = [d for d in report["expired"] if d["group"] == "wal_archive"]
    oldest = min(catalog.base_backups(), key=lambda e: e.finished_at)
    cutoff = wal.Segment.from_lsn(oldest.start_lsn).number
    assert all(wal.Segment.parse(d["id"].split(".")[0]).number < cutoff for d in expired_wal)
