"""dr_config_recovery against the sandbox's real configuration folder and snapshots.

The sandbox's services read app.json, services.yaml and the environment file when they
start (tracktion_sandbox/service.py), so a snapshot that parses but is wrong really breaks
one, and the rollback is proven by the service coming back and by every configuration
path and the environment file being exactly (bytes, mode, owner; or absence) as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states
from tracktion_dr.backups import snapshots as writer
from tracktion_dr.files import snapshots
from tracktion_dr.files.config_restore import tree_digest
from tracktion_sandbox import layout as L

pytestmark = pytest.mark.sandbox
HEALTHY_WAIT_SECONDS = 60


def later_snapshot(sandbox, tmp_path, edit, environment=None) -> object:
    """A snapshot newer than every other, made from a copy of the live config + ``edit``
    (and ``environment`` as its environment snapshot)."""
    copy = tmp_path / "config"
    shutil.copytree(sandbox.layout.app_config, copy)
    edit(copy)
    newest = snapshots.list_snapshots(f"file://{sandbox.layout.config_backups}", "configuration")
    later = max(datetime.now(UTC), newest[-1].taken_at) + timedelta(seconds=1)
    return writer.config_snapshot(
        [str(copy)], sandbox.layout.config_backups, environment=environment, now=later
    )


def set_aside(snapshot, folder) -> None:
    """Take a test's snapshot (and its manifest) out of the backups, so "latest" is the
    sandbox's own again."""
    for path in (snapshot, snapshot.with_name(snapshot.name + ".manifest.json")):
        shutil.move(path, folder / path.name)


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_a_bad_config_push_is_recovered_from_the_snapshot(sandbox, tmp_path):
    config = sandbox.layout.app_config
    app_json = config / "app.json"
    good = json.loads(app_json.read_text())
    # The newest snapshot: today's configuration, and an environment with one variable
    # the plan does not allow (the backup DAG never writes one; an older archive might).
    snapshot = later_snapshot(
        sandbox,
        tmp_path,
        lambda c: None,
        environment={
            "TRACKTION_API_TOKEN": f"test-{secrets.token_hex(12)}",
            "TRACKTION_STORAGE_PATH": str(sandbox.layout.app_data),
            "AWS_SECRET_ACCESS_KEY": "not-allowed-by-the-plan",
        },
    )
    app_json.write_text('{"app": "tracktion", "storage": ')  # a truncated push
    library_log = logging.getLogger("tracktion_dr")  # every library module logs below it
    collected = Collect()
    library_log.addHandler(collected)
    try:
        dag_run = run_dag("dr_config_recovery", {"environment": "drill"})
    finally:
        library_log.removeHandler(collected)
        set_aside(snapshot, tmp_path)
    states = task_states(dag_run)
    assert states["verdict"] == "success", states
    assert states["rollback"] == "skipped"
    assert json.loads(app_json.read_text()) == good
    assert oct(app_json.stat().st_mode & 0o777) == "0o644"
    assert oct((config / "logging.conf").stat().st_mode & 0o777) == "0o640"
    incident_id = task_result(dag_run, "guard")["incident_id"]
    aside = config.with_name(f"config.before-{incident_id}")
    assert (aside / "app.json").read_text().startswith('{"app": "tracktion", "storage": ')
    # environment: only the allowed prefix, in a 0600 file, and no value in any log
    env_file = sandbox.layout.app / "environment.env"
    restored = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert set(restored) == {"TRACKTION_API_TOKEN", "TRACKTION_STORAGE_PATH"}
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    logged = "\n".join(collected.messages)
    assert "2 variable(s) restored" in logged, "the restore was logged..."
    assert restored["TRACKTION_API_TOKEN"] not in logged, "...without any value"
    assert "not-allowed-by-the-plan" not in logged
    results = json.dumps([task_result(dag_run, t) for t in ("guard", "restore", "record")])
    assert restored["TRACKTION_API_TOKEN"] not in results, "nor in XCom or the ledger record"
    result = task_result(dag_run, "restore")["result"]
    assert result["environment_restored"] == 2 and result["environment_refused"] == 1


