"""Scheduled DR drills: the monthly component test and the quarterly full-system chain.

Monthly (the seed's ``monthly_dr_test.sh``, corrected): the newest dump is restored into a
*scratch* database and validated in full (the seed counted tables); each service of the
plan's monthly set is stopped, started and gated on health with the time measured; a
storage area gets a test file that is backed up, deleted, restored and compared byte for
byte; every scratch resource is dropped at the end, also when a step failed.

The guard (:func:`guard_monthly`) refuses, before anything is touched, when a target would
resolve to a production resource: the production environment itself, a scratch database
named like a plan database, a scratch directory inside a production path, or a service
that production also names (unless the plan says the drill environment shares them).

Quarterly: :func:`simulate_cluster_loss` takes the drill cluster away (stopped, its data
directory moved aside - never deleted), then the plan's ``drills.quarterly.steps`` run in
order as real DAG runs (``drill_steps.run_step``), each recorded in the ledger by itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tracktion_dr.core.incident import InvalidInput
from tracktion_dr.core.plan import Environment, Plan

log = logging.getLogger(__name__)


# --- guard -------------------------------------------------------------------------------


def _inside(path: str, root: str) -> bool:
    a, b = Path(path).resolve(), Path(root).resolve()
    return a == b or b in a.parents or a in b.parents


def production_paths(production: Environment) -> list[str]:
    paths = [c.data_directory for c in production.clusters.values()]
    paths += [
        c.replica_data_directory
        for c in production.clusters.values()
        if getattr(c, "replica_data_directory", None)
    ]
    paths += [area.path for area in production.storage.values()]
    paths += list(production.config_paths)
    for location in (
        production.backups.logical,
        production.backups.base,
        production.backups.wal_archive,
        production.backups.configuration,
        production.backups.storage,
    ):
        if location and location.startswith("file://"):
            paths.append(location.removeprefix("file://"))
    return [p for p in paths if p]


def guard_monthly(plan: Plan, incident: dict[str, Any], tag: str) -> dict[str, Any]:
    """Check every target of the monthly drill; return the drill plan (safe for XCom)."""
    if plan.drills is None:
        raise InvalidInput("drills", "the plan has no drills section")
    drill = plan.drills.monthly
    if incident["environment"] == "production":
        raise InvalidInput("environment", "a drill never runs against production (choose drill)")
    environment = plan.environment(incident["environment"])
    production = plan.environment("production")
    databases = drill.databases or list(environment.databases)
    scratch = {
        name: f"{drill.scratch_prefix}{environment.databases[name].name}_{tag}"[:63]
        for name in databases
    }
    production_names = {
        d.name for env in plan.environments.values() for d in env.databases.values()
    }
    # The teardown also drops stale scratch databases by prefix (a quarterly drill's
    # simulated loss can bring one back from the WAL): no plan database may carry it.
    prefixed = sorted(n for n in production_names if n.startswith(drill.scratch_prefix))
    if prefixed:
        raise InvalidInput(
            "drills.monthly.scratch_prefix",
            f"plan database(s) {prefixed} start with the scratch prefix {drill.scratch_prefix!r}",
        )
    for scratch_name in scratch.values():
        if scratch_name in production_names:
            raise InvalidInput(
                "drills.monthly.scratch_prefix",
                f"scratch database {scratch_name!r} is a production database's name",
            )
    scratch_dir = Path(drill.scratch_dir) / tag
    for path in production_paths(production):
        if _inside(str(scratch_dir), path):
            raise InvalidInput(
                "drills.monthly.scratch_dir",
                f"{scratch_dir} resolves to the production path {path}",
            )
    production_urls = {s.health_url: n for n, s in production.services.items()}
    for service in drill.services:
        spec = environment.services[service]
        if spec.health_url in production_urls and not environment.shares_production_targets:
            raise InvalidInput(
                "drills.monthly.services",
                f"{service} ({spec.health_url}) resolves to production's "
                f"{production_urls[spec.health_url]}: refusing to stop it in a drill",
            )
    for area in drill.storage_areas:
        if area in production.storage and (
            environment.storage[area].path == production.storage[area].path
            and not environment.shares_production_targets
        ):
            raise InvalidInput(
                "drills.monthly.storage_areas",
                f"{area} ({environment.storage[area].path}) is production's storage",
            )
    return {
        "databases": databases,
        "scratch_databases": scratch,
        "scratch_dir": str(scratch_dir),
        "services": list(drill.services),
        "storage_areas": list(drill.storage_areas),
        "tag": tag,
        "scratch_prefix": drill.scratch_prefix,
    }


# --- database: newest dump into a scratch database ----------------------------------------


@dataclass
class StepResult:
    name: str
    status: str  # succeeded | failed
    started_at: str
    finished_at: str
    detail: str
    target_seconds: float | None = None
    evidence: dict[str, Any] | None = None

    @property
    def seconds(self) -> float:
        return (
            datetime.fromisoformat(self.finished_at) - datetime.fromisoformat(self.started_at)
        ).total_seconds()

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "seconds": self.seconds}


def _now() -> str:
    return datetime.now(UTC).isoformat()


def restore_test(
    environment: Environment, database: str, scratch_name: str, admin: Any, target_seconds: float
) -> StepResult:
    """Restore the newest dump (verified by checksum first; a corrupt newest dump fails the
    test - it does not quietly fall back to an older one) and validate it in full."""
    from tracktion_dr.backups.catalog import Catalog, Status
    from tracktion_dr.postgres.dumps import read_manifest, restore_dump
    from tracktion_dr.postgres.integrity import validate_database

    started = _now()
    spec = environment.databases[database]
    cluster = environment.clusters[spec.cluster]
    bindir = Path(cluster.bin_dir)
    catalog = Catalog(environment.backups, bindir=bindir, os_user=cluster.os_user)
    name = f"database_restore:{database}"
    entries = catalog.dumps(spec.name)
    if not entries:
        return StepResult(
            name, "failed", started, _now(), f"no dump of {spec.name} found", target_seconds
        )
    newest = catalog.verify(entries[0]) if entries[0].status is not Status.FAILED else entries[0]
    if newest.status is not Status.VERIFIED:
        return StepResult(
            name,
            "failed",
            started,
            _now(),
            f"newest dump {newest.id} is not usable: {newest.reason}",
            target_seconds,
            {"dump": newest.id},
        )
    manifest = read_manifest(newest.path)
    try:
        restore_dump(admin, newest.path, scratch_name, jobs=spec.restore_jobs, bindir=bindir)
    except Exception as exc:
        return StepResult(
            name,
            "failed",
            started,
            _now(),
            f"pg_restore of {newest.id} into {scratch_name} failed: {exc}",
            target_seconds,
            {"dump": newest.id},
        )
    restored = _now()
    report = validate_database(
        admin, scratch_name, expected_counts=manifest.get("row_counts"), bindir=bindir
    )
    finished = _now()
    restore_seconds = (
        datetime.fromisoformat(restored) - datetime.fromisoformat(started)
    ).total_seconds()
    evidence = {
        "dump": newest.id,
        "scratch_database": scratch_name,
        "restore_seconds": restore_seconds,
        "integrity": report.as_dict(),
        "rows": sum((manifest.get("row_counts") or {}).values()),
    }
    if not report.ok:
        return StepResult(
            name,
            "failed",
            started,
            finished,
            f"{newest.id} restored into {scratch_name} but integrity failed: "
            + "; ".join(report.problems[:5]),
            target_seconds,
            evidence,
        )
    return StepResult(
        name,
        "succeeded",
        started,
        finished,
        f"{newest.id} restored into {scratch_name} in {restore_seconds:.1f}s; "
        f"{evidence['rows']} rows match the manifest; FK, PK, rules, pg_amcheck clean",
        target_seconds,
        evidence,
    )


# --- services: stop, start, gate on health --------------------------------------------------


def service_cycle_test(
    environment: Environment,
    service: str,
    controller: Any,
    target_seconds: float,
    poll_seconds: float = 0.5,
) -> StepResult:
    from tracktion_dr.services.checks import service_health

    name = f"service_recovery:{service}"
    started = _now()
    try:
        controller.stop(service)
    except Exception as exc:
        return StepResult(name, "failed", started, _now(), f"stop failed: {exc}", target_seconds)
    down, seen = service_health(environment, [service], timeout=2)
    stopped_at = _now()
    try:
        controller.start(service)
    except Exception as exc:
        return StepResult(
            name,
            "failed",
            started,
            _now(),
            f"start failed: {exc}",
            target_seconds,
            {"down_after_stop": not down},
        )
    deadline = time.monotonic() + target_seconds
    while True:
        healthy, detail = service_health(environment, [service], timeout=2)
        if healthy:
            finished = _now()
            recovery = (
                datetime.fromisoformat(finished) - datetime.fromisoformat(stopped_at)
            ).total_seconds()
            return StepResult(
                name,
                "succeeded",
                started,
                finished,
                f"stopped ({'health failed as expected' if not down else 'health still answered'}), "
                f"started, healthy again after {recovery:.1f}s",
                target_seconds,
                {"recovery_seconds": recovery, "down_after_stop": not down},
            )
        if time.monotonic() >= deadline:
            return StepResult(
                name,
                "failed",
                started,
                _now(),
                f"not healthy within {target_seconds:.0f}s after start: {detail}",
                target_seconds,
                {"last": detail, "stop_probe": seen},
            )
        time.sleep(poll_seconds)


# --- storage: write, back up, delete, restore, verify ----------------------------------------


def storage_test(
    area: str, area_path: Path, scratch_dir: Path, drill_id: str, target_seconds: float
) -> StepResult:
    name = f"storage_recovery:{area}"
    started = _now()
    test_file = area_path / f".dr_test_{drill_id}.txt"
    content = f"DR drill file {drill_id} written {started}\n".encode()
    digest = hashlib.sha256(content).hexdigest()
    scratch_dir.mkdir(parents=True, exist_ok=True)
    archive = scratch_dir / f"{area}.tar.gz"
    try:
        test_file.write_bytes(content)
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(test_file, arcname=test_file.name)
        test_file.unlink()  # the drill's own file: the simulated loss
        if test_file.exists():
            raise RuntimeError("test file still present after delete")
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(area_path, members=[tar.getmember(test_file.name)], filter="data")
        restored = hashlib.sha256(test_file.read_bytes()).hexdigest()
    except Exception as exc:
        return StepResult(
            name, "failed", started, _now(), f"{type(exc).__name__}: {exc}", target_seconds
        )
    finally:
        test_file.unlink(missing_ok=True)  # our test file only; never area content
    if restored != digest:
        return StepResult(
            name,
            "failed",
            started,
            _now(),
            f"restored content differs (sha256 {restored[:12]} != {digest[:12]})",
            target_seconds,
        )
    return StepResult(
        name,
        "succeeded",
        started,
        _now(),
        f"wrote {test_file.name} in {area_path}, backed up, deleted, restored; sha256 {digest[:12]} matches",
        target_seconds,
        {"sha256": digest, "archive": str(archive)},
    )


# --- teardown -------------------------------------------------------------------------------


def teardown_monthly(
    environment: Environment, drill: dict[str, Any], admin_for: Any, controller_for: Any
) -> list[str]:
    """Drop every scratch resource and make sure the monthly services run again."""
    from tracktion_dr.postgres.dumps import drop_database

    done: list[str] = []
    for name, scratch in drill["scratch_databases"].items():
        spec = environment.databases[name]
        admin = admin_for(environment.clusters[spec.cluster].conn_id)
        drop_database(admin, scratch)
        done.append(f"dropped {scratch}")
        # Scratch databases of earlier drills that a recovery brought back (a quarterly
        # drill's simulated loss replays WAL up to before their drop): same prefix, gone too.
        for stale in stale_scratch_databases(admin, drill["scratch_prefix"]):
            drop_database(admin, stale)
            done.append(f"dropped stale scratch database {stale}")
    scratch_dir = Path(drill["scratch_dir"])
    if scratch_dir.exists():
        shutil.rmtree(scratch_dir)  # the drill's own scratch files
        done.append(f"removed {scratch_dir}")
    for service in drill["services"]:
        controller = controller_for(
            environment.controllers[environment.services[service].controller]
        )
        state = controller.status(service)
        if str(getattr(state, "state", "")).lower() not in ("running",):
            controller.start(service)
            done.append(f"started {service} (was {state.state})")
    return done


def stale_scratch_databases(admin: Any, prefix: str) -> list[str]:
    import psycopg

    pattern = prefix.replace("_", "\\_") + "%"
    with psycopg.connect(admin.conninfo("postgres"), connect_timeout=10) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_catalog.pg_database WHERE datname LIKE %s", (pattern,)
        ).fetchall()
    return sorted(r[0] for r in rows)


# --- quarterly ----------------------------------------------------------------------------


def simulate_cluster_loss(environment: Environment, cluster_name: str, tag: str) -> dict[str, Any]:
    """The drill cluster is lost: PostgreSQL stopped (immediate, like a crash) and its data
    directory moved aside to ``<dir>.lost_<tag>`` (kept, never deleted)."""
    from tracktion_dr.postgres.pitr import ClusterPaths, server_running

    cluster = environment.clusters[cluster_name]
    data = Path(cluster.data_directory)
    paths = ClusterPaths(data, Path(cluster.bin_dir), cluster.os_user)
    if server_running(paths):
        from tracktion_dr.postgres.commands import run

        run(paths.pg_ctl("stop", "-m", "immediate", "-w"), what="pg_ctl stop -m immediate")
    lost_at = datetime.now(UTC)
    aside = data.with_name(f"{data.name}.lost_{tag}")
    if data.exists():
        os.rename(data, aside)
    return {"lost_at": lost_at.isoformat(), "moved_aside": str(aside), "cluster": cluster_name}


DAGS_FOLDER = Path(__file__).resolve().parents[3] / "dags"


def guard_quarterly(plan: Plan, incident: dict[str, Any]) -> dict[str, Any]:
    """Everything checked before the drill cluster is taken away."""
    from tracktion_dr.postgres.restore import incident_tag
    from tracktion_dr.scenarios.database import catalog_for

    if plan.drills is None:
        raise InvalidInput("drills", "the plan has no drills section")
    drill = plan.drills.quarterly
    if incident["environment"] == "production":
        raise InvalidInput("environment", "a drill never runs against production (choose drill)")
    if incident["environment"] != drill.environment:
        raise InvalidInput(
            "environment", f"the quarterly drill runs against {drill.environment!r} only"
        )
    if not drill.steps:
        raise InvalidInput("drills.quarterly.steps", "no steps: nothing would recover the loss")
    missing = [s.dag_id for s in drill.steps if not (DAGS_FOLDER / f"{s.dag_id}.py").is_file()]
    if missing:
        raise InvalidInput("drills.quarterly.steps", f"no such DAG(s): {missing}")
    environment = plan.environment(incident["environment"])
    production = plan.environment("production")
    cluster = environment.clusters[drill.cluster]
    if (
        cluster.data_directory in {c.data_directory for c in production.clusters.values()}
        and not environment.shares_production_targets
    ):
        raise InvalidInput(
            "drills.quarterly.cluster",
            f"{drill.cluster} ({cluster.data_directory}) is a production cluster",
        )
    window = catalog_for(environment, cluster).recoverable_window()
    if window is None:
        raise InvalidInput(
            "drills.quarterly.cluster",
            f"{drill.cluster} could not be recovered: no recoverable window in the backups",
        )
    return {
        "cluster": drill.cluster,
        "tag": incident_tag(incident["incident_id"]).lower(),
        "window": [window[0].isoformat(), window[1].isoformat()],
        "steps": [s.dag_id for s in drill.steps],
    }


def put_back_if_down(environment: Environment, cluster_name: str, loss: dict[str, Any]) -> str:
    """After the chain: if the cluster answers, nothing to do. If not, move whatever is in
    its data directory aside and put the lost directory back, then start it."""
    from tracktion_dr.postgres.pitr import ClusterPaths, server_running, start_server
    from tracktion_dr.scenarios.database import recovery_log_file

    cluster = environment.clusters[cluster_name]
    data = Path(cluster.data_directory)
    paths = ClusterPaths(data, Path(cluster.bin_dir), cluster.os_user)
    if server_running(paths):
        return f"{cluster_name} is running after the drill: nothing to put back"
    aside = Path(loss["moved_aside"])
    if not aside.exists():
        return f"{cluster_name} is down and {aside} is gone: manual recovery needed"
    if data.exists():
        os.rename(data, data.with_name(f"{data.name}.failed_{loss.get('tag', 'drill')}"))
    os.rename(aside, data)
    start_server(paths, recovery_log_file(cluster, f"putback_{loss.get('tag', 'drill')}"))
    return f"{cluster_name} was down after the drill: put {aside} back and started it"
