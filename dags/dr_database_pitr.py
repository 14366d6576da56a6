"""
### DR database point-in-time recovery (PITR) of a cluster

Brings a PostgreSQL cluster back to a chosen moment from the newest verified base backup and
the WAL archive - the PostgreSQL 12+ way (`recovery.signal` + `recovery_target_*`; the
seed's `recovery.conf` would stop a 12+ server). The seed's "incremental" recovery is
`target_type=latest`.

1. **guard** - nothing touched yet: the cluster is in the plan; the typed confirmation
   (`RESTORE <cluster>`) in production; the target is inside the **recoverable window**
   (after the end of the oldest usable base backup, not after the newest archived commit,
   not in the future - a bad target fails with the window in the message); the newest base
   backup before the target passes `pg_verifybackup`; the WAL archive is continuous from it;
   no other destructive run holds the cluster. If the primary still answers, its current
   WAL segment is switched out and archived first, so the newest commits can be replayed.
2. **stop_services** that depend on the cluster's databases.
3. **prepare_data_directory** - stop PostgreSQL (fast, then immediate), **move the data
   directory aside** (`<dir>.pre_<incident>`, never deleted), copy the base backup in,
   write `recovery.signal`, `restore_command` and the target settings.
4. **start_postgres**; **gate_recovery_promoted** waits (logging replayed LSN vs target)
   until recovery reached the target and the server promoted.
5. **validate_recovered** (FK orphans, duplicate PKs, business rules, `pg_amcheck`),
   **start_services**, gates on service health and functional checks.
6. **reseed_replica** - the standby followed the old timeline; it is re-seeded from the
   recovered primary (its old data directory moved aside).
7. **measure_data_loss** from the canary, **record** to the ledger, **notify**, **verdict**.

Target types: `latest`, `time` (ISO 8601 with zone), `lsn` (e.g. `0/5A000028`),
`restore_point` (a name created with `pg_create_restore_point`), `immediate` (end of the
base backup).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from airflow.sdk import Param, dag, task

from tracktion_dr.airflow.dag_kit import (
    RtoGate,
    now_iso,
    open_incident,
    publish_task,
    raise_for_outcome,
    record_timeline,
    refusing_bad_input,
    release_exclusivity,
    step_event,
    take_exclusivity,
)
from tracktion_dr.airflow.support import DEFAULT_ARGS, common_params
from tracktion_dr.core.plan import load_plan
from tracktion_dr.postgres.pitr import TARGET_TYPES

log = logging.getLogger(__name__)

PLAN = load_plan()
CLUSTERS = sorted({name for env in PLAN.environments.values() for name in env.clusters})


def _cluster(run: dict):
    return PLAN.environment(run["environment"]).clusters[run["cluster"]]


@dag(
    dag_id="dr_database_pitr",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "scenario", "database"],
    default_args=DEFAULT_ARGS,
    params={
        "cluster": Param(
            type="string",
            enum=CLUSTERS,
            title="Cluster",
            description="The PostgreSQL cluster to recover (from the DR plan).",
            section="Recovery target",
        ),
        "target_type": Param(
            type="string",
            enum=list(TARGET_TYPES),
            title="Target type",
            description="latest: replay everything archived. time / lsn / restore_point: stop there. "
            "immediate: stop at the end of the base backup.",
            section="Recovery target",
        ),
        "target": Param(
            "",
            type="string",
            title="Target",
            description="For time: ISO 8601 with a zone (2026-11-26T03:11:59Z). For lsn: 0/5A000028. "
            "For restore_point: its name. Empty for latest and immediate.",
            section="Recovery target",
        ),
        "confirm": Param(
            "",
            type="string",
            title="Confirmation",
            description="Type RESTORE <cluster> (e.g. RESTORE main). Required in production.",
            section="Recovery target",
        ),
        **common_params(PLAN, environment_default=None),
    },
    doc_md=__doc__,
)
def dr_database_pitr():
    @task
    def guard(**context) -> dict:
        from tracktion_dr.airflow.support import endpoint
        from tracktion_dr.postgres.pitr import parse_target
        from tracktion_dr.scenarios.database import (
            check_confirmation,
            cluster_target,
            guard_pitr,
            salvage_current_wal,
        )

        incident = open_incident(context, PLAN)
        environment = PLAN.environment(incident["environment"])
        with refusing_bad_input():
            cluster = cluster_target(environment, context["params"].get("cluster"))
            check_confirmation(
                incident["environment"],
                environment,
                context["params"]["cluster"],
                context["params"].get("confirm"),
            )
            parse_target(
                context["params"].get("target_type") or "",
                context["params"].get("target"),
                window=None,
            )
        if not incident["dry_run"]:
            log.info(salvage_current_wal(endpoint(cluster.conn_id)))
        with refusing_bad_input():
            pitr_plan = guard_pitr(PLAN, incident, context["params"])
        log.info(
            "recoverable window %s; plan of actions%s:\n%s",
            pitr_plan["window"],
            " (DRY RUN)" if incident["dry_run"] else "",
            "\n".join(f"  {i}. {a}" for i, a in enumerate(pitr_plan["actions"], 1)),
        )
        exclusivity: dict = {}
        if not incident["dry_run"]:
            with refusing_bad_input():
                exclusivity = take_exclusivity(
                    context,
                    incident,
                    [
                        f"cluster:{pitr_plan['cluster']}",
                        *(f"database:{d}" for d in pitr_plan["databases"]),
                    ],
                )
        return {**incident, **pitr_plan, **exclusivity}

    @task
    def stop_services(run: dict) -> dict:
        from tracktion_dr.airflow.support import controller
        from tracktion_dr.scenarios.database import stop_services as stop

        started = now_iso()
        if run["dry_run"]:
            return {"event": step_event("stop_services", started, "skipped", "dry run")}
        detail = stop(PLAN.environment(run["environment"]), run["services"], controller)
        return {"event": step_event("stop_services", started, detail=detail)}

    @task
    def prepare_data_directory(run: dict) -> dict:
        from tracktion_dr.scenarios.database import prepare_data_directory as prepare

        started = now_iso()
        if run["dry_run"]:
            return {"event": step_event("prepare_data_directory", started, "skipped", "dry run")}
        return {
            "event": step_event(
                "prepare_data_directory", started, detail=prepare(_cluster(run), run)
            )
        }

    @task
    def start_postgres(run: dict) -> dict:
        from tracktion_dr.postgres.pitr import ClusterPaths, server_running, start_server
        from tracktion_dr.scenarios.database import recovery_log_file

        started = now_iso()
        if run["dry_run"]:
            return {"event": step_event("start_postgres", started, "skipped", "dry run")}
        cluster = _cluster(run)
        paths = ClusterPaths(Path(cluster.data_directory), Path(cluster.bin_dir), cluster.os_user)
        if server_running(paths):
            return {"event": step_event("start_postgres", started, detail="already running")}
        log_file = recovery_log_file(cluster, run["tag"])
        start_server(paths, log_file)
        return {
            "event": step_event(
                "start_postgres", started, detail=f"started; recovery log {log_file}"
            )
        }

    def recovery_promoted(run: dict) -> tuple[bool, str]:
        from tracktion_dr.airflow.support import endpoint
        from tracktion_dr.postgres.pitr import replay_progress
        from tracktion_dr.scenarios.database import target_from_plan

        progress = replay_progress(
            endpoint(_cluster(run).conn_id).conninfo("postgres"), target_from_plan(run)
        )
        return progress.promoted, progress.detail

    @task
    def validate_recovered(run: dict) -> dict:
        from tracktion_dr.airflow.support import endpoint
        from tracktion_dr.postgres.integrity import validate_database
        from tracktion_dr.postgres.pitr import clear_recovery_settings

        started = now_iso()
        if run["dry_run"]:
            return {"event": step_event("validate_recovered", started, "skipped", "dry run")}
        cluster = _cluster(run)
        if clear_recovery_settings(Path(cluster.data_directory)):
            log.info("recovery settings removed from postgresql.auto.conf (the server is promoted)")
        reports = [
            validate_database(
                endpoint(cluster.conn_id), name, bindir=Path(cluster.bin_dir)
            ).as_dict()
            for name in run["databases"]
        ]
        problems = [p for report in reports for p in report["problems"]]
        if problems:
            raise RuntimeError("recovered cluster failed validation: " + "; ".join(problems[:8]))
        return {
            "event": step_event(
                "validate_recovered", started, detail="all integrity checks passed"
            ),
            "reports": reports,
        }

    @task(trigger_rule="all_done")
    def start_services(**context) -> dict:
        """Runs whatever happened after stop_services: services must not stay down because
        a later step failed (their health gates then tell the truth)."""
        from tracktion_dr.airflow.support import controller
        from tracktion_dr.scenarios.database import start_services as start

        started = now_iso()
        run = context["ti"].xcom_pull(task_ids="guard")
        if run is None or context["ti"].xcom_pull(task_ids="stop_services") is None:
            return {
                "event": step_event("start_services", started, "skipped", "nothing was stopped")
            }
        if run["dry_run"]:
            return {"event": step_event("start_services", started, "skipped", "dry run")}
        detail = start(PLAN.environment(run["environment"]), run["services"], controller)
        return {"event": step_event("start_services", started, detail=detail)}

    def services_healthy(run: dict) -> tuple[bool, str]:
        from tracktion_dr.services.checks import service_health

        return service_health(PLAN.environment(run["environment"]), run["services"])

    def functional(run: dict) -> tuple[bool, str]:
        from tracktion_dr.services.checks import functional_checks

        return functional_checks(PLAN.environment(run["environment"]), run["services"])

    @task
    def reseed_replica(run: dict) -> dict:
        from tracktion_dr.airflow.support import endpoint
        from tracktion_dr.postgres.pitr import ClusterPaths
        from tracktion_dr.postgres.replica import reseed_replica as reseed

        started = now_iso()
        cluster = _cluster(run)
        if run["dry_run"]:
            return {"event": step_event("reseed_replica", started, "skipped", "dry run")}
        if not (
            cluster.replica_data_directory
            and cluster.replica_conn_id
            and cluster.replication_conn_id
        ):
            return {
                "event": step_event(
                    "reseed_replica",
                    started,
                    "skipped",
                    "the plan names no replica: if one exists it follows the old timeline and MUST be re-seeded by hand",
                )
            }
        replica_dir = Path(cluster.replica_data_directory)
        detail = reseed(
            endpoint(cluster.replication_conn_id),
            endpoint(cluster.conn_id),
            ClusterPaths(replica_dir, Path(cluster.bin_dir), cluster.os_user),
            endpoint(cluster.replica_conn_id).port,
            replica_dir.with_name(f"replica_reseed_{run['tag']}.log"),
            bindir=Path(cluster.bin_dir),
        )
        return {"event": step_event("reseed_replica", started, detail=detail)}

    @task
    def measure_data_loss(run: dict) -> dict:
        from tracktion_dr.airflow.support import endpoint
        from tracktion_dr.postgres.measure import canary_data_loss
        from tracktion_dr.postgres.pitr import last_replayed_commit
        from tracktion_dr.scenarios.database import recovery_log_file

        started = now_iso()
        if run["dry_run"]:
            return {
                "event": step_event("measure_data_loss", started, "skipped", "dry run"),
                "data_loss": None,
            }
        cluster = _cluster(run)
        log_file = recovery_log_file(cluster, run["tag"])
        replayed = last_replayed_commit(log_file.read_text()) if log_file.exists() else None
        fallback = datetime.fromisoformat(replayed.replace(" UTC", "+00:00")) if replayed else None
        losses = [
            canary_data_loss(
                endpoint(cluster.conn_id).conninfo(name),
                datetime.fromisoformat(run["started_at"]),
                fallback=fallback,
                fallback_method="last replayed transaction",
            )
            for name in run["databases"]
        ]
        worst = max(losses, key=lambda loss: loss.seconds or 0) if losses else None
        return {
            "event": step_event(
                "measure_data_loss", started, detail=worst.describe() if worst else "no databases"
            ),
            "data_loss": worst.as_dict() if worst else None,
            "last_replayed_commit": replayed,
        }

    @task(trigger_rule="all_done", retries=0)
    def record(**context) -> dict:

        run = context["ti"].xcom_pull(task_ids="guard")
        if run is None:  # the guard refused: nothing was touched, nothing to record
            return {"outcome": "failed", "details": {"failed_tasks": ["guard"]}, "refused": True}
        measured = context["ti"].xcom_pull(task_ids="measure_data_loss") or {}
        loss = measured.get("data_loss") or {}
        timeline = record_timeline(
            context,
            incident=run,
            rto_target_seconds=run["rto_seconds"],
            rpo_target_seconds=run["rpo_seconds"],
            data_loss_seconds=loss.get("seconds"),
            backup_used=run["base_backup"]["id"],
            details={
                "cluster": run["cluster"],
                "target": run["target"],
                "window": run["window"],
                "data_loss": loss,
                "last_replayed_commit": measured.get("last_replayed_commit"),
                "kept_data_directory": f"{run['data_directory']}.pre_{run['tag']}",
            },
        )
        release_exclusivity(context)
        return timeline

    @task(retries=0)
    def notify_outcome(timeline: dict, **context) -> dict:
        from tracktion_dr.notify.runs import notify_outcome as send

        return send(PLAN, context["ti"].xcom_pull(task_ids="guard"), timeline)

    @task(retries=0)
    def verdict(timeline: dict) -> None:
        raise_for_outcome(timeline)

    run = guard()
    stopped = stop_services(run)
    prepared = prepare_data_directory(run)
    started_pg = start_postgres(run)
    stopped >> prepared >> started_pg
    gate_promoted = RtoGate(
        task_id="gate_recovery_promoted", check=recovery_promoted, incident=run, plan=PLAN
    )
    validated = validate_recovered(run)
    services_started = start_services()
    started_pg >> gate_promoted >> validated >> services_started
    gate_services = RtoGate(
        task_id="gate_services_healthy", check=services_healthy, incident=run, plan=PLAN
    )
    gate_functional = RtoGate(
        task_id="gate_functional_checks", check=functional, incident=run, plan=PLAN
    )
    [validated, services_started] >> gate_services >> gate_functional
    reseeded = reseed_replica(run)
    validated >> reseeded
    loss = measure_data_loss(run)
    gate_functional >> loss
    timeline = record()
    [loss, reseeded] >> timeline
    notify_outcome(timeline)
    publish_task(PLAN, timeline) >> verdict(timeline)


dr_database_pitr()
