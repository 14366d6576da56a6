"""The sandbox's recovery site: a second, empty Tracktion in "another region".

``dr_site_provision`` makes the recovery site's CloudFormation stack in moto; moto's host
names resolve nowhere, so the sandbox's stack parameters make its Outputs point at
127.0.0.1 on ports of their own (``layout.RECOVERY_SITE_PORTS``), and this module is what
answers there once ``dr_site_failover`` brings the site up:

* a PostgreSQL cluster with **no data directory** (``pg/recovery``) until the failover
  restores one from the offsite copy; the plan's recovery_site names it (``pg_ctl``
  control, like the primary's), its connection is ``tracktion_pg_recovery``;
* the four services (``recovery-<service>`` on 28001-28004, against the recovery
  cluster) and a load balancer (``recovery-load-balancer`` on 28080, its own routing
  state, every server disabled until the failover moves traffic) as supervisord
  programs that are **not started** with the sandbox (``autostart=false``): the plan's
  supervisord controller starts them, as it does the primary's.

What the site shares with the primary site, because the sandbox is one machine: the
supervisord (the controller), the configuration directory and the storage paths (the
failover restores the database; files and configuration are other scenarios' business),
and moto. Stopping "the primary site" therefore means its clusters and its programs,
never supervisord (:func:`stop_primary_site`).

The offsite copy: the plan's ``recovery_site.backups`` is the cross-region copy the
offsite copy job (``dr_backup_offsite``) writes to moto's us-west-2 bucket; the failover
reads it through the backups catalog's mirror (``pg/offsite-cache``, beside the site's
data directory). Nothing here fills it: run the job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import xmlrpc.client
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tracktion_sandbox import layout as L
from tracktion_sandbox import pg, supervisor
from tracktion_sandbox.layout import SandboxLayout
from tracktion_sandbox.secrets import SandboxSecrets

log = logging.getLogger(__name__)

SERVER = "recovery"  # the site's server name in its load balancer (the plan's balancer_server)
LOAD_BALANCER_PROGRAM = "recovery-load-balancer"
SERVICES = tuple(L.SERVICE_PORTS)
PRIMARY_SITE_PROGRAMS = (*SERVICES, "load-balancer", "canary-writer")


def program_name(service: str) -> str:
    return f"recovery-{service}"


def data_directory(layout: SandboxLayout) -> Path:
    return layout.pg_root / "recovery"


def load_balancer_state(layout: SandboxLayout) -> Path:
    return layout.run_dir / "recovery_load_balancer.json"


def cluster(layout: SandboxLayout) -> pg.Cluster:
    return pg.Cluster("recovery", data_directory(layout), L.RECOVERY_SITE_PORTS["database"])


def recovery_dsn(secrets: SandboxSecrets) -> str:
    return (
        f"postgresql://{L.APP_USER}:{secrets.app_password}@{L.HOST}:"
        f"{L.RECOVERY_SITE_PORTS['database']}/{L.APP_DATABASE}?connect_timeout=2"
    )


def initial_balancer_state() -> dict[str, Any]:
    """The site's routing before a failover: every backend knows the site's server, none
    takes traffic (the failover's ``move_traffic`` enables them)."""
    backends: dict[str, Any] = {
        service: {
            "protocol": "http",
            "servers": {
                SERVER: {
                    "address": f"{L.HOST}:{L.RECOVERY_SITE_PORTS[service]}",
                    "weight": 0,
                    "status": "disabled",
                }
            },
        }
        for service in SERVICES
    }
    backends["database"] = {
        "protocol": "postgresql",
        "servers": {
            SERVER: {
                "address": f"{L.HOST}:{L.RECOVERY_SITE_PORTS['database']}",
                "weight": 0,
                "status": "disabled",
            }
        },
    }
    return {"backends": backends, "updated_at": datetime.now(UTC).isoformat()}


def write_initial_balancer_state(layout: SandboxLayout) -> None:
    """Only when there is none: a running site's routing is never reset by ``up``."""
    path = load_balancer_state(layout)
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(initial_balancer_state(), indent=2, sort_keys=True) + "\n")


