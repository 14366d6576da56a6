"""Restore from offsite: the backups read back from S3 only (moto's standalone server, a
real HTTP S3 endpoint), through the amazon provider's S3Hook.

When the offsite copy job has copied the sandbox's newest verified dump, base backup and
WAL to S3 and the local backup folder is moved away, dr_database_restore and
dr_database_pitr run from a plan whose backup locations are the s3:// copy: rows
destroyed come back exactly. Every object is verified against the sha256 the offsite copy
recorded as it downloads; one that does not match is named and the backup marked failed,
nothing live touched. Bad locations and connections are refused first, naming the field.
The production plan's drill environment restores from its s3:// locations too.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import yaml
from pitr_support import primary, switch_wal
from psycopg import sql
from restore_support import (
    DATABASE,
    connect,
    databases,
    fingerprint,
    fresh_dump,
    put_sandbox_back,
    write_after_dump_and_break,
)

from tracktion_dr.airflow.backup_jobs import offsite_copy, s3_hook
from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states
from tracktion_dr.airflow.support import endpoint
from tracktion_dr.backups import offsite, s3_objects
from tracktion_dr.backups.catalog import (
    BackupKind,
    Catalog,
    Status,
    local_path,
    restore_command_for,
)
from tracktion_dr.core.errors import InvalidInput, NoUsableBackup
from tracktion_dr.core.incident import new_incident_id
from tracktion_dr.core.plan import CONFIG_DIR, load_plan
from tracktion_dr.postgres.basebackups import take_base_backup
from tracktion_dr.postgres.commands import as_os_user, chown_tree
from tracktion_dr.postgres.restore import restore_name

pytestmark = pytest.mark.sandbox

SANDBOX_OFFSITE = "s3://tracktion-dr-sandbox/offsite"
PRODUCTION_DRILL_BUCKET = "tracktion-dr-backups-us-west-2"  # include/config/tracktion.yaml
PRODUCTION_OFFSITE = f"s3://{PRODUCTION_DRILL_BUCKET}/production"


def s3_locations(root: str) -> dict[str, str]:
    """The offsite copy's layout (backups/offsite.py) as backup locations."""
    return {
        "logical": f"{root}/database/logical",
        "base": f"{root}/database/base",
        "wal_archive": f"{root}/wal_archive",
        "configuration": f"{root}/configuration",
        "storage": f"{root}/storage",
    }


def sandbox_plan():
    return load_plan(CONFIG_DIR / "sandbox.yaml")


def sandbox_catalog() -> Catalog:
    return Catalog(sandbox_plan().environment("drill").backups)


def verified_newest_backups(sandbox) -> None:
    """The offsite copy takes only verified backups: verify the newest dump and base backup."""
    catalog = sandbox_catalog()
    catalog.verify(catalog.dumps(DATABASE)[0])
    base = catalog.base_backups()[0]
    if base.status is not Status.VERIFIED:
        catalog.verify(base)


def write_s3_plan(tmp_path: Path, **backups: str) -> Path:
    """The sandbox plan with every backup location on the offsite copy (s3://)."""
    data = yaml.safe_load((CONFIG_DIR / "sandbox.yaml").read_text())
    for environment in data["environments"].values():
        environment["backups"] = {
            **environment["backups"],
            **s3_locations(SANDBOX_OFFSITE),
            **backups,
        }
    path = tmp_path / "sandbox-offsite.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@contextmanager
def local_backups_moved_away() -> Iterator[Path]:
    """The local backup folder renamed away (the archiver fails meanwhile and catches up
    after), put back whatever happens."""
    root = local_path(sandbox_plan().environment("drill").backups.logical).parents[1]
    away = root.with_name(root.name + ".moved-away")
    root.rename(away)
    try:
        yield away
    finally:
        if root.exists():  # something recreated it (an archiver): keep both, look later
            root.rename(root.with_name(f"{root.name}.recreated-{uuid.uuid4().hex[:6]}"))
        away.rename(root)


