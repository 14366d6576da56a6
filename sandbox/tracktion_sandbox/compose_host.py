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

``python -m tracktion_sandbox.compose_host keep-postgres primary|replica``
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
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import psycopg

from tracktion_sandbox import backups, generate, pg, supervisor
from tracktion_sandbox.layout import PRIMARY_PORT, REPLICATION_USER, SandboxLayout
from tracktion_sandbox.secrets import load_or_create

log = logging.getLogger("tracktion_sandbox.compose_host")

# Each host's Celery queue; the plan's hosts name the same queues.
HOST_QUEUES = {"db-primary": "host_db_primary", "db-replica": "host_db_replica"}
HOST_CLUSTERS = {"db-primary": "primary", "db-replica": "replica"}
PRIMARY_HOST_ENV = "DR_PRIMARY_HOST"  # where the replica host finds the primary
NETWORK_CONF_FILE = "compose.conf"  # included after the sandbox's own sandbox.conf
SEED_SIZE_ENV = "DR_SANDBOX_SEED_SIZE"
HOST_STOP_SECONDS = 60


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


def keep_postgres(layout: SandboxLayout, name: str) -> int:
    """Bring the cluster up, then hold until SIGTERM/SIGINT and stop it cleanly."""
    # The worker's Airflow settings (metadata DB URL, keys) are in this container's
    # environment; the server and its archive_command have no use for them.
    for key in [k for k in os.environ if k.startswith("AIRFLOW")]:
        del os.environ[key]
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    cluster = bring_up_primary(layout) if name == "primary" else bring_up_replica(layout)
    log.info("the %s cluster is up; waiting for the container to stop", cluster.name)
    stop.wait()
    log.info("stopping the %s cluster", cluster.name)
    pg.stop_cluster(layout, name)
    return 0


# --------------------------------------------------------------------------- the host


def host_programs(host: str, layout: SandboxLayout) -> list[supervisor.Program]:
    """What supervisord runs on ``host``: its PostgreSQL keeper and its Celery worker."""
    python = sys.executable
    airflow = str(Path(python).with_name("airflow"))
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
        supervisor.Program(
            name="airflow-worker",
            command=[airflow, "celery", "worker", "--queues", HOST_QUEUES[host]],
            environment={"DR_SANDBOX_HOME": str(layout.home)},
        ),
    ]


def run_host(host: str, layout: SandboxLayout) -> int:
    """Write supervisord.conf for ``host`` and become ``supervisord -n`` (PID 1's child)."""
    if host not in HOST_QUEUES:
        raise SystemExit(f"unknown host {host!r}: one of {', '.join(HOST_QUEUES)}")
    secrets = load_or_create(layout)
    for folder in (layout.logs, layout.run_dir):
        folder.mkdir(parents=True, exist_ok=True)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tracktion_sandbox.compose_host", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    keep = sub.add_parser("keep-postgres", help="bring a cluster up and hold it")
    keep.add_argument("cluster", choices=sorted(HOST_CLUSTERS.values()))
    for host in HOST_QUEUES:
        sub.add_parser(host, help=f"run the {host} host (supervisord in the foreground)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    layout = SandboxLayout()
    if args.command == "keep-postgres":
        return keep_postgres(layout, args.cluster)
    return run_host(args.command, layout)


if __name__ == "__main__":
    sys.exit(main())
