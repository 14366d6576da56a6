"""Airflow connections for the sandbox, as ``AIRFLOW_CONN_*`` environment variables.

Written at sandbox-up to a 0600 file that ``sandbox/env.sh`` sources, so the passwords
generated for this sandbox reach every Airflow process through its environment and are
never committed, printed, or stored in Airflow's metadata database.
"""

from __future__ import annotations

import json
import os
import shlex

from tracktion_sandbox import layout as L
from tracktion_sandbox.layout import SandboxLayout
from tracktion_sandbox.secrets import SandboxSecrets

SINK = f"http://{L.HOST}:{L.SINK_HTTP_PORT}"
S3 = f"http://{L.HOST}:{L.S3_PORT}"


def sandbox_connections(secrets: SandboxSecrets) -> dict[str, dict[str, object]]:
    """Connection id -> Airflow connection (JSON form) for every sandbox endpoint."""

    def postgres(port: int, database: str) -> dict[str, object]:
        return {
            "conn_type": "postgres",
            "host": L.HOST,
            "port": port,
            "login": L.SUPERUSER,
            "password": secrets.postgres_password,
            "schema": database,
        }

    def s3(region: str) -> dict[str, object]:
        return {
            "conn_type": "aws",
            "login": L.S3_ACCESS_KEY,
            "password": L.S3_SECRET_KEY,
            "extra": {"endpoint_url": S3, "region_name": region},
        }

    return {
        "tracktion_pg_primary": postgres(L.PRIMARY_PORT, L.APP_DATABASE),
        "tracktion_pg_replica": postgres(L.REPLICA_PORT, L.APP_DATABASE),
        # The recovery site's cluster (restored from the primary's backups: same roles).
        "tracktion_pg_recovery": postgres(L.RECOVERY_SITE_PORTS["database"], L.APP_DATABASE),
        # The application role the services log in as (dr_security_incident reads the
        # old password here to prove it refused after a rotation).
        "tracktion_app_db": {
            "conn_type": "postgres",
            "host": L.HOST,
            "port": L.PRIMARY_PORT,
            "login": L.APP_USER,
            "password": secrets.app_password,
            "schema": L.APP_DATABASE,
        },
        # The replication role, for pg_basebackup (REPLICATION, not superuser).
        "tracktion_pg_replication": {
            "conn_type": "postgres",
            "host": L.HOST,
            "port": L.PRIMARY_PORT,
            "login": L.REPLICATION_USER,
            "password": secrets.replication_password,
            "schema": "postgres",
        },
        # moto's S3 server stands in for AWS: the offsite bucket and its cross-region copy.
        "dr_offsite_s3": s3(L.S3_REGION),
        "dr_offsite_s3_us_west_2": s3(L.S3_CROSS_REGION),
        # The same moto server for CloudFormation (the recovery site, in the backup region)
        # and Route53 (global; its API lives in us-east-1).
        "dr_recovery_aws": s3(L.S3_CROSS_REGION),
        "dr_route53": s3(L.S3_REGION),
        "dr_ledger": postgres(L.OPS_PORT, L.LEDGER_DATABASE),
        "tracktion_supervisor": {
            "conn_type": "http",
            "host": L.HOST,
            "port": L.SUPERVISOR_PORT,
            "login": secrets.supervisor_user,
            "password": secrets.supervisor_password,
        },
        "tracktion_load_balancer": {
            "conn_type": "http",
            "host": L.HOST,
            "port": L.LOAD_BALANCER_PORT,
            "schema": "http",
        },
        # The notification sink stands in for Slack, PagerDuty, the status page and SMTP.
        "dr_slack": {
            "conn_type": "slackwebhook",
            "host": f"{SINK}/slack",
            "password": "T0SANDBOX/B0SANDBOX/sandbox-webhook",
        },
        # A Slack *bot token* connection (Web API, e.g. conversations.create for the war
        # room); base_url points the provider's SlackHook at the sink's Web API stand-in.
        "dr_slack_bot": {
            "conn_type": "slack",
            "password": "xoxb-sandbox-bot-token",
            "extra": {"base_url": f"{SINK}/slack-api/", "timeout": 10},
        },
        # Events API v2 base URL (the provider's async hook posts to {base}/v2/enqueue).
        "dr_pagerduty": {
            "conn_type": "pagerduty_events",
            "password": "sandbox-routing-key",
            "extra": {"events_api_url": f"{SINK}/pagerduty"},
        },
        # Atlassian Statuspage v1 (production: host https://api.statuspage.io): the API key
        # is the password (sent as "Authorization: OAuth <key>"), the page id an extra.
        "dr_status_page": {
            "conn_type": "http",
            "host": f"{SINK}/statuspage",
            "password": "sandbox-statuspage-api-key",
            "extra": {"page_id": "sandboxpage01", "timeout": 10},
        },
        "dr_smtp": {
            "conn_type": "smtp",
            "host": L.HOST,
            "port": L.SINK_SMTP_PORT,
            "extra": {
                "disable_tls": True,
                "disable_ssl": True,
                "from_email": "dr-alerts@tracktion.invalid",
                "timeout": 10,
                "retry_limit": 1,
            },
        },
    }


# Contact roles resolve to people through Airflow variables; the sandbox's are made up.
SANDBOX_CONTACTS = {
    "dr_contact_on_call_engineer": {"name": "Sandbox On-call", "email": "oncall@sandbox.invalid"},
    "dr_contact_incident_commander": {"name": "Sandbox IC", "email": "ic@sandbox.invalid"},
    "dr_contact_technical_lead": {"name": "Sandbox TL", "email": "tl@sandbox.invalid"},
    "dr_contact_database_administrator": {"name": "Sandbox DBA", "email": "dba@sandbox.invalid"},
    "dr_contact_infrastructure_engineer": {"name": "Sandbox IE", "email": "ie@sandbox.invalid"},
    "dr_contact_communications_lead": {"name": "Sandbox CL", "email": "cl@sandbox.invalid"},
    "dr_contact_engineering_manager": {"name": "Sandbox EM", "email": "em@sandbox.invalid"},
    "dr_contact_executive": {"name": "Sandbox CTO", "email": "cto@sandbox.invalid"},
    "dr_contact_external_contractor": {"name": "Sandbox Vendor", "email": "vendor@sandbox.invalid"},
}


def sandbox_environment(secrets: SandboxSecrets) -> dict[str, str]:
    """Every environment variable Airflow needs to act on the sandbox."""
    variables = {
        f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(connection)
        for conn_id, connection in sandbox_connections(secrets).items()
    }
    variables.update(
        {
            f"AIRFLOW_VAR_{name.upper()}": json.dumps(value)
            for name, value in SANDBOX_CONTACTS.items()
        }
    )
    variables["DR_WEBHOOK_TOKEN"] = secrets.webhook_token
    return variables


def write_airflow_env(layout: SandboxLayout, secrets: SandboxSecrets) -> None:
    lines = ["# Generated by sandbox-up: Airflow connections of this sandbox. Do not commit."]
    for name, value in sandbox_environment(secrets).items():
        lines.append(f"export {name}={shlex.quote(value)}")
    path = layout.airflow_env_file
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    os.replace(temporary, path)


def export_to_environ(secrets: SandboxSecrets) -> None:
    """Put the sandbox connections into this process's environment (tests, dag.test())."""
    os.environ.update(sandbox_environment(secrets))
