"""How each kind of cluster control starts and stops PostgreSQL, by its command lines.

The pg_ctl and pg_ctlcluster kinds also run for real: the sandbox's clusters are pg_ctl's,
and tests/integration/test_debian_cluster.py creates a Debian cluster with
pg_createcluster and drives it through pg_ctlcluster. The systemd kind cannot run here:
systemd is not PID 1 on the test machine (``ps -p 1``), so ``systemctl start`` has no
manager to talk to. It is tested through its runner instead: each test asserts the exact
argv it would run and feeds it the answers of ``pg_ctl status`` and ``pg_lsclusters``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from tracktion_dr.core.errors import InvalidInput
from tracktion_dr.core.plan import Cluster, ClusterControlSpec
from tracktion_dr.postgres.control import (
    PgCtlClusterControl,
    PgCtlControl,
    SystemdControl,
    cluster_control,
)

BIN = "/usr/lib/postgresql/15/bin"


class Recorder:
    """A runner in ``postgres.commands.run``'s form: records each argv, answers in turn."""

    def __init__(self, *answers: tuple[int, str]):
        self.calls: list[list[str]] = []
        self.answers = list(answers)

    def __call__(self, argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        code, out = self.answers.pop(0) if self.answers else (0, "")
        return subprocess.CompletedProcess(list(argv), code, out, "")


def lsclusters(pgdata: str, version: int = 15, name: str = "main") -> tuple[int, str]:
    """``pg_lsclusters --json`` as postgresql-common prints it (the fields we read)."""
    return 0, json.dumps(
        [
            {
                "version": version,
                "cluster": name,
                "pgdata": pgdata,
                "configdir": f"/etc/postgresql/{version}/{name}",
                "logfile": f"/var/log/postgresql/postgresql-{version}-{name}.log",
                "port": "5432",
                "running": 1,
            }
        ]
    )


def without_runuser(argv: list[str]) -> list[str]:
    """The command itself (as root, the controls prefix ``runuser -u postgres --``)."""
    return argv[4:] if argv[:2] == ["runuser", "-u"] else argv


def test_the_plan_picks_the_control_of_each_kind():
    def cluster(**control) -> Cluster:
        return Cluster(
            conn_id="pg",
            data_directory="/var/lib/postgresql/15/main",
            control=ClusterControlSpec(**control),
            replica_data_directory="/var/lib/postgresql/15/main",
            replica_control=ClusterControlSpec(kind="systemd", unit="postgresql@15-main"),
        )

    assert isinstance(cluster_control(cluster()), PgCtlControl)
    debian = cluster_control(cluster(kind="pg_ctlcluster", version=15, name="main"))
    assert isinstance(debian, PgCtlClusterControl)
    assert debian.describe() == "pg_ctlcluster 15 main"
    assert debian.config_directory == Path("/etc/postgresql/15/main")
    replica = cluster_control(cluster(), replica=True)
    assert isinstance(replica, SystemdControl) and replica.debian_cluster == (15, "main")


def test_pg_ctl_command_lines(tmp_path):
    control = PgCtlControl(tmp_path / "data", Path(BIN))
    pg_ctl = [f"{BIN}/pg_ctl", "-D", str(tmp_path / "data")]
    started = without_runuser(
        control.start_command(wait=False, log_file=tmp_path / "r.log", timeout=20)
    )
    assert started == [*pg_ctl, "start", "-W", "-l", str(tmp_path / "r.log")]
    waited = without_runuser(control.start_command(wait=True, log_file=None, timeout=120))
    log = str(tmp_path / "data" / "pg_ctl_dr_start.log")
    assert waited == [*pg_ctl, "start", "-w", "-t", "120", "-l", log]
    stop = without_runuser(control.stop_command("immediate", 30))
    assert stop == [*pg_ctl, "stop", "-m", "immediate", "-w", "-t", "30"]


def test_pg_ctlcluster_command_lines():
    control = PgCtlClusterControl(15, "main", Path("/var/lib/postgresql/15/main"))
    recovery_log = Path("/var/lib/postgresql/15/recovery_x.log")
    # a recovery: the postmaster only, its output in the log the gate reads (pg_ctl takes
    # the last -l, after pg_ctlcluster's own)
    assert without_runuser(
        control.start_command(wait=False, log_file=recovery_log, timeout=20)
    ) == ["pg_ctlcluster", "15", "main", "start", "--", "-W", "-l", str(recovery_log)]
    assert without_runuser(control.start_command(wait=True, log_file=None, timeout=120)) == [
        "pg_ctlcluster",
        "15",
        "main",
        "start",
        "--",
        "-t",
        "120",
    ]
    assert without_runuser(control.stop_command("fast", 60)) == [
        "pg_ctlcluster",
        "--mode",
        "fast",
        "15",
        "main",
        "stop",
        "--",
        "-t",
        "60",
    ]


def test_systemd_command_lines():
    control = SystemdControl("postgresql@15-main", Path("/var/lib/postgresql/15/main"))
    assert control.start_command(wait=True, log_file=None, timeout=120) == [
        "systemctl",
        "--no-pager",
        "start",
        "postgresql@15-main",
    ]
    assert control.stop_command("fast", 60) == [
        "systemctl",
        "--no-pager",
        "stop",
        "postgresql@15-main",
    ]
    # immediate: SIGQUIT to the unit's main process, the postmaster (what pg_ctl sends)
    assert control.stop_command("immediate", 30) == [
        "systemctl",
        "--no-pager",
        "kill",
        "--kill-whom=main",
        "--signal=SIGQUIT",
        "postgresql@15-main",
    ]


def test_systemd_stop_checks_the_layout_then_stops_through_the_unit(tmp_path):
    data = tmp_path / "main"  # no postmaster.pid: the postmaster is gone once stopped
    runner = Recorder((0, "pg_ctl: server is running"), lsclusters(str(data)), (0, ""))
    control = SystemdControl("postgresql@15-main", data, debian_cluster=(15, "main"), runner=runner)
    control.stop("fast")
    assert [without_runuser(call) for call in runner.calls] == [
        [f"{BIN}/pg_ctl", "status", "-D", str(data)],
        ["pg_lsclusters", "--json"],
        ["systemctl", "--no-pager", "stop", "postgresql@15-main"],
    ]


def test_a_stopped_server_is_not_stopped_again(tmp_path):
    runner = Recorder((3, "pg_ctl: no server running"))
    SystemdControl("postgresql@15-main", tmp_path, runner=runner).stop("immediate")
    assert len(runner.calls) == 1 and runner.calls[0][-3:] == ["status", "-D", str(tmp_path)]


def test_a_unit_whose_configuration_names_another_data_directory_is_refused(tmp_path):
    runner = Recorder((0, ""), lsclusters("/srv/postgresql/15/main"))
    control = SystemdControl(
        "postgresql@15-main", tmp_path / "main", debian_cluster=(15, "main"), runner=runner
    )
    with pytest.raises(InvalidInput) as refused:
        control.stop("fast")
    assert str(refused.value).startswith("data_directory: the plan says")
    assert "/srv/postgresql/15/main" in str(refused.value)
    assert not any(call[0] == "systemctl" for call in runner.calls), "nothing was stopped"


def test_pg_ctlcluster_refuses_a_cluster_this_host_does_not_have(tmp_path):
    runner = Recorder((0, "[]"))
    control = PgCtlClusterControl(15, "main", tmp_path, runner=runner)
    with pytest.raises(InvalidInput) as refused:
        control.start(wait=True)
    assert "this host has no Debian cluster 15/main" in str(refused.value)
    assert "HINT: run this step on the cluster's host" in str(refused.value)
    assert runner.calls == [["pg_lsclusters", "--json"]], "nothing was started"


def test_a_non_debian_unit_logs_to_its_journal(tmp_path):
    control = SystemdControl("postgresql-15.service", tmp_path)
    assert control.server_log(tmp_path / "recovery.log") is None
    control.check_layout()  # nothing to check without a Debian configuration
