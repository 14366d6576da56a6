"""dr_config_recovery's safety snapshot and rollback, on real files in a temporary folder.

The rollback must put back exactly what was there before the run: every configuration
path's bytes, mode and owner (empty folders and symlinks included, a broken file that was
live included), and the environment file byte for byte - or its absence, by moving aside
the one the restore created (never deleting it).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from tracktion_dr.backups import snapshots as writer
from tracktion_dr.core.errors import StepFailed, ValidationFailed
from tracktion_dr.core.plan import load_plan
from tracktion_dr.files import config_restore
from tracktion_dr.files.config_restore import (
    configuration_digest,
    differences_from_safety,
    restore,
    roll_back,
    take_safety_snapshot,
)

ROOT = Path(__file__).resolve().parents[2]
INCIDENT = "DR-20261125-000000"
SECRET = "s3cr3t-value-never-in-a-message"
OTHER_UID = OTHER_GID = 4321  # a user and group this machine need not have: ids are enough
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")


@pytest.fixture()
def app(tmp_path):
    """An application folder like the sandbox's: config/ (with a sub-folder, an empty
    folder, symlinks, modes the plan would not choose) and the environment file."""
    config = tmp_path / "app" / "config"
    (config / "conf.d").mkdir(parents=True)
    (config / "empty").mkdir()
    (config / "app.json").write_text('{"storage": {"root": "/data"}}\n')
    (config / "services.yaml").write_text("services:\n  a: {port: 1}\n")
    (config / "conf.d" / "extra.yaml").write_text("# kept as it is\nx: 1\n")
    (config / "conf.d" / "extra.yaml").chmod(0o600)  # the plan says 0644 for *.yaml
    (config / "conf.d").chmod(0o750)
    (config / "current.yaml").symlink_to("services.yaml")
    (config / "shared").symlink_to("/etc")  # a symlinked folder: the link, not its target
    env_file = tmp_path / "app" / "environment.env"
    backups = tmp_path / "backups"
    environment = (
        load_plan(ROOT / "include" / "config" / "sandbox.yaml")
        .environment("drill")
        .model_copy(
            update={
                "config_paths": [str(config)],
                "config_env_file": str(env_file),
            }
        )
    )
    return environment, config, env_file, backups


def bad_snapshot(config: Path, backups: Path, tmp_path: Path, environment: dict) -> Path:
    """A snapshot that parses (so it is swapped in) but differs everywhere."""
    source = tmp_path / "bad" / "config"
    source.mkdir(parents=True)
    (source / "app.json").write_text('{"storage": {}}\n')
    (source / "services.yaml").write_text("services: {}\n")
    return writer.config_snapshot([str(source)], backups, environment=environment)


def test_env_file_present_is_rolled_back_byte_for_byte(app, tmp_path):
    environment, config, env_file, backups = app
    original = (
        b"# Tracktion production environment\n"
        b"export TRACKTION_MODE=live\n"
        b"AWS_REGION=eu-west-1\n"
        b"\n"
        b"TRACKTION_TOKEN=" + SECRET.encode() + b"   # trailing spaces and a comment\n"
    )
    env_file.write_bytes(original)
    env_file.chmod(0o640)
    before = configuration_digest(environment)
    safety = take_safety_snapshot(environment, backups, INCIDENT)
    assert safety.stat().st_mode & 0o777 == 0o600, "it holds the environment file's bytes"
    assert SECRET not in safety.with_name(safety.name + ".manifest.json").read_text()
    assert differences_from_safety(environment, safety) == []

    bad = bad_snapshot(config, backups, tmp_path, {"TRACKTION_MODE": "broken"})
    restore(environment, bad, INCIDENT)
    assert env_file.read_bytes() == b"TRACKTION_MODE=broken\n", "the restore rewrote it"
    changed = differences_from_safety(environment, safety)
    [env_line] = [line for line in changed if line.startswith(f"{env_file}:")]
    assert SECRET not in "\n".join(changed)
    assert "sha256" not in env_line, "not even a checksum of the environment file"

    result = roll_back(environment, safety, f"{INCIDENT}-rollback")
    assert configuration_digest(environment) == before
    assert env_file.read_bytes() == original
    assert env_file.stat().st_mode & 0o777 == 0o640
    assert result.environment_file == "restored"
    assert differences_from_safety(environment, safety) == []
    # what the rollback replaced is kept beside, not deleted
    aside = env_file.with_name(f"environment.env.before-{INCIDENT}-rollback")
    assert aside.read_bytes() == b"TRACKTION_MODE=broken\n"
    assert (config.parent / f"config.before-{INCIDENT}-rollback" / "app.json").is_file()


def test_env_file_absent_before_is_moved_aside_not_left_live(app, tmp_path):
    environment, config, env_file, backups = app
    assert not env_file.exists()
    before = configuration_digest(environment)
    safety = take_safety_snapshot(environment, backups, INCIDENT)
    bad = bad_snapshot(config, backups, tmp_path, {"TRACKTION_STORAGE_PATH": "/nowhere"})
    restore(environment, bad, INCIDENT)
    assert env_file.read_text() == "TRACKTION_STORAGE_PATH=/nowhere\n"

    result = roll_back(environment, safety, f"{INCIDENT}-rollback")
    assert not env_file.exists() and not env_file.is_symlink()
    assert configuration_digest(environment) == before
    assert result.environment_file == "moved aside (absent before)"
    aside = env_file.with_name(f"environment.env.before-{INCIDENT}-rollback")
    assert aside.read_text() == "TRACKTION_STORAGE_PATH=/nowhere\n"


def test_the_tree_goes_back_exactly_even_what_the_plan_would_refuse(app, tmp_path):
    environment, config, env_file, backups = app
    (config / "broken.json").write_text('{"a": ')  # live and broken: it goes back broken
    before = configuration_digest(environment)
    assert before[str(config / "shared")] == f"symlink to /etc, owner {os.getuid()}:{os.getgid()}"
    assert before[str(config / "empty")].startswith("dir, mode")
    safety = take_safety_snapshot(environment, backups, INCIDENT)
    restore(environment, bad_snapshot(config, backups, tmp_path, {}), INCIDENT)
    assert configuration_digest(environment) != before

    roll_back(environment, safety, f"{INCIDENT}-rollback")
    assert configuration_digest(environment) == before
    assert (config / "broken.json").read_text() == '{"a": '
    assert (config / "conf.d" / "extra.yaml").stat().st_mode & 0o777 == 0o600
    assert os.readlink(config / "current.yaml") == "services.yaml"


@root_only
def test_owners_go_back(app, tmp_path):
    environment, config, env_file, backups = app
    env_file.write_text("TRACKTION_MODE=live\n")
    for path in (env_file, config / "app.json", config / "conf.d"):
        os.chown(path, OTHER_UID, OTHER_GID)
    before = configuration_digest(environment)
    assert f"owner {OTHER_UID}:{OTHER_GID}" in before[str(env_file)]
    safety = take_safety_snapshot(environment, backups, INCIDENT)
    restore(environment, bad_snapshot(config, backups, tmp_path, {"TRACKTION_MODE": "x"}), INCIDENT)
    roll_back(environment, safety, f"{INCIDENT}-rollback")
    assert configuration_digest(environment) == before
    assert (env_file.stat().st_uid, env_file.stat().st_gid) == (OTHER_UID, OTHER_GID)


def test_a_second_rollback_converges_to_the_same_state(app, tmp_path):
    """A rollback task cleared and run again (or killed and re-run) ends the same way."""
    environment, config, env_file, backups = app
    env_file.write_text("TRACKTION_MODE=live\n")
    before = configuration_digest(environment)
    safety = take_safety_snapshot(environment, backups, INCIDENT)
    restore(environment, bad_snapshot(config, backups, tmp_path, {"TRACKTION_MODE": "x"}), INCIDENT)
    roll_back(environment, safety, f"{INCIDENT}-rollback")
    # killed before it cleaned up: its staged copy of the environment file is still there
    leftover = env_file.with_name(f".environment.env.rollback-{INCIDENT}-rollback")
    leftover.write_text("half-written")
    roll_back(environment, safety, f"{INCIDENT}-rollback")
    assert configuration_digest(environment) == before
    assert not leftover.exists()
    assert not list(config.parent.glob(".config-rollback-*")), "no extraction left behind"


def test_a_safety_snapshot_that_does_not_match_its_record_swaps_nothing(app, tmp_path):
    environment, config, env_file, backups = app
    safety = take_safety_snapshot(environment, backups, INCIDENT)
    restore(environment, bad_snapshot(config, backups, tmp_path, {}), INCIDENT)
    live = configuration_digest(environment)
    # the record claims other bytes for app.json than the archive holds
    with tarfile.open(safety, "r:gz") as opened:
        members = [(m, opened.extractfile(m).read() if m.isfile() else None) for m in opened]
    tampered = tmp_path / "config_safety_tampered.tar.gz"
    with tarfile.open(tampered, "w:gz") as out:
        for member, data in members:
            if member.name == writer.SAFETY_STATE_MEMBER:
                state = json.loads(data)
                state["entries"][str(config / "app.json")]["sha256"] = "0" * 64
                data = json.dumps(state).encode()
                member.size = len(data)
            out.addfile(member, io.BytesIO(data) if data is not None else None)
    with pytest.raises(ValidationFailed, match="app.json"):
        roll_back(environment, tampered, f"{INCIDENT}-rollback")
    assert configuration_digest(environment) == live, "nothing live was touched"


def test_a_folder_named_like_a_snapshot_member_is_refused(tmp_path):
    odd = tmp_path / writer.ENVIRONMENT_FILE_MEMBER
    odd.mkdir()
    with pytest.raises(writer.SnapshotError, match="cannot be named"):
        writer.config_snapshot([str(odd)], tmp_path / "backups")


def test_a_configuration_changing_during_the_safety_snapshot_is_refused(app, monkeypatch):
    environment, config, env_file, backups = app
    real = config_restore.config_snapshot

    def snapshot_then_edit(*args, **kwargs):
        archive = real(*args, **kwargs)
        (config / "app.json").write_text('{"edited": true}\n')
        return archive

    monkeypatch.setattr(config_restore, "config_snapshot", snapshot_then_edit)
    with pytest.raises(StepFailed, match="changed while the safety snapshot"):
        take_safety_snapshot(environment, backups, INCIDENT)


def test_a_refused_snapshot_leaves_no_extraction_beside_the_live_folder(app, tmp_path):
    environment, config, env_file, backups = app
    source = tmp_path / "corrupt" / "config"
    source.mkdir(parents=True)
    (source / "app.json").write_text('{"a": ')
    archive = writer.config_snapshot([str(source)], backups)
    with pytest.raises(config_restore.ConfigInvalid):
        restore(environment, archive, INCIDENT)
    assert not list(config.parent.glob(".config-restore-*"))
