"""
### DR configuration recovery

Puts a known-good application configuration back after a bad push or a lost disk, and
**rolls back automatically** when the result does not work. Replaces the seed's
`recover_application_config.sh` (which deleted the live configuration before the backup
was proven good, and whose rollback could never run under `set -e`).

**Flow**
1. `guard`: inputs checked, snapshot picked from the plan's `backups.configuration`
   (`latest`, a day `YYYY-MM-DD`, or a snapshot name); nothing touched.
2. `safety_snapshot`: the live configuration (and environment file) archived first, under
   `safety/` in the same location.
3. `restore`: the snapshot is extracted **beside** the live folders, the plan's file modes
   (the seed's 640 for `*.conf`, 644 for `*.json`) and owner applied, and **every JSON and
   YAML file parsed and every mode/owner checked there**: a bad snapshot is refused before
   anything live changes. Then the live folder is moved aside (`<dir>.before-<incident>`,
   kept) and the restored one renamed into place. Environment variables from the snapshot
   are restored only for the plan's `config_env_prefixes`, into `config_env_file` (0600),
   and never logged.
4. `validate_live` → `restart_services` (every application service, dependency order) →
   `gate_services` (health + functional check within the strictest tier's RTO).
5. `rollback` runs when any step after the safety snapshot fails. It compares the live
   configuration and environment file with the safety snapshot's record; if anything
   differs it puts back **exactly** what was there before the run (every file's bytes,
   mode and owner; the environment file byte for byte, or moved aside when there was
   none), checks the result against the record, and restarts the services. The run is
   then **failed**, saying why.

**Params**: `snapshot`, `restart_services`, `confirm` (type `RESTORE configuration` where
the environment demands confirmation), plus the common params (`dry_run` extracts and
validates the snapshot in a temporary folder and touches nothing live).
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Param, dag

from tracktion_dr.airflow import steps
from tracktion_dr.airflow.access import ACCESS
from tracktion_dr.airflow.dag_kit import RtoGate, open_incident, scenario_tail
from tracktion_dr.airflow.gate_triggers import named_check
from tracktion_dr.airflow.support import DEFAULT_ARGS, common_params
from tracktion_dr.core.plan import load_plan
from tracktion_dr.notify.runs import notify_started
from tracktion_dr.scenarios import config

PLAN = load_plan()
DAG_ID = "dr_config_recovery"
RTO_SECONDS = config.rto_seconds(PLAN)
# A failed step is answered by the exact rollback (it waits for a *failed* upstream), not
# by a retry: these steps fail once and hand over to it.
NO_RETRY = {"retries": 0}
FILES_HOST = config.FILES_HOST  # the configuration files and snapshots live there


def record_fields(run: dict, context) -> dict:
    rollback = context["ti"].xcom_pull(task_ids="rollback")
    return config.record_fields(run, rollback, rto_target_seconds=RTO_SECONDS)


@dag(
    dag_id=DAG_ID,
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "scenario", "configuration"],
    default_args=DEFAULT_ARGS,
    params={
        **common_params(PLAN, environment_default=None),
        "snapshot": Param(
            "latest",
            type="string",
            title="Configuration snapshot",
            description="'latest', a day (YYYY-MM-DD: the newest of that day) or a snapshot "
            "file name from the plan's backups.configuration.",
            section="Recovery",
        ),
        "restart_services": Param(
            True,
            type="boolean",
            title="Restart services",
            description="Restart every application service after the restore so it reads "
            "the restored configuration (then gate on their health).",
            section="Recovery",
        ),
        "confirm": Param(
            "",
            type="string",
            title="Confirmation",
            description="Where the environment demands it: type RESTORE configuration.",
            section="Recovery",
        ),
    },
    doc_md=__doc__,
)
def dr_config_recovery():
    @steps.guard(host=FILES_HOST)  # it picks the snapshot from the local backups
    def guard(**context) -> dict:
        run = config.check_inputs(PLAN, open_incident(context, PLAN), context["params"])
        steps.print_plan_of_actions(run, config.plan_of_actions(run))
        notify_started(PLAN, run, DAG_ID, config.started_summary(run))
        return run

    @steps.step("destructive", host=FILES_HOST, **NO_RETRY)
    def safety_snapshot(run: dict, **context) -> dict:
        return config.take_safety(PLAN, run)

    @steps.step("destructive", skip_in_dry_run=False, host=FILES_HOST, **NO_RETRY)
    def restore(run: dict, safety: dict, **context) -> dict:
        """A dry run extracts and validates the snapshot in a temporary folder."""
        return config.restore(PLAN, run)

    @steps.step("check", skip_in_dry_run=True, host=FILES_HOST, **NO_RETRY)
    def validate_live(run: dict, **context) -> str:
        return config.validate_live(PLAN, run)

    @steps.step("destructive", host=config.restart_host(PLAN), **NO_RETRY)
    def restart_services(run: dict, **context) -> dict:
        return config.restart_services(PLAN, run, ACCESS)

    @steps.step(
        "destructive", after_all=True, trigger_rule="one_failed", host=FILES_HOST, **NO_RETRY
    )
    def rollback(run: dict, **context) -> dict:
        """Runs when any step after the safety snapshot failed (or the gate breached)."""
        pulled = context["ti"].xcom_pull
        safety, restored = pulled(task_ids="safety_snapshot"), pulled(task_ids="restore")
        return config.roll_back(PLAN, run, safety, restored, ACCESS)

    run = guard()
    restored = restore(run, safety_snapshot(run))
    validated = validate_live(run)
    restarted = restart_services(run)
    gate = RtoGate(
        task_id="gate_services",
        check=named_check("config_services_back"),
        incident=run,
        plan=PLAN,
        rto_seconds=RTO_SECONDS,
        **steps.on_host(config.gate_host(PLAN)),
    )
    restored >> validated >> restarted >> gate
    undo = rollback()
    [restored, validated, restarted, gate] >> undo
    scenario_tail(PLAN, run, [gate, undo], record_fields=record_fields)


dr_config_recovery()
