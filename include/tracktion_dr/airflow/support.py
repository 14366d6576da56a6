"""The thin Airflow-facing layer: params every DAG shares, connections, controllers.

Everything else in ``tracktion_dr`` is plain Python that knows nothing of Airflow. This
module imports only ``airflow.sdk`` names, and only what parse time needs at module level;
connection lookups happen inside task execution.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import Connection, Param

from tracktion_dr.airflow.notifier import task_failure_notifier
from tracktion_dr.core.incident import INCIDENT_ID_PATTERN
from tracktion_dr.core.plan import Controller, Plan
from tracktion_dr.services.base import ServiceController

if TYPE_CHECKING:
    from tracktion_dr.postgres.commands import Endpoint

OWNER = "sre"
DEFAULT_ARGS: dict[str, Any] = {
    "owner": OWNER,
    "retries": 1,
    "retry_delay": timedelta(seconds=15),
    # No silent task failure: a task that crashes or times out is posted to the plan's
    # Slack channels once, on its final failure, with the link to it (airflow/notifier.py).
    "on_failure_callback": task_failure_notifier,
}


def common_params(plan: Plan, *, environment_default: str | None) -> dict[str, Param]:
    """The params every recovery DAG takes (a contract: alerting and operators rely on them)."""
    environment_kwargs: dict[str, Any] = {}
    if environment_default is not None:
        environment_kwargs["default"] = environment_default
    return {
        "incident_id": Param(
            "",
            type="string",
            pattern=INCIDENT_ID_PATTERN.replace("^", "^(").replace("$", ")?$"),
            title="Incident ID",
            description="DR-YYYYMMDD-HHMMSS. Leave empty to generate one from the clock start.",
            section="Incident",
        ),
        "incident_started_at": Param(
            "",
            type="string",
            title="Incident started at",
            description=(
                "ISO 8601 with a time zone, e.g. 2026-11-26T03:12:00Z. Starts the RTO clock; "
                "empty means the moment this run started."
            ),
            section="Incident",
        ),
        "environment": Param(
            type="string",
            enum=sorted(plan.environments),
            title="Environment",
            description="Which environment's targets this run acts on (from the DR plan).",
            section="Incident",
            **environment_kwargs,
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Plan and print every action; touch nothing.",
            section="Run",
        ),
        "notify": Param(
            False,
            type="boolean",
            title="Notify",
            description="Send the result to the plan's notification channels (best effort).",
            section="Run",
        ),
    }


def conninfo(conn_id: str, dbname: str | None = None) -> str:
    """A libpq conninfo for an Airflow connection. Contains the password: never log it,
    never return it from a task (XCom)."""
    return endpoint(conn_id, dbname).conninfo()


def controller(spec: Controller) -> ServiceController:
    """Build the service controller the plan names."""
    if spec.kind == "supervisord":
        from tracktion_dr.services.supervisord import SupervisordController

        assert spec.conn_id  # enforced by the plan model
        connection = Connection.get(spec.conn_id)
        return SupervisordController(
            host=connection.host or "127.0.0.1",
            port=int(connection.port or 9001),
            username=connection.login,
            password=connection.password,
        )
    if spec.kind == "docker_compose":
        from tracktion_dr.services.docker_compose import DockerComposeController

        assert spec.compose_file and spec.project  # enforced by the plan model
        return DockerComposeController(spec.compose_file, spec.project)
    if spec.kind == "systemd":
        from tracktion_dr.services.systemd import SystemdController

        return SystemdController()
    raise NotImplementedError(f"no controller for kind {spec.kind!r}")


def endpoint(conn_id: str, dbname: str | None = None) -> Endpoint:
    """The connection as a PostgreSQL endpoint (password inside: never log or return it)."""
    from tracktion_dr.postgres.commands import endpoint_from_connection

    return endpoint_from_connection(Connection.get(conn_id), dbname)


def backup_params(plan: Plan, *, with_dry_run: bool = False) -> dict[str, Param]:
    """Params of the ``dr_backup_*`` and watch DAGs: which environment's backups, whether
    failures page (on by default: a silent backup failure is how RPOs are lost)."""
    params: dict[str, Param] = {
        "environment": Param(
            "production" if "production" in plan.environments else plan.default_environment,
            type="string",
            enum=sorted(plan.environments),
            title="Environment",
            description="Whose backups: the plan's backup locations of this environment.",
            section="Run",
        ),
        "notify": Param(
            True,
            type="boolean",
            title="Notify on failure",
            description="Post and page (the plan's slack and pagerduty channels) on failure.",
            section="Run",
        ),
    }
    if with_dry_run:
        params["dry_run"] = Param(
            False,
            type="boolean",
            title="Dry run",
            description="Decide and report everything; move, upload or copy nothing.",
            section="Run",
        )
    return params


def reseed_standby(cluster: Any, run: dict[str, Any]) -> str:
    """Re-seed ``cluster``'s standby from its primary with the plan's connections
    (``postgres.replica.reseed_replica``: resumable, the old standby kept aside).
    ``run`` carries the incident's ``tag``, ``incident_id``, ``cluster`` (its name) and
    ``wal_archive``."""
    from pathlib import Path

    from tracktion_dr.postgres.control import cluster_control
    from tracktion_dr.postgres.replica import reseed_replica

    replica_dir = Path(cluster.replica_data_directory)
    replica_admin = endpoint(cluster.replica_conn_id)
    return reseed_replica(
        endpoint(cluster.replication_conn_id),
        endpoint(cluster.conn_id),
        cluster_control(cluster, replica=True),
        replica_admin.port,
        replica_dir.with_name(f"replica_reseed_{run['tag']}.log"),
        tag=run["tag"],
        incident_id=run["incident_id"],
        cluster_name=run["cluster"],
        wal_archive=Path(run["wal_archive"]),
        replica_admin=replica_admin,
        bindir=Path(cluster.bin_dir),
    )
