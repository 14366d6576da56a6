"""The disaster-recovery plan as a typed, validated model, and its loader.

The plan file (``include/config/*.yaml``, chosen by the ``DR_PLAN`` environment variable) is
the single description of what must be recovered and how fast: tiers with their RTO/RPO,
the databases, services, storage and backups of each environment, who is told and how, and
when the drills run. DAGs are built from it, so adding a service is a YAML change.

A bad plan must never half-load: every problem is reported at once, each as
``<file>: <field path>: <reason>``, so an Airflow import error tells the operator exactly
which line of YAML to fix.

Strings may reference environment variables as ``${NAME}``; an unset variable is an error
(naming the field), never an empty string silently spliced into a path.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tracktion_dr.core.errors import PlanProblem

PLAN_ENV_VAR = "DR_PLAN"
CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
DEFAULT_PLAN_FILE = CONFIG_DIR / "sandbox.yaml"

ENVIRONMENT_NAMES = ("production", "drill")


class PlanError(PlanProblem):
    """The plan file cannot be used. The message names the file, the field and the reason."""

    def __init__(self, path: Path | str, problems: list[tuple[str, str]]):
        self.path = str(path)
        self.problems = problems
        lines = [f"{self.path}: {field}: {reason}" for field, reason in problems]
        super().__init__("invalid DR plan\n" + "\n".join(lines))


# --- value types -------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(w|d|h|m|s)")
_DURATION_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def parse_duration(value: Any) -> timedelta:
    """Parse ``30m``, ``2h``, ``1h30m``, ``90s``, ``1d`` into a timedelta.

    Bare numbers are refused on purpose: "30" could be seconds or minutes, and a wrong guess
    in an RTO target silently changes what counts as a met objective.
    """
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError(f"not a duration: {value!r} (write it with a unit, e.g. 30m, 2h, 1d)")
    text = value.strip().lower()
    position, total = 0, timedelta()
    for match in _DURATION_PART.finditer(text):
        if text[position : match.start()].strip():
            break
        total += timedelta(**{_DURATION_UNITS[match.group(2)]: float(match.group(1))})
        position = match.end()
    if not text or position == 0 or text[position:].strip():
        raise ValueError(f"not a duration: {value!r} (write it with a unit, e.g. 30m, 2h, 1d)")
    if total <= timedelta():
        raise ValueError(f"duration must be positive: {value!r}")
    return total


def format_duration(value: timedelta) -> str:
    """Render a timedelta the way operators read targets: ``2h``, ``30m``, ``1h 30m 5s``."""
    seconds = int(round(value.total_seconds()))
    sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    if secs or not parts:
        parts.append(f"{secs}s")
    return sign + " ".join(parts)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]

_LOCATION = re.compile(r"^(file:///|s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/|$))")


def _check_location(value: str) -> str:
    if not _LOCATION.match(value):
        raise ValueError(
            f"not a backup location: {value!r} (use file:///absolute/path or s3://bucket/prefix)"
        )
    return value


Location = Annotated[str, BeforeValidator(_check_location)]

_HTTP_URL = re.compile(r"^https?://[^\s/]+(/\S*)?$")


def _check_http_url(value: str) -> str:
    if not isinstance(value, str) or not _HTTP_URL.match(value):
        raise ValueError(f"not an http(s) URL: {value!r}")
    return value


HttpUrl = Annotated[str, BeforeValidator(_check_http_url)]

_CONN_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,249}$")


def _check_conn_id(value: str) -> str:
    if not isinstance(value, str) or not _CONN_ID.match(value):
        raise ValueError(f"not an Airflow connection id: {value!r}")
    return value


ConnId = Annotated[str, BeforeValidator(_check_conn_id)]

_CRON_FIELD = re.compile(r"^[\d*/,\-A-Za-z?LW#]+$")


def _check_cron(value: str) -> str:
    fields = value.split() if isinstance(value, str) else []
    if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
        raise ValueError(f"not a 5-field cron expression: {value!r}")
    return value


Cron = Annotated[str, BeforeValidator(_check_cron)]


class _Model(BaseModel):
    # Unknown keys are errors: a typo such as "rto_target" must not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- plan sections ------------------------------------------------------------------------


class Tier(_Model):
    rto: Duration
    rpo: Duration
    description: str = ""
    requirements: str = ""


class DataCategory(_Model):
    rpo: Duration
    backup_frequency: str


class EscalationLevel(_Model):
    level: int = Field(ge=1, le=4)
    name: str
    trigger: str
    responders: list[str]
    response_time: Duration
    authority: str
    # When this level is paged, measured from the incident start, if the incident is not
    # resolved by then. Default (see Plan.escalation_thresholds): level 1 at the start, and
    # level N+1 once level N's response time has passed.
    escalate_after: Duration | None = None


class ContactRole(_Model):
    """A role, not a person: names and numbers live in Airflow variables (or a secrets
    backend), so the plan in git holds no personal data."""

    description: str = ""
    variable: str
    backup_variable: str | None = None


class NotificationChannel(_Model):
    kind: Literal["slack", "pagerduty", "email", "status_page", "webhook"]
    conn_id: ConnId
    target: str = ""  # Slack channel, or comma-separated roles for e-mail
    description: str = ""


_DAG_ID = re.compile(r"^dr_[a-z0-9_]{1,200}$")


def _check_dag_id(value: str) -> str:
    if not isinstance(value, str) or not _DAG_ID.match(value):
        raise ValueError(f"not a DR DAG id: {value!r} (dr_ followed by a-z, 0-9, _)")
    return value


DagId = Annotated[str, BeforeValidator(_check_dag_id)]


class IncidentResponse(_Model):
    """How ``dr_incident_response`` runs an incident (the seed's communication plan)."""

    # The recovery DAGs an incident may start (the ``scenario`` param's enum): a new
    # scenario DAG is one line here.
    scenarios: list[DagId] = ["dr_initial_assessment"]
    # The seed's customer notice promises "updates every 30 minutes".
    status_update_interval: Duration = timedelta(minutes=30)
    # Who is paged at activation (the seed's team structure).
    activation_roles: list[str] = [
        "incident_commander",
        "technical_lead",
        "database_administrator",
        "infrastructure_engineer",
        "communications_lead",
    ]
    # Where incident response documents and post-incident reviews are written.
    document_dir: str = "/var/lib/tracktion-dr/incidents"
    # A Slack *bot token* connection (conn_type slack) for creating the war-room channel;
    # webhook connections cannot create channels.
    war_room_slack_conn_id: ConnId | None = None
    channels: list[str] = []  # default: every notification channel of the plan
    # Delivery attempts per channel before it is recorded as failed.
    delivery_attempts: int = Field(default=3, ge=1, le=10)
    delivery_retry_delay: Duration = timedelta(seconds=2)
    # How long an approval waits for the commander before the incident escalates to the
    # next level (the approval is then recorded as timed out; nothing destructive starts).
    approval_timeout: Duration = timedelta(minutes=30)


AlertSource = Literal["alertmanager", "grafana", "pagerduty"]


class AlertRoute(_Model):
    """A routing rule of the alert webhook: the first route whose ``match`` labels all
    equal the alert's labels (and whose ``sources`` include the sender) decides the DAG.

    String values in ``conf`` (also inside lists and objects) may name alert labels as
    ``{label}``: ``services: ["{service}"]`` recovers the service the alert is about. An
    alert without a label its route names is refused with the label's name."""

    name: str
    sources: list[AlertSource] = ["alertmanager", "grafana", "pagerduty"]
    match: dict[str, str] = {}
    dag_id: DagId
    conf: dict[str, Any] = {}


class ScheduledTest(_Model):
    name: str
    cron: Cron
    duration: Duration
    scope: str
    participants: list[str] = []


# --- hosts: where a step that acts on a machine runs ---------------------------------------

_HOST_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-]{0,62}$")
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}$")

