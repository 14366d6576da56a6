"""Run reports from the ledger: Markdown, a self-contained HTML page, and JSON.

Everything in a report is read back from the ledger (``dr.runs`` / ``dr.events``), so the
numbers are the ledger's, not the DAG's memory of them. Durations are durations (the
seed's report printed epoch seconds as one); RTO and RPO are "met" only when measured and
within target, otherwise "not measured"; a skipped check is shown as skipped.

The HTML page has no external resource: its charts are inline SVG (RTO achieved vs target
per step, and the trend of the last N drills of the same DAG).
"""

from __future__ import annotations

import html
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tracktion_dr.core.plan import format_duration
from tracktion_dr.evidence import ledger


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


def dur(seconds: float | None) -> str:
    return "not measured" if seconds is None else format_duration(timedelta(seconds=seconds))


def verdict(achieved: float | None, target: float | None) -> str:
    if achieved is None or target is None:
        return "not measured"
    return "met" if achieved <= target else "MISSED"


# --- reading the ledger --------------------------------------------------------------------


def ledger_run(
    conninfo: str, *, dag_id: str, run_id: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    with psycopg.connect(conninfo, connect_timeout=10, row_factory=dict_row) as conn:
        ledger.ensure_schema(conn)
        run = conn.execute(
            "SELECT * FROM dr.runs WHERE dag_id = %s AND run_id = %s", (dag_id, run_id)
        ).fetchone()
        if run is None:
            raise LookupError(f"no ledger record for {dag_id} run {run_id}")
        events = conn.execute(
            "SELECT * FROM dr.events WHERE run = %s ORDER BY position", (run["id"],)
        ).fetchall()
    return run, events


def trend_rows(conninfo: str, dag_id: str, limit: int) -> list[dict[str, Any]]:
    """The last ``limit`` recorded runs of a DAG, oldest first."""
    rows = ledger.recent_runs(conninfo, dag_id=dag_id, limit=limit)
    return list(reversed(rows))


def runs_between(conninfo: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    with psycopg.connect(conninfo, connect_timeout=10, row_factory=dict_row) as conn:
        ledger.ensure_schema(conn)
        return conn.execute(
            "SELECT * FROM dr.runs WHERE recorded_at >= %s AND recorded_at < %s"
            " ORDER BY recorded_at",
            (start, end),
        ).fetchall()


# --- the report's data ---------------------------------------------------------------------


def build_report(
    run: dict[str, Any], events: list[dict[str, Any]], trend: list[dict[str, Any]]
) -> dict[str, Any]:
    details = run.get("details") or {}
    steps = details.get("steps")
    if not steps:  # a recovery DAG: its events are its steps
        steps = [
            {
                "name": e["name"],
                "kind": e["kind"],
                "status": e["status"],
                "seconds": (e["finished_at"] - e["started_at"]).total_seconds(),
                "target_seconds": None,
                "detail": e["detail"],
            }
            for e in events
        ]
    rto_target = run["rto_target_seconds"]
    achieved = run["rto_achieved_seconds"]
    rpo_target = run["rpo_target_seconds"]
    loss = run["data_loss_seconds"]
    return {
        "title": f"{run['dag_id']} {run['incident_id']}",
        "dag_id": run["dag_id"],
        "run_id": run["run_id"],
        "ledger_id": run["id"],
        "incident_id": run["incident_id"],
        "environment": run["environment"],
        "outcome": run["outcome"],
        "clock_started_at": _iso(run["clock_started_at"]),
        "recorded_at": _iso(run["recorded_at"]),
        "rto_target_seconds": rto_target,
        "rto_achieved_seconds": achieved,
        "rto": verdict(achieved, rto_target),
        "rpo_target_seconds": rpo_target,
        "data_loss_seconds": loss,
        "rpo": verdict(loss, rpo_target),
        "backup_used": run.get("backup_used"),
        "steps": steps,
        "checks": details.get("checks") or [],
        "failed_tasks": details.get("failed_tasks") or [],
        "notes": details.get("notes") or [],
        "events": [
            {
                "name": e["name"],
                "kind": e["kind"],
                "status": e["status"],
                "started_at": _iso(e["started_at"]),
                "finished_at": _iso(e["finished_at"]),
                "detail": e["detail"],
            }
            for e in events
        ],
        "trend": [
            {
                "incident_id": r["incident_id"],
                "recorded_at": _iso(r["recorded_at"]),
                "outcome": r["outcome"],
                "rto_achieved_seconds": r["rto_achieved_seconds"],
                "rto_target_seconds": r["rto_target_seconds"],
                "data_loss_seconds": r["data_loss_seconds"],
            }
            for r in trend
        ],
    }


# --- rendering -------------------------------------------------------------------------------


def summary_table(report: dict[str, Any]) -> str:
    """The plain-text table the demo prints and the task log shows."""
    lines = [
        f"{report['title']} ({report['environment']}): {report['outcome'].upper()}",
        f"{'STEP':<42} {'STATUS':<10} {'TOOK':>9} {'TARGET':>9}  VERDICT",
    ]
    for step in report["steps"]:
        target = step.get("target_seconds")
        lines.append(
            f"{step['name'][:42]:<42} {step['status']:<10} {dur(step.get('seconds')):>9} "
            f"{(dur(target) if target else '-'):>9}  "
            f"{verdict(step.get('seconds'), target) if target else '-'}"
        )
    lines.append(
        f"RTO: {dur(report['rto_achieved_seconds'])} achieved vs "
        f"{dur(report['rto_target_seconds'])} target: {report['rto']}"
    )
    lines.append(
        f"RPO: {dur(report['data_loss_seconds'])} of data lost vs "
        f"{dur(report['rpo_target_seconds']) if report['rpo_target_seconds'] else 'no'} target: "
        f"{report['rpo']}"
    )
    for check in report["checks"]:
        lines.append(
            f"check {check['name']:<28} {check['status'].upper():<8} {check['detail'][:90]}"
        )
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    out = [
        f"# DR report: {report['title']}",
        "",
        f"- **Outcome**: {report['outcome']}",
        f"- **Environment**: {report['environment']}",
        f"- **DAG run**: `{report['dag_id']}` / `{report['run_id']}` (ledger run {report['ledger_id']})",
        f"- **Clock started**: {report['clock_started_at']}",
        f"- **RTO**: {dur(report['rto_achieved_seconds'])} achieved vs "
        f"{dur(report['rto_target_seconds'])} target: **{report['rto']}**",
        f"- **RPO**: {dur(report['data_loss_seconds'])} of data lost vs "
        f"{dur(report['rpo_target_seconds']) if report['rpo_target_seconds'] else 'no'} target: "
        f"**{report['rpo']}**",
    ]
    if report.get("backup_used"):
        out.append(f"- **Backup used**: {report['backup_used']}")
    out += [
        "",
        "## Steps",
        "",
        "| Step | Status | Took | Target | Verdict | Detail |",
        "|---|---|---|---|---|---|",
    ]
    for step in report["steps"]:
        target = step.get("target_seconds")
        out.append(
            f"| {step['name']} | {step['status']} | {dur(step.get('seconds'))} | "
            f"{dur(target) if target else '-'} | "
            f"{verdict(step.get('seconds'), target) if target else '-'} | "
            f"{(step.get('detail') or '').replace('|', '/')[:300]} |"
        )
    if report["checks"]:
        out += ["", "## Checks", "", "| Check | Status | Evidence |", "|---|---|---|"]
        for check in report["checks"]:
            out.append(
                f"| {check['name']} | {check['status'].upper()} | "
                f"{check['detail'].replace('|', '/')[:400]} |"
            )
    if report["notes"]:
        out += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    out += [
        "",
        f"## Trend (last {len(report['trend'])} runs of {report['dag_id']})",
        "",
        "| Recorded | Incident | Outcome | RTO achieved | RTO target | Data lost |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["trend"]:
        out.append(
            f"| {row['recorded_at']} | {row['incident_id']} | {row['outcome']} | "
            f"{dur(row['rto_achieved_seconds'])} | {dur(row['rto_target_seconds'])} | "
            f"{dur(row['data_loss_seconds'])} |"
        )
    return "\n".join(out) + "\n"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def step_chart_svg(steps: list[dict[str, Any]], fallback_target: float | None) -> str:
    """One bar per step: the time it took as a share of its RTO target (the black line is
    100 % of the target; red past it). Targets differ by hours between tiers, so a common
    linear scale would hide every bar; each row is scaled to its own target."""
    rows = [s for s in steps if s.get("seconds") is not None]
    width, left, row_h = 860, 300, 26
    span = width - left - 150  # 0 .. 150 % of the target
    height = 34 + row_h * max(len(rows), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'aria-label="RTO achieved vs target per step" class="chart">'
    ]
    target_x = left + span / 1.5
    parts.append(
        f'<text x="{left}" y="14" font-size="11" fill="#555">bar: time taken as a share of the '
        f"step's RTO target; black line: the target (100 %)</text>"
    )
    parts.append(
        f'<line x1="{target_x:.1f}" x2="{target_x:.1f}" y1="20" y2="{height - 4}" '
        f'stroke="#222" stroke-width="2"/>'
    )
    for i, step in enumerate(rows):
        y = 24 + i * row_h
        target = step.get("target_seconds") or fallback_target
        share = step["seconds"] / target if target else 0.0
        w = span * min(share, 1.5) / 1.5
        over = share > 1 or step["status"] == "failed"
        color = "#c0392b" if over else "#2e86c1"
        label = (
            f"{dur(step['seconds'])} of {dur(target)} ({share * 100:.2f} %)"
            if target
            else dur(step["seconds"])
        )
        parts.append(f'<text x="4" y="{y + 14}" font-size="12">{_e(step["name"][:44])}</text>')
        parts.append(
            f'<rect x="{left}" y="{y + 2}" width="{max(w, 2):.1f}" height="16" fill="{color}">'
            f"<title>{_e(label)}</title></rect>"
        )
        parts.append(
            f'<text x="{left + max(w, 2) + 4:.1f}" y="{y + 14}" font-size="11">{_e(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def trend_chart_svg(trend: list[dict[str, Any]]) -> str:
    """RTO achieved per run (dots and line) against the target (dashed), oldest left."""
    width, height, pad = 760, 220, 40
    points = [(i, r) for i, r in enumerate(trend)]
    values = [r["rto_achieved_seconds"] for _, r in points if r["rto_achieved_seconds"] is not None]
    targets = [r["rto_target_seconds"] for _, r in points if r["rto_target_seconds"]]
    # Scaled to the measured values (a 30m target would flatten 30s recoveries to the
    # axis); the target line is drawn when it falls inside, and named either way.
    top = max(values + [1]) * 1.25
    n = max(len(points) - 1, 1)

    def x(i: int) -> float:
        return pad + (width - 2 * pad) * i / n

    def y(v: float) -> float:
        return height - pad - (height - 2 * pad) * v / top

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'aria-label="RTO trend of the last runs" class="chart">',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/>',
    ]
    if targets and targets[-1] > top:
        parts.append(
            f'<text x="{width - pad - 260}" y="{pad - 10}" font-size="11" fill="#c0392b">'
            f"target {_e(dur(targets[-1]))}: above the chart (every run well inside)</text>"
        )
    elif targets:
        ty = y(targets[-1])
        parts.append(
            f'<line x1="{pad}" x2="{width - pad}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#c0392b" '
            f'stroke-dasharray="6 4"><title>target {_e(dur(targets[-1]))}</title></line>'
        )
        parts.append(
            f'<text x="{width - pad - 120}" y="{ty - 4:.1f}" font-size="11" fill="#c0392b">'
            f"target {_e(dur(targets[-1]))}</text>"
        )
    line = [
        f"{x(i):.1f},{y(r['rto_achieved_seconds']):.1f}"
        for i, r in points
        if r["rto_achieved_seconds"] is not None
    ]
    if len(line) > 1:
        parts.append(
            f'<polyline points="{" ".join(line)}" fill="none" stroke="#2e86c1" stroke-width="2"/>'
        )
    for i, r in points:
        label = f"{r['incident_id']}: {dur(r['rto_achieved_seconds'])} ({r['outcome']})"
        if r["rto_achieved_seconds"] is None:
            parts.append(
                f'<text x="{x(i) - 4:.1f}" y="{height - pad - 4}" font-size="12" fill="#999">'
                f"?<title>{_e(label)}</title></text>"
            )
            continue
        color = "#c0392b" if r["outcome"] == "failed" else "#2e86c1"
        parts.append(
            f'<circle cx="{x(i):.1f}" cy="{y(r["rto_achieved_seconds"]):.1f}" r="4" fill="{color}">'
            f"<title>{_e(label)}</title></circle>"
        )
    parts.append(
        f'<text x="{pad}" y="{height - 12}" font-size="11" fill="#555">last {len(points)} runs, '
        f"oldest left; y: RTO achieved (0 - {_e(dur(top))})</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1000px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:left;vertical-align:top;font-size:14px}th{background:#f4f4f4}
.succeeded,.passed,.met{color:#1e8449;font-weight:600}.failed,.MISSED{color:#c0392b;font-weight:600}
.skipped,.not-measured{color:#7f8c8d;font-weight:600}
"""


def _cls(value: str) -> str:
    return value.replace(" ", "-")


def render_html(report: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{_e(s['name'])}</td><td class='{_e(s['status'])}'>{_e(s['status'])}</td>"
        f"<td>{_e(dur(s.get('seconds')))}</td>"
        f"<td>{_e(dur(s['target_seconds'])) if s.get('target_seconds') else '-'}</td>"
        f"<td>{_e(s.get('detail') or '')}</td></tr>"
        for s in report["steps"]
    )
    checks = "".join(
        f"<tr><td>{_e(c['name'])}</td><td class='{_e(c['status'])}'>{_e(c['status'].upper())}</td>"
        f"<td>{_e(c['detail'])}</td></tr>"
        for c in report["checks"]
    )
    rpo_target = dur(report["rpo_target_seconds"]) if report["rpo_target_seconds"] else "none"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>DR report {_e(report["title"])}</title>
<style>{STYLE}</style></head><body>
<h1>DR report: {_e(report["title"])}</h1>
<table>
<tr><th>Outcome</th><td class="{_e(report["outcome"])}" id="outcome">{_e(report["outcome"])}</td></tr>
<tr><th>Environment</th><td>{_e(report["environment"])}</td></tr>
<tr><th>DAG run</th><td>{_e(report["dag_id"])} / {_e(report["run_id"])} (ledger run {_e(report["ledger_id"])})</td></tr>
<tr><th>Clock started</th><td>{_e(report["clock_started_at"])}</td></tr>
<tr><th>RTO</th><td id="rto">{_e(dur(report["rto_achieved_seconds"]))} achieved vs {_e(dur(report["rto_target_seconds"]))} target:
 <span class="{_cls(report["rto"])}">{_e(report["rto"])}</span></td></tr>
<tr><th>Data lost (RPO)</th><td id="rpo">{_e(dur(report["data_loss_seconds"]))} vs {_e(rpo_target)} target:
 <span class="{_cls(report["rpo"])}">{_e(report["rpo"])}</span></td></tr>
</table>
<h2>RTO achieved vs target per step</h2>
{step_chart_svg(report["steps"], report["rto_target_seconds"])}
<h2>Steps</h2>
<table><tr><th>Step</th><th>Status</th><th>Took</th><th>Target</th><th>Detail</th></tr>{rows}</table>
{"<h2>Checks</h2><table><tr><th>Check</th><th>Status</th><th>Evidence</th></tr>" + checks + "</table>" if checks else ""}
<h2>Trend: last {len(report["trend"])} runs of {_e(report["dag_id"])}</h2>
{trend_chart_svg(report["trend"])}
<p>Generated from the DR ledger. Skipped checks are not passes; "not measured" is not "met".</p>
</body></html>
"""


REPORT_FILES = {"markdown": "md", "html": "html", "json": "json"}


def file_safe_run_id(run_id: str) -> str:
    """A run id as a file-name part (``manual__2026-11-26T04:40:10.1+00:00`` has ``:``
    and ``+``); the dashboard plugin finds a run's report by the same name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)


def write_report(location: str, report: dict[str, Any]) -> dict[str, str]:
    """Write ``<location>/<dag_id>/<incident>_<run>.{md,html,json}``; return the paths."""
    folder = Path(location) / report["dag_id"]
    folder.mkdir(parents=True, exist_ok=True)
    # Suffixes are appended, not swapped in: a run id holds dots of its own.
    stem = f"{report['incident_id']}_{file_safe_run_id(report['run_id'])}"
    paths = {kind: str(folder / f"{stem}.{ext}") for kind, ext in REPORT_FILES.items()}
    Path(paths["markdown"]).write_text(render_markdown(report), encoding="utf-8")
    Path(paths["html"]).write_text(render_html(report), encoding="utf-8")
    Path(paths["json"]).write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return paths


def report_for_run(conninfo: str, *, dag_id: str, run_id: str, trend_runs: int) -> dict[str, Any]:
    run, events = ledger_run(conninfo, dag_id=dag_id, run_id=run_id)
    return build_report(run, events, trend_rows(conninfo, dag_id, trend_runs))
