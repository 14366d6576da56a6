"""
### DR storage recovery

Restores lost or damaged audio files and uploads from the plan's storage backups and proves
the file system is sound again. Replaces the seed's `verify_file_integrity.sh`, done right:

- **expected directories**: every storage area of the plan exists, with the plan's mode and
  owner (reported; a missing directory is recreated with them);
- **audio checked by content**: every file of an `audio: true` area is parsed by mutagen
  (the parser analysis-service uses); a file is sound when its bytes are a recognised audio
  format with a duration, whatever its extension says;
- **counts that are counted** (in this process, not in a subshell), and a report listing
  missing and corrupted files per area;
- **repair**: missing and corrupted files are restored from the freshest good copy (corrupt
  files are moved to `.dr-quarantine/<incident>/`, never deleted), each restored file
  checked against its copy's sha256; then the check runs again as the RTO gate.

**Flow**: `guard` (copies picked: the snapshot - `latest`, a day `YYYY-MM-DD`, or a name -
and the areas' sync mirrors; nothing touched; a snapshot that does not exist is refused
here) → `inspect_before` (lists what will be restored) → `restore_from_backup` (looks
again first: a retry restores only what is still wrong) → `gate_integrity` → `report`
(fails the run if anything is still missing or corrupt, listing it) → `record` →
`notify_outcome` + `publish` (report) → `verdict`.

**Params**: `source`, `snapshot`, `areas` (`all` or the plan's storage area names), and the
common params (`dry_run` inspects and lists what would be restored, touches nothing).

**Copies** (`source`):
- `auto` (default): each file from the **freshest copy verified good now** - the sync
  mirror (`sync/<area>/`, every 10 minutes, complete up to its last pass's start) when it
  is newer than the snapshot and its copy still matches the sha256 the sync recorded (and,
  for audio, parses); otherwise the snapshot's. A damaged mirror copy is never restored:
  the result names it and the snapshot's copy is used instead.
- `mirror`: the sync mirror only; `snapshot`: the snapshots only (the earlier behaviour).

Snapshots are those `dr_backup_storage_full` / `_incremental` take
(`<area>/<area>_<level>_<stamp>.tar.gz` with a sha256 manifest in `backups.storage`): for
each area, the newest full at or before the picked snapshot and the incrementals after it,
a file's newest copy winning.

**RPO achieved**: `restore_from_backup` says, per file, which copy it came from and that
copy's age at the loss (the incident's start): the writes after the copy was made are
lost. The record's data loss is the oldest such age (`details.copies` has each file's).
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Param, dag

from tracktion_dr.airflow.dag_kit import RtoGate, open_incident, scenario_tail
from tracktion_dr.airflow.gate_triggers import named_check
from tracktion_dr.airflow.steps import guard, on_host, print_plan_of_actions, step
from tracktion_dr.airflow.support import DEFAULT_ARGS, common_params
from tracktion_dr.core.plan import load_plan
from tracktion_dr.notify.runs import notify_started
from tracktion_dr.scenarios import storage

PLAN = load_plan()
DAG_ID = "dr_storage_recovery"
RTO_SECONDS = storage.rto_seconds(PLAN)


def record_fields(run: dict, context) -> dict:
    ti = context["ti"]
    return storage.record_fields(
        run,
        before=ti.xcom_pull(task_ids="inspect_before"),
        restored=ti.xcom_pull(task_ids="restore_from_backup"),
        after=ti.xcom_pull(task_ids="report", key="summary"),
        rto_target_seconds=RTO_SECONDS,
        rpo_target_seconds=storage.rpo_target_seconds(PLAN, run),
    )


@dag(
    dag_id=DAG_ID,
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "scenario", "storage"],
    default_args=DEFAULT_ARGS,
    params={
        **common_params(PLAN, environment_default=None),
        "source": Param(
            "auto",
            type="string",
            enum=["auto", "mirror", "snapshot"],
            title="Restore from",
            description="auto: each file from the freshest copy verified good (the sync "
            "mirror when newer and intact, else the snapshot); mirror: the sync mirror only; "
            "snapshot: the snapshots only.",
            section="Recovery",
        ),
        "snapshot": Param(
            "latest",
            type="string",
            title="Storage snapshot",
            description="'latest', a day (YYYY-MM-DD: the newest of that day) or a snapshot "
            "name from the plan's backups.storage.",
            section="Recovery",
        ),
        "areas": Param(
            ["all"],
            type="array",
            items={"type": "string"},
            title="Storage areas",
            description="'all' (every area the snapshot holds), or the plan's storage area names.",
            section="Recovery",
        ),
    },
    doc_md=__doc__,
)
def dr_storage_recovery():
    # Every step reads or writes the storage areas and their snapshots: the storage host's.
    @guard(host=storage.HOST)
    def check_inputs(**context) -> dict:
        run = storage.check_inputs(PLAN, open_incident(context, PLAN), context["params"])
        print_plan_of_actions(run, storage.plan_of_actions(run))
        notify_started(PLAN, run, DAG_ID, storage.started_summary(run))
        return run

    @step("check", host=storage.HOST)
    def inspect_before(run: dict, **context) -> dict:
        return storage.inspect_before(PLAN, run)

    @step("destructive", host=storage.HOST)
    def restore_from_backup(run: dict, before: dict, **context) -> dict:
        return storage.restore(PLAN, run, before)

    @step("check", after_all=True, host=storage.HOST)
    def report(run: dict, **context) -> dict:
        reports = storage.summary_now(PLAN, run)
        summary = {r.name: r.as_dict() for r in reports}
        context["ti"].xcom_push(key="summary", value=summary)  # for the record, even failed
        return {"detail": storage.judge_integrity(run, reports), "areas": summary}

    run = check_inputs()
    restored = restore_from_backup(run, inspect_before(run))
    gate = RtoGate(
        task_id="gate_integrity",
        check=named_check("storage_intact"),
        incident=run,
        plan=PLAN,
        rto_seconds=RTO_SECONDS,
        **on_host(storage.HOST),  # the same file checks again
    )
    reported = report()
    restored >> gate >> reported
    scenario_tail(PLAN, run, [reported], record_fields=record_fields)


dr_storage_recovery()