# What a host-bound step acts on (the step kit's ``@step(kind, host=...)``): the host of the
# clusters' primaries, of their replicas, of the services' controllers, of the storage, of
# the file:// backups.
HostRole = Literal["database_primary", "database_replica", "application", "storage", "backups"]
HOST_ROLES: tuple[str, ...] = (
    "database_primary",
    "database_replica",
    "application",
    "storage",
    "backups",
)


def _check_queue(value: Any) -> str:
    if not isinstance(value, str) or not _QUEUE_NAME.match(value):
        raise ValueError(f"not a Celery queue name: {value!r} (letters, digits, _ . -)")
    return value


QueueName = Annotated[str, BeforeValidator(_check_queue)]


class Host(_Model):
    """A machine of the environment that DR steps act on (a data directory, a service
    controller, local files). ``queue`` is the Celery queue its own worker consumes: a step
    that acts on the host is routed there, so it runs on that machine. A host without a
    queue (the ledger's database host, the load balancer) is named for the record only; no
    step may be routed to it."""

    queue: QueueName | None = None
    address: str | None = None  # its DNS name, for the operator (not used for routing)
    description: str = ""


_DEBIAN_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,62}$")
# systemd unit names (the Debian template instance is postgresql@<version>-<name>)
_SYSTEMD_UNIT = re.compile(r"^[A-Za-z0-9:_.@\-]{1,250}$")
_DEBIAN_UNIT = re.compile(r"^postgresql@(\d+)-([A-Za-z0-9_][A-Za-z0-9_.\-]*?)(\.service)?$")
_DEBIAN_BIN_DIR = re.compile(r"^/usr/lib/postgresql/(\d+)/bin/?$")


class ClusterControlSpec(_Model):
    """How the cluster's host runs its PostgreSQL: what starts and stops it.

    * ``pg_ctl`` (the default): ``pg_ctl -D <data_directory>``; the configuration
      (postgresql.conf) is in the data directory, as ``initdb`` lays it out.
    * ``pg_ctlcluster``: Debian/Ubuntu's postgresql-common, ``pg_ctlcluster <version>
      <name>``; the configuration is in ``/etc/postgresql/<version>/<name>`` and names the
      data directory (it must be the cluster's ``data_directory``).
    * ``systemd``: a unit, e.g. Debian's ``postgresql@15-main``; ``config_directory``
      defaults to ``/etc/postgresql/<version>/<name>`` for such a unit, else to the data
      directory.
    """

    kind: Literal["pg_ctl", "pg_ctlcluster", "systemd"] = "pg_ctl"
    version: int | None = Field(default=None, ge=10, le=99)  # pg_ctlcluster: major version
    name: str | None = None  # pg_ctlcluster: the cluster's name (``main``)
    unit: str | None = None  # systemd: the unit (``postgresql@15-main``)
    config_directory: str | None = None

    @model_validator(mode="after")
    def _fields_per_kind(self) -> ClusterControlSpec:
        problems = []
        given = {f for f in ("version", "name", "unit") if getattr(self, f) is not None}
        wanted = {"pg_ctl": set(), "pg_ctlcluster": {"version", "name"}, "systemd": {"unit"}}[
            self.kind
        ]
        if missing := sorted(wanted - given):
            problems.append(
                f"kind {self.kind} needs {' and '.join(missing)}"
                + (
                    " (pg_ctlcluster <version> <name>, e.g. version: 15, name: main)"
                    if self.kind == "pg_ctlcluster"
                    else " (e.g. unit: postgresql@15-main)"
                )
            )
        if extra := sorted(given - wanted):
            problems.append(f"{' and '.join(extra)}: not used by kind {self.kind}")
        if self.name is not None and not _DEBIAN_CLUSTER_NAME.match(self.name):
            problems.append(f"name: not a Debian cluster name: {self.name!r}")
        if self.unit is not None and not _SYSTEMD_UNIT.match(self.unit):
            problems.append(f"unit: not a systemd unit name: {self.unit!r}")
        if self.config_directory is not None and not self.config_directory.startswith("/"):
            problems.append(f"config_directory: not an absolute path: {self.config_directory!r}")
        if self.kind == "pg_ctlcluster" and not missing:
            debian = self.debian_config_directory()
            if self.config_directory not in (None, debian, debian + "/"):
                problems.append(
                    f"config_directory: pg_ctlcluster {self.version} {self.name} reads its "
                    f"configuration from {debian}, not {self.config_directory}"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def debian_cluster(self) -> tuple[int, str] | None:
        """(version, name) of a Debian cluster: pg_ctlcluster's, or a postgresql@ unit's."""
        if self.kind == "pg_ctlcluster":
            assert self.version is not None and self.name is not None
            return self.version, self.name
        if self.kind == "systemd" and (match := _DEBIAN_UNIT.match(self.unit or "")):
            return int(match.group(1)), match.group(2)
        return None

    def debian_config_directory(self) -> str:
        version, name = self.debian_cluster() or (0, "")
        return f"/etc/postgresql/{version}/{name}"

    def config_directory_for(self, data_directory: str) -> str:
        """Where postgresql.conf lives: given, else the Debian one, else the data directory."""
        if self.config_directory:
            return self.config_directory.rstrip("/")
        if self.debian_cluster():
            return self.debian_config_directory()
        return data_directory


class Cluster(_Model):
    """A PostgreSQL cluster (one data directory, one postmaster)."""

    conn_id: ConnId  # superuser maintenance connection
    data_directory: str
    # The hosts (environment ``hosts``) of the primary's and the replica's data directory.
    host: str | None = None
    replica_host: str | None = None
    bin_dir: str = "/usr/lib/postgresql/15/bin"
    os_user: str = "postgres"
    # How its host starts and stops it (pg_ctl, pg_ctlcluster, a systemd unit).
    control: ClusterControlSpec = ClusterControlSpec()
    replica_conn_id: ConnId | None = None
    replica_data_directory: str | None = None
    # How the replica's host starts and stops the replica (default pg_ctl).
    replica_control: ClusterControlSpec | None = None
    # A role with the REPLICATION attribute, for pg_basebackup (the superuser connection
    # above is not used for that: base backups need only replication rights).
    replication_conn_id: ConnId | None = None

    @model_validator(mode="after")
    def _control_fits_the_cluster(self) -> Cluster:
        problems = [
            *_control_problems("control", self.control, self.data_directory, self.bin_dir),
            *(
                _control_problems(
                    "replica_control",
                    self.replica_control,
                    self.replica_data_directory or "",
                    self.bin_dir,
                )
                if self.replica_control
                else []
            ),
        ]
        if self.replica_control and not self.replica_data_directory:
            problems.append("replica_control: there is no replica_data_directory to control")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _control_problems(
    field: str, control: ClusterControlSpec, data_directory: str, bin_dir: str
) -> list[str]:
    """What does not fit between a control and the cluster it controls."""
    problems = []
    config = control.config_directory
    if control.kind == "pg_ctl" and config and config.rstrip("/") != data_directory.rstrip("/"):
        problems.append(
            f"{field}.config_directory: pg_ctl starts the server with the postgresql.conf of "
            f"its data directory ({data_directory}), not {config}; a cluster configured in "
            f"{config} is controlled with kind pg_ctlcluster (Debian) or systemd"
        )
    debian = control.debian_cluster()
    binaries = _DEBIAN_BIN_DIR.match(bin_dir)
    if debian and binaries and int(binaries.group(1)) != debian[0]:
        which = "version" if control.kind == "pg_ctlcluster" else "unit"
        problems.append(
            f"{field}.{which}: the cluster is PostgreSQL {debian[0]} but bin_dir {bin_dir} "
            f"holds PostgreSQL {binaries.group(1)}'s programs"
        )
    return problems


class Database(_Model):
    cluster: str
    name: str
    tier: str
    data_category: str = "transactional"
    restore_jobs: int = Field(default=2, ge=1, le=64)

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", value):
            raise ValueError(f"not a plain PostgreSQL database name: {value!r}")
        return value


class FunctionalCheck(_Model):
    method: Literal["GET", "POST"] = "GET"
    url: HttpUrl
    sample_file: str | None = None  # uploaded as multipart field "file" when set
    expect_status: int = 200
    expect_json: dict[str, Any] = {}
    timeout: Duration = timedelta(seconds=30)


class Service(_Model):
    tier: str
    health_url: HttpUrl
    controller: str
    # Where the service sits in the recovery order (database -> cache -> queue -> storage ->
    # application): a Redis or a message broker declared here is recovered before the
    # application services, by dr_service_dependencies_recovery.
    layer: Literal["cache", "queue", "application"] = "application"
    unit: str | None = None  # program / compose service / systemd unit; defaults to the key
    depends_on: list[str] = []
    functional_check: FunctionalCheck | None = None
    probe_timeout: Duration = timedelta(seconds=5)


class Controller(_Model):
    kind: Literal["supervisord", "docker_compose", "systemd"]
    conn_id: ConnId | None = None  # supervisord: XML-RPC endpoint and credentials
    host: str | None = None  # the application host it runs on (environment ``hosts``)
    compose_file: str | None = None
    project: str | None = None

    @model_validator(mode="after")
    def _required_per_kind(self) -> Controller:
        if self.kind == "supervisord" and not self.conn_id:
            raise ValueError("a supervisord controller needs conn_id (its XML-RPC connection)")
        if self.kind == "docker_compose" and not (self.compose_file and self.project):
            raise ValueError("a docker_compose controller needs compose_file and project")
        return self


class StorageArea(_Model):
    path: str
    data_category: str
    must_be_writable: bool = True
    owner: str | None = None  # "user:group"
    mode: str | None = None  # octal, e.g. "0755"
    audio: bool = False  # dr_storage_recovery checks every file here by content
    # dr_storage_failover: where the area's services can work when its primary storage is
    # lost (a file:// path on other storage), and the setting in the services'
    # configuration that holds the area's path ("<file under a config path>:<dotted.key>",
    # e.g. "app.json:storage.audio_files"); both or neither.
    backup_location: Location | None = None
    path_setting: str | None = None

    @model_validator(mode="after")
    def _failover_consistent(self) -> StorageArea:
        if bool(self.backup_location) != bool(self.path_setting):
            raise ValueError(
                "backup_location and path_setting go together (a failover points the "
                "services' path_setting at the backup_location)"
            )
        if self.backup_location and not self.backup_location.startswith("file://"):
            raise ValueError("backup_location must be a file:// path the services can use")
        if self.path_setting:
            file, sep, key = self.path_setting.partition(":")
            if not sep or not key or not file.endswith((".json", ".yaml", ".yml")):
                raise ValueError(
                    f"path_setting {self.path_setting!r}: use <file>.json|.yaml:<dotted.key>"
                )
        return self


class BackupLocations(_Model):
    logical: Location
    base: Location
    wal_archive: Location
    configuration: Location
    storage: Location
    offsite: Location | None = None
    # Offsite copy (S3, through the amazon provider's S3Hook on this AWS connection).
    offsite_conn_id: ConnId = "aws_default"
    # Optional second copy in another region (the seed's S3 cross-region replication),
    # written by a server-side copy on its own connection (whose extra names the region).
    offsite_cross_region: Location | None = None
    offsite_cross_region_conn_id: ConnId | None = None
    # Where retention moves expired backups (a file:// location outside the others).
    # Unset: retention only reports what it would move, it never touches anything.
    expired: Location | None = None

    @model_validator(mode="after")
    def _offsite_consistent(self) -> BackupLocations:
        if self.offsite_cross_region and not self.offsite:
            raise ValueError("offsite_cross_region needs offsite (the copy is made from it)")
        if self.offsite and not self.offsite.startswith("s3://"):
            raise ValueError(f"offsite must be an s3:// location, not {self.offsite!r}")
        if self.offsite_cross_region and not self.offsite_cross_region.startswith("s3://"):
            raise ValueError("offsite_cross_region must be an s3:// location")
        if self.expired:
            if not self.expired.startswith("file://"):
                raise ValueError("expired must be a file:// location (retention moves files)")
            inside = [
                name
                for name in ("logical", "base", "wal_archive", "configuration", "storage")
                if _nested(self.expired, getattr(self, name))
            ]
            if inside:
                raise ValueError(
                    f"expired must not be inside or contain the {', '.join(inside)} "
                    "location(s): listings of those would pick up expired backups"
                )
        return self


def _nested(a: str, b: str) -> bool:
    """Whether one location is the other or below it."""
    first, second = a.rstrip("/") + "/", b.rstrip("/") + "/"
    return first.startswith(second) or second.startswith(first)


class ServiceSetting(_Model):
    """Where a service reads a third party's endpoint or mode: a ``NAME=value`` line of an
    environment file (``format: env``) or a dotted key of a JSON file (``format: json``).
    The file must be the environment's ``config_env_file`` or lie under one of its
    ``config_paths``, so the configuration safety snapshot covers it (checked at load)."""

    file: str
    format: Literal["env", "json"] = "env"
    key: str

    @model_validator(mode="after")
    def _key_fits_format(self) -> ServiceSetting:
        if not Path(self.file).is_absolute():
            raise ValueError(f"file must be an absolute path: {self.file!r}")
        if self.format == "env" and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.key):
            raise ValueError(f"not an environment variable name: {self.key!r}")
        if self.format == "json" and not all(self.key.split(".")):
            raise ValueError(f"not a dotted JSON key: {self.key!r} (e.g. delivery.gateway_url)")
        return self


