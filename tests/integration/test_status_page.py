"""The status page through the HTTP provider against the sink's Statuspage v1 API.

When a DR incident's messages go to the status page, Then exactly one Statuspage incident
is created, updated and resolved by its id; When the first message is sent again (a
re-run), Then no second incident appears; customers never read the DR incident id.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tracktion_dr.core.plan import load_plan
from tracktion_dr.notify.delivery import deliver
from tracktion_dr.notify.messages import DrMessage
from tracktion_dr.notify.status_page import StatusPageClient, publish
from tracktion_sandbox.connections import SINK

pytestmark = pytest.mark.sandbox
CONN_ID = "dr_status_page"


def _message(incident_id: str, status: str, text: str) -> DrMessage:
    return DrMessage(
        title=f"Service Disruption - Tracktion ({incident_id})",
        text=f"{text}\n(incident {incident_id})",
        severity="critical",
        incident_id=incident_id,
        dedup_key=f"tracktion-dr/{incident_id}",
        status_page_status=status,  # type: ignore[arg-type]
    )


def _fresh_incident_id(offset: int = 0) -> str:
    """A DR incident id no earlier session of this sandbox used (the page keeps its
    incidents, resolved ones too, across sessions - like the real one)."""
    return (datetime.now(UTC) + timedelta(seconds=offset)).strftime("DR-%Y%m%d-%H%M%S")


def _ours(incident_id: str) -> list[dict]:
    """Every incident of the page (resolved too) that carries this DR incident's marker."""
    page = json.loads((_sink_dir() / "statuspage.json").read_text())
    key = f"tracktion-dr/{incident_id}"
    return [
        i for i in page.values() if i["metadata"].get("tracktion_dr", {}).get("incident_key") == key
    ]


def _sink_dir():
    from tracktion_sandbox.layout import SandboxLayout

    return SandboxLayout().sink_dir


def test_one_incident_created_updated_and_resolved_by_its_id(sandbox):
    incident_id = _fresh_incident_id()
    first = _message(incident_id, "investigating", "We are investigating a disruption.")
    created = publish(CONN_ID, first)
    assert created["action"] == "create"
    again = publish(CONN_ID, first)  # a re-run of the same step
    assert again == {**created, "action": "update"}

    updated = publish(CONN_ID, _message(incident_id, "identified", "Cause found; restoring."))
    assert (updated["action"], updated["id"]) == ("update", created["id"])
    resolved = publish(CONN_ID, _message(incident_id, "resolved", "Service restored."))
    assert (resolved["action"], resolved["id"]) == ("update", created["id"])
    assert publish(CONN_ID, _message(incident_id, "resolved", "Service restored."))["action"] == (
        "nothing"
    )  # resolved already: nothing to reopen or duplicate

    (incident,) = _ours(incident_id)
    assert incident["id"] == created["id"] and incident["status"] == "resolved"
    assert [u["status"] for u in reversed(incident["incident_updates"])] == [
        "investigating",
        "investigating",
        "identified",
        "resolved",
    ]
    public = json.dumps({k: v for k, v in incident.items() if k != "metadata"})
    assert incident_id not in public
    assert incident["name"] == "Service Disruption - Tracktion"


def test_the_incident_is_found_among_unresolved_through_deliver(sandbox):
    incident_id = _fresh_incident_id(offset=3600)
    plan = load_plan()
    for status in ("investigating", "investigating", "monitoring"):
        report = deliver(plan, _message(incident_id, status, "x"), channels=["status_page"])
        assert report.sent == ["status_page"], report.failed
    (incident,) = _ours(incident_id)
    assert incident["status"] == "monitoring"
    ids = [i["id"] for i in StatusPageClient(CONN_ID).unresolved()]
    assert incident["id"] in ids


def test_the_sink_answers_like_statuspage(sandbox):
    base = f"{SINK}/statuspage/v1/pages/sandboxpage01/incidents"
    auth = {"Authorization": "OAuth sandbox-statuspage-api-key"}
    assert httpx.get(f"{base}/unresolved", timeout=5).status_code == 401
    assert (
        httpx.patch(f"{base}/nope", json={"incident": {}}, headers=auth, timeout=5).status_code
        == 404
    )
    created = httpx.post(
        base,
        json={"incident": {"name": "n", "status": "investigating", "body": "b"}},
        headers=auth,
        timeout=5,
    )
    assert created.status_code == 201 and created.json()["id"]
    patched = httpx.patch(
        f"{base}/{created.json()['id']}",
        json={"incident": {"status": "resolved", "body": "done"}},
        headers=auth,
        timeout=5,
    )
    assert patched.status_code == 200 and patched.json()["resolved_at"]
    assert (
        httpx.post(
            base, json={"incident": {"name": "n", "status": "fixed"}}, headers=auth, timeout=5
        ).status_code
        == 422
    )
