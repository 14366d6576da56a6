"""The plan's backup sections: schedule defaults match the seed, bad values are named."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tracktion_dr.core.plan import BackupSchedule, PlanError, load_plan, parse_plan

ROOT = Path(__file__).resolve().parents[2]
PLANS = [ROOT / "include" / "config" / f"{name}.yaml" for name in ("sandbox", "tracktion")]


@pytest.fixture()
def data(monkeypatch) -> dict:
    monkeypatch.setenv("DR_SANDBOX_HOME", "/srv/sandbox")
    return yaml.safe_load(PLANS[0].read_text())


def problems_of(data: dict) -> str:
    with pytest.raises(PlanError) as caught:
        parse_plan(data, "plan.yaml")
    return str(caught.value)


def test_defaults_are_the_seed_frequencies():
    schedule = BackupSchedule()
    assert schedule.wal_watch == "*/5 * * * *"  # transactional RPO 15m, checked 3x
    assert schedule.logical_dump.endswith("* * *") and schedule.config_snapshot.endswith("* * *")
    assert schedule.storage_full.split()[-1] == "0"  # weekly full on Sunday
    assert schedule.storage_incremental.split()[-1] == "1-6"  # daily incrementals between
    assert (schedule.keep.keep_daily, schedule.keep.keep_weekly) == (7, 4)


@pytest.mark.parametrize("path", PLANS, ids=lambda p: p.name)
def test_shipped_plans_state_the_defaults_and_the_new_fields(path, monkeypatch):
    monkeypatch.setenv("DR_SANDBOX_HOME", "/srv/sandbox")
    plan = load_plan(path)
    assert plan.backup_schedule == BackupSchedule()
    production = plan.environment("production")
    assert production.clusters["main"].replication_conn_id
    assert production.backups.offsite and production.backups.offsite_cross_region
    assert production.backups.expired and production.backups.expired.startswith("file:///")


def test_plan_without_the_new_sections_still_loads(data):
    data.pop("backup_schedule")
    env = data["x-sandbox"]
    env["clusters"]["main"].pop("replication_conn_id")
    for key in (
        "expired",
        "offsite",
        "offsite_conn_id",
        "offsite_cross_region",
        "offsite_cross_region_conn_id",
    ):
        env["backups"].pop(key)
    plan = parse_plan(data)
    assert plan.backup_schedule == BackupSchedule()
    assert plan.environment("production").backups.expired is None


def test_bad_cron_is_named(data):
    data["backup_schedule"]["wal_watch"] = "every 5 minutes"
    assert "backup_schedule.wal_watch: not a 5-field cron expression" in problems_of(data)


def test_retention_must_keep_at_least_one_daily(data):
    data["backup_schedule"]["keep"]["keep_daily"] = 0
    assert "backup_schedule.keep.keep_daily" in problems_of(data)


def test_multipart_below_the_s3_minimum_is_refused(data):
    data["backup_schedule"]["multipart_chunk_mb"] = 1
    assert "backup_schedule.multipart_chunk_mb" in problems_of(data)


def test_unknown_schedule_key_is_named(data):
    data["backup_schedule"]["wal_wacth"] = "*/5 * * * *"
    assert "backup_schedule.wal_wacth: unknown key" in problems_of(data)


def test_expired_area_inside_a_backup_location_is_refused(data):
    data["x-sandbox"]["backups"]["expired"] = "file:///srv/sandbox/backups/configuration/old"
    message = problems_of(data)
    assert "backups" in message and "must not be inside or contain the configuration" in message


def test_expired_area_must_be_local(data):
    env = copy.deepcopy(data)
    env["x-sandbox"]["backups"]["expired"] = "s3://bucket/expired"
    assert "expired must be a file:// location" in problems_of(env)


def test_cross_region_needs_an_offsite_copy(data):
    data["x-sandbox"]["backups"].pop("offsite")
    assert "offsite_cross_region needs offsite" in problems_of(data)


def test_offsite_must_be_s3(data):
    data["x-sandbox"]["backups"]["offsite"] = "file:///srv/offsite"
    assert "offsite must be an s3:// location" in problems_of(data)


def test_bad_replication_conn_id_is_named(data):
    data["x-sandbox"]["clusters"]["main"]["replication_conn_id"] = "bad id!"
    assert "clusters.main.replication_conn_id: not an Airflow connection id" in problems_of(data)
