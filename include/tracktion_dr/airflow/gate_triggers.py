"""Waiting on the triggerer: named gate checks, the gate trigger and the watch trigger.

An RTO gate (``dag_kit.RtoGate``) pokes in the worker for a short *fast window* (its
condition usually comes true within seconds, and a half-second poll keeps the critical
path short). When the condition is not met by then, the gate *defers*: the worker slot is
released and :class:`GateTrigger` re-evaluates the same check on the triggerer until it
opens, the check fails, or the gate's RTO budget runs out; then the task resumes in a
worker, which records the opening (at the time the trigger saw it) or escalates.

A check crosses that process boundary by name: :class:`NamedCheck` is a registered check
name plus JSON keyword arguments, rebuilt on the triggerer from the plan (``load_plan()``,
the same ``DR_PLAN`` every Airflow process of a deployment sees). :data:`GATE_CHECKS` is
the registry; a new gate in a DAG registers its check here. The blocking check runs in a
thread (``asyncio.to_thread``): probes have their own connect timeouts, and the triggerer's
event loop is never blocked by one.

:class:`RecoveryRunTrigger` is the incident watch's wait (``incident_watch``): until the
watched run ends or the next status update or escalation is due.

Airflow-facing (like ``dag_kit``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from tracktion_dr.core.plan import Plan

log = logging.getLogger(__name__)

GateCheck = Callable[[dict[str, Any]], tuple[bool, str]]
# A trigger logs what it sees when it changes, and at least this often while waiting.
PROGRESS_LOG_SECONDS = 60.0


# --- gate checks every database scenario shares -------------------------------------------


def services_healthy(plan: Plan) -> GateCheck:
    """Gate: every service of the run (``run["services"]``) answers its health URL."""

    def check(run: dict[str, Any]) -> tuple[bool, str]:
        from tracktion_dr.services.checks import service_health

        return service_health(plan.environment(run["environment"]), run["services"])

    return check


def functional_checks_pass(plan: Plan) -> GateCheck:
    """Gate: the plan's functional check of every service of the run passes."""

    def check(run: dict[str, Any]) -> tuple[bool, str]:
        from tracktion_dr.services.checks import functional_checks

        return functional_checks(plan.environment(run["environment"]), run["services"])

    return check


def database_accepts(
    conn_id_and_database: Callable[[dict[str, Any]], tuple[str, str]],
) -> GateCheck:
    """Gate: the run's database accepts connections (``conn_id_and_database(run)`` names
    the connection and the database)."""

    def check(run: dict[str, Any]) -> tuple[bool, str]:
        from tracktion_dr.airflow.support import endpoint
        from tracktion_dr.services.probes import ProbeFailure, postgres_ready

        conn_id, database = conn_id_and_database(run)
        try:
            return True, postgres_ready(endpoint(conn_id).conninfo(database))(5)
        except ProbeFailure as exc:
            return False, str(exc)

    return check


# --- the registry of gate checks --------------------------------------------------------------
# Each factory takes the plan (and the check's JSON keyword arguments) and returns the
# check ``run -> (opened?, what it saw)``. Imports are inside: the triggerer imports this
# module for every deferred gate, and a DAG file parses without any of them.


def _restored_database_accepts(plan: Plan) -> GateCheck:
    """The restore target's database (``run["database_name"]``) accepts connections."""
    from tracktion_dr.scenarios.database import database_target

    def conn_id_and_database(run: dict[str, Any]) -> tuple[str, str]:
        target = database_target(plan.environment(run["environment"]), run["database"])
        return target.cluster.conn_id, run["database_name"]

    return database_accepts(conn_id_and_database)


def _recovery_target_reached(plan: Plan) -> GateCheck:
    """PITR: the cluster of the run is paused at its target (or has replayed everything)."""

    def check(run: dict[str, Any]) -> tuple[bool, str]:
        from tracktion_dr.airflow.support import endpoint
        from tracktion_dr.scenarios.database import recovery_target_reached

        cluster = plan.environment(run["environment"]).clusters[run["cluster"]]
        return recovery_target_reached(cluster, run, endpoint(cluster.conn_id).conninfo("postgres"))

    return check


def _application_service_back(plan: Plan, service: str) -> GateCheck:
    from tracktion_dr.scenarios import application

    return application.gate_check(plan, service)


def _dependency_layer_healthy(plan: Plan, layer: str) -> GateCheck:
    from tracktion_dr.airflow.access import ACCESS
    from tracktion_dr.scenarios import dependencies

    return dependencies.gate_check(plan, layer, ACCESS)


def _dns_records_hold(plan: Plan) -> GateCheck:
    from tracktion_dr.airflow.site_steps import route53_client
    from tracktion_dr.scenarios import network_dns

    return network_dns.gate_check(plan, route53_client)


