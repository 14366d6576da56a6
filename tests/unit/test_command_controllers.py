"""The docker compose and systemd controllers, by their exact command lines.

These tests run without a Docker engine or systemd (PID 1): the controllers are tested
through their command runner:
each test asserts the argv the controller would run, and feeds it the outputs that
``docker compose`` v2 and ``systemctl`` print (files under ``recorded/``, transcribed from
those tools' documented output formats: ps as a JSON array before compose 2.21 and as one
object per line after; ``systemctl show --property=...`` key=value lines) including their
failures. The last tests run the real docker CLI and systemctl of this machine, which fail
for real (no such project or engine, no systemd as PID 1). The compose controller against
real containers: tests/deploy/test_compose_controller.py; the supervisord controller
against a real supervisord.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from tracktion_dr.services import ControllerError, ServiceState
from tracktion_dr.services.commands import CommandResult, run_command
from tracktion_dr.services.docker_compose import DockerComposeController
from tracktion_dr.services.systemd import SystemdController

RECORDED = Path(__file__).parent / "recorded"
COMPOSE = ["docker", "compose", "-f", "/opt/tracktion/docker-compose.yml", "-p", "tracktion"]


class Recorder:
    """A command runner that records each argv and answers from a script of outputs."""

    def __init__(self, *answers: tuple[int, str, str]):
        self.calls: list[list[str]] = []
        self.answers = list(answers) or [(0, "", "")]

    def __call__(self, argv: Sequence[str], timeout: float) -> CommandResult:
        self.calls.append(list(argv))
        code, out, err = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return CommandResult(tuple(argv), code, out, err)


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


def compose(*answers: tuple[int, str, str]) -> tuple[DockerComposeController, Recorder]:
    runner = Recorder(*answers)
    return DockerComposeController(
        "/opt/tracktion/docker-compose.yml", "tracktion", runner=runner
    ), runner


def test_compose_operations_are_scoped_to_the_file_and_project():
    controller, runner = compose()
    controller.stop("analysis-service")
    controller.start("analysis-service")
    controller.restart("analysis-service")
    controller.pull("analysis-service")
    controller.rebuild("analysis-service")
    assert runner.calls == [
        [*COMPOSE, "stop", "analysis-service"],
        [*COMPOSE, "ps", "--all", "--format", "json", "analysis-service"],  # paused?
        [*COMPOSE, "up", "--detach", "--no-deps", "analysis-service"],
        [*COMPOSE, "restart", "analysis-service"],
        [*COMPOSE, "up", "--detach", "--no-deps", "analysis-service"],  # gone: created
        [*COMPOSE, "pull", "analysis-service"],
        [*COMPOSE, "build", "--no-cache", "analysis-service"],
        [*COMPOSE, "up", "--detach", "--no-deps", "--force-recreate", "analysis-service"],
    ]
    # the seed's destructive forms never appear
    flat = [arg for call in runner.calls for arg in call]
    assert "down" not in flat and "--volumes" not in flat and "--rmi" not in flat


def test_compose_status_reads_ndjson_and_array_output():
    controller, runner = compose((0, recorded("compose_ps_running.ndjson"), ""))
    status = controller.status("analysis-service")
    assert runner.calls == [[*COMPOSE, "ps", "--all", "--format", "json", "analysis-service"]]
    assert status.state == ServiceState.RUNNING and "Up 5 days (healthy)" in status.detail

    controller, _ = compose((0, recorded("compose_ps_exited.json"), ""))
    status = controller.status("file-watcher")
    assert status.state == ServiceState.STOPPED and "Exited (137)" in status.detail


def test_compose_status_reports_the_worst_replica_and_no_container():
    controller, _ = compose((0, recorded("compose_ps_unhealthy.ndjson"), ""))
    status = controller.status("analysis-service")
    assert status.state == ServiceState.FAILED and "unhealthy" in status.detail
    controller, _ = compose((0, "", ""))
    assert controller.status("analysis-service").state == ServiceState.STOPPED


def test_compose_failures_name_the_service_and_the_cause():
    controller, _ = compose((1, "", recorded("compose_no_such_service.stderr")))
    with pytest.raises(ControllerError, match="has no service named 'ghost-service'"):
        controller.restart("ghost-service")
    controller, _ = compose((1, "", recorded("compose_daemon_down.stderr")))
    with pytest.raises(
        ControllerError, match=r"could not restart analysis-service .*exit 1.*daemon"
    ):
        controller.restart("analysis-service")


def test_rebuild_stops_at_a_failed_build():
    controller, runner = compose((17, "", "failed to solve: process did not complete"), (0, "", ""))
    with pytest.raises(ControllerError, match="could not build"):
        controller.rebuild("analysis-service")
    assert len(runner.calls) == 1, "no recreate after a failed build: the old container stays"


def test_systemd_command_lines():
    runner = Recorder()
    controller = SystemdController(runner=runner)
    controller.stop("analysis-service")
    controller.start("analysis-service")
    controller.restart("docker.service")
    assert runner.calls == [
        ["systemctl", "--no-pager", "stop", "analysis-service.service"],
        ["systemctl", "--no-pager", "start", "analysis-service.service"],
        ["systemctl", "--no-pager", "restart", "docker.service"],
    ]
    user = Recorder()
    SystemdController(runner=user, user_mode=True).start("worker")
    assert user.calls == [["systemctl", "--user", "--no-pager", "start", "worker.service"]]


def test_systemd_status_from_show_properties():
    runner = Recorder((0, recorded("systemd_show_active.txt"), ""))
    status = SystemdController(runner=runner).status("analysis-service")
    assert runner.calls == [
        [
            "systemctl",
            "--no-pager",
            "show",
            "analysis-service.service",
            "--property=LoadState,ActiveState,SubState,MainPID",
        ]
    ]
    assert status.state == ServiceState.RUNNING and status.detail == "active (running), pid 4242"
    failed = SystemdController(runner=Recorder((0, recorded("systemd_show_failed.txt"), "")))
    assert failed.status("analysis-service").state == ServiceState.FAILED
    missing = SystemdController(runner=Recorder((0, recorded("systemd_show_not_found.txt"), "")))
    with pytest.raises(ControllerError, match="no unit named 'ghost.service'"):
        missing.status("ghost")


def test_systemd_failures():
    controller = SystemdController(
        runner=Recorder((5, "", recorded("systemd_start_not_found.stderr")))
    )
    with pytest.raises(ControllerError, match="no unit named 'ghost.service'"):
        controller.start("ghost")
    controller = SystemdController(
        runner=Recorder((1, "", recorded("systemd_start_failed.stderr")))
    )
    with pytest.raises(ControllerError, match="could not start analysis-service.service .*exit 1"):
        controller.start("analysis-service")


def test_the_real_runner_reports_a_missing_binary_and_runs_argument_lists(tmp_path):
    with pytest.raises(ControllerError, match="not installed"):
        run_command(["/nonexistent/docker", "compose", "ps"])
    # a real process, with an argument a shell would have expanded: it arrives verbatim
    result = run_command(["printf", "%s", "$(id) *"])
    assert result.returncode == 0 and result.stdout == "$(id) *"


def test_the_real_runner_leaves_out_the_environment_that_selects_a_compose_project(
    monkeypatch,
):
    """The controllers name the file and project on every command line; a COMPOSE_* project
    selection in the worker's environment must not change what Compose answers."""
    monkeypatch.setenv("COMPOSE_PROJECT_NAME", "someone-elses")
    monkeypatch.setenv("COMPOSE_FILE", "/elsewhere/compose.yaml")
    monkeypatch.setenv("TRACKTION_KEPT", "yes")
    seen = dict(
        line.split("=", 1) for line in run_command(["env"]).stdout.splitlines() if "=" in line
    )
    assert "COMPOSE_PROJECT_NAME" not in seen and "COMPOSE_FILE" not in seen
    assert seen["TRACKTION_KEPT"] == "yes", "the rest of the environment is passed on"