class Fallback(_Model):
    """What a service can use while its third party is down. ``value`` is what the
    dependents' setting is switched to (a backup provider's endpoint, or the mode name the
    service understands); a ``backup_provider`` is probed at ``url`` (its health check)
    before anything is switched to it."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]{0,62}$")
    kind: Literal["backup_provider", "degraded_mode", "queue_and_replay"]
    value: str = Field(min_length=1)
    url: HttpUrl | None = None
    timeout: Duration = timedelta(seconds=5)

    @model_validator(mode="after")
    def _backup_is_probed(self) -> Fallback:
        if self.kind == "backup_provider" and not self.url:
            raise ValueError("a backup_provider fallback needs url (its health check)")
        if "\n" in self.value or "\r" in self.value:
            raise ValueError("value must be a single line")
        return self


class ExternalDependency(_Model):
    url: HttpUrl  # the provider's health check
    timeout: Duration = timedelta(seconds=5)
    # An external outage degrades the platform but is not ours to recover.
    severity_when_down: Literal["degraded", "down"] = "degraded"
    # dr_third_party_failover: the value the dependents' setting holds on the primary
    # provider, the services that read it (service -> where), and the fallbacks in order
    # of preference.
    endpoint: str | None = None
    dependents: dict[str, ServiceSetting] = {}
    fallbacks: list[Fallback] = []

    @model_validator(mode="after")
    def _switchable(self) -> ExternalDependency:
        if (self.fallbacks or self.dependents) and not self.endpoint:
            raise ValueError("a dependency with fallbacks or dependents needs endpoint")
        if self.fallbacks and not self.dependents:
            raise ValueError("fallbacks need dependents (the services that are switched)")
        names = [fallback.name for fallback in self.fallbacks]
        if len(set(names)) != len(names):
            raise ValueError(f"fallback names must be unique: {names}")
        if self.endpoint in {fallback.value for fallback in self.fallbacks}:
            raise ValueError("a fallback's value must differ from the primary endpoint")
        return self

    def fallback(self, name: str) -> Fallback | None:
        return next((f for f in self.fallbacks if f.name == name), None)


class LoadBalancer(_Model):
    conn_id: ConnId


def _check_mode(value: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"0?[0-7]{3}", value):
        raise ValueError(f'not an octal file mode: {value!r} (e.g. "0640")')
    return value


FileMode = Annotated[str, BeforeValidator(_check_mode)]


def _check_owner(value: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(
        r"[a-z_][a-z0-9_\-]*:[a-z_][a-z0-9_\-]*", value
    ):
        raise ValueError(f"not an owner: {value!r} (write user:group)")
    return value


Owner = Annotated[str, BeforeValidator(_check_owner)]


def _check_env_prefix(value: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Z][A-Z0-9_]*", value):
        raise ValueError(f"not an environment variable prefix: {value!r} (e.g. TRACKTION_)")
    return value


EnvPrefix = Annotated[str, BeforeValidator(_check_env_prefix)]


class Infrastructure(_Model):
    """dr_infrastructure_recovery: what to check beyond the plan's own targets, the
    thresholds, and which repairs the plan allows (none that rewrites system files)."""

    hosts: list[str] = []  # extra names to resolve (the plan's URLs' hosts always are)
    min_free_disk_percent: float = Field(default=10, ge=0, le=100)
    min_free_memory_percent: float = Field(default=5, ge=0, le=100)
    repair_directories: bool = True  # recreate missing storage directories (owner, mode)
    restart_service_manager: bool = False  # e.g. systemctl restart docker


class ValidationSettings(_Model):
    """What ``dr_post_recovery_validation`` judges an environment by (the seed's checklist,
    with its hard-coded numbers moved here)."""

    # Ports allowed to listen (TCP, any address). None: not configured, the port part of
    # the security check is reported as skipped, never as passed.
    allowed_ports: list[int] | None = None
    # Most permissive mode a config file may have, by file-name glob (first match wins);
    # a file no glob names may be at most "*"'s mode. The seed: 640 (or 600).
    config_file_modes: dict[str, str] = {"*": "0640"}
    # Health answer time of every service (the seed: 1.0 s).
    max_health_latency: Duration = timedelta(seconds=1)
    # Resource ceilings (the seed: CPU < 80 %, memory < 85 %, disk < 90 %).
    max_cpu_percent: float = Field(default=80, gt=0, le=100)
    max_memory_percent: float = Field(default=85, gt=0, le=100)
    max_disk_percent: float = Field(default=90, gt=0, le=100)
    # Prometheus / Grafana health URLs by name. Empty: the monitoring check is skipped
    # with a note ("no monitoring configured"), shown as skipped.
    monitoring: dict[str, HttpUrl] = {}
    # "A recent verified backup exists": the newest verified dump is at most this old.
    backup_max_age: Duration = timedelta(days=1)

    @field_validator("config_file_modes")
    @classmethod
    def _octal_modes(cls, value: dict[str, str]) -> dict[str, str]:
        for mode in value.values():
            if not isinstance(mode, str) or not re.fullmatch(r"0?[0-7]{3}", mode):
                raise ValueError(f"not an octal file mode: {mode!r} (e.g. 0640)")
        return value

    @field_validator("allowed_ports")
    @classmethod
    def _port_numbers(cls, value: list[int] | None) -> list[int] | None:
        for port in value or []:
            if not 1 <= port <= 65535:
                raise ValueError(f"not a TCP port: {port}")
        return value


# --- whole-site recovery: the recovery site's stack, and DNS (plan scenarios 1 and 5) ----

_STACK_NAME = r"^[A-Za-z][A-Za-z0-9-]{0,127}$"
_AWS_REGION = r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$"
_ENDPOINT_SCHEMES = ("postgresql://", "http://", "https://")


def _check_parameter_value(value: Any) -> str:
    # YAML reads 100 as a number; CloudFormation takes every parameter value as a string.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"a CloudFormation parameter value is a string or a number: {value!r}")
    return str(value)


ParameterValue = Annotated[str, BeforeValidator(_check_parameter_value)]


def endpoint_placeholders(template: str) -> list[str]:
    """The ``{OutputKey}`` names an endpoint template uses (ValueError when malformed)."""
    import string

    names = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{template!r}: {exc} (write outputs as {{OutputKey}})") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", name) or spec or conversion:
            raise ValueError(f"{template!r}: {{{name}}} is not an output name ({{OutputKey}})")
        names.append(name)
    return names


class RecoverySite(_Model):
    """dr_site_provision: the recovery site's CloudFormation stack (the plan's "minimum" or
    "full" recovery infrastructure, ``include/config/cloudformation/recovery-<template>.yaml``),
    where and through which AWS connection it is made, its parameters (the sizes), and how
    its Outputs become the endpoints the recovery uses.

    ``endpoints`` maps a database or service of the environment, or ``load_balancer``, to a
    URL built from the stack's Outputs: ``postgresql://{DatabaseAddress}:{DatabasePort}/tracktion``.
    Parameter and Output names are checked against the template when the plan loads."""

    stack_name: str = Field(pattern=_STACK_NAME)
    template: Literal["minimum", "full"]
    # The template's file when it is not the project's own (an absolute path); default
    # include/config/cloudformation/recovery-<template>.yaml.
    template_file: str | None = None
    region: str = Field(pattern=_AWS_REGION)
    aws_conn_id: ConnId = "aws_default"
    parameters: dict[str, ParameterValue] = {}
    endpoints: dict[str, str] = Field(min_length=1)
    # The tier whose RTO the site's provisioning counts against (the plan's scenario 1,
    # complete data-center failure, estimates 2-4 hours).
    tier: str = "important"
    # How long the stack may take to create or update (RDS alone takes 10-20 minutes).
    create_timeout: Duration = timedelta(hours=1)
    # dr_site_failover: what runs in the site once the stack exists. ``clusters``: the
    # site's PostgreSQL clusters, keyed by the environment's cluster each replaces (empty
    # data directories until the failover restores them); ``database_settings``: written
    # into a restored cluster's configuration (its port, archiving off until the site's
    # own backups are set up); ``backups``: the offsite copy the site restores from (the
    # cross-region s3:// copy; a file:// stand-in in the sandbox); ``services``: the
    # environment's services as they run in the site (their health URLs, units, checks);
    # ``balancer_server``: the site's server name in its load balancer's backends.
    clusters: dict[str, Cluster] = {}
    database_settings: dict[str, ParameterValue] = {}
    backups: BackupLocations | None = None
    services: dict[str, Service] = {}
    # The site's load balancer when a controller of the plan runs it (the sandbox's);
    # None when the stack's own (an ALB) needs no start.
    balancer: Service | None = None
    balancer_server: str = Field(default="recovery", pattern=r"^[a-z][a-z0-9_-]{0,62}$")

    @model_validator(mode="after")
    def _fits_the_template(self) -> RecoverySite:
        from tracktion_dr.core.site_templates import template_outline

        if self.template_file and not Path(self.template_file).is_absolute():
            raise ValueError(f"template_file must be an absolute path: {self.template_file!r}")
        outline = template_outline(self.template_path)
        unknown = sorted(set(self.parameters) - set(outline.parameters))
        if unknown:
            raise ValueError(
                f"parameters {unknown} are not parameters of the {self.template} template "
                f"(it takes {sorted(outline.parameters)})"
            )
        missing = [p for p in outline.required_parameters if p not in self.parameters]
        if missing:
            raise ValueError(f"the {self.template} template needs parameters {missing}")
        if self.clusters and self.backups is None:
            raise ValueError("clusters need backups (the offsite copy they are restored from)")
        for setting in self.database_settings:
            if not re.fullmatch(r"[a-z_][a-z0-9_.]*", setting):
                raise ValueError(f"database_settings: {setting!r} is not a PostgreSQL setting name")
        for name, url in self.endpoints.items():
            # "{ServiceURL}": an Output that is itself a URL (checked once it is known).
            if not url.startswith((*_ENDPOINT_SCHEMES, "{")):
                raise ValueError(
                    f"endpoints.{name}: {url!r} is not a URL ({', '.join(_ENDPOINT_SCHEMES)}) "
                    "nor an {Output} that is one"
                )
            outputs = [o for o in endpoint_placeholders(url) if o not in outline.outputs]
            if outputs:
                raise ValueError(
                    f"endpoints.{name}: {outputs} are not Outputs of the {self.template} "
                    f"template (it has {sorted(outline.outputs)})"
                )
        return self

    @property
    def template_path(self) -> Path:
        from tracktion_dr.core.site_templates import template_path

        return Path(self.template_file) if self.template_file else template_path(self.template)


_DOMAIN_NAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,62}$"
)


def _check_domain_name(value: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"not a domain name: {value!r}")
    name = value.strip().lower().removesuffix(".")
    if not _DOMAIN_NAME.match(name):
        raise ValueError(f"not a domain name: {value!r}")
    return name


DomainName = Annotated[str, BeforeValidator(_check_domain_name)]


class DnsTarget(_Model):
    """What a record holds when it points at one site, and how to know that site answers."""

    values: list[str] = Field(min_length=1)
    health_url: HttpUrl


class DnsRecord(_Model):
    type: Literal["A", "AAAA", "CNAME"]
    ttl: int = Field(default=60, ge=1, le=86400)
    # dr_network_dns may switch the record between primary and secondary only when this
    # is set; other records are verified, never changed.
    allow_switch: bool = False
    primary: DnsTarget
    secondary: DnsTarget | None = None

    @model_validator(mode="after")
    def _values_fit_the_type(self) -> DnsRecord:
        import ipaddress

        for side, target in (("primary", self.primary), ("secondary", self.secondary)):
            if target is None:
                continue
            for value in target.values:
                if self.type == "CNAME":
                    _check_domain_name(value)
                    continue
                try:
                    address = ipaddress.ip_address(value)
                except ValueError:
                    raise ValueError(f"{side}: {value!r} is not an IP address") from None
                if address.version != (4 if self.type == "A" else 6):
                    raise ValueError(f"{side}: {value!r} is not an IPv{address.version} record")
            if self.type == "CNAME" and len(target.values) != 1:
                raise ValueError(f"{side}: a CNAME record holds exactly one value")
        if self.allow_switch and self.secondary is None:
            raise ValueError("allow_switch needs a secondary (what the record is switched to)")
        if self.secondary and _normalized(self.secondary.values) == _normalized(
            self.primary.values
        ):
            raise ValueError("the secondary's values must differ from the primary's")
        return self


def _normalized(values: list[str]) -> list[str]:
    return sorted(v.lower().removesuffix(".") for v in values)


class DnsViewpoint(_Model):
    """Where a record's resolution is checked from: ``route53_api`` reads the hosted zone
    through the Route53 API (what the authoritative servers serve once a change is
    INSYNC); ``resolver`` asks a DNS resolver at ``address`` (what clients behind it see)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]{0,62}$")
    kind: Literal["route53_api", "resolver"]
    address: str | None = None
    port: int = Field(default=53, ge=1, le=65535)

    @model_validator(mode="after")
    def _resolver_has_an_address(self) -> DnsViewpoint:
        import ipaddress

        if self.kind == "resolver":
            try:
                ipaddress.ip_address(self.address or "")
            except ValueError:
                raise ValueError(
                    f"a resolver viewpoint needs address, an IP address (got {self.address!r})"
                ) from None
        elif self.address:
            raise ValueError("a route53_api viewpoint takes no address")
        return self


