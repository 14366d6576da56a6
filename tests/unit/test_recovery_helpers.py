"""Pure decisions of the recovery DAGs: scope and order, strategies, snapshot picking."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from tracktion_dr.files import snapshots
from tracktion_dr.files.config_restore import ConfigInvalid, stage
from tracktion_dr.plan import load_plan
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
    for stamp in ("20261120T010000Z", "20261125T080000Z", "20261125T230000Z"):
        (tmp_path / f"config_{stamp}.tar.gz").write_bytes(b"")
    (tmp_path / "safety").mkdir()
    location = f"file://{tmp_path}"
    assert (
        snapshots.pick_snapshot(location, "configuration").name == "config_20261125T230000Z.tar.gz"
    )
    assert snapshots.pick_snapshot(location, "configuration", "2026-11-20").name.startswith(
        "config_20261120"
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
    archive = snapshots.create_config_snapshot([source], tmp_path / "backups")
    live = tmp_path / "app" / "config"
    live.mkdir(parents=True)
    env = environment.model_copy(update={"config_paths": [str(live)]})
    with pytest.raises(ConfigInvalid) as caught:
        stage(env, archive, "DR-20261125-000000")
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "config/app.json",
        "config/services.yaml",
    ]
