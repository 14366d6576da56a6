"""Fail back: rebuild the old primary as a standby (``dr_standby_rebuild``) and the planned
switchover back (``dr_switchover``), as plain Python.

A cluster of the plan has two database nodes, named as the plan and the load balancer
name them: ``primary`` (the cluster's ``conn_id`` / ``data_directory``) and ``replica``
(its ``replica_*`` fields). A failover moves the *role* of primary to the replica; the
names stay. So nothing here trusts the names for the roles: every run asks both nodes
(``pg_is_in_recovery``) which one is the primary now, and acts on that.

The mechanics (pg_rewind or a base backup, the clean shutdown, the LSN waits) are
``postgres.rebuild``'s; this module checks the inputs, finds the roles, says what a run
will do, and moves the services and the balancer around the switch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tracktion_dr.core.errors import AlreadyRecovered, FailoverRefused, InvalidInput, StepFailed
from tracktion_dr.core.plan import Cluster, Environment, HostRole, Plan
from tracktion_dr.postgres import rebuild
from tracktion_dr.postgres.commands import Endpoint
from tracktion_dr.postgres.control import cluster_control, wait_until_accepting
from tracktion_dr.postgres.pitr import start_server
from tracktion_dr.postgres.replica import standby_streaming
from tracktion_dr.scenarios import GateCheck, SystemAccess, environment_of, joined
from tracktion_dr.scenarios.replica_reseed import check_inputs as reseed_inputs
from tracktion_dr.scenarios.replica_reseed import clusters_with_replicas
from tracktion_dr.services.failover import LoadBalancer, verify_write
from tracktion_dr.services.recovery import dependency_order, probe_services

log = logging.getLogger(__name__)

NODE_NAMES = ("primary", "replica")
# Where a node's own work runs (the step kit's ``host``): the plan's ``primary`` node on the
# cluster's ``host``, its ``replica`` on the ``replica_host``. Which node a step acts on is
# known only at run time (a failover moves the roles), so such a step is laid out once per
# node and a branch picks the one to run.
NODE_HOSTS: dict[str, HostRole] = {"primary": "database_primary", "replica": "database_replica"}
EndpointOf = Callable[[str], Endpoint]  # conn id -> Endpoint (airflow.support.endpoint)

__all__ = ["clusters_with_replicas"]


# --- the nodes ---------------------------------------------------------------------------


def cluster_nodes(cluster: Cluster, endpoint: EndpointOf) -> dict[str, rebuild.Node]:
    """Both nodes of ``cluster``; the replication role's credentials at each node's own
    address (the role exists on both: a physical standby is a copy)."""
    assert cluster.replica_conn_id and cluster.replication_conn_id  # the guard checked
    replication = endpoint(cluster.replication_conn_id)
    nodes = {}
    for name, conn_id, replica in (
        ("primary", cluster.conn_id, False),
        ("replica", cluster.replica_conn_id, True),
    ):
        admin = endpoint(conn_id)
        nodes[name] = rebuild.Node(
            name,
            admin,
            Endpoint(admin.host, admin.port, replication.user, replication.password),
            cluster_control(cluster, replica=replica),
        )
    return nodes


def find_roles(nodes: Mapping[str, rebuild.Node]) -> dict[str, Any]:
    """Which node is the primary now and which one is (to be) its standby; a refusal
    when there is none, or two."""
    roles = {name: rebuild.node_role(node) for name, node in nodes.items()}
    primaries = [name for name, (role, _) in roles.items() if role == "primary"]
    said = joined({name: f"{role} ({detail})" for name, (role, detail) in roles.items()}, "")
    if len(primaries) != 1:
        raise FailoverRefused(
            f"{'both nodes are' if primaries else 'no node is'} a writable primary: {said}; "
            "nothing was touched",
            hint=(
                "fence the node the load balancer does not point to (dr_failover fences), "
                "then rebuild it"
                if primaries
                else "fail over first (dr_failover target=database), then rebuild"
            ),
        )
    primary = primaries[0]
    other = next(name for name in nodes if name != primary)
    return {"primary": primary, "standby": other, "roles": {n: r for n, (r, _) in roles.items()}}


# --- dr_standby_rebuild --------------------------------------------------------------------


def refuse_in_host_topology(plan: Plan, dag_id: str) -> None:
    """For a DAG whose hosts do not exist when it is parsed (a site failover builds its
    cluster on hosts the recovery site creates at run time): in a plan whose hosts have
    workers its steps would run on a worker that holds none of those directories.
    Refused before anything is touched."""
    queue = plan.queue_for("database_primary") or plan.queue_for("database_replica")
    if queue is not None:
        raise InvalidInput(
            "environments.*.hosts",
            f"{dag_id} acts on data directories chosen at run time and is not yet routed to "
            f"the hosts' worker queues (this plan routes database steps to {queue!r}): its "
            "steps would run on a worker without those directories",
            hint="run it from an Airflow whose workers share the hosts' files (one host), "
            "e.g. the recovery site's own",
        )


def check_rebuild_inputs(
    plan: Plan, incident: dict[str, Any], params: Mapping[str, Any]
) -> dict[str, Any]:
    """The cluster names both nodes completely (like a re-seed) - nothing touched."""
    run = reseed_inputs(plan, incident, dict(params))
    cluster = plan.environment(incident["environment"]).clusters[run["cluster"]]
    run["data_directories"] = {
        "primary": cluster.data_directory,
        "replica": cluster.replica_data_directory,
    }
    run["prefer_rewind"] = bool(params.get("prefer_rewind", True))
    return run


def rebuild_plan_of_actions(run: dict[str, Any]) -> list[str]:
    how = (
        "pg_rewind a copy of it from the new primary when possible (same cluster, data "
        "checksums or wal_log_hints on), else a fresh pg_basebackup"
        if run["prefer_rewind"]
        else "a fresh pg_basebackup of the new primary"
    )
    return [
        f"ask both nodes of {run['cluster']} which one is the primary now; the other is "
        "rebuilt (if it already streams from the primary: stop here, nothing to do)",
        f"salvage its WAL the archive lacks into {run['wal_archive']}.salvage",
        f"stop it and move its data directory aside to <dir>.pre_{run['tag']} (kept)",
        how + ", in a staging directory; standby settings (primary_conninfo to the new "
        f"primary, its slot, its own port, restore_command reading {run['wal_archive']} "
        "when this host has it), then rename it into place",
        "start it (the plan's control) and wait until it streams on the primary's timeline "
        "(a rewound copy that needs WAL neither the primary nor the archive still holds: "
        "replaced by a fresh pg_basebackup)",
    ]


def _cluster(plan: Plan, run: dict[str, Any]) -> Cluster:
    return environment_of(plan, run).clusters[run["cluster"]]


def roles_step(plan: Plan, run: dict[str, Any], endpoint: EndpointOf) -> dict[str, Any]:
    found = find_roles(cluster_nodes(_cluster(plan, run), endpoint))
    return {"detail": f"primary now: {found['primary']}; to rebuild: {found['standby']}", **found}


def log_file_for(node: rebuild.Node, tag: str) -> Path:
    data = node.data_directory
    return data.with_name(f"{data.name}_rebuild_{tag}.log")


def rebuild_task_id(node: str) -> str:
    """The rebuild step laid out for ``node`` (on its host's worker)."""
    return f"rebuild_{node}"


def rebuild_standby(
    plan: Plan, run: dict[str, Any], endpoint: EndpointOf, node: str | None = None
) -> dict[str, Any]:
    """Rebuild the node that is not the primary as its standby (resumable). ``node``: the
    node this step was routed for (its host's worker); refused, nothing touched, when the
    roles say another node is the one to rebuild (they moved since they were read)."""
    cluster = _cluster(plan, run)
    nodes = cluster_nodes(cluster, endpoint)
    found = find_roles(nodes)
    if node is not None and found["standby"] != node:
        raise FailoverRefused(
            f"this step rebuilds {node} (on its host), but {found['standby']} is the node "
            f"that is not the primary now ({found['primary']} is): the roles moved during the "
            "run; nothing was touched",
            hint="re-run dr_standby_rebuild: it reads the roles again",
        )
    new_primary, old = nodes[found["primary"]], nodes[found["standby"]]
    result = rebuild.rebuild_as_standby(
        new_primary,
        old,
        log_file_for(old, run["tag"]),
        tag=run["tag"],
        incident_id=run["incident_id"],
        cluster_name=run["cluster"],
        wal_archive=Path(run["wal_archive"]),
        bindir=Path(cluster.bin_dir),
        prefer_rewind=run.get("prefer_rewind", True),
    )
    return {**result, "primary": new_primary.name, "standby": old.name}


def standby_streams(plan: Plan, endpoint: EndpointOf) -> GateCheck:
    """Open when the node that is not the primary streams from it on its timeline."""

    def check(run: dict[str, Any]) -> tuple[bool, str]:
        nodes = cluster_nodes(_cluster(plan, run), endpoint)
        try:
            found = find_roles(nodes)
        except FailoverRefused as exc:
            return False, str(exc).splitlines()[0]
        primary, standby = nodes[found["primary"]], nodes[found["standby"]]
        return standby_streaming(primary.admin, standby.admin, standby.name)

    return check


# --- dr_switchover -------------------------------------------------------------------------


def check_switchover_inputs(
    plan: Plan, incident: dict[str, Any], params: Mapping[str, Any]
) -> dict[str, Any]:
    """The window confirmed, a known node to switch to, a complete cluster; nothing touched."""
    if not params.get("maintenance_window_confirmed"):
        raise InvalidInput(
            "maintenance_window_confirmed",
            "a switchover stops every write for its duration and restarts the services "
            "that use the database: it runs only in a maintenance window",
            hint="announce the window, then trigger again with maintenance_window_confirmed = true",
        )
    to_node = str(params.get("to_node") or "")
    if to_node not in NODE_NAMES:
        raise InvalidInput("to_node", f"{to_node or 'nothing'!r} is not one of {NODE_NAMES}")
    catch_up = float(params.get("catch_up_seconds") or rebuild.CATCH_UP_SECONDS)
    if catch_up <= 0:
        raise InvalidInput("catch_up_seconds", f"{catch_up:g} is not a positive number")
    run = check_rebuild_inputs(plan, incident, params)
    environment = environment_of(plan, run)
    if environment.load_balancer is None:
        raise InvalidInput(
            "environment",
            f"{incident['environment']!r} defines no load_balancer: the switch repoints "
            "its database backend",
        )
    databases = [n for n, db in environment.databases.items() if db.cluster == run["cluster"]]
    if not databases:
        raise InvalidInput(
            "cluster",
            f"no database of the plan lives on cluster {run['cluster']!r}: the switchover "
            "proves the new primary by a write into one",
            hint="name the cluster of a plan database",
        )
    return {
        **run,
        "to_node": to_node,
        "from_node": source_node(to_node),
        "catch_up_seconds": catch_up,
        "databases": databases,
        "services": services_using(environment, databases),
        "prefer_rewind": True,
    }


def source_node(to_node: str) -> str:
    """The node a switchover to ``to_node`` moves the primary role away from (it must be
    the primary now: the preconditions check). Its host runs every step that acts on a
    node's files or processes - the note, the clean shutdown, the give-back, the rebuild -
    so those steps are laid out once per node and a branch picks this one."""
    return next(node for node in NODE_NAMES if node != to_node)


def switchover_task_id(step: str, source: str) -> str:
    """The ``step`` laid out for a switchover away from ``source`` (on its host)."""
    return f"{step}_from_{source}"


def services_using(environment: Environment, databases: list[str]) -> list[str]:
    users = [
        name
        for name, service in environment.services.items()
        if any(db in service.depends_on for db in databases)
    ]
    return dependency_order(environment, users)


def switchover_plan_of_actions(run: dict[str, Any]) -> list[str]:
    to, services = run["to_node"], ", ".join(run["services"]) or "none"
    return [
        f"check that {to} is a standby streaming from the primary and replays the primary's "
        f"current LSN within {run['catch_up_seconds']:.0f}s (else refuse: nothing touched)",
        f"stop the services that use the database ({services})",
        "stop writes on the primary: default_transaction_read_only, client sessions ended",
        f"wait until {to} replayed exactly the primary's current LSN",
        "shut the primary down cleanly; check its shutdown checkpoint reached "
        f"{to}; promote {to} (pg_promote); repoint the load balancer's database backend",
        f"start the services again; gate: a write commits on {to}, the services are healthy",
        "rebuild the old primary as a standby of the new one (pg_rewind after the clean "
        "shutdown, a fresh base backup otherwise); gate: it streams",
    ]


def resume_decision(
    note: Mapping[str, Any] | None, incident_id: str, to_node: str, to_role: str, old_state: str
) -> str | None:
    """What is left of *this incident's own* switchover to ``to_node`` when a run was killed
    after the old primary's clean shutdown (``old_state``: its ``pg_controldata`` state,
    or ``running``); None when the nodes show no such half-done switchover (the ordinary
    checks then decide, and refuse another incident's leftovers as before)."""
    if not note or note.get("incident_id") != incident_id or note.get("to_node") != to_node:
        return None
    if old_state != "shut down":
        return None
    if note.get("balancer_switched_at"):
        return None  # the switch finished: only the rebuild is left (AlreadyRecovered says)
    if to_role == "primary":
        return (
            f"{to_node} already promoted by this incident's switchover: the balancer is "
            "repointed, the services started and the old primary rebuilt next"
        )
    if to_role == "standby":
        return (
            f"the old primary was shut down cleanly by this incident's switchover, {to_node} "
            "not promoted yet: its shutdown checkpoint is checked on it, then it is promoted"
        )
    return None


def own_switchover_left(nodes: Mapping[str, rebuild.Node], run: dict[str, Any]) -> str | None:
    """:func:`resume_decision` for the live nodes (the note is read first: only this
    incident's own note makes the nodes worth asking)."""
    to = nodes[run["to_node"]]
    old = next(node for name, node in nodes.items() if name != to.name)
    note = rebuild.read_switchover_note(old)
    if not note or note.get("incident_id") != run["incident_id"]:
        return None
    to_role, _ = rebuild.node_role(to)
    return resume_decision(note, run["incident_id"], to.name, to_role, rebuild.shutdown_state(old))


def switchover_preconditions(
    plan: Plan, run: dict[str, Any], endpoint: EndpointOf
) -> dict[str, Any]:
    nodes = cluster_nodes(_cluster(plan, run), endpoint)
    to = nodes[run["to_node"]]
    left = own_switchover_left(nodes, run)
    if left is not None:
        old = next(name for name in nodes if name != to.name)
        log.warning("resuming this incident's switchover: %s", left)
        return {"detail": f"resuming: {left}", "from_node": old, "resumed": True}
    found = find_roles(nodes)
    if found["primary"] == to.name:
        streaming, why = standby_streaming(
            to.admin, nodes[found["standby"]].admin, found["standby"]
        )
        raise AlreadyRecovered(
            f"{to.name} is already the primary ({why}): nothing to switch",
            hint="nothing to do" if streaming else "rebuild the standby (dr_standby_rebuild)",
        )
    checked = rebuild.switchover_preconditions(
        nodes[found["primary"]], to, catch_up_seconds=run["catch_up_seconds"]
    )
    return {**checked, "from_node": found["primary"]}


def stop_services(plan: Plan, run: dict[str, Any], access: SystemAccess) -> dict[str, Any]:
    """Stop the database's users, dependents first (the reverse of the start order)."""
    environment = environment_of(plan, run)
    for name in reversed(run["services"]):
        spec = environment.services[name]
        access.controller(environment.controllers[spec.controller]).stop(spec.unit or name)
    return {"detail": f"stopped {', '.join(run['services']) or 'nothing'}"}


def start_services(plan: Plan, run: dict[str, Any], access: SystemAccess) -> dict[str, Any]:
    """Start the database's users again, in dependency order."""
    environment = environment_of(plan, run)
    for name in run["services"]:
        spec = environment.services[name]
        access.controller(environment.controllers[spec.controller]).start(spec.unit or name)
    return {"detail": f"started {', '.join(run['services']) or 'nothing'}"}


def give_writes_back(plan: Plan, run: dict[str, Any], endpoint: EndpointOf) -> dict[str, Any]:
    """The step before the services start again, whatever the switch did (on the old
    primary's host: it reads the note beside its data directory and its shutdown state)."""
    return {"detail": writes_given_back(plan, run, endpoint) or "nothing to give back"}


def writes_given_back(plan: Plan, run: dict[str, Any], endpoint: EndpointOf) -> str:
    """'' unless this incident's switchover stopped writes and did not promote: then the
    old primary, still running but read-only, accepts writes again (said, never hidden);
    shut down and not promoted, the database is down: said, and re-running the same
    incident finishes the switchover."""
    nodes = cluster_nodes(_cluster(plan, run), endpoint)
    to = nodes[run["to_node"]]
    old = next(node for name, node in nodes.items() if name != to.name)
    note = rebuild.read_switchover_note(old)
    if not note or note.get("incident_id") != run["incident_id"] or note.get("to_node") != to.name:
        return ""
    to_role, _ = rebuild.node_role(to)
    if to_role != "standby":
        return ""  # promoted (or down): not the old primary's writes to give back
    old_role, said = rebuild.node_role(old)
    if old_role == "down":
        said = (
            f"{old.name} is down ({rebuild.shutdown_state(old)}) and {to.name} was not "
            "promoted: the database takes no writes; re-run dr_switchover with the same "
            "incident_id to finish the switchover"
        )
        log.warning("%s", said)
        return said
    if old_role != "primary":
        return ""
    try:
        if not rebuild.read_only(old):
            return ""
        said = (
            f"the switch stopped before the promotion and left {old.name} read-only: "
            + rebuild.allow_writes(old)
        )
    except Exception as exc:
        said = f"could not make {old.name} writable again: {exc}"
    log.warning("%s", said)
    return said


def switch(
    plan: Plan, run: dict[str, Any], endpoint: EndpointOf, access: SystemAccess
) -> dict[str, Any]:
    """Note this incident's switchover beside the old primary, stop writes, wait for the exact
    catch-up, shut the primary down cleanly, promote, repoint the balancer. Resumable: a
    promoted target skips to the balancer; a primary already shut down cleanly is only
    checked (the preconditions let this incident's own half-done switchover through).
    Given up before the promotion, the old primary is made writable again (started if it
    was stopped) and the step fails."""
    environment = environment_of(plan, run)
    nodes = cluster_nodes(_cluster(plan, run), endpoint)
    to = nodes[run["to_node"]]
    old = next(node for name, node in nodes.items() if name != to.name)
    actions: list[str] = []
    to_role, said = rebuild.node_role(to)
    if to_role == "down":
        raise StepFailed(f"{to.name} does not answer ({said}): not switching")
    if to_role == "standby":
        if old.control.is_running():  # before the first write stop: a re-run finds it
            actions.append(rebuild.write_switchover_note(to, old, run["incident_id"]))
        try:
            if old.control.is_running():
                actions.append(rebuild.stop_writes(old))
                actions.append(rebuild.wait_caught_up(old, to, run["catch_up_seconds"])["detail"])
            actions.append(rebuild.shut_down_cleanly(old, to, run["catch_up_seconds"]))
        except Exception as exc:
            actions.append(give_back(old, run))
            raise StepFailed(
                f"switchover given up before the promotion ({exc}); " + "; ".join(actions)
            ) from exc
        actions.append(rebuild.promote(to))
    else:
        actions.append(f"{to.name} is already promoted")
    actions.append(rebuild.allow_writes(to))
    actions.append(rebuild.forget_upstream(to))
    assert environment.load_balancer is not None  # the guard refused an environment without
    LoadBalancer(access.url(environment.load_balancer.conn_id)).switch(
        "database", old.name, to.name
    )
    actions.append(f"load balancer database backend -> {to.name}")
    rebuild.note_balancer_switched(old)
    for action in actions:
        log.info("%s", action)
    return {"detail": "; ".join(actions), "actions": actions, "old_primary": old.name}


def give_back(old: rebuild.Node, run: dict[str, Any]) -> str:
    """The switchover did not happen: the old primary serves writes again (started if the
    clean shutdown already happened). Said, never hidden: the operator must know."""
    notes = []
    try:
        if not old.control.is_running():
            start_server(old.control, log_file_for(old, run["tag"]))
            notes.append(f"started {old.name} again")
        if not wait_until_accepting(old.data_directory, rebuild.CATCH_UP_SECONDS):
            return "; ".join([*notes, f"{old.name} does not accept connections: see its log"])
        notes.append(rebuild.allow_writes(old))
    except Exception as exc:
        notes.append(f"could not make {old.name} writable again: {exc}")
    return "; ".join(notes)


def new_primary_serves(plan: Plan, access: SystemAccess) -> GateCheck:
    """Open when a write commits on the new primary and the services using it are healthy."""

    def check(run: dict[str, Any]) -> tuple[bool, str]:
        environment = environment_of(plan, run)
        cluster = environment.clusters[run["cluster"]]
        conn_id = cluster.conn_id if run["to_node"] == "primary" else cluster.replica_conn_id
        assert conn_id
        try:
            written = verify_write(access.conninfo(conn_id, run["databases"][0]))
        except Exception as exc:  # not writable yet: keep waiting
            return False, str(exc).strip().splitlines()[-1][:160]
        down = {
            n: r["detail"]
            for n, r in probe_services(environment, run["services"]).items()
            if not r["healthy"]
        }
        if down:
            return False, f"{written}; services not back yet: {down}"
        return True, f"{written}; {len(run['services'])} services using it healthy"

    return check
