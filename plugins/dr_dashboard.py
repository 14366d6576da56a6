"""Airflow plugin: the DR dashboard, a page in the Airflow UI (``/dr-dashboard/``).

Per scenario (every DAG with runs in the ledger): the last run, its outcome, RTO achieved
vs target, data lost vs RPO, and the trend chart of its last runs; links to each run's
stored report. Mounted like the alert webhook (``fastapi_apps``) and listed in the UI's
navigation as an external view. Read-only: it only reads the ledger (connection
``dr_ledger``) and the report files under the plan's report location.

Behind Airflow's login: Airflow does not authenticate a plugin's FastAPI app (a mounted app
inherits none of the core API's dependencies), so every route here requires an
authenticated Airflow user - the UI's session cookie (the page opened from the UI's
navigation) or a bearer token from ``POST /auth/token``. Anonymous callers get 401.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

from airflow.api_fastapi.core_api.security import requires_authenticated
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse

log = logging.getLogger(__name__)

# A module-level name so a test of the routes alone can stand in for the login.
authenticated_user = requires_authenticated()
app = FastAPI(title="Tracktion DR dashboard", dependencies=[Depends(authenticated_user)])

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;font-size:14px;text-align:left}
th{background:#f4f4f4}.succeeded,.met{color:#1e8449;font-weight:600}
.failed,.MISSED{color:#c0392b;font-weight:600}.dry_run,.not-measured{color:#7f8c8d}
section{margin:1.5em 0}
"""


def _ledger_conninfo() -> str:
    from airflow.models.connection import Connection

    from tracktion_dr.evidence.ledger import LEDGER_CONN_ID
    from tracktion_dr.postgres.commands import endpoint_from_connection

    c = Connection.get_connection_from_secrets(LEDGER_CONN_ID)
    return endpoint_from_connection(c).conninfo()


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def scenario_rows(conninfo: str, trend_runs: int) -> dict[str, list[dict[str, Any]]]:
    """The last ``trend_runs`` runs of every DAG in the ledger, oldest first."""
    import psycopg
    from psycopg.rows import dict_row

    from tracktion_dr.evidence import ledger

    with psycopg.connect(conninfo, connect_timeout=5, row_factory=dict_row) as conn:
        ledger.ensure_schema(conn)
        rows = conn.execute(
            "SELECT * FROM (SELECT r.*, row_number() OVER (PARTITION BY dag_id"
            " ORDER BY recorded_at DESC) AS n FROM dr.runs r) t WHERE n <= %s"
            " ORDER BY dag_id, recorded_at",
            (trend_runs,),
        ).fetchall()
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["dag_id"], []).append(row)
    return grouped


def render_dashboard(grouped: dict[str, list[dict[str, Any]]]) -> str:
    from tracktion_dr.evidence.reports import dur, trend_chart_svg, verdict

    summary, sections = [], []
    for dag_id, rows in sorted(grouped.items()):
        last = rows[-1]
        rto = verdict(last["rto_achieved_seconds"], last["rto_target_seconds"])
        rpo = verdict(last["data_loss_seconds"], last["rpo_target_seconds"])
        link = f"report/{_e(dag_id)}/{_e(last['run_id'])}"
        summary.append(
            f"<tr><td><a href='#{_e(dag_id)}'>{_e(dag_id)}</a></td>"
            f"<td>{_e(last['recorded_at'].strftime('%Y-%m-%d %H:%M:%S UTC'))}</td>"
            f"<td>{_e(last['incident_id'])}</td>"
            f"<td class='{_e(last['outcome'])}'>{_e(last['outcome'])}</td>"
            f"<td>{_e(dur(last['rto_achieved_seconds']))} / {_e(dur(last['rto_target_seconds']))} "
            f"<span class='{_e(rto.replace(' ', '-'))}'>{_e(rto)}</span></td>"
            f"<td>{_e(dur(last['data_loss_seconds']))} / "
            f"{_e(dur(last['rpo_target_seconds']) if last['rpo_target_seconds'] else '-')} "
            f"<span class='{_e(rpo.replace(' ', '-'))}'>{_e(rpo)}</span></td>"
            f"<td><a href='{link}'>report</a></td></tr>"
        )
        trend = [
            {
                k: r[k]
                for k in (
                    "incident_id",
                    "outcome",
                    "rto_achieved_seconds",
                    "rto_target_seconds",
                    "data_loss_seconds",
                )
            }
            for r in rows
        ]
        sections.append(
            f"<section id='{_e(dag_id)}'><h2>{_e(dag_id)}: last {len(rows)} runs</h2>"
            f"{trend_chart_svg(trend)}</section>"
        )
    body = (
        "<table id='scenarios'><tr><th>Scenario (DAG)</th><th>Last run</th><th>Incident</th>"
        "<th>Outcome</th><th>RTO achieved / target</th><th>Data lost / RPO</th><th></th></tr>"
        + "".join(summary)
        + "</table>"
        + "".join(sections)
        if summary
        else "<p id='empty'>The ledger has no runs yet.</p>"
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Tracktion DR dashboard</title><style>{STYLE}</style></head><body>"
        "<h1>Tracktion DR dashboard</h1>"
        "<p>Every recovery and drill run recorded in the DR ledger: measured RTO and data "
        'lost against the plan\'s targets. "not measured" is never "met".</p>'
        f"{body}</body></html>"
    )


@app.get("/", response_class=HTMLResponse)
def dashboard() -> HTMLResponse:
    from tracktion_dr.core.plan import load_plan

    plan = load_plan()
    trend_runs = plan.reports.trend_runs if plan.reports else 12
    try:
        grouped = scenario_rows(_ledger_conninfo(), trend_runs)
    except Exception as exc:  # the page says why instead of a bare 500
        log.warning("dashboard: ledger unavailable: %s", type(exc).__name__)
        return HTMLResponse(
            f"<!DOCTYPE html><html><body><h1>Tracktion DR dashboard</h1>"
            f"<p id='error'>The DR ledger is not reachable ({_e(type(exc).__name__)}).</p>"
            "</body></html>",
            status_code=503,
        )
    return HTMLResponse(render_dashboard(grouped))


@app.get("/report/{dag_id}/{run_id}")
def report(dag_id: str, run_id: str) -> FileResponse:
    """A run's stored HTML report (written by its publish task)."""
    from tracktion_dr.core.plan import load_plan
    from tracktion_dr.evidence.reports import file_safe_run_id

    plan = load_plan()
    if plan.reports is None:
        raise HTTPException(404, "the plan has no report location")
    root = Path(plan.reports.location).resolve()
    safe_run = file_safe_run_id(run_id)
    folder = (root / dag_id).resolve()
    if root not in folder.parents:
        raise HTTPException(404, "no such report")
    matches = sorted(folder.glob(f"*_{safe_run}.html")) if folder.is_dir() else []
    if not matches:
        raise HTTPException(404, f"no report stored for {dag_id} run {run_id}")
    return FileResponse(matches[-1], media_type="text/html")


class TracktionDrDashboard(AirflowPlugin):
    name = "tracktion_dr_dashboard"
    fastapi_apps = [{"app": app, "url_prefix": "/dr-dashboard", "name": "Tracktion DR dashboard"}]
    external_views = [
        {
            "name": "DR dashboard",
            "href": "/dr-dashboard/",
            "destination": "nav",
            "url_route": "dr-dashboard",
        }
    ]