def test_database_restore_from_s3_only(sandbox, tmp_path, monkeypatch, supervisor_controller):
    services = sandbox_plan().environment("drill").dependents_of(DATABASE)
    incident = fresh_dump(sandbox)
    try:
        verified_newest_backups(sandbox)
        copied = offsite_copy(sandbox_plan(), "drill", dry_run=False, notify=False)
        assert any(u["key"].endswith(incident.dump.name) for u in copied["uploaded"])
        write_after_dump_and_break(incident)
        monkeypatch.setenv("DR_PLAN", str(write_s3_plan(tmp_path)))
        with local_backups_moved_away():
            assert not incident.dump.exists()
            dag_run = run_dag("dr_database_restore", incident.conf())
            states = task_states(dag_run)
            assert states["verdict"] == "success", states
            used = task_result(dag_run, "guard")["backup"]
            assert "offsite-cache" in used["path"] and used["status"] == "verified"
            # Exactly the rows the dump holds: the destroyed ones are back.
            assert fingerprint(up_to=incident.ids_at_dump) == incident.fingerprint_at_dump
            mirror_copy = Path(used["path"])
            inode = mirror_copy.stat().st_ino
            # Downloaded once: a second reader (a re-run after a kill) does not fetch it again.
            catalog = Catalog(load_plan().environment("drill").backups, cache_dir=cache_root(used))
            again = catalog.newest_dump(DATABASE, backup_id=incident.dump.name)
            assert again.path == mirror_copy and mirror_copy.stat().st_ino == inode
    finally:
        put_sandbox_back(incident, supervisor_controller, services)


def cache_root(entry: dict) -> Path:
    """The mirror root of an offsite entry's path (``<cache>/<bucket>/...``)."""
    path = Path(entry["path"])
    return next(p for p in path.parents if p.name == "offsite-cache")


def test_database_pitr_from_s3_only(sandbox, tmp_path, monkeypatch):
    probe = sql.Identifier(f"offsite_probe_{uuid.uuid4().hex[:10]}")
    with primary() as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(probe))
        conn.execute(sql.SQL("INSERT INTO {} (id) VALUES (1)").format(probe))
    environment = sandbox_plan().environment("drill")
    take_base_backup(
        endpoint("tracktion_pg_replication"),
        local_path(environment.backups.base),
        label_prefix="offsite-pitr-test",
    )
    verified_newest_backups(sandbox)
    with primary() as conn:
        conn.execute(sql.SQL("INSERT INTO {} (id) VALUES (2)").format(probe))
        time.sleep(1.5)
        target = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        time.sleep(1.5)
        conn.execute(sql.SQL("INSERT INTO {} (id) VALUES (3)").format(probe))  # after: lost
        incident = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        conn.execute(sql.SQL("DELETE FROM {}").format(probe))  # the incident: rows destroyed
    switch_wal()
    offsite_copy(sandbox_plan(), "drill", dry_run=False, notify=False)
    monkeypatch.setenv("DR_PLAN", str(write_s3_plan(tmp_path)))
    with local_backups_moved_away():
        dag_run = run_dag(
            "dr_database_pitr",
            {
                "environment": "drill",
                "cluster": "main",
                "target_type": "time",
                "target": target.isoformat(),
                "incident_started_at": incident.isoformat(),
            },
        )
        states = task_states(dag_run)
        assert states["verdict"] == "success", states
        guard = task_result(dag_run, "guard")
        assert guard["wal_location"].startswith("s3://")
        assert "offsite-cache" in guard["wal_archive"]
        assert "offsite-cache" in guard["base_backup"]["path"]
        with primary() as conn:
            rows = conn.execute(sql.SQL("SELECT id FROM {} ORDER BY id").format(probe)).fetchall()
            settings = Path(conn.execute("SHOW data_directory").fetchone()[0])
        assert [r[0] for r in rows] == [1, 2], "exactly the rows committed before the target"
        # The credentials reached restore_command through a file (see the wal_fetch test),
        # never the settings; the file is gone once the server promoted.
        auto_conf = (settings / "postgresql.auto.conf").read_text()
        assert "sandbox-secret-key" not in auto_conf
        assert not Path(guard["wal_archive"] + s3_objects.FETCH_CONFIG_SUFFIX).exists()
    with primary() as conn:
        conn.execute(sql.SQL("DROP TABLE {}").format(probe))


