"""The sandbox's three PostgreSQL 15 clusters: primary, streaming replica, and ops.

Why three real clusters and not mocks: the DR DAGs restore base backups, replay WAL, fail
over to a standby and record their runs in a ledger that must outlive a recovery of the
primary. Those paths only mean something against real servers, so the sandbox makes them:

* **primary** (``PRIMARY_PORT``) holds the Tracktion database, archives every WAL segment
  zstd-compressed into ``layout.wal_archive`` and feeds the replica through the
  ``replica_slot`` slot;
* **replica** (``REPLICA_PORT``) is a hot standby made with ``pg_basebackup -R``; it also
  knows ``restore_command`` so it can catch up from the archive after a long outage;
* **ops** (``OPS_PORT``) holds ``dr_ledger`` only, on its own cluster so recovering (or
  breaking) the primary never touches the DR run records.

Everything here is idempotent: ``up`` creates what is missing and starts what is stopped,
but never re-initialises or re-seeds a cluster that already has data. PostgreSQL refuses
to run as root, so server-side binaries run as the ``postgres`` OS user through
``runuser`` (argument lists, never a shell); every directory the server writes is
chowned to that user. Passwords reach PostgreSQL only through a 0600 ``--pwfile``,
``PGPASSWORD`` in a child's environment, or as a client-side SCRAM verifier, so they never
appear on a command line or in a log.
"""

from __future__ import annotations

import errno
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tracktion_dr.postgres import pitr, wal
from tracktion_sandbox import topology
from tracktion_sandbox.layout import (
    APP_DATABASE,
    APP_USER,
    HOST,
    LEDGER_DATABASE,
    OPS_PORT,
    OS_USER,
    PRIMARY_PORT,
    REPLICA_PORT,
    REPLICATION_USER,
    SUPERUSER,
    SandboxLayout,
)
from tracktion_sandbox.secrets import SandboxSecrets

log = logging.getLogger(__name__)

PG_MAJOR = 15
DEFAULT_BINDIR = Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")
BINDIR_ENV = "DR_PG_BINDIR"  # optional override, e.g. a source build
REQUIRED_BINARIES = (
    "initdb",
    "pg_ctl",
    "postgres",
    "pg_basebackup",
    "pg_dump",
    "pg_restore",
    "pg_verifybackup",
    "pg_waldump",
)
REPLICA_SLOT = "replica_slot"
REPLICA_APPLICATION_NAME = "replica"
CONF_INCLUDE_FILE = "sandbox.conf"  # rendered by us on every up(); postgresql.conf includes it
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
CONNECT_TIMEOUT_S = 5
STREAMING_WAIT_S = 30
PORT_RELEASE_WAIT_S = 70  # a TIME_WAIT lasts 60 s on Linux


class SandboxPostgresError(RuntimeError):
    """A sandbox PostgreSQL step failed; the message says which step and what to do."""


@dataclass(frozen=True)
class Cluster:
    """One cluster of the sandbox: its name, data directory and port."""

    name: str
    data_dir: Path
    port: int

    def log_file(self, layout: SandboxLayout) -> Path:
        return postgres_log_dir(layout) / f"{self.name}.log"

    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()


def clusters(layout: SandboxLayout) -> dict[str, Cluster]:
    """The three clusters keyed by name, in start order."""
    return {
        "primary": Cluster("primary", layout.primary_data, PRIMARY_PORT),
        "replica": Cluster("replica", layout.replica_data, REPLICA_PORT),
        "ops": Cluster("ops", layout.ops_data, OPS_PORT),
    }


def postgres_log_dir(layout: SandboxLayout) -> Path:
    """Server logs live in a postgres-owned subfolder of the shared ``layout.logs``."""
    return layout.logs / "postgres"


# --------------------------------------------------------------------------- binaries, processes


