"""dr_site_failover's decisions (the plan's scenario 1, the primary site is gone): bring
Tracktion up in the recovery site from the offsite copy only, move traffic there, and
measure what was lost.

The run, in order (the guard prints it as the plan of actions):

1. **guard** - nothing touched. The environment's ``recovery_site`` names the site's
   clusters, services and the offsite copy (``backups``). The primary site is declared
   lost: every one of its database servers and services is probed and **none may answer**
   (in ``failover`` mode; a site that still answers is a component failure: refused,
   naming what answers); where the environment demands it the operator confirms with the
   typed ``RESTORE site <stack>``. The site must be empty (or this incident's recovery,
   resumed). The stack is validated by CloudFormation and looked at (``site.check_inputs``).
   The offsite copy is read through the backups catalog: an ``s3://`` copy through its
   verified local mirror beside the site's data directory (``<parent>/offsite-cache``):
   every WAL segment S3 lists is downloaded and sha256-checked, the base backups are listed
   with their sidecars. It must hold a usable base backup and WAL without a gap to the
   newest segment (target ``latest``). What the offsite copy lacks is measured now, while
   it can be: the primary's own WAL (its ``pg_wal`` and local archive, when still
   readable) against the end of the WAL S3 lists.
2. the stack: created, updated or reused and waited on (dr_site_provision's operators);
   its Outputs must name the site's database the plan connects to.
3. the database: the chosen base backup downloaded into the mirror (sha256 against the
   offsite copy's metadata and its archives against its backup_info), staged and verified
   (``pg_verifybackup``) beside the site's (empty) data directory, renamed into place with
   the site's settings (its port, archiving off), started in standby mode replaying the
   offsite WAL (``restore_command``: the mirror, then ``wal_fetch`` from S3 for anything
   newer); gate: replay past the last record the offsite copy holds; validated read-only;
   promoted (the ``restore_command`` credentials file is removed then).
4. the services started in dependency order by the plan's controllers; gates: healthy,
   functional checks.
5. traffic: the site's load balancer enables the site's servers; in ``failover`` mode the
   plan's switchable DNS records go to their secondary (one Route53 UPSERT batch); gate:
   the balancer routes to the site and Route53 holds the secondary values, INSYNC.
6. validate (a write commits on the site's database; every service answers through the
   balancer), measure the data lost, record, notify.

``drill`` mode (the plan's bi-annual business-continuity exercise): the same run without
touching production - the primary site is not required down, DNS is not switched, and
afterwards the drill's site is dismantled (services and server stopped, the restored data
directory moved aside, the balancer's servers disabled), so the next drill or a real
failover finds an empty site.

**Data loss.** The loss of a site failover is the WAL that was not offsite yet. Measured
twice, honestly labelled: before (the guard: the primary's newest commit and last WAL
record, read from its ``pg_wal`` when the disks are still readable, against those of the
WAL the offsite copy's S3 listing names, read from the mirror) and after (the recovered
database's newest canary heartbeat and the last replayed transaction, against the
incident time and, when known, the primary's newest commit). When
the primary's disks are gone, only "incident time - newest surviving write" is measurable
(an upper bound: it includes any idle time before the incident), and the record says so.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tracktion_dr.backups import s3_objects
from tracktion_dr.backups.catalog import Catalog, local_path
from tracktion_dr.backups.s3_objects import forget_fetch_config
from tracktion_dr.core.errors import (
    FailoverRefused,
    InvalidInput,
    Refused,
    StepFailed,
    ValidationFailed,
)
from tracktion_dr.core.incident import check_confirmation
from tracktion_dr.core.plan import Cluster, Environment, Plan, RecoverySite
from tracktion_dr.postgres import pitr, restore
from tracktion_dr.postgres.commands import chown_tree
from tracktion_dr.postgres.control import cluster_control
from tracktion_dr.postgres.recovery_marker import mark_promoted, postmaster_pid, read_marker
from tracktion_dr.postgres.salvage import WalHoldings, WalSource
from tracktion_dr.postgres.wal import Segment, lsn_to_int
from tracktion_dr.scenarios import GateCheck, SystemAccess, joined
from tracktion_dr.scenarios import database as db
from tracktion_dr.scenarios import site as site_stack
from tracktion_dr.scenarios.rebuild import refuse_in_host_topology
from tracktion_dr.services import dns as records_api

log = logging.getLogger(__name__)

FAILOVER, DRILL = "failover", "drill"
MODES = (FAILOVER, DRILL)
DATABASE_BACKEND = "database"
SITE_SETTINGS_FILE = "recovery_site.conf"
SYNC_POLL_SECONDS = 2.0

# (AWS conn id, region) -> CloudFormation client; (AWS conn id) -> Route53 client
CloudFormationConnect = site_stack.Connect
Route53Connect = Callable[[str], Any]
# (URL, timeout) -> what answered; raises on no answer (services.probes)
Probe = Callable[[str, float], str]


class SiteNotLost(FailoverRefused):
    """The primary site still answers: this is not a whole-site disaster."""


class SiteNotEmpty(Refused):
    """The recovery site already holds a database that is not this incident's."""


# --- the site, as the plan describes it --------------------------------------------------


def recovery_site(plan: Plan, environment: str) -> RecoverySite:
    """The environment's recovery site, refused when it cannot be failed over to."""
    site = site_stack.site_of(plan, environment)
    missing = [
        what
        for what, present in (
            ("clusters", site.clusters),
            ("backups", site.backups),
            ("services", site.services),
        )
        if not present
    ]
    if missing:
        raise InvalidInput(
            "environment",
            f"the {environment} environment's recovery_site has no {', '.join(missing)}: "
            "nothing says what runs in the site or where it restores from",
            hint="add them to recovery_site in the plan (see include/config/sandbox.yaml)",
        )
    return site


