"""Post an assessment to the plan's Slack channels, best effort.

A Slack outage must never fail the run that reports on an outage: each delivery failure is
logged and returned in the result instead of raised.
"""

from __future__ import annotations

import logging

from tracktion_dr.plan import Plan

log = logging.getLogger(__name__)


def assessment_text(result: dict) -> str:
    incident = result["incident"]
    lines = [
        f"DR assessment {incident['incident_id']} ({incident['environment']}): {result['status']}",
    ]
    for row in result["results"]:
        lines.append(f"- {row['name']}: {row['status']} ({row['detail']})")
    return "\n".join(lines)


def post_assessment(plan: Plan, result: dict) -> dict[str, list[str]]:
    from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

    sent: list[str] = []
    failed: list[str] = []
    text = assessment_text(result)
    for name, channel in plan.notifications.items():
        if channel.kind != "slack":
            continue
        try:
            SlackWebhookHook(slack_webhook_conn_id=channel.conn_id).send(text=text)
            sent.append(name)
        except Exception as exc:  # best effort: record, never raise
            log.warning("notification channel %s failed: %s", name, exc)
            failed.append(name)
    return {"sent": sent, "failed": failed}