# --- the real binaries of this machine ---------------------------------------------------
# Not recordings: the docker CLI (without the compose plugin or an engine) and systemctl
# (without systemd as PID 1) really run here; the controllers must turn what they answer
# into a clear error naming the unit and the reason, not a crash or a false "running".


def test_real_systemctl_without_systemd_is_a_clear_error():
    import shutil

    controller = SystemdController()  # the real runner
    with pytest.raises(ControllerError) as caught:
        controller.status("analysis-service")
    message = str(caught.value)
    if shutil.which("systemctl") is None:  # a machine without systemd's client at all
        assert message == "systemctl is not installed on this host"
    else:
        assert "analysis-service.service" in message
        assert "System has not been booted with systemd" in message


def test_real_docker_cli_answers_are_clear_errors():
    """What this machine's real docker CLI answers for a compose file that is not there.
    Without the compose plugin (Debian's docker.io alone): that the plugin is missing. With
    it (CI installs Compose v2 for the deployment test): a restart and a status are each a
    clear error naming the service or the file - also with COMPOSE_PROJECT_NAME in the
    environment (the Makefile exports it): the runner leaves it out, or Compose v2 would
    find a project by its label without reading the file and answer "no container"."""
    import shutil
    import subprocess

    controller = DockerComposeController("/opt/tracktion/docker-compose.yml", "tracktion")
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI on this machine")
    has_plugin = (
        subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    )
    if not has_plugin:
        for operation in (controller.status, controller.restart):
            with pytest.raises(ControllerError, match="no 'compose' plugin on this host"):
                operation("analysis-service")
        return
    with pytest.raises(ControllerError) as caught:
        controller.restart("analysis-service")
    message = str(caught.value)
    assert "analysis-service" in message or "/opt/tracktion/docker-compose.yml" in message
    with pytest.raises(ControllerError) as caught:
        controller.status("analysis-service")
    assert "/opt/tracktion/docker-compose.yml" in str(caught.value)