def site_environment(environment: Environment, site: RecoverySite) -> Environment:
    """The environment as it runs in the recovery site: the site's clusters, services and
    backups (its databases, storage and controllers are the environment's)."""
    return environment.model_copy(
        update={"clusters": site.clusters, "services": site.services, "backups": site.backups}
    )


# --- the primary site: lost or not, and how far its WAL went ----------------------------------


def assess_primary_site(
    environment: Environment, access: SystemAccess, probe_database: Probe, probe_http: Probe
) -> tuple[dict[str, str], dict[str, str]]:
    """(what still answers, what does not): every database server (primary and replica)
    and every service of the primary site, each probed with the environment's timeout."""
    timeout = environment.probe_timeout.total_seconds()
    targets: list[tuple[str, Callable[[], str]]] = []
    for name, cluster in environment.clusters.items():
        for role, conn_id in (("primary", cluster.conn_id), ("replica", cluster.replica_conn_id)):
            if conn_id:
                # Resolved here: a connection Airflow does not have is an error, not "down".
                conninfo = access.conninfo(conn_id, "postgres")
                targets.append((f"{name} {role}", lambda c=conninfo: probe_database(c, timeout)))
    for name, service in environment.services.items():
        targets.append((name, lambda u=str(service.health_url): probe_http(u, timeout)))
    answering: dict[str, str] = {}
    down: dict[str, str] = {}
    for name, probe in targets:
        try:
            answering[name] = probe()
        except Exception as exc:  # noqa: BLE001 - every failure to answer is "down"
            down[name] = (
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            )
    return answering, down


@dataclass(frozen=True)
class WalPoint:
    """Where some WAL ends: its last valid record and its newest commit."""

    where: str
    last_lsn: str | None
    last_commit: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"where": self.where, "last_lsn": self.last_lsn, "last_commit": self.last_commit}


def wal_end(label: str, sources: list[WalSource], bindir: Path) -> WalPoint | None:
    """The end of the WAL in ``sources`` (None when none of them holds a segment or they
    cannot be read: lost with the site)."""
    readable = [s for s in sources if s.directory.is_dir()]
    if not readable:
        return None
    try:
        end = WalHoldings(readable, bindir).end()
    except Exception as exc:  # noqa: BLE001 - a site's disks half gone: say so, go on
        log.warning("%s cannot be read: %s", label, exc)
        return None
    if end.last_record_lsn is None:
        return None
    return WalPoint(label, end.lsn_text, end.last_commit.isoformat() if end.last_commit else None)


def primary_wal_end(environment: Environment, cluster_name: str) -> WalPoint | None:
    """How far the lost primary's WAL went: its own ``pg_wal``, the standby's, the local
    archive - read only, when the disks are still readable."""
    cluster = environment.clusters[cluster_name]
    sources = [WalSource.pg_wal("primary pg_wal", Path(cluster.data_directory))]
    if cluster.replica_data_directory:
        sources.append(WalSource.pg_wal("standby pg_wal", Path(cluster.replica_data_directory)))
    if environment.backups.wal_archive.startswith("file://"):
        sources.append(WalSource("local archive", local_path(environment.backups.wal_archive)))
    return wal_end("the primary site's WAL", sources, Path(cluster.bin_dir))


def predicted_loss(primary: WalPoint | None, offsite: WalPoint | None) -> dict[str, Any]:
    """What the offsite copy lacks, before anything is restored: WAL bytes and commit time."""
    if primary is None:
        return {
            "measurable": False,
            "detail": "the primary site's WAL cannot be read (lost with the site): the loss "
            "is measured after the recovery against the incident time only",
        }
    if offsite is None or offsite.last_lsn is None or primary.last_lsn is None:
        return {"measurable": False, "detail": "the offsite copy holds no WAL"}
    wal_bytes = max(0, lsn_to_int(primary.last_lsn) - lsn_to_int(offsite.last_lsn))
    seconds = None
    if primary.last_commit and offsite.last_commit:
        seconds = max(
            0.0,
            (
                datetime.fromisoformat(primary.last_commit)
                - datetime.fromisoformat(offsite.last_commit)
            ).total_seconds(),
        )
    return {
        "measurable": True,
        "wal_bytes_not_offsite": wal_bytes,
        "commit_seconds_not_offsite": seconds,
        "primary": primary.as_dict(),
        "offsite": offsite.as_dict(),
        "detail": f"{wal_bytes} bytes of WAL not offsite"
        + (f", commits of the last {seconds:.1f}s" if seconds is not None else "")
        + f" (primary to {primary.last_lsn} / {primary.last_commit}, offsite to "
        f"{offsite.last_lsn} / {offsite.last_commit})",
    }


# --- guard -------------------------------------------------------------------------------------


def site_catalog(environment: Environment, site: RecoverySite, cluster: Cluster) -> Catalog:
    """The catalog of the site's offsite copy: an s3:// location is read through its
    mirror beside the site cluster's data directory (``<parent>/offsite-cache``, on the
    filesystem the restore lands on), as dr_database_pitr reads it."""
    return db.catalog_for(site_environment(environment, site), cluster)


def offsite_wal_archive(catalog: Catalog) -> Path:
    """The offsite WAL archive as a local folder: for s3://, every segment and timeline
    history S3 lists, downloaded once and sha256-verified into the mirror. A bad location
    or an unknown connection is refused here, naming the recovery_site field."""
    try:
        catalog.check_locations()
        return catalog.wal_archive_dir()
    except InvalidInput as exc:
        raise InvalidInput(f"recovery_site.{exc.field}", exc.reason, hint=exc.hint) from None
    except ValueError as exc:  # a location neither file:// nor s3://
        raise InvalidInput(
            "recovery_site.backups.wal_archive",
            f"the offsite copy cannot be read: {exc}",
            hint="give the site the s3:// locations the offsite copy job writes "
            "(backups.offsite_cross_region and its layout, see include/config/sandbox.yaml)",
        ) from None


