"""The scenarios' :class:`~tracktion_dr.scenarios.SystemAccess` from inside an Airflow
task: the plan's connection ids resolved through Airflow's connections (and so its
secrets backend). Airflow-facing, like ``dag_support``; nothing here runs at parse time."""

from __future__ import annotations

from airflow.sdk import Connection

from tracktion_dr.airflow.support import conninfo, controller
from tracktion_dr.scenarios import SystemAccess


def connection_url(conn_id: str) -> str:
    """``scheme://host:port`` of an HTTP connection (scheme from its schema, default http)."""
    connection = Connection.get(conn_id)
    return f"{connection.schema or 'http'}://{connection.host}:{connection.port or 80}"


def store_connection_secret(aws_conn_id: str, secret_id: str, uri: str) -> str:
    """Write an Airflow connection (its URI) to AWS Secrets Manager, where Airflow's
    ``SecretsManagerBackend`` reads connections from (``connections_prefix/<conn id>``),
    through the amazon provider's hook. Creates the secret when it does not exist yet."""
    from airflow.providers.amazon.aws.hooks.secrets_manager import SecretsManagerHook

    client = SecretsManagerHook(aws_conn_id=aws_conn_id).get_conn()
    try:
        client.put_secret_value(SecretId=secret_id, SecretString=uri)
        return "updated"
    except client.exceptions.ResourceNotFoundException:
        client.create_secret(Name=secret_id, SecretString=uri)
        return "created"


ACCESS = SystemAccess(
    conninfo=conninfo,
    controller=controller,
    url=connection_url,
    store_connection_secret=store_connection_secret,
)
