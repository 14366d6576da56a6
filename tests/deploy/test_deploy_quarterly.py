"""The quarterly drill in the deployment, through the scheduler: no task runs ``dag.test()``.

Given the compose deployment with its ``topology`` profile up (tests/deploy/conftest.py) and
known rows committed on the primary and archived (their WAL segment switched and in the
shared WAL archive: the drill's loss takes the data directory away, so only the archive
holds them), when ``dr_test_quarterly`` is triggered over the REST API as an operator would
(every DAG of its chain unpaused first: its guard refuses a paused step DAG), then the drill
succeeds; each step of the plan's chain (``drills.quarterly.steps``) ran as a run of its own
DAG, ``<drill run id>__step_N_<dag>``, and succeeded; every task that ran, in the drill and in
each child run, ran on the worker its queue names (``host_db_primary`` on ``db-primary``,
``host_db_replica`` on ``db-replica``, ``host_app`` on ``app``, ``default`` on the default
worker) and the host-bound ones are where they act; and the known rows are exactly there
on the recovered primary, on a new timeline.

Unpausing the drill makes Airflow create the run of its latest quarter at once (catchup=False
still creates the newest interval's): started long after its window, that run's guard skips
it (the plan's ``test_schedule.quarterly.duration``), so the test's own run follows at once.
The deployment must be in its standard topology (db-primary the primary): the module runs
before the failover test of test_deploy_topology.py, which leaves it failed over.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import quote

import pytest
from harness.deployment import Api, container_hostname, describe, wait_for, write_known_rows
from harness.deployment import psql as psql_on

pytestmark = pytest.mark.deploy

DRILL_DAG = "dr_test_quarterly"
# compose.yaml's drills.quarterly.steps, in order (the child runs' ids number them from 1).
CHAIN = (
    "dr_database_pitr",
    "dr_infrastructure_recovery",
    "dr_application_recovery",
    "dr_config_recovery",
    "dr_post_recovery_validation",
)
RUN_TIMEOUT_SECONDS = 5400  # a bound on the wait, not a measurement (no timing asserted)
DAG_VISIBLE_TIMEOUT_SECONDS = 600
ARCHIVE_TIMEOUT_SECONDS = 300

# The container each queue's worker runs in (docker-compose.yaml, profile topology); the
# default queue's worker is airflow-worker, whose hostname is its container id.
QUEUE_HOSTS = {"host_db_primary": "db-primary", "host_db_replica": "db-replica", "host_app": "app"}
# Tasks that act on a host's local state, by DAG: the host they must have run on
# (tests/unit/test_host_routing.py checks every task's queue without Docker).
MUST_RUN_ON = {
    DRILL_DAG: {"guard": "db-primary", "simulate_loss": "db-primary", "safety_net": "db-primary"},
    "dr_database_pitr": {
        "prepare_data_directory": "db-primary",
        "start_postgres": "db-primary",
        "stop_services": "app",
        "reseed_replica": "db-replica",
    },
    "dr_infrastructure_recovery": {"inspect": "app", "report": "app"},
    "dr_application_recovery": {"probe": "app", "gate_analysis_service": "app"},
    "dr_config_recovery": {"guard": "app", "restore": "app", "validate_live": "app"},
    "dr_post_recovery_validation": {
        "system_health": "db-primary",
        "backup_systems": "db-primary",
        "security_posture": "app",
        "application_functionality": "app",
    },
}
CHECK_TABLE = "dr_drill_check"
CHECK_ROWS = 2000


# --------------------------------------------------------------------------- helpers


def psql(deployment, sql: str) -> str:
    """SQL on the primary's host (db-primary)."""
    return psql_on(deployment, "db-primary", 55432, sql)


def schedule_caught_up(api: Api, dag_id: str) -> bool:
    """Whether the scheduler has made every run the DAG's schedule owes by now: unpausing
    a scheduled DAG makes the run of its latest interval at once (``catchup=False`` still
    runs that one), and its next run is then in the future."""
    after = api.get(f"/dags/{dag_id}").json().get("next_dagrun_run_after")
    return after is None or datetime.fromisoformat(after) > datetime.now(UTC)


def runs_still_active(api: Api, dag_id: str) -> list[str]:
    runs = api.get(f"/dags/{dag_id}/dagRuns").json()["dag_runs"]
    return [r["dag_run_id"] for r in runs if r["state"] not in ("success", "failed")]


def archive_known_rows(deployment) -> None:
    """Switch the WAL segment holding the rows and wait until the archiver has it: the
    drill's loss leaves only the WAL archive (and the base backups) to recover from."""
    switched = psql(deployment, "SELECT pg_catalog.pg_walfile_name(pg_catalog.pg_switch_wal())")
    wait_for(
        lambda: (
            psql(deployment, "SELECT last_archived_wal FROM pg_catalog.pg_stat_archiver")
            >= switched
        ),
        ARCHIVE_TIMEOUT_SECONDS,
        2,
        f"the archiver to archive {switched}",
    )