def offsite_wal_end(location: str, archive: Path, bindir: Path) -> WalPoint | None:
    """How far the offsite copy's WAL goes: the last record and newest commit of the WAL
    ``location`` holds, read from ``archive`` - for s3://, the mirror the guard has just
    brought level with the S3 listing (a segment S3 does not list is never in it: the
    mirror holds only verified downloads of listed objects)."""
    return wal_end(
        f"the offsite copy's WAL ({location})",
        [WalSource("offsite archive", archive, restorable=True)],
        bindir,
    )


def _refuse_occupied_site(data: Path) -> None:
    """A site data directory holding anything but this incident's recovery is refused."""
    if data.exists() and any(data.iterdir()):
        marker = read_marker(data)
        whose = f"incident {marker.incident_id}'s recovery" if marker else "a database"
        raise SiteNotEmpty(
            f"the recovery site's data directory {data} already holds {whose}: a site "
            "failover restores into an empty site",
            hint=f"if it is a finished drill or an abandoned attempt, move {data} aside "
            "(never delete it: it may be the only copy) and run again; to resume that "
            "recovery, re-run its incident",
        )


def _unusable_wal_hint(catalog: Catalog) -> str:
    described = catalog.describe_unusable_wal()
    return f"; {described}" if described else ""


def _refuse_gap_before_the_end(
    catalog: Catalog, holdings: WalHoldings, start_lsn: str | None, field: str
) -> None:
    """The site replays to the newest WAL of the offsite copy (``latest``): an offsite WAL
    object left out of the mirror (gone, or failing verification) after the base backup's
    start - or a timeline history, which decides the path - would stop replay short of
    the end the gate waits for. Refused, naming the objects; one before the start is
    harmless."""
    if not catalog.unusable_wal:
        return
    gap = holdings.missing(Segment.from_lsn(start_lsn or "0/0").number)
    histories = [name for name in catalog.unusable_wal if name.endswith(".history")]
    if not gap and not histories:
        return
    raise InvalidInput(
        "recovery_site.backups",
        f"the offsite copy {field} cannot be replayed to its end: "
        + (f"WAL missing from {gap[0]} on; " if gap else "")
        + catalog.describe_unusable_wal(),
        hint="copy the archive again with dr_backup_offsite (from the primary's archive, if "
        "it is still readable); or restore up to the gap with dr_database_pitr and a target "
        "before it",
    )


def site_pitr_plan(
    plan: Plan,
    environment: Environment,
    site: RecoverySite,
    cluster_name: str,
    incident_id: str,
) -> dict[str, Any]:
    """One site cluster's recovery: the base backup and WAL from the offsite copy, to the
    newest archived WAL (``latest``); resumed when the site's data directory is already
    this incident's recovery. Refused: a site data directory that is someone else's, an
    offsite copy with no usable base backup or a gap in its WAL."""
    assert site.backups is not None
    cluster = site.clusters[cluster_name]
    tag = restore.incident_tag(incident_id)
    field = f"recovery_site.backups ({site.backups.wal_archive})"
    catalog = site_catalog(environment, site, cluster)
    archive = offsite_wal_archive(catalog)
    paths = db.pitr_paths(cluster, archive, tag)
    data = paths.data_directory
    resuming = db.own_recovery(data, incident_id)
    if resuming is None:
        _refuse_occupied_site(data)
        # Staged by an earlier attempt (killed before the lay-down): that copy is kept as
        # it is, so the plan must name the base backup it was staged from, not a newer one.
        resuming = db.own_recovery(pitr.staging_path(data, tag), incident_id)
    target = pitr.parse_target("latest", None)
    if resuming is not None:
        base = db._base_backup_entry(catalog, resuming)
    else:
        holdings = WalHoldings.restorable_only(archive, Path(cluster.bin_dir))
        usable, rejected = catalog.usable_base_backups(holdings)
        if not usable:
            raise InvalidInput(
                "recovery_site.backups",
                f"nothing in the offsite copy {field} can be restored: "
                + ("; ".join(rejected) or f"no base backup in {site.backups.base}"),
                hint="run dr_backup_base and dr_backup_offsite (the copy the site restores from)"
                + _unusable_wal_hint(catalog),
            )
        chosen = catalog.base_backup_for_target(target, usable, holdings, verify_now=False)
        _refuse_gap_before_the_end(catalog, holdings, chosen.start_lsn, field)
        base = chosen.as_dict()
    databases = [
        name for name, spec in environment.databases.items() if spec.cluster == cluster_name
    ]
    return {
        "cluster": cluster_name,
        "databases": [environment.databases[name].name for name in databases],
        "target": target.as_dict(),
        "base_backup": base,
        "data_directory": str(data),
        "replica_data_directory": None,
        "wal_archive": str(archive),
        # restore_command reads these (backups.catalog.restore_command_for): an s3://
        # archive is fetched from S3 for what the mirror does not hold yet.
        "wal_location": site.backups.wal_archive,
        "wal_conn_id": site.backups.offsite_conn_id,
        "salvage_dir": str(paths.salvage),
        "tag": tag,
        "incident_id": incident_id,
        "resuming": resuming.as_dict() if resuming else None,
        "conn_id": cluster.conn_id,
    }


