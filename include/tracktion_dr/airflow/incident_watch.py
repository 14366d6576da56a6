"""The sensor that stays with an incident while its recovery run is active.

Each time it looks, it reads the triggered run's state, sends the status update when the
plan's cadence says one is owed, and pages each escalation level whose threshold (measured
from the incident start) has passed. It opens when the recovery run ends: after that no
update and no escalation is sent from here - the close-out task announces the
restoration, or escalates a failed recovery.

Between two looks it holds no worker slot: it defers to the triggerer
(:class:`~tracktion_dr.airflow.gate_triggers.RecoveryRunTrigger`), which reads the run's
state every ``poke_interval`` and wakes the sensor when the run ends or when the next
status update or escalation is due. What it has sent so far (the last update, how many,
the levels paged) travels in the trigger and comes back in its event, so a resume never
repeats a page.
Airflow-facing (like ``dag_kit``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowSensorTimeout

from tracktion_dr.core.plan import Plan, format_duration
from tracktion_dr.core.timeline import parse_time

log = logging.getLogger(__name__)

TERMINAL_STATES = frozenset({"success", "failed"})


class RecoveryWatch(BaseSensorOperator):
    template_fields = ("incident", "recovery")

    def __init__(
        self,
        *,
        plan: Plan,
        incident: Any,
        recovery: Any,
        poke_interval: float = 5,
        timeout: float = 24 * 3600,
        **kwargs: Any,
    ):
        kwargs.setdefault("retries", 0)
        super().__init__(mode="poke", poke_interval=poke_interval, timeout=timeout, **kwargs)
        self.plan = plan
        self.incident = incident
        self.recovery = recovery
        self._last_update: datetime | None = None
        self._updates = 0
        self._paged: set[int] = set()
        self._waiting_since = ""

    # -- how it waits: look, then defer until the run ends or something is due -----------

    def execute(self, context: Any) -> Any:
        return self._look_then_wait(context)

    def resume_watch(self, context: Any, event: dict[str, Any]) -> Any:
        """Back from the triggerer (the run ended, or an update or a page is due): look
        again with what was sent so far (``event["memory"]``: the trigger carries it)."""
        memory = event.get("memory") or {}
        self._last_update = (
            datetime.fromisoformat(memory["last_update"]) if memory.get("last_update") else None
        )
        self._updates = int(memory.get("updates") or 0)
        self._paged = set(memory.get("paged") or [])
        self._waiting_since = memory.get("waiting_since") or ""
        log.info("recovery run is %s (%s)", event.get("state"), event.get("status"))
        return self._look_then_wait(context)

    def _look_then_wait(self, context: Any) -> Any:
        from tracktion_dr.airflow.gate_triggers import RecoveryRunTrigger

        looked = self.poke(context)
        if looked:
            return looked.xcom_value  # type: ignore[union-attr]
        now = datetime.now(UTC)
        deadline = parse_time(self._waiting_since) + timedelta(seconds=self.timeout)
        if now >= deadline:
            raise AirflowSensorTimeout(
                f"the recovery run {self.recovery['dag_id']} {self.recovery['run_id']} has "
                f"not ended {format_duration(timedelta(seconds=self.timeout))} after the watch "
                "started"
            )
        wake_at = min(self.next_due(now), deadline)
        self.defer(
            trigger=RecoveryRunTrigger(
                dag_id=self.recovery["dag_id"],
                run_id=self.recovery["run_id"],
                wake_at=wake_at.isoformat(),
                poll_seconds=self.poke_interval,
                memory={
                    "last_update": self._last_update.isoformat() if self._last_update else None,
                    "updates": self._updates,
                    "paged": sorted(self._paged),
                    "waiting_since": self._waiting_since,
                },
            ),
            method_name="resume_watch",
            timeout=deadline - now + timedelta(minutes=5),
        )

    def next_due(self, now: datetime) -> datetime:
        """When the next status update or escalation page is owed (never before ``now``)."""
        interval = self.plan.incident_response.status_update_interval
        due = [(self._last_update or now) + interval]
        started = parse_time(self.incident["started_at"])
        due += [
            started + after
            for level, after in self.plan.escalation_thresholds()
            if level.level not in self._paged
        ]
        return max(min(due), now)

    # -- what a look does ---------------------------------------------------------------

    def poke(self, context: Any) -> bool | PokeReturnValue:
        from tracktion_dr.core.timeline import Event

        if not self.recovery:  # nothing was chosen or started: nothing to watch
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException("no recovery run was requested")
        now = datetime.now(UTC)
        self._waiting_since = self._waiting_since or now.isoformat()
        dag_id, run_id = self.recovery["dag_id"], self.recovery["run_id"]
        raw_state = context["ti"].get_dagrun_state(dag_id=dag_id, run_id=run_id)
        # The SDK hands back an enum whose str() is "DagRunState.SUCCESS": use its value.
        state = str(getattr(raw_state, "value", raw_state))
        if state in TERMINAL_STATES:
            log.info("recovery run %s/%s ended: %s", dag_id, run_id, state)
            event = Event(
                "watch_recovery",
                "gate",
                self._waiting_since,
                now.isoformat(),
                "succeeded" if state == "success" else "failed",
                f"{dag_id} {run_id}: {state}",
            )
            return PokeReturnValue(
                is_done=True,
                xcom_value={
                    "event": event.__dict__,
                    "state": state,
                    "dag_id": dag_id,
                    "run_id": run_id,
                    "ended_at": now.isoformat(),
                    "status_updates": self._updates,
                    "levels_paged": sorted(self._paged),
                },
            )
        log.info("recovery run %s/%s is %s", dag_id, run_id, state)
        self.escalate_when_due(now)
        self.update_when_due(now, state)
        return False

    def update_when_due(self, now: datetime, state: str) -> None:
        from tracktion_dr.notify.delivery import deliver
        from tracktion_dr.scenarios.incident_response import (
            next_status_update,
            status_update_message,
        )

        interval = self.plan.incident_response.status_update_interval
        if not next_status_update(self._last_update, now, interval):
            return
        incident = self.incident
        message = status_update_message(
            self.plan,
            incident,
            incident_request(incident),
            status=f"Recovery in progress: {self.recovery['dag_id']} is {state}",
            activities=f"- {self.recovery['dag_id']} run {self.recovery['run_id']} ({state})",
            next_update=(now + interval).strftime("%Y-%m-%d %H:%M:%S UTC"),
            war_room=incident["war_room"],
            impact=incident.get("impact") or "see the initial assessment",
        )
        if incident["notify"]:
            report = deliver(self.plan, message, channels=_chat_and_mail(self.plan))
            log.info("status update %d sent: %s", self._updates + 1, report.as_dict())
        else:
            log.info("notify is off; status update not sent:\n%s", message.plain_text())
        self._last_update = now
        self._updates += 1

    def escalate_when_due(self, now: datetime) -> None:
        from tracktion_dr.scenarios.incident_response import due_escalations

        started = parse_time(self.incident["started_at"])
        for level, after in due_escalations(
            self.plan, started, now, already_paged=self._paged, resolved=False
        ):
            page_level(
                self.plan,
                self.incident,
                level.level,
                reason=f"not resolved {format_duration(after)} after the incident start",
                elapsed=now - started,
            )
            self._paged.add(level.level)


def incident_request(incident: dict[str, Any]) -> Any:
    from tracktion_dr.scenarios.incident_response import IncidentRequest

    return IncidentRequest(
        severity=incident["severity"],
        description=incident["description"],
        scenario=incident["scenario"],
        auto_recover=incident["auto_recover"],
        affected=list(incident.get("affected") or []),
        scenario_conf=dict(incident.get("scenario_conf") or {}),
    )


def _chat_and_mail(plan: Plan) -> list[str]:
    chosen = plan.incident_response.channels or list(plan.notifications)
    return [n for n in chosen if plan.notifications[n].kind in ("slack", "email", "status_page")]


def page_level(
    plan: Plan,
    incident: dict[str, Any],
    level_number: int,
    *,
    reason: str,
    elapsed: timedelta,
) -> dict[str, Any]:
    """Page an escalation level: its responders by e-mail (contacts from Airflow
    variables), plus the chat and PagerDuty channels."""
    from tracktion_dr.notify.delivery import deliver, resolve_contact, send_email_to
    from tracktion_dr.scenarios.incident_response import escalation_message

    level = next(level for level in plan.escalation if level.level == level_number)
    message = escalation_message(
        incident,
        incident_request(incident),
        level,
        reason=reason,
        elapsed=elapsed,
        war_room=incident["war_room"],
    )
    if not incident["notify"]:
        log.info(
            "notify is off; escalation level %d not paged:\n%s", level.level, message.plain_text()
        )
        return {"level": level.level, "sent": False}
    channels = [
        n
        for n in (plan.incident_response.channels or list(plan.notifications))
        if plan.notifications[n].kind in ("slack", "pagerduty")
    ]
    report = deliver(plan, message, channels=channels).as_dict()
    addresses = [
        c["email"]
        for c in (resolve_contact(plan, r) for r in level.responders)
        if c and c.get("email")
    ]
    mail = [n for n, c in plan.notifications.items() if c.kind == "email"]
    if addresses and mail:
        try:
            send_email_to(
                plan.notifications[mail[0]].conn_id, addresses, message.title, message.text
            )
            report["sent"].append(f"email:{len(addresses)} responders")
        except Exception as exc:  # best effort, like every notification
            report["failed"]["email"] = f"{type(exc).__name__}: {exc}"[:300]
    log.warning("escalated to level %d (%s): %s", level.level, level.name, report)
    return {"level": level.level, "sent": True, "delivery": report}
