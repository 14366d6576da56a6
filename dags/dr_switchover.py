"""
### DR planned switchover (fail back, part 2)

Moves the primary role to the node that is its streaming standby **with zero data loss**,
on request, in a maintenance window: typically back to the home primary after
`dr_failover` and `dr_standby_rebuild` (`to_node = primary`). Writes stop for the length
of the switch, and the services that use the database are restarted.

1. **guard** - `maintenance_window_confirmed` must be set (a switchover stops every write);
   the cluster names both nodes; the cluster is locked for the run. `switch_from` picks the
   node the role moves away from (the one that is not `to_node`): the steps marked *(old
   primary's host)* are laid out once per node (`..._from_primary`, `..._from_replica`) and
   only that node's set runs, on its host's worker; the other set is skipped.
2. **preconditions** *(old primary's host)* - `to_node` is a standby **streaming** from the
   primary and replays the primary's current LSN within `catch_up_seconds`; otherwise the
   run is **refused before anything is touched** (`to_node` already the primary: nothing to
   do, says so).
3. **stop_services** - the services that use the database, dependents first.
4. **switch** *(old primary's host)* - writes stopped on the primary
   (`default_transaction_read_only`, client sessions ended); wait until `to_node` replayed
   **exactly** the primary's current LSN; the primary **shut down cleanly** and its
   shutdown checkpoint proven replayed on `to_node`; `pg_promote`; the load balancer's
   `database` backend repointed. Given up before the promotion (no catch-up in time, no
   clean shutdown): the old primary is made writable again (started if needed), nothing
   was switched, and the step fails saying so.
5. **give_writes_back** *(old primary's host, runs whatever the switch did)* - an old
   primary this incident left read-only without a promotion is made writable again; then
   **start_services** (runs whatever happened), in dependency order.
6. **gate_new_primary** - a write commits on the new primary and its services are healthy
   (the RTO clock's "service restored").
7. **rebuild_primary** / **rebuild_replica** *(old primary's host)* - the old primary
   becomes the new one's standby (after a clean shutdown pg_rewind has nothing to undo);
   **gate_standby_streaming** - it streams.
8. **record**, **notify_outcome**, **publish**, **verdict**.

**Where each step runs** (a plan with `hosts`, CeleryExecutor): the old primary's steps on
its host (they read and write beside its data directory, stop and start it); the services
where their controller runs (supervisord: the default queue); the new primary's gate where
the functional checks' samples are; everything else (`pg_promote`, the balancer, the
streaming gate) over the network on the default queue.

**Killed mid-way?** Re-run with the same `incident_id`: `switch` notes the incident and
its target beside the old primary's data directory before it stops writes, so the
preconditions recognise this incident's own half-done switchover (the old primary shut
down cleanly; `to_node` promoted or not) and let it finish: a promoted `to_node` skips to
the balancer; a primary already shut down cleanly is only checked, then `to_node` is
promoted; the rebuild is resumable. Another incident finding that state is refused as
before. Killed after the write stop but before the promotion, `give_writes_back` makes the
old primary writable again (and says so) before the services start.

**Params**: `cluster`, `to_node` (`primary` or `replica`, the plan's node names),
`maintenance_window_confirmed`, `catch_up_seconds`, plus the common params (`dry_run`
checks the preconditions, prints the plan, touches nothing).
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Param, dag, task

from tracktion_dr.airflow import steps
from tracktion_dr.airflow.access import ACCESS
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
from tracktion_dr.scenarios import config, rebuild

PLAN = load_plan()
DAG_ID = "dr_switchover"
NODES = rebuild.NODE_NAMES


def _endpoint(conn_id: str):
    from tracktion_dr.airflow.support import endpoint

    return endpoint(conn_id)


@steps.guard()
def guard(**context) -> dict:
    run = rebuild.check_switchover_inputs(PLAN, open_incident(context, PLAN), context["params"])
    if not run["dry_run"]:
        run.update(take_exclusivity(context, run, [f"cluster:{run['cluster']}"]))
    steps.print_plan_of_actions(run, rebuild.switchover_plan_of_actions(run))
    notify_started(PLAN, run, DAG_ID, f"switch {run['cluster']} over to {run['to_node']}")
    return run


@task.branch(retries=0)
def switch_from(run: dict) -> str:
    """The node the primary role moves away from: its host runs the node's own steps."""
    return rebuild.switchover_task_id("preconditions", run["from_node"])


