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
order as real runs of their own DAGs, triggered through the scheduler and waited for on
the triggerer (``airflow.drill_steps.DrillStepOperator``), each recorded in the ledger by
itself; the drill reads each child run's outcome back for its own record.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tracktion_dr.core.incident import InvalidInput
from tracktion_dr.core.plan import Environment, Plan
from tracktion_dr.core.safe_tar import extract_as_data

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
            extract_as_data(tar, area_path)  # the archive holds the test file alone
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
    from tracktion_dr.postgres.control import cluster_control

    cluster = environment.clusters[cluster_name]
    data = Path(cluster.data_directory)
    cluster_control(cluster).stop("immediate")
    lost_at = datetime.now(UTC)
    aside = data.with_name(f"{data.name}.lost_{tag}")
    if data.exists():
        os.rename(data, aside)
    return {"lost_at": lost_at.isoformat(), "moved_aside": str(aside), "cluster": cluster_name}


DAGS_FOLDER = Path(__file__).resolve().parents[3] / "dags"


def guard_quarterly(
    plan: Plan,
    incident: dict[str, Any],
    dag_paused: Callable[[str], bool | None] | None = None,
) -> dict[str, Any]:
    """Everything checked before the drill cluster is taken away. ``dag_paused(dag_id)``
    says whether a step's DAG is paused in Airflow (None: unknown to Airflow): the steps
    run through the scheduler, and a paused one would never start."""
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
    if dag_paused is not None:
        paused = [s.dag_id for s in drill.steps if dag_paused(s.dag_id) is not False]
        if paused:
            raise InvalidInput(
                "drills.quarterly.steps",
                f"paused or not yet loaded in Airflow: {sorted(set(paused))}",
                hint="unpause them (the drill runs each step as a run of its DAG through the "
                "scheduler; a paused DAG's run never starts)",
            )
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
    from tracktion_dr.postgres.control import cluster_control
    from tracktion_dr.postgres.pitr import server_running, start_server
    from tracktion_dr.scenarios.database import recovery_log_file

    cluster = environment.clusters[cluster_name]
    data = Path(cluster.data_directory)
    paths = cluster_control(cluster)
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


# --- the monthly drill's steps, as dr_test_monthly runs them --------------------------------

# A drill proves recovery with the time measured: each part's result goes to the record,
# also when the part failed (under this XCom key of its step).
PARTS_KEY = "steps"


def monthly_plan_of_actions(run: dict[str, Any]) -> list[str]:
    scratch = ", ".join(run["scratch_databases"].values()) or "no database"
    return [
        f"test_databases: newest dump (checksum first) into {scratch}, validated in full",
        f"test_services: stop, start, gate on health: {', '.join(run['services']) or 'none'}",
        f"test_storage: write, back up, delete, restore, compare: "
        f"{', '.join(run['storage_areas']) or 'none'} (scratch {run['scratch_dir']})",
        "teardown: drop the scratch databases and directory, start any service left stopped",
        "measure_rpo: time since the newest commit the WAL archive holds",
    ]


def test_databases(plan: Plan, run: dict[str, Any], admin_for: Any) -> list[dict[str, Any]]:
    """Each database's newest dump restored into its scratch database and validated
    (``admin_for(conn_id)``: the cluster's admin endpoint)."""
    environment = plan.environment(run["environment"])
    parts = []
    for name in run["databases"]:
        spec = environment.databases[name]
        result = restore_test(
            environment,
            name,
            run["scratch_databases"][name],
            admin_for(environment.clusters[spec.cluster].conn_id),
            plan.tiers[spec.tier].rto.total_seconds(),
        )
        parts.append(result.as_dict())
    return parts


def test_services(
    plan: Plan, run: dict[str, Any], controller_for: Any, timeout_seconds: float
) -> list[dict[str, Any]]:
    """Each monthly service stopped, started and gated on health, one after the other,
    within its tier's RTO (or ``timeout_seconds`` when shorter)."""
    environment = plan.environment(run["environment"])
    parts = []
    for name in run["services"]:
        spec = environment.services[name]
        rto = plan.tiers[spec.tier].rto.total_seconds()
        controller = controller_for(environment.controllers[spec.controller])
        result = service_cycle_test(environment, name, controller, min(rto, timeout_seconds))
        result.target_seconds = rto
        parts.append(result.as_dict())
    return parts


def storage_target_seconds(plan: Plan, environment: Environment, area: str) -> float:
    """The strictest RTO of the services that need ``area`` (the loosest tier if none)."""
    tiers = [plan.tiers[environment.services[s].tier].rto for s in environment.dependents_of(area)]
    return min(tiers or [max(t.rto for t in plan.tiers.values())]).total_seconds()


def test_storage(plan: Plan, run: dict[str, Any]) -> list[dict[str, Any]]:
    environment = plan.environment(run["environment"])
    return [
        storage_test(
            area,
            Path(environment.storage[area].path),
            Path(run["scratch_dir"]) / "storage",
            run["incident_id"],
            storage_target_seconds(plan, environment, area),
        ).as_dict()
        for area in run["storage_areas"]
    ]


