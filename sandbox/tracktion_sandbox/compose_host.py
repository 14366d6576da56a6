"""The stand-in hosts of the compose deployment's ``topology`` profile.

In the sandbox every part of Tracktion production runs in one process space. The compose
``topology`` profile (docker-compose.yaml) makes the hosts containers instead, each with a
Celery worker consuming that host's queue, so a DR task runs on the host it acts on. This
module is the entry point of such a host container; it builds on the sandbox's own code
(``pg``, ``generate``, ``backups``, ``supervisor``) rather than repeating it:

``python -m tracktion_sandbox.compose_host db-primary``
    The container's command: writes supervisord.conf (the sandbox's renderer) with two
    programs, the PostgreSQL keeper below and ``airflow celery worker --queues
    host_db_primary``, then becomes ``supervisord -n``.

``python -m tracktion_sandbox.compose_host db-replica``
    The same with the streaming standby and ``--queues host_db_replica``.

``python -m tracktion_sandbox.compose_host app``
    The application host: the four services, the stand-in third party (two delivery
    gateways), the canary, supervisord's XML-RPC (the plan's controller) and ``airflow
    celery worker --queues host_app``; the application's files and storage (first start:
    the sandbox's app files, sample audio and initial snapshots).

``python -m tracktion_sandbox.compose_host ops-db``
    The ledger's own cluster (``ops``, database ``dr_ledger``): no worker, no DR step acts
    on it locally.

``python -m tracktion_sandbox.compose_host load-balancer|notification-sink|s3``
    The load balancer (its backends are the containers: app:1800x, db-primary:55432,
    db-replica:55433), the notification sink (HTTP and SMTP) and moto's server standing in
    for AWS (the sandbox's buckets and hosted zone made after it answers).

``python -m tracktion_sandbox.compose_host serve MODULE [ARGS...]``
    Runs a sandbox program (``service``, ``provider``, ``load_balancer``, ``sink``)
    listening on every interface of its container instead of 127.0.0.1: its peers are
    other containers.

``python -m tracktion_sandbox.compose_host env [FILE]``
    The Airflow connections of the topology (the sandbox's, ``connections.py``, with each
    endpoint's container as its host) as an env file for docker-compose (``KEY=VALUE``
    lines; scripts/deploy-env.sh writes ``deploy/topology.env`` with it).

``python -m tracktion_sandbox.compose_host keep-postgres primary|replica|ops``
    The keeper: creates the cluster when missing (primary: initdb, roles, schema, seed data,
    first backups, as ``tracktion_sandbox up`` does; replica: ``pg_basebackup -R`` from the
    primary host ``$DR_PRIMARY_HOST``), starts it with ``pg_ctl`` and then only waits for
    the container to stop, when it stops the cluster cleanly. PostgreSQL is not a
    supervisord program of its own on purpose: the DR tasks on this host stop and start it
    with ``pg_ctl`` (the plan's controller), and a supervisor restarting it behind their
    back would fight a recovery.

The cluster keeps the sandbox's layout (``$DR_SANDBOX_HOME``) and port; it listens on every
interface of the container and accepts password (scram) logins and replication from the
compose network only (``samenet``). Secrets: the sandbox secrets file, mounted read-only from
``deploy/secrets/sandbox-secrets.json`` (scripts/deploy-env.sh makes it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psycopg

from tracktion_sandbox import backups, generate, pg, supervisor
from tracktion_sandbox import layout as layout_mod
from tracktion_sandbox.layout import PRIMARY_PORT, REPLICATION_USER, SandboxLayout
from tracktion_sandbox.secrets import SandboxSecrets, load_or_create

log = logging.getLogger("tracktion_sandbox.compose_host")

# Each host's Celery queue; the plan's hosts (include/config/compose.yaml) name the same.
HOST_QUEUES = {"db-primary": "host_db_primary", "db-replica": "host_db_replica", "app": "host_app"}
HOST_CLUSTERS = {"db-primary": "primary", "db-replica": "replica", "ops-db": "ops"}
# The containers (compose service names, resolvable on the compose network).
DB_PRIMARY, DB_REPLICA, APP, OPS_DB = "db-primary", "db-replica", "app", "ops-db"
LOAD_BALANCER, SINK, S3 = "load-balancer", "notification-sink", "s3"
BIND_ALL = "0.0.0.0"  # noqa: S104 - a container's peers are other containers
PRIMARY_HOST_ENV = "DR_PRIMARY_HOST"  # where the replica host finds the primary
NETWORK_CONF_FILE = "compose.conf"  # included after the sandbox's own sandbox.conf
SEED_SIZE_ENV = "DR_SANDBOX_SEED_SIZE"
HOST_STOP_SECONDS = 60
HOST_UMASK = 0o002  # see run_worker


# --------------------------------------------------------------------------- PostgreSQL


def _network_settings(cluster: pg.Cluster) -> None:
    """Listen on the container's interfaces: the sandbox binds 127.0.0.1, a host serves peers.

    ``compose.conf`` is included after ``sandbox.conf`` (which ``pg.write_config`` rewrites on
    every start), so its ``listen_addresses`` wins and survives those rewrites.
    """
    pg._write_postgres_file(  # the sandbox's own atomic write
        cluster.data_dir / NETWORK_CONF_FILE,
        "# Written by tracktion_sandbox.compose_host: a host of the compose topology.\n"
        "listen_addresses = '*'\n",
    )
    main_conf = cluster.data_dir / "postgresql.conf"
    include = f"include_if_exists = '{NETWORK_CONF_FILE}'"
    if include not in main_conf.read_text().splitlines():
        with main_conf.open("a") as handle:
            handle.write(f"\n{include}\n")


def _network_hba(cluster: pg.Cluster) -> None:
    """Password logins and replication from the compose network (the sandbox's hba allows
    127.0.0.1 only; ``pg.start_cluster`` rewrites it, so this runs after every start)."""
    pg._write_postgres_file(
        cluster.data_dir / "pg_hba.conf",
        "# Written by tracktion_sandbox.compose_host. TYPE DATABASE USER ADDRESS METHOD\n"
        "local   all          all                 peer\n"
        "host    all          all   127.0.0.1/32  scram-sha-256\n"
        "host    replication  all   127.0.0.1/32  scram-sha-256\n"
        "host    all          all   samenet       scram-sha-256\n"
        "host    replication  all   samenet       scram-sha-256\n",
    )
    bindir = pg.find_bindir()
    pg.run(
        pg.as_postgres([str(bindir / "pg_ctl"), "reload", "-D", str(cluster.data_dir)]),
        what=f"reload of the {cluster.name} cluster",
        cwd=cluster.data_dir.parent,
    )


def bring_up_primary(layout: SandboxLayout) -> pg.Cluster:
    """Create (first start only) and start the primary; idempotent like ``cli.up``."""
    secrets = load_or_create(layout)
    bindir = pg.require_server_binaries()
    pg.prepare_directories(layout)
    cluster = pg.clusters(layout)["primary"]
    if not cluster.initialized:
        pg._create_standalone(cluster, layout, bindir, secrets.postgres_password)
    _network_settings(cluster)
    pg.start_cluster(layout, "primary")
    _network_hba(cluster)
    pg._bootstrap_primary(secrets)  # roles, database, schema (idempotent)
    size = os.environ.get(SEED_SIZE_ENV, "30MB")
    log.info("tracktion data: %s", generate.generate(pg.app_dsn(secrets), size=size))
    log.info("initial backups: %s", backups.take_initial_backups(layout, secrets))
    return cluster


def _clone_primary(layout: SandboxLayout, primary_host: str) -> None:
    """Make the replica with ``pg_basebackup -R`` from the primary host, as the sandbox's
    ``pg._create_replica`` does from 127.0.0.1: staging folder, slot, then rename."""
    secrets = load_or_create(layout)
    bindir = pg.require_server_binaries()
    cluster = pg.clusters(layout)["replica"]
    pg._check_empty_target(cluster)
    staging = pg._discard_staging(cluster)
    log.info("cloning the primary on %s into %s", primary_host, cluster.data_dir)
    conninfo = psycopg.conninfo.make_conninfo(
        host=primary_host,
        port=str(PRIMARY_PORT),
        user=REPLICATION_USER,
        application_name=pg.REPLICA_APPLICATION_NAME,
    )
    argv = [
        str(bindir / "pg_basebackup"),
        "-D",
        str(staging),
        "--write-recovery-conf",
        "--wal-method=stream",
        f"--slot={pg.REPLICA_SLOT}",
        "--checkpoint=fast",
        "--no-password",
        f"--dbname={conninfo}",
    ]
    env = {**os.environ, "PGPASSWORD": secrets.replication_password}
    pg.run(pg.as_postgres(argv), what="pg_basebackup of the replica", env=env, cwd=layout.pg_root)
    pg.write_config(cluster, layout, staging)
    os.replace(staging, cluster.data_dir)


def bring_up_replica(layout: SandboxLayout) -> pg.Cluster:
    """Clone (first start only) and start the streaming standby of the primary host."""
    pg.require_server_binaries()
    pg.prepare_directories(layout)
    cluster = pg.clusters(layout)["replica"]
    if not cluster.initialized:
        _clone_primary(layout, os.environ.get(PRIMARY_HOST_ENV, "db-primary"))
    _network_settings(cluster)
    pg.start_cluster(layout, "replica")
    _network_hba(cluster)
    return cluster


def bring_up_ops(layout: SandboxLayout) -> pg.Cluster:
    """Create (first start only) and start the ledger's cluster, as ``pg.up`` does."""
    secrets = load_or_create(layout)
    bindir = pg.require_server_binaries()
    pg.prepare_directories(layout)
    cluster = pg.clusters(layout)["ops"]
    if not cluster.initialized:
        pg._create_standalone(cluster, layout, bindir, secrets.postgres_password)
    _network_settings(cluster)
    pg.start_cluster(layout, "ops")
    _network_hba(cluster)
    with pg.connect(
        layout_mod.OPS_PORT, layout_mod.SUPERUSER, secrets.postgres_password, "postgres"
    ) as conn:
        pg.ensure_database(conn, layout_mod.LEDGER_DATABASE, layout_mod.SUPERUSER)
    return cluster