class Dns(_Model):
    """dr_network_dns (the plan's scenario 5): the Route53 hosted zone, its records with
    their primary and secondary values, and the viewpoints resolution is checked from."""

    hosted_zone: DomainName
    aws_conn_id: ConnId = "aws_default"
    tier: str = "critical"
    viewpoints: list[DnsViewpoint] = Field(min_length=1)
    records: dict[DomainName, DnsRecord] = Field(min_length=1)
    probe_timeout: Duration = timedelta(seconds=5)
    # How long a change may take to be INSYNC (served by every Route53 server).
    sync_timeout: Duration = timedelta(minutes=10)

    @model_validator(mode="after")
    def _records_in_the_zone(self) -> Dns:
        outside = [
            name
            for name in self.records
            if name != self.hosted_zone and not name.endswith("." + self.hosted_zone)
        ]
        if outside:
            raise ValueError(f"records {outside} are not in the hosted zone {self.hosted_zone}")
        names = [viewpoint.name for viewpoint in self.viewpoints]
        if len(set(names)) != len(names):
            raise ValueError(f"viewpoint names must be unique: {names}")
        return self


class Environment(_Model):
    description: str = ""
    destructive_requires_confirmation: bool
    clusters: dict[str, Cluster]
    databases: dict[str, Database]
    services: dict[str, Service]
    controllers: dict[str, Controller]
    storage: dict[str, StorageArea] = {}
    # The machines DR steps act on and their workers' queues; clusters, controllers,
    # storage_host and backup_host name them. No hosts: every step stays on the default queue.
    hosts: dict[str, Host] = {}
    storage_host: str | None = None  # the host that holds the storage areas' paths
    # The host that holds the file:// backup locations (dumps, base backups, the WAL
    # archive its archive_command writes, snapshots): the backup jobs and the steps that
    # read backups run there.
    backup_host: str | None = None
    config_paths: list[str] = []
    # dr_config_recovery: the modes the seed sets on restored files (glob -> octal mode),
    # the owner (user:group) when the plan says so, which environment variables a
    # configuration snapshot may restore, and the file they are restored to (mode 0600).
    config_file_modes: dict[str, FileMode] = {"*.conf": "0640", "*.json": "0644"}
    config_owner: Owner | None = None
    config_env_prefixes: list[EnvPrefix] = ["TRACKTION_"]
    config_env_file: str | None = None
    backups: BackupLocations
    external_dependencies: dict[str, ExternalDependency] = {}
    load_balancer: LoadBalancer | None = None
    infrastructure: Infrastructure = Infrastructure()
    probe_timeout: Duration = timedelta(seconds=5)
    validation: ValidationSettings = ValidationSettings()
    # The sandbox's drill and production are the same processes: a drill may stop and
    # start services that production also names only when the plan says so here.
    shares_production_targets: bool = False
    # dr_site_provision: the recovery site's CloudFormation stack; dr_network_dns: the
    # hosted zone's records and the viewpoints they are checked from.
    recovery_site: RecoverySite | None = None
    dns: Dns | None = None

    @field_validator("hosts")
    @classmethod
    def _host_names(cls, value: dict[str, Host]) -> dict[str, Host]:
        bad = sorted(name for name in value if not _HOST_NAME.match(name))
        if bad:
            raise ValueError(f"not host names (lower case, digits, . -): {bad}")
        return value

    def role_hosts(self, role: str) -> dict[str, str]:
        """The hosts a step of ``role`` acts on here: field path (within the environment)
        -> host name, for every cluster / controller / storage that names one."""
        if role == "database_primary":
            return {f"clusters.{n}.host": c.host for n, c in self.clusters.items() if c.host}
        if role == "database_replica":
            return {
                f"clusters.{n}.replica_host": c.replica_host
                for n, c in self.clusters.items()
                if c.replica_host
            }
        if role == "application":
            return {f"controllers.{n}.host": c.host for n, c in self.controllers.items() if c.host}
        if role == "storage":
            return {"storage_host": self.storage_host} if self.storage_host else {}
        if role == "backups":
            return {"backup_host": self.backup_host} if self.backup_host else {}
        raise ValueError(f"unknown host role {role!r} (known: {list(HOST_ROLES)})")

    def dependents_of(self, name: str) -> list[str]:
        """Services that depend on ``name`` (a service, database or storage area), directly
        or through other services, in the order they can be started."""
        affected: set[str] = set()
        frontier = {name}
        while frontier:
            found = {
                s for s, spec in self.services.items() if set(spec.depends_on) & frontier
            } - affected
            affected |= found
            frontier = found
        return self.start_order(affected)

    def start_order(self, services: set[str] | list[str]) -> list[str]:
        """``services`` ordered so every service starts after the services it depends on
        (the plan is validated acyclic); ties keep the plan's order."""
        wanted = [s for s in self.services if s in set(services)]
        ordered: list[str] = []
        while wanted:
            ready = [s for s in wanted if not (set(self.services[s].depends_on) & set(wanted))]
            ordered.extend(ready)
            wanted = [s for s in wanted if s not in ready]
        return ordered

    def start_levels(self, services: set[str] | list[str]) -> list[list[str]]:
        """``services`` in dependency levels: each level depends only on earlier ones, so
        the services of one level can start (and, in reverse, stop) at the same time."""
        wanted = [s for s in self.services if s in set(services)]
        levels: list[list[str]] = []
        while wanted:
            ready = [s for s in wanted if not (set(self.services[s].depends_on) & set(wanted))]
            levels.append(ready)
            wanted = [s for s in wanted if s not in ready]
        return levels


