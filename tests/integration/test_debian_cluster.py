"""A Debian-layout cluster, controlled as Debian hosts run it: pg_ctlcluster.

``pg_createcluster`` lays a cluster out the way the production plan's are: configuration in
``/etc/postgresql/15/<name>``, data in ``/var/lib/postgresql/15/<name>``. ``pg_ctl -D``
cannot start such a cluster (the first test shows that failure for real). Then, with the
plan's ``control: {kind: pg_ctlcluster}``: start and stop; the dependency recovery's
database step starts it; and a point-in-time recovery with the functions the PITR DAG runs
(base backup, archive, the table dropped; the data directory moved aside, the base backup
laid down with the recovery settings, started through pg_ctlcluster, replayed to the
target, promoted) brings back exactly the rows committed before the target, and nothing is
written where the configuration lives.

``/etc/postgresql`` and ``/var/lib/postgresql`` are machine-wide (other sandboxes run
beside this one, each in its own network namespace but on the same files): the cluster's
name carries this process's id and a random part, its port is one no cluster of the
machine is configured with and no socket in /var/run/postgresql uses. It is dropped at the
end (``pg_dropcluster --stop``) with whatever this module's recovery put beside it; a
cluster left by a test process that died is dropped by the next run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pwd
import random
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import yaml

from tracktion_dr.core.errors import CommandError, InvalidInput
from tracktion_dr.core.plan import Plan, parse_plan
from tracktion_dr.postgres.basebackups import take_base_backup
from tracktion_dr.postgres.commands import Endpoint
from tracktion_dr.postgres.control import (
    PgCtlClusterControl,
    PgCtlControl,
    cluster_control,
    wait_until_accepting,
)
from tracktion_dr.postgres.recovery_marker import postmaster_pid
from tracktion_dr.scenarios import SystemAccess
from tracktion_dr.scenarios.database import (
    guard_pitr,
    paths_from_plan,
    prepare_data_directory,
    promote_recovered,
    recovery_target_reached,
    segment_archived,
    stage_recovery,
    start_recovery_server,
)
from tracktion_dr.scenarios.dependencies import gate_check, recover_layer

VERSION = 15
BIN = Path(f"/usr/lib/postgresql/{VERSION}/bin")
DATA_ROOT = Path(f"/var/lib/postgresql/{VERSION}")
SOCKETS = Path("/var/run/postgresql")
PREFIX = "drtest_"
ROOT = Path(__file__).resolve().parents[2]
SANDBOX_PLAN = ROOT / "include" / "config" / "sandbox.yaml"


@dataclass
class DebianCluster:
    name: str
    port: int
    work: Path  # the archive and the base backups (owned by postgres)
    password: str = field(repr=False)
    leftovers: list[Path] = field(default_factory=list)

    @property
    def data_directory(self) -> Path:
        return DATA_ROOT / self.name

    @property
    def config_directory(self) -> Path:
        return Path(f"/etc/postgresql/{VERSION}/{self.name}")

    @property
    def archive(self) -> Path:
        return self.work / "archive"

    @property
    def base(self) -> Path:
        return self.work / "base"

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("127.0.0.1", self.port, "postgres", self.password)

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.endpoint.conninfo(dbname), connect_timeout=5, autocommit=True)

    def control(self) -> PgCtlClusterControl:
        return PgCtlClusterControl(VERSION, self.name, self.data_directory, BIN)

    def plan(self) -> Plan:
        """The sandbox plan whose drill cluster is this one, run the Debian way."""
        data = yaml.safe_load(SANDBOX_PLAN.read_text())
        drill = copy.deepcopy(data["environments"]["drill"])
        drill["clusters"] = {
            "main": {
                "conn_id": "dr_test_debian_cluster",
                "data_directory": str(self.data_directory),
                "bin_dir": str(BIN),
                "os_user": "postgres",
                "control": {"kind": "pg_ctlcluster", "version": VERSION, "name": self.name},
            }
        }
        drill["backups"] = {
            **drill["backups"],
            "base": f"file://{self.base}",
            "wal_archive": f"file://{self.archive}",
        }
        data["environments"]["drill"] = drill
        return parse_plan(data, "debian-cluster-test-plan")


def run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"{' '.join(argv)}: {result.stderr or result.stdout}"
    return result.stdout


def machine_clusters() -> list[dict]:
    return json.loads(run("pg_lsclusters", "--json") or "[]")


def free_port() -> int:
    """A port no cluster of the machine is configured with, with no socket file in the
    shared socket directory, and free in this network namespace."""
    taken = {int(c.get("port") or 0) for c in machine_clusters()}
    for _ in range(200):
        port = random.randint(20000, 29999)
        if port in taken or (SOCKETS / f".s.PGSQL.{port}.lock").exists():
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no free port for the Debian test cluster")


def drop_clusters_of_dead_processes() -> None:
    for cluster in machine_clusters():
        name = str(cluster.get("cluster"))
        owner_pid = name.removeprefix(PREFIX).split("_")[0]
        if not name.startswith(PREFIX) or not owner_pid.isdigit():
            continue
        if not Path(f"/proc/{owner_pid}").exists():
            drop_cluster(name)


def drop_cluster(name: str) -> None:
    """pg_dropcluster, and the configuration file this module added (pg_dropcluster
    leaves files it does not know, and so the cluster's directory in /etc)."""
    subprocess.run(
        ["pg_dropcluster", "--stop", str(VERSION), name], capture_output=True, check=False
    )
    shutil.rmtree(Path(f"/etc/postgresql/{VERSION}/{name}"), ignore_errors=True)


@pytest.fixture(scope="module")
def debian_cluster():
    assert shutil.which("pg_createcluster"), "postgresql-common (pg_createcluster) is missing"
    assert os.geteuid() == 0, "pg_createcluster makes a cluster owned by postgres only as root"
    drop_clusters_of_dead_processes()
    name = f"{PREFIX}{os.getpid()}_{secrets.token_hex(3)}"
    postgres = pwd.getpwnam("postgres")
    work = Path(tempfile.mkdtemp(prefix=f"{name}_"))
    password = secrets.token_urlsafe(16)
    pwfile = work / "pwfile"
    pwfile.write_text(password + "\n")
    for path in (work, pwfile):
        os.chown(path, postgres.pw_uid, postgres.pw_gid)
    cluster = DebianCluster(name, free_port(), work, password)
    try:
        run(
            "pg_createcluster",
            str(VERSION),
            name,
            "--port",
            str(cluster.port),
            "--start-conf",
            "manual",  # never started by the machine's postgresql.service
            "--",
            f"--pwfile={pwfile}",
        )
        pwfile.unlink()
        for folder in (cluster.archive, cluster.base):
            folder.mkdir()
            os.chown(folder, postgres.pw_uid, postgres.pw_gid)
        # archiving as the production hosts do it: the setting in the cluster's conf.d
        (cluster.config_directory / "conf.d" / "dr_test_archive.conf").write_text(
            "archive_mode = on\n"
            f"archive_command = 'test ! -f {cluster.archive}/%f && cp %p {cluster.archive}/%f'\n"
        )
        cluster.control().start(wait=True)
        with cluster.connect() as conn:
            conn.execute("CREATE DATABASE tracktion")
        yield cluster
    finally:
        drop_cluster(name)
        for path in [
            *DATA_ROOT.glob(f"{name}.*"),
            *DATA_ROOT.glob(f".{name}.*"),
            *cluster.leftovers,
        ]:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)


