"""Deliver a DR message to the plan's channels through Airflow's providers, best effort.

A Slack outage must never stop a recovery: every channel is tried (and retried, per the
plan's ``incident_response.delivery_attempts``), each failure is logged and returned in the
report (which the run records), and nothing here raises on delivery. E-mail recipients are
contact *roles*, resolved from Airflow variables at send time.

Channels go through their providers: Slack (``SlackWebhookHook``), PagerDuty Events v2
(``PagerdutyEventsAsyncHook``; trigger/acknowledge/resolve on one dedup key per DR
incident), SMTP (``SmtpHook``), the status page (Statuspage v1 over ``HttpHook``, in
``status_page.py``: one status-page incident per DR incident).

Also here: the war room's Slack channel (``create_slack_channel``, through the Slack
provider's ``SlackHook`` on a bot-token connection), and ``page_role`` - the activation's
page of one contact role through PagerDuty, plus an e-mail to the role.
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


PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com"
PAGERDUTY_SOURCE = "tracktion-dr"


def _send_pagerduty(plan: Plan, channel: NotificationChannel, message: DrMessage) -> None:
    """PagerDuty Events API v2 through the provider's ``PagerdutyEventsAsyncHook``: trigger,
    acknowledge and resolve on the message's one dedup key per DR incident."""
    from airflow.sdk import Connection

    connection = Connection.get(channel.conn_id)
    send_pagerduty_event(
        routing_key=connection.password or "",
        events_api_url=pagerduty_events_api_url(connection.extra_dejson),
        action=message.pagerduty_action,
        summary=message.title,
        severity=message.severity,
        dedup_key=message.dedup_key or message.incident_id,
        custom_details={"text": message.text, **message.fields},
    )


def pagerduty_events_api_url(extra: dict[str, Any] | None) -> str:
    """The Events API base URL: the connection's ``events_api_url`` extra, else PagerDuty's.

    The provider's sync hook goes through the ``pagerduty`` client, which refuses any
    non-https URL; the async hook posts to ``{base_url}/v2/enqueue`` with aiohttp, so one
    code path reaches both PagerDuty and the sandbox's plain-http sink. A value written the
    older way, with the ``/v2/enqueue`` path, is accepted too."""
    url = str((extra or {}).get("events_api_url") or PAGERDUTY_EVENTS_URL).rstrip("/")
    return url.removesuffix("/v2/enqueue")


def send_pagerduty_event(
    *,
    routing_key: str,
    events_api_url: str,
    action: str,
    summary: str,
    severity: str,
    dedup_key: str | None,
    custom_details: dict[str, Any],
) -> str:
    """One Events v2 event through the provider's async hook, run to completion from this
    synchronous caller; returns the dedup key PagerDuty answered with."""
    from airflow.providers.pagerduty.hooks.pagerduty_events import PagerdutyEventsAsyncHook

    if not routing_key:
        raise ValueError("the PagerDuty connection has no routing (integration) key")
    hook = PagerdutyEventsAsyncHook(integration_key=routing_key)
    hook.base_url = events_api_url
    hook.retry_limit = 1  # deliver() owns the retries (and counts them)
    return _run_coroutine(
        hook.send_event(
            summary=summary[:1024],
            severity=severity,
            source=PAGERDUTY_SOURCE,
            action=action,
            dedup_key=dedup_key,
            custom_details=custom_details,
        )
    )


def _run_coroutine(coroutine: Any) -> Any:
    """``asyncio.run`` - in a helper thread when this thread already runs an event loop
    (a caller inside async code must not be broken by a best-effort notification)."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


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
    from tracktion_dr.notify.status_page import publish

    publish(channel.conn_id, message)


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


def page_role(plan: Plan, role: str, message: DrMessage) -> str:
    """Page one contact role (the plan's "SMS" at team activation) through PagerDuty, and
    e-mail the role when it has an address. Best effort: returns a short state for the
    run's record ("paged", "paged, e-mailed", "no contact ...", "failed: ..."), never raises.

    One PagerDuty alert per role and DR incident (dedup key ``<incident key>/<role>``), so a
    re-run of the activation does not page twice. The routing key is the role's own
    (``pagerduty_routing_key`` in its contact variable) or the plan's pagerduty channel's.
    Contact details and keys never reach the log or the returned state."""
    try:
        contact = resolve_contact(plan, role)
    except Exception as exc:  # a malformed variable must not stop the activation
        return f"failed: contact variable unreadable ({type(exc).__name__})"
    if contact is None:
        return f"no contact for role {role} (its Airflow variable is not set)"
    secrets = [str(v) for v in contact.values() if v]
    states = [_page_contact(plan, role, message, contact)]
    if contact.get("email"):
        states.append(_email_contact(plan, role, message, str(contact["email"])))
    state = ", ".join(s for s in states if s)
    if not any(s in ("paged", "e-mailed") for s in states):
        state = f"failed: {state}"
    return _redact(state, secrets)


def _page_contact(plan: Plan, role: str, message: DrMessage, contact: dict[str, Any]) -> str:
    from airflow.sdk import Connection

    channel = next((c for c in plan.notifications.values() if c.kind == "pagerduty"), None)
    try:
        connection = Connection.get(channel.conn_id) if channel else None
        routing_key = contact.get("pagerduty_routing_key") or (
            connection.password if connection else None
        )
        if not routing_key:
            return "not paged (no routing key for the role and no pagerduty channel)"
        incident_key = message.dedup_key or message.incident_id or message.title
        send_pagerduty_event(
            routing_key=str(routing_key),
            events_api_url=pagerduty_events_api_url(connection.extra_dejson if connection else {}),
            action="trigger",
            summary=message.title,
            severity=message.severity,
            dedup_key=f"{incident_key}/{role}",
            custom_details={"role": role, "text": message.text, **message.fields},
        )
    except Exception as exc:  # best effort: recorded, never raised into the activation
        log.warning("paging role %s failed: %s", role, type(exc).__name__)
        return f"page failed ({type(exc).__name__})"
    log.info("paged role %s", role)
    return "paged"


def _email_contact(plan: Plan, role: str, message: DrMessage, address: str) -> str:
    channel = next((c for c in plan.notifications.values() if c.kind == "email"), None)
    if channel is None:
        return "not e-mailed (no email channel in the plan)"
    try:
        send_email_to(channel.conn_id, [address], message.title, message.plain_text())
    except Exception as exc:  # the exception text may name the address: keep the class only
        log.warning("e-mail to role %s failed: %s", role, type(exc).__name__)
        return f"e-mail failed ({type(exc).__name__})"
    log.info("e-mailed role %s", role)
    return "e-mailed"


def _redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, "<redacted>")
    return text


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