def programs(layout: SandboxLayout, secrets: SandboxSecrets) -> list[supervisor.Program]:
    """The site's supervisord programs (not started with the sandbox)."""
    write_initial_balancer_state(layout)
    python = sys.executable
    base = {
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        "PYTHONUNBUFFERED": "1",
        "DR_SANDBOX_HOME": str(layout.home),
    }
    site = [
        supervisor.Program(
            name=program_name(service),
            command=[
                python,
                "-m",
                "tracktion_sandbox.service",
                "--name",
                service,
                "--port",
                str(L.RECOVERY_SITE_PORTS[service]),
            ],
            environment={
                **base,
                "TRACKTION_DATABASE_URL": recovery_dsn(secrets),
                "TRACKTION_CONFIG_DIR": str(layout.app_config),
                "TRACKTION_ENV_FILE": str(layout.app_env_file),
                "TRACKTION_SERVICE_NAME": service,
                L.DELIVERY_GATEWAY_ENV: L.provider_url("delivery-gateway-primary"),
            },
            autostart=False,
        )
        for service in SERVICES
    ]
    site.append(
        supervisor.Program(
            name=LOAD_BALANCER_PROGRAM,
            command=[
                python,
                "-m",
                "tracktion_sandbox.load_balancer",
                "--port",
                str(L.RECOVERY_SITE_PORTS["load-balancer"]),
                "--state",
                str(load_balancer_state(layout)),
            ],
            environment=base,
            autostart=False,
        )
    )
    return site


def program_names() -> list[str]:
    return [*(program_name(s) for s in SERVICES), LOAD_BALANCER_PROGRAM]


# --- the whole primary site, and the recovery site, stopped and started ---------------------


def _proxy(secrets: SandboxSecrets) -> xmlrpc.client.ServerProxy:
    return supervisor.client(secrets, timeout=supervisor.STOP_TIMEOUT_SECONDS + 10)


def _stop_programs(secrets: SandboxSecrets, names: list[str]) -> None:
    proxy = _proxy(secrets)
    for name in names:
        with contextlib.suppress(xmlrpc.client.Fault):  # NOT_RUNNING, BAD_NAME
            proxy.supervisor.stopProcess(name, True)


def stop_primary_site(layout: SandboxLayout, secrets: SandboxSecrets) -> None:
    """The primary site lost: its services, load balancer and canary stopped, then its
    replica and primary clusters (supervisord, moto, the sink and the ops cluster stay:
    they are the sandbox's machinery and the DR tooling's own)."""
    _stop_programs(secrets, list(PRIMARY_SITE_PROGRAMS))
    bindir = pg.find_bindir()
    clusters = pg.clusters(layout)
    pg._stop(clusters["replica"], bindir)
    pg._stop(clusters["primary"], bindir)


def start_primary_site(layout: SandboxLayout, secrets: SandboxSecrets) -> None:
    """The primary site back as it was: its clusters, then its programs."""
    for name in ("primary", "replica"):
        pg.start_cluster(layout, name)
    proxy = supervisor.client(secrets)
    for name in PRIMARY_SITE_PROGRAMS:
        try:
            proxy.supervisor.startProcess(name, True)
        except xmlrpc.client.Fault as exc:
            if "ALREADY_STARTED" not in exc.faultString:
                raise


def stop(layout: SandboxLayout, secrets: SandboxSecrets | None = None) -> None:
    """Stop whatever of the recovery site runs (its programs, its cluster)."""
    if secrets is not None and supervisor.status(secrets):
        _stop_programs(secrets, program_names())
    pg._stop(cluster(layout), pg.find_bindir())


def empty(layout: SandboxLayout, secrets: SandboxSecrets | None = None) -> list[Path]:
    """Stop the site and make it empty again: its data directory and its routing state
    moved aside (``<name>.old-<stamp>``, never deleted). Returns what was moved."""
    stop(layout, secrets)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    moved = []
    for path in (data_directory(layout), load_balancer_state(layout)):
        if path.exists():
            aside = path.with_name(f"{path.name}.old-{stamp}")
            path.rename(aside)
            moved.append(aside)
    write_initial_balancer_state(layout)
    return moved
