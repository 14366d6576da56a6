"""Where every part of the sandbox lives: ports, directories, files.

The sandbox is a local stand-in of Tracktion production. Everything listens on 127.0.0.1
and keeps its state under one gitignored folder (``$DR_SANDBOX_HOME``, default
``<repo>/.sandbox``). ``include/config/sandbox.yaml`` names the same ports and paths through
``${DR_SANDBOX_HOME}``; ``tests/integration`` checks that the two agree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"

# Ports are fixed (not random) so the plan file, the Airflow connections and an operator's
# browser all agree without a discovery step. They sit in ranges nothing else here uses.
PRIMARY_PORT = 55432
REPLICA_PORT = 55433
OPS_PORT = 55434  # the DR ledger's own cluster: it must survive a recovery of the primary
SUPERVISOR_PORT = 19001
SERVICE_PORTS: dict[str, int] = {
    "analysis-service": 18001,
    "file-watcher": 18002,
    "tracklist-service": 18003,
    "notification-service": 18004,
}
# The stand-in third party (provider.py): a message-delivery gateway notification-service
# sends through, as a primary and a backup provider (dr_third_party_failover switches).
PROVIDER_PORTS: dict[str, int] = {
    "delivery-gateway-primary": 18611,
    "delivery-gateway-backup": 18612,
}
# The setting notification-service reads the gateway from (environment or the plan's
# config_env_file); without it, the primary.
DELIVERY_GATEWAY_ENV = "TRACKTION_DELIVERY_GATEWAY_URL"
LOAD_BALANCER_PORT = 18080
SINK_HTTP_PORT = 18090
SINK_SMTP_PORT = 18025
S3_PORT = 18500  # moto's standalone S3 server: the offsite copy's stand-in for AWS
S3_ACCESS_KEY = "sandbox-access-key"  # moto accepts any key; not a secret
S3_SECRET_KEY = "sandbox-secret-key"  # noqa: S105 - moto accepts any key; a fixed dummy
S3_REGION = "us-east-1"
S3_CROSS_REGION = "us-west-2"
S3_BUCKETS = {"tracktion-dr-sandbox": S3_REGION, "tracktion-dr-sandbox-us-west-2": S3_CROSS_REGION}
# moto's server answers every AWS API on S3_PORT: the recovery site's CloudFormation stack
# (dr_site_provision) and the hosted zone of the sandbox's public names (dr_network_dns).
HOSTED_ZONE = "tracktion-sandbox.test"
# A second, empty "recovery site" on 127.0.0.1 (the stack's Outputs map to it, see the
# plan's recovery_site): nothing listens on these ports until a recovery site is started.
RECOVERY_SITE_PORTS: dict[str, int] = {
    "database": 56432,
    "load-balancer": 28080,
    "analysis-service": 28001,
    "file-watcher": 28002,
    "tracklist-service": 28003,
    "notification-service": 28004,
}

APP_DATABASE = "tracktion"
APP_USER = "tracktion"
SUPERUSER = "postgres"
REPLICATION_USER = "replicator"
LEDGER_DATABASE = "dr_ledger"
OS_USER = "postgres"  # PostgreSQL refuses to run as root


def default_home() -> Path:
    return Path(os.environ.get("DR_SANDBOX_HOME", REPO_ROOT / ".sandbox")).resolve()


@dataclass(frozen=True)
class SandboxLayout:
    home: Path = field(default_factory=default_home)

    # PostgreSQL clusters (data directories owned by the postgres OS user)
    @property
    def pg_root(self) -> Path:
        return self.home / "pg"

    @property
    def primary_data(self) -> Path:
        return self.pg_root / "primary"

    @property
    def replica_data(self) -> Path:
        return self.pg_root / "replica"

    @property
    def ops_data(self) -> Path:
        return self.pg_root / "ops"

    @property
    def pg_socket_dir(self) -> Path:
        return self.pg_root / "sockets"

    # Backups, laid out where the sandbox plan's backup locations point
    @property
    def backups(self) -> Path:
        return self.home / "backups"

    @property
    def wal_archive(self) -> Path:
        return self.backups / "wal_archive"

    @property
    def logical_dumps(self) -> Path:
        return self.backups / "database" / "logical"

    @property
    def base_backups(self) -> Path:
        return self.backups / "database" / "base"

    @property
    def expired_backups(self) -> Path:
        """Where retention moves expired backups (never deleted by it)."""
        return self.backups / "expired"

    @property
    def config_backups(self) -> Path:
        return self.backups / "configuration"

    @property
    def storage_backups(self) -> Path:
        return self.backups / "storage"

    # The application's own files (the seed's /app)
    @property
    def app(self) -> Path:
        return self.home / "app"

    @property
    def app_data(self) -> Path:
        return self.app / "data"

    @property
    def audio_files(self) -> Path:
        return self.app_data / "audio_files"

    @property
    def user_uploads(self) -> Path:
        return self.app_data / "user_uploads"

    @property
    def app_config(self) -> Path:
        return self.app / "config"

    @property
    def app_env_file(self) -> Path:
        """The services' environment file (the plan's ``config_env_file``): read by each
        service at start; it does not exist until a configuration restore writes it."""
        return self.app / "environment.env"

    @property
    def app_logs(self) -> Path:
        return self.app / "logs"

    @property
    def test_data(self) -> Path:
        return self.app / "test_data"

    # Process supervision and bookkeeping
    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def supervisor_conf(self) -> Path:
        return self.run_dir / "supervisord.conf"

    @property
    def supervisor_pidfile(self) -> Path:
        return self.run_dir / "supervisord.pid"

    @property
    def secrets_file(self) -> Path:
        """Generated passwords (mode 0600). Never committed, never logged."""
        return self.home / "secrets.json"

    @property
    def airflow_env_file(self) -> Path:
        """``AIRFLOW_CONN_*`` exports for the sandbox, sourced by make targets (mode 0600)."""
        return self.home / "airflow.env"

    # Notification sink records (one JSON object per line)
    @property
    def sink_dir(self) -> Path:
        return self.home / "sink"

    @property
    def sink_webhooks(self) -> Path:
        return self.sink_dir / "webhooks.jsonl"

    @property
    def sink_mail(self) -> Path:
        return self.sink_dir / "mail.jsonl"

    @property
    def load_balancer_state(self) -> Path:
        return self.run_dir / "load_balancer.json"

    def service_url(self, service: str) -> str:
        return f"http://{HOST}:{SERVICE_PORTS[service]}"


def provider_url(provider: str) -> str:
    return f"http://{HOST}:{PROVIDER_PORTS[provider]}"