def check_inputs(
    plan: Plan,
    incident: dict[str, Any],
    params: Any,
    *,
    access: SystemAccess,
    connect_cloudformation: CloudFormationConnect,
    probe_database: Probe,
    probe_http: Probe,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the run, the CreateStack request). Every refusal comes before anything is touched."""
    refuse_in_host_topology(plan, "dr_site_failover")
    mode = params.get("mode") or DRILL
    if mode not in MODES:
        raise InvalidInput("mode", f"{mode!r} is not one of {list(MODES)}")
    name = incident["environment"]
    environment = plan.environment(name)
    site = recovery_site(plan, name)
    if mode == FAILOVER and not incident["dry_run"]:
        check_confirmation(
            environment.destructive_requires_confirmation,
            params.get("confirm"),
            f"site {site.stack_name}",
            name,
        )
    answering, down = assess_primary_site(environment, access, probe_database, probe_http)
    if mode == FAILOVER and answering:
        raise SiteNotLost(
            "the primary site still answers ("
            + joined(answering, "")
            + "): a site failover moves everything to another region, nothing was touched",
            hint="recover the failed components in place (dr_failover, dr_application_recovery, "
            "dr_database_pitr), or run mode=drill to exercise the recovery site",
        )
    # The stack: validated by CloudFormation, create / reuse / update decided. A failover's
    # own confirmation covers an update; a drill that would update the stack (CloudFormation
    # may replace the site's resources) asks for it like dr_site_provision does.
    confirmed = mode == FAILOVER or incident["dry_run"]
    stack_run, request = site_stack.check_inputs(
        plan, {**incident, "dry_run": confirmed}, params, connect_cloudformation
    )
    stack_run["dry_run"] = incident["dry_run"]
    clusters = {
        cluster: site_pitr_plan(plan, environment, site, cluster, incident["incident_id"])
        for cluster in site.clusters
    }
    losses = {}
    for cluster, pitr_plan in clusters.items():
        offsite = offsite_wal_end(
            pitr_plan["wal_location"],
            Path(pitr_plan["wal_archive"]),
            Path(site.clusters[cluster].bin_dir),
        )
        losses[cluster] = predicted_loss(primary_wal_end(environment, cluster), offsite)
    site_env = site_environment(environment, site)
    services = site_env.start_order(set(site.services))
    databases = [d for p in clusters.values() for d in p["databases"]]
    rpo = min(
        (
            plan.data_categories[spec.data_category].rpo
            for spec in environment.databases.values()
            if spec.cluster in site.clusters
        ),
        default=None,
    )
    dns = environment.dns
    switchable = (
        [record for record, spec in dns.records.items() if spec.allow_switch] if dns else []
    )
    run = {
        **stack_run,
        **incident,
        "mode": mode,
        "primary_site": {"answering": answering, "down": down},
        "clusters": clusters,
        "databases": databases,
        "services": services,
        "service_levels": site_env.start_levels(services),
        "balancer_server": site.balancer_server,
        "predicted_loss": losses,
        "dns_records": switchable if mode == FAILOVER else [],
        "dns_zone": dns.hosted_zone if dns else None,
        "dns_conn_id": dns.aws_conn_id if dns else None,
        "dns_sync_timeout_seconds": dns.sync_timeout.total_seconds() if dns else 0,
        "rto_seconds": plan.tiers[site.tier].rto.total_seconds(),
        "rpo_seconds": rpo.total_seconds() if rpo else None,
    }
    run["actions"] = plan_of_actions(run)
    return run, request


def plan_of_actions(run: dict[str, Any]) -> list[str]:
    drill = run["mode"] == DRILL
    lost = run["primary_site"]
    actions = [
        (
            "DRILL: the primary site is not touched ("
            + (
                f"answering: {', '.join(lost['answering'])}"
                if lost["answering"]
                else "it does not answer"
            )
            + "); DNS stays on the primary"
        )
        if drill
        else f"the primary site is declared lost: nothing of it answers ({', '.join(lost['down'])})",
        *site_stack.plan_of_actions(run),
    ]
    for name, pitr_plan in run["clusters"].items():
        base = pitr_plan["base_backup"]
        data = pitr_plan["data_directory"]
        if pitr_plan["resuming"]:
            actions.append(f"RESUME this incident's recovery of {name} in {data}")
        location = pitr_plan.get("wal_location") or ""
        fetch = (
            f" (the mirror of {location}), then fetched from S3 for anything newer"
            if s3_objects.is_s3(location)
            else ""
        )
        actions += [
            f"stage base backup {base['id']} ({base.get('start_lsn')}..{base.get('stop_lsn')}) "
            f"from the offsite copy beside the site's empty data directory {data}, "
            "pg_verifybackup it, write standby-mode recovery settings (restore_command from "
            f"{pitr_plan['wal_archive']}{fetch}) and the recovery marker",
            f"rename it into place; the site's settings ({SITE_SETTINGS_FILE}) on top of the "
            "restored configuration",
            f"start PostgreSQL in the site ({name}); gate: replay past the last record the "
            f"offsite copy holds; what it lacks: {run['predicted_loss'][name]['detail']}",
            "validate read-only (FK orphans, duplicate PKs, business rules, pg_amcheck), then "
            "promote (pg_catalog.pg_promote)",
        ]
    levels = " then ".join("+".join(level) for level in run["service_levels"])
    actions += [
        f"start the site's services in dependency order ({levels}); gates: healthy, "
        "functional checks",
        f"move traffic: the site's balancer enables server {run['balancer_server']} for "
        + ", ".join([*run["services"], DATABASE_BACKEND])
        + (
            ""
            if drill
            else f"; Route53 ({run['dns_zone']}) UPSERTs {', '.join(run['dns_records']) or 'no record'} "
            "to the secondary, waits for INSYNC"
        ),
        "gate: the balancer routes to the site"
        + ("" if drill else " and Route53 holds the secondary values"),
        "validate: a write commits on the site's database; every service answers through the "
        "balancer",
        "measure the data lost (the site's newest canary heartbeat and last replayed "
        "transaction against the incident time and the primary's last commit), record, notify",
    ]
    if drill:
        actions.append(
            "dismantle the drill's site: services and PostgreSQL stopped, the restored data "
            "directory moved aside (kept), the balancer's site servers disabled"
        )
    return actions


def started_summary(run: dict[str, Any]) -> str:
    what = "site failover drill" if run["mode"] == DRILL else "SITE FAILOVER"
    return (
        f"{what} into {run['stack_name']} ({run['region']}): restore from the offsite copy, "
        f"start {len(run['services'])} services, move traffic"
    )


# --- the stack's endpoints -----------------------------------------------------------------------


def check_endpoints(
    plan: Plan, run: dict[str, Any], endpoints: dict[str, str], access: SystemAccess
) -> dict[str, Any]:
    """The stack's Outputs must name the servers the plan connects to: a site database
    the stack did not make is never restored into."""
    from psycopg.conninfo import conninfo_to_dict

    mismatched: dict[str, str] = {}
    for pitr_plan in run["clusters"].values():
        for database in pitr_plan["databases"]:
            url = endpoints.get(database)
            if url is None:
                continue
            wanted = urlsplit_host_port(url)
            given = conninfo_to_dict(access.conninfo(pitr_plan["conn_id"], database))
            have = (str(given.get("host")), str(given.get("port") or 5432))
            if wanted != have:
                mismatched[database] = (
                    f"the stack gives {wanted[0]}:{wanted[1]}, connection "
                    f"{pitr_plan['conn_id']} is {have[0]}:{have[1]}"
                )
    if mismatched:
        raise StepFailed(
            "the stack's database endpoint is not the server the plan connects to: "
            + joined(mismatched, ""),
            hint="point the recovery site cluster's connection at the stack's DatabaseAddress",
        )
    if "load_balancer" not in endpoints:
        raise StepFailed("the stack gives no load_balancer endpoint (the plan's endpoints)")
    return {"detail": "; ".join(f"{k} = {v}" for k, v in endpoints.items()), "endpoints": endpoints}


def urlsplit_host_port(url: str) -> tuple[str, str]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    default = {"postgresql": 5432, "http": 80, "https": 443}.get(parts.scheme, 0)
    return str(parts.hostname), str(parts.port or default)


# --- the database ----------------------------------------------------------------------------------


def site_cluster(plan: Plan, run: dict[str, Any], name: str) -> Cluster:
    return recovery_site(plan, run["environment"]).clusters[name]


def stage_databases(plan: Plan, run: dict[str, Any]) -> str:
    """Each site cluster's recovery staged beside its empty data directory by
    dr_database_pitr's staging: the base backup brought down from the S3 copy into the
    mirror (verified), laid down, ``pg_verifybackup``, recovery settings whose
    ``restore_command`` comes from ``backups.catalog.restore_command_for`` (the mirror,
    then S3)."""
    environment = plan.environment(run["environment"])
    site = recovery_site(plan, run["environment"])
    notes = []
    for name, pitr_plan in run["clusters"].items():
        cluster = site.clusters[name]
        staged = db.stage_recovery(cluster, pitr_plan, site_catalog(environment, site, cluster))
        notes.append(f"{name}: {staged}")
    return "; ".join(notes)


def write_site_settings(data_directory: Path, settings: dict[str, str], os_user: str) -> bool:
    """The site's settings in their own include file, read after the restored
    ``postgresql.conf`` and kept after promotion. ``postgresql.auto.conf`` is read after
    every include, so what a restored one sets there for these settings, the port or
    archiving (a base backup of a node once rebuilt, or ``ALTER SYSTEM``) is commented
    out: the site server must not start on the primary's port or archive into its
    archive. True when anything was written now."""
    lines = ["# Written by dr_site_failover: this server runs in the recovery site."]
    lines += [f"{key} = '{pitr._conf_escape(value)}'" for key, value in settings.items()]
    text = "\n".join(lines) + "\n"
    path = data_directory / SITE_SETTINGS_FILE
    changed = not path.exists() or path.read_text() != text
    if changed:
        path.write_text(text)
        path.chmod(0o600)
        chown_tree(path, os_user, recursive=False)
    main_conf = data_directory / "postgresql.conf"
    include = f"include_if_exists = '{SITE_SETTINGS_FILE}'"
    if include not in main_conf.read_text().splitlines():
        with main_conf.open("a") as handle:
            handle.write(f"\n{include}\n")
        changed = True
    overridden = {key.lower() for key in settings} | {"port"}
    return _comment_out_auto_settings(data_directory, overridden) or changed


AUTO_CONF_SETTING = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.$]*)\s*(=|\s)")
SITE_OVERRIDE_NOTE = "# overridden in the recovery site by dr_site_failover: "


def _comment_out_auto_settings(data_directory: Path, overridden: set[str]) -> bool:
    """Comment out (never delete: the restored values stay readable) the lines of
    ``postgresql.auto.conf`` that set one of ``overridden`` or any ``archive_*``
    setting. True when the file changed."""
    auto_conf = data_directory / "postgresql.auto.conf"
    if not auto_conf.exists():
        return False
    text = auto_conf.read_text()
    kept = []
    for line in text.splitlines(keepends=True):
        match = AUTO_CONF_SETTING.match(line)
        key = match.group(1).lower() if match else ""
        if key in overridden or key.startswith("archive_"):
            line = SITE_OVERRIDE_NOTE + line
        kept.append(line)
    new_text = "".join(kept)
    if new_text == text:
        return False
    auto_conf.write_text(new_text)  # keeps owner and mode
    return True


def lay_down_databases(plan: Plan, run: dict[str, Any]) -> str:
    """The staged recovery renamed into the site's empty data directory, the site's
    settings written. Resumable: this incident's recovery already in place is left alone
    (only its settings are written again when they differ)."""
    site = recovery_site(plan, run["environment"])
    notes = []
    for name, pitr_plan in run["clusters"].items():
        cluster = site.clusters[name]
        data = Path(pitr_plan["data_directory"])
        if db.own_recovery(data, run["incident_id"]) is None:
            staging = pitr.staging_path(data, pitr_plan["tag"])
            if db.own_recovery(staging, run["incident_id"]) is None:
                raise StepFailed(
                    f"{staging} is not a complete staged recovery of {run['incident_id']}",
                    hint="re-run the incident: its staging step builds it",
                )
            if data.exists():
                if any(data.iterdir()):
                    raise StepFailed(
                        f"{data} appeared and is not this incident's recovery: refusing to "
                        "put anything in its place"
                    )
                data.rmdir()  # an empty directory (made with the host): nothing to keep
            pitr.swap_in_staged(staging, data)
            notes.append(f"{name}: {pitr_plan['base_backup']['id']} laid down in {data}")
        else:
            notes.append(f"{name}: {data} is already this incident's recovery")
        settings = {key: str(value) for key, value in site.database_settings.items()}
        if write_site_settings(data, settings, cluster.os_user):
            notes.append(f"site settings written ({', '.join(sorted(settings)) or 'none'})")
    return "; ".join(notes)


def start_databases(plan: Plan, run: dict[str, Any]) -> str:
    return "; ".join(
        f"{name}: {db.start_recovery_server(site_cluster(plan, run, name), pitr_plan)}"
        for name, pitr_plan in run["clusters"].items()
    )


def replay_caught_up(plan: Plan, access: SystemAccess) -> GateCheck:
    """Gate: every site cluster replayed past the last record the offsite copy holds (or
    was already promoted by an earlier attempt of this incident)."""

    def check(run: dict[str, Any]) -> tuple[bool, str]:
        seen = []
        for name, pitr_plan in run["clusters"].items():
            opened, detail = db.recovery_target_reached(
                site_cluster(plan, run, name),
                pitr_plan,
                access.conninfo(pitr_plan["conn_id"], "postgres"),
            )
            if not opened:
                return False, f"{name}: {detail}"
            seen.append(f"{name}: {detail}")
        return True, "; ".join(seen)

    return check


def validate_databases(
    plan: Plan, run: dict[str, Any], endpoint_for: Callable[[str], Any]
) -> dict[str, Any]:
    reports = []
    for name, pitr_plan in run["clusters"].items():
        cluster = site_cluster(plan, run, name)
        reports += db.validate_recovered(
            endpoint_for(pitr_plan["conn_id"]), pitr_plan["databases"], Path(cluster.bin_dir)
        )
    problems = [p for report in reports for p in report["problems"]]
    if problems:
        raise ValidationFailed(
            "the site's restored database failed validation (not promoted, no traffic moved): "
            + "; ".join(problems[:8])
        )
    return {
        "detail": "; ".join(f"{r['database']}: valid" for r in reports) or "no databases",
        "reports": reports,
    }


def promote_databases(plan: Plan, run: dict[str, Any], access: SystemAccess) -> str:
    """pg_promote, the recovery settings removed, the marker notes it. The salvaged-WAL
    archiving of dr_database_pitr is not done: the archive here is the offsite copy,
    which a recovery never writes to."""
    notes = []
    for name, pitr_plan in run["clusters"].items():
        cluster = site_cluster(plan, run, name)
        data = Path(pitr_plan["data_directory"])
        marker = db.own_recovery(data, run["incident_id"])
        if marker is None:
            raise StepFailed(f"{data} is not this incident's recovery: refusing to promote it")
        promoted, timeline = pitr.promote_server(access.conninfo(pitr_plan["conn_id"], "postgres"))
        pitr.clear_recovery_settings(data, marker.recovery_settings)
        # restore_command is gone: the S3 credentials file it read goes too.
        forget_fetch_config(Path(pitr_plan["wal_archive"]))
        mark_promoted(data, timeline, cluster.os_user)
        notes.append(
            f"{name}: {'promoted' if promoted else 'already promoted'}, timeline {timeline}"
        )
    return "; ".join(notes)


# --- services and traffic --------------------------------------------------------------------------


def start_services(plan: Plan, run: dict[str, Any], access: SystemAccess) -> str:
    """The site's load balancer (when a controller of the plan runs it), then the
    services in dependency order (controllers start only what is stopped)."""
    environment = plan.environment(run["environment"])
    site = recovery_site(plan, run["environment"])
    notes = []
    if site.balancer is not None:
        controller = access.controller(environment.controllers[site.balancer.controller])
        controller.start(site.balancer.unit or "load-balancer")
        notes.append(f"started the site's balancer ({site.balancer.unit})")
    notes.append(
        db.start_services(site_environment(environment, site), run["services"], access.controller)
    )
    return "; ".join(notes)


def services_healthy(plan: Plan) -> GateCheck:
    def check(run: dict[str, Any]) -> tuple[bool, str]:
        from tracktion_dr.services.checks import service_health

        environment = plan.environment(run["environment"])
        site_env = site_environment(environment, recovery_site(plan, run["environment"]))
        return service_health(site_env, run["services"])

    return check


def functional_checks_pass(plan: Plan) -> GateCheck:
    def check(run: dict[str, Any]) -> tuple[bool, str]:
        from tracktion_dr.services.checks import functional_checks

        environment = plan.environment(run["environment"])
        site_env = site_environment(environment, recovery_site(plan, run["environment"]))
        return functional_checks(site_env, run["services"])

    return check


def balancer_backends(run: dict[str, Any]) -> list[str]:
    return [*run["services"], DATABASE_BACKEND]


def move_traffic(
    plan: Plan, run: dict[str, Any], balancer_url: str, connect_route53: Route53Connect
) -> dict[str, Any]:
    """The site's balancer sends each backend to the site's server (only those not yet
    enabled); in failover mode the switchable DNS records go to their secondary values in
    one UPSERT batch (only those Route53 does not already hold)."""
    from tracktion_dr.services.failover import LoadBalancer

    balancer = LoadBalancer(balancer_url)
    server = run["balancer_server"]
    enabled = []
    for backend in balancer_backends(run):
        current = balancer.backend(backend)["servers"].get(server, {})
        if current.get("status") == "enabled" and current.get("weight", 0) > 0:
            continue
        balancer.set_server(backend, server, weight=100, status="enabled")
        enabled.append(backend)
    notes = [
        f"balancer {balancer_url}: {server} enabled for {', '.join(enabled) or 'nothing (already)'}"
    ]
    change_id = None
    switched: list[str] = []
    if run["mode"] == FAILOVER and run["dns_records"]:
        change_id, switched = switch_dns(plan, run, connect_route53)
        notes.append(
            f"Route53 change {change_id}: {', '.join(switched)} to the secondary"
            if change_id
            else "DNS already on the secondary"
        )
    elif run["mode"] == DRILL:
        notes.append("drill: DNS left on the primary")
    return {
        "detail": "; ".join(notes),
        "enabled": enabled,
        "change_id": change_id,
        "switched": switched,
    }


def _dns_plan(run: dict[str, Any], plan: Plan) -> dict[str, Any]:
    dns = plan.environment(run["environment"]).dns
    assert dns is not None
    return {name: dns.records[name] for name in run["dns_records"]}


def switch_dns(
    plan: Plan, run: dict[str, Any], connect_route53: Route53Connect
) -> tuple[str | None, list[str]]:
    """UPSERT, in one batch, the secondary values of every switchable record Route53 does
    not already hold (read again now: a retry changes only what is missing)."""
    records = _dns_plan(run, plan)
    client = connect_route53(run["dns_conn_id"])
    zone_id = records_api.hosted_zone_id(client, run["dns_zone"])
    pending = []
    for name, spec in records.items():
        assert spec.secondary is not None  # allow_switch needs one (the plan model)
        now = records_api.route53_values(client, zone_id, name, spec.type)
        if records_api.same_values(now, spec.secondary.values):
            continue
        pending.append(
            {
                "name": name,
                "type": spec.type,
                "ttl": spec.ttl,
                "values": list(spec.secondary.values),
            }
        )
    if not pending:
        return None, []
    change_id = records_api.upsert_records(
        client, zone_id, pending, f"{run['incident_id']}: dr_site_failover"
    )
    return change_id, [record["name"] for record in pending]


def traffic_moved(
    plan: Plan, balancer_url_of: Callable[[dict[str, Any]], str], connect_route53: Route53Connect
) -> GateCheck:
    """Gate: every backend of the site's balancer routes to the site's server (HTTP ones
    answer 200 through it); in failover mode Route53 holds the secondary values of every
    switched record and has no change pending."""

    def check(run: dict[str, Any]) -> tuple[bool, str]:
        from tracktion_dr.services.failover import LoadBalancer

        balancer = LoadBalancer(balancer_url_of(run))
        server = run["balancer_server"]
        for service in run["services"]:
            backend, status = balancer.routed_to(service)
            if backend != server or status != 200:
                return False, f"{service}: the balancer routes to {backend} (HTTP {status})"
        database = balancer.backend(DATABASE_BACKEND)["servers"].get(server, {})
        if database.get("status") != "enabled":
            return False, f"the balancer's database backend does not send to {server}"
        seen = f"the balancer routes {len(run['services'])} services and the database to {server}"
        if run["mode"] != FAILOVER or not run["dns_records"]:
            return True, seen
        records = _dns_plan(run, plan)
        client = connect_route53(run["dns_conn_id"])
        zone_id = records_api.hosted_zone_id(client, run["dns_zone"])
        for name, spec in records.items():
            assert spec.secondary is not None
            values = records_api.route53_values(client, zone_id, name, spec.type)
            if not records_api.same_values(values, spec.secondary.values):
                return False, f"Route53 holds {values} for {name}, not {spec.secondary.values}"
        return True, f"{seen}; Route53 holds the secondary for {', '.join(records)}"

    return check


def wait_dns_in_sync(
    run: dict[str, Any],
    change_id: str | None,
    connect_route53: Route53Connect,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    if not change_id:
        return "no DNS change to wait for"
    client = connect_route53(run["dns_conn_id"])
    deadline = clock() + float(run["dns_sync_timeout_seconds"] or 60)
    status = records_api.change_status(client, change_id)
    while status != records_api.INSYNC:
        if clock() >= deadline:
            raise StepFailed(f"Route53 change {change_id} still {status}")
        sleep(SYNC_POLL_SECONDS)
        status = records_api.change_status(client, change_id)
    return f"Route53 change {change_id} INSYNC"


# --- validation and the data lost --------------------------------------------------------------


def validate_site(run: dict[str, Any], balancer_url: str, access: SystemAccess) -> dict[str, Any]:
    """A write commits on each restored database; every service answers through the
    balancer, from the site's server."""
    from tracktion_dr.services.failover import LoadBalancer, verify_write

    problems: dict[str, str] = {}
    seen: list[str] = []
    for pitr_plan in run["clusters"].values():
        for database in pitr_plan["databases"]:
            try:
                seen.append(
                    f"{database}: {verify_write(access.conninfo(pitr_plan['conn_id'], database))}"
                )
            except Exception as exc:  # noqa: BLE001 - the finding is the failure
                problems[database] = str(exc).strip().splitlines()[0]
    balancer = LoadBalancer(balancer_url)
    for service in run["services"]:
        backend, status = balancer.routed_to(service)
        if backend != run["balancer_server"] or status != 200:
            problems[service] = f"through the balancer: {backend} HTTP {status}"
    if problems:
        return {"detail": joined(problems, ""), "status": "failed", "problems": problems}
    seen.append(f"{len(run['services'])} services answer through the balancer")
    return {"detail": "; ".join(seen), "problems": {}}


