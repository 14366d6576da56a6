"""dr_config_recovery's decisions (scenarios.config) on real files and real snapshots in a
temporary directory (the plan's paths follow DR_SANDBOX_HOME), without a sandbox: which
snapshot, what a dry run does, when the rollback runs and that it puts back exactly what
the safety snapshot recorded."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tracktion_dr.backups import snapshots as writer
from tracktion_dr.core.errors import InvalidInput, NoUsableBackup, ValidationFailed
from tracktion_dr.core.plan import load_plan
from tracktion_dr.files.config_restore import configuration_digest
from tracktion_dr.scenarios import SystemAccess, config

ROOT = Path(__file__).resolve().parents[2]
INCIDENT = {
    "incident_id": "DR-20261126-031200",
    "started_at": "2026-11-26T03:12:00+00:00",
    "environment": "drill",
    "dry_run": False,
    "notify": False,
}


def nothing_reached(*_args):
    raise AssertionError("this test reaches no system")


NO_ACCESS = SystemAccess(conninfo=nothing_reached, controller=nothing_reached, url=nothing_reached)


def snapshot_of(source: Path, backups: Path, age_seconds: int = 0, **files: str) -> Path:
    """A configuration snapshot of a copy of ``source`` with ``files`` written over it."""
    copy = source.parent.parent / f"copy-{len(list(backups.glob('*'))) if backups.exists() else 0}"
    folder = copy / source.name
    folder.mkdir(parents=True)
    for existing in source.iterdir():
        (folder / existing.name).write_bytes(existing.read_bytes())
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text)
    now = datetime.now(UTC) - timedelta(seconds=age_seconds)
    return writer.config_snapshot([str(folder)], backups, now=now)


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """A plan whose configuration folder and backups live in tmp_path, with one snapshot
    of the live configuration taken an hour ago."""
    monkeypatch.setenv("DR_SANDBOX_HOME", str(tmp_path))
    plan = load_plan(ROOT / "include" / "config" / "sandbox.yaml")
    environment = plan.environment("drill")
    live = Path(environment.config_paths[0])
    live.mkdir(parents=True)
    (live / "app.json").write_text('{"app": "tracktion", "storage": {"root": "/data"}}\n')
    (live / "services.yaml").write_text("services:\n  a: {port: 1}\n")
    backups = tmp_path / "backups" / "configuration"
    snapshot = snapshot_of(live, backups, age_seconds=3600)
    return plan, environment, live, backups, snapshot


def params(**overrides):
    return {"snapshot": "latest", "restart_services": False, "confirm": "", **overrides}


def test_the_rto_is_the_strictest_tier_of_any_service():
    plan = load_plan(ROOT / "include" / "config" / "sandbox.yaml")
    assert config.rto_seconds(plan) == min(t.rto.total_seconds() for t in plan.tiers.values())


def test_the_run_holds_the_snapshot_and_a_missing_one_is_refused(home):
    plan, _, _, _, snapshot = home
    run = config.check_inputs(plan, INCIDENT, params())
    assert run["snapshot"]["name"] == snapshot.name and run["restart"] is False
    assert run["incident_id"] == INCIDENT["incident_id"]
    with pytest.raises(NoUsableBackup, match="1999-01-01") as refused:
        config.check_inputs(plan, INCIDENT, params(snapshot="1999-01-01"))
    assert "backups.configuration" in refused.value.hint


def test_production_needs_the_typed_confirmation_except_for_a_dry_run(home):
    plan = home[0]
    production = {**INCIDENT, "environment": "production"}
    with pytest.raises(InvalidInput, match="RESTORE configuration") as refused:
        config.check_inputs(plan, production, params())
    assert refused.value.field == "confirm"
    typed = params(confirm="RESTORE configuration")
    assert config.check_inputs(plan, production, typed)["environment"] == "production"
    assert config.check_inputs(plan, {**production, "dry_run": True}, params())["dry_run"]


def test_an_environment_without_config_paths_is_refused(home):
    plan = home[0]
    drill = plan.environments["drill"].model_copy(update={"config_paths": []})
    bare = plan.model_copy(update={"environments": {**plan.environments, "drill": drill}})
    with pytest.raises(InvalidInput, match="config_paths"):
        config.check_inputs(bare, INCIDENT, params())


def test_the_plan_of_actions_names_the_snapshot_and_the_rollback(home):
    plan = home[0]
    run = config.check_inputs(plan, INCIDENT, params(restart_services=True))
    actions = config.plan_of_actions(run)
    assert run["snapshot"]["name"] in actions[1]
    assert actions[3].startswith("restart_services: every service")
    assert actions[-1].startswith("rollback (only if a step above fails)")
    off = config.plan_of_actions({**run, "restart": False})
    assert "off" in off[3]


def test_a_dry_run_validates_the_snapshot_and_touches_nothing_live(home):
    plan, environment, live, _, _ = home
    before = configuration_digest(environment)
    run = config.check_inputs(plan, {**INCIDENT, "dry_run": True}, params())
    done = config.restore(plan, run)
    assert done["status"] == "skipped" and "extracts and validates" in done["detail"]
    assert configuration_digest(environment) == before
    assert not list(live.parent.glob("config.before-*"))


def test_a_snapshot_that_does_not_parse_is_refused_before_anything_live_changes(home):
    plan, environment, live, backups, _ = home
    bad = snapshot_of(live, backups, services_yaml="services: [unclosed\n")
    before = configuration_digest(environment)
    run = config.check_inputs(plan, INCIDENT, params())
    assert run["snapshot"]["name"] == bad.name
    with pytest.raises(ValidationFailed, match="refused before anything live was touched"):
        config.restore(plan, run)
    assert configuration_digest(environment) == before


def test_rollback_runs_only_when_the_live_state_differs_from_the_safety_record():
    safety = {"path": "/backups/safety/config_safety_x.tar.gz"}
    swapped = {"result": {"swapped": {"a": "b"}}}
    differ = lambda path: ["app.json: sha256 differs"]  # noqa: E731
    same = lambda path: []  # noqa: E731
    no_record = lambda path: None  # noqa: E731
    assert config.rollback_needed(None, swapped, differ) == (False, config.UNTOUCHED)
    assert config.rollback_needed(safety, None, same) == (False, config.UNTOUCHED)
    assert config.rollback_needed(safety, swapped, same) == (
        False,
        "the live configuration is identical to the safety snapshot's record",
    )
    # the restore may have swapped and died before reporting it: the live state decides
    assert config.rollback_needed(safety, None, differ)[0] is True
    assert config.rollback_needed(safety, swapped, differ)[0] is True
    # an older safety snapshot without a record: only when the restore reported a swap
    assert config.rollback_needed(safety, None, no_record) == (False, config.UNTOUCHED)
    assert config.rollback_needed(safety, swapped, no_record)[0] is True


def test_a_swapped_in_snapshot_is_rolled_back_exactly_and_the_record_says_so(home):
    plan, environment, live, backups, _ = home
    before = configuration_digest(environment)
    snapshot_of(live, backups, app_json='{"app": "tracktion"}\n')  # parses, lacks storage
    run = config.check_inputs(plan, INCIDENT, params())
    safety = config.take_safety(plan, run)
    assert Path(safety["path"]).is_file() and safety["detail"] == Path(safety["path"]).name
    restored = config.restore(plan, run)
    assert json.loads((live / "app.json").read_text()) == {"app": "tracktion"}

    rolled = config.roll_back(plan, run, safety, restored, NO_ACCESS, health_wait_seconds=0)
    assert rolled["detail"].startswith(f"rolled back to {Path(safety['path']).name}")
    assert configuration_digest(environment) == before
    fields = config.record_fields(run, rolled, rto_target_seconds=1800)
    assert fields["details"] == {"rolled_back": True}
    assert fields["backup_used"] == run["snapshot"]["name"]
    # run again (a retry, a re-run): nothing differs any more, nothing is touched
    again = config.roll_back(plan, run, safety, restored, NO_ACCESS, health_wait_seconds=0)
    assert again["status"] == "skipped" and "identical" in again["detail"]
    assert config.record_fields(run, again, rto_target_seconds=1800)["details"] == {
        "rolled_back": False
    }


def test_waiting_for_the_services_reports_what_they_answer_last(home):
    environment = home[1]
    answers = iter([(False, "a: down"), (True, "4/4 services healthy")])
    assert config.wait_for_services(environment, 60, lambda env: next(answers)) == (
        "4/4 services healthy"
    )
    assert config.wait_for_services(environment, 0, lambda env: (False, "a: down")) == "a: down"
