"""
### DR failover

Moves a service or the database from its primary to its secondary. Replaces the seed's
`automated_failover.sh` and `manual_failover.sh` (the latter is this DAG with
`mode = manual`).

**Target `service`** (through the load balancer API, `backends/{service}/servers/{host}`):
the primary server is confirmed **unhealthy** and the secondary confirmed **healthy**
(otherwise the run stops, says why, and switches nothing); the secondary is enabled at
weight 100, then the primary disabled at weight 0; `gate_failover` opens only when a
request routed through the balancer is answered by the secondary.

**Target `database`**: the primary is confirmed down and the replica a reachable standby;
then the old primary is **fenced** (a running postmaster stopped, `standby.signal` and a
`DR_FENCED` note written into its data directory, so it comes back read-only), the replica
is promoted (`pg_promote`), the balancer's `database` backend repointed to it (the services
find the writable database there), `gate_failover` opens when a write commits on the new
primary, and `measure_data_loss` reports the data lost: incident time − newest canary
heartbeat that survived.

**Mode `manual`**: before anything is touched, `approve` (Airflow's human-in-the-loop
approval) shows what will happen and waits; the run proceeds only on **Approve**. Reject
(or no answer within the tier's RTO) switches nothing and fails the run saying so.

**Params**: `target`, `mode`, `service` (for a service failover), `primary_server` /
`secondary_server` (names in the balancer backend; defaults `primary` and `secondary`, or
`replica` for the database), plus the common params (`dry_run` checks the preconditions and
prints the plan, touches nothing).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, dag, task

from tracktion_dr.dag_kit import RtoGate, publish_task
from tracktion_dr.dag_support import DEFAULT_ARGS, common_params
from tracktion_dr.plan import load_plan

log = logging.getLogger(__name__)

PLAN = load_plan()
DAG_ID = "dr_failover"
SERVICES = sorted({name for env in PLAN.environments.values() for name in env.services})
# The approval waits at most this long (the critical tier's RTO): no answer means Reject.
APPROVAL_TIMEOUT = min(t.rto for t in PLAN.tiers.values())


def load_balancer(environment):
    from airflow.sdk import Connection

    from tracktion_dr.failover import LoadBalancer

    if environment.load_balancer is None:
        raise ValueError("environment: the plan defines no load_balancer here")
    connection = Connection.get(environment.load_balancer.conn_id)
    scheme = connection.schema or "http"
    return LoadBalancer(f"{scheme}://{connection.host}:{connection.port or 80}")


def database_conninfos(environment, database: str) -> tuple[str, str]:
    from tracktion_dr.dag_support import conninfo

    spec = environment.databases[database]
    cluster = environment.clusters[spec.cluster]
    if not cluster.replica_conn_id:
        raise ValueError(f"database: cluster {spec.cluster} has no replica_conn_id in the plan")
    return conninfo(cluster.conn_id, spec.name), conninfo(cluster.replica_conn_id, spec.name)


def failover_done(incident: dict) -> tuple[bool, str]:
    from tracktion_dr.failover import verify_write
    from tracktion_dr.plan import load_plan as current_plan

    environment = current_plan().environment(incident["environment"])
    if incident["target"] == "service":
        server, status = load_balancer(environment).routed_to(incident["service"])
        opened = server == incident["secondary_server"] and status == 200
        return opened, f"routed request answered by {server} (HTTP {status})"
    from tracktion_dr.services.recovery import probe_services

    _, replica = database_conninfos(environment, incident["database"])
    try:
        written = verify_write(replica)
    except Exception as exc:  # not yet writable: keep waiting
        return False, str(exc).strip().splitlines()[-1][:160]
    # the services that use this database must reach it through the repointed route
    users = [n for n, s in environment.services.items() if incident["database"] in s.depends_on]
    down = {
        n: r["detail"] for n, r in probe_services(environment, users).items() if not r["healthy"]
    }
    if down:
        return False, f"{written}; services not back yet: {down}"
    return True, f"{written}; {len(users)} services using it healthy"


@dag(
    dag_id=DAG_ID,
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "scenario", "failover"],
    default_args=DEFAULT_ARGS,
    params={
        **common_params(PLAN, environment_default=None),
        "target": Param(
            type="string",
            enum=["service", "database"],
            title="Target",
            description="Fail over one service (load balancer) or the database (promote the replica).",
            section="Failover",
        ),
        "mode": Param(
            "automatic",
            type="string",
            enum=["automatic", "manual"],
            title="Mode",
            description="manual: wait for a human approval in the Airflow UI before acting.",
            section="Failover",
        ),
        "service": Param(
            "",
            type="string",
            title="Service",
            description=f"For target=service: one of {', '.join(SERVICES)}.",
            section="Failover",
        ),
        "database": Param(
            "tracktion",
            type="string",
            title="Database",
            description="For target=database: the plan's database whose cluster fails over.",
            section="Failover",
        ),
        "primary_server": Param(
            "primary",
            type="string",
            title="Primary server",
            description="The server to move away from, as named in the load balancer backend.",
            section="Failover",
        ),
        "secondary_server": Param(
            "",
            type="string",
            title="Secondary server",
            description="The server to move to (empty: 'secondary' for a service, 'replica' "
            "for the database).",
            section="Failover",
        ),
    },
    doc_md=__doc__,
)
def dr_failover():
    @task(retries=0)
    def guard(**context) -> dict:
        from tracktion_dr.dag_kit import open_incident
        from tracktion_dr.incident import InvalidInput
        from tracktion_dr.notify.runs import notify_started

        incident = open_incident(context, PLAN)
        environment = PLAN.environment(incident["environment"])
        params = context["params"]
        target = params["target"]
        incident.update(
            target=target,
            mode=params["mode"],
            primary_server=params["primary_server"],
            secondary_server=params["secondary_server"]
            or ("replica" if target == "database" else "secondary"),
        )
        if target == "service":
            if params["service"] not in environment.services:
                raise InvalidInput(
                    "service", f"{params['service']!r} is not one of {sorted(environment.services)}"
                )
            incident["service"] = params["service"]
            tier = environment.services[params["service"]].tier
        else:
            if params["database"] not in environment.databases:
                raise InvalidInput(
                    "database",
                    f"{params['database']!r} is not one of {sorted(environment.databases)}",
                )
            incident["database"] = params["database"]
            tier = environment.databases[params["database"]].tier
        incident["rto_seconds"] = PLAN.tiers[tier].rto.total_seconds()
        incident["rpo_seconds"] = PLAN.tiers[tier].rpo.total_seconds()
        what = incident.get("service") or f"database {incident.get('database')}"
        notify_started(
            PLAN,
            incident,
            DAG_ID,
            f"{params['mode']} failover of {what}: {incident['primary_server']} -> "
            f"{incident['secondary_server']}",
        )
        return incident

    @task(retries=0)
    def preconditions(incident: dict) -> dict:
        from tracktion_dr import failover
        from tracktion_dr.dag_kit import now_iso, step_event

        started = now_iso()
        environment = PLAN.environment(incident["environment"])
        if incident["target"] == "service":
            backend = load_balancer(environment).backend(incident["service"])
            found = failover.check_service_preconditions(
                backend, incident["primary_server"], incident["secondary_server"]
            )
            steps = [
                f"enable `{incident['secondary_server']}` at weight 100 in the load balancer "
                f"backend `{incident['service']}`",
                f"disable `{incident['primary_server']}` (weight 0)",
                "check that a request routed through the load balancer reaches the secondary",
            ]
        else:
            primary, replica = database_conninfos(environment, incident["database"])
            found = failover.check_database_preconditions(primary, replica)
            cluster = environment.clusters[environment.databases[incident["database"]].cluster]
            steps = [
                f"fence the old primary ({cluster.data_directory}): stop it if it runs, "
                "write standby.signal so it can only come back read-only",
                "promote the streaming replica with pg_promote",
                f"repoint the load balancer's `database` backend to `{incident['secondary_server']}`",
                "commit a verification write on the new primary",
                "measure the data lost from the canary heartbeats",
            ]
        plan_text = "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1))
        log.info("found: %s\nwill:\n%s", found, plan_text)
        return {
            "event": step_event("preconditions", started, detail=str(found)[:300]),
            "found": found,
            "plan_text": plan_text,
        }

    @task.branch(retries=0)
    def approval_path(incident: dict) -> str:
        return "approve" if incident["mode"] == "manual" else "automatic"

    approve = ApprovalOperator(
        task_id="approve",
        subject="Failover {{ params.target }} in {{ params.environment }}: approve?",
        body=(
            "**Incident** {{ ti.xcom_pull(task_ids='guard')['incident_id'] }}\n\n"
            "**Found**: {{ ti.xcom_pull(task_ids='preconditions')['found'] }}\n\n"
            "**On Approve, this run will:**\n\n"
            "{{ ti.xcom_pull(task_ids='preconditions')['plan_text'] }}\n\n"
            "Reject (or no answer in time) switches nothing."
        ),
        defaults="Reject",
        response_timeout=APPROVAL_TIMEOUT,
        retries=0,
    )

    @task(retries=0)
    def automatic() -> None:
        log.info("mode automatic: no approval needed")

    @task(trigger_rule="none_failed_min_one_success", retries=0)
    def switch(incident: dict) -> dict:
        from tracktion_dr import failover
        from tracktion_dr.dag_kit import now_iso, step_event

        started = now_iso()
        if incident["dry_run"]:
            return {"event": step_event("switch", started, "skipped", "dry run: nothing switched")}
        environment = PLAN.environment(incident["environment"])
        balancer = load_balancer(environment)
        actions: list[str] = []
        if incident["target"] == "service":
            balancer.switch(
                incident["service"], incident["primary_server"], incident["secondary_server"]
            )
            actions.append(
                f"load balancer {incident['service']}: {incident['secondary_server']} in"
            )
        else:
            spec = environment.databases[incident["database"]]
            cluster = environment.clusters[spec.cluster]
            actions += failover.fence_old_primary(cluster, incident["incident_id"])
            _, replica = database_conninfos(environment, incident["database"])
            actions.append(failover.promote(replica))
            balancer.switch("database", incident["primary_server"], incident["secondary_server"])
            actions.append(f"load balancer database backend -> {incident['secondary_server']}")
        for action in actions:
            log.info("%s", action)
        return {
            "event": step_event("switch", started, detail="; ".join(actions)),
            "actions": actions,
        }

    incident = guard()
    checked = preconditions(incident)
    path = approval_path(incident)
    checked >> path
    switched = switch(incident)
    path >> [approve, automatic()] >> switched
    gate = RtoGate(
        task_id="gate_failover",
        check=failover_done,
        incident=incident,
        plan=PLAN,
        poke_interval=2,
    )
    switched >> gate

    @task(retries=0)
    def measure_data_loss(incident: dict) -> dict:
        from tracktion_dr.failover import canary_data_loss
        from tracktion_dr.timeline import parse_time

        if incident["target"] != "database" or incident["dry_run"]:
            return {"data_loss_seconds": None}
        _, replica = database_conninfos(
            PLAN.environment(incident["environment"]), incident["database"]
        )
        measured = canary_data_loss(replica, parse_time(incident["started_at"]))
        log.info("data loss: %s", measured)
        return measured

    measured = measure_data_loss(incident)
    gate >> measured

    @task(trigger_rule="all_done", retries=0)
    def record(incident: dict, **context) -> dict:
        from tracktion_dr.dag_kit import record_timeline

        ti = context["ti"]
        loss = ti.xcom_pull(task_ids="measure_data_loss") or {}
        decision = ti.xcom_pull(task_ids="approve")
        return record_timeline(
            context,
            incident=incident,
            rto_target_seconds=incident["rto_seconds"],
            rpo_target_seconds=incident["rpo_seconds"]
            if incident["target"] == "database"
            else None,
            data_loss_seconds=loss.get("data_loss_seconds"),
            details={
                "target": incident["target"],
                "mode": incident["mode"],
                "approval": decision,
                "switched": bool((ti.xcom_pull(task_ids="switch") or {}).get("actions")),
                "newest_surviving_write": loss.get("newest_surviving_write"),
            },
        )

    @task(trigger_rule="all_done", retries=0)
    def notify_outcome(incident: dict, timeline: dict) -> dict:
        from tracktion_dr.notify.runs import notify_outcome as send

        return send(PLAN, incident, timeline)

    @task(retries=0)
    def verdict(timeline: dict) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        from tracktion_dr.dag_kit import raise_for_outcome

        raise_for_outcome(timeline)
        details = timeline["details"]
        if (
            details["mode"] == "manual"
            and not details["switched"]
            and timeline["outcome"] != "dry_run"
        ):
            raise AirflowFailException(
                f"failover not approved ({details['approval']}): nothing switched"
            )

    recorded = record(incident)
    measured >> recorded
    [notify_outcome(incident, recorded), publish_task(PLAN, recorded)] >> verdict(recorded)


dr_failover()
