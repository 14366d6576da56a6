"""The step kit: every scenario step is written once, through :func:`step`.

A step is a plain function ``fn(run, *upstream, **context) -> str | dict`` that does one
thing to the system and says what it did. The decorator turns it into an Airflow task and
owns everything around it, the same for every DAG:

* **the run**: ``run`` is the guard's result (a dict on the wire, readable in the UI's
  XCom tab); steps that run whatever happened before them (``after_all=True``) read it
  themselves, and when the guard refused there is no run: the step is skipped with a
  sentence, never a ``TypeError`` on the missing value;
* **dry run**: acting steps are skipped with "dry run" (checks and bookkeeping still run);
* **timing and the event**: the step's event (start, finish, status, detail, milestone)
  goes to XCom under ``event`` for the run's record;
* **refusal means no retry**: a :class:`~tracktion_dr.core.errors.Refused` ends the task at
  once with its message and HINT (so does ``ValidationFailed``: the same copy fails the
  same checks again);
* **a finding of failure fails the task**: a step that returns ``status="failed"`` (a check
  that measured something down) fails its task without a retry, its result kept in XCom
  for the steps that run after it;
* **the retry policy per kind of step** (:data:`STEP_POLICIES`): destructive steps are
  resumable (they look at the actual state first), so they are retried; checks once;
  bookkeeping and notification never (their failure must not hide the recovery's outcome);
* **the lease**: an acting step renews its run's target locks as it starts;
* **the host it runs on**: ``@step(kind, host="database_primary")`` says which host the
  step acts on (a role: ``database_primary``, ``database_replica``, ``application``,
  ``storage``); the kit sets the task's ``queue`` to that host's worker queue from the plan
  (:meth:`~tracktion_dr.core.plan.Plan.queue_for`). A step without ``host`` only talks over
  the network and stays on the default queue, and so does every step when the plan names
  no hosts (the local sandbox; LocalExecutor ignores queues anyway). Operators that are not
  steps (gates) take the same routing with ``**on_host(role)``.

The guard is the one task that makes ``run``; :func:`guard` wraps it the same way (its
refusals are final and its log shows the plan of actions).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal

from airflow.sdk import task
from airflow.sdk.exceptions import AirflowFailException

from tracktion_dr.core.errors import InvalidInput, Refused, ValidationFailed
from tracktion_dr.core.plan import HOST_ROLES, HostRole, Plan, load_plan, plan_path
from tracktion_dr.core.timeline import Event

log = logging.getLogger(__name__)

StepKind = Literal["guard", "destructive", "check", "bookkeeping", "notify"]

# Retry policy per kind of step (task arguments). A gate's budget is the RTO, not a retry
# count: gates are RtoGate sensors with retries=0.
STEP_POLICIES: dict[str, dict[str, Any]] = {
    # Reads only; a crash is worth one more look, a refusal is final (see below).
    "guard": {"retries": 1, "retry_delay": timedelta(seconds=5)},
    # Resumable: inspects the actual state first, so a retry continues, never repeats.
    "destructive": {"retries": 2, "retry_delay": timedelta(seconds=10)},
    "check": {"retries": 1, "retry_delay": timedelta(seconds=5)},
    "bookkeeping": {"retries": 0},
    "notify": {"retries": 0},
}
ACTING_KINDS = frozenset({"destructive"})


@functools.lru_cache(maxsize=4)
def _routing_plan(path: str, mtime_ns: int) -> Plan:
    return load_plan(path)


def host_queue(role: HostRole | None, plan: Plan | None = None) -> str | None:
    """The Celery queue of the host a ``role`` step acts on, from ``plan`` (default: the
    plan in force, ``DR_PLAN``, read once per file version); None: the default queue."""
    if role is None:
        return None
    if role not in HOST_ROLES:
        raise InvalidInput(
            "host",
            f"unknown host role {role!r}",
            hint=f"one of {', '.join(HOST_ROLES)} (the thing the step acts on)",
        )
    if plan is None:
        path = plan_path()
        plan = _routing_plan(str(path), os.stat(path).st_mtime_ns)
    return plan.queue_for(role)


def on_host(role: HostRole | None, plan: Plan | None = None) -> dict[str, Any]:
    """Task arguments routing an operator to the worker of the host ``role`` names:
    ``{"queue": ...}``, or nothing when the plan names no such host."""
    queue = host_queue(role, plan)
    return {"queue": queue} if queue else {}


def now_iso() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat()


def event(
    name: str,
    started_at: str,
    status: str = "succeeded",
    detail: str = "",
    milestone: str = "",
    kind: str = "step",
) -> dict[str, Any]:
    """The event a step returns under ``event`` (``milestone="redundancy"`` on the step
    that brings a standby back; ``kind="gate"`` for a step whose success is a moment the
    RTO clock reads, see :func:`step`)."""
    return Event(name, kind, started_at, now_iso(), status, detail, milestone).__dict__.copy()  # type: ignore[arg-type]


def guard_result(context: Any) -> dict[str, Any] | None:
    """The run as the guard made it; None when the guard refused (or never ran)."""
    value = context["ti"].xcom_pull(task_ids="guard")
    return value if isinstance(value, dict) else None


def refusal_is_final(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A :class:`Refused` ends the task without retries, with its message (and HINT)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Refused as exc:
            log.error("refused, nothing was touched: %s", exc)
            raise AirflowFailException(f"refused, nothing was touched: {exc}") from None

    return wrapper


def _renew_lease(context: Any, run: dict[str, Any]) -> None:
    if run.get("exclusivity") != "ledger":
        return
    from tracktion_dr.airflow.support import conninfo
    from tracktion_dr.evidence import ledger, locks

    try:
        locks.renew(
            conninfo(ledger.LEDGER_CONN_ID),
            dag_id=context["ti"].dag_id,
            run_id=context["ti"].run_id,
        )
    except ledger.UNREACHABLE:
        log.warning(
            "the ledger does not answer: lease not renewed (Airflow's run state still holds)"
        )


def step(
    kind: StepKind = "destructive",
    *,
    task_id: str | None = None,
    milestone: str = "",
    after_all: bool = False,
    skip_in_dry_run: bool | None = None,
    event_kind: Literal["step", "gate"] = "step",
    host: HostRole | None = None,
    **task_kwargs: Any,
) -> Callable[[Callable[..., Any]], Any]:
    """Make ``fn(run, *upstream, **context)`` a scenario step (see the module doc).

    ``host``: what the step acts on locally (``database_primary``, ``database_replica``,
    ``application``, ``storage``): the task goes to that host's queue (see the module doc).

    ``after_all``: the step runs whatever happened upstream (trigger rule *all done*, e.g.
    starting services again after a failed restore); it is wired without a ``run``
    argument in the graph (``restart()``), reads the guard's result itself and passes it to
    ``fn`` like every step. Its trigger rule is *all done* unless ``trigger_rule`` says
    otherwise (e.g. ``one_failed`` for a rollback).

    ``event_kind="gate"``: the step's event is a gate's (a step that itself proves
    components recovered, as a drill's tests do: the RTO clock reads when it succeeded).
    """

    dry_run_skips = kind in ACTING_KINDS if skip_in_dry_run is None else skip_in_dry_run

    def decorate(fn: Callable[..., Any]) -> Any:
        name = task_id or fn.__name__
        kwargs = {**STEP_POLICIES[kind], **on_host(host), **task_kwargs}
        if after_all:
            kwargs.setdefault("trigger_rule", "all_done")

        def finished(started: str, status: str, detail: str) -> dict[str, Any]:
            return event(name, started, status, detail, milestone, event_kind)

        def body(
            run: dict[str, Any] | None, args: tuple[Any, ...], context: dict[str, Any]
        ) -> dict[str, Any]:
            started = now_iso()
            if run is None:
                detail = "the guard refused: nothing was touched"
                log.info("%s: skipped (%s)", name, detail)
                return {"event": finished(started, "skipped", detail)}
            if run.get("dry_run") and dry_run_skips:
                log.info("DRY RUN: %s would run now (see the guard's plan of actions)", name)
                return {"event": finished(started, "skipped", "dry run")}
            if kind in ACTING_KINDS:
                _renew_lease(context, run)
            try:
                result = fn(run, *args, **context)
            except Refused as exc:
                log.error("refused: %s", exc)
                raise AirflowFailException(f"{name} refused: {exc}") from None
            except ValidationFailed as exc:
                # The same copy fails the same checks again: retrying only delays the
                # operator (nothing was swapped).
                log.error("%s", exc)
                raise AirflowFailException(str(exc)) from None
            if isinstance(result, dict):
                detail = str(result.pop("detail", ""))
                status = str(result.pop("status", "succeeded"))
            else:
                detail, status, result = str(result or ""), "succeeded", {}
            value = {"event": finished(started, status, detail), **result}
            if status == "failed":
                # A step that found a failure fails its task (red in the grid, the run
                # fails), keeping what it measured as its result for the steps after it.
                context["ti"].xcom_push(key="return_value", value=value)
                log.error("%s: %s", name, detail)
                raise AirflowFailException(f"{name}: {detail}")
            return value

        if after_all:

            @task(task_id=name, **kwargs)
            def runner_after_all(*args: Any, **context: Any) -> dict[str, Any]:
                return body(guard_result(context), args, context)

            runner_after_all.__doc__ = fn.__doc__
            return runner_after_all

        @task(task_id=name, **kwargs)
        def runner(run: dict[str, Any], *args: Any, **context: Any) -> dict[str, Any]:
            return body(run, args, context)

        runner.__doc__ = fn.__doc__
        return runner

    return decorate


def guard(host: HostRole | None = None, **task_kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
    """The guard task: ``fn(**context) -> run`` checks everything and touches nothing. Its
    refusals are final; its result is the run every later step receives. ``host``: where
    what it inspects lives (e.g. a cluster's WAL and backups), as for :func:`step`."""

    def decorate(fn: Callable[..., Any]) -> Any:
        kwargs = {**STEP_POLICIES["guard"], **on_host(host), **task_kwargs}

        @task(task_id="guard", **kwargs)
        def run_guard(**context: Any) -> dict[str, Any]:
            return refusal_is_final(fn)(**context)

        run_guard.__doc__ = fn.__doc__
        return run_guard

    return decorate


def print_plan_of_actions(run: dict[str, Any], actions: list[str], header: str = "") -> None:
    """The guard's plan of actions, numbered, in its log (the dry run's whole output)."""
    log.info(
        "%splan of actions%s:\n%s",
        f"{header}; " if header else "",
        " (DRY RUN: nothing will be touched)" if run.get("dry_run") else "",
        "\n".join(f"  {i}. {a}" for i, a in enumerate(actions, 1)),
    )
