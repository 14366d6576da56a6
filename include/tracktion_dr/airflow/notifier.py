"""The DR notifier: an Airflow ``BaseNotifier`` that posts to the plan's Slack channels.

Two uses, one class:

- ``task_failure_notifier`` (in every DAG's ``default_args``): a task that crashed or timed
  out is reported ONCE, on its final failure (Airflow calls ``on_failure_callback`` only
  when no retry is left; retries go to ``on_retry_callback``), with the link to the task
  in the UI, the DAG and task ids, the try number and the exception's class and first
  line. A task killed outright (SIGKILL, lost worker) cannot run its own callback: the
  scheduler notices the missing heartbeat and has the DAG processor run the same
  ``on_failure_callback`` (there is no exception then; the reason says so).
- ``DrNotifier(...)`` in a HITL operator's ``notifiers=[...]``: the waiting question's
  subject and body, and the link where a human answers it (Airflow's "required actions"
  page of that task).

Best effort, like every delivery: a dead Slack is logged, never raised into the task or
the callback runner. A failure the job already reported itself (an exception marked with
``mark_notified``, e.g. a backup job's ``BackupJobFailed`` after it paged) is not reported
a second time: the job's own message says more (what failed, with its problems).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseNotifier

log = logging.getLogger(__name__)

NOTIFIED_ATTRIBUTE = "dr_notified"
REASON_LIMIT = 300


def mark_notified(exc: BaseException) -> BaseException:
    """Mark ``exc`` as already reported to the channels (the failure callback skips it)."""
    setattr(exc, NOTIFIED_ATTRIBUTE, True)
    return exc


def already_notified(exc: BaseException | None) -> bool:
    return bool(exc is not None and getattr(exc, NOTIFIED_ATTRIBUTE, False))


def short_reason(exc: BaseException | str | None) -> str:
    """The exception's class and the first line of its message, at most 300 characters
    (the rest of a traceback, with whatever values it holds, stays in the task log)."""
    if exc is None:
        return (
            "no exception reached the callback: the task's process was killed or its worker "
            "was lost (heartbeat timeout)"
        )
    if isinstance(exc, str):
        return exc.splitlines()[0][:REASON_LIMIT] if exc else "unknown"
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return _masked(f"{type(exc).__name__}: {first_line}"[:REASON_LIMIT].rstrip(": "))


def _masked(text: str) -> str:
    """Airflow's secrets masker over ``text`` (every connection password and sensitive
    variable this process has seen), so a secret quoted in an error stays out of Slack."""
    try:
        from airflow.sdk._shared.secrets_masker import redact
    except ImportError:  # a private path: without it the reason goes as it is
        return text
    return str(redact(text))


def _api_base_url() -> str:
    from airflow.configuration import conf

    return str(conf.get("api", "base_url", fallback="http://localhost:8080/")).rstrip("/")


def task_link(ti: Any) -> str:
    """The task instance's page in the UI (Airflow's own ``log_url`` when it has one)."""
    url = getattr(ti, "log_url", None)
    if isinstance(url, str) and url:
        return url
    return f"{_api_base_url()}/dags/{ti.dag_id}/runs/{ti.run_id}/tasks/{ti.task_id}"


def required_actions_link(context: dict[str, Any]) -> str:
    """Where a human answers a waiting HITL task: Airflow's "required actions" page, built
    by the HITL operator itself when the task is one (else the same route by hand)."""
    task = context.get("task")
    ti = context["ti"]
    generate = getattr(task, "generate_link_to_ui", None)
    if callable(generate):
        try:
            return generate(task_instance=ti)
        except Exception as exc:  # no base_url: fall back to the route
            log.warning("HITL link from the operator failed: %s", type(exc).__name__)
    return (
        f"{_api_base_url()}/dags/{ti.dag_id}/runs/{ti.run_id}/tasks/{ti.task_id}"
        f"/required_actions?map_index={getattr(ti, 'map_index', -1)}"
    )


class DrNotifier(BaseNotifier):
    """Post a DR message to the plan's Slack channels (or ``channels``), best effort.

    ``kind="failure"`` describes the failed task from the callback's context;
    ``kind="hitl"`` (default) relays the waiting question - ``title``/``text`` (templated)
    override the HITL operator's subject and body."""

    template_fields: Sequence[str] = ("title", "text")

    def __init__(
        self,
        *,
        kind: str = "hitl",
        title: str | None = None,
        text: str | None = None,
        channels: Sequence[str] | None = None,
        severity: str = "warning",
    ):
        super().__init__()
        if kind not in ("hitl", "failure"):
            raise ValueError(f"DrNotifier kind must be 'hitl' or 'failure', not {kind!r}")
        self.kind = kind
        self.title = title
        self.text = text
        self.channels = list(channels) if channels is not None else None
        self.severity = severity

    def notify(self, context: dict[str, Any]) -> None:  # type: ignore[override]
        try:
            message = self.message(context)
            if message is None:
                return
            self.send(message)
        except Exception as exc:  # best effort: never fail a task or the callback runner
            log.warning("DR notification not sent: %s", short_reason(exc))

    def message(self, context: dict[str, Any]):
        if self.kind == "failure":
            exception = context.get("exception")
            if already_notified(exception):
                log.info("task failure already reported by the task itself; not sent again")
                return None
            return failure_message(context, severity=self.severity)
        return hitl_message(context, title=self.title, text=self.text)

    def send(self, message) -> None:
        from tracktion_dr.core.plan import load_plan
        from tracktion_dr.notify.delivery import deliver

        plan = load_plan()
        channels = self.channels or [
            name for name, channel in plan.notifications.items() if channel.kind == "slack"
        ]
        report = deliver(plan, message, channels=channels)
        if report.failed:
            log.warning("DR notification: failed channels %s", sorted(report.failed))


