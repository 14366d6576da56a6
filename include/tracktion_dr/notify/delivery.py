"""Deliver a DR message to the plan's channels through Airflow's providers, best effort.

A Slack outage must never stop a recovery: every channel is tried (and retried, per the
plan's ``incident_response.delivery_attempts``), each failure is logged and returned in the
report (which the run records), and nothing here raises on delivery. E-mail recipients are
contact *roles*, resolved from Airflow variables at send time.

Also here: the war room's Slack channel (``create_slack_channel``, through the Slack
provider's ``SlackHook`` on a bot-token connection) and e-mail to single contacts
(``send_email_to``) for paging each role at activation.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tracktion_dr.core.plan import NotificationChannel, Plan
from tracktion_dr.notify.messages import DrMessage

log = logging.getLogger(__name__)


@dataclass
class DeliveryReport:
    sent: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "failed": self.failed, "attempts": self.attempts}


def deliver(
    plan: Plan,
    message: DrMessage,
    channels: Iterable[str] | None = None,
    *,
    attempts: int | None = None,
    retry_delay: float | None = None,
) -> DeliveryReport:
    """Send ``message`` to the named channels (default: all the plan's channels).

    Each channel is tried up to ``attempts`` times (default: the plan's
    ``incident_response.delivery_attempts``), ``retry_delay`` seconds apart, independently
    of the others: a flaky Slack delays only Slack, and a dead one is recorded, not raised.
    """
    settings = plan.incident_response
    tries = attempts or settings.delivery_attempts
    delay = (
        retry_delay if retry_delay is not None else settings.delivery_retry_delay.total_seconds()
    )
    report = DeliveryReport()
    names = list(channels) if channels is not None else list(plan.notifications)
    for name in names:
        channel = plan.notifications.get(name)
        if channel is None:
            report.failed[name] = "no such channel in the plan"
            continue
        for attempt in range(1, tries + 1):
            report.attempts[name] = attempt
            try:
                _SENDERS[channel.kind](plan, channel, message)
            except Exception as exc:  # best effort: retry, then record and carry on
                reason = f"{type(exc).__name__}: {exc}"[:300]
                log.warning(
                    "notification channel %s failed (attempt %d of %d): %s",
                    name,
                    attempt,
                    tries,
                    reason,
                )
                if attempt == tries:
                    report.failed[name] = reason
                else:
                    time.sleep(delay)
                continue
            report.sent.append(name)
            log.info("notified %s (%s): %s", name, channel.kind, message.title)
            break
    return report


def _send_slack(plan: Plan, channel: NotificationChannel, message: DrMessage) -> None:
    from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

    SlackWebhookHook(slack_webhook_conn_id=channel.conn_id).send(text=message.slack_text())


PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"


def _send_pagerduty(plan: Plan, channel: NotificationChannel, message: DrMessage) -> None:
    """PagerDuty Events API v2. The event is built by the provider's own helper; it is
    posted to the connection's ``events_api_url`` extra (default: PagerDuty's endpoint),
    because the pagerduty client refuses any non-https URL and so cannot reach the
    sandbox's sink - one code path, exercised by the tests, serves both."""
    import httpx
    from airflow.providers.pagerduty.hooks.pagerduty_events import prepare_event_data
    from airflow.sdk import Connection

    connection = Connection.get(channel.conn_id)
    url = (connection.extra_dejson or {}).get("events_api_url", PAGERDUTY_EVENTS_URL)
    event = prepare_event_data(
        summary=message.title[:1024],
        severity=message.severity,
        source="tracktion-dr",
        action=message.pagerduty_action,
        dedup_key=message.dedup_key or message.incident_id,
        custom_details={"text": message.text, **message.fields},
    )
    event["event_action"] = event.pop("action")
    event["routing_key"] = connection.password
    response = httpx.post(url, json=event, timeout=10)
    response.raise_for_status()


def _send_email(plan: Plan, channel: NotificationChannel, message: DrMessage) -> None:
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    recipients = resolve_role_emails(
        plan, [r.strip() for r in channel.target.split(",") if r.strip()]
    )
    if not recipients:
        raise ValueError(f"no e-mail address found for roles {channel.target!r}")
    html = "<pre>" + _escape_html(message.plain_text()) + "</pre>"
    with SmtpHook(smtp_conn_id=channel.conn_id) as hook:
        hook.send_email_smtp(to=recipients, subject=message.title, html_content=html)


