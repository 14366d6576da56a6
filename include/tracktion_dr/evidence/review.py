"""The annual plan review, from the ledger (the seed invented its incident numbers).

* achieved RTO / RPO per scenario (DAG) over the period against targets, with a
  recommendation where the average misses the target;
* drills held vs scheduled (12 monthly, 4 quarterly), by month / quarter;
* failed runs and their reasons (the failed tasks the ledger recorded);
* incidents by type: recovery runs outside the drills, and alerts received, by source
  and alert name;
* contacts whose Airflow variable is missing or stale (no ``reviewed_at`` within a year);
* DAGs whose plan entries changed since the previous review (fingerprints of the plan
  sections each DAG is built from, kept in ``dr.plan_reviews``).
"""

from __future__ import annotations

import hashlib
import html
import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tracktion_dr.core.plan import Plan
from tracktion_dr.evidence.reports import REPORT_FILES, dur

DRILL_DAGS = ("dr_test_monthly", "dr_test_quarterly")
NOT_INCIDENTS = (*DRILL_DAGS, "dr_post_recovery_validation", "dr_plan_review_annual")

SCHEMA = """
CREATE SCHEMA IF NOT EXISTS dr;
CREATE TABLE IF NOT EXISTS dr.plan_reviews (
    id            bigserial PRIMARY KEY,
    period_start  timestamptz NOT NULL,
    period_end    timestamptz NOT NULL,
    reviewed_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    fingerprints  jsonb NOT NULL,
    review        jsonb NOT NULL
);
"""


