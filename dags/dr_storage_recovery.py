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
- **repair**: missing and corrupted files are restored from the snapshot (corrupt copies are
  moved to `.dr-quarantine/<incident>/`, never deleted), each restored file checked against
  the snapshot's sha256; then the check runs again as the RTO gate.

**Flow**: `guard` (snapshot picked: `latest`, a day `YYYY-MM-DD`, or a name; nothing
touched) → `inspect_before` → `restore_from_backup` → `gate_integrity` → `report` (fails the
run if anything is still missing or corrupt, listing it) → `record` → `notify_outcome` +
`publish` (report) → `verdict`.

**Params**: `snapshot`, `areas` (`all` or the plan's storage area names), and the common
params (`dry_run` inspects and lists what would be restored, touches nothing).

Restore points are the snapshots `dr_backup_storage_full` / `_incremental` take
(`<area>/<area>_<level>_<stamp>.tar.gz` with a sha256 manifest in `backups.storage`): for
each area, the newest full at or before the picked snapshot and the incrementals after it,
a file's newest copy winning. The sync mirror (`sync/<area>/`) is not read here: it is a
plain copy an operator can use directly.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from airflow.sdk import Param, dag, task

from tracktion_dr.dag_kit import RtoGate, finish_run
from tracktion_dr.dag_support import DEFAULT_ARGS, common_params
from tracktion_dr.plan import load_plan

log = logging.getLogger(__name__)

PLAN = load_plan()
DAG_ID = "dr_storage_recovery"
# The storage is back when the most critical service that needs it can work again.
RTO_SECONDS = min(
    [
        PLAN.tiers[service.tier].rto.total_seconds()
        for env in PLAN.environments.values()
        for service in env.services.values()
        if set(service.depends_on) & set(env.storage)
    ]
    or [t.rto.total_seconds() for t in PLAN.tiers.values()]
)


def inspect(incident: dict) -> list:
    from tracktion_dr.files.snapshots import Snapshot, storage_inventory
    from tracktion_dr.files.storage_integrity import inspect_area
    from tracktion_dr.plan import load_plan as current_plan

    environment = current_plan().environment(incident["environment"])
    manifest = storage_inventory(Snapshot.from_dict(incident["snapshot"]))
    return [
        inspect_area(name, environment.storage[name], manifest.get(name, {}))
        for name in incident["areas"]
    ]


def restorable_left(incident: dict) -> tuple[bool, str]:
    """Gate: open when nothing the backup holds is still missing or corrupt."""
    reports = inspect(incident)
    left = [
        f"{r.name}/{p}"
        for r in reports
        for p in [*r.missing, *r.corrupted]
        if p not in r.unrecoverable  # the report fails the run on those, naming them
    ]
    if left:
        return False, f"{len(left)} file(s) still missing or corrupt: {', '.join(left[:5])}"
    return True, f"{sum(r.file_count for r in reports)} files sound in {len(reports)} area(s)"


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
    @task(retries=0)
    def guard(**context) -> dict:
        from tracktion_dr.dag_kit import open_incident
        from tracktion_dr.files.snapshots import pick_snapshot, storage_inventory
        from tracktion_dr.incident import InvalidInput
        from tracktion_dr.notify.runs import notify_started

        incident = open_incident(context, PLAN)
        environment = PLAN.environment(incident["environment"])
        snapshot = pick_snapshot(
            environment.backups.storage, "storage", context["params"]["snapshot"]
        )
        held = storage_inventory(snapshot)
        in_backup = [name for name in environment.storage if name in held]
        requested = context["params"]["areas"]
        if requested in ([], ["all"], "all"):
            areas = in_backup
        else:
            unknown = [a for a in requested if a not in environment.storage]
            if unknown:
                raise InvalidInput(
                    "areas", f"unknown {unknown} (the plan has {sorted(environment.storage)})"
                )
            not_backed = [a for a in requested if a not in in_backup]
            if not_backed:
                raise InvalidInput("areas", f"{not_backed} are not in {snapshot.name}")
            areas = list(requested)
        incident.update(snapshot=snapshot.as_dict(), areas=areas)
        notify_started(
            PLAN, incident, DAG_ID, f"checking {', '.join(areas)} against {snapshot.name}"
        )
        return incident

    @task(retries=0)
    def inspect_before(incident: dict) -> dict:
        from tracktion_dr.files.storage_integrity import render_report

        reports = inspect(incident)
        log.info("\n%s", render_report(reports))
        return {"areas": {r.name: r.as_dict() for r in reports}}

    @task(retries=0)
    def restore_from_backup(incident: dict, before: dict) -> dict:
        from tracktion_dr.dag_kit import now_iso, step_event
        from tracktion_dr.files.snapshots import Snapshot, storage_inventory
        from tracktion_dr.files.storage_integrity import AreaReport, repair_area

        started = now_iso()
        environment = PLAN.environment(incident["environment"])
        snap = incident["snapshot"]
        manifest = storage_inventory(Snapshot.from_dict(snap))
        actions: dict[str, dict[str, str]] = {}
        for name, found in before["areas"].items():
            report = AreaReport(**{k: v for k, v in found.items() if k != "clean"})
            todo = sorted({*report.missing, *report.corrupted})
            if not todo:
                continue
            if incident["dry_run"]:
                actions[name] = {p: "dry run: would restore" for p in todo}
                continue
            actions[name] = repair_area(
                environment.storage[name], report, manifest[name], incident["incident_id"]
            )
        for name, done in actions.items():
            for relative, action in done.items():
                log.info("%s/%s: %s", name, relative, action)
        count = sum(len(d) for d in actions.values())
        status = "skipped" if incident["dry_run"] else "succeeded"
        detail = f"{count} file(s) handled from {snap['name']}" if count else "nothing to restore"
        return {
            "event": step_event("restore_from_backup", started, status, detail),
            "actions": actions,
        }

    incident = guard()
    before = inspect_before(incident)
    restored = restore_from_backup(incident, before)
    gate = RtoGate(
        task_id="gate_integrity",
        check=restorable_left,
        incident=incident,
        plan=PLAN,
        rto_seconds=RTO_SECONDS,
        poke_interval=2,
    )
    restored >> gate

    @task(trigger_rule="all_done", retries=0)
    def report(incident: dict, **context) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from tracktion_dr.files.storage_integrity import render_report

        reports = inspect(incident)
        log.info("\n%s", render_report(reports))
        summary = {r.name: r.as_dict() for r in reports}
        context["ti"].xcom_push(key="summary", value=summary)
        bad = [r for r in reports if not r.clean]
        if bad and not incident["dry_run"]:
            raise AirflowFailException(
                "storage not sound: "
                + "; ".join(
                    f"{r.name}: {len(r.missing)} missing, {len(r.corrupted)} corrupt, "
                    f"{'; '.join(r.problems) or 'directory ok'}"
                    for r in bad
                )
            )
        return summary

    @task(trigger_rule="all_done", retries=0)
    def record(incident: dict, **context) -> dict:
        from tracktion_dr.dag_kit import record_timeline

        ti = context["ti"]
        return record_timeline(
            context,
            incident=incident,
            rto_target_seconds=RTO_SECONDS,
            backup_used=incident["snapshot"]["name"],
            details={
                "before": (ti.xcom_pull(task_ids="inspect_before") or {}).get("areas"),
                "restored": (ti.xcom_pull(task_ids="restore_from_backup") or {}).get("actions"),
                "after": ti.xcom_pull(task_ids="report", key="summary"),
            },
        )

    reported = report(incident)
    gate >> reported
    recorded = record(incident)
    reported >> recorded
    finish_run(PLAN, incident, recorded)


dr_storage_recovery()