def failure_message(context: dict[str, Any], *, severity: str = "error"):
    from tracktion_dr.notify.messages import DrMessage

    ti = context["ti"]
    exception = context.get("exception")
    reason = short_reason(exception)
    timed_out = type(exception).__name__ in ("AirflowTaskTimeout", "TimeoutError")
    verb = "timed out" if timed_out else "failed"
    try_number = getattr(ti, "try_number", None)
    conf = getattr(context.get("dag_run"), "conf", None) or {}
    incident_id = conf.get("incident_id") if isinstance(conf, dict) else None
    fields = {
        "DAG": ti.dag_id,
        "task": ti.task_id,
        "try": str(try_number) if try_number is not None else "?",
        "run": ti.run_id,
        "reason": reason,
        "link": task_link(ti),
    }
    return DrMessage(
        title=f"Task {verb}: {ti.dag_id}.{ti.task_id}",
        text=f"{ti.dag_id} / {ti.task_id} {verb} on its final try. Open the link for the log.",
        severity=severity,  # type: ignore[arg-type]
        incident_id=incident_id or None,
        fields=fields,
    )


def hitl_message(context: dict[str, Any], *, title: str | None, text: str | None):
    from tracktion_dr.notify.messages import DrMessage

    ti = context["ti"]
    task = context.get("task")
    subject = title or getattr(task, "subject", None) or f"Decision needed: {ti.task_id}"
    body = text or getattr(task, "body", None) or ""
    conf = getattr(context.get("dag_run"), "conf", None) or {}
    incident_id = conf.get("incident_id") if isinstance(conf, dict) else None
    link = required_actions_link(context)
    options = getattr(task, "options", None)
    fields = {"DAG": ti.dag_id, "task": ti.task_id, "answer here": link}
    if options:
        fields["options"] = ", ".join(str(option) for option in options)
    return DrMessage(
        title=str(subject),
        text=f"{body}\n\nAnswer here: {link}".strip(),
        severity="warning",
        incident_id=incident_id or None,
        fields=fields,
    )


# The one failure callback of every DAG (``support.DEFAULT_ARGS``).
task_failure_notifier = DrNotifier(kind="failure", severity="error")