def find_bindir() -> Path:
    """Locate the PostgreSQL 15 server binaries (``$DR_PG_BINDIR``, Debian's path, pg_config)."""
    candidates: list[Path] = []
    if os.environ.get(BINDIR_ENV):
        candidates.append(Path(os.environ[BINDIR_ENV]))
    candidates.append(DEFAULT_BINDIR)
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if result.returncode == 0 and result.stdout.strip():
            candidates.append(Path(result.stdout.strip()))
    for bindir in candidates:
        if all((bindir / name).is_file() for name in REQUIRED_BINARIES):
            return bindir
    raise SandboxPostgresError(
        f"PostgreSQL server binaries not found in {DEFAULT_BINDIR} "
        f"(also tried ${BINDIR_ENV} and pg_config): install Debian's postgresql-{PG_MAJOR} "
        f"package (needs {', '.join(REQUIRED_BINARIES)})"
    )


def require_server_binaries() -> Path:
    """Fail early, with the install hint, when PostgreSQL 15 is missing; return its bindir."""
    return find_bindir()


def as_postgres(argv: Sequence[str]) -> list[str]:
    """Prefix ``argv`` so it runs as the postgres OS user (server binaries refuse root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", OS_USER, "--", *argv]
    if pwd.getpwuid(os.geteuid()).pw_name == OS_USER:
        return list(argv)
    raise SandboxPostgresError(
        f"the sandbox's PostgreSQL clusters must be managed as root or as the {OS_USER!r} "
        f"OS user, not as {pwd.getpwuid(os.geteuid()).pw_name!r}"
    )


def run(
    argv: Sequence[str],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 600,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command (argument list, no shell) and raise with its stderr if it fails.

    ``argv`` must never hold a secret: passwords go through ``env`` only, which is not logged.
    """
    log.debug("running %s: %s", what, " ".join(argv))
    try:
        result = subprocess.run(
            list(argv),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise SandboxPostgresError(f"{what} did not finish within {timeout:.0f} s") from exc
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()[-2000:]
        raise SandboxPostgresError(f"{what} failed (exit {result.returncode}): {detail}")
    return result


def _postgres_ids() -> tuple[int, int]:
    entry = pwd.getpwnam(OS_USER)
    return entry.pw_uid, entry.pw_gid


def chown_to_postgres(path: Path, *, recursive: bool = False) -> None:
    """Hand ``path`` (and, if asked, everything below it) to the postgres OS user."""
    if os.geteuid() != 0:
        return  # already running as postgres: files are ours
    uid, gid = _postgres_ids()
    os.chown(path, uid, gid, follow_symlinks=False)
    if recursive and path.is_dir():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(Path(root) / name, uid, gid, follow_symlinks=False)


def port_open(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def connect(
    port: int, user: str, password: str, dbname: str, *, autocommit: bool = True
) -> psycopg.Connection[Any]:
    """Connect over TCP with a password (root cannot use peer auth as another user)."""
    return psycopg.connect(
        host=HOST,
        port=port,
        user=user,
        password=password,
        dbname=dbname,
        connect_timeout=CONNECT_TIMEOUT_S,
        application_name="tracktion-sandbox",
        autocommit=autocommit,
    )


def app_dsn(secrets: SandboxSecrets, port: int = PRIMARY_PORT) -> str:
    """libpq DSN of the application role (holds the password: never log it)."""
    return psycopg.conninfo.make_conninfo(
        host=HOST,
        port=str(port),
        user=APP_USER,
        password=secrets.app_password,
        dbname=APP_DATABASE,
        connect_timeout=str(CONNECT_TIMEOUT_S),
    )


# --------------------------------------------------------------------------- directories


def _make_postgres_dir(path: Path, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    chown_to_postgres(path)
    path.chmod(mode)


def _allow_traverse(path: Path) -> None:
    """Add the search bit for others on a root-owned folder the server must pass through."""
    mode = path.stat().st_mode & 0o7777
    if not mode & 0o001:
        path.chmod(mode | 0o011)


def prepare_directories(layout: SandboxLayout) -> None:
    """Create the folders the servers write, owned by postgres, and check it can reach them."""
    for folder in (layout.home, layout.backups, layout.logs):
        folder.mkdir(parents=True, exist_ok=True)
        _allow_traverse(folder)
    _make_postgres_dir(layout.pg_root, 0o755)
    _make_postgres_dir(layout.pg_socket_dir, 0o755)
    _make_postgres_dir(layout.wal_archive, 0o750)
    _make_postgres_dir(postgres_log_dir(layout), 0o750)
    for folder in (layout.pg_root, layout.wal_archive, postgres_log_dir(layout)):
        probe = run(as_postgres(["test", "-w", str(folder)]), what="access check", check=False)
        if probe.returncode != 0:
            raise SandboxPostgresError(
                f"the {OS_USER!r} OS user cannot write {folder}: every parent folder of the "
                f"sandbox home {layout.home} must be traversable by it (chmod o+x)"
            )


# --------------------------------------------------------------------------- configuration


def _conf_quote(value: str) -> str:
    """Quote a postgresql.conf string value (backslash and quote are special there)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def archive_command(archive: Path) -> str:
    """The library's ``archive_command`` (segments stored as ``<segment>.zst``, never
    overwriting a different file; see ``tracktion_dr.postgres.wal.archive_command``): the
    sandbox archives exactly as the plan's production servers are told to."""
    return wal.archive_command(archive)


def restore_command(archive: Path) -> str:
    """Decompresses ``<segment>.zst``, copies a plain one (``pitr.restore_command_for``)."""
    return pitr.restore_command_for(archive)


def _settings(cluster: Cluster, layout: SandboxLayout, *, standby: bool) -> dict[str, str]:
    settings: dict[str, str] = {
        "listen_addresses": _conf_quote(HOST),
        "port": str(cluster.port),
        "unix_socket_directories": _conf_quote(str(layout.pg_socket_dir)),
        "max_connections": "60" if cluster.name != "ops" else "30",
        "shared_buffers": "64MB" if cluster.name != "ops" else "16MB",
        "timezone": _conf_quote("UTC"),
        "log_timezone": _conf_quote("UTC"),
        "log_line_prefix": _conf_quote("%m [%p] %q%u@%d "),
        "log_checkpoints": "on",
        "password_encryption": _conf_quote("scram-sha-256"),
        "wal_level": "replica",
        # Off, as in production: archived segments are zstd-compressed whole, which shrinks
        # full-page images better than wal_compression's per-page zstd does (measured:
        # bench/results/backup_compression.md, "Archived WAL").
        "wal_compression": "off",
        "max_wal_senders": "10",
        "max_replication_slots": "10",
        # A stopped replica must not fill the disk through its slot.
        "max_slot_wal_keep_size": _conf_quote("2GB"),
        "hot_standby": "on",
    }
    if cluster.name in ("primary", "replica"):
        # On the standby archive_mode=on stays idle until it is promoted, then the new
        # timeline is archived beside the old one: what a failover needs.
        settings.update(
            {
                "archive_mode": "on",
                "archive_command": _conf_quote(archive_command(layout.wal_archive)),
                "archive_timeout": "60",
            }
        )
    else:
        settings["archive_mode"] = "off"
    if cluster.name == "replica" or standby:
        # Any standby (the replica, or the old primary rebuilt as a standby of the promoted
        # replica after a failover) can catch up from the archive after a long outage.
        settings["restore_command"] = _conf_quote(restore_command(layout.wal_archive))
        settings["hot_standby_feedback"] = "on"
    return settings


def _write_postgres_file(path: Path, text: str) -> None:
    """Write a file inside a data directory atomically, 0600 and owned by postgres."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    chown_to_postgres(tmp)
    os.replace(tmp, path)


def write_config(cluster: Cluster, layout: SandboxLayout, data_dir: Path | None = None) -> None:
    """Render ``sandbox.conf`` and pg_hba.conf; make postgresql.conf include the former."""
    target = data_dir or cluster.data_dir
    lines = [f"# Written by tracktion_sandbox.pg for the {cluster.name} cluster; edits are lost."]
    standby = (target / "standby.signal").exists()
    settings = _settings(cluster, layout, standby=standby)
    lines += [f"{key} = {value}" for key, value in settings.items()]
    _write_postgres_file(target / CONF_INCLUDE_FILE, "\n".join(lines) + "\n")
    hba = [
        "# Written by tracktion_sandbox.pg. TYPE DATABASE USER ADDRESS METHOD",
        "local   all          all                    peer",
        f"host    all          all          {HOST}/32   scram-sha-256",
        f"host    replication  all          {HOST}/32   scram-sha-256",
    ]
    _write_postgres_file(target / "pg_hba.conf", "\n".join(hba) + "\n")
    _drop_copied_port(target)
    main_conf = target / "postgresql.conf"
    include = f"include_if_exists = {_conf_quote(CONF_INCLUDE_FILE)}"
    if include not in main_conf.read_text().splitlines():
        with main_conf.open("a") as handle:
            handle.write(f"\n{include}\n")


def _drop_copied_port(data_dir: Path) -> None:
    """Remove ``port`` from postgresql.auto.conf: sandbox.conf names the directory's port.

    A re-seeded or rebuilt standby gets its port there (the DR library writes it, since the
    copy's configuration came from the other node), and pg_basebackup and pg_rewind copy
    that file: a primary rebuilt as a standby once and promoted back would hand its
    ``port = '55432'`` to the next replica cloned from it, read after sandbox.conf."""
    auto_conf = data_dir / "postgresql.auto.conf"
    if not auto_conf.exists():
        return
    lines = auto_conf.read_text().splitlines()
    kept = [line for line in lines if line.split("=", 1)[0].strip().lower() != "port"]
    if kept != lines:
        auto_conf.write_text("\n".join(kept) + "\n")  # keeps owner and mode


# --------------------------------------------------------------------------- cluster lifecycle


def _initdb(bindir: Path, data_dir: Path, password: str) -> None:
    """initdb with checksums and scram; the superuser password travels in a 0600 pwfile."""
    fd, pwfile_name = tempfile.mkstemp(prefix=".pwfile-", dir=data_dir.parent)
    pwfile = Path(pwfile_name)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(password + "\n")
        chown_to_postgres(pwfile)
        argv = [
            str(bindir / "initdb"),
            "-D",
            str(data_dir),
            "--data-checksums",
            "--auth-local=peer",
            "--auth-host=scram-sha-256",
            f"--username={SUPERUSER}",
            f"--pwfile={pwfile}",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        ]
        run(as_postgres(argv), what=f"initdb of {data_dir}", cwd=data_dir.parent)
    finally:
        pwfile.unlink(missing_ok=True)


def _staging_dir(cluster: Cluster) -> Path:
    """Where a new data directory is built before it is renamed into place."""
    return cluster.data_dir.with_name(f".{cluster.name}.building")


def _discard_staging(cluster: Cluster) -> Path:
    """Remove a half-built staging directory left by an interrupted up() (never real data)."""
    staging = _staging_dir(cluster)
    if staging.exists():
        log.warning("removing unfinished %s build left at %s", cluster.name, staging)
        shutil.rmtree(staging)
    return staging


def _check_empty_target(cluster: Cluster) -> None:
    if cluster.data_dir.exists() and any(cluster.data_dir.iterdir()):
        raise SandboxPostgresError(
            f"{cluster.data_dir} exists but holds no PostgreSQL cluster (no PG_VERSION): "
            "move it aside before running up again"
        )
    if cluster.data_dir.exists():
        cluster.data_dir.rmdir()


def _create_standalone(
    cluster: Cluster, layout: SandboxLayout, bindir: Path, password: str
) -> None:
    """initdb into a staging folder, configure it, then rename it into place."""
    _check_empty_target(cluster)
    staging = _discard_staging(cluster)
    log.info("initialising the %s cluster in %s", cluster.name, cluster.data_dir)
    _initdb(bindir, staging, password)
    write_config(cluster, layout, staging)
    os.replace(staging, cluster.data_dir)


def _create_replica(layout: SandboxLayout, secrets: SandboxSecrets, bindir: Path) -> None:
    """Clone the primary with ``pg_basebackup -R`` (standby.signal + primary_conninfo)."""
    cluster = clusters(layout)["replica"]
    _check_empty_target(cluster)
    staging = _discard_staging(cluster)
    log.info("cloning the primary into the replica at %s", cluster.data_dir)
    conninfo = psycopg.conninfo.make_conninfo(
        host=HOST,
        port=str(PRIMARY_PORT),
        user=REPLICATION_USER,
        application_name=REPLICA_APPLICATION_NAME,
    )
    argv = [
        str(bindir / "pg_basebackup"),
        "-D",
        str(staging),
        "--write-recovery-conf",
        "--wal-method=stream",
        f"--slot={REPLICA_SLOT}",
        "--checkpoint=fast",
        "--no-password",
        f"--dbname={conninfo}",
    ]
    env = {**os.environ, "PGPASSWORD": secrets.replication_password}
    run(as_postgres(argv), what="pg_basebackup of the replica", env=env, cwd=layout.pg_root)
    write_config(cluster, layout, staging)
    os.replace(staging, cluster.data_dir)


def _pg_ctl_status(bindir: Path, cluster: Cluster) -> int:
    """0 running, 3 not running, 4 no usable data directory (pg_ctl's own codes)."""
    if not cluster.initialized:
        return 4
    argv = [str(bindir / "pg_ctl"), "status", "-D", str(cluster.data_dir)]
    return run(
        as_postgres(argv), what="pg_ctl status", cwd=cluster.data_dir.parent, check=False
    ).returncode


def _start(cluster: Cluster, layout: SandboxLayout, bindir: Path) -> None:
    if _pg_ctl_status(bindir, cluster) == 0:
        log.info("%s cluster already running on port %d", cluster.name, cluster.port)
        return
    if port_open(cluster.port):
        raise SandboxPostgresError(
            f"port {cluster.port} on {HOST} is taken by another process: the {cluster.name} "
            "cluster cannot start (see `ss -ltnp`)"
        )
    _wait_port_bindable(cluster)
    write_config(cluster, layout)  # pick up layout changes made since the last start
    log_file = cluster.log_file(layout)
    log.info("starting the %s cluster on port %d (log %s)", cluster.name, cluster.port, log_file)
    argv = [
        str(bindir / "pg_ctl"),
        "start",
        "-D",
        str(cluster.data_dir),
        "-l",
        str(log_file),
        "-w",
        "-t",
        str(START_TIMEOUT_S),
    ]
    try:
        run(as_postgres(argv), what=f"start of the {cluster.name} cluster", cwd=layout.pg_root)
    except SandboxPostgresError as exc:
        raise SandboxPostgresError(f"{exc}\nlast log lines:\n{_tail(log_file)}") from exc


def _wait_port_bindable(cluster: Cluster, timeout: float = PORT_RELEASE_WAIT_S) -> None:
    """Wait until the server could bind its port. The sandbox's ports lie in Linux's
    ephemeral range (32768-60999): a client connection that just closed may hold the
    port as its local end in TIME_WAIT (up to 60 s), and the postmaster's bind fails then
    although nothing listens (``SO_REUSEADDR`` helps only when both sockets set it). Seen
    after a failover, when clients talked to the promoted replica before the old primary
    came back on its port. ``sysctl net.ipv4.ip_local_reserved_ports`` avoids it."""
    deadline = time.monotonic() + timeout
    logged = False
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((HOST, cluster.port))
                return
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    raise SandboxPostgresError(
                        f"port {cluster.port} on {HOST} cannot be bound ({exc}): the "
                        f"{cluster.name} cluster cannot start (see `ss -tanp | grep "
                        f"{cluster.port}`; reserving the sandbox's ports with `sysctl -w "
                        "net.ipv4.ip_local_reserved_ports=55432-55434` avoids it)"
                    ) from None
        if not logged:
            log.warning(
                "port %d is held by a closed client connection (TIME_WAIT): waiting for it",
                cluster.port,
            )
            logged = True
        time.sleep(1)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _postmaster_pids(data_dir: Path) -> list[int]:
    """Postmasters started for ``data_dir`` (found by command line, so a data directory that
    was moved aside while its server ran is still found)."""
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            len(argv) >= 3
            and Path(argv[0].decode(errors="replace")).name == "postgres"
            and b"-D" in argv
            and argv[argv.index(b"-D") + 1 : argv.index(b"-D") + 2] == [str(data_dir).encode()]
        ):
            pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; an exited child awaiting its reaper (zombie) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _wait_gone(pids: Sequence[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _stop(cluster: Cluster, bindir: Path) -> None:
    """pg_ctl stop -m fast, then immediate; then signal any postmaster still running."""
    if _pg_ctl_status(bindir, cluster) == 0:
        for mode in ("fast", "immediate"):
            log.info("stopping the %s cluster (%s)", cluster.name, mode)
            argv = [
                str(bindir / "pg_ctl"),
                "stop",
                "-D",
                str(cluster.data_dir),
                "-m",
                mode,
                "-w",
                "-t",
                str(STOP_TIMEOUT_S),
            ]
            result = run(
                as_postgres(argv), what="pg_ctl stop", cwd=cluster.data_dir.parent, check=False
            )
            if result.returncode == 0:
                break
            log.warning("%s stop of %s failed: %s", mode, cluster.name, result.stderr.strip())
    pids = _postmaster_pids(cluster.data_dir)
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):  # fast, immediate, last resort
        if not pids:
            break
        log.warning("signalling leftover %s postmaster(s) %s with %s", cluster.name, pids, sig.name)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        _wait_gone(pids, STOP_TIMEOUT_S / 3)
        pids = _postmaster_pids(cluster.data_dir)
    if port_open(cluster.port):
        raise SandboxPostgresError(
            f"port {cluster.port} is still open after stopping the {cluster.name} cluster: "
            "another process listens there (see `ss -ltnp`)"
        )


# --------------------------------------------------------------------------- roles and databases


def _scram_verifier(conn: psycopg.Connection[Any], role: str, password: str) -> str:
    """Hash the password client-side so plain text never reaches a server log on error."""
    verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
    return verifier.decode()


def ensure_role(
    conn: psycopg.Connection[Any], role: str, password: str, *, replication: bool = False
) -> None:
    """Create a login role once; an existing role is left as it is."""
    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
        return
    log.info("creating role %s", role)
    options = sql.SQL("LOGIN REPLICATION") if replication else sql.SQL("LOGIN")
    conn.execute(
        sql.SQL("CREATE ROLE {} WITH {} PASSWORD {}").format(
            sql.Identifier(role), options, sql.Literal(_scram_verifier(conn, role, password))
        )
    )


def ensure_database(conn: psycopg.Connection[Any], name: str, owner: str) -> None:
    if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
        return
    log.info("creating database %s owned by %s", name, owner)
    conn.execute(
        sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(owner))
    )


def _ensure_slot(conn: psycopg.Connection[Any], slot: str) -> None:
    if conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone():
        return
    log.info("creating physical replication slot %s", slot)
    conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (slot,))


def _bootstrap_primary(secrets: SandboxSecrets, port: int = PRIMARY_PORT) -> None:
    """Roles, the app database, amcheck, the schema and the standby's slot (all idempotent),
    on the node that is the primary now (``port``)."""
    from tracktion_sandbox import schema

    with connect(port, SUPERUSER, secrets.postgres_password, "postgres") as conn:
        ensure_role(conn, APP_USER, secrets.app_password)
        ensure_role(conn, REPLICATION_USER, secrets.replication_password, replication=True)
        ensure_database(conn, APP_DATABASE, APP_USER)
        _ensure_slot(conn, REPLICA_SLOT)
    with connect(port, SUPERUSER, secrets.postgres_password, APP_DATABASE) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
    # Connected as the app role, so every object it creates is owned by it.
    with connect(port, APP_USER, secrets.app_password, APP_DATABASE, autocommit=False) as conn:
        schema.apply(conn)


def _wait_for_streaming(
    secrets: SandboxSecrets,
    timeout: float = STREAMING_WAIT_S,
    *,
    port: int = PRIMARY_PORT,
    application_name: str = REPLICA_APPLICATION_NAME,
) -> bool:
    """The standby announcing ``application_name`` streams from the primary on ``port``."""
    deadline = time.monotonic() + timeout
    query = "SELECT state FROM pg_stat_replication WHERE application_name = %s"
    while True:
        with connect(port, SUPERUSER, secrets.postgres_password, "postgres") as conn:
            row = conn.execute(query, (application_name,)).fetchone()
        if row and row[0] == "streaming":
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def _refuse_orphaned_history(layout: SandboxLayout) -> None:
    """A fresh primary beside an old replica or WAL archive would fork history silently."""
    if clusters(layout)["primary"].initialized:
        return
    leftovers = []
    if clusters(layout)["replica"].initialized:
        leftovers.append(f"replica data in {layout.replica_data}")
    if layout.wal_archive.is_dir() and any(
        not p.name.startswith(".") for p in layout.wal_archive.iterdir()
    ):
        leftovers.append(f"archived WAL in {layout.wal_archive}")
    if leftovers:
        raise SandboxPostgresError(
            f"the primary data directory {layout.primary_data} is missing but "
            f"{' and '.join(leftovers)} remain: recover the primary (e.g. dr_database_restore) "
            "or start from an empty sandbox home; up() will not initialise a new primary here"
        )


# --------------------------------------------------------------------------- public API


def up(
    layout: SandboxLayout,
    secrets: SandboxSecrets,
    *,
    seed: Callable[[str], None],
    initial_backups: Callable[[], None],
) -> None:
    """Create what is missing and start what is stopped: primary, replica, ops.

    ``seed(dsn)`` fills the primary with Tracktion data and ``initial_backups()`` takes the
    first logical dump and base backup (both idempotent; the caller, ``cli.up``, owns them,
    so this module needs neither the generator nor the backups module).
    """
    bindir = find_bindir()
    log.info("using PostgreSQL binaries in %s", bindir)
    prepare_directories(layout)
    found = _topology(layout)
    if found.kind != "standard":
        _up_after_failover(layout, secrets, bindir, found, seed, initial_backups)
        return
    _refuse_orphaned_history(layout)
    by_name = clusters(layout)

    primary = by_name["primary"]
    if not primary.initialized:
        _create_standalone(primary, layout, bindir, secrets.postgres_password)
    _start(primary, layout, bindir)
    _bootstrap_primary(secrets)
    seed(app_dsn(secrets))

    replica = by_name["replica"]
    if not replica.initialized:
        _create_replica(layout, secrets, bindir)
    _start(replica, layout, bindir)

    _ops_up(layout, secrets, bindir)

    initial_backups()
    if _wait_for_streaming(secrets):
        log.info("replica is streaming from the primary")
    else:
        log.warning(
            "replica is not streaming after %d s: see %s",
            STREAMING_WAIT_S,
            replica.log_file(layout),
        )


def _ops_up(layout: SandboxLayout, secrets: SandboxSecrets, bindir: Path) -> None:
    ops = clusters(layout)["ops"]
    if not ops.initialized:
        _create_standalone(ops, layout, bindir, secrets.postgres_password)
    _start(ops, layout, bindir)
    with connect(OPS_PORT, SUPERUSER, secrets.postgres_password, "postgres") as conn:
        ensure_database(conn, LEDGER_DATABASE, SUPERUSER)


def _topology(layout: SandboxLayout) -> topology.Topology:
    """Which node is the primary now (see ``topology``); a refusal says what to run."""
    try:
        found = topology.detect(layout)
    except topology.TopologyError as exc:
        raise SandboxPostgresError(str(exc)) from None
    log.info("database topology: %s", found.describe())
    return found


def _up_after_failover(
    layout: SandboxLayout,
    secrets: SandboxSecrets,
    bindir: Path,
    found: topology.Topology,
    seed: Callable[[str], None],
    initial_backups: Callable[[], None],
) -> None:
    """Start the promoted replica as the primary and, when the old primary was rebuilt as
    its standby, that standby; a fenced old primary stays stopped (the message says what
    to run). Nothing is created here: both data directories exist."""
    by_name = clusters(layout)
    primary = by_name[found.primary.name]
    # Every server binds its port before the first client connection: the sandbox's
    # ports lie in Linux's ephemeral range, and a client socket to the promoted replica
    # closed moments ago can hold the old primary's port (TIME_WAIT) so that it cannot
    # bind. (The standard order starts the primary first for the same reason.)
    _start(primary, layout, bindir)
    if found.standby is not None:
        _start(by_name[found.standby.name], layout, bindir)
    if by_name["ops"].initialized:
        _start(by_name["ops"], layout, bindir)
    _bootstrap_primary(secrets, primary.port)
    seed(app_dsn(secrets, primary.port))
    _ops_up(layout, secrets, bindir)
    initial_backups()
    if found.standby is None:
        stopped = found.stopped.describe() if found.stopped else "the old primary is missing"
        log.warning(
            "running on the promoted %s alone (no standby): %s. To restore redundancy, %s",
            found.primary.name,
            stopped,
            topology.REBUILD_HINT,
        )
        return
    if _wait_for_streaming(secrets, port=primary.port, application_name=found.standby.name):
        log.info(
            "node %s streams from node %s (the primary now)", found.standby.name, found.primary.name
        )
    else:
        log.warning(
            "%s is not streaming from %s after %d s: see %s",
            found.standby.name,
            found.primary.name,
            STREAMING_WAIT_S,
            by_name[found.standby.name].log_file(layout),
        )


def down(layout: SandboxLayout) -> None:
    """Stop all three clusters (fast, then immediate) and leave no process or open port."""
    bindir = find_bindir()
    errors: list[str] = []
    for cluster in clusters(layout).values():
        try:
            _stop(cluster, bindir)
        except SandboxPostgresError as exc:
            errors.append(str(exc))
    if errors:
        raise SandboxPostgresError("; ".join(errors))
    log.info("all sandbox PostgreSQL clusters are stopped")


def stop_cluster(layout: SandboxLayout, name: str) -> None:
    """Stop one cluster (tests: e.g. the ops cluster, to show a recovery runs without its
    ledger)."""
    _stop(clusters(layout)[name], find_bindir())


def start_cluster(layout: SandboxLayout, name: str) -> None:
    _start(clusters(layout)[name], layout, find_bindir())


def status(layout: SandboxLayout) -> dict[str, Any]:
    """Per cluster: data dir, port, initialised, running, pid, standby, accepting TCP."""
    try:
        bindir: Path | None = find_bindir()
    except SandboxPostgresError as exc:
        return {"error": str(exc)}
    report: dict[str, Any] = {"bindir": str(bindir)}
    for name, cluster in clusters(layout).items():
        pids = _postmaster_pids(cluster.data_dir)
        report[name] = {
            "data_dir": str(cluster.data_dir),
            "port": cluster.port,
            "initialized": cluster.initialized,
            "running": _pg_ctl_status(bindir, cluster) == 0,
            "pid": pids[0] if pids else None,
            "standby": (cluster.data_dir / "standby.signal").exists(),
            "fenced": (cluster.data_dir / topology.FENCE_NOTE).exists(),
            "accepting": port_open(cluster.port),
            "log": str(cluster.log_file(layout)),
        }
    return report