BRING_UP = {"primary": bring_up_primary, "replica": bring_up_replica, "ops": bring_up_ops}


def keep_postgres(layout: SandboxLayout, name: str) -> int:
    """Bring the cluster up, then hold until SIGTERM/SIGINT and stop it cleanly."""
    # The worker's Airflow settings (metadata DB URL, keys) are in this container's
    # environment; the server and its archive_command have no use for them.
    for key in [k for k in os.environ if k.startswith("AIRFLOW")]:
        del os.environ[key]
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    cluster = BRING_UP[name](layout)
    log.info("the %s cluster is up; waiting for the container to stop", cluster.name)
    stop.wait()
    log.info("stopping the %s cluster", cluster.name)
    pg.stop_cluster(layout, name)
    return 0


# --------------------------------------------------------------------------- the host


def _worker(host: str, layout: SandboxLayout) -> supervisor.Program:
    return supervisor.Program(
        name="airflow-worker",
        command=[sys.executable, "-m", "tracktion_sandbox.compose_host", "worker", host],
        environment={"DR_SANDBOX_HOME": str(layout.home)},
    )


def run_worker(host: str) -> int:
    """Become ``airflow celery worker --queues <the host's queue>`` with umask 002.

    The host's worker runs as root and shares the task log volume with the airflow user
    (uid 50000, group root) of the other workers: the folders it makes for a run must be
    group-writable, or the default worker cannot log its tasks of the same run (Airflow
    makes them 0o775, less the umask; supervisord leaves its children at 022)."""
    os.umask(HOST_UMASK)
    airflow = str(Path(sys.executable).with_name("airflow"))
    argv = [airflow, "celery", "worker", "--queues", HOST_QUEUES[host]]
    os.execv(argv[0], argv)  # noqa: S606 - an argument list, no shell
    return 1  # not reached


