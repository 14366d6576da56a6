"""``python -m tracktion_sandbox up|down|status``: the sandbox's lifecycle.

``up`` is idempotent (a second call starts only what is stopped and never re-seeds data);
``down`` stops every sandbox process and checks that no sandbox port is left listening.
State stays in ``$DR_SANDBOX_HOME`` between the two; ``reset`` moves it aside.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import time
from datetime import UTC, datetime

import httpx

from tracktion_sandbox import (
    audio,
    backups,
    connections,
    file_snapshots,
    generate,
    pg,
    recovery_site,
    s3,
    supervisor,
)
from tracktion_sandbox import layout as L
from tracktion_sandbox.layout import SandboxLayout
from tracktion_sandbox.secrets import load_or_create

log = logging.getLogger("tracktion_sandbox")

ALL_PORTS = [
    L.PRIMARY_PORT,
    L.REPLICA_PORT,
    L.OPS_PORT,
    L.SUPERVISOR_PORT,
    *L.SERVICE_PORTS.values(),
    *L.PROVIDER_PORTS.values(),
    L.LOAD_BALANCER_PORT,
    L.SINK_HTTP_PORT,
    L.SINK_SMTP_PORT,
    L.S3_PORT,
]
# The recovery site's ports: closed after ``down``, not expected open after ``up``.
RECOVERY_SITE_PORTS = list(L.RECOVERY_SITE_PORTS.values())
HEALTHY_WAIT_SECONDS = 60


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((L.HOST, port)) == 0


def wait_until_healthy(layout: SandboxLayout, timeout: float = HEALTHY_WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    pending = dict.fromkeys(L.SERVICE_PORTS)
    while pending and time.monotonic() < deadline:
        for service in list(pending):
            try:
                response = httpx.get(f"{layout.service_url(service)}/health", timeout=2)
                if response.status_code == 200:
                    del pending[service]
                    continue
                pending[service] = f"HTTP {response.status_code}: {response.text[:120]}"
            except httpx.HTTPError as exc:
                pending[service] = str(exc) or type(exc).__name__
        if pending:
            time.sleep(0.5)
    if pending:
        details = "; ".join(f"{name}: {why}" for name, why in pending.items())
        raise SystemExit(f"sandbox services not healthy after {timeout:.0f}s: {details}")


def up(layout: SandboxLayout, size: str) -> None:
    pg.require_server_binaries()
    secrets = load_or_create(layout)
    for directory in (layout.logs, layout.run_dir, layout.sink_dir):
        directory.mkdir(parents=True, exist_ok=True)
    audio.app_files(layout)
    audio.make_sample_audio(layout.audio_files)
    file_snapshots.take_initial_snapshots(layout)
    log.info("PostgreSQL: primary, replica, ops")

    def seed(dsn: str) -> None:
        log.info("tracktion data: %s", generate.generate(dsn, size=size))

    pg.up(
        layout,
        secrets,
        seed=seed,
        initial_backups=lambda: backups.take_initial_backups(layout, secrets),
    )
    connections.write_airflow_env(layout, secrets)
    log.info("supervisord: services, load balancer, sink, canary")
    supervisor.up(
        layout,
        secrets,
        supervisor.default_programs(layout, secrets) + recovery_site.programs(layout, secrets),
    )
    wait_until_healthy(layout)
    s3.ensure_buckets()
    s3.ensure_hosted_zone()
    log.info("sandbox is up in %s", layout.home)


def down(layout: SandboxLayout) -> None:
    if layout.secrets_file.exists():
        supervisor.down(layout, load_or_create(layout))
    recovery_site.stop(layout)
    pg.down(layout)
    deadline = time.monotonic() + 15
    ports = ALL_PORTS + RECOVERY_SITE_PORTS
    while time.monotonic() < deadline and any(port_open(p) for p in ports):
        time.sleep(0.3)
    left = [p for p in ports if port_open(p)]
    if left:
        raise SystemExit(f"sandbox down, but ports still listening: {left}")
    log.info("sandbox is down (state kept in %s)", layout.home)


def reset(layout: SandboxLayout) -> None:
    """Stop and move the state folder aside (never delete: it may hold evidence)."""
    down(layout)
    if layout.home.exists():
        aside = layout.home.with_name(
            f"{layout.home.name}.old-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
        )
        layout.home.rename(aside)
        log.info("moved %s aside to %s", layout.home, aside)


def status(layout: SandboxLayout) -> int:
    listening = {port: port_open(port) for port in ALL_PORTS}
    for port, is_open in listening.items():
        print(f"127.0.0.1:{port:<6} {'listening' if is_open else 'closed'}")
    return 0 if all(listening.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tracktion_sandbox", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up", help="start (and on first use create) the sandbox")
    up_parser.add_argument("--size", default="30MB", help="seed data size, e.g. 30MB or 1GB")
    sub.add_parser("down", help="stop every sandbox process")
    sub.add_parser("status", help="which sandbox ports are listening")
    sub.add_parser("reset", help="stop, then move the state folder aside")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    layout = SandboxLayout()
    if args.command == "up":
        up(layout, args.size)
    elif args.command == "down":
        down(layout)
    elif args.command == "reset":
        reset(layout)
    else:
        return status(layout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
