"""The commander's decision: which recovery starts, asked where the on-call will see it.

``RecoveryApproval`` is Airflow 3's human-in-the-loop branch: the options are the plan's
recovery scenarios (the routed one first) and "No automated recovery"; the chosen one is
what ``recovery_request`` starts. Before it waits, it writes the question - what is down,
the plan of actions, the conf the recovery would get - and its notifiers (``DrNotifier``)
post the question with the link that answers it to the on-call channels. It records who
decided and when (XCom ``decision``), also when nobody did: a timeout is recorded, then
fails the task, and the close-out escalates to the next level.

Airflow-facing (like ``dag_kit``).
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.providers.standard.exceptions import HITLTimeoutError
from airflow.providers.standard.operators.hitl import HITLBranchOperator

from tracktion_dr.core.plan import Plan, format_duration
from tracktion_dr.scenarios.recovery_routes import NO_RECOVERY

log = logging.getLogger(__name__)

DECISION_KEY = "decision"


class RecoveryApproval(HITLBranchOperator):
    def __init__(
        self,
        *,
        plan: Plan,
        start_task_id: str,
        no_recovery_task_id: str,
        **kwargs: Any,
    ):
        options = [*plan.incident_response.scenarios, NO_RECOVERY]
        mapping = {option: start_task_id for option in plan.incident_response.scenarios}
        mapping[NO_RECOVERY] = no_recovery_task_id
        kwargs.setdefault("retries", 0)
        super().__init__(
            subject="A recovery waits for your decision",
            options=options,
            options_mapping=mapping,
            response_timeout=plan.incident_response.approval_timeout,
            **kwargs,
        )
        self.plan = plan

    def execute(self, context: Any) -> Any:
        from tracktion_dr.airflow.steps import guard_result
        from tracktion_dr.scenarios.incident_response import approval_question

        run = guard_result(context) or {}
        assessment = context["ti"].xcom_pull(task_ids="assess") or {}
        question = approval_question(self.plan, run, assessment)
        self.subject, self.body = question.subject, question.body
        # The routed scenario is the first choice the UI offers.
        if run.get("scenario") in self.options:
            self.options = [run["scenario"], *[o for o in self.options if o != run["scenario"]]]
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        if event.get("error_type") == "timeout":
            context["ti"].xcom_push(
                key=DECISION_KEY,
                value={"chosen": None, "by": None, "timed_out": True},
            )
        else:
            by = event.get("responded_by_user") or {}
            context["ti"].xcom_push(
                key=DECISION_KEY,
                value={
                    "chosen": (event.get("chosen_options") or [None])[0],
                    "by": by.get("name") or by.get("id") or "unknown",
                    "at": str(event.get("responded_at") or ""),
                    "timed_out": False,
                },
            )
        try:
            return super().execute_complete(context, event)
        except HITLTimeoutError:
            log.error(
                "nobody decided within %s: the incident escalates, nothing destructive starts",
                format_duration(self.plan.incident_response.approval_timeout),
            )
            raise
