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

import logging
from datetime import UTC, datetime

from airflow.sdk import Param, dag, task

from tracktion_dr.airflow.dag_kit import RtoGate, finish_run
from tracktion_dr.airflow.support import DEFAULT_ARGS, common_params
from tracktion_dr.core.plan import load_plan

log = logging.getLogger(__name__)

PLAN = load_plan()
DAG_ID = "dr_config_recovery"
# After a rollback, how long to watch the services come back before reporting their state
# (the run is failed either way: the restore it was asked for did not hold).
ROLLBACK_HEALTH_WAIT_SECONDS = 30
RTO_SECONDS = min(
    PLAN.tiers[service.tier].rto.total_seconds()
    for env in PLAN.environments.values()
    for service in env.services.values()
)


def all_services_healthy(incident: dict) -> tuple[bool, str]:
    from tracktion_dr.core.plan import load_plan as current_plan
    from tracktion_dr.services.recovery import probe_services

    environment = current_plan().environment(incident["environment"])
    results = probe_services(environment, list(environment.services))
    down = {n: r["detail"] for n, r in results.items() if not r["healthy"]}
    if down:
        return False, "; ".join(f"{n}: {d}" for n, d in down.items())
    return True, f"{len(results)}/{len(results)} services healthy"


def restart_all(environment) -> list[str]:
    from tracktion_dr.airflow.support import controller
    from tracktion_dr.services.recovery import dependency_order

    restarted = []
    for name in dependency_order(environment):
        service = environment.services[name]
        controller(environment.controllers[service.controller]).restart(service.unit or name)
        restarted.append(name)
    return restarted


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
    @task(retries=0)
    def guard(**context) -> dict:
        from tracktion_dr.airflow.dag_kit import open_incident
        from tracktion_dr.core.incident import InvalidInput, check_confirmation
        from tracktion_dr.files.snapshots import pick_snapshot
        from tracktion_dr.notify.runs import notify_started

        incident = open_incident(context, PLAN)
        environment = PLAN.environment(incident["environment"])
        if not environment.config_paths:
            raise InvalidInput("environment", "the plan lists no config_paths here")
        if not incident["dry_run"]:
            check_confirmation(
                environment.destructive_requires_confirmation,
                context["params"]["confirm"],
                "configuration",
            )
        snapshot = pick_snapshot(
            environment.backups.configuration, "configuration", context["params"]["snapshot"]
        )
        incident.update(snapshot=snapshot.as_dict(), restart=context["params"]["restart_services"])
        log.info("restoring %s (taken %s)", snapshot.name, snapshot.taken_at)
        notify_started(PLAN, incident, DAG_ID, f"restoring configuration from {snapshot.name}")
        return incident

    @task(retries=0)
    def safety_snapshot(incident: dict) -> dict:
        from pathlib import Path

        from tracktion_dr.airflow.dag_kit import now_iso, step_event
        from tracktion_dr.files.config_restore import take_safety_snapshot
        from tracktion_dr.files.snapshots import location_dir

        started = now_iso()
        if incident["dry_run"]:
            return {"event": step_event("safety_snapshot", started, "skipped", "dry run")}
        environment = PLAN.environment(incident["environment"])
        path = take_safety_snapshot(
            environment, location_dir(environment.backups.configuration), incident["incident_id"]
        )
        log.info("safety snapshot of the live configuration: %s", path)
        return {
            "event": step_event("safety_snapshot", started, detail=Path(path).name),
            "path": str(path),
        }

    @task(retries=0)
    def restore(incident: dict, safety: dict) -> dict:
        import tempfile
        from pathlib import Path

        from tracktion_dr.airflow.dag_kit import now_iso, step_event
        from tracktion_dr.files import config_restore

        started = now_iso()
        environment = PLAN.environment(incident["environment"])
        archive = Path(incident["snapshot"]["path"])
        tag = incident["incident_id"]
        try:
            if incident["dry_run"]:
                with tempfile.TemporaryDirectory(prefix="dr-config-dry-run-") as scratch:
                    config_restore.stage(environment, archive, tag, work_parent=Path(scratch))
                detail = f"dry run: {archive.name} extracts and validates; nothing swapped"
                return {"event": step_event("restore", started, "skipped", detail)}
            result = config_restore.restore(environment, archive, tag)
        except config_restore.ConfigInvalid as exc:
            for problem in exc.problems:
                log.error("refused: %s", problem)
            raise RuntimeError(
                f"{archive.name} refused before anything live was touched: {exc}"
            ) from None
        detail = f"{archive.name} swapped in; previous moved aside: {result.swapped}"
        return {"event": step_event("restore", started, detail=detail), "result": result.as_dict()}

    @task(retries=0)
    def validate_live(incident: dict) -> dict:
        from tracktion_dr.airflow.dag_kit import now_iso, step_event
        from tracktion_dr.files.config_restore import validate_live as check

        started = now_iso()
        if incident["dry_run"]:
            return {"event": step_event("validate_live", started, "skipped", "dry run")}
        problems = check(PLAN.environment(incident["environment"]))
        if problems:
            raise RuntimeError("live configuration invalid: " + "; ".join(problems))
        return {
            "event": step_event(
                "validate_live", started, detail="every JSON/YAML parses; modes as planned"
            )
        }

    @task(retries=0)
    def restart_services(incident: dict) -> dict:
        from tracktion_dr.airflow.dag_kit import now_iso, step_event

        started = now_iso()
        if incident["dry_run"] or not incident["restart"]:
            why = "dry run" if incident["dry_run"] else "restart_services is off"
            return {"event": step_event("restart_services", started, "skipped", why)}
        restarted = restart_all(PLAN.environment(incident["environment"]))
        return {"event": step_event("restart_services", started, detail=", ".join(restarted))}

    incident = guard()
    gate = RtoGate(
        task_id="gate_services",
        check=all_services_healthy,
        incident=incident,
        plan=PLAN,
        rto_seconds=RTO_SECONDS,
        poke_interval=2,
    )

    @task(trigger_rule="one_failed", retries=0)
    def rollback(incident: dict, **context) -> dict:
        import time
        from pathlib import Path

        from tracktion_dr.airflow.dag_kit import now_iso, step_event
        from tracktion_dr.files import config_restore

        started = now_iso()
        ti = context["ti"]
        restored = ti.xcom_pull(task_ids="restore") or {}
        safety = ti.xcom_pull(task_ids="safety_snapshot") or {}
        environment = PLAN.environment(incident["environment"])
        untouched = "nothing was swapped: the live configuration was never touched"
        if not safety.get("path"):  # no safety snapshot: restore never ran
            log.info(untouched)
            return {"event": step_event("rollback", started, "skipped", untouched)}
        # The actual state decides, not what the restore task managed to report: it may
        # have swapped and then failed (or been killed) before returning.
        changed = config_restore.differences_from_safety(environment, Path(safety["path"]))
        if changed == [] or (changed is None and not restored.get("result")):
            detail = (
                untouched
                if not restored.get("result")
                else "the live configuration is identical to the safety snapshot's record"
            )
            log.info(detail)
            return {"event": step_event("rollback", started, "skipped", detail)}
        log.warning(
            "rolling back to the safety snapshot %s: %d path(s) differ from it",
            safety["path"],
            len(changed or []),
        )
        result = config_restore.roll_back(
            environment, Path(safety["path"]), f"{incident['incident_id']}-rollback"
        )
        if incident["restart"]:
            restart_all(environment)
        deadline = time.monotonic() + ROLLBACK_HEALTH_WAIT_SECONDS
        healthy, detail = all_services_healthy(incident)
        while not healthy and time.monotonic() < deadline:
            time.sleep(2)
            healthy, detail = all_services_healthy(incident)
        log.warning("rolled back to %s; services: %s", result.snapshot, detail)
        return {
            "event": step_event(
                "rollback", started, detail=f"rolled back to {result.snapshot}; {detail}"
            ),
            "result": result.as_dict(),
        }

    @task(trigger_rule="all_done", retries=0)
    def record(incident: dict, **context) -> dict:
        from tracktion_dr.airflow.dag_kit import record_timeline

        rolled = context["ti"].xcom_pull(task_ids="rollback") or {}
        return record_timeline(
            context,
            incident=incident,
            rto_target_seconds=RTO_SECONDS,
            backup_used=incident["snapshot"]["name"],
            details={"rolled_back": bool(rolled.get("result"))},
        )

    safety = safety_snapshot(incident)
    restored = restore(incident, safety)
    validated = validate_live(incident)
    restarted = restart_services(incident)
    restored >> validated >> restarted >> gate
    undo = rollback(incident)
    [restored, validated, restarted, gate] >> undo
    recorded = record(incident)
    [gate, undo] >> recorded
    finish_run(PLAN, incident, recorded)


dr_config_recovery()