def judge_parts(name: str, parts: list[dict[str, Any]]) -> str:
    """The step's sentence when every part recovered; a failed part fails the step
    (:class:`ValidationFailed`), naming the parts that failed."""
    from tracktion_dr.core.errors import ValidationFailed

    failed = [p for p in parts if p["status"] != "succeeded"]
    detail = "; ".join(f"{p['name']}: {p['detail']}" for p in (failed or parts))[:1500]
    if failed:
        raise ValidationFailed(f"{name} failed: {detail}")
    return detail or "nothing to test"


def teardown(
    plan: Plan, run: dict[str, Any], admin_for: Any, controller_for: Any
) -> dict[str, Any]:
    done = teardown_monthly(plan.environment(run["environment"]), run, admin_for, controller_for)
    for line in done:
        log.info("teardown: %s", line)
    return {"detail": "; ".join(done) or "nothing to remove", "lines": done}


def measure_rpo(plan: Plan, run: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """Data at risk now: time since the newest commit the WAL archive holds (first database
    of the drill), against the transactional RPO."""
    from tracktion_dr.scenarios.database import catalog_for

    environment = plan.environment(run["environment"])
    name = run["databases"][0]
    spec = environment.databases[name]
    newest = catalog_for(environment, environment.clusters[spec.cluster]).newest_restorable_point()
    return rpo_exposure(
        name,
        newest,
        plan.data_categories[spec.data_category].rpo.total_seconds(),
        now or datetime.now(UTC),
    )


def rpo_exposure(
    database: str, newest: datetime | None, rpo_seconds: float, now: datetime
) -> dict[str, Any]:
    if newest is None:
        note = "no restorable point in the WAL archive: RPO not measured"
        return {"detail": note, "note": note, "rpo_target_seconds": rpo_seconds}
    exposure = (now - newest).total_seconds()
    note = (
        f"{database}: newest commit in the WAL archive {newest.isoformat()}, "
        f"{exposure:.0f}s ago: the data a loss now would cost"
    )
    return {
        "detail": note,
        "note": note,
        "rpo_target_seconds": rpo_seconds,
        "data_loss_seconds": exposure,
    }


def monthly_rto_seconds(plan: Plan, run: dict[str, Any]) -> float:
    """The strictest tier among the drill's databases and services (the loosest tier when
    the drill has neither)."""
    environment = plan.environment(run["environment"])
    targets = [plan.tiers[environment.databases[d].tier].rto for d in run.get("databases", [])]
    targets += [plan.tiers[environment.services[s].tier].rto for s in run.get("services", [])]
    return min(targets or [max(t.rto for t in plan.tiers.values())]).total_seconds()


def monthly_record_fields(
    plan: Plan,
    run: dict[str, Any],
    parts: list[dict[str, Any]],
    rpo: dict[str, Any] | None,
    teardown_lines: list[str] | None,
) -> dict[str, Any]:
    rpo = rpo or {}
    return {
        "rto_target_seconds": monthly_rto_seconds(plan, run),
        "rpo_target_seconds": rpo.get("rpo_target_seconds"),
        "data_loss_seconds": rpo.get("data_loss_seconds"),
        "backup_used": next(
            (p["evidence"]["dump"] for p in parts if (p.get("evidence") or {}).get("dump")),
            None,
        ),
        "details": {
            "steps": parts,
            "notes": [n for n in [rpo.get("note")] if n]
            + [f"teardown: {line}" for line in teardown_lines or []],
        },
    }


# --- the quarterly drill's steps, as dr_test_quarterly runs them ------------------------------

# Each chain step's outcome (the child run and its record), also when it failed.
CHAIN_KEY = "chain"


def chain_task_id(index: int, dag_id: str) -> str:
    return f"step_{index + 1}_{dag_id}"


def quarterly_plan_of_actions(plan: Plan, run: dict[str, Any]) -> list[str]:
    steps = plan.drills.quarterly.steps if plan.drills else []
    return [
        f"simulate_loss: stop {run['cluster']} (immediate) and move its data directory aside "
        f"(.lost_{run['tag']}, kept); the RTO clock starts here",
        *(
            f"{chain_task_id(i, s.dag_id)}: run {s.dag_id} {s.conf or ''} ({s.label or s.dag_id})"
            for i, s in enumerate(steps)
        ),
        f"safety_net: if {run['cluster']} does not answer, put the lost directory back",
    ]


def lose_cluster(plan: Plan, run: dict[str, Any]) -> dict[str, Any]:
    loss = simulate_cluster_loss(plan.environment(run["environment"]), run["cluster"], run["tag"])
    detail = (
        f"cluster {run['cluster']} lost at {loss['lost_at']}: stopped (immediate), data "
        f"directory moved aside to {loss['moved_aside']}"
    )
    log.info("%s", detail)
    return {"detail": detail, **loss, "tag": run["tag"]}


def chain_step_conf(step: Any, run: dict[str, Any], loss: dict[str, Any]) -> dict[str, Any]:
    """The step DAG's conf: the plan's, plus this drill's incident and clock start."""
    return {**step.conf, "incident_id": run["incident_id"], "incident_started_at": loss["lost_at"]}


def judge_chain_step(
    step: Any,
    result: dict[str, Any],
    started_at: str,
    finished_at: str,
    timeout_seconds: float | None = None,
) -> dict[str, Any]:
    """What the record keeps of one chain step's run: its status and sentence, when it ran,
    the child run and the figures of its record. A step that took longer than
    ``timeout_seconds`` (the plan's ``step_timeout``) fails the drill, whatever its run's
    outcome: the child runs through the scheduler, whose deferred wait has no deadline of
    its own, so the drill judges the time when the child is done."""
    record = result.get("record") or {}
    took = _seconds_between(started_at, finished_at)
    late = timeout_seconds is not None and took > timeout_seconds
    ok = result["state"] == "success" and not late
    failed_tasks = sorted(k for k, v in (result.get("task_states") or {}).items() if v == "failed")
    detail = (
        f"{step.label or step.dag_id}: {step.dag_id} run {result.get('run_id')} {result['state']}"
    )
    if record.get("rto_achieved_seconds"):
        detail += f"; RTO achieved {record['rto_achieved_seconds']}s"
    if record.get("data_loss_seconds") is not None:
        detail += f"; data lost {record['data_loss_seconds']:.1f}s"
    if late:
        detail += f"; took {took:.0f}s, over its step timeout of {timeout_seconds:.0f}s"
    if failed_tasks:
        detail += f"; failed tasks {failed_tasks}"
    if result.get("error"):
        detail += f"; {result['error'][-300:]}"
    return {
        "status": "succeeded" if ok else "failed",
        "detail": detail,
        "started_at": started_at,
        "finished_at": finished_at,
        "child": {k: v for k, v in result.items() if k != "record"},
        "record": {
            k: record.get(k)
            for k in ("rto_achieved_seconds", "data_loss_seconds", "rpo_target_seconds", "outcome")
        }
        if record
        else None,
        "label": step.label or step.dag_id,
    }


def safety_net(plan: Plan, run: dict[str, Any], loss: dict[str, Any] | None) -> str:
    if not loss or not loss.get("moved_aside"):
        return "nothing was lost: nothing to put back"
    detail = put_back_if_down(plan.environment(run["environment"]), run["cluster"], loss)
    log.info("%s", detail)
    return detail


def _seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def quarterly_record_fields(
    plan: Plan,
    run: dict[str, Any],
    loss: dict[str, Any] | None,
    chain: list[tuple[str, str, dict[str, Any] | None]],
    safety_net_detail: str | None,
) -> dict[str, Any]:
    """The drill's record: the simulated loss and each chain step's time on the RTO clock
    (since the loss) when it finished, the tier's RTO and RPO, the data lost as the first
    step that measured it says. ``chain``: (task id, label, what the step kept - see
    :func:`judge_chain_step` - or its event when it was skipped; None when it never ran)."""
    clock = (loss or {}).get("lost_at") or run["started_at"]
    steps: list[dict[str, Any]] = []
    if loss and loss.get("event"):
        event = loss["event"]
        steps.append(
            {
                "name": "simulate_loss",
                "status": event["status"],
                "seconds": 0.0,
                "target_seconds": None,
                "detail": event["detail"],
            }
        )
    environment = plan.environment(run["environment"])
    cluster = run.get("cluster") or (plan.drills.quarterly.cluster if plan.drills else None)
    tiers = [plan.tiers[d.tier] for d in environment.databases.values() if d.cluster == cluster]
    rto = min(t.rto for t in tiers).total_seconds() if tiers else 4 * 3600.0
    data_lost, rpo_target = None, None
    for task_id, label, ran in chain:
        if not ran:
            steps.append(
                {
                    "name": task_id,
                    "status": "not run",
                    "seconds": None,
                    "target_seconds": None,
                    "detail": label,
                }
            )
            continue
        steps.append(
            {
                "name": f"{task_id} ({label})",
                "status": ran["status"],
                "seconds": _seconds_between(clock, ran["finished_at"]),
                "target_seconds": rto,
                "detail": ran["detail"],
                "took_seconds": _seconds_between(ran["started_at"], ran["finished_at"]),
            }
        )
        child = ran.get("record") or {}
        if child.get("data_loss_seconds") is not None and data_lost is None:
            data_lost, rpo_target = child["data_loss_seconds"], child.get("rpo_target_seconds")
    return {
        "rto_target_seconds": rto,
        "rpo_target_seconds": rpo_target
        or (min(t.rpo for t in tiers).total_seconds() if tiers else None),
        "data_loss_seconds": data_lost,
        "clock_started_at": clock,
        "details": {
            "steps": steps,
            "notes": [
                "step times are the RTO clock (time since the simulated loss) when each step "
                "finished",
                f"safety net: {safety_net_detail}",
            ],
        },
    }