def app_programs(layout: SandboxLayout, secrets: SandboxSecrets) -> list[supervisor.Program]:
    """The sandbox's own service, gateway and canary programs (``default_programs``), with
    the database on db-primary, the load balancer on its container, and the HTTP servers
    listening on every interface (``serve``); then the host's worker."""
    wanted = set(layout_mod.SERVICE_PORTS) | set(layout_mod.PROVIDER_PORTS) | {"canary-writer"}
    programs = []
    for program in supervisor.default_programs(layout, secrets):
        if program.name not in wanted:
            continue  # the load balancer, the sink and S3 are containers of their own
        command, environment = list(program.command), dict(program.environment)
        if command[1:3] == ["-m", "tracktion_sandbox.service"] or command[1:3] == [
            "-m",
            "tracktion_sandbox.provider",
        ]:
            module = command[2].rsplit(".", 1)[1]
            command = [command[0], "-m", "tracktion_sandbox.compose_host", "serve", module]
            command += list(program.command[3:])
        for key, value in environment.items():
            environment[key] = _to_containers(value)
        programs.append(
            supervisor.Program(
                name=program.name,
                command=command,
                environment=environment,
                autorestart=program.autorestart,
                startsecs=program.startsecs,
            )
        )
    return [*programs, _worker(APP, layout)]