def test_a_corrupt_snapshot_is_refused_and_nothing_live_changes(sandbox, tmp_path):
    bad = later_snapshot(
        sandbox, tmp_path, lambda c: (c / "services.yaml").write_text("services: [unclosed\n")
    )
    before = tree_digest([str(sandbox.layout.app_config)])
    try:
        dag_run = run_dag("dr_config_recovery", {"environment": "drill"})
        states = task_states(dag_run)
        assert states["restore"] == "failed" and states["verdict"] == "failed"
        assert task_result(dag_run, "guard")["snapshot"]["name"] == bad.name
        rollback = task_result(dag_run, "rollback")["event"]
        assert rollback["detail"] == "nothing was swapped: the live configuration was never touched"
        assert tree_digest([str(sandbox.layout.app_config)]) == before
    finally:
        set_aside(bad, tmp_path)


def with_release_2(config) -> None:
    """A harmless, valid change: the services start with it."""
    document = json.loads((config / "app.json").read_text())
    (config / "app.json").write_text(json.dumps({**document, "release": 2}, indent=2) + "\n")


def test_failed_health_gate_rolls_back_to_the_safety_snapshot(sandbox, tmp_path):
    """The restored config is valid but the platform does not come back (analysis-service's
    functional sample is gone): the gate breaches and the live config is rolled back."""
    changed = later_snapshot(sandbox, tmp_path, with_release_2)
    before = tree_digest([str(sandbox.layout.app_config)])
    sample = sandbox.layout.test_data / "sample.mp3"
    shutil.move(sample, tmp_path / "sample.mp3")
    started = (datetime.now(UTC) - timedelta(minutes=29, seconds=30)).isoformat()
    try:
        dag_run = run_dag(
            "dr_config_recovery", {"environment": "drill", "incident_started_at": started}
        )
        states = task_states(dag_run)
        assert states["restore"] == "success" and states["gate_services"] == "failed"
        assert states["rollback"] == "success" and states["verdict"] == "failed"
        assert tree_digest([str(sandbox.layout.app_config)]) == before
        timeline = task_result(dag_run, "record")
        assert timeline["details"]["rolled_back"] is True
        assert timeline["details"]["failed_tasks"] == ["gate_services"]
    finally:
        shutil.move(tmp_path / "sample.mp3", sample)
        set_aside(changed, tmp_path)


# --------------------------------------------------------------------------- rollback, proven


def exact_state(*paths: Path) -> dict[str, tuple[Any, ...]]:
    """Every path under ``paths`` (and each path itself): kind, mode, owner and the sha256
    of a file's bytes (a symlink's target); ``absent`` for a path that does not exist.
    Written here, independently of the library's own record, to judge it."""
    state: dict[str, tuple[Any, ...]] = {}
    for top in paths:
        if not os.path.lexists(top):
            state[str(top)] = ("absent",)
            continue
        below = sorted(top.rglob("*")) if top.is_dir() and not top.is_symlink() else []
        for path in [top, *below]:
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                content = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                content = "dir"
            kind = stat.S_IFMT(info.st_mode)
            state[str(path)] = (kind, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, content)
    return state


