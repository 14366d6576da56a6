"""Starting and stopping a plan's PostgreSQL cluster the way its host runs it.

One interface, :class:`ClusterControl`, one implementation per ``control.kind`` of the plan:

* ``pg_ctl`` (:class:`PgCtlControl`): ``pg_ctl -D <data directory>``. The configuration is
  in the data directory, as ``initdb`` lays it out (the sandbox's clusters).
* ``pg_ctlcluster`` (:class:`PgCtlClusterControl`): Debian's postgresql-common,
  ``pg_ctlcluster <version> <name>``. The configuration is in
  ``/etc/postgresql/<version>/<name>``, which names the data directory; ``pg_ctl -D`` on
  such a data directory fails ("could not access the server configuration file"), and
  would skip what the wrapper does (start.conf, pg_ctl.conf, the environment file, the
  socket directory after a reboot). Run as the cluster's owner, like ``pg_ctl``.
* ``systemd`` (:class:`SystemdControl`): ``systemctl start|stop <unit>`` (Debian's
  ``postgresql@15-main`` runs pg_ctlcluster itself). Stopping through the unit matters
  where the unit restarts a server that dies outside it.

What every kind shares, and why:

* The status is read from the data directory (``pg_ctl status -D``: ``postmaster.pid``
  names a live postmaster), whatever the kind. It is what ``pg_ctlcluster status`` runs
  too, but it also answers while the data directory is moved aside (where the wrapper
  errors out), and for a unit it is the postmaster that matters, not the unit: a server
  started by hand outside its unit runs although the unit is inactive.
* Waiting is on the server's own state, polled every 50 ms: started = ``postmaster.pid``
  names a live postmaster; accepting connections = its status line says ``ready`` or
  ``standby`` (what ``pg_ctl -w`` reads). ``pg_ctlcluster start`` adds probes of its own
  (0.5 s apart, 2-3 s in all): that is the Debian tool's, kept rather than bypassed.
* A PITR passes the log file its gate reads (``-l``); ``pg_ctl`` and ``pg_ctlcluster``
  write the server's output there, a unit writes where its host configured it
  (:meth:`ClusterControl.server_log` says where).
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from tracktion_dr.core.errors import CommandError, InvalidInput
from tracktion_dr.core.plan import Cluster, ClusterControlSpec
from tracktion_dr.postgres.commands import DEFAULT_BINDIR, as_os_user, run
from tracktion_dr.postgres.recovery_marker import postmaster_pid

log = logging.getLogger(__name__)

ServerStatus = Literal["running", "stopped", "no data directory"]
StopMode = Literal["smart", "fast", "immediate"]
START_TIMEOUT_SECONDS = 120
STOP_TIMEOUT_SECONDS = 60
POLL_SECONDS = 0.05
# pg_ctl's -l file when the caller names none: without one the server inherits our stdout
# pipe and the call never returns. Inside the data directory because that is the one place
# the OS user can surely write.
PG_CTL_LOG = "pg_ctl_dr_start.log"
# postmaster.pid's 8th line once the postmaster accepts connections (pg_ctl -w waits for it)
ACCEPTING = ("ready", "standby")

Runner = Callable[..., subprocess.CompletedProcess[str]]  # postgres.commands.run's form


class ClusterControl(ABC):
    """Start, stop and look at one cluster (one data directory) as its host runs it."""

    kind: ClassVar[str]
    data_directory: Path
    bindir: Path
    os_user: str
    runner: Runner

    # --- what each kind says differently ----------------------------------------------

    @abstractmethod
    def start_command(self, *, wait: bool, log_file: Path | None, timeout: float) -> list[str]:
        """The command line that starts the server."""

    @abstractmethod
    def stop_command(self, mode: StopMode, timeout: float) -> list[str]:
        """The command line that stops the server."""

    @abstractmethod
    def describe(self) -> str:
        """``pg_ctl -D /x``, ``pg_ctlcluster 15 main``, ``systemd unit postgresql@15-main``."""

    def check_layout(self) -> None:
        """Refuse (``InvalidInput``, nothing touched) when this host's configuration does not
        control the plan's data directory. Nothing to check for pg_ctl."""
        return None

    def server_log(self, requested: Path | None) -> Path | None:
        """Where the server's output goes when started with ``requested`` as its log."""
        return requested

    # --- shared -------------------------------------------------------------------------

    def status(self) -> ServerStatus:
        """From the data directory, whatever the kind (see the module doc)."""
        result = self.runner(
            as_os_user(
                [str(self.bindir / "pg_ctl"), "status", "-D", str(self.data_directory)],
                self.os_user,
            ),
            what="pg_ctl status",
            check=False,
            timeout=30,
        )
        if result.returncode == 0:
            return "running"
        if result.returncode == 4:
            return "no data directory"
        return "stopped"

    def is_running(self) -> bool:
        return self.status() == "running"

    def start(
        self,
        *,
        wait: bool,
        log_file: Path | None = None,
        timeout: float = START_TIMEOUT_SECONDS,
    ) -> int:
        """Start the server; returns its postmaster's pid. ``wait``: until it accepts
        connections; else only until the postmaster is up (a recovery replays after that,
        for a gate to watch). Raises ``CommandError`` when it does not come up."""
        self.check_layout()
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
        argv = self.start_command(wait=wait, log_file=log_file, timeout=timeout)
        self.runner(argv, what=f"start {self.describe()}", timeout=timeout + 30)
        pid = wait_for_postmaster(self.data_directory, timeout)
        if pid is None:
            raise CommandError(
                f"{self.describe()}: no postmaster came up for {self.data_directory}"
                + self._see_log(log_file)
            )
        if wait and not wait_until_accepting(self.data_directory, timeout):
            raise CommandError(
                f"{self.describe()}: the server in {self.data_directory} does not accept "
                f"connections after {timeout:.0f}s" + self._see_log(log_file)
            )
        return pid

    def stop(self, mode: StopMode = "fast", *, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Stop the server (waits until the postmaster is gone); a stopped one is left."""
        if not self.is_running():
            return
        self.check_layout()
        self.runner(
            self.stop_command(mode, timeout),
            what=f"stop ({mode}) {self.describe()}",
            timeout=timeout + 30,
        )
        if not wait_for_exit(self.data_directory, timeout):
            raise CommandError(
                f"{self.describe()}: the postmaster of {self.data_directory} still runs after "
                f"a {mode} stop"
            )

    def _see_log(self, log_file: Path | None) -> str:
        where = self.server_log(log_file)
        return f" (see {where})" if where else " (see the journal of its unit)"


# --- the kinds ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PgCtlControl(ClusterControl):
    """``pg_ctl -D <data directory>`` as the cluster's OS user."""

    data_directory: Path
    bindir: Path = DEFAULT_BINDIR
    os_user: str = "postgres"
    runner: Runner = field(default=run, compare=False, repr=False)

    kind: ClassVar[str] = "pg_ctl"

    def pg_ctl(self, *args: str) -> list[str]:
        return as_os_user(
            [str(self.bindir / "pg_ctl"), "-D", str(self.data_directory), *args], self.os_user
        )

    def start_command(self, *, wait: bool, log_file: Path | None, timeout: float) -> list[str]:
        log = log_file or self.data_directory / PG_CTL_LOG
        waiting = ["-w", "-t", str(int(timeout))] if wait else ["-W"]
        return self.pg_ctl("start", *waiting, "-l", str(log))

    def stop_command(self, mode: StopMode, timeout: float) -> list[str]:
        return self.pg_ctl("stop", "-m", mode, "-w", "-t", str(int(timeout)))

    def server_log(self, requested: Path | None) -> Path | None:
        return requested or self.data_directory / PG_CTL_LOG

    def describe(self) -> str:
        return f"pg_ctl -D {self.data_directory}"


@dataclass(frozen=True)
class PgCtlClusterControl(ClusterControl):
    """Debian's ``pg_ctlcluster <version> <name>`` as the cluster's owner."""

    version: int
    name: str
    data_directory: Path
    bindir: Path = DEFAULT_BINDIR
    os_user: str = "postgres"
    runner: Runner = field(default=run, compare=False, repr=False)

    kind: ClassVar[str] = "pg_ctlcluster"

    @property
    def config_directory(self) -> Path:
        return Path(f"/etc/postgresql/{self.version}/{self.name}")

    def pg_ctlcluster(self, *options: str, action: str, pg_ctl_options: list[str]) -> list[str]:
        argv = ["pg_ctlcluster", *options, str(self.version), self.name, action]
        if pg_ctl_options:  # (extra options also keep a root caller off the systemctl redirect)
            argv += ["--", *pg_ctl_options]
        return as_os_user(argv, self.os_user)

    def start_command(self, *, wait: bool, log_file: Path | None, timeout: float) -> list[str]:
        options = ["-t", str(int(timeout))] if wait else ["-W"]
        if log_file is not None:  # after pg_ctlcluster's own -l: pg_ctl takes the last one
            options += ["-l", str(log_file)]
        return self.pg_ctlcluster(action="start", pg_ctl_options=options)

    def stop_command(self, mode: StopMode, timeout: float) -> list[str]:
        return self.pg_ctlcluster(
            "--mode", mode, action="stop", pg_ctl_options=["-t", str(int(timeout))]
        )

    def cluster_info(self) -> dict[str, Any] | None:
        """This host's view of the cluster (``pg_lsclusters --json``), or None."""
        result = self.runner(
            ["pg_lsclusters", "--json"], what="pg_lsclusters", check=False, timeout=30
        )
        if result.returncode != 0:
            return None
        for info in json.loads(result.stdout or "[]"):
            if int(info.get("version", 0)) == self.version and info.get("cluster") == self.name:
                return info
        return None

    def check_layout(self) -> None:
        check_debian_cluster(self.cluster_info(), self.version, self.name, self.data_directory)

    def server_log(self, requested: Path | None) -> Path | None:
        if requested is not None:
            return requested
        info = self.cluster_info()
        return Path(info["logfile"]) if info and info.get("logfile") else None

    def describe(self) -> str:
        return f"pg_ctlcluster {self.version} {self.name}"


@dataclass(frozen=True)
class SystemdControl(ClusterControl):
    """``systemctl start|stop <unit>`` (as root: the unit's ``User=`` runs the server).

    A fast stop is the unit's ``ExecStop`` (Debian's: ``pg_ctlcluster -m fast``); an
    immediate one is SIGQUIT to the unit's main process, the postmaster (what ``pg_ctl -m
    immediate`` sends). A postmaster still running after ``systemctl stop`` was started
    outside its unit: it is stopped with ``pg_ctl`` on its data directory."""

    unit: str
    data_directory: Path
    bindir: Path = DEFAULT_BINDIR
    os_user: str = "postgres"
    debian_cluster: tuple[int, str] | None = None  # (version, name) of a postgresql@ unit
    runner: Runner = field(default=run, compare=False, repr=False)

    kind: ClassVar[str] = "systemd"

    def start_command(self, *, wait: bool, log_file: Path | None, timeout: float) -> list[str]:
        return ["systemctl", "--no-pager", "start", self.unit]

    def stop_command(self, mode: StopMode, timeout: float) -> list[str]:
        if mode == "immediate":
            return [
                "systemctl",
                "--no-pager",
                "kill",
                "--kill-whom=main",
                "--signal=SIGQUIT",
                self.unit,
            ]
        return ["systemctl", "--no-pager", "stop", self.unit]

    def stop(self, mode: StopMode = "fast", *, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        if not self.is_running():
            return
        self.check_layout()
        # Not checked: an inactive unit (a server started outside it) makes `systemctl kill`
        # fail; whether the postmaster is gone is what decides.
        result = self.runner(
            self.stop_command(mode, timeout),
            what=f"stop ({mode}) {self.describe()}",
            timeout=timeout + 30,
            check=False,
        )
        if result.returncode != 0:
            log.warning("%s: %s", self.describe(), (result.stderr or result.stdout).strip())
        if wait_for_exit(self.data_directory, timeout if mode == "immediate" else 2):
            return
        log.warning(
            "%s: the postmaster of %s outlived `systemctl stop` (started outside its unit): "
            "stopping it with pg_ctl",
            self.describe(),
            self.data_directory,
        )
        outside = PgCtlControl(self.data_directory, self.bindir, self.os_user, self.runner)
        outside.stop(mode, timeout=timeout)

    def check_layout(self) -> None:
        if self.debian_cluster is None:
            return
        version, name = self.debian_cluster
        probe = PgCtlClusterControl(
            version, name, self.data_directory, self.bindir, self.os_user, self.runner
        )
        check_debian_cluster(probe.cluster_info(), version, name, self.data_directory)

    def server_log(self, requested: Path | None) -> Path | None:
        if self.debian_cluster is None:
            return None  # the unit's journal
        version, name = self.debian_cluster
        probe = PgCtlClusterControl(
            version, name, self.data_directory, self.bindir, self.os_user, self.runner
        )
        return probe.server_log(None)

    def describe(self) -> str:
        return f"systemd unit {self.unit}"


def check_debian_cluster(
    info: dict[str, Any] | None, version: int, name: str, data_directory: Path
) -> None:
    """The Debian cluster exists on this host and its configuration names the plan's data
    directory - else pg_ctlcluster would start or stop another directory than the one the
    recovery works on."""
    if info is None:
        raise InvalidInput(
            "control",
            f"this host has no Debian cluster {version}/{name} (pg_lsclusters; its "
            f"configuration would be in /etc/postgresql/{version}/{name})",
            hint="run this step on the cluster's host (its worker queue), or correct "
            "control.version / control.name in the plan",
        )
    configured = str(info.get("pgdata") or "").rstrip("/")
    if Path(configured) != Path(data_directory):
        raise InvalidInput(
            "data_directory",
            f"the plan says {data_directory}, but {info.get('configdir')}/postgresql.conf "
            f"of cluster {version}/{name} names {configured or 'no data directory'}",
            hint="make the plan's data_directory the one the cluster's configuration names",
        )


# --- waiting on the server's own state -----------------------------------------------------


def wait_for_postmaster(data_directory: Path, timeout: float) -> int | None:
    """The pid once ``postmaster.pid`` names a live postmaster; None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        pid = postmaster_pid(data_directory)
        if pid is not None or time.monotonic() > deadline:
            return pid
        time.sleep(POLL_SECONDS)


def wait_for_exit(data_directory: Path, timeout: float) -> bool:
    """True once no live postmaster holds ``data_directory``."""
    deadline = time.monotonic() + timeout
    while postmaster_pid(data_directory) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True


def postmaster_status(data_directory: Path) -> str | None:
    """The status line of ``postmaster.pid`` (``starting``, ``ready``, ``standby``,
    ``stopping``), or None while the postmaster has not written it."""
    try:
        lines = (data_directory / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    return lines[7].strip() if len(lines) > 7 else None


def wait_until_accepting(data_directory: Path, timeout: float) -> bool:
    """True once the live postmaster says it accepts connections (``pg_ctl -w``'s test)."""
    deadline = time.monotonic() + timeout
    while True:
        if postmaster_pid(data_directory) is None:
            return False
        if postmaster_status(data_directory) in ACCEPTING:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_SECONDS)


# --- from the plan ------------------------------------------------------------------------


def control_for_spec(
    spec: ClusterControlSpec,
    data_directory: str | Path,
    *,
    bindir: str | Path = DEFAULT_BINDIR,
    os_user: str = "postgres",
    runner: Runner = run,
) -> ClusterControl:
    data, binaries = Path(data_directory), Path(bindir)
    if spec.kind == "pg_ctlcluster":
        assert spec.version is not None and spec.name is not None  # the plan model's check
        return PgCtlClusterControl(spec.version, spec.name, data, binaries, os_user, runner)
    if spec.kind == "systemd":
        assert spec.unit is not None  # the plan model's check
        return SystemdControl(spec.unit, data, binaries, os_user, spec.debian_cluster(), runner)
    return PgCtlControl(data, binaries, os_user, runner)


def cluster_control(cluster: Cluster, *, replica: bool = False) -> ClusterControl:
    """How the plan says ``cluster`` (or its replica) is started and stopped."""
    if replica:
        if not cluster.replica_data_directory:
            raise InvalidInput("replica_data_directory", "the cluster has no replica in the plan")
        return control_for_spec(
            cluster.replica_control or ClusterControlSpec(),
            cluster.replica_data_directory,
            bindir=cluster.bin_dir,
            os_user=cluster.os_user,
        )
    return control_for_spec(
        cluster.control, cluster.data_directory, bindir=cluster.bin_dir, os_user=cluster.os_user
    )
