"""Reports and the annual review, from ledger rows (pure rendering; the ledger round trip
is tested in tests/integration/test_drills.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from tracktion_dr.core.plan import load_plan
from tracktion_dr.evidence import reports
from tracktion_dr.evidence.review import build_review, plan_fingerprints, render_review_markdown

T0 = datetime(2026, 3, 1, 6, 0, tzinfo=UTC)


def run_row(**overrides) -> dict:
    row = {
        "id": 7,
        "dag_id": "dr_test_monthly",
        "run_id": "scheduled__2026-03-01",
        "incident_id": "DR-20260301-060000",
        "environment": "drill",
        "clock_started_at": T0,
        "recorded_at": T0 + timedelta(minutes=2),
        "outcome": "succeeded",
        "rto_target_seconds": 1800.0,
        "rto_achieved_seconds": 95.0,
        "rpo_target_seconds": 900.0,
        "data_loss_seconds": None,
        "backup_used": None,
        "details": {
            "steps": [
                {
                    "name": "database_restore:tracktion",
                    "status": "succeeded",
                    "seconds": 12.0,
                    "target_seconds": 1800.0,
                    "detail": 'restored <ok> & "validated"',
                },
            ],
            "checks": [
                {"name": "monitoring_systems", "status": "skipped", "detail": "none configured"},
            ],
            "failed_tasks": [],
        },
    }
    row.update(overrides)
    return row


def test_unmeasured_rpo_is_never_met_and_skipped_is_shown_as_skipped():
    report = reports.build_report(run_row(), [], [run_row()])
    assert report["rto"] == "met"
    assert report["rpo"] == "not measured"
    text = reports.summary_table(report)
    assert "RPO: not measured" in text and "SKIPPED" in text and "PASSED" not in text
    page = reports.render_html(report)
    assert "&lt;ok&gt; &amp; &quot;validated&quot;" in page  # escaped, not injected
    assert "<script" not in page and "http" not in page.split("<body>")[1].split("xmlns")[0]


def test_durations_are_durations_and_a_miss_is_a_miss():
    report = reports.build_report(
        run_row(rto_achieved_seconds=2400.0, data_loss_seconds=1000.0), [], []
    )
    assert report["rto"] == "MISSED" and report["rpo"] == "MISSED"
    assert "40m achieved vs 30m target: **MISSED**" in reports.render_markdown(report)


def test_report_json_round_trips(tmp_path):
    report = reports.build_report(run_row(), [], [run_row()])
    paths = reports.write_report(str(tmp_path), report)
    assert json.loads(open(paths["json"]).read())["rto_achieved_seconds"] == 95.0
    assert open(paths["html"]).read().count("<svg") == 2


def test_annual_review_counts_drills_objectives_and_recommends():
    plan = load_plan()
    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)
    runs = [run_row(recorded_at=datetime(2026, m, 1, 6, 5, tzinfo=UTC)) for m in (1, 2, 3, 5)] + [
        run_row(
            dag_id="dr_database_pitr",
            rto_achieved_seconds=2500.0,
            environment="production",
            data_loss_seconds=30.0,
            recorded_at=datetime(2026, 6, 3, tzinfo=UTC),
        ),
        run_row(
            dag_id="dr_test_quarterly",
            outcome="failed",
            recorded_at=datetime(2026, 4, 1, 7, tzinfo=UTC),
            details={"failed_tasks": ["step_1_dr_database_pitr"]},
        ),
    ]
    alerts = [{"source": "alertmanager", "labels": {"alertname": "TracktionServiceDown"}}]
    contacts = {
        "on_call_engineer": {"email": "a@b"},
        "executive": None,
        "incident_commander": {"reviewed_at": "2026-10-01T00:00:00"},
    }
    review = build_review(
        plan, runs, alerts, contacts, None, start, end, now=datetime(2026, 12, 1, tzinfo=UTC)
    )
    assert review["drills"]["monthly"] == {
        "scheduled": 12,
        "held": 4,
        "passed": 4,
        "missing": [
            "2026-04",
            "2026-06",
            "2026-07",
            "2026-08",
            "2026-09",
            "2026-10",
            "2026-11",
            "2026-12",
        ],
    }
    assert review["drills"]["quarterly"]["held"] == 1
    assert review["drills"]["quarterly"]["passed"] == 0
    pitr = next(o for o in review["objectives"] if o["dag_id"] == "dr_database_pitr")
    assert pitr["rto_met"] == 0 and "exceeds the target" in pitr["recommendations"][0]
    assert review["failures"][0]["reason"] == "step_1_dr_database_pitr"
    assert review["incidents_by_scenario"] == {"dr_database_pitr (production)": 1}
    assert review["alerts_by_type"] == {"alertmanager: TracktionServiceDown": 1}
    assert {c["role"] for c in review["contacts_needing_review"]} == {
        "on_call_engineer",
        "executive",
    }
    assert review["plan_changed_for"] is None
    changed = dict(plan_fingerprints(plan), dr_test_monthly="0" * 16)
    again = build_review(plan, runs, alerts, contacts, changed, start, end)
    assert again["plan_changed_for"] == ["dr_test_monthly"]
    assert "4 held of 12 scheduled" in render_review_markdown(review)
