"""The one mechanism every recovery DAG shares: steps, RTO gates, the record, the verdict.

Anatomy: probe → guard → act → gates → validate → record → notify → verdict.

* A **step** task returns ``{"event": <Event>, ...}`` built with :func:`step_event`; the
  record collects these from XCom.
* A **gate** is an :class:`RtoGate` sensor. Its timeout is what is left of the tier's RTO
  when it starts waiting (measured from ``incident_started_at``); it records when it
  opened, logs progress as it waits, and on timeout notifies the escalation channels and
  fails with "RTO breached at <gate>: <elapsed> of <budget>". It polls in the worker for a
  short fast window, then defers to the triggerer (``gate_triggers``).
* :func:`record_timeline` (trigger rule *all done*) builds the run's :class:`Timeline` from
  those events plus the states of tasks that failed (which push nothing), writes it to the
  ledger, and logs the table. :func:`raise_for_outcome` then fails the run when anything
  failed, so a partial success is never a green run.
* :func:`finish_run` wires that tail after ``record``: ``notify_outcome``, ``publish``
  (the report, :func:`publish_task`, with its link in the UI) and ``verdict``.

Airflow-facing on purpose (this module and ``dag_support`` are the only ones that are).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink, BaseSensorOperator, PokeReturnValue, task
from airflow.sdk.exceptions import (
    AirflowFailException,
    AirflowRescheduleException,
    AirflowSensorTimeout,
    AirflowSkipException,
)

from tracktion_dr.airflow.gate_triggers import GateCheck, GateTrigger, NamedCheck
from tracktion_dr.core.plan import Plan
from tracktion_dr.core.timeline import MINIMUM_GATE_SECONDS, Event, RtoClock, Timeline, parse_time

log = logging.getLogger(__name__)

# Tasks that describe the run rather than act in it: their failure does not make the
# recovery a failure (a Slack outage must not), and they are not part of the timeline.
BOOKKEEPING_TASKS = frozenset({"record", "notify_outcome", "verdict"})
FAILED_STATES = frozenset({"failed", "upstream_failed"})

# A gate check returns (opened?, what it saw) - the second part is logged while waiting.
PROGRESS_LOG_SECONDS = 10.0
# A gate polls in the worker this long before it defers to the triggerer: most gates open
# within seconds, and the worker's half-second poll is the fastest reaction there is.
FAST_WINDOW_SECONDS = 25.0
# A host-bound gate past its fast window looks again this often (rescheduled on its queue).
RESCHEDULE_SECONDS = 5.0
# A deferred gate's own deadline is the trigger's; the deferral's timeout (the backstop
# when no triggerer picks it up) is this much later.
DEFERRAL_GRACE_SECONDS = 60.0


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def step_event(
    name: str, started_at: str, status: str = "succeeded", detail: str = "", milestone: str = ""
) -> dict[str, Any]:
    """The event a step task returns (under the key ``event``) when it finishes;
    ``milestone="redundancy"`` on the step that brings redundancy back (a standby)."""
    return Event(name, "step", started_at, now_iso(), status, detail, milestone).__dict__.copy()  # type: ignore[arg-type]


class RtoGate(BaseSensorOperator):
    """Wait until the gate's check opens, within what is left of the RTO budget.

    ``incident`` is the guard's XCom: it carries ``started_at`` (the clock start) and,
    when the guard worked out the tier at run time, ``rto_seconds``; otherwise the
    ``rto_seconds`` given here (the tier's RTO known at parse time) is the budget.

    How it waits: it pokes in the worker every ``poke_interval`` (0.5 s: a gate opens
    within half a second of its condition, which keeps the recovery's critical path short)
    for at most ``fast_window_seconds``. A condition not met by then is a long wait: the
    gate *defers* to the triggerer (:class:`~tracktion_dr.airflow.gate_triggers.GateTrigger`
    polls the same check every ``trigger_poll_seconds``), so no worker slot is held, and
    resumes when the check opens (recorded at the moment the trigger saw it open), raises,
    or the budget runs out (escalation and "RTO breached at ..." as before). ``check`` is a
    :class:`~tracktion_dr.airflow.gate_triggers.NamedCheck` (``named_check(...)``), which the
    triggerer rebuilds from the plan; a bare callable (test fixtures) cannot cross to the
    triggerer and keeps poking in the worker for the whole budget.

    A gate routed to a host's queue (``**steps.on_host(...)``: its check reads files there,
    e.g. the postmaster's log) cannot be judged by the triggerer, which runs elsewhere: after
    the fast window it is *rescheduled* on its queue instead (``up_for_reschedule``, the slot
    released; looked at again every ``reschedule_seconds``, one poke each time), its wait
    counted from its first start.
    """

    template_fields = ("incident",)

    def __init__(
        self,
        *,
        check: NamedCheck | GateCheck,
        incident: Any,
        plan: Plan,
        rto_seconds: float | None = None,
        minimum_wait_seconds: float = MINIMUM_GATE_SECONDS,
        milestone: str = "service",
        escalate_channels: tuple[str, ...] | None = None,
        poke_interval: float = 0.5,
        fast_window_seconds: float = FAST_WINDOW_SECONDS,
        trigger_poll_seconds: float | None = None,
        reschedule_seconds: float = RESCHEDULE_SECONDS,
        **kwargs: Any,
    ):
        kwargs.setdefault("retries", 0)  # a gate's budget is the RTO, not a retry count
        super().__init__(
            mode="poke", poke_interval=poke_interval, timeout=rto_seconds or 3600, **kwargs
        )
        self.check = check
        self.incident = incident
        self.rto_seconds = rto_seconds
        self.plan = plan
        self.escalate_channels = escalate_channels
        self.minimum_wait_seconds = minimum_wait_seconds
        self.milestone = milestone
        self.fast_window_seconds = fast_window_seconds
        self.trigger_poll_seconds = trigger_poll_seconds or max(poke_interval, 1.0)
        # On a host's queue: the check needs that host, the triggerer runs elsewhere.
        self.host_bound = kwargs.get("queue") is not None
        self.reschedule_seconds = reschedule_seconds
        self._built_check: GateCheck | None = None
        self._waiting_since = ""
        self._last_seen = ""
        self._last_logged = 0.0

    def _clock(self) -> RtoClock:
        budget = float(self.incident.get("rto_seconds") or self.rto_seconds or 0)
        if budget <= 0:
            raise AirflowFailException(f"gate {self.task_id}: no RTO budget known")
        return RtoClock(parse_time(self.incident["started_at"]), timedelta(seconds=budget))

    def execute(self, context: Any) -> Any:
        clock = self._clock()
        first_start = self._first_start(context)
        self._waiting_since = (first_start or datetime.now(UTC)).isoformat()
        waited = (datetime.now(UTC) - first_start).total_seconds() if first_start else 0.0
        self.timeout = max(
            clock.remaining().total_seconds(), self.minimum_wait_seconds - waited, 0.0
        )
        log.info(
            "gate %s: waiting up to %.0fs (RTO %.0fs, %.0fs elapsed since the clock started)",
            self.task_id,
            self.timeout,
            clock.budget.total_seconds(),
            clock.elapsed().total_seconds(),
        )
        if self.incident.get("dry_run"):
            log.info("dry run: gate %s would wait for the system to come back", self.task_id)
            return {
                "event": Event(
                    self.task_id, "gate", self._waiting_since, now_iso(), "skipped", "dry run"
                ).__dict__
            }
        started = time.monotonic()
        deadline = started + self.timeout
        deferrable = isinstance(self.check, NamedCheck) or self.host_bound
        # Back from a reschedule the fast window is long past: one look, then away again.
        window = 0.0 if first_start else self.fast_window_seconds
        poke_until = min(started + window, deadline) if deferrable else deadline
        while True:
            opened = self.poke(context)
            if opened:
                return opened.xcom_value  # type: ignore[union-attr]
            now = time.monotonic()
            if now >= deadline:
                self._breach(clock)
            if now >= poke_until:
                break
            time.sleep(min(self.poke_interval, max(0.0, deadline - now)))
        left = deadline - time.monotonic()
        if self.host_bound:
            log.info(
                "gate %s: not open yet; looking again in %.0fs on this host's queue (up to "
                "%.0fs more, no worker slot held in between)",
                self.task_id,
                self.reschedule_seconds,
                left,
            )
            raise AirflowRescheduleException(
                datetime.now(UTC) + timedelta(seconds=min(self.reschedule_seconds, left))
            )
        log.info(
            "gate %s: not open after %.0fs; waiting on the triggerer (up to %.0fs more, "
            "polled every %.1fs)",
            self.task_id,
            self.fast_window_seconds,
            left,
            self.trigger_poll_seconds,
        )
        self.defer(
            trigger=GateTrigger(
                gate=self.task_id,
                check=self.check.as_dict(),  # type: ignore[union-attr]
                incident=dict(self.incident),
                deadline=(datetime.now(UTC) + timedelta(seconds=left)).isoformat(),
                poll_seconds=self.trigger_poll_seconds,
                waiting_since=self._waiting_since,
                last_seen=self._last_seen,
            ),
            method_name="resume_gate",
            # The trigger ends the wait at the deadline itself; this is the backstop when
            # no triggerer runs it (the gate then escalates all the same).
            timeout=timedelta(seconds=left + DEFERRAL_GRACE_SECONDS),
        )

    def _first_start(self, context: Any) -> datetime | None:
        """When a rescheduled (host-bound) gate first started; None on a first start."""
        if not self.host_bound or "ti" not in context:
            return None
        first = context["ti"].get_first_reschedule_date(context)
        return first if first is None or first.tzinfo else first.replace(tzinfo=UTC)

    def resume_gate(self, context: Any, event: dict[str, Any]) -> Any:
        """Back from the triggerer: record the opening, or escalate, or fail with the
        check's own error."""
        status, detail = event.get("status"), event.get("detail", "")
        waiting_since = event.get("waiting_since") or now_iso()
        if status == "open":
            log.info("gate %s: open (%s), seen by the triggerer", self.task_id, detail)
            opened = Event(
                self.task_id,
                "gate",
                waiting_since,
                event["opened_at"],
                "succeeded",
                detail,
                self.milestone,
            )
            return {"event": opened.__dict__}
        if status == "timeout":
            log.info("gate %s: last seen: %s", self.task_id, detail)
            self._breach(self._clock())
        raise AirflowFailException(f"gate {self.task_id}: the check failed: {detail}")

    def resume_execution(self, next_method: str, next_kwargs: Any, context: Any) -> Any:
        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except AirflowSensorTimeout:  # the deferral's backstop timeout: no triggerer ran it
            self._breach(self._clock())

    def _breach(self, clock: RtoClock) -> None:
        breach = clock.breach(self.task_id)
        self._escalate(str(breach))
        raise AirflowFailException(str(breach))

    def _check(self) -> GateCheck:
        if not isinstance(self.check, NamedCheck):
            return self.check
        if self._built_check is None:
            self._built_check = self.check.build(self.plan)
        return self._built_check

    def poke(self, context: Any) -> bool | PokeReturnValue:
        opened, detail = self._check()(self.incident)
        if not opened:
            # Poked every half second (it opens within that of its condition); logged
            # when what it sees changes (at most every 2 s) and every
            # PROGRESS_LOG_SECONDS otherwise.
            now = time.monotonic()
            quiet_for = now - self._last_logged
            if (detail != self._last_seen and quiet_for >= 2) or quiet_for >= PROGRESS_LOG_SECONDS:
                log.info("gate %s: not yet (%s)", self.task_id, detail)
                self._last_seen, self._last_logged = detail, now
            return False
        log.info("gate %s: open (%s)", self.task_id, detail)
        event = Event(
            self.task_id,
            "gate",
            self._waiting_since or now_iso(),
            now_iso(),
            "succeeded",
            detail,
            self.milestone,
        )
        return PokeReturnValue(is_done=True, xcom_value={"event": event.__dict__})

    def _escalate(self, sentence: str) -> None:
        from tracktion_dr.notify.delivery import deliver
        from tracktion_dr.notify.messages import DrMessage
        from tracktion_dr.notify.policy import RunEvent, channels_for

        incident_id = self.incident.get("incident_id")
        report = deliver(
            self.plan,
            DrMessage(
                title=f"ESCALATION {incident_id}: {sentence}",
                text=f"{self.dag_id}: the gate {self.task_id} did not open in time. "
                "Escalate per the plan's levels.",
                severity="critical",
                incident_id=incident_id,
                fields={"dag": self.dag_id, "gate": self.task_id},
            ),
            channels=self.escalate_channels or channels_for(self.plan, RunEvent.RTO_BREACHED),
        )
        log.error("%s (escalation sent to %s, failed: %s)", sentence, report.sent, report.failed)


def collect_events(context: Any) -> tuple[list[Event], list[str]]:
    """Events the run's tasks returned, plus the ids of tasks that failed."""
    ti = context["ti"]
    task_ids = [t for t in context["dag"].task_ids if t not in BOOKKEEPING_TASKS]
    events: list[Event] = []
    for task_id in task_ids:
        value = ti.xcom_pull(task_ids=task_id)
        if isinstance(value, dict) and isinstance(value.get("event"), dict):
            events.append(Event(**value["event"]))
    states = ti.get_task_states(dag_id=ti.dag_id, task_ids=task_ids, run_ids=[ti.run_id])
    run_states = states.get(ti.run_id, {}) if isinstance(states, dict) else {}
    failed = sorted(t for t, s in run_states.items() if str(s) in FAILED_STATES)
    recorded = {e.name for e in events}
    for task_id in failed:
        if task_id not in recorded:
            events.append(
                Event(task_id, "step", now_iso(), now_iso(), "failed", str(run_states[task_id]))
            )
    return events, failed


def record_timeline(
    context: Any,
    *,
    incident: dict[str, Any],
    rto_target_seconds: float,
    rpo_target_seconds: float | None = None,
    data_loss_seconds: float | None = None,
    backup_used: str | None = None,
    details: dict[str, Any] | None = None,
    clock_started_at: str | None = None,
) -> dict[str, Any]:
    """Build the run's timeline, write it to the ledger, log it; return it (for XCom).
    ``clock_started_at``: when the RTO clock started, if not the incident's start (a drill's
    simulated loss happens during the run)."""
    from tracktion_dr.airflow.support import conninfo
    from tracktion_dr.evidence import ledger

    events, failed = collect_events(context)
    timeline = Timeline(
        incident_id=incident["incident_id"],
        dag_id=context["ti"].dag_id,
        run_id=context["ti"].run_id,
        environment=incident["environment"],
        clock_started_at=clock_started_at or incident["started_at"],
        rto_target_seconds=rto_target_seconds,
        rpo_target_seconds=rpo_target_seconds,
        events=events,
        outcome="failed" if failed else ("dry_run" if incident.get("dry_run") else "succeeded"),
        data_loss_seconds=data_loss_seconds,
        backup_used=backup_used,
        details={**(details or {}), "failed_tasks": failed},
    )
    spool_file = None
    try:
        ledger_id, spool_file = ledger.record_or_spool(conninfo(ledger.LEDGER_CONN_ID), timeline)
        if ledger_id is not None:
            log.info("recorded in the ledger as run %s", ledger_id)
    except Exception as exc:  # the run's evidence still goes to the log and XCom
        ledger_id = None
        log.error("could not write the ledger: %s", exc)
    log.info("\n%s", timeline.render())
    return {
        **timeline.as_dict(),
        "ledger_id": ledger_id,
        "spooled": str(spool_file) if spool_file else None,
    }


def raise_for_outcome(timeline: dict[str, Any]) -> None:
    """Fail the run (the final task) when any step or gate failed."""
    failed = timeline.get("details", {}).get("failed_tasks") or []
    if timeline.get("outcome") == "failed":
        raise AirflowFailException(f"recovery failed: {', '.join(failed) or 'see the timeline'}")


def skip_a_missed_drill(context: Any, plan: Plan, cadence: str) -> None:
    """A drill guard's first check: a *scheduled* run started after the window the plan
    gives its cadence (``test_schedule.<cadence>.duration`` from the cron's time) is
    skipped, touching nothing (Airflow creates the newest due run of a drill DAG unpaused
    long after it; see ``core.drill_window``). The run ends skipped, not failed: its
    record, notification and report are skipped too."""
    from tracktion_dr.core.drill_window import missed_window

    scheduled = plan.test_schedule.get(cadence)
    dag_run = context["dag_run"]
    if scheduled is None:
        return
    reason = missed_window(
        run_type=str(getattr(dag_run.run_type, "value", dag_run.run_type)),
        due_at=getattr(dag_run, "run_after", None),
        started_at=dag_run.start_date or datetime.now(UTC),
        window=scheduled.duration,
    )
    if reason:
        log.warning("skipped, nothing was touched: %s", reason)
        raise AirflowSkipException(reason)


def guard_skipped(context: Any) -> bool:
    """Whether this run's guard ended skipped (a missed drill window)."""
    ti = context["ti"]
    states = ti.get_task_states(dag_id=ti.dag_id, task_ids=["guard"], run_ids=[ti.run_id])
    run_states = states.get(ti.run_id, {}) if isinstance(states, dict) else {}
    return str(getattr(run_states.get("guard"), "value", run_states.get("guard"))) == "skipped"


def skip_when_the_guard_skipped(timeline: dict[str, Any] | None, context: Any) -> None:
    """A tail task (trigger rule *all done*) has nothing to do when the guard skipped the
    run: no record was made, so there is nothing to notify or publish."""
    if timeline is None and guard_skipped(context):
        raise AirflowSkipException("the guard skipped this run: nothing to report")


def open_incident(context: Any, plan: Plan) -> dict[str, Any]:
    """The guard's first check, shared by every DAG: the common params, resolved."""
    from tracktion_dr.core.incident import resolve_incident

    with refusing_bad_input():
        incident = resolve_incident(
            context["params"],
            run_started_at=context["dag_run"].start_date or datetime.now(UTC),
            known_environments=sorted(plan.environments),
            plan_name=plan.name,
        )
    if not incident.dry_run:
        incident = _incident_clock(
            incident, explicit=bool(context["params"].get("incident_started_at"))
        )
    log.info(
        "incident %s, environment %s, clock started %s%s",
        incident.incident_id,
        incident.environment,
        incident.started_at,
        " (DRY RUN: nothing will be touched)" if incident.dry_run else "",
    )
    return incident.as_dict()


def _incident_clock(incident: Any, *, explicit: bool) -> Any:
    """Register the incident's clock in the ledger; a re-run of the incident without an
    explicit ``incident_started_at`` keeps the clock its first run started."""
    from dataclasses import replace

    from tracktion_dr.airflow.support import conninfo
    from tracktion_dr.evidence import ledger

    proposed = parse_time(incident.started_at)
    stored = ledger.incident_clock(conninfo(ledger.LEDGER_CONN_ID), incident.incident_id, proposed)
    if explicit or stored == proposed:
        return incident
    log.info(
        "incident %s is already open: keeping its clock, started %s (its first run)",
        incident.incident_id,
        stored.isoformat(),
    )
    return replace(incident, started_at=stored.isoformat())


# DAGs that stop and replace a database or cluster. With the ledger down, a run of one of
# them proceeds only while no other is running (see :func:`take_exclusivity`).
DATABASE_DESTRUCTIVE_DAGS = ("dr_database_restore", "dr_database_pitr", "dr_failover")


def _run_alive(context: Any) -> Callable[[str, str], bool | None]:
    ti = context["ti"]

    def alive(dag_id: str, run_id: str) -> bool | None:
        try:
            state = ti.get_dagrun_state(dag_id=dag_id, run_id=run_id)
        except Exception:  # unknown to this Airflow: the lease decides
            return None
        return str(state) in ("queued", "running")

    return alive


def take_exclusivity(
    context: Any, incident: dict[str, Any], resources: list[str]
) -> dict[str, Any]:
    """One destructive run per target. Normally a lease per resource in the ledger
    (``locks``), taking over the locks of runs that are no longer running. When the
    ledger's database does not answer, exclusivity comes from Airflow itself: this run
    proceeds only if no other database-destructive DAG has a run queued or running (each
    DAG runs one at a time, ``max_active_runs=1``; two such runs starting together both
    see each other and both refuse - never two holders)."""
    from tracktion_dr.airflow.support import conninfo
    from tracktion_dr.core.errors import TargetBusy
    from tracktion_dr.evidence import ledger, locks

    ti = context["ti"]
    try:
        taken_over = locks.acquire(
            conninfo(ledger.LEDGER_CONN_ID),
            resources,
            incident_id=incident["incident_id"],
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            run_alive=_run_alive(context),
        )
        return {"exclusivity": "ledger", "resources": resources, "taken_over": taken_over}
    except ledger.UNREACHABLE as exc:
        log.warning(
            "the ledger does not answer (%s): exclusivity from Airflow's run states instead "
            "(no other run of %s may be active); the run's record is kept and written to the "
            "ledger when it is back",
            str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__,
            ", ".join(DATABASE_DESTRUCTIVE_DAGS),
        )
    busy = {
        dag_id: count
        for dag_id in DATABASE_DESTRUCTIVE_DAGS
        if (count := ti.get_dr_count(dag_id=dag_id, states=["queued", "running"]))
        > (1 if dag_id == ti.dag_id else 0)
    }
    if busy:
        raise TargetBusy(
            f"the ledger is down and other destructive runs are active: {busy}",
            hint="wait for them to finish (with the ledger down, only one database-"
            "destructive run at a time is allowed)",
        )
    return {"exclusivity": "airflow", "resources": resources, "taken_over": []}


def release_exclusivity(context: Any) -> None:
    """Release this run's ledger locks (nothing to do when the run fell back to Airflow)."""
    from tracktion_dr.airflow.support import conninfo
    from tracktion_dr.evidence import ledger, locks

    ti = context["ti"]
    try:
        locks.release(conninfo(ledger.LEDGER_CONN_ID), dag_id=ti.dag_id, run_id=ti.run_id)
    except ledger.UNREACHABLE:
        log.warning(
            "the ledger does not answer: this run's locks (if any) are taken over "
            "by the next run once Airflow shows this one finished"
        )


@contextmanager
def refusing_bad_input() -> Iterator[None]:
    """Turn a refusal (bad input, no usable backup, target busy) into a failure that is not
    retried: trying again cannot make a wrong input right, and it delays the operator."""
    from tracktion_dr.core.errors import Refused

    try:
        yield
    except Refused as exc:
        log.error("refused, nothing was touched: %s", exc)
        raise AirflowFailException(f"refused, nothing was touched: {exc}") from None


def report_path(dag_id: str, run_id: str) -> str:
    """Where the DR dashboard plugin serves a run's stored HTML report."""
    return f"/dr-dashboard/report/{quote(dag_id, safe='')}/{quote(run_id, safe='')}"


class DrReportLink(BaseOperatorLink):
    """The "DR report" button on a run's ``publish`` task in the Airflow UI (task details):
    the run's stored HTML report. Airflow stores the link in XCom when the task finishes."""

    name = "DR report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return report_path(ti_key.dag_id, ti_key.run_id)


def publish_task(plan: Plan, timeline: Any) -> Any:
    """The ``publish`` task of a DAG (trigger rule *all done*: a failed run gets its report
    too), wired after ``timeline`` (the record task's output), with the report link."""

    @task(task_id="publish", trigger_rule="all_done", retries=0)
    def publish(timeline: dict[str, Any], **context: Any) -> dict[str, Any]:
        skip_when_the_guard_skipped(timeline, context)
        return publish_report(context, plan, timeline)

    published = publish(timeline)
    published.operator.operator_extra_links = (DrReportLink(),)
    return published


def finish_run(plan: Plan, incident: Any, timeline: Any) -> None:
    """The tail of a scenario DAG, after its ``record`` task (``timeline``): the outcome
    message (``notify_outcome``: when the run's ``notify`` is on, by the one policy), the
    report (``publish``), then the ``verdict`` that fails the run when anything failed.

    The verdict also waits on the guard (``incident``): a refused guard leaves the verdict
    *upstream_failed*, so the run fails with the guard's own message as its one failure."""

    @task(task_id="notify_outcome", trigger_rule="all_done", retries=0)
    def notify_outcome(timeline: dict[str, Any], **context: Any) -> dict[str, Any]:
        from tracktion_dr.airflow.steps import guard_result
        from tracktion_dr.notify.runs import notify_outcome as send

        skip_when_the_guard_skipped(timeline, context)
        return send(plan, guard_result(context), timeline)

    @task(task_id="verdict", retries=0)
    def verdict(timeline: dict[str, Any]) -> None:
        raise_for_outcome(timeline)

    judged = verdict(timeline)
    [notify_outcome(timeline), publish_task(plan, timeline)] >> judged
    incident >> judged


def scenario_tail(
    plan: Plan,
    run: Any,
    after: list[Any],
    *,
    record_fields: Callable[[dict[str, Any], Any], dict[str, Any]],
    exclusive: bool = False,
) -> Any:
    """The one tail of every scenario DAG: ``record`` (whatever happened: the timeline
    from every step's event and the tasks that failed, to the ledger or its spool; this
    run's target locks released when ``exclusive``), then notify, publish and the verdict.

    ``record_fields(run, context)`` returns the scenario's figures for the record:
    ``rto_target_seconds`` (required), and any of ``rpo_target_seconds``,
    ``data_loss_seconds``, ``backup_used``, ``details``, ``clock_started_at``. A refused
    guard records nothing (nothing was touched) and its failure is the run's only one."""

    @task(task_id="record", trigger_rule="all_done", retries=0)
    def record(**context: Any) -> dict[str, Any]:
        from tracktion_dr.airflow.steps import guard_result

        incident = guard_result(context)
        if incident is None and guard_skipped(context):
            raise AirflowSkipException("the guard skipped this run: nothing to record")
        if incident is None:
            return {"outcome": "failed", "details": {"failed_tasks": ["guard"]}, "refused": True}
        try:
            fields = record_fields(incident, context)
            return record_timeline(context, incident=incident, **fields)
        finally:
            if exclusive and not incident.get("dry_run"):
                release_exclusivity(context)

    timeline = record()
    for upstream in after:
        upstream >> timeline
    finish_run(plan, run, timeline)
    return timeline


def publish_report(context: Any, plan: Plan, timeline: dict[str, Any]) -> dict[str, Any]:
    """Build the run's report from the ledger (Markdown, HTML, JSON) at the plan's report
    location, log its summary and where it is, and send it to the plan's report channels
    (when the run's ``notify`` param is set; best effort)."""
    from tracktion_dr.airflow.support import conninfo
    from tracktion_dr.evidence import ledger, reports
    from tracktion_dr.notify.delivery import deliver
    from tracktion_dr.notify.messages import DrMessage

    if plan.reports is None:
        log.warning("the plan has no reports section: no report written")
        return {"paths": {}, "summary": ""}
    if timeline.get("refused"):
        # Refused at the guard: nothing was touched, so nothing is in the ledger to report
        # on; the guard's own error says why.
        log.info("the run was refused before anything was touched: no report")
        return {"paths": {}, "summary": "", "skipped": "refused before anything was touched"}
    ti = context["ti"]
    if timeline.get("spooled"):
        log.warning(
            "the ledger was down: no report now; the record waits in %s and the report can "
            "be built from the ledger once it is written",
            timeline["spooled"],
        )
        return {"paths": {}, "summary": "", "skipped": "ledger unreachable"}
    report = reports.report_for_run(
        conninfo(ledger.LEDGER_CONN_ID),
        dag_id=ti.dag_id,
        run_id=ti.run_id,
        trend_runs=plan.reports.trend_runs,
    )
    paths = reports.write_report(plan.reports.location, report)
    summary = reports.summary_table(report)
    link = report_path(ti.dag_id, ti.run_id)
    log.info("\n%s", summary)
    log.info(
        "report: %s (HTML %s, JSON %s); in the UI: %s",
        paths["markdown"],
        paths["html"],
        paths["json"],
        link,
    )
    delivery: dict[str, Any] = {}
    if context["params"].get("notify"):
        delivery = deliver(
            plan,
            DrMessage(
                title=f"DR report {report['title']}: {report['outcome'].upper()}",
                text=summary + f"\n\nHTML report: {paths['html']}",
                severity="info" if report["outcome"] != "failed" else "error",
                incident_id=report["incident_id"],
                fields={"RTO": report["rto"], "RPO": report["rpo"], "report": paths["html"]},
            ),
            channels=plan.reports.channels,
        ).as_dict()
    return {
        "paths": paths,
        "summary": summary,
        "link": link,
        "delivery": delivery,
        "outcome": report["outcome"],
    }
