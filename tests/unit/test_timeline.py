"""RTO clock, gate budgets and the timeline's verdicts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tracktion_dr.core.timeline import MINIMUM_GATE_SECONDS, Event, RtoClock, Timeline

T0 = datetime(2026, 11, 26, 3, 0, tzinfo=UTC)


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def test_clock_budget_and_breach_sentence():
    clock = RtoClock(T0, timedelta(minutes=30))
    assert clock.remaining(T0 + timedelta(minutes=12)) == timedelta(minutes=18)
    assert clock.gate_timeout_seconds(T0 + timedelta(minutes=12)) == 18 * 60
    assert clock.gate_timeout_seconds(T0 + timedelta(hours=2)) == MINIMUM_GATE_SECONDS
    breach = clock.breach("gate_services_healthy", T0 + timedelta(minutes=31, seconds=5))
    assert str(breach) == "RTO breached at gate_services_healthy: 31m 5s of 30m"


def test_rto_achieved_is_the_last_gate_opened():
    timeline = Timeline("DR-20261126-030000", "dr_x", "run", "drill", T0.isoformat(), 1800, 900)
    timeline.events = [
        Event("restore", "step", at(1), at(9), "succeeded"),
        Event("gate_database", "gate", at(9), at(10), "succeeded"),
        Event("gate_services", "gate", at(10), at(14.5), "succeeded"),
        Event("gate_never", "gate", at(14.5), at(40), "failed"),
    ]
    timeline.data_loss_seconds = 1200
    assert timeline.rto_achieved_seconds == 14.5 * 60
    assert timeline.rto_met is True
    assert timeline.rpo_met is False
    text = timeline.render()
    assert "RTO: 14m 30s achieved vs 30m target: met" in text
    assert "Data lost: 1200.0s of writes vs RPO 15m: MISSED" in text


def test_no_gate_opened_means_no_rto_claimed():
    timeline = Timeline("DR-20261126-030000", "dr_x", "run", "drill", T0.isoformat(), 1800)
    assert timeline.rto_achieved_seconds is None and timeline.rto_met is None
    assert "RTO: not reached (target 30m)" in timeline.render()


def test_rto_is_service_restored_and_redundancy_is_recorded_apart():
    timeline = Timeline("DR-20261126-030000", "dr_x", "run", "drill", T0.isoformat(), 1800)
    timeline.events = [
        Event("gate_services", "gate", at(3), at(4), "succeeded", milestone="service"),
        Event("reseed_replica", "step", at(4), at(9), "succeeded", milestone="redundancy"),
        Event("gate_replica_streaming", "gate", at(9), at(10), "succeeded", milestone="redundancy"),
    ]
    assert timeline.rto_achieved_seconds == 4 * 60
    assert timeline.redundancy_restored_seconds == 10 * 60
    assert "Redundancy restored at T+10m (not part of the RTO)" in timeline.render()
    again = Timeline.from_dict(timeline.as_dict())
    assert again.as_dict() == timeline.as_dict()