@pytest.fixture
def live_configuration_put_back(sandbox, supervisor_controller, tmp_path) -> Iterator[Path]:
    """The sandbox's configuration folder and environment file (or its absence) as a test
    finds them are there again afterwards, even when the test fails halfway (a failed run
    may leave a bad configuration live): other tests find the sandbox as it was. Yields
    the environment file's path."""
    layout = sandbox.layout
    found = exact_state(layout.app_config, layout.app_env_file)
    saved = tmp_path / "saved"
    shutil.copytree(layout.app_config, saved / "config", symlinks=True)
    if layout.app_env_file.exists():
        shutil.copy2(layout.app_env_file, saved / "environment.env")
    yield layout.app_env_file
    if exact_state(layout.app_config, layout.app_env_file) == found:
        return
    left = tmp_path / "left-by-test"
    left.mkdir()
    for live in (layout.app_config, layout.app_env_file):
        if os.path.lexists(live):
            live.rename(left / live.name)
    shutil.copytree(saved / "config", layout.app_config, symlinks=True)
    if (saved / "environment.env").exists():
        shutil.copy2(saved / "environment.env", layout.app_env_file)
    for service in L.SERVICE_PORTS:  # they read it at start
        supervisor_controller.restart(service)
    wait_until_healthy()


def healthy(service: str) -> bool:
    try:
        url = f"http://{L.HOST}:{L.SERVICE_PORTS[service]}/health"
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until_healthy(services=tuple(L.SERVICE_PORTS)) -> None:
    deadline = time.monotonic() + HEALTHY_WAIT_SECONDS
    while time.monotonic() < deadline:
        if all(healthy(s) for s in services):
            return
        time.sleep(0.5)
    down = [s for s in services if not healthy(s)]
    pytest.fail(f"services not healthy after {HEALTHY_WAIT_SECONDS}s: {down}")


class HealthWatch:
    """Polls one service's /health in a thread while the DAG runs; keeps each answer that
    was not healthy, so the test can prove the service really broke."""

    def __init__(self, service: str):
        self.url = f"http://{L.HOST}:{L.SERVICE_PORTS[service]}/health"
        self.unhealthy: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                answer = httpx.get(self.url, timeout=2)
                if answer.status_code != 200:
                    self.unhealthy.append(answer.json())
            except (httpx.HTTPError, ValueError):
                pass
            self._stop.wait(0.5)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def log_lines(sandbox, program: str, marker: str) -> int:
    path = sandbox.layout.logs / f"{program}.log"
    return path.read_text(errors="replace").count(marker) if path.exists() else 0


def run_and_check_rollback(
    sandbox, tmp_path, bad: Path, conf: dict[str, Any], check_broken: Callable[[Any], None]
) -> tuple[Any, dict[str, str]]:
    """Run dr_config_recovery on ``bad`` (the newest snapshot); assert it was swapped in,
    then rolled back, and everything is exactly as before; return the run and its states."""
    layout = sandbox.layout
    before = exact_state(layout.app_config, layout.app_env_file)
    try:
        dag_run = run_dag("dr_config_recovery", {"environment": "drill", **conf})
    finally:
        set_aside(bad, tmp_path)
    states = task_states(dag_run)
    assert task_result(dag_run, "guard")["snapshot"]["name"] == bad.name
    assert states["restore"] == "success", states  # it parsed: it was swapped in
    check_broken(dag_run)
    assert states["rollback"] == "success" and states["verdict"] == "failed", states
    assert exact_state(layout.app_config, layout.app_env_file) == before
    timeline = task_result(dag_run, "record")
    assert timeline["outcome"] == "failed"
    assert timeline["details"]["rolled_back"] is True
    assert "rolled back to config_safety_" in task_result(dag_run, "rollback")["event"]["detail"]
    wait_until_healthy()
    return dag_run, states


