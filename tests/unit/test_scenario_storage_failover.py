"""dr_storage_failover's decisions (scenarios.storage_failover) on real files, a real sync
mirror and snapshot in a temporary directory, without a sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracktion_dr.backups.snapshots import storage_snapshot, sync_area
from tracktion_dr.core.errors import InvalidInput, NoUsableBackup, StepFailed
from tracktion_dr.core.plan import PlanError, load_plan, parse_plan
from tracktion_dr.scenarios import storage_failover as sf

ROOT = Path(__file__).resolve().parents[2]
INCIDENT = {
    "incident_id": "DR-20261126-031200",
    "started_at": "2026-11-26T03:12:00+00:00",
    "environment": "drill",
    "dry_run": False,
    "notify": False,
}


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """A plan whose audio_files area holds two text files (audio: off for these tests: a
    content check is not the point), with app.json naming its path, a snapshot and a sync."""
    monkeypatch.setenv("DR_SANDBOX_HOME", str(tmp_path))
    plan = load_plan(ROOT / "include" / "config" / "sandbox.yaml")
    environment = plan.environment("drill")
    spec = environment.storage["audio_files"]
    object.__setattr__(spec, "audio", False)
    area = Path(spec.path)
    (area / "wav").mkdir(parents=True)
    (area / "wav" / "old.txt").write_text("in the snapshot\n")
    storage_root = tmp_path / "backups" / "storage"
    storage_snapshot("audio_files", area, storage_root, "full")
    (area / "wav" / "late.txt").write_text("synced after the snapshot\n")
    sync_area("audio_files", area, storage_root)
    config = Path(environment.config_paths[0])
    config.mkdir(parents=True)
    (config / "app.json").write_text(json.dumps({"storage": {"audio_files": str(area)}}))
    return plan, environment, storage_root


def params(**more):
    return {"area": "audio_files", "direction": "failover", "confirm": "", **more}


def test_the_guard_refuses_an_area_without_a_backup_location_or_a_bad_direction(home):
    plan, _, _ = home
    with pytest.raises(InvalidInput, match="area: 'user_uploads' has no backup_location"):
        sf.check_inputs(plan, dict(INCIDENT), params(area="user_uploads"))
    with pytest.raises(InvalidInput, match="direction: 'sideways'"):
        sf.check_inputs(plan, dict(INCIDENT), params(direction="sideways"))
    with pytest.raises(NoUsableBackup, match="nothing was failed over"):
        sf.check_inputs(plan, dict(INCIDENT), params(direction="failback"))
    production = dict(INCIDENT, environment="production")
    with pytest.raises(InvalidInput, match="RESTORE storage audio_files"):
        sf.check_inputs(plan, production, params())


def test_the_plan_wants_backup_location_and_path_setting_together(tmp_path, monkeypatch):
    import yaml

    monkeypatch.setenv("DR_SANDBOX_HOME", str(tmp_path))
    source = ROOT / "include" / "config" / "sandbox.yaml"
    data = yaml.safe_load(source.read_text())
    data["environments"]["drill"]["storage"]["audio_files"].pop("path_setting")
    with pytest.raises(PlanError, match="backup_location and path_setting go together"):
        parse_plan(data, source)


def test_failover_fills_the_backup_location_from_the_freshest_good_copy_then_repoints(home):
    plan, environment, storage_root = home
    run = sf.check_inputs(plan, dict(INCIDENT), params())
    assert run["services"] == ["analysis-service", "file-watcher"]
    assert run["pointed_at"] == run["primary"] != run["target"] == run["backup"]
    # the mirror's copy of old.txt is damaged: the snapshot's is used instead
    (storage_root / "sync" / "audio_files" / "wav" / "old.txt").write_text("bit rot\n")
    done = sf.bring_up_to_date(plan, run)["files"]
    assert done["wav/late.txt"].startswith("copied from sync mirror")
    assert done["wav/old.txt"].startswith("copied from audio_files_full_")
    backup = Path(run["backup"])
    assert (backup / "wav" / "old.txt").read_text() == "in the snapshot\n"
    assert (backup / "wav" / "late.txt").read_text() == "synced after the snapshot\n"
    assert sf.bring_up_to_date(plan, run)["files"] == {}, "a re-run copies nothing"

    assert sf.repoint(run)["result"]
    app = Path(run["setting_file"])
    assert json.loads(app.read_text())["storage"]["audio_files"] == run["backup"]
    assert "result" not in sf.repoint(run), "already so: nothing changed"


def test_failback_copies_what_was_written_while_failed_over_and_keeps_the_rest(home):
    plan, environment, _ = home
    run = sf.check_inputs(plan, dict(INCIDENT), params())
    sf.bring_up_to_date(plan, run)
    backup = Path(run["backup"])
    (backup / "wav" / "new.txt").write_text("written while failed over\n")
    back = sf.check_inputs(plan, dict(INCIDENT), params(direction="failback"))
    assert back["target"] == back["primary"]
    done = sf.bring_up_to_date(plan, back)["files"]
    assert list(done) == ["wav/new.txt"]
    assert (Path(back["primary"]) / "wav" / "new.txt").read_text() == "written while failed over\n"


def test_failover_without_any_copy_is_refused_and_a_copy_that_fails_stops_the_step(
    home, monkeypatch
):
    plan, environment, storage_root = home
    run = sf.check_inputs(plan, dict(INCIDENT), params())
    monkeypatch.setattr(sf, "_place", lambda copy, target: "disk full")
    with pytest.raises(StepFailed, match="could not be brought up to date: .*disk full"):
        sf.bring_up_to_date(plan, run)