class BackupRetention(_Model):
    """The seed's daily and weekly levels, as a grandfather-father-son policy.

    Kept: every backup of the last ``keep_daily`` days that have one, and the newest of
    each of the last ``keep_weekly`` ISO weeks; always the newest verified backup; every
    WAL segment a kept base backup needs. Expired backups are moved aside into the plan's
    ``backups.expired`` area, never deleted here.
    """

    keep_daily: int = Field(default=7, ge=1, le=366)
    keep_weekly: int = Field(default=4, ge=0, le=520)


# How base backups are compressed: none (plain format: the backup is a data directory), or
# pg_basebackup's --compress value, <server|client>-<zstd|lz4|gzip>[:level=N,workers=N].
BASE_BACKUP_COMPRESSION = (
    r"^(?:none|(?P<where>server|client)-(?P<algorithm>zstd|lz4|gzip)"
    r"(?::(?P<detail>[a-z0-9=,]+))?)$"
)


class BackupSchedule(_Model):
    """When the ``dr_backup_*`` DAGs run (5-field cron, UTC). Defaults are the seed's
    frequencies: continuous WAL archiving watched every 5 minutes, daily database and
    configuration backups, weekly full file-storage backups with daily incrementals and a
    near-real-time sync."""

    logical_dump: Cron = "0 2 * * *"  # Database Level 2: daily backup
    base_backup: Cron = "0 1 * * *"  # Level 1/2: the base PITR replays WAL onto
    wal_watch: Cron = "*/5 * * * *"  # transactional RPO 15m: check 3x per window
    config_snapshot: Cron = "0 4 * * *"  # "Daily configuration snapshots"
    storage_sync: Cron = "*/10 * * * *"  # File System Level 1: real-time(-ish) sync
    storage_incremental: Cron = "0 3 * * 1-6"  # Level 2: daily incremental
    storage_full: Cron = "0 3 * * 0"  # Level 3: weekly full
    verify: Cron = "0 6 * * *"
    offsite: Cron = "30 * * * *"
    retention: Cron = "0 7 * * *"
    rpo_watch: Cron = "*/5 * * * *"
    # Large files go up to S3 in parts (boto3 TransferConfig) above this size.
    multipart_threshold_mb: int = Field(default=64, ge=5, le=5120)
    multipart_chunk_mb: int = Field(default=64, ge=5, le=5120)
    keep: BackupRetention = BackupRetention()
    # Measured (bench/results/backup_compression.md): zstd in the server's threads makes a
    # base backup about a fifth of its plain size; PITR from it is no slower than from a plain
    # one when the backup is read from disk (lz4: a third, faster to extract).
    base_backup_compression: str = Field(
        default="server-zstd:level=3,workers=2", pattern=BASE_BACKUP_COMPRESSION
    )