def on_the_old_primary(node: str):
    """The steps that act on the old primary's files and processes, laid out for ``node``
    on its host's queue (the branch runs one set; the other is skipped)."""
    host = rebuild.NODE_HOSTS[node]

    @steps.step("check", task_id=rebuild.switchover_task_id("preconditions", node), host=host)
    def preconditions(run: dict, **context) -> dict:
        return rebuild.switchover_preconditions(PLAN, run, _endpoint)

    # Not retried: a switch that gave up has already stopped writes once and made the
    # primary writable again; a retry would stop them again in the same window (re-run).
    @steps.step(
        "destructive", task_id=rebuild.switchover_task_id("switch", node), host=host, retries=0
    )
    def switch(run: dict, **context) -> dict:
        return rebuild.switch(PLAN, run, _endpoint, ACCESS)

    # Whatever the switch did; never for the other node's set (see the graph below).
    @steps.step(
        "destructive",
        after_all=True,
        task_id=rebuild.switchover_task_id("give_writes_back", node),
        host=host,
        trigger_rule="none_skipped",
    )
    def give_writes_back(run: dict, **context) -> dict:
        return rebuild.give_writes_back(PLAN, run, _endpoint)

    @steps.step(
        "destructive", task_id=rebuild.rebuild_task_id(node), milestone="redundancy", host=host
    )
    def rebuild_old_primary(run: dict, **context) -> dict:
        return rebuild.rebuild_standby(PLAN, run, _endpoint, node=node)

    return preconditions, switch, give_writes_back, rebuild_old_primary


# The services stop once one node's preconditions passed (the other node's are skipped).
@steps.step(
    "destructive", host=config.restart_host(PLAN), trigger_rule="none_failed_min_one_success"
)
def stop_services(run: dict, **context) -> dict:
    return rebuild.stop_services(PLAN, run, ACCESS)


@steps.step("destructive", after_all=True, host=config.restart_host(PLAN))
def start_services(run: dict, **context) -> dict:
    return rebuild.start_services(PLAN, run, ACCESS)


def record_fields(run: dict, context) -> dict:
    ti = context["ti"]
    switched = ti.xcom_pull(task_ids=rebuild.switchover_task_id("switch", run["from_node"])) or {}
    built = ti.xcom_pull(task_ids=rebuild.rebuild_task_id(run["from_node"])) or {}
    return {
        "rto_target_seconds": run["rto_seconds"],
        # a planned switchover loses nothing by construction (exact catch-up, clean
        # shutdown); the gate's verification write proves the new primary takes writes
        "details": {
            "to_node": run["to_node"],
            "switched": bool(switched.get("actions")),
            "rebuild_method": built.get("method"),
        },
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
            description="The cluster whose primary role moves (from the DR plan).",
            section="Switchover",
        ),
        "to_node": Param(
            "primary",
            type="string",
            enum=list(rebuild.NODE_NAMES),
            title="Switch to",
            description="The node that becomes the primary: `primary` (the plan's home "
            "primary: fail back) or `replica`. It must be a streaming standby now.",
            section="Switchover",
        ),
        "maintenance_window_confirmed": Param(
            False,
            type="boolean",
            title="Maintenance window confirmed",
            description="Writes stop and the database's services restart during the "
            "switch: set only inside an announced maintenance window.",
            section="Switchover",
        ),
        "catch_up_seconds": Param(
            60,
            type="integer",
            minimum=1,
            title="Catch-up limit (seconds)",
            description="How long the standby may take to replay the primary's LSN, before "
            "(refused, nothing touched) and after writes stop (given up, writes resume).",
            section="Switchover",
        ),
    },
    doc_md=__doc__,
)
def dr_switchover():
    run = guard()
    chosen = switch_from(run)
    services_stopped = stop_services(run)
    services_started = start_services()
    switched, rebuilt = [], []
    for node in NODES:
        preconditions, switch, give_writes_back, rebuild_old_primary = on_the_old_primary(node)
        checked, switch_done = preconditions(run), switch(run)
        # the other node's set is skipped: its switch waits on its own preconditions too
        chosen >> checked >> services_stopped
        given_back = give_writes_back()
        [checked, services_stopped] >> switch_done
        # after the switch, whatever it did - only in the chosen set: a skipped check (the
        # other node's) skips it, a failed one lets it look
        [checked, switch_done] >> given_back >> services_started
        rebuilt_node = rebuild_old_primary(run)
        switch_done >> rebuilt_node
        switched.append(switch_done)
        rebuilt.append(rebuilt_node)
    service_gate = RtoGate(
        task_id="gate_new_primary",
        check=named_check("new_primary_serves"),
        incident=run,
        plan=PLAN,
        trigger_rule="none_failed_min_one_success",  # one switch ran, the other skipped
        **steps.on_host(config.gate_host(PLAN)),  # functional checks read their samples
    )
    # the gate waits only for a switch that happened (start_services runs whatever did)
    [*switched, services_started] >> service_gate
    redundancy_gate = RtoGate(
        task_id="gate_standby_streaming",
        check=named_check("standby_streams"),
        incident=run,
        plan=PLAN,
        milestone="redundancy",
        trigger_rule="none_failed_min_one_success",
    )
    service_gate >> rebuilt
    rebuilt >> redundancy_gate
    scenario_tail(PLAN, run, [redundancy_gate], record_fields=record_fields, exclusive=True)


dr_switchover()