# --------------------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def api(deployment) -> Api:
    return Api(deployment.url, deployment.password)


def test_the_quarterly_drill_runs_through_the_scheduler_each_step_on_its_host(deployment, api):
    assert psql(deployment, "SELECT pg_catalog.pg_is_in_recovery()") == "f", (
        "db-primary is not the primary: the deployment is failed over (a failover test ran "
        "first in a kept deployment?); remove it with `docker compose -p "
        f"{deployment.env['COMPOSE_PROJECT_NAME']} --profile topology down -v` and run again"
    )
    # Given known rows on the primary, committed and archived before the drill.
    marker, checksum_sql, before = write_known_rows(deployment, CHECK_TABLE, CHECK_ROWS)
    timeline_before = int(
        psql(deployment, "SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()")
    )
    archive_known_rows(deployment)

    # When the drill is triggered over REST, its DAG and every step DAG unpaused first.
    for dag_id in (DRILL_DAG, *CHAIN):
        wait_for(
            lambda dag_id=dag_id: api.get(f"/dags/{dag_id}").status_code == 200,
            DAG_VISIBLE_TIMEOUT_SECONDS,
            5,
            f"the dag-processor to serialize {dag_id}",
        )
        api.call("PATCH", f"/dags/{dag_id}", {"is_paused": False})
    # Unpausing the drill makes its schedule's run of the latest quarter at once (its guard
    # skips it when started after its window): let the scheduler make it first, so that it
    # ends before this run starts (max_active_runs=1), never during the checks after it.
    wait_for(
        lambda: schedule_caught_up(api, DRILL_DAG),
        DAG_VISIBLE_TIMEOUT_SECONDS,
        2,
        f"the scheduler to make the runs {DRILL_DAG}'s schedule owes",
    )
    run = api.call(
        "POST",
        f"/dags/{DRILL_DAG}/dagRuns",
        {"logical_date": None, "conf": {"environment": "drill", "notify": False}},
    )
    run_id = run["dag_run_id"]
    run_path = f"/dags/{DRILL_DAG}/dagRuns/{quote(run_id, safe='')}"
    state = wait_for(
        lambda: (s := api.get(run_path).json()["state"]) in ("success", "failed") and s,
        RUN_TIMEOUT_SECONDS,
        15,
        f"drill run {run_id} to finish",
    )
    # (a drill the schedule made before this one has ended too: nothing acts any more)
    assert runs_still_active(api, DRILL_DAG) == []
    runs = {DRILL_DAG: (run_id, state, api.task_instances(DRILL_DAG, run_id))}
    for index, dag_id in enumerate(CHAIN, 1):
        child_id = f"{run_id}__step_{index}_{dag_id}"
        answer = api.get(f"/dags/{dag_id}/dagRuns/{quote(child_id, safe='')}")
        child_state = answer.json()["state"] if answer.status_code == 200 else "never triggered"
        instances = api.task_instances(dag_id, child_id) if answer.status_code == 200 else []
        runs[dag_id] = (child_id, child_state, instances)
    report = "\n".join(describe(d, *r) for d, r in runs.items())
    print(report)

    # Then the drill succeeded, and each step of the chain as a run of its own DAG,
    assert state == "success", report
    for dag_id in CHAIN:
        assert runs[dag_id][1] == "success", f"{dag_id}\n{report}"

    # every task that ran did so on the worker of its queue, host-bound ones on their host,
    default_worker = container_hostname(deployment, "airflow-worker")
    hosts_used = set()
    for dag_id, (_, _, instances) in runs.items():
        ran = {ti["task_id"]: ti for ti in instances if ti["state"] in ("success", "failed")}
        for ti in ran.values():
            expected = QUEUE_HOSTS.get(ti["queue"], default_worker)
            assert ti["hostname"] == expected, f"{dag_id}.{ti['task_id']}\n{report}"
            hosts_used.add(ti["hostname"])
        for task_id, host in MUST_RUN_ON[dag_id].items():
            assert task_id in ran, f"{dag_id}.{task_id} did not run\n{report}"
            assert ran[task_id]["hostname"] == host, f"{dag_id}.{task_id}\n{report}"
    assert hosts_used == {"db-primary", "db-replica", "app", default_worker}, report

    # and the data check is exact: every known row, byte for byte, on a new timeline of a
    # primary that is not in recovery (recovered, not the lost one put back).
    assert psql(deployment, checksum_sql) == before
    assert psql(deployment, "SELECT pg_catalog.pg_is_in_recovery()") == "f"
    timeline = int(psql(deployment, "SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()"))
    assert timeline > timeline_before
