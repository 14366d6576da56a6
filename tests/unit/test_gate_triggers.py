"""How gates and the incident watch wait: in the worker for a short fast window, then on
the triggerer (``tracktion_dr.airflow.gate_triggers``).

The trigger's check is a registered, named check rebuilt from the plan; here a counting
check stands in for a probe (the real checks run against the sandbox in tests/e2e). When
the check opens, the trigger says so with the time it saw it; when it never opens, the
trigger gives up at the gate's deadline and the gate escalates; when the check raises,
the gate fails with its message. Every trigger survives Airflow's own serialization.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from airflow.sdk._shared.module_loading import import_string
from airflow.sdk.exceptions import AirflowFailException, AirflowRescheduleException, TaskDeferred
from airflow.sdk.serde import deserialize, serialize

from tracktion_dr.airflow import gate_triggers
from tracktion_dr.airflow.dag_kit import RtoGate
from tracktion_dr.airflow.gate_triggers import (
    GATE_CHECKS,
    GateTrigger,
    NamedCheck,
    RecoveryRunTrigger,
    named_check,
)
from tracktion_dr.core.errors import ServerDied
from tracktion_dr.core.plan import load_plan

PLAN = load_plan()
CALLS: list[dict] = []
WAITING_SINCE = "2026-01-01T00:00:00+00:00"


def opens_on_call(plan, opens_on: int, raises: bool = False):
    def check(run: dict) -> tuple[bool, str]:
        CALLS.append(run)
        if raises:
            raise ServerDied("FATAL: could not locate a valid checkpoint record")
        return len(CALLS) >= opens_on, f"call {len(CALLS)}"

    return check


@pytest.fixture(autouse=True)
def counting_check(monkeypatch):
    CALLS.clear()
    monkeypatch.setitem(GATE_CHECKS, "test_opens_on_call", opens_on_call)
    monkeypatch.setattr(gate_triggers, "_plan_of_this_process", lambda: PLAN)


def incident(**extra) -> dict:
    return {
        "incident_id": "DR-20260101-000000",
        "environment": "drill",
        "started_at": datetime.now(UTC).isoformat(),
        "rto_seconds": 600,
        **extra,
    }


def gate_trigger(opens_on: int, *, deadline_in: float = 60, raises: bool = False) -> GateTrigger:
    return GateTrigger(
        gate="gate_x",
        check=named_check("test_opens_on_call", opens_on=opens_on, raises=raises).as_dict(),
        incident=incident(),
        deadline=(datetime.now(UTC) + timedelta(seconds=deadline_in)).isoformat(),
        poll_seconds=0.01,
        waiting_since=WAITING_SINCE,
    )


def first_event(trigger) -> dict:
    async def run() -> dict:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("the trigger ended without an event")

    return asyncio.run(run())


def round_trip(trigger):
    """What the triggerer gets: serialize() through Airflow's serde, rebuilt by class path."""
    classpath, kwargs = trigger.serialize()
    stored = json.loads(json.dumps(serialize(kwargs)))
    return import_string(classpath)(**deserialize(stored))


# --- named checks ------------------------------------------------------------------------------


def test_a_named_check_is_refused_when_unknown_or_not_json():
    with pytest.raises(ValueError, match="unknown gate check 'services_heathy'"):
        named_check("services_heathy")
    with pytest.raises(TypeError):
        named_check("application_service_back", service={"a set"})


def test_every_registered_check_builds_from_the_plan():
    kwargs = {"application_service_back": {"service": "api-gateway"}}
    kwargs["dependency_layer_healthy"] = {"layer": "database"}
    for name in set(GATE_CHECKS) - {"test_opens_on_call"}:
        assert callable(NamedCheck(name, kwargs.get(name, {})).build(PLAN)), name


def test_a_named_check_round_trips_through_a_dict():
    check = named_check("application_service_back", service="api-gateway")
    assert NamedCheck.from_dict(json.loads(json.dumps(check.as_dict()))) == check


# --- the gate trigger --------------------------------------------------------------------------


def test_the_gate_trigger_survives_airflows_serialization():
    trigger = gate_trigger(opens_on=3)
    rebuilt = round_trip(trigger)
    assert rebuilt.serialize() == trigger.serialize()


