"""The sandbox services read their settings from the configuration paths at start, so a
bad configuration really breaks one (tests/integration/test_config_recovery.py drives it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tracktion_dr.core.plan import load_plan
from tracktion_sandbox import audio, service
from tracktion_sandbox.layout import SandboxLayout

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def layout(tmp_path) -> SandboxLayout:
    """A sandbox home with the configuration ``up`` writes (app.json, services.yaml)."""
    home = SandboxLayout(home=tmp_path / "home")
    for name, text in (
        ("app.json", audio._app_json(home)),
        ("services.yaml", audio._services_yaml()),
    ):
        (home.app_config / name).parent.mkdir(parents=True, exist_ok=True)
        (home.app_config / name).write_text(text)
    return home


def environ(layout: SandboxLayout, **extra: str) -> dict[str, str]:
    return {
        service.CONFIG_DIR_ENV: str(layout.app_config),
        service.ENV_FILE_ENV: str(layout.app_env_file),
        "TRACKTION_DATABASE_URL": "postgresql://u@127.0.0.1:1/db",
        **extra,
    }


def edit_app_json(layout: SandboxLayout, change) -> None:
    path = layout.app_config / "app.json"
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def test_the_sandbox_configuration_starts_every_service(layout):
    for name in service.DEPENDENCIES:
        config, sources = service.load_config(name, 1, environ(layout))
        assert config.database_url == "postgresql://u@127.0.0.1:1/db"
        if "storage" in service.DEPENDENCIES[name]:
            assert config.storage_path == layout.app_data
            assert sources["storage"].endswith("app.json storage.root")
    analysis, _ = service.load_config("analysis-service", 1, environ(layout))
    assert analysis.formats == {"wav", "flac", "mp3"}
    assert analysis.max_upload_bytes == 50 * 1024 * 1024


def test_the_environment_file_is_laid_over_the_process_environment(layout):
    layout.app_env_file.write_text(
        "# written by a restore\nexport TRACKTION_STORAGE_PATH=/srv/elsewhere\nOTHER=1\n"
    )
    config, sources = service.load_config("file-watcher", 1, environ(layout))
    assert config.storage_path == Path("/srv/elsewhere")
    assert sources["environment file"] == f"{layout.app_env_file} (2 variables)"
    assert "/srv/elsewhere" not in json.dumps(sources), "values are not logged"


@pytest.mark.parametrize(
    ("name", "change", "reason"),
    [
        ("analysis-service", lambda d: d.pop("storage"), "required key 'storage.root' is missing"),
        ("file-watcher", lambda d: d["storage"].update(root=""), "storage.root must be a path"),
        (
            "analysis-service",
            lambda d: d["analysis"].pop("formats"),
            "required key 'analysis.formats' is missing",
        ),
        (
            "analysis-service",
            lambda d: d["analysis"].update(formats=["ogg"]),
            "analysis.formats must be a non-empty list",
        ),
        (
            "analysis-service",
            lambda d: d["analysis"].update(max_upload_mb="50"),
            "analysis.max_upload_mb must be 1..1024",
        ),
    ],
    ids=["no-storage", "empty-storage-root", "no-formats", "unknown-format", "size-as-text"],
)
def test_a_missing_or_wrong_app_setting_refuses_to_start(layout, name, change, reason):
    edit_app_json(layout, change)
    with pytest.raises(service.ConfigurationError, match=reason) as caught:
        service.load_config(name, 1, environ(layout))
    assert "app.json" in str(caught.value)


def test_a_service_the_configuration_does_not_declare_refuses_to_start(layout):
    path = layout.app_config / "services.yaml"
    path.write_text(path.read_text().replace("tracklist-service:", "tracklist-renamed:"))
    with pytest.raises(service.ConfigurationError, match="services.tracklist-service is not"):
        service.load_config("tracklist-service", 1, environ(layout))
    service.load_config("notification-service", 1, environ(layout))  # the others still start


def test_unparsable_or_missing_files_name_the_file(layout):
    (layout.app_config / "app.json").write_text('{"storage": ')
    with pytest.raises(service.ConfigurationError, match=r"app.json: not valid JSON"):
        service.load_config("analysis-service", 1, environ(layout))
    (layout.app_config / "services.yaml").unlink()
    with pytest.raises(service.ConfigurationError, match=r"services.yaml: cannot be read"):
        service.load_config("notification-service", 1, environ(layout))


def test_main_exits_with_ex_config_and_says_why(layout, monkeypatch, caplog):
    edit_app_json(layout, lambda d: d.pop("storage"))
    monkeypatch.setattr(os, "environ", environ(layout))
    assert service.main(["--name", "file-watcher", "--port", "1"]) == service.EX_CONFIG
    assert "configuration refused, not starting" in caplog.text
    assert "storage.root" in caplog.text


def test_a_storage_root_that_does_not_exist_starts_but_is_unhealthy(layout, tmp_path):
    edit_app_json(layout, lambda d: d["storage"].update(root=str(tmp_path / "gone")))
    config, _ = service.load_config("file-watcher", 1, environ(layout))
    assert service.check_storage(config.storage_path)["ok"] is False


def test_the_plan_names_the_paths_the_services_read():
    """sandbox.yaml's config_paths / config_env_file are what supervisord hands the
    services (TRACKTION_CONFIG_DIR / TRACKTION_ENV_FILE): a restore lands where they read."""
    layout = SandboxLayout()
    drill = load_plan(ROOT / "include" / "config" / "sandbox.yaml").environment("drill")
    assert [Path(p) for p in drill.config_paths] == [layout.app_config]
    assert Path(drill.config_env_file) == layout.app_env_file


def test_services_that_work_on_an_area_check_the_path_app_json_names(layout, tmp_path):
    watcher, sources = service.load_config("file-watcher", 1, environ(layout))
    assert watcher.area_paths == {"audio_files": layout.audio_files}
    assert "storage.audio_files" in sources["areas"]
    tracklist, _ = service.load_config("tracklist-service", 1, environ(layout))
    assert tracklist.area_paths == {}
    elsewhere = tmp_path / "secondary"
    edit_app_json(layout, lambda d: d["storage"].update(audio_files=str(elsewhere)))
    analysis, _ = service.load_config("analysis-service", 1, environ(layout))
    assert analysis.area_paths == {"audio_files": elsewhere}
    assert service.check_storage(analysis.area_paths["audio_files"])["ok"] is False
    elsewhere.mkdir()
    assert service.check_storage(elsewhere)["ok"] is True
    edit_app_json(layout, lambda d: d["storage"].update(audio_files=5))
    with pytest.raises(service.ConfigurationError, match="storage.audio_files must be a path"):
        service.load_config("file-watcher", 1, environ(layout))
