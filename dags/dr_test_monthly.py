"""
### DR monthly component recovery test

The plan's monthly drill (`test_schedule.monthly.cron`), also triggerable by hand. It proves,
on scratch resources, that backups restore and components recover within their RTO:

1. **guard** - nothing touched yet: refuses the `production` environment, a scratch
   database named like a plan database, a scratch directory inside a production path, and
   services or storage that production also names (unless the drill environment is marked
   `shares_production_targets`, as the sandbox is).
2. **test_databases** - the newest dump of each database (checksum-verified first: a
   corrupt newest dump fails the test, it does not fall back quietly) is restored into a
   scratch database `dr_test_<db>_<tag>` and validated in full: row counts against the
   dump's manifest, FK orphans, duplicate PKs, business rules, `pg_amcheck`. Restore time
   measured.
3. **test_services** - each service of `drills.monthly.services`, one after the other:
   stop, start, gate on health; recovery time measured against the service tier's RTO.
4. **test_storage** - per storage area: write a test file, back it up, delete it, restore
   it, compare its sha256.
5. **teardown** (runs even when a step failed) - drops the scratch databases, removes the
   scratch directory, starts any monthly service left stopped.
6. **measure_rpo** - data at risk now: time since the newest commit the WAL archive holds,
   against the transactional RPO.
7. **record** to the ledger, **publish_report** (Markdown / HTML / JSON at the plan's
   report location, sent to the report channels when `notify`), **verdict**.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Param, dag, task

from tracktion_dr.airflow.dag_kit import (
    now_iso,
    open_incident,
    publish_task,
    raise_for_outcome,
    record_timeline,
    refusing_bad_input,
)
from tracktion_dr.airflow.support import DEFAULT_ARGS, common_params
from tracktion_dr.core.plan import load_plan

PLAN = load_plan()
SCHEDULE = PLAN.test_schedule["monthly"].cron if "monthly" in PLAN.test_schedule else None


def _guard_result(context: dict) -> dict:
    from airflow.sdk.exceptions import AirflowSkipException

    run = context["ti"].xcom_pull(task_ids="guard")
    if not run:
        raise AirflowSkipException("the guard refused: nothing to test")
    return run


def _outcome(name: str, started: str, steps: list[dict], context: dict) -> dict:
    """The task's result: a gate event when every part recovered (the RTO clock reads the
    last one), the per-part steps for the report; a failed part fails the task."""
    from airflow.sdk.exceptions import AirflowFailException

    from tracktion_dr.core.timeline import Event

    failed = [s for s in steps if s["status"] != "succeeded"]
    detail = "; ".join(f"{s['name']}: {s['detail']}" for s in (failed or steps))[:1500]
    event = Event(name, "gate", started, now_iso(), "failed" if failed else "succeeded", detail)
    value = {"event": event.__dict__, "steps": steps}
    if failed:
        context["ti"].xcom_push(key="return_value", value=value)
        raise AirflowFailException(f"{name} failed: {detail}")
    return value


@dag(
    dag_id="dr_test_monthly",
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "drill"],
    default_args=DEFAULT_ARGS,
    params={
        **common_params(PLAN, environment_default="drill"),
        "service_timeout_seconds": Param(
            120,
            type="integer",
            minimum=5,
            maximum=7200,
            title="Service start timeout",
            description="How long a restarted service may take to answer healthy before its "
            "test fails (capped by the service tier's RTO).",
            section="Run",
        ),
    },
    doc_md=__doc__,
)
def dr_test_monthly():
    @task(retries=0)
    def guard(**context) -> dict:
        from tracktion_dr.postgres.restore import incident_tag
        from tracktion_dr.scenarios.drills import guard_monthly

        incident = open_incident(context, PLAN)
        with refusing_bad_input():
            drill = guard_monthly(PLAN, incident, incident_tag(incident["incident_id"]).lower())
        return {**incident, **drill}

    @task(retries=0)
    def test_databases(**context) -> dict:
        from tracktion_dr.airflow.support import endpoint
        from tracktion_dr.scenarios.drills import restore_test

        run, started = _guard_result(context), now_iso()
        environment = PLAN.environment(run["environment"])
        steps = []
        for name in run["databases"]:
            spec = environment.databases[name]
            result = restore_test(
                environment,
                name,
                run["scratch_databases"][name],
                endpoint(environment.clusters[spec.cluster].conn_id),
                PLAN.tiers[spec.tier].rto.total_seconds(),
            )
            steps.append(result.as_dict())
        return _outcome("test_databases", started, steps, context)

    @task(retries=0, trigger_rule="all_done")
    def test_services(**context) -> dict:
        from tracktion_dr.airflow.support import controller
        from tracktion_dr.scenarios.drills import service_cycle_test

        run, started = _guard_result(context), now_iso()
        environment = PLAN.environment(run["environment"])
        steps = []
        for name in run["services"]:
            spec = environment.services[name]
            rto = PLAN.tiers[spec.tier].rto.total_seconds()
            timeout = min(rto, float(context["params"]["service_timeout_seconds"]))
            result = service_cycle_test(
                environment, name, controller(environment.controllers[spec.controller]), timeout
            )
            result.target_seconds = rto
            steps.append(result.as_dict())
        return _outcome("test_services", started, steps, context)

    @task(retries=0, trigger_rule="all_done")
    def test_storage(**context) -> dict:
        from pathlib import Path

        from tracktion_dr.scenarios.drills import storage_test

        run, started = _guard_result(context), now_iso()
        environment = PLAN.environment(run["environment"])
        steps = []
        for area in run["storage_areas"]:
            dependents = environment.dependents_of(area)
            tiers = [PLAN.tiers[environment.services[s].tier].rto for s in dependents]
            target = min(tiers or [max(t.rto for t in PLAN.tiers.values())])
            result = storage_test(
                area,
                Path(environment.storage[area].path),
                Path(run["scratch_dir"]) / "storage",
                run["incident_id"],
                target.total_seconds(),
            )
            steps.append(result.as_dict())
        return _outcome("test_storage", started, steps, context)

    @task(retries=0, trigger_rule="all_done")
    def teardown(**context) -> list[str]:
        from tracktion_dr.airflow.support import controller, endpoint
        from tracktion_dr.scenarios.drills import teardown_monthly

        run = context["ti"].xcom_pull(task_ids="guard")
        if not run:
            return ["the guard refused: nothing was created"]
        done = teardown_monthly(PLAN.environment(run["environment"]), run, endpoint, controller)
        for line in done:
            print(line)
        return done

    @task(retries=0, trigger_rule="all_done")
    def measure_rpo(**context) -> dict:
        from tracktion_dr.scenarios.database import catalog_for

        run = context["ti"].xcom_pull(task_ids="guard")
        if not run:
            return {}
        environment = PLAN.environment(run["environment"])
        name = run["databases"][0]
        spec = environment.databases[name]
        catalog = catalog_for(environment, environment.clusters[spec.cluster])
        newest = catalog.newest_restorable_point()
        rpo = PLAN.data_categories[spec.data_category].rpo.total_seconds()
        if newest is None:
            return {
                "rpo_target_seconds": rpo,
                "data_loss_seconds": None,
                "note": "no restorable point in the WAL archive: RPO not measured",
            }
        exposure = (datetime.now(UTC) - newest).total_seconds()
        return {
            "rpo_target_seconds": rpo,
            "data_loss_seconds": exposure,
            "note": f"{name}: newest commit in the WAL archive {newest.isoformat()}, "
            f"{exposure:.0f}s ago: the data a loss now would cost",
        }

    @task(trigger_rule="all_done", retries=0)
    def record(**context) -> dict:
        ti = context["ti"]
        run = ti.xcom_pull(task_ids="guard")
        if not run:
            from tracktion_dr.core.incident import resolve_incident

            run = resolve_incident(
                {**context["params"], "environment": "drill"},
                run_started_at=context["dag_run"].start_date or datetime.now(UTC),
                known_environments=sorted(PLAN.environments),
                plan_name=PLAN.name,
            ).as_dict()
        steps = []
        for task_id in ("test_databases", "test_services", "test_storage"):
            value = ti.xcom_pull(task_ids=task_id)
            if isinstance(value, dict):
                steps += value.get("steps", [])
        rpo = ti.xcom_pull(task_ids="measure_rpo") or {}
        environment = PLAN.environment(run["environment"])
        targets = [PLAN.tiers[environment.databases[d].tier].rto for d in run.get("databases", [])]
        targets += [PLAN.tiers[environment.services[s].tier].rto for s in run.get("services", [])]
        rto = min(targets or [max(t.rto for t in PLAN.tiers.values())])
        return record_timeline(
            context,
            incident=run,
            rto_target_seconds=rto.total_seconds(),
            rpo_target_seconds=rpo.get("rpo_target_seconds"),
            data_loss_seconds=rpo.get("data_loss_seconds"),
            backup_used=next(
                (s["evidence"]["dump"] for s in steps if (s.get("evidence") or {}).get("dump")),
                None,
            ),
            details={
                "steps": steps,
                "notes": [n for n in [rpo.get("note")] if n]
                + [f"teardown: {line}" for line in ti.xcom_pull(task_ids="teardown") or []],
            },
        )

    @task(retries=0)
    def verdict(timeline: dict) -> None:
        raise_for_outcome(timeline)

    guarded = guard()
    databases, services, storage = test_databases(), test_services(), test_storage()
    cleaned, rpo = teardown(), measure_rpo()
    guarded >> databases >> services >> storage >> cleaned >> rpo
    recorded = record()
    rpo >> recorded
    published = publish_task(PLAN, recorded)
    published >> verdict(recorded)


dr_test_monthly()