def test_a_snapshot_missing_a_required_key_breaks_a_service_and_is_rolled_back_exactly(
    sandbox, tmp_path, live_configuration_put_back
):
    """Given an environment file an operator wrote (comments, an export, a variable of
    another tool, mode 0640) and a newest snapshot whose app.json parses but lacks
    ``storage`` and whose environment snapshot carries a variable: the restore swaps both
    in, analysis-service refuses to start, the run rolls back by itself, and the
    configuration and the environment file are byte-, mode- and owner-identical again."""
    env_file = live_configuration_put_back
    original = (
        b"# Tracktion sandbox environment, written by hand\n"
        b"export TRACKTION_FEATURE_WAVEFORMS=on\n"
        b"OTHER_TOOL_HOME=/opt/other   # not ours, must survive\n"
        b"\n"
    )
    env_file.write_bytes(original)
    env_file.chmod(0o640)
    bad = later_snapshot(
        sandbox,
        tmp_path,
        lambda c: (c / "app.json").write_text(
            json.dumps(
                {
                    k: v
                    for k, v in json.loads((c / "app.json").read_text()).items()
                    if k != "storage"
                },
                indent=2,
            )
            + "\n"
        ),
        environment={"TRACKTION_FEATURE_WAVEFORMS": "off"},
    )
    marker = "configuration refused, not starting"
    refused_before = log_lines(sandbox, "analysis-service", marker)

    def check_broken(dag_run) -> None:
        states = task_states(dag_run)
        assert states["restart_services"] == "failed", states
        assert states["gate_services"] == "upstream_failed", states
        assert log_lines(sandbox, "analysis-service", marker) > refused_before, (
            "analysis-service refused the restored configuration"
        )
        incident_id = task_result(dag_run, "guard")["incident_id"]
        bad_env = env_file.with_name(f"{env_file.name}.before-{incident_id}-rollback")
        assert bad_env.read_bytes() == b"TRACKTION_FEATURE_WAVEFORMS=off\n", (
            "the snapshot's environment was live, and is kept aside"
        )

    dag_run, _ = run_and_check_rollback(sandbox, tmp_path, bad, {}, check_broken)
    assert env_file.read_bytes() == original
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o640
    # the gate never ran (upstream_failed): it is listed with the step that failed
    failed = task_result(dag_run, "record")["details"]["failed_tasks"]
    assert failed == ["gate_services", "restart_services"]


def test_environment_variables_of_a_bad_snapshot_do_not_outlive_the_rollback(
    sandbox, tmp_path, live_configuration_put_back
):
    """Given no environment file, and a newest snapshot identical to the live configuration
    but carrying ``TRACKTION_STORAGE_PATH`` pointing nowhere: the services start with it and
    report storage unhealthy, the gate breaches, the rollback moves the environment file
    the restore created aside (the services no longer see the variable) and they are
    healthy again."""
    env_file = live_configuration_put_back
    if env_file.exists():  # put back afterwards by the fixture
        env_file.rename(tmp_path / "environment.env.moved-for-test")
    nowhere = tmp_path / "no-such-storage"
    bad = later_snapshot(
        sandbox, tmp_path, lambda c: None, environment={"TRACKTION_STORAGE_PATH": str(nowhere)}
    )
    # 30 s of RTO budget left: the gate breaches soon (the services will not get better)
    started = (datetime.now(UTC) - timedelta(minutes=29, seconds=30)).isoformat()

    with HealthWatch("file-watcher") as watch:

        def check_broken(dag_run) -> None:
            states = task_states(dag_run)
            assert states["restart_services"] == "success", states
            assert states["gate_services"] == "failed", states
            assert any(
                "storage" in answer.get("failed", [])
                and str(nowhere) in answer["checks"]["storage"]["error"]
                for answer in watch.unhealthy
            ), f"file-watcher never reported the snapshot's storage path: {watch.unhealthy}"

        dag_run, _ = run_and_check_rollback(
            sandbox, tmp_path, bad, {"incident_started_at": started}, check_broken
        )
    assert not env_file.exists(), "there was no environment file before the run"
    incident_id = task_result(dag_run, "guard")["incident_id"]
    aside = env_file.with_name(f"{env_file.name}.before-{incident_id}-rollback")
    assert aside.read_text() == f"TRACKTION_STORAGE_PATH={nowhere}\n", "moved aside, kept"
    assert task_result(dag_run, "record")["details"]["failed_tasks"] == ["gate_services"]
    assert task_result(dag_run, "rollback")["result"]["environment_file"] == (
        "moved aside (absent before)"
    )