def test_the_trigger_opens_when_the_check_does_with_the_time_it_saw_it():
    before = datetime.now(UTC)
    event = first_event(round_trip(gate_trigger(opens_on=3)))
    assert event["status"] == "open" and event["detail"] == "call 3"
    assert event["waiting_since"] == WAITING_SINCE  # what the gate needs back, in the event
    assert datetime.fromisoformat(event["opened_at"]) >= before
    assert len(CALLS) == 3 and CALLS[0]["incident_id"] == "DR-20260101-000000"


def test_the_trigger_gives_up_at_the_deadline_with_what_it_last_saw():
    event = first_event(gate_trigger(opens_on=10**9, deadline_in=0.2))
    assert event["status"] == "timeout"
    assert event["detail"] == f"call {len(CALLS)}" and len(CALLS) > 1


def test_a_check_that_raises_ends_the_wait_with_its_message():
    event = first_event(gate_trigger(opens_on=1, raises=True))
    assert event["status"] == "error"
    assert event["detail"] == "ServerDied: FATAL: could not locate a valid checkpoint record"


# --- the gate: fast window, then deferral ------------------------------------------------------


def rto_gate(check, **kwargs) -> RtoGate:
    gate = RtoGate(
        task_id="gate_x",
        check=check,
        incident=incident(),
        plan=PLAN,
        poke_interval=0.01,
        fast_window_seconds=0.1,
        **kwargs,
    )
    gate.escalations = []
    gate._escalate = gate.escalations.append  # the delivery itself is tested elsewhere
    return gate


def test_a_gate_that_opens_within_its_fast_window_never_defers():
    event = rto_gate(named_check("test_opens_on_call", opens_on=3)).execute({})["event"]
    assert event["status"] == "succeeded" and event["detail"] == "call 3"


def test_a_gate_not_open_after_its_fast_window_defers_to_the_triggerer():
    gate = rto_gate(named_check("test_opens_on_call", opens_on=10**9))
    with pytest.raises(TaskDeferred) as deferred:
        gate.execute({})
    trigger = deferred.value.trigger
    assert isinstance(trigger, GateTrigger) and deferred.value.method_name == "resume_gate"
    assert trigger.check == {"name": "test_opens_on_call", "kwargs": {"opens_on": 10**9}}
    deadline = datetime.fromisoformat(trigger.deadline) - datetime.now(UTC)
    assert timedelta(seconds=500) < deadline <= timedelta(seconds=600)
    assert deferred.value.timeout > deadline  # the backstop comes after the trigger's own end
    waiting_since = trigger.waiting_since
    assert waiting_since

    opened_at = datetime.now(UTC).isoformat()
    resumed = gate.resume_gate(
        {},
        {
            "status": "open",
            "detail": "healthy",
            "opened_at": opened_at,
            "waiting_since": waiting_since,
        },
    )
    assert resumed["event"]["finished_at"] == opened_at  # when it opened, not when it resumed
    assert resumed["event"]["started_at"] == waiting_since
    assert resumed["event"]["milestone"] == "service"


def test_a_deferred_gate_whose_budget_ran_out_escalates_and_fails():
    gate = rto_gate(named_check("test_opens_on_call", opens_on=1))
    with pytest.raises(AirflowFailException, match="RTO breached at gate_x"):
        gate.resume_gate({}, {"status": "timeout", "detail": "still down"})
    assert len(gate.escalations) == 1 and "RTO breached at gate_x" in gate.escalations[0]


def test_a_deferred_gate_whose_check_raised_fails_with_its_message():
    gate = rto_gate(named_check("test_opens_on_call", opens_on=1))
    with pytest.raises(AirflowFailException, match="ServerDied: FATAL"):
        gate.resume_gate({}, {"status": "error", "detail": "ServerDied: FATAL x"})
    assert gate.escalations == []


def test_a_gate_whose_budget_ends_inside_the_fast_window_breaches_without_deferring():
    gate = rto_gate(named_check("test_opens_on_call", opens_on=10**9), minimum_wait_seconds=0)
    gate.incident = incident(rto_seconds=0.05)
    with pytest.raises(AirflowFailException, match="RTO breached at gate_x"):
        gate.execute({})
    assert len(gate.escalations) == 1


# --- the incident watch's trigger ---------------------------------------------------------------