def test_wal_fetch_fetches_from_s3_and_says_missing(sandbox, tmp_path):
    """restore_command's program on its own: a segment only in S3 comes down verified
    (cached in the mirror), a segment nowhere exits 1 (PostgreSQL's "not available")."""
    import subprocess
    import sys

    from tracktion_dr.postgres import wal_fetch

    plan = sandbox_plan()
    backups = plan.environment("drill").backups
    client = s3_hook(backups.offsite_conn_id, plan).get_conn()
    location = offsite.S3Location.parse(f"{SANDBOX_OFFSITE}/wal_archive")

    def compressed_segments() -> list:
        return [
            o
            for o in offsite.list_location(client, SANDBOX_OFFSITE)
            if o.kind == "wal_segment" and o.key.endswith(".zst")
        ]

    segments = compressed_segments()
    if not segments:
        verified_newest_backups(sandbox)
        offsite_copy(plan, "drill", dry_run=False, notify=False)
        segments = compressed_segments()
    assert segments, "the offsite copy holds compressed WAL"
    name = segments[0].key.rsplit("/", 1)[-1].removesuffix(".zst")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    config = s3_objects.write_fetch_config(
        location.url(location.prefix),
        backups.offsite_conn_id,
        mirror,
        "root",
        field="backups.wal_archive",
    )
    assert "sandbox-secret-key" in config.read_text()  # the file, not the command line
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    command = [sys.executable, "-I", wal_fetch.__file__, str(config)]
    fetched = subprocess.run([*command, name, str(tmp_path / "RECOVERYXLOG")], check=False)
    assert fetched.returncode == 0
    assert (tmp_path / "RECOVERYXLOG").stat().st_size == 16 * 1024 * 1024
    assert (mirror / f"{name}.zst").is_file(), "cached in the mirror, verified"
    missing = subprocess.run([*command, "FFFFFFFF0000000000000001", str(tmp_path / "X")])
    assert missing.returncode == 1 and not (tmp_path / "X").exists()
    assert json.loads(config.read_text())["bucket"] == location.bucket

    # As PostgreSQL runs it: the restore_command line, by the server's shell, as its OS
    # user (who may not run the worker's own interpreter), into an empty mirror.
    work = Path(os.environ["DR_SANDBOX_HOME"]) / f"wal-fetch-test-{uuid.uuid4().hex[:8]}"
    (work / "wal_archive").mkdir(parents=True)
    chown_tree(work, "postgres")
    line = restore_command_for(
        location.url(location.prefix),
        work / "wal_archive",
        None,
        conn_id=backups.offsite_conn_id,
        os_user="postgres",
    )
    assert "sandbox-secret-key" not in line

    def as_server(segment: str) -> int:
        expanded = line.replace("%f", segment).replace("%p", str(work / "RECOVERYXLOG"))
        return subprocess.run(
            as_os_user(["sh", "-c", expanded.replace("%%", "%")], "postgres"), cwd=work
        ).returncode

    assert as_server(name) == 0
    assert (work / "RECOVERYXLOG").stat().st_size == 16 * 1024 * 1024
    assert (work / "wal_archive" / f"{name}.zst").owner() == "postgres"
    assert as_server("FFFFFFFF0000000000000001") == 1
    shutil.rmtree(work)


def test_corrupt_offsite_object_is_named_and_marked_failed(sandbox, tmp_path):
    """An object whose bytes do not match the sha256 the offsite copy recorded: refused,
    named, recorded failed in the mirror; the live database is not touched."""
    plan = sandbox_plan()
    backups = plan.environment("drill").backups
    client = s3_hook(backups.offsite_conn_id, plan).get_conn()
    root = f"{SANDBOX_OFFSITE}-corrupt-{uuid.uuid4().hex[:8]}"
    location = offsite.S3Location.parse(root)
    dump_name = f"{DATABASE}_20260101T000000Z.dump"
    good = tmp_path / dump_name
    good.write_bytes(b"PGDMP original bytes")
    manifest = tmp_path / (dump_name + ".manifest.json")
    manifest.write_text(
        json.dumps({"size_bytes": len(good.read_bytes()), "finished_at": "2026-01-01T00:00:00Z"})
    )
    key = location.key("database/logical", dump_name)
    offsite.upload_verified(client, manifest, location, key + ".manifest.json")
    sha = offsite.upload_verified(client, good, location, key).sha256
    client.put_object(  # same size, other bytes, the old checksum kept
        Bucket=location.bucket,
        Key=key,
        Body=b"PGDMP evil!!!bytes!!",
        Metadata={"sha256": sha},
        ChecksumAlgorithm="SHA256",
    )
    locations = backups.model_copy(update=s3_locations(root))
    before = fingerprint()
    catalog = Catalog(locations, cache_dir=tmp_path / "cache")
    with pytest.raises(NoUsableBackup) as refused:
        catalog.newest_dump(DATABASE)
    assert f"s3://{location.bucket}/{key}" in str(refused.value)
    assert "sha256" in str(refused.value)
    (entry,) = Catalog(locations, cache_dir=tmp_path / "cache").dumps(DATABASE)
    assert entry.status is Status.FAILED, "the verdict is kept for every later reader"
    assert not entry.path.exists() and entry.path.with_name(dump_name + ".sha256-mismatch").exists()
    assert fingerprint() == before