class DrillStep(_Model):
    """One step of the quarterly chain: a DAG triggered with ``conf`` and waited for."""

    dag_id: str = Field(pattern=r"^dr_[a-z0-9_]+$")
    conf: dict[str, Any] = {}
    label: str = ""


class MonthlyDrill(_Model):
    """``dr_test_monthly``: the seed's component test, on scratch resources."""

    environment: Literal["drill"] = "drill"
    databases: list[str] = []  # restored into scratch databases (empty: every database)
    services: list[str] = []  # stopped, started and gated on health one after the other
    storage_areas: list[str] = []  # write, back up, delete, restore, verify
    # Scratch databases are named <prefix><database>_<tag>; never a plan database's name.
    scratch_prefix: str = Field(default="dr_test_", min_length=3, pattern=r"^[a-z][a-z0-9_]*_$")
    scratch_dir: str  # scratch files (storage test backups); never inside a production path


class QuarterlyDrill(_Model):
    """``dr_test_quarterly``: simulated loss of the drill cluster, then ``steps`` in order."""

    environment: Literal["drill"] = "drill"
    cluster: str = "main"
    steps: list[DrillStep] = []
    step_timeout: Duration = timedelta(hours=1)


class Drills(_Model):
    monthly: MonthlyDrill
    quarterly: QuarterlyDrill = QuarterlyDrill()


class Reports(_Model):
    """Where run reports go (Markdown, HTML, JSON) and who gets them."""

    location: str  # a local directory; one sub-directory per DAG
    trend_runs: int = Field(default=12, ge=2, le=200)  # drills shown in the trend chart
    channels: list[str] = ["email", "slack"]  # notification channels the report is sent to


class AppRole(_Model):
    """A database role the services log in as: dr_security_incident rotates its password
    and writes the new credential where the services read it."""

    database: str  # the plan's database the services reach with it
    # The variable of the environment's config_env_file that holds the services' DSN
    # (postgresql://role:password@host:port/db); rewritten with the new password.
    env_var: str = Field(default="TRACKTION_DATABASE_URL", pattern=r"^[A-Z][A-Z0-9_]*$")
    # The Airflow connection holding the credential before the first rotation (read for
    # the old password, to prove it refused afterwards). None: the env file only.
    conn_id: ConnId | None = None
    # Where Airflow reads that connection after a rotation: its entry in the secrets backend
    # (AWS Secrets Manager, e.g. "airflow/connections/tracktion_app_db" for Airflow's
    # SecretsManagerBackend), written through the AWS connection named here. None: the
    # connection is not rewritten (then update it by hand after a rotation).
    connection_secret: str | None = None
    secrets_conn_id: ConnId = "aws_default"


class Security(_Model):
    """dr_security_incident: where forensic evidence goes (an S3 bucket created with
    Object Lock, so a compromised host cannot delete or rewrite it), how long it is
    retained, and the application roles whose credentials are rotated."""

    evidence_location: Location  # s3://bucket/prefix (the bucket must have Object Lock)
    evidence_conn_id: ConnId = "aws_default"
    lock_mode: Literal["COMPLIANCE", "GOVERNANCE"] = "COMPLIANCE"
    retention: Duration = timedelta(days=365)
    # Local working directory for the evidence bundle and the run's state notes.
    work_dir: str = "/var/lib/tracktion-dr/security"
    # PostgreSQL server log files (their tail goes into the evidence), per environment.
    postgres_logs: list[str] = []
    log_tail_lines: int = Field(default=5000, ge=100, le=1_000_000)
    app_roles: dict[str, AppRole] = {}

    @field_validator("evidence_location")
    @classmethod
    def _s3_only(cls, value: str) -> str:
        if not value.startswith("s3://"):
            raise ValueError("evidence must go to an object-locked S3 bucket (s3://bucket/prefix)")
        return value