def _recovery_site_ready(plan: Plan) -> GateCheck:
    from tracktion_dr.airflow.site_steps import cloudformation_client
    from tracktion_dr.scenarios import site

    return site.site_ready(plan, cloudformation_client)


def _storage_intact(plan: Plan) -> GateCheck:
    from tracktion_dr.scenarios import storage

    return storage.gate_check(plan)


def _config_services_back(plan: Plan) -> GateCheck:
    from tracktion_dr.scenarios import config

    return config.gate_check(plan)


def _storage_failover_serving(plan: Plan) -> GateCheck:
    from tracktion_dr.scenarios import storage_failover

    return storage_failover.gate_check(plan)


def _infrastructure_repaired(plan: Plan) -> GateCheck:
    from tracktion_dr.airflow.access import ACCESS
    from tracktion_dr.scenarios import infrastructure

    return infrastructure.gate_check(plan, ACCESS)


def _failover_serving(plan: Plan) -> GateCheck:
    from tracktion_dr.airflow.access import ACCESS
    from tracktion_dr.scenarios import failover

    return failover.gate_check(plan, ACCESS)


def _third_party_switched(plan: Plan) -> GateCheck:
    from tracktion_dr.scenarios import third_party

    return third_party.gate_check(plan)


def _standby_streams(plan: Plan) -> GateCheck:
    from tracktion_dr.airflow.support import endpoint
    from tracktion_dr.scenarios import rebuild

    return rebuild.standby_streams(plan, endpoint)


def _new_primary_serves(plan: Plan) -> GateCheck:
    from tracktion_dr.airflow.access import ACCESS
    from tracktion_dr.scenarios import rebuild

    return rebuild.new_primary_serves(plan, ACCESS)


def _site_replay_caught_up(plan: Plan) -> GateCheck:
    from tracktion_dr.airflow.access import ACCESS
    from tracktion_dr.scenarios import site_failover

    return site_failover.replay_caught_up(plan, ACCESS)


def _site_services_healthy(plan: Plan) -> GateCheck:
    from tracktion_dr.scenarios import site_failover

    return site_failover.services_healthy(plan)


def _site_functional_checks_pass(plan: Plan) -> GateCheck:
    from tracktion_dr.scenarios import site_failover

    return site_failover.functional_checks_pass(plan)


def _site_traffic_moved(plan: Plan) -> GateCheck:
    from tracktion_dr.airflow.site_steps import cloudformation_client, route53_client
    from tracktion_dr.scenarios import site, site_failover

    def balancer_url(run: dict[str, Any]) -> str:
        # the site's load balancer from the stack's Outputs (a gate has only the run)
        return site.read_endpoints(plan, run, cloudformation_client)["endpoints"]["load_balancer"]

    return site_failover.traffic_moved(plan, balancer_url, route53_client)


GATE_CHECKS: dict[str, Callable[..., GateCheck]] = {
    "services_healthy": services_healthy,
    "functional_checks_pass": functional_checks_pass,
    "restored_database_accepts": _restored_database_accepts,
    "recovery_target_reached": _recovery_target_reached,
    "application_service_back": _application_service_back,
    "dependency_layer_healthy": _dependency_layer_healthy,
    "dns_records_hold": _dns_records_hold,
    "recovery_site_ready": _recovery_site_ready,
    "storage_intact": _storage_intact,
    "config_services_back": _config_services_back,
    "storage_failover_serving": _storage_failover_serving,
    "infrastructure_repaired": _infrastructure_repaired,
    "failover_serving": _failover_serving,
    "third_party_switched": _third_party_switched,
    "standby_streams": _standby_streams,
    "new_primary_serves": _new_primary_serves,
    "site_replay_caught_up": _site_replay_caught_up,
    "site_services_healthy": _site_services_healthy,
    "site_functional_checks_pass": _site_functional_checks_pass,
    "site_traffic_moved": _site_traffic_moved,
}