def measure_data_loss(run: dict[str, Any], access: SystemAccess) -> dict[str, Any]:
    """What the site's database has against what the primary had (see the module doc)."""
    from tracktion_dr.postgres.measure import canary_data_loss

    incident_at = datetime.fromisoformat(run["started_at"])
    measured: dict[str, Any] = {}
    worst_seconds: float | None = None
    for name, pitr_plan in run["clusters"].items():
        log_file = Path(pitr_plan["data_directory"]).with_name(f"recovery_{pitr_plan['tag']}.log")
        replayed = pitr.last_replayed_commit(log_file.read_text()) if log_file.exists() else None
        fallback = datetime.fromisoformat(replayed.replace(" UTC", "+00:00")) if replayed else None
        primary = (run["predicted_loss"].get(name) or {}).get("primary") or {}
        for database in pitr_plan["databases"]:
            loss = canary_data_loss(
                access.conninfo(pitr_plan["conn_id"], database),
                incident_at,
                fallback=fallback,
                fallback_method="last replayed transaction",
            )
            entry: dict[str, Any] = {**loss.as_dict(), "last_replayed_commit": replayed}
            if primary.get("last_commit") and loss.newest_surviving_write:
                lost = (
                    datetime.fromisoformat(primary["last_commit"])
                    - datetime.fromisoformat(loss.newest_surviving_write)
                ).total_seconds()
                entry["primary_last_commit"] = primary["last_commit"]
                entry["writes_lost_seconds"] = max(0.0, lost)
                entry["measured_against"] = "the primary's last commit (read from its WAL)"
            else:
                entry["measured_against"] = (
                    "the incident time only (the primary's WAL was not readable): an upper bound"
                )
            measured[database] = entry
            figure = entry.get("writes_lost_seconds", loss.seconds)
            if figure is not None:
                worst_seconds = max(worst_seconds or 0.0, figure)
    detail = "; ".join(
        f"{d}: "
        + (
            f"{e['writes_lost_seconds']:.1f}s of commits lost (primary's last {e['primary_last_commit']}, "
            f"newest surviving {e['newest_surviving_write']})"
            if "writes_lost_seconds" in e
            else f"{e['seconds']}s since the newest surviving write {e['newest_surviving_write']} "
            "(upper bound)"
        )
        for d, e in measured.items()
    )
    return {
        "detail": detail or "no databases",
        "data_loss": measured,
        "data_loss_seconds": worst_seconds,
    }