class Plan(_Model):
    name: str
    version: Literal[1] = 1
    tiers: dict[str, Tier]
    data_categories: dict[str, DataCategory]
    escalation: list[EscalationLevel]
    contacts: dict[str, ContactRole]
    notifications: dict[str, NotificationChannel]
    test_schedule: dict[str, ScheduledTest]
    environments: dict[str, Environment]
    default_environment: Literal["production", "drill"] = "drill"
    backup_schedule: BackupSchedule = BackupSchedule()
    incident_response: IncidentResponse = IncidentResponse()
    alert_routes: list[AlertRoute] = []
    drills: Drills | None = None
    reports: Reports | None = None
    security: Security | None = None

    @field_validator("environments")
    @classmethod
    def _known_environments(cls, value: dict[str, Environment]) -> dict[str, Environment]:
        unknown = sorted(set(value) - set(ENVIRONMENT_NAMES))
        if unknown:
            raise ValueError(
                f"unknown environment(s) {unknown}; allowed: {list(ENVIRONMENT_NAMES)}"
            )
        if "production" not in value:
            raise ValueError("the plan must describe the production environment")
        return value

    @field_validator("escalation")
    @classmethod
    def _four_levels(cls, value: list[EscalationLevel]) -> list[EscalationLevel]:
        if sorted(level.level for level in value) != [1, 2, 3, 4]:
            raise ValueError("escalation must list levels 1, 2, 3 and 4 exactly once each")
        return value

    # -- cross references: checked after the structure is known to be right --------------

    def reference_problems(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []

        def check(path: str, name: str, known: dict[str, Any] | set[str], what: str) -> None:
            if name not in known:
                problems.append((path, f"unknown {what} {name!r} (known: {sorted(known)})"))

        response = self.incident_response
        for i, role in enumerate(response.activation_roles):
            check(f"incident_response.activation_roles[{i}]", role, self.contacts, "contact role")
        for i, channel in enumerate(response.channels):
            check(f"incident_response.channels[{i}]", channel, self.notifications, "channel")
        for i, route in enumerate(self.alert_routes):
            if route.dag_id != "dr_incident_response" and route.dag_id not in response.scenarios:
                problems.append(
                    (
                        f"alert_routes[{i}].dag_id",
                        f"{route.dag_id!r} is neither dr_incident_response nor one of "
                        f"incident_response.scenarios {response.scenarios}",
                    )
                )
            scenario = route.conf.get("scenario")
            if scenario and scenario not in response.scenarios:
                problems.append(
                    (
                        f"alert_routes[{i}].conf.scenario",
                        f"unknown scenario {scenario!r} (known: {response.scenarios})",
                    )
                )
        if self.reports:
            for i, channel in enumerate(self.reports.channels):
                check(f"reports.channels[{i}]", channel, self.notifications, "channel")
        if self.security:
            for role, spec in self.security.app_roles.items():
                for env_name, env in self.environments.items():
                    check(
                        f"security.app_roles.{role}.database",
                        spec.database,
                        env.databases,
                        f"database (environments.{env_name})",
                    )
        if self.drills:
            monthly, quarterly = self.drills.monthly, self.drills.quarterly
            env = self.environments.get(monthly.environment)
            if env is None:
                problems.append(("drills.monthly.environment", "not defined in environments"))
            else:
                for i, name in enumerate(monthly.databases):
                    check(f"drills.monthly.databases[{i}]", name, env.databases, "database")
                for i, name in enumerate(monthly.services):
                    check(f"drills.monthly.services[{i}]", name, env.services, "service")
                for i, name in enumerate(monthly.storage_areas):
                    check(f"drills.monthly.storage_areas[{i}]", name, env.storage, "storage area")
            env = self.environments.get(quarterly.environment)
            if env is None:
                problems.append(("drills.quarterly.environment", "not defined in environments"))
            else:
                check("drills.quarterly.cluster", quarterly.cluster, env.clusters, "cluster")
        thresholds = [after for _, after in self.escalation_thresholds()]
        if thresholds != sorted(thresholds):
            problems.append(
                ("escalation", "escalation thresholds must not decrease from level 1 to 4")
            )
        if self.default_environment not in self.environments:
            problems.append(("default_environment", f"{self.default_environment!r} is not defined"))
        for i, level in enumerate(self.escalation):
            for j, role in enumerate(level.responders):
                check(f"escalation[{i}].responders[{j}]", role, self.contacts, "contact role")
        for env_name, env in self.environments.items():
            base = f"environments.{env_name}"
            for name, db in env.databases.items():
                check(f"{base}.databases.{name}.cluster", db.cluster, env.clusters, "cluster")
                check(f"{base}.databases.{name}.tier", db.tier, self.tiers, "tier")
                check(
                    f"{base}.databases.{name}.data_category",
                    db.data_category,
                    self.data_categories,
                    "data category",
                )
            for name, area in env.storage.items():
                check(
                    f"{base}.storage.{name}.data_category",
                    area.data_category,
                    self.data_categories,
                    "data category",
                )
            dependency_targets = set(env.services) | set(env.databases) | set(env.storage)
            for name, service in env.services.items():
                path = f"{base}.services.{name}"
                check(f"{path}.tier", service.tier, self.tiers, "tier")
                check(f"{path}.controller", service.controller, env.controllers, "controller")
                for i, dependency in enumerate(service.depends_on):
                    if dependency == name:
                        problems.append(
                            (f"{path}.depends_on[{i}]", "a service cannot depend on itself")
                        )
                    else:
                        check(
                            f"{path}.depends_on[{i}]",
                            dependency,
                            dependency_targets,
                            "service, database or storage area",
                        )
            problems += _dependency_problems(base, env)
            problems += _site_problems(base, env, self.tiers)
            problems += _host_problems(base, env)
            cycle = _find_cycle({n: s.depends_on for n, s in env.services.items()})
            if cycle:
                problems.append((f"{base}.services", f"dependency cycle: {' -> '.join(cycle)}"))
        problems += self._routing_problems()
        return problems

    def _routing_problems(self) -> list[tuple[str, str]]:
        """A task has one queue, fixed when its DAG is parsed: every environment must send
        a role's steps to the same queue, or a run in one environment would act on
        another's host. An environment that names no host for a role while another does
        is refused for the same reason (its runs would go to the other's host)."""
        problems: list[tuple[str, str]] = []
        for role in HOST_ROLES:
            first: tuple[str, str] | None = None  # (field path, queue)
            unrouted: list[str] = []
            for env_name, env in self.environments.items():
                paths = env.role_hosts(role)
                if not paths:
                    if _role_applies(env, role):
                        unrouted.append(env_name)
                    continue
                for path, host in paths.items():
                    queue = env.hosts[host].queue if host in env.hosts else None
                    if queue is None:
                        continue  # reported by _host_problems
                    where = f"environments.{env_name}.{path}"
                    if first is None:
                        first = (where, queue)
                    elif queue != first[1]:
                        problems.append(
                            (
                                where,
                                f"sends {role} steps to queue {queue!r}, but {first[0]} "
                                f"sends them to {first[1]!r}: a task has one queue, fixed when "
                                "its DAG is parsed, so a run would act on the wrong host "
                                "(put these on hosts whose workers share one queue, or run "
                                "the other environment from its own Airflow deployment)",
                            )
                        )
            if first is not None:
                for env_name in unrouted:
                    problems.append(
                        (
                            f"environments.{env_name}",
                            f"names no host for its {role} steps, but {first[0]} sends them "
                            f"to queue {first[1]!r}: this environment's runs would act on that "
                            "host; name its hosts (the same queue) or run it from its own "
                            "Airflow deployment",
                        )
                    )
        return problems

    def queue_for(self, role: str) -> str | None:
        """The Celery queue of the host that ``role``'s steps act on; None when the plan
        names no host for it (the step stays on the default queue). Validated at load to
        be one queue across the environments."""
        for env in self.environments.values():
            for host in env.role_hosts(role).values():
                if host in env.hosts and env.hosts[host].queue:
                    return env.hosts[host].queue
        return None

    # -- conveniences used by DAGs --------------------------------------------------------

    def environment(self, name: str | None = None) -> Environment:
        key = name or self.default_environment
        try:
            return self.environments[key]
        except KeyError:
            raise PlanError(
                "<plan>",
                [("environment", f"{key!r} is not defined (have {sorted(self.environments)})")],
            ) from None

    def escalation_thresholds(self) -> list[tuple[EscalationLevel, timedelta]]:
        """Each level with the time after the incident start at which it is paged."""
        levels = sorted(self.escalation, key=lambda level: level.level)
        thresholds: list[tuple[EscalationLevel, timedelta]] = []
        for i, level in enumerate(levels):
            default = timedelta() if i == 0 else levels[i - 1].response_time
            thresholds.append((level, level.escalate_after or default))
        return thresholds

    def tier_of_service(self, environment: str, service: str) -> Tier:
        return self.tiers[self.environment(environment).services[service].tier]


def _dependency_problems(base: str, env: Environment) -> list[tuple[str, str]]:
    """External dependencies' dependents: plan services, read from a file the
    configuration safety snapshot covers (so a failed switch can be rolled back)."""
    problems: list[tuple[str, str]] = []
    covered = [Path(p) for p in env.config_paths]
    for name, dependency in env.external_dependencies.items():
        for service, setting in dependency.dependents.items():
            path = f"{base}.external_dependencies.{name}.dependents.{service}"
            if service not in env.services:
                problems.append(
                    (path, f"unknown service {service!r} (known: {sorted(env.services)})")
                )
            file = Path(setting.file)
            if not (
                (env.config_env_file and file == Path(env.config_env_file))
                or any(root in file.parents for root in covered)
            ):
                problems.append(
                    (
                        f"{path}.file",
                        f"{setting.file} is neither the config_env_file nor under the "
                        "config_paths: the configuration safety snapshot would not cover it",
                    )
                )
    return problems


def _role_applies(env: Environment, role: str) -> bool:
    """Whether the environment has anything a step of ``role`` would act on."""
    if role == "database_primary":
        return bool(env.clusters)
    if role == "database_replica":
        return any(c.replica_data_directory for c in env.clusters.values())
    if role == "application":
        return bool(env.services)
    if role == "backups":
        return any(
            str(location).startswith("file://")
            for location in (
                env.backups.logical,
                env.backups.base,
                env.backups.wal_archive,
                env.backups.configuration,
                env.backups.storage,
            )
        )
    return bool(env.storage)


def _host_problems(base: str, env: Environment) -> list[tuple[str, str]]:
    """Every host a cluster, controller or the storage names is one of the environment's
    hosts, and has a queue (a step acting on it must be routed to its worker)."""
    problems: list[tuple[str, str]] = []
    for role in HOST_ROLES:
        for path, host in env.role_hosts(role).items():
            if host not in env.hosts:
                problems.append(
                    (
                        f"{base}.{path}",
                        f"unknown host {host!r} (known: {sorted(env.hosts)}); "
                        f"declare it under {base}.hosts",
                    )
                )
            elif env.hosts[host].queue is None:
                problems.append(
                    (
                        f"{base}.{path}",
                        f"host {host!r} has no queue: its {role} steps cannot be routed to "
                        f"a worker on it (set {base}.hosts.{host}.queue)",
                    )
                )
    return problems


def _site_problems(base: str, env: Environment, tiers: dict[str, Tier]) -> list[tuple[str, str]]:
    """The recovery site's endpoints name the environment's databases and services (or
    the load balancer); the site's and the DNS section's tiers exist."""
    problems: list[tuple[str, str]] = []
    if env.recovery_site:
        path = f"{base}.recovery_site"
        known = set(env.databases) | set(env.services) | {"load_balancer"}
        for name in env.recovery_site.endpoints:
            if name not in known:
                problems.append(
                    (
                        f"{path}.endpoints.{name}",
                        f"not a database, service or load_balancer of the environment "
                        f"(known: {sorted(known)})",
                    )
                )
        if env.recovery_site.tier not in tiers:
            problems.append((f"{path}.tier", f"unknown tier {env.recovery_site.tier!r}"))
        site = env.recovery_site
        for name in site.clusters:
            if name not in env.clusters:
                problems.append(
                    (
                        f"{path}.clusters.{name}",
                        f"not a cluster of the environment ({sorted(env.clusters)})",
                    )
                )
        targets = set(site.services) | set(env.databases) | set(env.storage)
        if site.balancer and site.balancer.controller not in env.controllers:
            problems.append(
                (f"{path}.balancer.controller", f"unknown controller {site.balancer.controller!r}")
            )
        for name, service in site.services.items():
            if name not in env.services:
                problems.append(
                    (
                        f"{path}.services.{name}",
                        f"not a service of the environment ({sorted(env.services)})",
                    )
                )
            if service.controller not in env.controllers:
                problems.append(
                    (
                        f"{path}.services.{name}.controller",
                        f"unknown controller {service.controller!r}",
                    )
                )
            for i, dependency in enumerate(service.depends_on):
                if dependency not in targets or dependency == name:
                    problems.append(
                        (
                            f"{path}.services.{name}.depends_on[{i}]",
                            f"{dependency!r} is not in the site",
                        )
                    )
    if env.dns and env.dns.tier not in tiers:
        problems.append((f"{base}.dns.tier", f"unknown tier {env.dns.tier!r}"))
    return problems


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """Return one dependency cycle among services (edges to non-services are ignored)."""
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return visiting[visiting.index(node) :] + [node]
        if node in done or node not in graph:
            return None
        visiting.append(node)
        for neighbour in graph[node]:
            found = visit(neighbour)
            if found:
                return found
        visiting.pop()
        done.add(node)
        return None

    for start in graph:
        found = visit(start)
        if found:
            return found
    return None


# --- loading ------------------------------------------------------------------------------

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(value: Any, path: str, problems: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                problems.append((path, f"environment variable {name} is not set"))
                return match.group(0)
            return os.environ[name]

        return _ENV_REFERENCE.sub(substitute, value)
    if isinstance(value, dict):
        return {
            k: _expand(v, f"{path}.{k}" if path else str(k), problems) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_expand(v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    return value


def _field_path(location: tuple[int | str, ...]) -> str:
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "<root>"


def _reason(error: dict[str, Any]) -> str:
    message = str(error["msg"])
    # pydantic prefixes messages raised by our validators with "Value error, ".
    message = message.removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return "unknown key (not part of the plan schema; check the spelling)"
    if error["type"] == "missing":
        return "required field is missing"
    return message


def parse_plan(data: Any, source: Path | str = "<memory>") -> Plan:
    """Validate already-parsed YAML data; raise PlanError listing every problem."""
    if not isinstance(data, dict):
        raise PlanError(source, [("<root>", "the plan must be a YAML mapping")])
    # Top-level "x-..." keys are YAML anchors' homes (as in docker compose files): they let
    # the two environments share one block and are not part of the plan itself.
    data = {key: value for key, value in data.items() if not str(key).startswith("x-")}
    problems: list[tuple[str, str]] = []
    expanded = _expand(data, "", problems)
    if problems:
        raise PlanError(source, problems)
    try:
        plan = Plan.model_validate(expanded)
    except ValidationError as exc:
        raise PlanError(
            source, [(_field_path(tuple(e["loc"])), _reason(dict(e))) for e in exc.errors()]
        ) from None
    problems = plan.reference_problems()
    if problems:
        raise PlanError(source, problems)
    return plan


def plan_path() -> Path:
    """The plan file in force: ``$DR_PLAN`` (a path, or a name under include/config)."""
    selected = os.environ.get(PLAN_ENV_VAR)
    if not selected:
        return DEFAULT_PLAN_FILE
    candidate = Path(selected)
    if not candidate.is_absolute() and not candidate.exists():
        named = CONFIG_DIR / (selected if selected.endswith(".yaml") else f"{selected}.yaml")
        if named.exists():
            return named
    return candidate


def load_plan(path: Path | str | None = None) -> Plan:
    """Load and validate a plan file (default: the one ``DR_PLAN`` selects)."""
    source = Path(path) if path is not None else plan_path()
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise PlanError(
            source, [("<file>", f"cannot read the plan file: {exc.strerror}")]
        ) from None
    try:
        # libyaml when present: every task parses its DAG file, which loads the plan.
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<yaml>"
        raise PlanError(
            source, [(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]
        ) from None
    return parse_plan(data, source)