@dataclass(frozen=True)
class NamedCheck:
    """A gate check that can cross to the triggerer: a :data:`GATE_CHECKS` name and its
    JSON keyword arguments. Called like the check itself (built once, from ``plan``)."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in GATE_CHECKS:
            raise ValueError(f"unknown gate check {self.name!r}; known: {sorted(GATE_CHECKS)}")
        json.dumps(self.kwargs)  # refused at parse time, not when the gate defers

    def build(self, plan: Plan) -> GateCheck:
        return GATE_CHECKS[self.name](plan, **self.kwargs)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": dict(self.kwargs)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NamedCheck:
        return cls(data["name"], dict(data.get("kwargs") or {}))


def named_check(name: str, **kwargs: Any) -> NamedCheck:
    """``check=named_check("application_service_back", service="api")`` in a DAG file."""
    return NamedCheck(name, kwargs)


def _plan_of_this_process() -> Plan:
    from tracktion_dr.core.plan import load_plan

    return load_plan()


# --- the gate's trigger ----------------------------------------------------------------------


class GateTrigger(BaseTrigger):
    """Re-evaluates a gate's named check every ``poll_seconds`` until it opens (event
    ``open``, with the time it was seen open), the check raises (``error``: the gate fails
    with that message, as a raising check does in the worker), or ``deadline`` passes
    (``timeout``: the gate escalates and fails). ``incident`` is the gate's run (the
    guard's XCom); ``deadline`` an ISO 8601 time with zone; ``waiting_since`` (when the
    gate started waiting) comes back in every event."""

    def __init__(
        self,
        *,
        gate: str,
        check: dict[str, Any],
        incident: dict[str, Any],
        deadline: str,
        poll_seconds: float,
        waiting_since: str = "",
        last_seen: str = "",
    ):
        super().__init__()
        self.gate = gate
        self.waiting_since = waiting_since
        self.check = check
        self.incident = incident
        self.deadline = deadline
        self.poll_seconds = poll_seconds
        self.last_seen = last_seen

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "gate": self.gate,
                "check": self.check,
                "incident": self.incident,
                "deadline": self.deadline,
                "poll_seconds": self.poll_seconds,
                "waiting_since": self.waiting_since,
                "last_seen": self.last_seen,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        named = NamedCheck.from_dict(self.check)
        deadline = datetime.fromisoformat(self.deadline)
        last_seen, last_logged = self.last_seen, time.monotonic()
        try:
            check = named.build(await asyncio.to_thread(_plan_of_this_process))
            while True:
                opened, detail = await asyncio.to_thread(check, self.incident)
                now = datetime.now(UTC)
                if opened:
                    self.log.info("gate %s: open (%s)", self.gate, detail)
                    yield self._event("open", detail, opened_at=now.isoformat())
                    return
                if now >= deadline:
                    yield self._event("timeout", detail)
                    return
                if detail != last_seen or time.monotonic() - last_logged >= PROGRESS_LOG_SECONDS:
                    self.log.info("gate %s: not yet (%s)", self.gate, detail)
                    last_seen, last_logged = detail, time.monotonic()
                left = (deadline - now).total_seconds()
                await asyncio.sleep(max(0.0, min(self.poll_seconds, left)))
        except Exception as exc:  # the check failed (not "not yet"): the gate fails with it
            yield self._event("error", f"{type(exc).__name__}: {exc}")

    def _event(self, status: str, detail: str, **more: str) -> TriggerEvent:
        # What the gate needs when it resumes travels in the event (dag.test() resumes a
        # task with the event alone, without the deferral's kwargs).
        return TriggerEvent(
            {"status": status, "detail": detail, "waiting_since": self.waiting_since, **more}
        )


# --- the incident watch's trigger ------------------------------------------------------------

TERMINAL_RUN_STATES = frozenset({"success", "failed"})


def _run_state(dag_id: str, run_id: str) -> str:
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    raw = RuntimeTaskInstance.get_dagrun_state(dag_id=dag_id, run_id=run_id)
    # The SDK hands back an enum whose str() is "DagRunState.SUCCESS": use its value.
    return str(getattr(raw, "value", raw))


class RecoveryRunTrigger(BaseTrigger):
    """Waits until the run ``dag_id``/``run_id`` ends (event ``ended``) or ``wake_at``
    (ISO 8601 with zone) passes (event ``due``), reading the run's state every
    ``poll_seconds`` through the task SDK (never the metadata database). ``memory`` (what
    the watch has sent so far) comes back in the event."""

    def __init__(
        self,
        *,
        dag_id: str,
        run_id: str,
        wake_at: str,
        poll_seconds: float,
        memory: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.dag_id = dag_id
        self.run_id = run_id
        self.wake_at = wake_at
        self.poll_seconds = poll_seconds
        self.memory = memory or {}

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "dag_id": self.dag_id,
                "run_id": self.run_id,
                "wake_at": self.wake_at,
                "poll_seconds": self.poll_seconds,
                "memory": self.memory,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        wake_at = datetime.fromisoformat(self.wake_at)
        while True:
            state = await asyncio.to_thread(_run_state, self.dag_id, self.run_id)
            now = datetime.now(UTC)
            if state in TERMINAL_RUN_STATES:
                yield TriggerEvent({"status": "ended", "state": state, "memory": self.memory})
                return
            if now >= wake_at:
                yield TriggerEvent({"status": "due", "state": state, "memory": self.memory})
                return
            left = (wake_at - now).total_seconds()
            await asyncio.sleep(max(0.0, min(self.poll_seconds, left)))