def _sha(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan_fingerprints(plan: Plan) -> dict[str, str]:
    """A fingerprint of the plan sections each DAG family is built from."""
    data = plan.model_dump(mode="json")
    envs = data["environments"]
    return {
        "dr_test_monthly": _sha(
            [(data.get("drills") or {}).get("monthly"), data["test_schedule"].get("monthly")]
        ),
        "dr_test_quarterly": _sha(
            [(data.get("drills") or {}).get("quarterly"), data["test_schedule"].get("quarterly")]
        ),
        "dr_post_recovery_validation": _sha({k: v.get("validation") for k, v in envs.items()}),
        "dr_database_restore": _sha(
            {k: [v["databases"], v["clusters"], v["backups"]] for k, v in envs.items()}
        ),
        "dr_database_pitr": _sha({k: [v["clusters"], v["backups"]] for k, v in envs.items()}),
        "dr_initial_assessment": _sha(
            {
                k: [v["services"], v.get("external_dependencies"), v.get("storage")]
                for k, v in envs.items()
            }
        ),
        "dr_incident_response": _sha(
            [
                data["incident_response"],
                data["alert_routes"],
                data["notifications"],
                data["escalation"],
            ]
        ),
        "dr_backup_*": _sha(data["backup_schedule"]),
        "tiers": _sha([data["tiers"], data["data_categories"]]),
    }


def previous_fingerprints(conninfo: str, before: datetime) -> dict[str, str] | None:
    with psycopg.connect(conninfo, connect_timeout=10, row_factory=dict_row) as conn:
        conn.execute(SCHEMA)
        row = conn.execute(
            "SELECT fingerprints FROM dr.plan_reviews WHERE reviewed_at < %s"
            " ORDER BY reviewed_at DESC LIMIT 1",
            (before,),
        ).fetchone()
    return row["fingerprints"] if row else None


def save_review(conninfo: str, review: dict[str, Any]) -> None:
    with psycopg.connect(conninfo, connect_timeout=10, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute(
            "INSERT INTO dr.plan_reviews (period_start, period_end, fingerprints, review)"
            " VALUES (%s, %s, %s, %s)",
            (
                review["period_start"],
                review["period_end"],
                Jsonb(review["fingerprints"]),
                Jsonb(json.loads(json.dumps(review, default=str))),
            ),
        )


def scheduled_times(cron: str, start: datetime, end: datetime) -> list[datetime]:
    """When the plan's cron scheduled a drill in [start, end)."""
    from croniter import croniter

    times, it = [], croniter(cron, start - timedelta(seconds=1))
    while (moment := it.get_next(datetime)) < end:
        times.append(moment)
    return times


def _quarter(moment: datetime) -> str:
    return f"{moment:%Y}-Q{(moment.month - 1) // 3 + 1}"


def build_review(
    plan: Plan,
    runs: list[dict[str, Any]],
    alerts: list[dict[str, Any]],
    contacts: dict[str, dict[str, Any] | None],
    previous: dict[str, str] | None,
    start: datetime,
    end: datetime,
    now: datetime | None = None,
) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    by_dag: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        if run["outcome"] != "dry_run":
            by_dag[run["dag_id"]].append(run)
    objectives = []
    for dag_id, rows in sorted(by_dag.items()):
        rto = [r["rto_achieved_seconds"] for r in rows if r["rto_achieved_seconds"] is not None]
        loss = [r["data_loss_seconds"] for r in rows if r["data_loss_seconds"] is not None]
        rto_target = min(r["rto_target_seconds"] for r in rows)
        rpo_targets = [r["rpo_target_seconds"] for r in rows if r["rpo_target_seconds"]]
        entry = {
            "dag_id": dag_id,
            "runs": len(rows),
            "failed": sum(1 for r in rows if r["outcome"] == "failed"),
            "rto_measured": len(rto),
            "rto_average_seconds": sum(rto) / len(rto) if rto else None,
            "rto_worst_seconds": max(rto) if rto else None,
            "rto_target_seconds": rto_target,
            "rto_met": sum(1 for v in rto if v <= rto_target),
            "rpo_measured": len(loss),
            "data_loss_average_seconds": sum(loss) / len(loss) if loss else None,
            "rpo_target_seconds": min(rpo_targets) if rpo_targets else None,
        }
        recommendations = []
        if entry["rto_average_seconds"] is not None and entry["rto_average_seconds"] > rto_target:
            recommendations.append(
                f"average RTO {dur(entry['rto_average_seconds'])} exceeds the target "
                f"{dur(rto_target)}: speed the procedure up or revise the tier's RTO"
            )
        if (
            entry["data_loss_average_seconds"] is not None
            and entry["rpo_target_seconds"]
            and entry["data_loss_average_seconds"] > entry["rpo_target_seconds"]
        ):
            recommendations.append(
                f"average data lost {dur(entry['data_loss_average_seconds'])} exceeds the RPO "
                f"{dur(entry['rpo_target_seconds'])}: archive WAL more often or revise the RPO"
            )
        if not rto:
            recommendations.append("RTO never measured in the period")
        entry["recommendations"] = recommendations
        objectives.append(entry)
    # Scheduled = the plan's cron occurrences in the period; a drill is "held" for a
    # scheduled month (quarter) when a run was recorded in that month (quarter).
    schedule = plan.test_schedule
    months = sorted(
        {f"{t:%Y-%m}" for t in scheduled_times(schedule["monthly"].cron, start, end)}
        if "monthly" in schedule
        else set()
    )
    quarters = sorted(
        {_quarter(t) for t in scheduled_times(schedule["quarterly"].cron, start, end)}
        if "quarterly" in schedule
        else set()
    )
    held_monthly = {
        m: [r for r in by_dag.get("dr_test_monthly", []) if f"{r['recorded_at']:%Y-%m}" == m]
        for m in months
    }
    held_quarterly = {
        q: [r for r in by_dag.get("dr_test_quarterly", []) if _quarter(r["recorded_at"]) == q]
        for q in quarters
    }

    def tally(held: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        return {
            "scheduled": len(held),
            "held": sum(1 for v in held.values() if v),
            "passed": sum(1 for v in held.values() if any(r["outcome"] == "succeeded" for r in v)),
            "missing": [k for k, v in held.items() if not v],
        }

    drills = {"monthly": tally(held_monthly), "quarterly": tally(held_quarterly)}
    failures = [
        {
            "dag_id": r["dag_id"],
            "incident_id": r["incident_id"],
            "recorded_at": r["recorded_at"].isoformat(),
            "reason": ", ".join((r.get("details") or {}).get("failed_tasks") or [])
            or "see the run",
        }
        for r in runs
        if r["outcome"] == "failed"
    ]
    incidents: dict[str, int] = defaultdict(int)
    for r in runs:
        if r["dag_id"] not in NOT_INCIDENTS and r["outcome"] != "dry_run":
            incidents[f"{r['dag_id']} ({r['environment']})"] += 1
    alert_types: dict[str, int] = defaultdict(int)
    for a in alerts:
        alert_types[f"{a['source']}: {(a.get('labels') or {}).get('alertname', 'unnamed')}"] += 1
    stale_contacts = []
    for role, value in sorted(contacts.items()):
        if value is None:
            stale_contacts.append({"role": role, "problem": "variable missing"})
            continue
        reviewed = value.get("reviewed_at")
        if not reviewed:
            stale_contacts.append({"role": role, "problem": "no reviewed_at in the variable"})
        elif now - datetime.fromisoformat(reviewed).replace(tzinfo=UTC) > timedelta(days=365):
            stale_contacts.append({"role": role, "problem": f"last reviewed {reviewed}"})
    fingerprints = plan_fingerprints(plan)
    changed = (
        None
        if previous is None
        else sorted(k for k, v in fingerprints.items() if previous.get(k) != v)
    )
    return {
        "period_start": start.isoformat(),
        "period_end": end.isoformat(),
        "objectives": objectives,
        "drills": drills,
        "failures": failures,
        "incidents_by_scenario": dict(incidents),
        "alerts_by_type": dict(alert_types),
        "contacts_needing_review": stale_contacts,
        "plan_changed_for": changed,
        "fingerprints": fingerprints,
    }


def render_review_markdown(review: dict[str, Any]) -> str:
    out = [
        f"# DR annual plan review {review['period_start'][:10]} - {review['period_end'][:10]}",
        "",
        "## RTO / RPO achieved per scenario",
        "",
        "| DAG | runs | failed | RTO avg | RTO worst | RTO target | met | data lost avg | RPO target | recommendation |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in review["objectives"]:
        out.append(
            f"| {o['dag_id']} | {o['runs']} | {o['failed']} | {dur(o['rto_average_seconds'])} | "
            f"{dur(o['rto_worst_seconds'])} | {dur(o['rto_target_seconds'])} | "
            f"{o['rto_met']}/{o['rto_measured']} | {dur(o['data_loss_average_seconds'])} | "
            f"{dur(o['rpo_target_seconds']) if o['rpo_target_seconds'] else '-'} | "
            f"{'; '.join(o['recommendations']) or 'none'} |"
        )
    d = review["drills"]
    out += [
        "",
        "## Drills held vs scheduled",
        "",
        f"- Monthly: {d['monthly']['held']} held of {d['monthly']['scheduled']} scheduled, "
        f"{d['monthly']['passed']} passed; missing: {', '.join(d['monthly']['missing']) or 'none'}",
        f"- Quarterly: {d['quarterly']['held']} held of {d['quarterly']['scheduled']} scheduled, "
        f"{d['quarterly']['passed']} passed; missing: {', '.join(d['quarterly']['missing']) or 'none'}",
        "",
        "## Failures",
        "",
    ]
    out += [
        f"- {f['recorded_at'][:19]} {f['dag_id']} {f['incident_id']}: {f['reason']}"
        for f in review["failures"]
    ] or ["- none"]
    out += ["", "## Incidents by type (from the ledger)", ""]
    out += [f"- {k}: {v}" for k, v in sorted(review["incidents_by_scenario"].items())] or [
        "- no recovery runs"
    ]
    out += [f"- alerts {k}: {v}" for k, v in sorted(review["alerts_by_type"].items())]
    out += ["", "## Contacts needing review", ""]
    out += [f"- {c['role']}: {c['problem']}" for c in review["contacts_needing_review"]] or [
        "- none"
    ]
    out += ["", "## Plan entries changed since the previous review", ""]
    changed = review["plan_changed_for"]
    out.append(
        "- first review: no previous fingerprints"
        if changed is None
        else ("- " + ", ".join(changed) if changed else "- none")
    )
    return "\n".join(out) + "\n"


def write_review(location: str, review: dict[str, Any]) -> dict[str, str]:
    folder = Path(location) / "dr_plan_review_annual"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"review_{review['period_start'][:10]}_{review['period_end'][:10]}"
    markdown = render_review_markdown(review)
    paths = {kind: str(folder / f"{stem}.{ext}") for kind, ext in REPORT_FILES.items()}
    Path(paths["markdown"]).write_text(markdown, encoding="utf-8")
    Path(paths["html"]).write_text(
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>DR annual review</title>"
        "</head><body><pre>" + html.escape(markdown) + "</pre></body></html>",
        encoding="utf-8",
    )
    Path(paths["json"]).write_text(json.dumps(review, indent=2, default=str), encoding="utf-8")
    return paths