# --- the drill's end -------------------------------------------------------------------------------


def dismantle_drill_site(
    plan: Plan, run: dict[str, Any], access: SystemAccess, balancer_url: str | None
) -> str:
    """After a drill: the site's services and servers stopped, its restored data
    directories moved aside (``<dir>.drill_<tag>``, kept), its balancer servers disabled.
    Resumable: what is already stopped or moved is left alone."""
    from tracktion_dr.services.failover import LoadBalancer

    environment = plan.environment(run["environment"])
    site = recovery_site(plan, run["environment"])
    notes = [
        db.stop_services(site_environment(environment, site), run["services"], access.controller)
    ]
    for name, pitr_plan in run["clusters"].items():
        cluster = site.clusters[name]
        data = Path(pitr_plan["data_directory"])
        if postmaster_pid(data) is not None:
            notes.append(pitr.stop_server(cluster_control(cluster)))
        # A drill that failed before its promotion leaves restore_command's S3 credentials.
        forget_fetch_config(Path(pitr_plan["wal_archive"]))
        if data.exists() and db.own_recovery(data, run["incident_id"]) is not None:
            kept = data.with_name(f"{data.name}.drill_{pitr_plan['tag']}")
            data.rename(kept)
            notes.append(f"{name}: the drill's database kept at {kept}")
    if balancer_url:
        balancer = LoadBalancer(balancer_url)
        for backend in balancer_backends(run):
            try:
                balancer.set_server(backend, run["balancer_server"], weight=0, status="disabled")
            except Exception as exc:  # noqa: BLE001 - a stopped balancer keeps its state file
                notes.append(f"balancer {backend}: {exc}")
                break
    if site.balancer is not None:
        controller = access.controller(environment.controllers[site.balancer.controller])
        controller.stop(site.balancer.unit or "load-balancer")
        notes.append(f"stopped the site's balancer ({site.balancer.unit})")
    return "; ".join(notes)


def record_fields(
    run: dict[str, Any],
    outputs: dict[str, Any] | None,
    loss: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "rto_target_seconds": run["rto_seconds"],
        "rpo_target_seconds": run.get("rpo_seconds"),
        "data_loss_seconds": (loss or {}).get("data_loss_seconds"),
        "backup_used": ", ".join(p["base_backup"]["id"] for p in run["clusters"].values()),
        "details": {
            "mode": run["mode"],
            "stack_name": run["stack_name"],
            "region": run["region"],
            "endpoints": (outputs or {}).get("endpoints", {}),
            "primary_site": run["primary_site"],
            "predicted_loss": run["predicted_loss"],
            "data_loss": (loss or {}).get("data_loss"),
            "dns_records": run["dns_records"],
        },
    }


def utcnow() -> datetime:
    return datetime.now(UTC)
