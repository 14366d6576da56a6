"""
### DR standby rebuild (fail back, part 1)

After `dr_failover target=database` (or a site failover) the promoted replica is the
primary and the old primary is **fenced**: stopped, `standby.signal` and `DR_FENCED` in its
data directory. The cluster runs without a standby. This DAG makes the old primary a
streaming standby of the new one, so the cluster is redundant again (and a planned
switchover back, `dr_switchover`, becomes possible).

1. **guard** - the cluster names both nodes completely in the plan; the cluster is locked
   for the run (no PITR, restore, re-seed or failover of it meanwhile).
2. **find_roles** - both nodes are asked which one is the primary now (the plan's names
   `primary` / `replica` do not say: a failover moved the role). No primary, or two, is
   refused with what to run.
3. **rebuild_primary** or **rebuild_replica** - `rebuild_where` picks the node that is not
   the primary now - unless it already streams from the primary: its WAL the archive lacks
   salvaged, stopped, its data directory moved aside
   (`<dir>.pre_<incident>`, kept: it holds whatever the failover lost); **pg_rewind** of a
   copy of it from the new primary when possible (same cluster, data checksums or
   `wal_log_hints` on; a `CHECKPOINT` on the new primary first, so pg_rewind reads its new
   timeline), a fresh **pg_basebackup** otherwise or when pg_rewind fails;
   standby settings written (`primary_conninfo` to the new primary, its slot, its own
   port, and a `restore_command` reading the WAL archive when this host has it: the
   rewound copy replays from before the failover, WAL the new primary may have recycled
   since), renamed into place, started with the plan's `control`.
   The step waits until it streams; a standby still replaying (its replay LSN or the
   archive's segments moving) is waited on, one that stops moving for two minutes is given
   up on with its log's FATAL line. A rewound copy asking for WAL that neither the new
   primary nor the archive still holds is replaced by a fresh pg_basebackup (30 s).
4. **gate_standby_streaming** - opens when it streams on the primary's timeline (both ends
   asked: `pg_stat_replication` on the primary, `pg_stat_wal_receiver` on the standby).
   Its budget is the tier's RTO; it records *redundancy restored*, not the service RTO.
5. **record**, **notify_outcome**, **publish**, **verdict**.

**Where each step runs** (a plan with `hosts`, CeleryExecutor): the rebuild on the worker
of the rebuilt node's host (`rebuild_primary` on the cluster's `host`, `rebuild_replica` on
its `replica_host`: a step's queue is fixed when the DAG is parsed, so the step is laid out
once per node and the branch runs the one the roles call for); everything else asks both
nodes over the network and runs on the default queue.

**Killed mid-way?** Re-run with the same `incident_id`: a node already rebuilt by this
incident is only started; the original directory is moved aside once and never deleted;
a half-rewound or half-copied staging directory of this incident is discarded and redone.

**Params**: `cluster`, `prefer_rewind` (off: always a fresh base backup), plus the common
params (`dry_run` prints the plan of actions and touches nothing).
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Param, dag, task

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
from tracktion_dr.notify.runs import notify_started
from tracktion_dr.scenarios import rebuild

PLAN = load_plan()
DAG_ID = "dr_standby_rebuild"
NODES = rebuild.NODE_NAMES


def _endpoint(conn_id: str):
    from tracktion_dr.airflow.support import endpoint

    return endpoint(conn_id)


@steps.guard()
def guard(**context) -> dict:
    run = rebuild.check_rebuild_inputs(PLAN, open_incident(context, PLAN), context["params"])
    if not run["dry_run"]:
        run.update(take_exclusivity(context, run, [f"cluster:{run['cluster']}"]))
    steps.print_plan_of_actions(run, rebuild.rebuild_plan_of_actions(run))
    notify_started(PLAN, run, DAG_ID, f"rebuild the standby of {run['cluster']}")
    return run


@steps.step("check")
def find_roles(run: dict, **context) -> dict:
    return rebuild.roles_step(PLAN, run, _endpoint)


@task.branch(retries=0)
def rebuild_where(roles: dict) -> str:
    """The node that is not the primary now is rebuilt by its own host's worker."""
    return rebuild.rebuild_task_id(roles["standby"])


def rebuild_step(node: str):
    """The rebuild laid out for ``node``, on its host's queue (the branch picks one)."""

    @steps.step(
        "destructive",
        task_id=rebuild.rebuild_task_id(node),
        milestone="redundancy",
        host=rebuild.NODE_HOSTS[node],
    )
    def rebuild_standby(run: dict, **context) -> dict:
        return rebuild.rebuild_standby(PLAN, run, _endpoint, node=node)

    return rebuild_standby


def record_fields(run: dict, context) -> dict:
    pulled = context["ti"].xcom_pull(task_ids=[rebuild.rebuild_task_id(n) for n in NODES])
    built = next((result for result in pulled or [] if result), {})
    return {
        "rto_target_seconds": run["rto_seconds"],
        "details": {"method": built.get("method"), "standby": built.get("standby")},
    }


@dag(
    dag_id=DAG_ID,
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "scenario", "database", "failback"],
    default_args=DEFAULT_ARGS,
    params={
        **common_params(PLAN, environment_default=None),
        "cluster": Param(
            type="string",
            enum=rebuild.clusters_with_replicas(PLAN),
            title="Cluster",
            description="The cluster whose former primary (the node that is not the "
            "primary now) is rebuilt as a standby.",
            section="Recovery",
        ),
        "prefer_rewind": Param(
            True,
            type="boolean",
            title="Prefer pg_rewind",
            description="pg_rewind when possible (fast: copies only what changed); off: "
            "always a fresh base backup.",
            section="Recovery",
        ),
    },
    doc_md=__doc__,
)
def dr_standby_rebuild():
    run = guard()
    rebuilt = [rebuild_step(node)(run) for node in NODES]
    rebuild_where(find_roles(run)) >> rebuilt
    gate = RtoGate(
        task_id="gate_standby_streaming",
        check=named_check("standby_streams"),
        incident=run,
        plan=PLAN,
        milestone="redundancy",
        trigger_rule="none_failed_min_one_success",  # one rebuild ran, the other skipped
    )
    rebuilt >> gate
    scenario_tail(PLAN, run, [gate], record_fields=record_fields, exclusive=True)


dr_standby_rebuild()
