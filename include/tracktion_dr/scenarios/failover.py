"""dr_failover's decisions: what moves where, the preconditions, the plan of actions the
approval shows (the same list the guard prints), the switch, when the failover is done,
the data lost, and the verdict on an unapproved manual failover.

The mechanics (load balancer API, fencing, ``pg_promote``, the canary) are
``tracktion_dr.services.failover``'s; this module decides and composes them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from tracktion_dr.core.errors import FailoverRefused, InvalidInput
from tracktion_dr.core.plan import Environment, Plan
from tracktion_dr.core.timeline import parse_time
from tracktion_dr.postgres.control import cluster_control
from tracktion_dr.scenarios import GateCheck, SystemAccess, environment_of
from tracktion_dr.services.failover import (
    LoadBalancer,
    canary_data_loss,
    check_database_preconditions,
    check_service_preconditions,
    fence_old_primary,
    promote,
    verify_write,
)
from tracktion_dr.services.recovery import probe_services

log = logging.getLogger(__name__)

APPROVE = "Approve"  # the ApprovalOperator's option that lets the run act


def service_names(plan: Plan) -> list[str]:
    """Every service any environment of the plan knows (the trigger form's hint)."""
    return sorted({name for env in plan.environments.values() for name in env.services})


def approval_timeout(plan: Plan) -> timedelta:
    """How long a manual failover waits for a human: the critical tier's RTO. No answer by
    then means the default, Reject."""
    return min(tier.rto for tier in plan.tiers.values())


# --- guard -------------------------------------------------------------------------------


def _target(environment: Environment, params: Mapping[str, Any]) -> tuple[str, str, str]:
    """(run key, name, tier) of what fails over; refused when the plan does not know it."""
    if params["target"] == "service":
        name, known = params["service"], environment.services
        if name not in known:
            raise InvalidInput("service", f"{name!r} is not one of {sorted(known)}")
        return "service", name, known[name].tier
    name, databases = params["database"], environment.databases
    if name not in databases:
        raise InvalidInput("database", f"{name!r} is not one of {sorted(databases)}")
    cluster = databases[name].cluster
    if not environment.clusters[cluster].replica_conn_id:
        raise InvalidInput(
            "database",
            f"cluster {cluster} of {name!r} has no replica_conn_id in the plan: nothing to "
            "fail over to",
        )
    return "database", name, databases[name].tier


def check_inputs(plan: Plan, incident: dict[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The run: target, mode, the servers, what fails over and its tier's RTO/RPO."""
    environment = environment_of(plan, incident)
    if environment.load_balancer is None:
        raise InvalidInput(
            "environment",
            f"{incident['environment']!r} defines no load_balancer: a failover switches there",
        )
    key, name, tier = _target(environment, params)
    target = params["target"]
    return {
        **incident,
        "target": target,
        "mode": params["mode"],
        "primary_server": params["primary_server"],
        "secondary_server": params["secondary_server"]
        or ("replica" if target == "database" else "secondary"),
        key: name,
        "rto_seconds": plan.tiers[tier].rto.total_seconds(),
        "rpo_seconds": plan.tiers[tier].rpo.total_seconds(),
    }


def locked_resources(run: dict[str, Any], plan: Plan) -> list[str]:
    """What a database failover holds for its run (no restore or PITR of that cluster at
    the same time); a service failover and a dry run lock nothing."""
    if run["target"] != "database" or run["dry_run"]:
        return []
    cluster = environment_of(plan, run).databases[run["database"]].cluster
    return [f"cluster:{cluster}", f"database:{run['database']}"]


def plan_of_actions(plan: Plan, run: dict[str, Any]) -> list[str]:
    """What the run will do once the preconditions hold (and, in manual mode, once a human
    approved): printed by the guard and shown in the approval prompt."""
    primary, secondary = run["primary_server"], run["secondary_server"]
    if run["target"] == "service":
        return [
            f"enable `{secondary}` at weight 100 in the load balancer backend `{run['service']}`",
            f"disable `{primary}` (weight 0)",
            "check that a request routed through the load balancer reaches the secondary",
        ]
    environment = environment_of(plan, run)
    cluster = environment.clusters[environment.databases[run["database"]].cluster]
    return [
        f"fence the old primary ({cluster.data_directory}): first prove the directory is the "
        "old primary (pg_controldata: the standby's system identifier, not in recovery, not "
        f"the standby itself), then stop it if it runs ({cluster_control(cluster).describe()}), "
        "write standby.signal so it can only come back read-only",
        "promote the streaming replica with pg_promote",
        f"repoint the load balancer's `database` backend to `{secondary}`",
        "commit a verification write on the new primary",
        "measure the data lost from the canary heartbeats",
    ]


def started_summary(run: dict[str, Any]) -> str:
    what = run.get("service") or f"database {run.get('database')}"
    return f"{run['mode']} failover of {what}: {run['primary_server']} -> {run['secondary_server']}"


# --- steps -------------------------------------------------------------------------------


def load_balancer(environment: Environment, access: SystemAccess) -> LoadBalancer:
    assert environment.load_balancer is not None  # the guard refused an environment without
    return LoadBalancer(access.url(environment.load_balancer.conn_id))


def database_conninfos(
    environment: Environment, database: str, access: SystemAccess
) -> tuple[str, str]:
    """(primary, replica) conninfos of the database (passwords inside: never log them)."""
    spec = environment.databases[database]
    cluster = environment.clusters[spec.cluster]
    assert cluster.replica_conn_id  # the guard refused a cluster without a replica
    return access.conninfo(cluster.conn_id, spec.name), access.conninfo(
        cluster.replica_conn_id, spec.name
    )


def preconditions(plan: Plan, run: dict[str, Any], access: SystemAccess) -> dict[str, Any]:
    """The primary confirmed down and the secondary confirmed able to take over, or a
    refusal saying which is not (nothing switched)."""
    environment = environment_of(plan, run)
    if run["target"] == "service":
        backend = load_balancer(environment, access).backend(run["service"])
        found = check_service_preconditions(backend, run["primary_server"], run["secondary_server"])
    else:
        found = check_database_preconditions(
            *database_conninfos(environment, run["database"], access)
        )
    plan_text = "\n".join(f"{i}. {a}" for i, a in enumerate(plan_of_actions(plan, run), 1))
    log.info("found: %s\nwill:\n%s", found, plan_text)
    return {"detail": str(found)[:300], "found": found, "plan_text": plan_text}


def approval_branch(run: dict[str, Any]) -> str:
    """The task a run goes through before the switch: ``approve`` (a human) in manual mode."""
    return "approve" if run["mode"] == "manual" else "automatic"


def fence_branch(run: dict[str, Any]) -> list[str]:
    """The tasks after the approval: a database failover fences the old primary before the
    switch (on the old primary's host); a service failover has nothing to fence."""
    return ["fence_old_primary", "switch"] if run["target"] == "database" else ["switch"]


def fence(plan: Plan, run: dict[str, Any], access: SystemAccess) -> dict[str, Any]:
    """Fence the old primary of a database failover, on its host (the step runs on the
    host's worker queue: the data directory is there). Proves the directory is the old
    primary before it stops or writes anything; a fence already in place is kept (a
    re-run only confirms it and rewrites the note)."""
    environment = environment_of(plan, run)
    cluster = environment.clusters[environment.databases[run["database"]].cluster]
    _, replica = database_conninfos(environment, run["database"], access)
    actions = fence_old_primary(cluster, run["incident_id"], standby_conninfo=replica)
    for action in actions:
        log.info("%s", action)
    return {"detail": "; ".join(actions), "actions": actions}


def switch(
    plan: Plan, run: dict[str, Any], access: SystemAccess, fenced: dict[str, Any] | None
) -> dict[str, Any]:
    """Move the traffic. Every part looks before it acts (a promoted replica is not
    promoted again, the balancer set to the same state), so a retry or a re-run of the
    incident continues where the last one stopped.

    A database switch comes after :func:`fence` (``fenced``: its result). None means the
    fence task was marked done by hand - the old primary's host is gone and its worker can
    never take the task -: the switch goes on, and says the balancer is the only fence."""
    environment = environment_of(plan, run)
    balancer = load_balancer(environment, access)
    primary, secondary = run["primary_server"], run["secondary_server"]
    actions: list[str] = []
    if run["target"] == "service":
        balancer.switch(run["service"], primary, secondary)
        actions.append(f"load balancer {run['service']}: {secondary} in")
    else:
        if fenced is None:
            actions.append(
                "the old primary was not fenced by this run (fence_old_primary was marked "
                "done by hand): only the balancer keeps writes away from it - rebuild it "
                "before it is started again"
            )
            log.warning("%s", actions[-1])
        else:
            actions += fenced.get("actions", [])
        _, replica = database_conninfos(environment, run["database"], access)
        actions.append(promote(replica))
        balancer.switch("database", primary, secondary)
        actions.append(f"load balancer database backend -> {secondary}")
    for action in actions:
        log.info("%s", action)
    return {"detail": "; ".join(actions), "actions": actions}


def _database_back(environment: Environment, run: dict[str, Any], access: SystemAccess):
    _, replica = database_conninfos(environment, run["database"], access)
    try:
        written = verify_write(replica)
    except Exception as exc:  # not yet writable: keep waiting
        return False, str(exc).strip().splitlines()[-1][:160]
    # the services that use this database must reach it through the repointed route: their
    # health endpoints check it. (Their functional checks are validation's, on the
    # application host: this gate runs on the triggerer, where the sample files are not.)
    users = [n for n, s in environment.services.items() if run["database"] in s.depends_on]
    probed = probe_services(environment, users, functional=False)
    down = {n: r["detail"] for n, r in probed.items() if not r["healthy"]}
    if down:
        return False, f"{written}; services not back yet: {down}"
    return True, f"{written}; {len(users)} services using it healthy"


def gate_check(plan: Plan, access: SystemAccess) -> GateCheck:
    """Open when the secondary serves: a request routed through the balancer answered by
    it, or a write committed on the new primary and its services healthy."""

    def check(run: dict[str, Any]) -> tuple[bool, str]:
        environment = environment_of(plan, run)
        if run["target"] == "database":
            return _database_back(environment, run, access)
        server, status = load_balancer(environment, access).routed_to(run["service"])
        opened = server == run["secondary_server"] and status == 200
        return opened, f"routed request answered by {server} (HTTP {status})"

    return check


def measure_data_loss(plan: Plan, run: dict[str, Any], access: SystemAccess) -> dict[str, Any]:
    """Data lost = incident time - newest canary heartbeat the new primary holds (a
    service failover loses no data; a dry run switched nothing to measure)."""
    if run["target"] != "database" or run["dry_run"]:
        return {"status": "skipped", "detail": "nothing to measure", "data_loss_seconds": None}
    _, replica = database_conninfos(environment_of(plan, run), run["database"], access)
    measured = canary_data_loss(replica, parse_time(run["started_at"]))
    log.info("data loss: %s", measured)
    return {"detail": f"data lost: {measured['data_loss_seconds']}s", **measured}


def approval_outcome(run: dict[str, Any], asked: bool, decision: dict[str, Any] | None) -> str:
    """The verdict on the approval: a manual failover a human did not approve (Reject, or
    no answer in time: the default is Reject) switched nothing and fails the run, saying so.

    ``asked``: the approval task finished (a human or its timeout answered); ``decision``:
    what it returned, which Airflow keeps only on Approve (a Reject skips the switch and
    returns nothing). A run that stopped before the question (preconditions) has its own
    failure already; an automatic run and a dry run have no approval to judge."""
    if run["mode"] != "manual":
        return "automatic mode: no approval needed"
    if not asked:
        return "not asked: the run stopped before the approval"
    if decision and list(decision.get("chosen_options") or []) == [APPROVE]:
        responder = decision.get("responded_by_user")
        who = responder.get("name") or responder.get("id") if isinstance(responder, dict) else ""
        return f"approved by {who or 'a human'}"
    if run["dry_run"]:
        return "dry run: not approved (nothing would have been switched anyway)"
    raise FailoverRefused(
        "failover not approved (Reject, or no answer in time): nothing switched",
        hint="trigger dr_failover again when it should happen, or recover in place",
    )


def record_fields(
    run: dict[str, Any],
    loss: dict[str, Any] | None,
    decision: dict[str, Any] | None,
    switched: dict[str, Any] | None,
) -> dict[str, Any]:
    loss = loss or {}
    return {
        "rto_target_seconds": run["rto_seconds"],
        "rpo_target_seconds": run["rpo_seconds"] if run["target"] == "database" else None,
        "data_loss_seconds": loss.get("data_loss_seconds"),
        "details": {
            "target": run["target"],
            "mode": run["mode"],
            "approval": decision,
            "switched": bool((switched or {}).get("actions")),
            "newest_surviving_write": loss.get("newest_surviving_write"),
        },
    }