def _to_containers(value: str) -> str:
    """A sandbox address (127.0.0.1:<port>) as the container that serves that port."""
    hosts = {
        layout_mod.PRIMARY_PORT: DB_PRIMARY,
        layout_mod.REPLICA_PORT: DB_REPLICA,
        layout_mod.OPS_PORT: OPS_DB,
        layout_mod.LOAD_BALANCER_PORT: LOAD_BALANCER,
        layout_mod.SINK_HTTP_PORT: SINK,
        layout_mod.SINK_SMTP_PORT: SINK,
        layout_mod.S3_PORT: S3,
        **dict.fromkeys(layout_mod.SERVICE_PORTS.values(), APP),
        **dict.fromkeys(layout_mod.PROVIDER_PORTS.values(), APP),
    }
    for port, host in hosts.items():
        value = value.replace(f"{layout_mod.HOST}:{port}", f"{host}:{port}")
    return value


def host_programs(host: str, layout: SandboxLayout) -> list[supervisor.Program]:
    """What supervisord runs on ``host``: its PostgreSQL keeper and its Celery worker."""
    if host == APP:
        return app_programs(layout, load_or_create(layout))
    python = sys.executable
    return [
        supervisor.Program(
            name="postgresql",
            command=[
                python,
                "-m",
                "tracktion_sandbox.compose_host",
                "keep-postgres",
                HOST_CLUSTERS[host],
            ],
            environment={"DR_SANDBOX_HOME": str(layout.home)},
            autorestart=False,
        ),
        _worker(host, layout),
    ]


def prepare_app_host(layout: SandboxLayout) -> None:
    """The application's files, as ``cli.up`` makes them (each only when missing)."""
    from tracktion_sandbox import audio, file_snapshots

    for folder in (layout.logs, layout.run_dir):
        folder.mkdir(parents=True, exist_ok=True)
    audio.app_files(layout)
    audio.make_sample_audio(layout.audio_files)
    file_snapshots.take_initial_snapshots(layout)


