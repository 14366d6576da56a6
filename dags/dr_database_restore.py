"""
### DR database restore (full restore from a logical dump)

The seed's "full" database recovery, made safe: **restore beside, validate, then swap.**
The live database is never dropped; it is kept as `<db>_pre_<incident>`, with every row
written after the dump (the run reports how many, per table).

1. **guard** — checks everything before touching anything: the database is in the plan,
   the typed confirmation (`RESTORE <database>`) on production, the backup exists and
   verifies *now* (size, sha256, table of contents), enough disk, and no other destructive
   run holds the database. It reads how far this incident already got (see *Re-runs*) and
   refuses a **new** incident on a database that already is the restore of the same dump
   (`AlreadyRecovered`: that would be a second outage). A dry run stops here after printing
   every action.
2. **stop_services** — the services that depend on the database (from the plan).
3. **restore_beside** — `pg_restore -j N` into `<db>_restore_<incident>`.
4. **validate_restored** — table set vs the dump's table of contents, row counts vs the
   manifest, foreign-key orphans (anti-join), duplicate primary keys, the seed's business
   rules, `pg_amcheck`. Any failure stops here: nothing swapped.
5. **swap** — sessions ended, then `<db>` → `<db>_pre_<incident>`, restored → `<db>`.
6. **start_services**, then the **RTO gates** (database accepts connections, services
   healthy, functional checks) — each waits only for what is left of the tier's RTO.
7. **measure_data_loss** — time lost from the canary, and "N rows in T tables written after
   the dump are kept in `<db>_pre_<incident>`"; **record** to the ledger, **notify**,
   **verdict**.

`mode=in_place` renames the live database aside *first* (clients see no database at all
during the restore, never two), restores and validates under the scratch name, then renames
it in; if validation fails the original is put back.

**Re-runs.** The scratch copy carries a marker (`COMMENT ON DATABASE`: incident, dump,
`restoring` → `restored` → `validated`) that follows it through the swap. Every step reads
the actual state and does only what is missing, so if the worker dies anywhere, **trigger
again with the same `incident_id` and `incident_started_at`** - no manual step: a copy left
half-restored is dropped and restored again (it was never live; every row of it is in the
dump, verified again by the guard), a swap stopped between its two renames is finished,
and after the swap only the services, gates, measurement and record run (the services are
not stopped again). The re-run takes over its own incident's locks and uses the same dump.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from airflow.sdk import Param, dag, task

from tracktion_dr.dag_kit import (
    RtoGate,
    now_iso,
    publish_task,
    raise_for_outcome,
    record_timeline,
    refusing_bad_input,
    release_exclusivity,
    step_event,
    take_exclusivity,
)
from tracktion_dr.dag_support import DEFAULT_ARGS, common_params
from tracktion_dr.plan import load_plan

log = logging.getLogger(__name__)

PLAN = load_plan()
DATABASES = sorted({name for env in PLAN.environments.values() for name in env.databases})


@dag(
    dag_id="dr_database_restore",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "scenario", "database"],
    default_args=DEFAULT_ARGS,
    params={
        "database": Param(
            type="string",
            enum=DATABASES,
            title="Database",
            description="The database to restore (from the DR plan).",
            section="Restore",
        ),
        "backup": Param(
            "latest",
            type="string",
            title="Backup",
            description="'latest' (newest dump that verifies now) or a dump id such as tracktion_20261126T012107Z.dump.",
            section="Restore",
        ),
        "mode": Param(
            "side_by_side",
            type="string",
            enum=["side_by_side", "in_place"],
            title="Mode",
            description="side_by_side: restore beside the live database, validate, then swap by rename. "
            "in_place: rename the live database aside first, restore under its name.",
            section="Restore",
        ),
        "jobs": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=64,
            title="Parallel jobs",
            description="pg_restore -j N. Empty: the plan's restore_jobs for the database.",
            section="Restore",
        ),
        "confirm": Param(
            "",
            type="string",
            title="Confirmation",
            description="Type RESTORE <database> (e.g. RESTORE tracktion). Required in production.",
            section="Restore",
        ),
        **common_params(PLAN, environment_default=None),
    },
    doc_md=__doc__,
)
def dr_database_restore():
    @task
    def guard(**context) -> dict:
        from tracktion_dr.dag_kit import open_incident
        from tracktion_dr.dag_support import endpoint
        from tracktion_dr.database_recovery import guard_restore

        incident = open_incident(context, PLAN)
        with refusing_bad_input():
            restore_plan = guard_restore(PLAN, incident, context["params"], endpoint)
        log.info(
            "plan of actions%s:\n%s",
            " (DRY RUN)" if incident["dry_run"] else "",
            "\n".join(f"  {i}. {a}" for i, a in enumerate(restore_plan["actions"], 1)),
        )
        if restore_plan["resume"]:
            log.info("resuming incident %s: %s", incident["incident_id"], restore_plan["resume"])
        exclusivity: dict = {}
        if not incident["dry_run"]:
            with refusing_bad_input():
                exclusivity = take_exclusivity(
                    context,
                    incident,
                    [f"database:{restore_plan['database']}", f"cluster:{restore_plan['cluster']}"],
                )
        return {
            **incident,
            **restore_plan,
            "rto_seconds": restore_plan["rto_seconds"],
            **exclusivity,
        }

    def admin_for(run: dict):
        from tracktion_dr.dag_support import endpoint
        from tracktion_dr.database_recovery import database_target

        target = database_target(PLAN.environment(run["environment"]), run["database"])
        return endpoint(target.cluster.conn_id), Path(target.cluster.bin_dir)

    def event_of(name: str, started: str, outcome: dict) -> dict:
        return step_event(name, started, outcome["status"], outcome["detail"])

    @task
    def stop_services(run: dict) -> dict:
        from tracktion_dr.dag_support import controller
        from tracktion_dr.database_recovery import stop_services_for_restore

        started = now_iso()
        if run["dry_run"]:
            return {"event": step_event("stop_services", started, "skipped", "dry run")}
        admin, _ = admin_for(run)
        outcome = stop_services_for_restore(
            admin, run, PLAN.environment(run["environment"]), controller
        )
        return {"event": event_of("stop_services", started, outcome)}

    @task
    def restore_beside(run: dict) -> dict:
        from tracktion_dr.database_recovery import restore_step

        started = now_iso()
        if run["dry_run"]:
            return {"event": step_event("restore_beside", started, "skipped", "dry run")}
        admin, bindir = admin_for(run)
        outcome = restore_step(admin, run, bindir)
        return {
            "event": event_of("restore_beside", started, outcome),
            "dropped": outcome.get("dropped"),
        }

    @task
    def validate_restored(run: dict) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from tracktion_dr.database_recovery import validate_restored as validate
        from tracktion_dr.errors import ValidationFailed

        started = now_iso()
        if run["dry_run"]:
            return {"event": step_event("validate_restored", started, "skipped", "dry run")}
        admin, bindir = admin_for(run)
        try:
            outcome = validate(admin, run, bindir)
        except ValidationFailed as exc:
            # The same copy fails the same checks again: not retried.
            raise AirflowFailException(str(exc)) from None
        return {
            "event": event_of("validate_restored", started, outcome),
            "report": outcome["report"],
        }

    @task
    def swap(run: dict) -> dict:
        from tracktion_dr.database_recovery import swap_step

        started = now_iso()
        if run["dry_run"]:
            return {"event": step_event("swap", started, "skipped", "dry run"), "kept_as": None}
        admin, _ = admin_for(run)
        outcome = swap_step(admin, run)
        return {"event": event_of("swap", started, outcome), "kept_as": outcome["kept_as"]}

    @task(trigger_rule="all_done")
    def start_services(**context) -> dict:
        """Runs even when a step after stop_services failed: the services go back up (on
        the old database if nothing was swapped) - a failed recovery must not leave
        things worse than it found them."""
        from tracktion_dr.dag_support import controller
        from tracktion_dr.database_recovery import start_services as start

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

    def database_accepts(run: dict) -> tuple[bool, str]:
        from tracktion_dr.dag_support import endpoint
        from tracktion_dr.database_recovery import database_target
        from tracktion_dr.probes import ProbeFailure, postgres_ready

        target = database_target(PLAN.environment(run["environment"]), run["database"])
        try:
            return True, postgres_ready(
                endpoint(target.cluster.conn_id).conninfo(run["database_name"])
            )(5)
        except ProbeFailure as exc:
            return False, str(exc)

    def services_healthy(run: dict) -> tuple[bool, str]:
        from tracktion_dr.checks import service_health

        return service_health(PLAN.environment(run["environment"]), run["services"])

    def functional(run: dict) -> tuple[bool, str]:
        from tracktion_dr.checks import functional_checks

        return functional_checks(PLAN.environment(run["environment"]), run["services"])

    @task(trigger_rule="all_done")
    def measure_data_loss(**context) -> dict:
        """Runs whenever the run got that far, even if a gate failed: once the swap has
        happened, what it set aside is reported whatever else went wrong."""
        from tracktion_dr.database_recovery import measure_restore_loss

        started = now_iso()
        run = context["ti"].xcom_pull(task_ids="guard")
        if run is None or run["dry_run"]:
            why = "dry run" if run else "the guard refused: nothing was done"
            return {
                "event": step_event("measure_data_loss", started, "skipped", why),
                "data_loss": None,
                "set_aside": None,
            }
        admin, _ = admin_for(run)
        measured = measure_restore_loss(admin, run)
        return {
            "event": event_of("measure_data_loss", started, measured),
            "data_loss": measured["data_loss"],
            "set_aside": measured["set_aside"],
        }

    @task(trigger_rule="all_done", retries=0)
    def record(**context) -> dict:

        run = context["ti"].xcom_pull(task_ids="guard")
        if run is None:  # the guard refused: nothing was touched, nothing to record
            return {"outcome": "failed", "details": {"failed_tasks": ["guard"]}, "refused": True}
        measured = context["ti"].xcom_pull(task_ids="measure_data_loss") or {}
        loss = measured.get("data_loss") or {}
        swapped = context["ti"].xcom_pull(task_ids="swap") or {}
        timeline = record_timeline(
            context,
            incident=run,
            rto_target_seconds=run["rto_seconds"],
            rpo_target_seconds=run["rpo_seconds"],
            data_loss_seconds=loss.get("seconds"),
            backup_used=run["backup"]["id"],
            details={
                "database": run["database"],
                "mode": run["mode"],
                "kept_as": swapped.get("kept_as"),
                "data_loss": loss,
                "set_aside": measured.get("set_aside"),
                "state_at_guard": run.get("state"),
                "dropped_incomplete": (
                    context["ti"].xcom_pull(task_ids="restore_beside") or {}
                ).get("dropped"),
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
    restored = restore_beside(run)
    validated = validate_restored(run)
    swapped = swap(run)
    started = start_services()
    stopped >> restored >> validated >> swapped >> started
    gate_database = RtoGate(
        task_id="gate_database_accepts", check=database_accepts, incident=run, plan=PLAN
    )
    gate_services = RtoGate(
        task_id="gate_services_healthy", check=services_healthy, incident=run, plan=PLAN
    )
    gate_functional = RtoGate(
        task_id="gate_functional_checks", check=functional, incident=run, plan=PLAN
    )
    swapped >> gate_database
    [swapped, started] >> gate_services
    [gate_database, gate_services] >> gate_functional
    loss = measure_data_loss()
    gate_functional >> loss
    timeline = record()
    loss >> timeline
    notify_outcome(timeline)
    publish_task(PLAN, timeline) >> verdict(timeline)


dr_database_restore()
