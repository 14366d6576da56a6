"""dr_incident_response for real (dag.test()) against the sandbox, without a recovery DAG
(scenario empty): the run alerts, activates, opens the war room, leaves the incident open
for manual recovery, records its timeline in the ledger and writes the review from it.
The path that triggers and watches a recovery run needs a scheduler: tests/e2e covers it."""

from __future__ import annotations

import json

import pytest

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states

pytestmark = pytest.mark.sandbox


def test_incident_without_recovery_dag(sandbox):
    hooks_before = len(sandbox.layout.sink_webhooks.read_text().splitlines())
    incident_id = "DR-20261126-000102"
    run = run_dag(
        "dr_incident_response",
        {
            "incident_id": incident_id,
            "environment": "drill",
            "severity": "important",
            "description": 'tracklist "search" failing\nsince the deploy',
            "scenario": "",
            "auto_recover": False,
        },
    )
    states = task_states(run)
    assert states["verdict"] == "success", states
    assert states["no_recovery"] == "success"
    assert states["start_recovery"] == "skipped" and states["approve_recovery"] == "skipped"

    activation = task_result(run, "activate_team")
    # Each role paged through PagerDuty (its own dedup key) and e-mailed.
    assert set(activation["paged"].values()) == {"paged, e-mailed"}
    war_room = task_result(run, "war_room")
    assert war_room["channel"]["name"] == "dr-20261126-000102"
    response_doc = sandbox.layout.home / "incidents" / incident_id / "response.md"
    assert war_room["document"] == str(response_doc)
    assert 'tracklist "search" failing' in response_doc.read_text()

    hooks = [
        json.loads(x) for x in sandbox.layout.sink_webhooks.read_text().splitlines()[hooks_before:]
    ]
    texts = [json.dumps(h) for h in hooks if incident_id in json.dumps(h)]
    assert any("DISASTER RECOVERY ACTIVATED" in t for t in texts)
    role_pages = {
        h["json"]["dedup_key"]
        for h in hooks
        if h["path"].startswith("/pagerduty") and incident_id in h["json"].get("dedup_key", "")
    }
    assert {f"tracktion-dr/{incident_id}/incident_commander"} <= role_pages
    # The customer notice reached the status page's one incident of this DR incident
    # (found by its metadata marker; what customers read carries no incident id).
    page = json.loads((sandbox.layout.sink_dir / "statuspage.json").read_text())
    (ours,) = [
        i
        for i in page.values()
        if i["metadata"].get("tracktion_dr", {}).get("incident_key", "").endswith(incident_id)
        and i["status"] != "resolved"
    ]
    assert any("service disruption" in u["body"] for u in ours["incident_updates"])
    assert incident_id not in json.dumps({k: v for k, v in ours.items() if k != "metadata"})
    create = [h for h in hooks if h["path"] == "/slack-api/conversations.create"]
    sent = create[-1].get("json") or create[-1].get("form") if create else {}
    assert sent["name"] == "dr-20261126-000102"
    assert any("No automated recovery running" in t for t in texts)

    review = task_result(run, "post_incident_review")
    text = open(review["document"]).read()
    assert f"# Post-Incident Review: {incident_id}" in text
    for step in ("assess", "alert_stakeholders", "activate_team", "war_room", "close_incident"):
        assert f"step {step} (succeeded)" in text
    assert "not resolved when this review was generated" in text