def _send_status_page(plan: Plan, channel: NotificationChannel, message: DrMessage) -> None:
    from airflow.providers.http.hooks.http import HttpHook
    from airflow.sdk import Connection

    prefix = (Connection.get(channel.conn_id).extra_dejson or {}).get("path_prefix", "")
    hook = HttpHook(method="POST", http_conn_id=channel.conn_id)
    response = hook.run(
        endpoint=f"{prefix}/api/v1/incidents",
        json={
            "incident": {
                "name": message.title,
                "status": message.status_page_status
                or ("investigating" if message.severity != "info" else "monitoring"),
                "body": message.text,
                "incident_id": message.incident_id,
            }
        },
        extra_options={"timeout": 10},
    )
    response.raise_for_status()


def _send_webhook(plan: Plan, channel: NotificationChannel, message: DrMessage) -> None:
    from airflow.providers.http.hooks.http import HttpHook

    hook = HttpHook(method="POST", http_conn_id=channel.conn_id)
    hook.run(
        endpoint=channel.target or "/",
        json={
            "title": message.title,
            "text": message.text,
            "severity": message.severity,
            "incident_id": message.incident_id,
            "fields": message.fields,
        },
        extra_options={"timeout": 10},
    ).raise_for_status()


_SENDERS = {
    "slack": _send_slack,
    "pagerduty": _send_pagerduty,
    "email": _send_email,
    "status_page": _send_status_page,
    "webhook": _send_webhook,
}


def slack_channel_name(incident_id: str) -> str:
    """``dr-<incident>`` as Slack allows it (lower case, at most 80 characters):
    DR-20261126-031200 becomes dr-20261126-031200."""
    suffix = incident_id.lower().removeprefix("dr-")
    return f"dr-{suffix}"[:80]


def create_slack_channel(conn_id: str, name: str, purpose: str) -> dict[str, Any]:
    """Create the war-room channel through the Slack provider (Web API
    ``conversations.create``, bot token from the connection). Idempotent: a channel that
    already exists ("name_taken") is reported as existing, not as a failure."""
    from airflow.providers.slack.hooks.slack import SlackHook
    from slack_sdk.errors import SlackApiError

    hook = SlackHook(slack_conn_id=conn_id)
    try:
        response = hook.client.conversations_create(name=name)
    except SlackApiError as exc:
        if exc.response.get("error") == "name_taken":
            return {"name": name, "created": False, "detail": "already exists"}
        raise
    channel = response.get("channel") or {}
    channel_id = channel.get("id")
    if channel_id:
        hook.client.conversations_setPurpose(channel=channel_id, purpose=purpose[:250])
    return {"name": name, "id": channel_id, "created": True, "detail": "created"}


def resolve_contact(plan: Plan, role: str) -> dict[str, Any] | None:
    """A role's contact details (name, e-mail, phone) from the Airflow variable the plan
    names, falling back to the backup variable. Never log the result: it is personal data."""
    from airflow.sdk import Variable

    contact = plan.contacts.get(role)
    if contact is None:
        return None
    for variable in (contact.variable, contact.backup_variable):
        if not variable:
            continue
        raw = Variable.get(variable, default=None)
        if raw:
            return json.loads(raw) if isinstance(raw, str) else dict(raw)
    return None


def send_email_to(conn_id: str, recipients: list[str], subject: str, body: str) -> None:
    """One e-mail through the SMTP provider (plain text kept verbatim in <pre>)."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    html = "<pre>" + _escape_html(body) + "</pre>"
    with SmtpHook(smtp_conn_id=conn_id) as hook:
        hook.send_email_smtp(to=recipients, subject=subject, html_content=html)


def resolve_role_emails(plan: Plan, roles: list[str]) -> list[str]:
    """Contact roles -> e-mail addresses, from the Airflow variables the plan names."""
    from airflow.sdk import Variable

    addresses: list[str] = []
    for role in roles:
        contact = plan.contacts.get(role)
        if contact is None:
            log.warning("unknown contact role %s", role)
            continue
        raw = Variable.get(contact.variable, default=None)
        if not raw:
            log.warning("contact role %s: variable %s is not set", role, contact.variable)
            continue
        details = json.loads(raw) if isinstance(raw, str) else raw
        if details.get("email"):
            addresses.append(str(details["email"]))
    return addresses


def _escape_html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
