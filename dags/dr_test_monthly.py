"""
### DR monthly component recovery test

The plan's monthly drill (`test_schedule.monthly.cron`), also triggerable by hand. It proves,
on scratch resources, that backups restore and components recover within their RTO:

1. **guard** - nothing touched yet: skips a scheduled run started after its window
   (`test_schedule.monthly.duration` from the cron's time: a DAG unpaused late does not
   hold a missed drill unattended; trigger by hand instead); refuses the `production` environment, a scratch
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
7. **record** to the ledger, **notify_outcome** (the plan's notification policy, when
   `notify`), **publish** (Markdown / HTML / JSON report at the plan's report location, sent
   to the report channels when `notify`), **verdict**.

A dry run prints the guard's plan of actions and runs no test (nothing is created, stopped
or removed); `measure_rpo` still reads the WAL archive.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Param, dag

from tracktion_dr.airflow import steps
from tracktion_dr.airflow.access import ACCESS
from tracktion_dr.airflow.dag_kit import open_incident, scenario_tail, skip_a_missed_drill
from tracktion_dr.airflow.support import DEFAULT_ARGS, common_params, endpoint
from tracktion_dr.core.plan import load_plan
from tracktion_dr.scenarios import drills

PLAN = load_plan()
SCHEDULE = PLAN.test_schedule["monthly"].cron if "monthly" in PLAN.test_schedule else None
PART_TESTS = ("test_databases", "test_services", "test_storage")
# A drill's test is measured once: retrying it would hide the failure it exists to find.
# Its event is a gate's: the RTO clock reads when the last test proved its parts back.
DRILL_TEST = {"retries": 0, "skip_in_dry_run": True, "event_kind": "gate"}


def record_fields(run: dict, context) -> dict:
    pulled = context["ti"].xcom_pull
    parts = [p for t in PART_TESTS for p in pulled(task_ids=t, key=drills.PARTS_KEY) or []]
    teardown_lines = (pulled(task_ids="teardown") or {}).get("lines")
    return drills.monthly_record_fields(
        PLAN, run, parts, pulled(task_ids="measure_rpo"), teardown_lines
    )


def judged(name: str, parts: list[dict], context) -> str:
    """Every part goes to the record (also when one failed); a failed part fails the step."""
    context["ti"].xcom_push(key=drills.PARTS_KEY, value=parts)
    return drills.judge_parts(name, parts)


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
    @steps.guard(retries=0)
    def guard(**context) -> dict:
        from tracktion_dr.postgres.restore import incident_tag

        skip_a_missed_drill(context, PLAN, "monthly")
        incident = open_incident(context, PLAN)
        tag = incident_tag(incident["incident_id"]).lower()
        run = {**incident, **drills.guard_monthly(PLAN, incident, tag)}
        steps.print_plan_of_actions(run, drills.monthly_plan_of_actions(run))
        return run

    # Each test runs where what it acts on is: the dumps on the backup host, the services'
    # controller on the application host, the storage areas (and the drill's scratch
    # directory, which the teardown empties) on the storage host.
    @steps.step("check", host="backups", **DRILL_TEST)
    def test_databases(run: dict, **context) -> str:
        return judged("test_databases", drills.test_databases(PLAN, run, endpoint), context)

    @steps.step("check", after_all=True, host="application", **DRILL_TEST)
    def test_services(run: dict, **context) -> str:
        timeout = float(context["params"]["service_timeout_seconds"])
        parts = drills.test_services(PLAN, run, ACCESS.controller, timeout)
        return judged("test_services", parts, context)

    @steps.step("check", after_all=True, host="storage", **DRILL_TEST)
    def test_storage(run: dict, **context) -> str:
        return judged("test_storage", drills.test_storage(PLAN, run), context)

    @steps.step("bookkeeping", after_all=True, skip_in_dry_run=True, host="storage")
    def teardown(run: dict, **context) -> dict:
        """Runs whatever happened: nothing a drill created outlives it."""
        return drills.teardown(PLAN, run, endpoint, ACCESS.controller)

    @steps.step("check", after_all=True, retries=0, host="backups")
    def measure_rpo(run: dict, **context) -> dict:
        return drills.measure_rpo(PLAN, run)

    run = guard()
    databases, services, storage = test_databases(run), test_services(), test_storage()
    cleaned, rpo = teardown(), measure_rpo()
    databases >> services >> storage >> cleaned >> rpo
    scenario_tail(PLAN, run, [rpo], record_fields=record_fields)


dr_test_monthly()
