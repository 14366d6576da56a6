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


ACCESS = SystemAccess(conninfo=conninfo, controller=controller, url=connection_url)
