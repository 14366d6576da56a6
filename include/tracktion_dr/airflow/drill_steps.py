"""One quarterly-drill chain step: a run of the step's own DAG, through the scheduler.

:class:`DrillStepOperator` is a ``TriggerDagRunOperator`` that triggers the step's DAG
with its conf (the plan's, plus the drill's incident id and clock start), waits for the
run on the triggerer (``deferrable=True``: no worker slot is held while the child runs),
then reads the child run's outcome back through the task SDK - its state, its task
states and its ``record`` (the child's timeline, from XCom) - and keeps it for the drill's
record (XCom key ``drills.CHAIN_KEY``), also when the child failed. The child is an
ordinary run of its DAG: its own tasks on their own queues, its own ledger record, visible
in the UI as a run of that DAG (run id ``<drill run id>__<step task id>``).

Airflow-facing (like ``dag_kit``); nothing here reads Airflow's metadata database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk.exceptions import AirflowFailException

from tracktion_dr.airflow.dag_kit import now_iso
from tracktion_dr.core.timeline import Event
from tracktion_dr.scenarios import drills

log = logging.getLogger(__name__)

STARTED_KEY = "step_started_at"
# How often the triggerer looks at the child run's state (a drill step takes minutes).
CHILD_POLL_SECONDS = 2


def child_run_id(drill_run_id: str, task_id: str) -> str:
    return f"{drill_run_id}__{task_id}"


class DrillStepOperator(TriggerDagRunOperator):
    """Run ``step`` (a plan ``drills.quarterly.steps`` entry) as a run of its DAG and wait
    for it. ``run`` is the drill's guard result and ``loss`` what ``simulate_loss``
    returned (XComArgs): the child's conf is the step's, plus the drill's incident id and
    its clock start (the loss). A dry run of the drill triggers nothing."""

    template_fields = (*TriggerDagRunOperator.template_fields, "run", "loss")

    def __init__(
        self, *, step: Any, run: Any, loss: Any, timeout_seconds: float | None = None, **kwargs: Any
    ):
        kwargs.setdefault("retries", 0)  # the drill is measured once
        super().__init__(
            trigger_dag_id=step.dag_id,
            trigger_run_id=child_run_id("{{ run_id }}", kwargs["task_id"]),
            conf=None,  # made from run and loss when the task runs
            wait_for_completion=True,
            deferrable=True,
            poke_interval=CHILD_POLL_SECONDS,
            # A paused step DAG would never run: fail at once, naming it.
            fail_when_dag_is_paused=True,
            openlineage_inject_parent_info=False,
            **kwargs,
        )
        self.step = step
        self.run = run
        self.loss = loss
        self.timeout_seconds = timeout_seconds

    def execute(self, context: Any) -> Any:
        started = now_iso()
        if self.run.get("dry_run"):
            log.info("dry run: would run %s with %s", self.trigger_dag_id, self.step.conf)
            event = Event(self.task_id, "gate", started, now_iso(), "skipped", "dry run")
            return {"event": event.__dict__}
        self.conf = drills.chain_step_conf(self.step, self.run, self.loss)
        context["ti"].xcom_push(key=STARTED_KEY, value=started)
        log.info("running %s (%s) with conf %s", self.trigger_dag_id, self.step.label, self.conf)
        return super().execute(context)  # triggers the child run, then defers

    def execute_complete(self, context: Any, event: Any) -> dict[str, Any]:
        finished = now_iso()
        ti = context["ti"]
        _, data = event
        run_id = data["run_ids"][0]
        state = str(getattr(data.get(run_id), "value", data.get(run_id)))
        result = read_child_run(ti, self.trigger_dag_id, run_id, state)
        started = ti.xcom_pull(task_ids=self.task_id, key=STARTED_KEY) or finished
        ran = drills.judge_chain_step(self.step, result, started, finished, self.timeout_seconds)
        ti.xcom_push(key=drills.CHAIN_KEY, value=ran)  # for the record, even failed
        log.info("%s", ran["detail"])
        if ran["status"] != "succeeded":
            raise AirflowFailException(ran["detail"])
        event_done = Event(self.task_id, "gate", started, finished, "succeeded", ran["detail"])
        return {"event": event_done.__dict__}


class ChildDagRunOperator(TriggerDagRunOperator):
    """Run another DAG with the conf ``make_conf(run)`` (``run``: the guard's result, an
    XComArg) and wait for it on the triggerer; the result is the child run's outcome
    (:func:`read_child_run`) plus this step's event. A child run that did not succeed
    fails the step, naming the run. A dry run also runs the child (as a dry run: the conf
    says so) - it prints the child's own plan of actions."""

    template_fields = (*TriggerDagRunOperator.template_fields, "run")

    def __init__(
        self, *, trigger_dag_id: str, run: Any, make_conf: Callable[[dict], dict], **kwargs: Any
    ):
        kwargs.setdefault("retries", 0)  # a drill is measured once
        super().__init__(
            trigger_dag_id=trigger_dag_id,
            trigger_run_id=child_run_id("{{ run_id }}", kwargs["task_id"]),
            conf=None,  # made from run when the task runs
            wait_for_completion=True,
            deferrable=True,
            poke_interval=CHILD_POLL_SECONDS,
            fail_when_dag_is_paused=True,
            openlineage_inject_parent_info=False,
            **kwargs,
        )
        self.run = run
        self.make_conf = make_conf

    def execute(self, context: Any) -> Any:
        self.conf = self.make_conf(self.run)
        context["ti"].xcom_push(key=STARTED_KEY, value=now_iso())
        log.info("running %s with conf %s", self.trigger_dag_id, self.conf)
        return super().execute(context)  # triggers the child run, then defers

    def execute_complete(self, context: Any, event: Any) -> dict[str, Any]:
        finished = now_iso()
        ti = context["ti"]
        _, data = event
        run_id = data["run_ids"][0]
        state = str(getattr(data.get(run_id), "value", data.get(run_id)))
        result = read_child_run(ti, self.trigger_dag_id, run_id, state)
        started = ti.xcom_pull(task_ids=self.task_id, key=STARTED_KEY) or finished
        record = result.get("record") or {}
        if state != "success":
            failed = sorted(t for t, s in result["task_states"].items() if s == "failed")
            raise AirflowFailException(
                f"{self.trigger_dag_id} run {run_id} ended {state}"
                + (f" (failed: {', '.join(failed)})" if failed else "")
                + ": see that run's log and report"
            )
        detail = f"{self.trigger_dag_id} {run_id}: {record.get('outcome', 'done')}"
        event_done = Event(self.task_id, "gate", started, finished, "succeeded", detail)
        return {**result, "detail": detail, "event": event_done.__dict__}


def read_child_run(ti: Any, dag_id: str, run_id: str, state: str) -> dict[str, Any]:
    """The child run's outcome, read through the task SDK: {"dag_id", "run_id", "state",
    "record" (its record task's timeline, None when it has none), "task_states"}."""
    record = ti.xcom_pull(dag_id=dag_id, run_id=run_id, task_ids="record")
    states = ti.get_task_states(dag_id=dag_id, run_ids=[run_id])
    task_states = {
        task_id: str(getattr(s, "value", s))
        for task_id, s in ((states or {}).get(run_id) or {}).items()
    }
    return {
        "dag_id": dag_id,
        "run_id": run_id,
        "state": state,
        "record": record if isinstance(record, dict) else None,
        "task_states": task_states,
    }


def dag_paused_in_airflow(ti: Any) -> Any:
    """``dag_id -> paused?`` through the task SDK (None when Airflow does not know it)."""

    def paused(dag_id: str) -> bool | None:
        try:
            return bool(ti.get_dag(dag_id).is_paused)
        except Exception:  # not (yet) parsed by Airflow: the guard names it
            return None

    return paused