def test_the_watch_trigger_survives_serialization_and_wakes_when_due(monkeypatch):
    monkeypatch.setattr(gate_triggers, "_run_state", lambda dag_id, run_id: "running")
    trigger = RecoveryRunTrigger(
        dag_id="dr_database_pitr",
        run_id="incident__x",
        wake_at=(datetime.now(UTC) + timedelta(seconds=0.1)).isoformat(),
        poll_seconds=0.01,
    )
    assert round_trip(trigger).serialize() == trigger.serialize()
    assert first_event(trigger) == {"status": "due", "state": "running", "memory": {}}


def test_the_watch_trigger_ends_when_the_run_does(monkeypatch):
    states = iter(["queued", "running", "failed"])
    monkeypatch.setattr(gate_triggers, "_run_state", lambda dag_id, run_id: next(states))
    trigger = RecoveryRunTrigger(
        dag_id="dr_database_pitr",
        run_id="incident__x",
        wake_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        poll_seconds=0.01,
    )
    assert first_event(trigger) == {"status": "ended", "state": "failed", "memory": {}}


# --- the incident watch: look, defer, resume with what it already sent --------------------------


def test_the_watch_defers_between_looks_and_never_pages_a_level_twice():
    from types import SimpleNamespace

    from tracktion_dr.airflow.incident_watch import RecoveryWatch

    state = {"value": "running"}
    ti = SimpleNamespace(get_dagrun_state=lambda dag_id, run_id: state["value"])
    started = datetime.now(UTC) - timedelta(seconds=5)  # level 1 (at once) is due
    watched = {
        **incident(started_at=started.isoformat()),
        "severity": "critical",
        "description": "primary lost",
        "scenario": "",
        "auto_recover": False,
        "notify": False,  # what would be sent is logged, not delivered
        "war_room": "#inc",
    }
    recovery = {"dag_id": "dr_database_pitr", "run_id": "incident__x"}
    watch = RecoveryWatch(task_id="watch", plan=PLAN, incident=watched, recovery=recovery)
    with pytest.raises(TaskDeferred) as deferred:
        watch.execute({"ti": ti})
    assert isinstance(deferred.value.trigger, RecoveryRunTrigger)
    memory = json.loads(json.dumps(deferred.value.trigger.memory))
    assert memory["paged"] == [1] and memory["updates"] == 1
    wake_at = datetime.fromisoformat(deferred.value.trigger.wake_at)
    assert wake_at > datetime.now(UTC)  # the next update or level, not at once

    again = RecoveryWatch(task_id="watch", plan=PLAN, incident=watched, recovery=recovery)
    with pytest.raises(TaskDeferred) as deferred:
        again.resume_watch({"ti": ti}, {"status": "due", "state": "running", "memory": memory})
    assert deferred.value.trigger.memory["paged"] == [1]  # not paged again
    assert deferred.value.trigger.memory["updates"] == 1  # the next update is not due yet

    state["value"] = "success"
    done = again.resume_watch({"ti": ti}, {"status": "ended", "state": "success", "memory": memory})
    assert done["state"] == "success" and done["levels_paged"] == [1]


class RescheduledTi:
    """The one task-instance call a host-bound gate makes: when it first started."""

    def __init__(self, first_start):
        self.first_start = first_start

    def get_first_reschedule_date(self, context):
        return self.first_start


def test_a_host_bound_gate_is_rescheduled_on_its_queue_never_deferred():
    gate = rto_gate(named_check("test_opens_on_call", opens_on=10**9), queue="host_db_primary")
    with pytest.raises(AirflowRescheduleException) as rescheduled:
        gate.execute({"ti": RescheduledTi(None)})
    wait = rescheduled.value.reschedule_date - datetime.now(UTC)
    assert timedelta(0) < wait <= timedelta(seconds=gate.reschedule_seconds)


def test_a_rescheduled_gate_looks_once_and_counts_its_wait_from_its_first_start():
    first = datetime.now(UTC) - timedelta(seconds=42)
    gate = rto_gate(named_check("test_opens_on_call", opens_on=1), queue="host_db_primary")
    event = gate.execute({"ti": RescheduledTi(first)})["event"]
    assert event["status"] == "succeeded" and event["started_at"] == first.isoformat()
    CALLS.clear()
    looks = rto_gate(named_check("test_opens_on_call", opens_on=2), queue="host_db_primary")
    with pytest.raises(AirflowRescheduleException):  # no fast window the second time
        looks.execute({"ti": RescheduledTi(first)})