def run_host(host: str, layout: SandboxLayout) -> int:
    """Write supervisord.conf for ``host`` and become ``supervisord -n`` (PID 1's child)."""
    if host not in HOST_QUEUES:
        raise SystemExit(f"unknown host {host!r}: one of {', '.join(HOST_QUEUES)}")
    secrets = load_or_create(layout)
    for folder in (layout.logs, layout.run_dir):
        folder.mkdir(parents=True, exist_ok=True)
    if host == APP:
        prepare_app_host(layout)
        # supervisord's XML-RPC (the plan's controller) answers the other hosts' workers.
        layout_mod.HOST = BIND_ALL
    text = supervisor.render_config(layout, secrets, host_programs(host, layout))
    # The sandbox gives a program 5 s to stop; here a Celery worker finishes its running
    # tasks (warm shutdown) and PostgreSQL shuts down cleanly (compose's stop_grace_period
    # is longer still).
    text = text.replace(
        f"stopwaitsecs={supervisor.STOPWAITSECS}\n", f"stopwaitsecs={HOST_STOP_SECONDS}\n"
    )
    supervisor._write_private(layout.supervisor_conf, text)
    argv = [
        str(Path(sys.executable).with_name("supervisord")),
        "-n",
        "-c",
        str(layout.supervisor_conf),
    ]
    log.info("%s: starting supervisord (%s)", host, " ".join(argv))
    os.execv(argv[0], argv)  # noqa: S606 - an argument list, no shell
    return 1  # not reached


# --------------------------------------------------------------------------- other hosts


def serve(module_name: str, args: list[str]) -> int:
    """Run the sandbox program ``module_name`` listening on every interface: the sandbox
    binds 127.0.0.1 (``layout.HOST``, or the module's own ``HOST``)."""
    if module_name not in SERVED_MODULES:
        raise SystemExit(f"serve: unknown program {module_name!r}: one of {sorted(SERVED_MODULES)}")
    layout_mod.HOST = BIND_ALL
    module = importlib.import_module(f"tracktion_sandbox.{module_name}")
    if hasattr(module, "HOST"):
        module.HOST = BIND_ALL
    sys.argv = [f"tracktion_sandbox.{module_name}", *args]
    return int(module.main() or 0)


SERVED_MODULES = ("service", "provider", "load_balancer", "sink")


def _lb_state_text() -> str:
    """The sandbox's first routing state with the containers as the backends' servers."""
    from tracktion_sandbox.load_balancer import initial_state

    return _to_containers(json.dumps(initial_state(), indent=2))


def run_load_balancer(layout: SandboxLayout) -> int:
    """Write the first routing state (containers as servers) unless one exists, then serve."""
    path = layout.load_balancer_state
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_lb_state_text())
        log.info("wrote the topology's first routing state to %s", path)
    return serve("load_balancer", [])


def run_s3() -> int:
    """moto's server on every interface; the sandbox's buckets and hosted zone once it
    answers (made through 127.0.0.1 inside this container, as ``cli.up`` does)."""
    from tracktion_sandbox import s3

    argv = [
        str(Path(sys.executable).with_name("moto_server")),
        "-H",
        BIND_ALL,
        "-p",
        str(layout_mod.S3_PORT),
    ]
    server = subprocess.Popen(argv)  # noqa: S603 - an argument list, no shell
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: server.send_signal(signum))
    try:
        s3._wait_for_port()
        log.info("buckets: %s", s3.ensure_buckets())
        s3.ensure_hosted_zone()
    except BaseException:
        server.terminate()
        raise
    return server.wait()


