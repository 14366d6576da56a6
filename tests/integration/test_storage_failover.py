"""dr_storage_failover on the sandbox: the audio_files area's primary storage is lost, its
services are switched to the backup location (brought up to date from the sync mirror),
work there, and are switched back with what was written meanwhile.

The sandbox's analysis-service and file-watcher read ``storage.audio_files`` from app.json
at start and check it in ``/health`` (tracktion_sandbox/service.py), so the switch is
proven by the services themselves reporting the path they use."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states
from tracktion_dr.core.plan import load_plan
from tracktion_sandbox import layout as L

pytestmark = pytest.mark.sandbox
AREA_SERVICES = ("analysis-service", "file-watcher")
HEALTHY_WAIT_SECONDS = 60


def health(service: str) -> dict:
    url = f"http://{L.HOST}:{L.SERVICE_PORTS[service]}/health"
    try:
        answer = httpx.get(url, timeout=2)
        return {"status_code": answer.status_code, **answer.json()}
    except (httpx.HTTPError, ValueError):
        return {"status_code": None}


def wait_until_healthy(services=AREA_SERVICES) -> None:
    deadline = time.monotonic() + HEALTHY_WAIT_SECONDS
    while time.monotonic() < deadline:
        if all(health(s)["status_code"] == 200 for s in services):
            return
        time.sleep(0.5)
    pytest.fail(f"not healthy after {HEALTHY_WAIT_SECONDS}s: {[health(s) for s in services]}")


def files_of(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }


@pytest.fixture
def area_and_configuration_put_back(sandbox, supervisor_controller, tmp_path) -> Iterator[dict]:
    """app.json, the primary audio_files folder and the backup location as the test finds
    them are there again afterwards (services restarted on the put-back configuration)."""
    layout = sandbox.layout
    spec = load_plan().environment("drill").storage["audio_files"]
    backup = Path(spec.backup_location.removeprefix("file://"))
    app_json = layout.app_config / "app.json"
    saved_config = app_json.read_bytes()
    saved_area = tmp_path / "audio_files-as-found"
    shutil.copytree(layout.audio_files, saved_area, copy_function=shutil.copy2)
    assert not backup.exists() or not any(backup.iterdir()), "a clean backup location"
    yield {"backup": backup, "primary": layout.audio_files, "app_json": app_json}
    left = tmp_path / "left-by-test"
    left.mkdir()
    if backup.exists():
        shutil.move(backup, left / "backup")
    if layout.audio_files.exists():
        shutil.move(layout.audio_files, left / "primary")
    shutil.move(saved_area, layout.audio_files)
    if app_json.read_bytes() != saved_config:
        app_json.write_bytes(saved_config)
    for service in AREA_SERVICES:  # they read app.json at start
        supervisor_controller.restart(service)
    wait_until_healthy()


def _sync_now() -> None:
    from tracktion_dr.airflow.backup_jobs import storage_sync

    storage_sync(load_plan(), "drill", notify=False)


def test_an_area_fails_over_to_its_backup_location_and_back(
    sandbox, tmp_path, area_and_configuration_put_back
):
    paths = area_and_configuration_put_back
    primary, backup = paths["primary"], paths["backup"]
    before = files_of(primary)
    _sync_now()
    # When the primary storage of audio_files is lost
    shutil.move(primary, tmp_path / "lost-primary")

    # Then the failover fills the backup location from the mirror and switches the services
    dag_run = run_dag("dr_storage_failover", {"environment": "drill", "area": "audio_files"})
    states = task_states(dag_run)
    assert states["verdict"] == "success", states
    assert states["rollback"] == "skipped", states
    assert files_of(backup) == before, "every file, byte for byte, on the backup location"
    copied = task_result(dag_run, "bring_up_to_date")["files"]
    assert copied and all("sync mirror" in what for what in copied.values()), copied
    assert json.loads(paths["app_json"].read_text())["storage"]["audio_files"] == str(backup)
    for service in AREA_SERVICES:
        answer = health(service)
        assert answer["status_code"] == 200, answer
        assert answer["checks"]["audio_files"]["path"] == str(backup), answer
    assert set(task_result(dag_run, "restart_services")["restarted"]) == set(AREA_SERVICES)

    # A re-run converges: nothing copied, nothing changed, nobody restarted
    again = run_dag("dr_storage_failover", {"environment": "drill", "area": "audio_files"})
    assert task_states(again)["verdict"] == "success", task_states(again)
    assert task_result(again, "bring_up_to_date")["files"] == {}
    assert task_result(again, "restart_services")["restarted"] == []

    # While failed over, a file is written on the backup location
    written = backup / "wav/written_while_failed_over.wav"
    shutil.copy(backup / "wav/tone_a4_mono.wav", written)

    # Then the failback brings it to the primary and switches the services back
    back = run_dag(
        "dr_storage_failover",
        {"environment": "drill", "area": "audio_files", "direction": "failback"},
    )
    assert task_states(back)["verdict"] == "success", task_states(back)
    assert files_of(primary) == {
        **before,
        "wav/written_while_failed_over.wav": written.read_bytes(),
    }
    assert json.loads(paths["app_json"].read_text())["storage"]["audio_files"] == str(primary)
    for service in AREA_SERVICES:
        answer = health(service)
        assert answer["status_code"] == 200, answer
        assert answer["checks"]["audio_files"]["path"] == str(primary), answer
    assert backup.exists(), "the backup location is kept, not deleted"
