"""dr_site_failover's decisions that need no live system: the plan's site section is
checked at load with field paths, a site the plan does not describe is refused, what the
offsite copy lacks is computed from two WAL ends, the stack's endpoint must be the
server the plan connects to, a drill's plan of actions says what it leaves alone, and the
sandbox's site reads the S3 copy the offsite job writes."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tracktion_dr.core.errors import InvalidInput, StepFailed
from tracktion_dr.core.plan import PlanError, load_plan, parse_plan
from tracktion_dr.scenarios import SystemAccess, site_failover
from tracktion_dr.scenarios import database as db
from tracktion_dr.scenarios.site_failover import WalPoint, predicted_loss

ROOT = Path(__file__).resolve().parents[2]
SANDBOX_PLAN = ROOT / "include" / "config" / "sandbox.yaml"
PRODUCTION_PLAN = ROOT / "include" / "config" / "tracktion.yaml"


@pytest.fixture(autouse=True)
def sandbox_home(monkeypatch, tmp_path):
    monkeypatch.setenv("DR_SANDBOX_HOME", str(tmp_path))


def drill_site(data: dict) -> dict:
    environment = copy.deepcopy(data["environments"]["drill"])
    data["environments"]["drill"] = environment
    return environment["recovery_site"]


def problems_of(data: dict) -> str:
    with pytest.raises(PlanError) as caught:
        parse_plan(data)
    return str(caught.value)


def test_the_site_section_is_checked_at_load_with_field_paths():
    data = yaml.safe_load(SANDBOX_PLAN.read_text())
    site = drill_site(data)
    site["services"]["no-such-service"] = site["services"]["tracklist-service"]
    site["services"]["file-watcher"] = {**site["services"]["file-watcher"], "controller": "nope"}
    site["clusters"]["other"] = site["clusters"]["main"]
    text = problems_of(data)
    assert "environments.drill.recovery_site.services.no-such-service" in text
    assert "environments.drill.recovery_site.services.file-watcher.controller" in text
    assert "environments.drill.recovery_site.clusters.other" in text

    data = yaml.safe_load(SANDBOX_PLAN.read_text())
    site = drill_site(data)
    del site["backups"]
    assert "clusters need backups" in problems_of(data)


def test_a_site_the_plan_does_not_describe_is_refused_naming_what_is_missing():
    plan = load_plan(PRODUCTION_PLAN)
    with pytest.raises(InvalidInput) as caught:
        site_failover.recovery_site(plan, "production")
    assert "clusters" in str(caught.value) and "backups" in str(caught.value)
    sandbox = load_plan(SANDBOX_PLAN)
    site = site_failover.recovery_site(sandbox, "drill")
    environment = site_failover.site_environment(sandbox.environment("drill"), site)
    assert environment.services["analysis-service"].unit == "recovery-analysis-service"
    assert environment.start_levels(list(site.services))[0] == [
        "analysis-service",
        "tracklist-service",
        "notification-service",
    ]


def test_what_the_offsite_copy_lacks_is_measured_from_the_two_wal_ends():
    primary = WalPoint("primary", "0/5000100", "2026-11-27T07:17:28.460418+00:00")
    offsite = WalPoint("offsite", "0/4FFFF00", "2026-11-27T07:17:22.438934+00:00")
    loss = predicted_loss(primary, offsite)
    assert loss["measurable"] and loss["wal_bytes_not_offsite"] == 0x200
    assert loss["commit_seconds_not_offsite"] == pytest.approx(6.021484)
    unreadable = predicted_loss(None, offsite)
    assert not unreadable["measurable"] and "cannot be read" in unreadable["detail"]
    assert not predicted_loss(primary, None)["measurable"]


def access(conninfo: str) -> SystemAccess:
    return SystemAccess(
        conninfo=lambda conn_id, database: conninfo,
        controller=lambda spec: None,  # type: ignore[arg-type,return-value]
        url=lambda conn_id: "",
    )


def test_the_stack_must_name_the_database_the_plan_connects_to():
    plan = load_plan(SANDBOX_PLAN)
    run = {"clusters": {"main": {"databases": ["tracktion"], "conn_id": "tracktion_pg_recovery"}}}
    endpoints = {
        "tracktion": "postgresql://127.0.0.1:56432/tracktion",
        "load_balancer": "http://127.0.0.1:28080",
    }
    good = access("host=127.0.0.1 port=56432 user=postgres dbname=tracktion")
    assert site_failover.check_endpoints(plan, run, endpoints, good)["endpoints"] == endpoints
    elsewhere = access("host=10.0.0.9 port=5432 user=postgres dbname=tracktion")
    with pytest.raises(StepFailed) as caught:
        site_failover.check_endpoints(plan, run, endpoints, elsewhere)
    assert "127.0.0.1:56432" in str(caught.value) and "10.0.0.9:5432" in str(caught.value)


def test_a_drill_plan_of_actions_leaves_dns_alone_and_dismantles_the_site():
    run = {
        "mode": "drill",
        "primary_site": {"answering": {"main primary": "accepting"}, "down": {}},
        "stack_name": "s",
        "region": "us-west-2",
        "aws_conn_id": "aws",
        "template": "minimum",
        "template_file": "t.yaml",
        "parameters": {},
        "action": "reuse",
        "stack_status": "CREATE_COMPLETE",
        "changes": [],
        "endpoint_map": {},
        "create_timeout_seconds": 60,
        "clusters": {
            "main": {
                "base_backup": {"id": "base_1", "start_lsn": "0/2000028", "stop_lsn": "0/2000100"},
                "data_directory": "/site/pg",
                "resuming": None,
                "wal_archive": "/site/offsite-cache/bucket/offsite/wal_archive",
                "wal_location": "s3://bucket/offsite/wal_archive",
            }
        },
        "predicted_loss": {"main": {"detail": "12 bytes of WAL not offsite"}},
        "service_levels": [["analysis-service"], ["file-watcher"]],
        "services": ["analysis-service", "file-watcher"],
        "balancer_server": "recovery",
        "dns_records": [],
        "dns_zone": "z",
    }
    actions = site_failover.plan_of_actions(run)
    assert actions[0].startswith("DRILL: the primary site is not touched")
    assert any("12 bytes of WAL not offsite" in a for a in actions)
    assert "Route53" not in " ".join(actions)
    assert actions[-1].startswith("dismantle the drill's site")
    staging = next(a for a in actions if a.startswith("stage base backup base_1"))
    assert "the mirror of s3://bucket/offsite/wal_archive" in staging, staging
    assert "fetched from S3" in staging


def test_the_sandbox_site_restores_from_the_s3_copy_the_offsite_job_writes():
    """recovery_site.backups is the cross-region copy of backups.offsite_cross_region (the
    offsite job's layout), read with the cross-region connection."""
    environment = load_plan(SANDBOX_PLAN).environment("drill")
    site, own = environment.recovery_site.backups, environment.backups
    assert site.offsite_conn_id == own.offsite_cross_region_conn_id
    root = own.offsite_cross_region
    assert (site.base, site.wal_archive) == (f"{root}/database/base", f"{root}/wal_archive")


def test_a_site_copy_without_a_bucket_is_refused_naming_the_recovery_site_field(
    tmp_path, monkeypatch
):
    """Refused in the guard, before anything is read or touched, naming the plan field."""
    environment = load_plan(SANDBOX_PLAN).environment("drill")
    site = environment.recovery_site
    # The connection exists (as in the sandbox): what is wrong is the location alone.
    conn_id = site.backups.offsite_conn_id
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", '{"conn_type": "aws"}')
    broken = site.model_copy(
        update={"backups": site.backups.model_copy(update={"wal_archive": "s3:///wal_archive"})}
    )
    catalog = site_failover.site_catalog(environment, broken, broken.clusters["main"])
    assert catalog.cache_dir == Path(broken.clusters["main"].data_directory).parent / (
        "offsite-cache"
    )
    with pytest.raises(InvalidInput) as refused:
        site_failover.offsite_wal_archive(catalog)
    assert refused.value.field == "recovery_site.backups.wal_archive"


class StagedOnlyCatalog:
    """The offsite copy as the guard sees it on a re-run: a newer base backup exists, but
    nothing may be chosen again - the staged copy is kept as it is."""

    def base_backups(self):
        return []

    def usable_base_backups(self, holdings):
        raise AssertionError("the base backup was chosen again despite a staged copy")


def test_a_rerun_after_staging_keeps_the_base_backup_it_staged(tmp_path, monkeypatch):
    """Killed after staging, before the lay-down: the plan names the base backup of the
    staged copy (from its marker), not whatever is newest now (backup_used stays true)."""
    from tracktion_dr.postgres import pitr, restore
    from tracktion_dr.postgres.recovery_marker import RecoveryMarker, write_marker

    plan = load_plan(SANDBOX_PLAN)
    environment = plan.environment("drill")
    site = environment.recovery_site
    monkeypatch.setattr(site_failover, "site_catalog", lambda *a: StagedOnlyCatalog())
    monkeypatch.setattr(site_failover, "offsite_wal_archive", lambda c: tmp_path / "mirror")
    data = Path(site.clusters["main"].data_directory)
    staging = pitr.staging_path(data, restore.incident_tag("INC-7"))
    staging.mkdir(parents=True)
    marker = RecoveryMarker(
        incident_id="INC-7",
        cluster="main",
        tag=restore.incident_tag("INC-7"),
        target={"type": "latest", "value": None},
        base_backup="base_old",
        base_start_lsn="0/2000028",
    )
    write_marker(staging, marker, "root")
    planned = site_failover.site_pitr_plan(plan, environment, site, "main", "INC-7")
    assert planned["base_backup"]["id"] == "base_old"
    assert planned["resuming"]["base_backup"] == "base_old"
    # base_old is gone from the copy meanwhile: the complete staged copy is still used.
    assert planned["base_backup"]["path"] is None
    staged = db.stage_recovery(site.clusters["main"], planned)
    assert "already staged by an earlier attempt" in staged, staged


def test_site_settings_win_over_what_the_restored_auto_conf_sets(tmp_path):
    """postgresql.auto.conf is read after every include: its port and archive_* lines
    (a base backup of a node once rebuilt) are commented out, kept readable; the include
    file's values are escaped as the server reads them."""
    (tmp_path / "postgresql.conf").write_text("port = 5432\n")
    auto = tmp_path / "postgresql.auto.conf"
    auto.write_text(
        "# Do not edit this file manually!\n"
        "port = '5433'\n"
        "archive_command = 'cp %p /primary/archive/%f'\n"
        "work_mem = '64MB'\n"
    )
    settings = {"port": "56432", "archive_mode": "off", "cluster_name": "it's a\\site"}
    assert site_failover.write_site_settings(tmp_path, settings, "root")
    lines = auto.read_text().splitlines()
    assert "work_mem = '64MB'" in lines
    assert not any(line.startswith(("port", "archive_")) for line in lines)
    assert any(line.endswith("port = '5433'") for line in lines), "kept, commented out"
    include = (tmp_path / site_failover.SITE_SETTINGS_FILE).read_text()
    assert "cluster_name = 'it''s a\\\\site'" in include
    assert not site_failover.write_site_settings(tmp_path, settings, "root"), "converged"