def compose_environment(secrets: SandboxSecrets, home: str) -> dict[str, str]:
    """The sandbox's Airflow environment (connections, contact variables, webhook token)
    with each endpoint's container as its host, plus the plan and its home."""
    from tracktion_sandbox.connections import sandbox_environment

    environment = {
        key: _to_containers(value) for key, value in sandbox_environment(secrets).items()
    }
    connection = json.loads(environment["AIRFLOW_CONN_TRACKTION_SUPERVISOR"])
    environment["AIRFLOW_CONN_TRACKTION_SUPERVISOR"] = json.dumps({**connection, "host": APP})
    for conn_id, port in _POSTGRES_CONNECTIONS.items():
        key = f"AIRFLOW_CONN_{conn_id.upper()}"
        connection = json.loads(environment[key])
        environment[key] = json.dumps({**connection, "host": _PORT_HOSTS[port]})
    for key in ("AIRFLOW_CONN_TRACKTION_LOAD_BALANCER",):
        connection = json.loads(environment[key])
        environment[key] = json.dumps({**connection, "host": LOAD_BALANCER})
    connection = json.loads(environment["AIRFLOW_CONN_DR_SMTP"])
    environment["AIRFLOW_CONN_DR_SMTP"] = json.dumps({**connection, "host": SINK})
    # The compose topology has no recovery site (its plan names none): no connection to it.
    environment.pop("AIRFLOW_CONN_TRACKTION_PG_RECOVERY", None)
    environment["DR_SANDBOX_HOME"] = home
    environment["DR_PLAN"] = "compose"  # include/config/compose.yaml: these containers
    return environment


_PORT_HOSTS = {
    layout_mod.PRIMARY_PORT: DB_PRIMARY,
    layout_mod.REPLICA_PORT: DB_REPLICA,
    layout_mod.OPS_PORT: OPS_DB,
}
_POSTGRES_CONNECTIONS = {
    "tracktion_pg_primary": layout_mod.PRIMARY_PORT,
    "tracktion_pg_replica": layout_mod.REPLICA_PORT,
    "tracktion_app_db": layout_mod.PRIMARY_PORT,
    "tracktion_pg_replication": layout_mod.PRIMARY_PORT,
    "dr_ledger": layout_mod.OPS_PORT,
}


def write_env_file(secrets_file: Path, out: Path, home: str) -> None:
    """``KEY=VALUE`` lines (docker-compose env_file: no quoting, one line each), 0600."""
    fields = json.loads(secrets_file.read_text())
    secrets = SandboxSecrets(**fields)
    lines = ["# Generated by scripts/deploy-env.sh (tracktion_sandbox.compose_host env). Secrets."]
    for key, value in compose_environment(secrets, home).items():
        if "\n" in value:
            raise SystemExit(f"{key}: a value spans lines; an env file cannot hold it")
        lines.append(f"{key}={value}")
    temporary = out.with_name(out.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    os.replace(temporary, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tracktion_sandbox.compose_host", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    keep = sub.add_parser("keep-postgres", help="bring a cluster up and hold it")
    keep.add_argument("cluster", choices=sorted(HOST_CLUSTERS.values()))
    for host in HOST_QUEUES:
        sub.add_parser(host, help=f"run the {host} host (supervisord in the foreground)")
    sub.add_parser(OPS_DB, help="run the ledger's cluster in the foreground")
    for name in (LOAD_BALANCER, SINK, S3):
        sub.add_parser(name, help=f"run the {name} container's program")
    worker = sub.add_parser("worker", help="run a host's Celery worker (umask 002)")
    worker.add_argument("host", choices=sorted(HOST_QUEUES))
    served = sub.add_parser("serve", help="run a sandbox program on every interface")
    served.add_argument("module", choices=SERVED_MODULES)
    served.add_argument("args", nargs=argparse.REMAINDER)
    env = sub.add_parser("env", help="write the topology's Airflow env file")
    env.add_argument("secrets_file", type=Path)
    env.add_argument("out", type=Path)
    env.add_argument("--home", default="/srv/tracktion")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    layout = SandboxLayout()
    if args.command == "keep-postgres":
        return keep_postgres(layout, args.cluster)
    if args.command == OPS_DB:
        return keep_postgres(layout, "ops")
    if args.command == "worker":
        return run_worker(args.host)
    if args.command == "serve":
        return serve(args.module, args.args)
    if args.command == LOAD_BALANCER:
        return run_load_balancer(layout)
    if args.command == SINK:
        return serve("sink", [])
    if args.command == S3:
        return run_s3()
    if args.command == "env":
        write_env_file(args.secrets_file, args.out, args.home)
        return 0
    return run_host(args.command, layout)


if __name__ == "__main__":
    sys.exit(main())
