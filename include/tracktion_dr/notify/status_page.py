"""The customer status page, through the Atlassian Statuspage v1 API (the HTTP provider).

One DR incident is ONE status page incident: the first message creates it, later ones
update it, the "resolved" one resolves it - always by the Statuspage incident's own ``id``.
Nothing is remembered locally: before writing, the page's *unresolved* incidents are read
and ours is recognised by a marker in the incident's ``metadata`` (Statuspage keeps
metadata off the public page), so a re-run, a retried task or a second worker finds the
incident the first one created instead of opening another. (Two workers racing within the
same second can still both create; nothing in the Statuspage API offers an idempotency key.
The incident response sends its status-page messages from one task at a time.)

Customers read the name and body: internal identifiers - the DR incident id, DAG ids, run
ids - are taken out of both (``customer_text``); the incident id lives only in the marker.

The connection (``http``): host = the API base (``https://api.statuspage.io``; the
sandbox's sink), password = the API key (sent as ``Authorization: OAuth <key>``), extra
``page_id``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from tracktion_dr.core.incident import INCIDENT_ID_PATTERN
from tracktion_dr.notify.messages import DrMessage

log = logging.getLogger(__name__)

STATUSES = ("investigating", "identified", "monitoring", "resolved")
# metadata namespace -> key: where our marker lives on a Statuspage incident.
MARKER_NAMESPACE = "tracktion_dr"
MARKER_KEY = "incident_key"
DEFAULT_NAME = "Service disruption"
REQUEST_TIMEOUT = 10

# DAG ids of this project and Airflow run ids (manual__2026-..., incident__x, ...).
_INTERNAL_IDS = re.compile(
    r"\b(?:dr_[a-z0-9_]+|[a-z_]+__[\w:+.\-]+)\b|" + INCIDENT_ID_PATTERN.strip("^$")
)


def incident_key(message: DrMessage) -> str:
    """What identifies the DR incident across messages (its dedup key)."""
    key = message.dedup_key or message.incident_id
    if not key:
        raise ValueError("a status page message needs an incident_id or a dedup_key")
    return key


def status_of(message: DrMessage) -> str:
    """The Statuspage state this message sets (default: from the severity)."""
    if message.status_page_status:
        return message.status_page_status
    return "monitoring" if message.severity == "info" else "investigating"


def customer_text(text: str) -> str:
    """``text`` without internal identifiers (incident, DAG and run ids). A line whose
    value was only an identifier ("Incident ID: DR-...") is dropped; "(incident DR-...)"
    goes with its brackets."""
    kept = []
    for line in text.splitlines():
        scrubbed = _scrub(line)
        if scrubbed != line.rstrip() and (scrubbed.endswith(":") or not re.search(r"\w", scrubbed)):
            continue
        kept.append(scrubbed)
    return "\n".join(kept).strip()


def customer_name(message: DrMessage) -> str:
    return _scrub(message.title).strip(" :-") or DEFAULT_NAME


def _scrub(line: str) -> str:
    scrubbed = _INTERNAL_IDS.sub("", line)
    if scrubbed == line:
        return line.rstrip()
    scrubbed = re.sub(r"\(\s*(?:incident|run|dag)?\s*\)", "", scrubbed)
    return re.sub(r"(?<=\S)[ \t]{2,}", " ", scrubbed).rstrip()


def marker(message: DrMessage) -> dict[str, dict[str, str]]:
    return {MARKER_NAMESPACE: {MARKER_KEY: incident_key(message)}}


def find_ours(unresolved: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """The unresolved Statuspage incident carrying our marker for ``key`` (the oldest, if
    a race ever created two), else None."""
    ours = [
        incident
        for incident in unresolved
        if ((incident.get("metadata") or {}).get(MARKER_NAMESPACE) or {}).get(MARKER_KEY) == key
    ]
    ours.sort(key=lambda incident: str(incident.get("created_at") or ""))
    return ours[0] if ours else None


def create_body(message: DrMessage) -> dict[str, Any]:
    return {
        "incident": {
            "name": customer_name(message),
            "status": status_of(message),
            "body": customer_text(message.text),
            "metadata": marker(message),
        }
    }


def update_body(message: DrMessage) -> dict[str, Any]:
    return {"incident": {"status": status_of(message), "body": customer_text(message.text)}}


def plan_write(
    message: DrMessage, unresolved: list[dict[str, Any]]
) -> tuple[str, str | None, dict[str, Any] | None]:
    """What one message does to the page: ("create", None, body), ("update", id, body),
    or ("nothing", None, None) for a "resolved" with no open incident of ours (never
    opened, or already resolved by an earlier try)."""
    existing = find_ours(unresolved, incident_key(message))
    if existing is not None:
        return "update", str(existing["id"]), update_body(message)
    if status_of(message) == "resolved":
        return "nothing", None, None
    return "create", None, create_body(message)


class StatusPageClient:
    """Statuspage v1 over the HTTP provider's ``HttpHook`` (one hook per method)."""

    def __init__(self, conn_id: str):
        from airflow.sdk import Connection

        self.conn_id = conn_id
        connection = Connection.get(conn_id)
        self.page_id = str((connection.extra_dejson or {}).get("page_id") or "")
        if not self.page_id:
            raise ValueError(f"connection {conn_id}: extra 'page_id' is not set")
        if not connection.password:
            raise ValueError(f"connection {conn_id}: the API key (password) is not set")
        self._headers = {"Authorization": f"OAuth {connection.password}"}

    def _call(self, method: str, endpoint: str, body: dict[str, Any] | None = None) -> Any:
        from airflow.providers.http.hooks.http import HttpHook

        hook = HttpHook(method=method, http_conn_id=self.conn_id)
        response = hook.run(
            endpoint=f"v1/pages/{self.page_id}/{endpoint}",
            json=body,
            headers=self._headers,
            extra_options={"timeout": REQUEST_TIMEOUT},
        )
        return response.json()

    def unresolved(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "incidents/unresolved"))

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "incidents", body)

    def update(self, incident_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("PATCH", f"incidents/{incident_id}", body)


def publish(conn_id: str, message: DrMessage) -> dict[str, Any]:
    """Create, update or resolve the one Statuspage incident of this DR incident; returns
    ``{"action", "id", "status"}`` (no text: the caller records it)."""
    client = StatusPageClient(conn_id)
    action, incident_id, body = plan_write(message, client.unresolved())
    if action == "create":
        assert body is not None
        incident_id = str(client.create(body)["id"])
    elif action == "update":
        assert incident_id is not None and body is not None
        client.update(incident_id, body)
    log.info("status page: %s incident %s (%s)", action, incident_id or "-", status_of(message))
    return {"action": action, "id": incident_id, "status": status_of(message)}
