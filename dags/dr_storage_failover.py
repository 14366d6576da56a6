"""
### DR storage failover

Switches a storage area's services to the area's **backup location** when its primary
storage is lost or unusable (`direction: failover`), and back again (`failback`) - the
plan's scenario 4. The plan gives the area `backup_location` (a `file://` path on other
storage) and `path_setting` (`<file>:<dotted.key>` in the services' configuration that
holds the area's path, e.g. `app.json:storage.audio_files`).

**Flow**
1. `guard`: the area (it must have a backup location), the direction, the confirmation
   where the environment demands it (`RESTORE storage <area>`); nothing touched. Prints
   the plan of actions.
2. `safety_snapshot`: the live configuration archived first (`dr_config_recovery`'s
   safety snapshot, under `safety/` in `backups.configuration`).
3. `bring_up_to_date`: failover - every file the backup location lacks (or holds corrupt)
   is copied from the **freshest verified copy** (the sync mirror when newer and intact,
   else the snapshot; a damaged copy is never used); failback - every file written on the
   backup location while failed over (missing on the primary, or newer there) is copied
   back, the primary's older copy moved to `.dr-quarantine/<incident>/`. Nothing deleted.
4. `repoint`: `path_setting` set to the new path (nothing when it already says so).
5. `restart_services`: the services whose `depends_on` names the area, unless their
   `/health` already reports the new path (a re-run converges without a second outage).
6. `gate_services`: those services healthy, their functional checks passing and, where
   `/health` names its paths, on the new path - within the strictest tier's RTO.
7. `rollback` runs when any step after the safety snapshot fails: the configuration put
   back exactly as the safety snapshot recorded, the services restarted; the run fails.

Idempotent: a re-run (or a retry) copies only what is still missing, changes the setting
only when it differs, and restarts only services not yet on the new path.

**Params**: `area`, `direction` (`failover` | `failback`), `confirm`, plus the common
params (`dry_run` lists what would be copied and changed, touches nothing).

Not done here: while failed over, `dr_backup_storage_sync` still mirrors the primary path;
fail back (or restore the primary with `dr_storage_recovery`) before relying on the sync.
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
from tracktion_dr.scenarios import config, storage, storage_failover

PLAN = load_plan()
DAG_ID = "dr_storage_failover"
RTO_SECONDS = storage_failover.rto_seconds(PLAN)
# A failed step is answered by the exact rollback (it waits for a *failed* upstream).
NO_RETRY = {"retries": 0}
# The configuration (path setting, safety snapshot) is the application host's; the files
# are copied on the storage host (the same host in the compose plan).
FILES_HOST = config.FILES_HOST
AREAS = sorted(
    {a for env in PLAN.environments.values() for a in storage_failover.failover_areas(env)}
)


def record_fields(run: dict, context) -> dict:
    rollback = context["ti"].xcom_pull(task_ids="rollback")
    return storage_failover.record_fields(run, rollback, rto_target_seconds=RTO_SECONDS)


@dag(
    dag_id=DAG_ID,
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "scenario", "storage", "failover"],
    default_args=DEFAULT_ARGS,
    params={
        **common_params(PLAN, environment_default=None),
        "area": Param(
            type="string",
            enum=AREAS or [""],
            title="Storage area",
            description="The plan's storage area to switch (areas with a backup_location).",
            section="Failover",
        ),
        "direction": Param(
            "failover",
            type="string",
            enum=["failover", "failback"],
            title="Direction",
            description="failover: to the backup location; failback: back to the primary path.",
            section="Failover",
        ),
        "confirm": Param(
            "",
            type="string",
            title="Confirmation",
            description="Where the environment demands it: type RESTORE storage <area>.",
            section="Failover",
        ),
    },
    doc_md=__doc__,
)
def dr_storage_failover():
    @steps.guard(host=FILES_HOST)  # reads the path setting from the services' configuration
    def guard(**context) -> dict:
        run = storage_failover.check_inputs(PLAN, open_incident(context, PLAN), context["params"])
        steps.print_plan_of_actions(run, storage_failover.plan_of_actions(run))
        notify_started(PLAN, run, DAG_ID, storage_failover.started_summary(run))
        return run

    @steps.step("destructive", host=FILES_HOST, **NO_RETRY)
    def safety_snapshot(run: dict, **context) -> dict:
        return config.take_safety(PLAN, run)

    @steps.step("destructive", skip_in_dry_run=False, host=storage.HOST, **NO_RETRY)
    def bring_up_to_date(run: dict, safety: dict, **context) -> dict:
        """A dry run lists what would be copied."""
        return storage_failover.bring_up_to_date(PLAN, run)

    @steps.step("destructive", host=FILES_HOST, **NO_RETRY)
    def repoint(run: dict, **context) -> dict:
        return storage_failover.repoint(run)

    @steps.step("destructive", host=config.restart_host(PLAN), **NO_RETRY)
    def restart_services(run: dict, **context) -> dict:
        return storage_failover.restart_services(PLAN, run, ACCESS)

    @steps.step(
        "destructive", after_all=True, trigger_rule="one_failed", host=FILES_HOST, **NO_RETRY
    )
    def rollback(run: dict, **context) -> dict:
        """Runs when any step after the safety snapshot failed (or the gate breached)."""
        pulled = context["ti"].xcom_pull
        safety, pointed = pulled(task_ids="safety_snapshot"), pulled(task_ids="repoint")
        return config.roll_back(PLAN, {**run, "restart": True}, safety, pointed, ACCESS)

    run = guard()
    filled = bring_up_to_date(run, safety_snapshot(run))
    pointed = repoint(run)
    restarted = restart_services(run)
    gate = RtoGate(
        task_id="gate_services",
        check=named_check("storage_failover_serving"),
        incident=run,
        plan=PLAN,
        rto_seconds=RTO_SECONDS,
        **steps.on_host(config.gate_host(PLAN)),  # functional checks read a sample file
    )
    filled >> pointed >> restarted >> gate
    undo = rollback()
    [filled, pointed, restarted, gate] >> undo
    scenario_tail(PLAN, run, [gate, undo], record_fields=record_fields)


dr_storage_failover()
