"""The compose topology's stand-ins address each other by container name.

``tracktion_sandbox.compose_host`` reuses the sandbox's programs and connections, whose
addresses are 127.0.0.1; in the topology each part is a container of its own, so every
address must name the container that serves it (and nothing may still point at loopback,
which inside a container is that container itself).
"""

from __future__ import annotations

import json

from tracktion_sandbox import compose_host
from tracktion_sandbox.layout import SandboxLayout
from tracktion_sandbox.secrets import SandboxSecrets

SECRETS = SandboxSecrets(
    postgres_password="pg-secret",
    app_password="app-secret",
    replication_password="repl-secret",
    supervisor_user="dr",
    supervisor_password="sv-secret",
    webhook_token="hook-secret",
)


def connection(environment: dict[str, str], conn_id: str) -> dict:
    return json.loads(environment[f"AIRFLOW_CONN_{conn_id.upper()}"])


def test_connections_name_the_containers():
    environment = compose_host.compose_environment(SECRETS, "/srv/tracktion")
    hosts = {
        "tracktion_pg_primary": "db-primary",
        "tracktion_pg_replica": "db-replica",
        "tracktion_app_db": "db-primary",
        "tracktion_pg_replication": "db-primary",
        "dr_ledger": "ops-db",
        "tracktion_supervisor": "app",
        "tracktion_load_balancer": "load-balancer",
        "dr_smtp": "notification-sink",
    }
    for conn_id, host in hosts.items():
        assert connection(environment, conn_id)["host"] == host, conn_id
    assert connection(environment, "dr_offsite_s3")["extra"]["endpoint_url"] == "http://s3:18500"
    assert connection(environment, "dr_slack")["host"].startswith("http://notification-sink:")
    assert environment["DR_PLAN"] == "compose"
    assert environment["DR_SANDBOX_HOME"] == "/srv/tracktion"
    assert not [key for key, value in environment.items() if "127.0.0.1" in value]


def test_env_file_is_private_and_one_line_per_variable(tmp_path):
    secrets_file = tmp_path / "secrets.json"
    secrets_file.write_text(json.dumps(SECRETS.__dict__))
    out = tmp_path / "topology.env"
    compose_host.write_env_file(secrets_file, out, "/srv/tracktion")
    assert out.stat().st_mode & 0o777 == 0o600
    lines = [line for line in out.read_text().splitlines() if not line.startswith("#")]
    assert all("=" in line for line in lines)
    assert "DR_PLAN=compose" in lines


def test_app_programs_reach_the_database_and_balancer_by_name(tmp_path):
    programs = {p.name: p for p in compose_host.app_programs(SandboxLayout(tmp_path), SECRETS)}
    assert set(programs) >= {
        "analysis-service",
        "file-watcher",
        "tracklist-service",
        "notification-service",
        "canary-writer",
        "airflow-worker",
    }
    assert {"load-balancer", "notification-sink", "s3-server"}.isdisjoint(programs)
    service = programs["analysis-service"]
    assert service.command[1:5] == ["-m", "tracktion_sandbox.compose_host", "serve", "service"]
    assert "@db-primary:55432/" in service.environment["TRACKTION_DATABASE_URL"]
    assert service.environment["TRACKTION_DATABASE_ROUTE"] == "http://load-balancer:18080"
    assert programs["airflow-worker"].command[-3:] == [
        "tracktion_sandbox.compose_host",
        "worker",
        "app",
    ]
    for program in programs.values():
        assert not [v for v in program.environment.values() if "127.0.0.1" in v], program.name


def test_the_load_balancer_routes_to_the_containers():
    state = json.loads(compose_host._lb_state_text())
    servers = {
        backend: {name: s["address"] for name, s in spec["servers"].items()}
        for backend, spec in state["backends"].items()
    }
    assert servers["analysis-service"] == {"primary": "app:18001"}
    assert servers["database"] == {"primary": "db-primary:55432", "replica": "db-replica:55433"}
