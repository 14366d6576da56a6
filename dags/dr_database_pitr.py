"""
### DR database point-in-time recovery (PITR) of a cluster

Brings a PostgreSQL cluster back to a chosen moment from a verified base backup and the WAL
archive - the PostgreSQL 12+ way (`recovery.signal` / `standby.signal` +
`recovery_target_*`; the seed's `recovery.conf` would stop a 12+ server). The seed's
"incremental" recovery is `target_type=latest`. **The server never promotes by itself**: it
waits at the target, is validated read-only, and this DAG promotes it.

1. **guard** - nothing touched yet: the cluster is in the plan; the typed confirmation
   (`RESTORE <cluster>`) in production; the target checked against the WAL **actually held**
   (archive, salvage folder, the primary's and the standby's `pg_wal`), for every type: a
   time must have a commit after it; an LSN must not lie past the newest record held; a
   restore point is looked up in the WAL (`pg_waldump`) and must exist; none may lie before
   the consistent point of every usable base backup - the refusal names the **recoverable
   window** (in LSNs for LSN and restore-point targets). The base backup is chosen by the
   target's LSN (its stop LSN at or before it), not marked failed by a verification, and
   WAL is held without a gap (a missing segment is named). A new incident asking for what an earlier
   one already recovered is refused (`AlreadyRecovered`); the same incident's re-run
   resumes. Only then the locks are taken and, if the primary still answers, its current
   WAL segment is switched out and archived.
2. **stop_services** that depend on the cluster (not once the cluster is this incident's
   recovered primary).
   At the same time **stage_recovery** builds the replacement beside the data directory,
   touching nothing live: the base backup copied into `.<dir>.restoring_<incident>`,
   `pg_verifybackup` on that copy (a failure marks the backup failed; the next attempt's
   guard takes another), the recovery settings and the recovery marker written last.
3. **prepare_data_directory** - stop PostgreSQL (fast, then immediate), **move the data
   directory aside** (`<dir>.pre_<incident>`, never deleted), **salvage** the WAL the archive
   lacks from it and from the standby into `<archive>.salvage` (which `restore_command`
   reads after the archive), rename the staged directory into place.
4. **start_postgres**; **gate_recovery_target_reached** opens when the server is paused at
   the target (`recovery_target_action = pause`) or, for `latest` (standby mode), has
   replayed everything the archive and the salvage folder hold. A server that dies fails
   the gate at once, quoting its FATAL line.
5. **validate_recovered** on the server still in recovery, read-only (FK orphans, duplicate
   PKs, business rules, `pg_amcheck` where the amcheck extension is installed).
6. **promote** - `pg_promote(wait => true)`, then the recovery settings are removed.
7. **start_services**, gates on service health and functional checks.
8. **reseed_replica** - unless the standby already streams from the recovered primary: its
   WAL salvaged, moved aside (`<dir>.pre_<incident>`), re-seeded, started, waited for.
9. **measure_data_loss** from the canary, **record** to the ledger, **notify**, **verdict**.

**Where each step runs** (a plan with `hosts`, CeleryExecutor): the guard, the data
directory steps, the recovery gate, promote and the data-loss measurement on the cluster's
host; stop/start services and the functional checks (their sample files) on the
application host; the re-seed on the replica's host; the health gate, validation and the
record/notify tail on the default queue.

**Killed mid-way?** Re-run with the same `incident_id` (and `incident_started_at`): every
step checks the actual state first and does only what is missing - no second outage, one
kept copy per data directory per incident.

Target types: `latest`, `time` (ISO 8601 with zone), `lsn` (e.g. `0/5A000028`),
`restore_point` (a name created with `pg_create_restore_point`), `immediate` (end of the
base backup).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from airflow.sdk import Param, dag

from tracktion_dr.airflow import steps
from tracktion_dr.airflow.dag_kit import (
    RtoGate,
    open_incident,
    scenario_tail,
    take_exclusivity,
)
from tracktion_dr.airflow.gate_triggers import named_check
from tracktion_dr.airflow.support import DEFAULT_ARGS, common_params
from tracktion_dr.core.plan import load_plan
from tracktion_dr.postgres.pitr import TARGET_TYPES

log = logging.getLogger(__name__)

PLAN = load_plan()
CLUSTERS = sorted({name for env in PLAN.environments.values() for name in env.clusters})


def _cluster(run: dict):
    return PLAN.environment(run["environment"]).clusters[run["cluster"]]


def _admin(run: dict):
    from tracktion_dr.airflow.support import endpoint

    return endpoint(_cluster(run).conn_id)


def _record_fields(run: dict, context) -> dict:
    from tracktion_dr.scenarios.database import kept_copies

    measured = context["ti"].xcom_pull(task_ids="measure_data_loss") or {}
    loss = measured.get("data_loss") or {}
    return {
        "rto_target_seconds": run["rto_seconds"],
        "rpo_target_seconds": run["rpo_seconds"],
        "data_loss_seconds": loss.get("seconds"),
        "backup_used": run["base_backup"]["id"],
        "details": {
            "cluster": run["cluster"],
            "target": run["target"],
            "window": run["window"],
            "data_loss": loss,
            "last_replayed_commit": measured.get("last_replayed_commit"),
            "kept_copies": kept_copies(run),
            "salvage_dir": run["salvage_dir"],
            "resumed": run["resuming"] is not None,
        },
    }


# The steps, each written once through the kit; the DAG below only wires them.


@steps.guard(host="database_primary")
def guard(**context) -> dict:
    from tracktion_dr.scenarios.database import guard_pitr, salvage_current_wal

    incident = open_incident(context, PLAN)
    pitr_plan = guard_pitr(PLAN, incident, context["params"])
    steps.print_plan_of_actions(
        incident,
        pitr_plan["actions"],
        "recoverable window: "
        + (pitr_plan["window_text"] or "(resuming: checked when the target was laid down)"),
    )
    if incident["dry_run"]:
        return {**incident, **pitr_plan}
    resources = [f"cluster:{pitr_plan['cluster']}"]
    resources += [f"database:{d}" for d in pitr_plan["databases"]]
    exclusivity = take_exclusivity(context, incident, resources)
    # Every refusal is behind us: the one side effect of the guard comes last.
    if pitr_plan["resuming"] is None:
        log.info(salvage_current_wal(_admin({**incident, **pitr_plan})))
    return {**incident, **pitr_plan, **exclusivity}


@steps.step("destructive", host="application")
def stop_services(run: dict, **context) -> dict | str:
    from tracktion_dr.airflow.support import controller
    from tracktion_dr.scenarios.database import recovered_primary
    from tracktion_dr.scenarios.database import stop_services as stop

    if recovered_primary(_cluster(run), run):
        return {
            "status": "skipped",
            "detail": "the cluster is already this incident's recovered primary: services stay up",
        }
    return stop(PLAN.environment(run["environment"]), run["services"], controller)


@steps.step("destructive", host="database_primary")
def stage_recovery(run: dict, **context) -> str:
    from tracktion_dr.scenarios.database import catalog_for
    from tracktion_dr.scenarios.database import stage_recovery as stage

    cluster = _cluster(run)
    # s3:// backups: the chosen base backup is downloaded into the mirror first.
    return stage(cluster, run, catalog_for(PLAN.environment(run["environment"]), cluster))


@steps.step("destructive", host="database_primary")
def prepare_data_directory(run: dict, **context) -> str:
    from tracktion_dr.scenarios.database import prepare_data_directory as prepare

    return prepare(_cluster(run), run)


@steps.step("destructive", host="database_primary")
def start_postgres(run: dict, **context) -> str:
    from tracktion_dr.scenarios.database import start_recovery_server

    return start_recovery_server(_cluster(run), run)


@steps.step("check", skip_in_dry_run=True)
def validate_recovered(run: dict, **context) -> dict:
    from tracktion_dr.core.errors import ValidationFailed
    from tracktion_dr.scenarios.database import validate_recovered as validate

    reports = validate(_admin(run), run["databases"], Path(_cluster(run).bin_dir))
    problems = [p for report in reports for p in report["problems"]]
    if problems:
        raise ValidationFailed(
            "the recovered cluster failed validation (it stays paused, not promoted): "
            + "; ".join(problems[:8])
        )
    checks = "; ".join(f"{r['database']}: {r['checks'].get('pg_amcheck')}" for r in reports)
    return {"detail": checks or "no databases", "reports": reports}


@steps.step("destructive", host="database_primary")
def promote(run: dict, **context) -> str:
    from tracktion_dr.scenarios.database import promote_recovered

    return promote_recovered(_cluster(run), run, _admin(run))


@steps.step("destructive", after_all=True, host="application")
def start_services(run: dict, **context) -> dict | str:
    """Runs whatever happened after stop_services: services must not stay down because
    a later step failed (their health gates then tell the truth)."""
    from tracktion_dr.airflow.support import controller
    from tracktion_dr.scenarios.database import start_services as start

    if context["ti"].xcom_pull(task_ids="stop_services") is None:
        return {"status": "skipped", "detail": "nothing was stopped"}
    return start(PLAN.environment(run["environment"]), run["services"], controller)


@steps.step("destructive", milestone="redundancy", after_all=True, host="database_replica")
def reseed_replica(run: dict, **context) -> dict | str:
    """After the service gates, whatever they found: a standby brings redundancy back,
    not service (recorded as "redundancy restored", outside the RTO)."""
    from tracktion_dr.airflow.support import reseed_standby

    if context["ti"].xcom_pull(task_ids="promote") is None:
        return {
            "status": "skipped",
            "detail": "the primary was not recovered: nothing to follow",
        }
    cluster = _cluster(run)
    if not (
        cluster.replica_data_directory and cluster.replica_conn_id and cluster.replication_conn_id
    ):
        return {
            "status": "skipped",
            "detail": "the plan names no replica: if one exists it follows the old timeline "
            "and MUST be re-seeded by hand",
        }
    return reseed_standby(cluster, run)


@steps.step("check", skip_in_dry_run=True, after_all=True, host="database_primary")
def measure_data_loss(run: dict, **context) -> dict:
    """Once the primary is recovered, whatever the gates found."""
    from tracktion_dr.postgres.measure import canary_data_loss
    from tracktion_dr.postgres.pitr import last_replayed_commit
    from tracktion_dr.scenarios.database import recovery_log_file

    if context["ti"].xcom_pull(task_ids="promote") is None:
        return {
            "status": "skipped",
            "detail": "the primary was not recovered",
            "data_loss": None,
        }

    log_file = recovery_log_file(_cluster(run), run["tag"])
    replayed = last_replayed_commit(log_file.read_text()) if log_file.exists() else None
    fallback = datetime.fromisoformat(replayed.replace(" UTC", "+00:00")) if replayed else None
    losses = [
        canary_data_loss(
            _admin(run).conninfo(name),
            datetime.fromisoformat(run["started_at"]),
            fallback=fallback,
            fallback_method="last replayed transaction",
        )
        for name in run["databases"]
    ]
    worst = max(losses, key=lambda loss: loss.seconds or 0) if losses else None
    return {
        "detail": worst.describe() if worst else "no databases",
        "data_loss": worst.as_dict() if worst else None,
        "last_replayed_commit": replayed,
    }


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
    run = guard()
    # The copy and its verification are built beside the live cluster while services stop.
    staged = stage_recovery(run)
    stopped = stop_services(run)
    prepared = prepare_data_directory(run)
    started_pg = start_postgres(run)
    [staged, stopped] >> prepared >> started_pg
    gate_target = RtoGate(
        task_id="gate_recovery_target_reached",
        check=named_check("recovery_target_reached"),
        incident=run,
        plan=PLAN,
        # it reads the postmaster's pid file and log on the cluster's host
        **steps.on_host("database_primary"),
    )
    validated = validate_recovered(run)
    promoted = promote(run)
    services_started = start_services()
    started_pg >> gate_target >> validated >> promoted >> services_started
    gate_services = RtoGate(
        task_id="gate_services_healthy",
        check=named_check("services_healthy"),
        incident=run,
        plan=PLAN,
    )
    gate_functional = RtoGate(
        task_id="gate_functional_checks",
        check=named_check("functional_checks_pass"),
        incident=run,
        plan=PLAN,
        # a functional check uploads its sample file, which lives on the application host
        **steps.on_host("application"),
    )
    [promoted, services_started] >> gate_services >> gate_functional
    # Service first: the standby and the bookkeeping come after the service gates.
    loss = measure_data_loss()
    reseeded = reseed_replica()
    gate_functional >> loss >> reseeded
    scenario_tail(PLAN, run, [reseeded], record_fields=_record_fields, exclusive=True)


dr_database_pitr()