def config_fingerprint(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def ensure_running(cluster: DebianCluster) -> None:
    if not cluster.control().is_running():
        cluster.control().start(wait=True)


# --- the failure the plan field exists for ------------------------------------------------


def test_pg_ctl_cannot_start_a_debian_layout(debian_cluster):
    debian_cluster.control().stop("fast")
    log_file = debian_cluster.work / "pg_ctl_attempt.log"
    with pytest.raises(CommandError):
        PgCtlControl(debian_cluster.data_directory, BIN).start(
            wait=True, log_file=log_file, timeout=20
        )
    assert "could not access the server configuration file" in log_file.read_text()
    assert postmaster_pid(debian_cluster.data_directory) is None


# --- start and stop --------------------------------------------------------------------------


def test_start_and_stop_through_pg_ctlcluster(debian_cluster):
    cluster = debian_cluster.plan().environment("drill").clusters["main"]
    control = cluster_control(cluster)
    assert isinstance(control, PgCtlClusterControl)
    control.stop("fast")
    assert control.status() == "stopped"

    pid = control.start(wait=True)
    assert (
        control.status() == "running"
        and postmaster_pid(cluster_dir := Path(cluster.data_directory)) == pid
    )
    with debian_cluster.connect() as conn:
        config_file = conn.execute("SHOW config_file").fetchone()[0]
        data_directory = conn.execute("SHOW data_directory").fetchone()[0]
    assert config_file == f"{debian_cluster.config_directory}/postgresql.conf"
    assert data_directory == str(cluster_dir)
    assert control.cluster_info()["running"] == 1, "pg_lsclusters sees it online"

    control.stop("fast")
    assert control.status() == "stopped" and postmaster_pid(cluster_dir) is None
    assert control.cluster_info()["running"] == 0

    # a recovery's start: only until the postmaster is up
    recovery_log = debian_cluster.work / "start_no_wait.log"
    recovery_log.touch()
    shutil.chown(recovery_log, "postgres")
    pid = control.start(wait=False, log_file=recovery_log)
    assert postmaster_pid(cluster_dir) == pid
    assert wait_until_accepting(cluster_dir, 30)
    assert "database system is ready to accept connections" in recovery_log.read_text()
    control.stop("immediate")
    assert control.status() == "stopped"


def test_a_plan_naming_another_data_directory_is_refused_before_anything_starts(debian_cluster):
    debian_cluster.control().stop("fast")
    elsewhere = PgCtlClusterControl(VERSION, debian_cluster.name, DATA_ROOT / "elsewhere", BIN)
    with pytest.raises(InvalidInput) as refused:
        elsewhere.start(wait=True)
    assert str(refused.value).startswith(f"data_directory: the plan says {DATA_ROOT}/elsewhere")
    assert str(debian_cluster.data_directory) in str(refused.value)
    assert debian_cluster.control().status() == "stopped", "nothing was started"


# --- the dependency recovery ---------------------------------------------------------------


def test_the_dependency_recovery_starts_the_debian_cluster(debian_cluster):
    plan = debian_cluster.plan()
    run_state = {"environment": "drill", "dry_run": False}
    access = SystemAccess(
        conninfo=lambda conn_id, dbname: debian_cluster.endpoint.conninfo(dbname or "postgres"),
        controller=None,  # type: ignore[arg-type]  (the database layer needs no controller)
        url=None,  # type: ignore[arg-type]
    )
    debian_cluster.control().stop("immediate")  # the host rebooted, PostgreSQL did not start
    opened, detail = gate_check(plan, "database", access)(run_state)
    assert not opened, detail

    result = recover_layer(plan, run_state, "database", access)
    assert result["actions"] == {"main": "started with pg_ctlcluster"}
    opened, detail = gate_check(plan, "database", access)(run_state)
    assert opened, detail
    with debian_cluster.connect("tracktion") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)

    again = recover_layer(plan, run_state, "database", access)
    assert again["actions"] == {"main": "healthy, left alone"}