def test_a_partial_download_left_by_a_killed_worker_is_fetched_again(sandbox, tmp_path):
    plan = sandbox_plan()
    backups = plan.environment("drill").backups
    catalog = Catalog(
        backups.model_copy(update=s3_locations(SANDBOX_OFFSITE)), cache_dir=tmp_path / "cache"
    )
    entries = [e for e in catalog.snapshots(BackupKind.CONFIG_SNAPSHOT)] or catalog.dumps()
    entry = entries[0]
    entry.path.parent.mkdir(parents=True, exist_ok=True)
    partial = entry.path.with_name(f".{entry.path.name}.partial")
    partial.write_bytes(b"half a download")
    checked = catalog.verify(entry)
    assert checked.status is Status.VERIFIED, checked.reason
    assert not partial.exists() and entry.path.is_file()


@pytest.mark.parametrize(
    ("update", "field"),
    [
        ({"logical": "s3:///database/logical"}, "backups.logical"),
        (
            {"logical": "s3://tracktion-dr-sandbox/x", "offsite_conn_id": "no_such_conn"},
            "backups.offsite_conn_id",
        ),
        ({"base": "s3://no-such-bucket-here/base"}, "backups.base"),
    ],
)
def test_bad_offsite_locations_are_refused_naming_the_field(sandbox, tmp_path, update, field):
    backups = sandbox_plan().environment("drill").backups.model_copy(update=update)
    catalog = Catalog(backups, cache_dir=tmp_path / "cache")
    with pytest.raises(InvalidInput) as refused:
        catalog.check_locations()
        catalog.base_backups()
        catalog.dumps()
    assert refused.value.field == field


@pytest.mark.parametrize(
    ("dag_id", "conf"),
    [
        ("dr_database_restore", {"database": DATABASE}),
        ("dr_database_pitr", {"cluster": "main", "target_type": "latest"}),
    ],
)
def test_an_unknown_offsite_connection_fails_the_guard_with_nothing_touched(
    sandbox, tmp_path, monkeypatch, capfd, caplog, dag_id, conf
):
    monkeypatch.setenv("DR_PLAN", str(write_s3_plan(tmp_path, offsite_conn_id="no_such_conn")))
    with primary("postgres") as conn:
        started = conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
    names = databases()
    dag_run = run_dag(dag_id, {"environment": "drill", **conf})
    states = task_states(dag_run)
    assert states["guard"] == "failed", states
    captured = capfd.readouterr()
    assert "backups.offsite_conn_id: the Airflow connection 'no_such_conn' is not defined" in (
        captured.out + captured.err + caplog.text
    )
    with primary("postgres") as conn:
        assert conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0] == started
    assert databases() == names


def test_production_plan_drill_restores_from_s3(sandbox, tmp_path):
    """include/config/tracktion.yaml's drill environment, as written: its backups are the
    cross-region copy (s3://tracktion-dr-backups-us-west-2/production), read on its
    dr_offsite_s3_us_west_2 connection - here the sandbox's, whose endpoint is moto. Its
    cluster's host paths do not exist here: the restore lands in the sandbox primary, the
    mirror beside a scratch data directory."""
    west = s3_hook("dr_offsite_s3_us_west_2", sandbox_plan()).get_conn()
    existing = {b["Name"] for b in west.list_buckets()["Buckets"]}
    if PRODUCTION_DRILL_BUCKET not in existing:
        west.create_bucket(
            Bucket=PRODUCTION_DRILL_BUCKET,
            CreateBucketConfiguration={"LocationConstraint": "us-west-2"},
        )
    incident_dump = fresh_dump(sandbox)
    catalog = sandbox_catalog()
    catalog.verify(catalog.dumps(DATABASE)[0])
    offsite.copy_newest_backups(catalog, west, PRODUCTION_OFFSITE)

    from tracktion_dr.scenarios.database import guard_restore, restore_step, validate_restored

    production = load_plan(CONFIG_DIR / "tracktion.yaml")
    drill = production.environments["drill"]
    assert drill.backups.logical.startswith(PRODUCTION_OFFSITE)
    cluster = drill.clusters["main"].model_copy(
        update={"data_directory": str(tmp_path / "drill" / "data")}
    )
    plan = production.model_copy(
        update={
            "environments": {
                **production.environments,
                "drill": drill.model_copy(update={"clusters": {"main": cluster}}),
            }
        }
    )
    now = datetime.now(UTC)
    incident = {"incident_id": new_incident_id(now), "environment": "drill", "dry_run": False}
    admin = endpoint("tracktion_pg_primary")
    run = {
        **incident,
        **guard_restore(
            plan,
            incident,
            {"database": DATABASE, "backup": incident_dump.dump.name},
            lambda _: admin,
        ),
    }
    scratch = restore_name(DATABASE, run["tag"])
    try:
        assert run["backup"]["path"].startswith(str(tmp_path / "drill" / "offsite-cache"))
        restore_step(admin, run)
        validate_restored(admin, run)
        assert (
            fingerprint(scratch, up_to=incident_dump.ids_at_dump)
            == incident_dump.fingerprint_at_dump
        )
    finally:
        if scratch in databases():
            with connect("postgres", autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(scratch))
                )
        for path in (
            incident_dump.dump,
            *incident_dump.dump.parent.glob(incident_dump.dump.name + ".*"),
        ):
            path.unlink(missing_ok=True)
    with psycopg.connect(admin.conninfo(DATABASE), connect_timeout=10):
        pass  # the live database was never touched


