"""The status page's decisions, without a page: which incident is ours, what customers read."""

from __future__ import annotations

from tracktion_dr.notify.messages import DrMessage
from tracktion_dr.notify.status_page import (
    MARKER_KEY,
    MARKER_NAMESPACE,
    create_body,
    customer_name,
    customer_text,
    find_ours,
    plan_write,
    update_body,
)

KEY = "tracktion-dr/DR-20261126-020304"


def _message(status: str | None = "investigating", **extra) -> DrMessage:
    return DrMessage(
        title=extra.pop("title", "DISASTER RECOVERY: DR-20261126-020304"),
        text=extra.pop(
            "text",
            "Incident ID: DR-20261126-020304\nDatabase unreachable\n"
            "- Ran the recovery dr_database_restore (succeeded)\n"
            "Run manual__2026-11-26T02:03:04+00:00 finished\n(incident DR-20261126-020304)",
        ),
        severity="critical",
        incident_id="DR-20261126-020304",
        dedup_key=KEY,
        status_page_status=status,
        **extra,
    )


def _incident(incident_id: str, key: str | None, created_at: str = "2026-11-26T02:00:00") -> dict:
    metadata = {MARKER_NAMESPACE: {MARKER_KEY: key}} if key else {}
    return {
        "id": incident_id,
        "status": "investigating",
        "metadata": metadata,
        "created_at": created_at,
    }


def test_customers_never_read_internal_identifiers():
    body = create_body(_message())["incident"]
    for text in (body["name"], body["body"]):
        assert "DR-2026" not in text and "dr_database_restore" not in text
        assert "manual__" not in text
    assert body["name"] == "DISASTER RECOVERY"
    assert "Incident ID" not in body["body"]  # a line holding only the id goes with it
    assert "Database unreachable" in body["body"]
    assert "- Ran the recovery (succeeded)" in body["body"]
    assert not body["body"].rstrip().endswith("()")


def test_the_marker_lives_in_metadata_only():
    body = create_body(_message())["incident"]
    assert body["metadata"] == {MARKER_NAMESPACE: {MARKER_KEY: KEY}}
    assert set(update_body(_message())["incident"]) == {"status", "body"}


def test_text_without_identifiers_is_unchanged():
    text = 'Line "one"\n\nWhat happened:\nthe disk filled up: 100%'
    assert customer_text(text) == text
    assert customer_name(_message(title="DR-20261126-020304")) == "Service disruption"


def test_ours_is_found_by_marker_among_unresolved():
    unresolved = [
        _incident("other", "tracktion-dr/DR-20261126-000000"),
        _incident("manual", None),
        _incident("later", KEY, "2026-11-26T02:05:00"),
        _incident("first", KEY, "2026-11-26T02:01:00"),
    ]
    assert find_ours(unresolved, KEY)["id"] == "first"
    assert find_ours(unresolved[:2], KEY) is None


def test_first_message_creates_later_ones_update_by_id():
    action, incident_id, body = plan_write(_message(), [])
    assert (action, incident_id) == ("create", None) and body["incident"][
        "status"
    ] == "investigating"
    existing = [_incident("abc123", KEY)]
    assert plan_write(_message("identified"), existing)[:2] == ("update", "abc123")
    action, incident_id, body = plan_write(_message("resolved"), existing)
    assert (action, incident_id, body["incident"]["status"]) == ("update", "abc123", "resolved")


def test_resolved_without_an_open_incident_creates_nothing():
    assert plan_write(_message("resolved"), []) == ("nothing", None, None)


def test_status_defaults_follow_severity():
    info = DrMessage(title="t", text="x", severity="info", incident_id="DR-20261126-020304")
    assert plan_write(info, [])[2]["incident"]["status"] == "monitoring"
    assert plan_write(_message(None), [])[2]["incident"]["status"] == "investigating"
