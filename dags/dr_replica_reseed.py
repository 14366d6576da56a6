"""
### DR replica re-seed

Brings the standby back when it no longer streams from the primary (lag past what the
archive holds, a diverged timeline, a lost data directory): the redundancy half of the
plan's Database Recovery, on its own. Routed from a `TracktionReplicaDown` alert.

1. **guard** - the cluster names a complete replica in the plan; the target is locked for
   the run (no PITR, restore or failover of the cluster meanwhile).
2. **primary_accepts** - the primary answers; re-seeding from a primary that is down would
   copy nothing (fail over or recover the primary first).
3. **reseed_replica** - unless the standby already streams on the primary's timeline: its
   WAL salvaged, moved aside (`<dir>.pre_<incident>`, kept), re-seeded with
   `pg_basebackup -R`, started, waited for until it streams.
4. **record**, **notify_outcome**, **publish**, **verdict**.

**Killed mid-way?** Re-run with the same `incident_id`: a standby that is already this
incident's copy is only started; the original is moved aside once, never deleted.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Param, dag

from tracktion_dr.airflow import steps
from tracktion_dr.airflow.dag_kit import open_incident, scenario_tail, take_exclusivity
from tracktion_dr.airflow.support import DEFAULT_ARGS, common_params
from tracktion_dr.core.plan import load_plan
from tracktion_dr.notify.runs import notify_started
from tracktion_dr.scenarios import replica_reseed

PLAN = load_plan()
DAG_ID = "dr_replica_reseed"


@steps.guard()
def guard(**context) -> dict:
    run = replica_reseed.check_inputs(PLAN, open_incident(context, PLAN), context["params"])
    if not run["dry_run"]:
        run.update(take_exclusivity(context, run, [f"cluster:{run['cluster']}"]))
    steps.print_plan_of_actions(run, replica_reseed.plan_of_actions(run))
    notify_started(PLAN, run, DAG_ID, f"re-seed the standby of {run['cluster']}")
    return run


def _cluster(run: dict):
    return PLAN.environment(run["environment"]).clusters[run["cluster"]]


@steps.step("check")
def primary_accepts(run: dict, **context) -> str:
    from tracktion_dr.airflow.support import endpoint
    from tracktion_dr.core.errors import Refused
    from tracktion_dr.services.probes import ProbeFailure, postgres_ready

    try:
        return "the primary " + postgres_ready(
            endpoint(_cluster(run).conn_id).conninfo("postgres")
        )(5)
    except ProbeFailure as exc:
        raise Refused(
            f"the primary of {run['cluster']} does not answer ({exc}): nothing to copy from",
            hint="fail over (dr_failover) or recover the primary (dr_database_pitr) first",
        ) from None


@steps.step("destructive", milestone="redundancy", host="database_replica")
def reseed_replica(run: dict, **context) -> str:
    from tracktion_dr.airflow.support import reseed_standby

    return reseed_standby(_cluster(run), run)


def record_fields(run: dict, context) -> dict:
    return {"rto_target_seconds": run["rto_seconds"]}


@dag(
    dag_id=DAG_ID,
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "scenario", "database"],
    default_args=DEFAULT_ARGS,
    params={
        **common_params(PLAN, environment_default=None),
        "cluster": Param(
            type="string",
            enum=replica_reseed.clusters_with_replicas(PLAN),
            title="Cluster",
            description="The cluster whose standby is re-seeded (from the DR plan).",
            section="Recovery",
        ),
    },
    doc_md=__doc__,
)
def dr_replica_reseed():
    run = guard()
    reseeded = reseed_replica(run)
    primary_accepts(run) >> reseeded
    scenario_tail(PLAN, run, [reseeded], record_fields=record_fields, exclusive=True)


dr_replica_reseed()