def test_storage_and_config_recovery_from_s3_only(sandbox, tmp_path, monkeypatch):
    """dr_storage_recovery and dr_config_recovery with every backup location on the
    offsite copy and the local backups moved away: a deleted audio file and a broken
    configuration push come back byte for byte from the snapshots downloaded from S3."""
    offsite_copy(sandbox_plan(), "drill", dry_run=False, notify=False)
    monkeypatch.setenv("DR_PLAN", str(write_s3_plan(tmp_path)))
    cache = tmp_path / "offsite-cache"
    monkeypatch.setenv("DR_OFFSITE_CACHE", str(cache))
    deleted = sandbox.layout.audio_files / "wav/tone_a4_mono.wav"
    original = deleted.read_bytes()
    app_json = sandbox.layout.app_config / "app.json"
    good = app_json.read_text()
    shutil.move(deleted, tmp_path / "deleted.wav")
    try:
        with local_backups_moved_away():
            storage_run = run_dag("dr_storage_recovery", {"environment": "drill"})
            states = task_states(storage_run)
            assert states["verdict"] == "success", states
            assert deleted.read_bytes() == original
            picked = task_result(storage_run, "guard")["snapshot"]["path"]
            assert picked.startswith(str(cache)), picked

            app_json.write_text('{"app": "tracktion", "storage": ')  # a truncated push
            config_run = run_dag("dr_config_recovery", {"environment": "drill"})
            states = task_states(config_run)
            assert states["verdict"] == "success", states
            assert app_json.read_text() == good
            assert task_result(config_run, "guard")["snapshot"]["path"].startswith(str(cache))
    finally:
        if not deleted.exists():
            deleted.write_bytes(original)
        if app_json.read_text() != good:
            app_json.write_text(good)


def test_a_download_killed_midway_is_finished_by_the_next_attempt_and_never_repeated(
    sandbox, tmp_path
):
    """SIGKILL the process downloading an offsite object half-way: nothing under the
    object's name (only a hidden .partial); the next attempt downloads and verifies it; the
    one after that finds it verified and fetches nothing."""
    import signal
    import subprocess
    import sys

    plan = sandbox_plan()
    backups = plan.environment("drill").backups
    client = s3_hook(backups.offsite_conn_id, plan).get_conn()
    root = f"{SANDBOX_OFFSITE}-kill-{uuid.uuid4().hex[:8]}"
    location = offsite.S3Location.parse(root)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(48 * 1024 * 1024))
    offsite.upload_verified(client, big, location, location.key("big.bin"))
    cache = tmp_path / "cache"
    downloader = (
        "import sys\n"
        "from tracktion_dr.backups import s3_objects\n"
        "from tracktion_dr.backups.s3_objects import S3Mirror\n"
        "m = S3Mirror(s3_objects.client_for(sys.argv[1]), sys.argv[2], __import__('pathlib').Path(sys.argv[3]))\n"
        "m.fetch('big.bin')\n"
    )
    mirror = s3_objects.S3Mirror(client, root, cache)
    partial = mirror.path(".big.bin.partial")
    process = subprocess.Popen(
        [sys.executable, "-c", downloader, backups.offsite_conn_id, root, str(cache)]
    )
    try:
        deadline = time.monotonic() + 120
        while not (partial.exists() and partial.stat().st_size > 0):
            assert process.poll() is None, "the download finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    assert not mirror.path("big.bin").exists(), "nothing under its own name before verified"
    fetched = mirror.fetch("big.bin")
    assert fetched.read_bytes() == big.read_bytes() and not partial.exists()
    inode = fetched.stat().st_ino
    assert s3_objects.S3Mirror(client, root, cache).fetch("big.bin").stat().st_ino == inode