# --- point-in-time recovery ------------------------------------------------------------------


def switch_and_archive(cluster: DebianCluster) -> None:
    with cluster.connect() as conn:
        segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        deadline = time.monotonic() + 60
        while not segment_archived(conn, segment):
            assert time.monotonic() < deadline, f"{segment} was not archived"
            time.sleep(0.1)


def unique_incident_id() -> str:
    """An incident id no other session uses (it names files beside the data directories)."""
    moment = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=random.randrange(10**8))
    return moment.strftime("DR-%Y%m%d-%H%M%S")


def test_point_in_time_recovery_started_through_pg_ctlcluster(debian_cluster):
    ensure_running(debian_cluster)
    plan = debian_cluster.plan()
    cluster = plan.environment("drill").clusters["main"]
    data = debian_cluster.data_directory
    configuration = config_fingerprint(debian_cluster.config_directory)

    base = take_base_backup(
        debian_cluster.endpoint, debian_cluster.base, label_prefix="dr-debian-test", bindir=BIN
    )
    with debian_cluster.connect("tracktion") as conn:
        # written after the base backup: only the archived WAL holds these rows
        conn.execute("CREATE TABLE tracks (id int PRIMARY KEY, title text NOT NULL)")
        conn.execute("INSERT INTO tracks SELECT i, md5(i::text) FROM generate_series(1, 500) AS i")
        expected = conn.execute("SELECT id, title FROM tracks ORDER BY id").fetchall()
        target = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        conn.execute("INSERT INTO tracks VALUES (1001, 'written after the target')")
        conn.execute("DROP TABLE tracks")  # the incident
    switch_and_archive(debian_cluster)

    incident = {"environment": "drill", "incident_id": unique_incident_id()}
    pitr_plan = guard_pitr(
        plan, incident, {"cluster": "main", "target_type": "lsn", "target": target}
    )
    paths = paths_from_plan(cluster, pitr_plan)
    debian_cluster.leftovers += [paths.log_file, paths.salvage]
    assert pitr_plan["base_backup"]["path"] == str(base)

    staged = stage_recovery(cluster, pitr_plan)  # beside the live cluster, verified there
    assert "backup successfully verified" in staged, staged
    notes = prepare_data_directory(cluster, pitr_plan)
    assert "stopped (fast)" in notes and f"old data directory kept at {paths.aside}" in notes
    # the recovery settings where PostgreSQL reads them on a Debian layout: the signal file
    # and postgresql.auto.conf in the data directory; /etc untouched
    assert (data / "recovery.signal").exists() and not (data / "standby.signal").exists()
    assert "restore_command" in (data / "postgresql.auto.conf").read_text()
    assert not (data / "postgresql.conf").exists(), "the configuration stays in /etc"
    assert config_fingerprint(debian_cluster.config_directory) == configuration

    assert start_recovery_server(cluster, pitr_plan).startswith("started (pid")
    deadline = time.monotonic() + 180
    while True:
        reached, detail = recovery_target_reached(
            cluster, pitr_plan, debian_cluster.endpoint.conninfo("postgres")
        )
        if reached:
            break
        assert time.monotonic() < deadline, detail
        time.sleep(0.2)
    assert "paused at the target" in detail
    with debian_cluster.connect() as conn:
        assert conn.execute("SHOW config_file").fetchone()[0] == (
            f"{debian_cluster.config_directory}/postgresql.conf"
        ), "started with the Debian configuration (pg_ctlcluster)"
    assert "recovery stopping after WAL location" in paths.log_file.read_text()

    promoted = promote_recovered(cluster, pitr_plan, debian_cluster.endpoint)
    assert promoted.startswith("promoted; now on timeline 2")
    with debian_cluster.connect("tracktion") as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
        assert conn.execute("SELECT id, title FROM tracks ORDER BY id").fetchall() == expected
    assert not (data / "recovery.signal").exists()
    assert "restore_command" not in (data / "postgresql.auto.conf").read_text()
    assert paths.aside.is_dir(), "the replaced data directory is kept, never deleted"
    assert config_fingerprint(debian_cluster.config_directory) == configuration

    # the recovered cluster is an ordinary Debian cluster again: restarted the host's way,
    # it comes back as the primary with the recovered rows
    control = cluster_control(cluster)
    control.stop("fast")
    control.start(wait=True)
    with debian_cluster.connect("tracktion") as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
        assert conn.execute("SELECT count(*) FROM tracks").fetchone()[0] == len(expected)
