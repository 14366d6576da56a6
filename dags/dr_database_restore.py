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
2. **stop_services** — the services that depend on the database (from the plan), while
3. **restore_beside** — `pg_restore -j N` into `<db>_restore_<incident>` — runs at the same
   time: it touches nothing live (in `in_place` mode it stops the services itself first).
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

log = logging.getLogger(__name__)

PLAN = load_plan()
DATABASES = sorted({name for env in PLAN.environments.values() for name in env.databases})


def _target(run: dict):
    from tracktion_dr.scenarios.database import database_target

    return database_target(PLAN.environment(run["environment"]), run["database"])


def _admin(run: dict):
    from tracktion_dr.airflow.support import endpoint

    cluster = _target(run).cluster
    return endpoint(cluster.conn_id), Path(cluster.bin_dir)


def _record_fields(run: dict, context) -> dict:
    pulled = context["ti"].xcom_pull
    measured = pulled(task_ids="measure_data_loss") or {}
    loss = measured.get("data_loss") or {}
    return {
        "rto_target_seconds": run["rto_seconds"],
        "rpo_target_seconds": run["rpo_seconds"],
        "data_loss_seconds": loss.get("seconds"),
        "backup_used": run["backup"]["id"],
        "details": {
            "database": run["database"],
            "mode": run["mode"],
            "kept_as": (pulled(task_ids="swap") or {}).get("kept_as"),
            "data_loss": loss,
            "set_aside": measured.get("set_aside"),
            "state_at_guard": run.get("state"),
            "dropped_incomplete": (pulled(task_ids="restore_beside") or {}).get("dropped"),
        },
    }


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
    @steps.guard(host="backups")  # reads the dumps
    def guard(**context) -> dict:
        from tracktion_dr.airflow.support import endpoint
        from tracktion_dr.scenarios.database import guard_restore

        incident = open_incident(context, PLAN)
        restore_plan = guard_restore(PLAN, incident, context["params"], endpoint)
        steps.print_plan_of_actions(incident, restore_plan["actions"])
        if restore_plan["resume"]:
            log.info("resuming incident %s: %s", incident["incident_id"], restore_plan["resume"])
        resources = [f"database:{restore_plan['database']}", f"cluster:{restore_plan['cluster']}"]
        exclusivity = {} if incident["dry_run"] else take_exclusivity(context, incident, resources)
        return {**incident, **restore_plan, **exclusivity}

    @steps.step("destructive", host="application")
    def stop_services(run: dict, **context) -> dict:
        from tracktion_dr.airflow.support import controller
        from tracktion_dr.scenarios.database import stop_services_for_restore

        environment = PLAN.environment(run["environment"])
        return stop_services_for_restore(_admin(run)[0], run, environment, controller)

    @steps.step("destructive", host="backups")  # pg_restore reads the dump there
    def restore_beside(run: dict, **context) -> dict:
        from tracktion_dr.airflow.support import controller
        from tracktion_dr.scenarios.database import restore_step, stop_services_for_restore

        admin, bindir = _admin(run)
        environment = PLAN.environment(run["environment"])
        return restore_step(
            admin,
            run,
            bindir,
            stop_dependents=lambda: stop_services_for_restore(admin, run, environment, controller),
        )

    @steps.step("check", skip_in_dry_run=True, host="backups")  # the dump's manifest
    def validate_restored(run: dict, **context) -> dict:
        from tracktion_dr.scenarios.database import validate_restored as validate

        admin, bindir = _admin(run)
        return validate(admin, run, bindir)

    @steps.step("destructive")
    def swap(run: dict, **context) -> dict:
        from tracktion_dr.scenarios.database import swap_step

        return swap_step(_admin(run)[0], run)

    @steps.step("destructive", after_all=True, host="application")
    def start_services(run: dict, **context) -> dict | str:
        """Runs even when a step after stop_services failed: the services go back up (on
        the old database if nothing was swapped) - a failed recovery must not leave
        things worse than it found them."""
        from tracktion_dr.airflow.support import controller
        from tracktion_dr.scenarios.database import start_services as start

        if context["ti"].xcom_pull(task_ids="stop_services") is None:
            return {"status": "skipped", "detail": "nothing was stopped"}
        return start(PLAN.environment(run["environment"]), run["services"], controller)

    @steps.step("check", after_all=True, skip_in_dry_run=True)
    def measure_data_loss(run: dict, **context) -> dict:
        """Runs whenever the run got that far, even if a gate failed: once the swap has
        happened, what it set aside is reported whatever else went wrong."""
        from tracktion_dr.scenarios.database import measure_restore_loss

        return measure_restore_loss(_admin(run)[0], run)

    run = guard()
    stopped = stop_services(run)
    restored = restore_beside(run)
    validated = validate_restored(run)
    swapped = swap(run)
    started = start_services()
    # Side by side, the restore touches nothing live: it runs while the services stop.
    [stopped, validated] >> swapped
    restored >> validated
    swapped >> started
    gate_database = RtoGate(
        task_id="gate_database_accepts",
        check=named_check("restored_database_accepts"),
        incident=run,
        plan=PLAN,
    )
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
    swapped >> gate_database
    [swapped, started] >> gate_services
    [gate_database, gate_services] >> gate_functional
    loss = measure_data_loss()
    gate_functional >> loss
    scenario_tail(PLAN, run, [loss], record_fields=_record_fields, exclusive=True)


dr_database_restore()
