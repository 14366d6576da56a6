"""Pure decisions of the recovery DAGs: scope and order, strategies, snapshot picking."""

from __future__ import annotations

import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tracktion_dr.backups import snapshots as writer
from tracktion_dr.core.plan import load_plan
from tracktion_dr.files import snapshots
from tracktion_dr.files.config_restore import ConfigInvalid, stage
from tracktion_dr.services.recovery import (
    UnknownService,
    actions_for,
    dependency_order,
    resolve_scope,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def environment():
    return load_plan(ROOT / "include" / "config" / "sandbox.yaml").environment("drill")


def test_dependencies_come_first(environment):
    order = dependency_order(environment)
    assert order.index("analysis-service") < order.index("file-watcher")
    assert set(order) == set(environment.services)
    # a chosen scope is ordered but not widened
    assert dependency_order(environment, ["file-watcher", "analysis-service"]) == [
        "analysis-service",
        "file-watcher",
    ]
    assert dependency_order(environment, ["file-watcher"]) == ["file-watcher"]


def test_scope_param(environment):
    assert resolve_scope(environment, ["all"]) == dependency_order(environment)
    assert resolve_scope(environment, "tracklist-service, notification-service") == [
        "tracklist-service",
        "notification-service",
    ]
    with pytest.raises(UnknownService, match=r"services: unknown \['ghost'\]"):
        resolve_scope(environment, ["ghost"])


def test_strategies():
    assert actions_for("restart_failed", healthy=True) is None
    assert actions_for("restart_failed", healthy=False) == "restart"
    assert actions_for("restart_all", healthy=True) == "restart"
    assert actions_for("rebuild", healthy=True) == "rebuild"
    with pytest.raises(ValueError, match="strategy"):
        actions_for("reboot", healthy=False)


def test_snapshot_picking(tmp_path):
    source = tmp_path / "src" / "config"
    source.mkdir(parents=True)
    (source / "app.json").write_text("{}")
    backups = tmp_path / "backups"
    for moment in ("2026-11-20T01:00:00", "2026-11-25T08:00:00", "2026-11-25T23:00:00"):
        writer.take_snapshot(
            [source],
            backups,
            "config",
            by_base_name=True,
            now=datetime.fromisoformat(moment).replace(tzinfo=UTC),
        )
    # Neither an archive without its manifest (unfinished) nor a safety snapshot is picked.
    (backups / "config_full_20261126T000000Z.tar.gz").write_bytes(b"")
    writer.config_snapshot([str(source)], backups / "safety", name="config_safety_x.tar.gz")
    location = f"file://{backups}"
    assert (
        snapshots.pick_snapshot(location, "configuration").name
        == "config_full_20261125T230000Z.tar.gz"
    )
    assert snapshots.pick_snapshot(location, "configuration", "2026-11-20").name.startswith(
        "config_full_20261120"
    )
    assert snapshots.pick_snapshot(location, "configuration", "20261125").name.endswith(
        "230000Z.tar.gz"
    )
    with pytest.raises(snapshots.SnapshotError, match="no configuration snapshot taken on"):
        snapshots.pick_snapshot(location, "configuration", "2026-11-21")
    with pytest.raises(snapshots.SnapshotError, match="not 'latest', a date"):
        snapshots.pick_snapshot(location, "configuration", "yesterday")
    with pytest.raises(snapshots.SnapshotError, match="only file://"):
        snapshots.pick_snapshot("s3://bucket/config", "configuration")


def test_a_hostile_archive_is_refused_before_anything_is_swapped(tmp_path, environment):
    evil = tmp_path / "config_20261125T000000Z.tar.gz"
    with tarfile.open(evil, "w:gz") as archive:
        info = tarfile.TarInfo("../../escaped.txt")
        archive.addfile(info)
    live = tmp_path / "app" / "config"
    live.mkdir(parents=True)
    env = environment.model_copy(update={"config_paths": [str(live)]})
    with pytest.raises(snapshots.SnapshotError, match="cannot be extracted"):
        stage(env, evil, "DR-20261125-000000")
    assert not (tmp_path / "escaped.txt").exists()


def test_validation_names_each_bad_file(tmp_path, environment):
    source = tmp_path / "src" / "config"
    source.mkdir(parents=True)
    (source / "app.json").write_text('{"a": ')
    (source / "services.yaml").write_text("a: [\n")
    (source / "ok.json").write_text("{}")
    archive = writer.config_snapshot([str(source)], tmp_path / "backups")
    live = tmp_path / "app" / "config"
    live.mkdir(parents=True)
    env = environment.model_copy(update={"config_paths": [str(live)]})
    with pytest.raises(ConfigInvalid) as caught:
        stage(env, archive, "DR-20261125-000000")
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "config/app.json",
        "config/services.yaml",
    ]


def test_two_config_folders_with_one_base_name_are_refused(tmp_path):
    for parent in ("app", "etc"):
        (tmp_path / parent / "config").mkdir(parents=True)
    with pytest.raises(writer.SnapshotError, match="same base name"):
        writer.config_snapshot(
            [str(tmp_path / "app" / "config"), str(tmp_path / "etc" / "config")],
            tmp_path / "backups",
        )


def test_environment_snapshot_is_private_and_filtered_at_backup_time(tmp_path):
    source = tmp_path / "config"
    source.mkdir()
    env_file = tmp_path / "environment.env"
    env_file.write_text("TRACKTION_MODE=drill\nexport TRACKTION_TOKEN=t0k\nAWS_SECRET=nope\n")
    kept = writer.allowed_environment(str(env_file), ["TRACKTION_"])
    assert kept == {"TRACKTION_MODE": "drill", "TRACKTION_TOKEN": "t0k"}
    archive = writer.config_snapshot([str(source)], tmp_path / "backups", environment=kept)
    assert archive.stat().st_mode & 0o777 == 0o600
    extracted = snapshots.extract_snapshot(archive, tmp_path / "out")
    assert snapshots.read_environment(extracted) == kept


def test_storage_restore_point_follows_the_full_and_its_incrementals(tmp_path):
    area = tmp_path / "data" / "uploads"
    area.mkdir(parents=True)
    (area / "a.txt").write_text("first a")
    (area / "b.txt").write_text("b")
    root = tmp_path / "storage"

    def at(moment: str) -> datetime:
        return datetime.fromisoformat(moment).replace(tzinfo=UTC)

    writer.take_snapshot([area], root / "uploads", "uploads", now=at("2026-11-20T03:00:00"))
    (area / "a.txt").write_text("second a")
    (area / "c.txt").write_text("c")
    incremental = writer.take_snapshot(
        [area], root / "uploads", "uploads", level="incremental", now=at("2026-11-21T03:00:00")
    )
    location = f"file://{root}"
    latest = snapshots.pick_snapshot(location, "storage")
    assert latest.name == incremental.name
    files = snapshots.storage_inventory(latest)["uploads"]
    assert sorted(files) == ["a.txt", "b.txt", "c.txt"]
    assert files["a.txt"]["archive"] == str(incremental), "the newest copy wins"
    target = tmp_path / "restored"
    snapshots.extract_member(Path(files["a.txt"]["archive"]), files["a.txt"]["member"], target)
    assert target.read_text() == "second a"
    # The full alone, picked by its day, knows neither c.txt nor the second a.txt.
    older = snapshots.storage_inventory(snapshots.pick_snapshot(location, "storage", "2026-11-20"))
    assert sorted(older["uploads"]) == ["a.txt", "b.txt"]
    assert older["uploads"]["a.txt"]["sha256"] != files["a.txt"]["sha256"]
