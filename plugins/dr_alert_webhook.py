"""Airflow plugin: the alert webhook, ``POST /dr/alerts/{source}`` on the api-server.

Alertmanager, Grafana and PagerDuty post their own webhook payloads here; firing alerts
start the DAG the plan's ``alert_routes`` choose, resolved ones are recorded on the
incident their alert started. The app is mounted by Airflow's plugin manager
(``fastapi_apps``, prefix ``/dr``) and runs inside the api-server process, so it creates
DAG runs the way the REST API does (``airflow.api.common.trigger_dag``), in the metadata
database, and the scheduler picks them up.

Authentication: ``Authorization: Bearer <token>``, compared in constant time with the
Airflow variable ``dr_webhook_token`` (or a secrets backend entry of that name), else the
``DR_WEBHOOK_TOKEN`` environment variable. A missing or wrong token gets 401 and starts
nothing; no configured token gets 503 (the webhook is closed, not open).

Answers: 202 with the run ids started (or already active for the alert's fingerprint),
400 with the reason for a malformed body, 404 for an unknown source.
"""

from __future__ import annotations

import hmac
import logging
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)

TOKEN_VARIABLE = "dr_webhook_token"  # noqa: S105 (a variable name, not a secret)
TOKEN_ENV = "DR_WEBHOOK_TOKEN"  # noqa: S105 (an env var name)
ACTIVE_STATES = ("queued", "running")

app = FastAPI(
    title="Tracktion DR alert webhook",
    description="POST /dr/alerts/{alertmanager|grafana|pagerduty} - see the README.",
)


def _expected_token() -> str | None:
    try:
        from airflow.models.variable import Variable

        value = Variable.get(TOKEN_VARIABLE, default_var=None)
    except Exception:  # no variable backend reachable: fall back to the environment
        value = None
    return value or os.environ.get(TOKEN_ENV) or None


def _authorized(header: str | None, expected: str) -> bool:
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip(), expected)


def _ledger_conninfo() -> str | None:
    try:
        from airflow.models.connection import Connection

        from tracktion_dr.evidence.ledger import LEDGER_CONN_ID
        from tracktion_dr.postgres.commands import endpoint_from_connection

        c = Connection.get_connection_from_secrets(LEDGER_CONN_ID)
        return endpoint_from_connection(c).conninfo()
    except Exception as exc:
        log.warning("alert ledger unavailable: %s", type(exc).__name__)
        return None


def _record(conninfo: str | None, alert: Any, action: str, run: dict[str, Any] | None) -> bool:
    if not conninfo:
        return False
    from tracktion_dr.evidence.ledger import record_alert

    try:
        record_alert(
            conninfo,
            source=alert.source,
            fingerprint=alert.fingerprint,
            status=alert.status,
            action=action,
            incident_id=(run or {}).get("incident_id"),
            dag_id=(run or {}).get("dag_id"),
            run_id=(run or {}).get("run_id"),
            labels=alert.labels,
        )
        return True
    except Exception as exc:  # the run matters more than its bookkeeping
        log.warning("could not record alert %s: %s", alert.fingerprint, exc)
        return False


def _runs_for(prefix: str, session: Any) -> list[Any]:
    from airflow.models.dagrun import DagRun
    from sqlalchemy import select

    return list(
        session.scalars(
            select(DagRun)
            .where(DagRun.run_id.startswith(prefix, autoescape=True))
            .order_by(DagRun.id)
        )
    )


def _describe(run: Any) -> dict[str, Any]:
    return {
        "dag_id": run.dag_id,
        "run_id": run.run_id,
        "state": str(run.state),
        "incident_id": (run.conf or {}).get("incident_id"),
    }


def _start(alert: Any, plan: Any, incident_id: str, now: datetime) -> dict[str, Any]:
    """Start the routed DAG for a firing alert, unless its fingerprint has an active run."""
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.exceptions import DagRunAlreadyExists
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from airflow.utils.types import DagRunTriggeredByType

    from tracktion_dr.scenarios.alerts import find_route, run_conf

    route = find_route(plan, alert)
    if route is None:
        return {"action": "unrouted", "fingerprint": alert.fingerprint}
    prefix = alert.run_id_prefix()
    with create_session() as session:
        runs = _runs_for(prefix, session)
        active = [r for r in runs if str(r.state) in ACTIVE_STATES]
        if active:
            return {"action": "existing", "route": route.name, **_describe(active[-1])}
        run_id = f"{prefix}{len(runs) + 1}"
        dag_model = DagModel.get_dagmodel(route.dag_id, session=session)
        paused = bool(dag_model is not None and dag_model.is_paused)
    try:
        run = trigger_dag(
            route.dag_id,
            run_id=run_id,
            conf=run_conf(route, alert, incident_id, now),
            triggered_by=DagRunTriggeredByType.REST_API,
            note=f"started by {alert.source} alert {alert.fingerprint}: {alert.summary}"[:1000],
        )
    except DagRunAlreadyExists:  # the same alert posted concurrently: that run is ours too
        with create_session() as session:
            (run,) = [r for r in _runs_for(prefix, session) if r.run_id == run_id]
            return {"action": "existing", "route": route.name, **_describe(run)}
    described = {
        "dag_id": route.dag_id,
        "run_id": run.run_id,
        "state": str(run.state),
        "incident_id": incident_id,
    }
    result = {"action": "started", "route": route.name, **described}
    if paused:
        result["warning"] = f"{route.dag_id} is paused: the run waits until it is unpaused"
    return result


def _resolve(alert: Any) -> dict[str, Any]:
    """A resolved alert: noted on the run its firing started (the incident's run)."""
    from airflow.utils.session import create_session

    with create_session() as session:
        runs = _runs_for(alert.run_id_prefix(), session)
        if not runs:
            return {"action": "resolved_unknown", "fingerprint": alert.fingerprint}
        run = runs[-1]
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        try:
            run.note = ((run.note or "") + f"\nresolved alert received {stamp}").strip()
        except Exception as exc:  # the ledger row below is the record that matters
            log.warning("could not note the resolution on %s: %s", run.run_id, exc)
        return {"action": "resolved", **_describe(run)}


@app.post("/alerts/{source}", status_code=202)
async def alerts_endpoint(source: str, request: Request) -> JSONResponse:
    """Parse in the event loop (cheap), then do the database work in a worker thread."""
    import json

    from starlette.concurrency import run_in_threadpool

    from tracktion_dr.scenarios.alerts import SOURCES, MalformedPayload, parse_alerts

    expected = _expected_token()
    if not expected:
        return JSONResponse({"detail": "webhook token is not configured"}, status_code=503)
    if not _authorized(request.headers.get("authorization"), expected):
        return JSONResponse(
            {"detail": "missing or invalid bearer token"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    if source not in SOURCES:
        return JSONResponse(
            {"detail": f"unknown source {source!r}; use one of {list(SOURCES)}"}, status_code=404
        )
    raw = await request.body()
    try:
        payload = json.loads(raw)
        alerts = parse_alerts(source, payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return JSONResponse({"detail": f"body is not JSON: {exc}"}, status_code=400)
    except MalformedPayload as exc:
        return JSONResponse({"detail": f"malformed {source} payload: {exc}"}, status_code=400)
    return await run_in_threadpool(_handle, source, alerts)


def _handle(source: str, alerts: list[Any]) -> JSONResponse:
    from tracktion_dr.core.incident import new_incident_id
    from tracktion_dr.core.plan import PlanError, load_plan

    try:
        plan = load_plan()
    except PlanError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=500)
    conninfo = _ledger_conninfo()
    now = datetime.now(UTC)
    results = []
    for position, alert in enumerate(alerts):
        if alert.status == "firing":
            # One second apart within a batch keeps incident ids (DR-YYYYMMDD-HHMMSS) unique.
            incident_id = new_incident_id(now + timedelta(seconds=position))
            try:
                result = _start(alert, plan, incident_id, now)
            except Exception as exc:
                log.exception("alert %s: could not start a run", alert.fingerprint)
                result = {"action": "error", "detail": f"{type(exc).__name__}: {exc}"[:300]}
        elif alert.status == "resolved":
            result = _resolve(alert)
        else:
            result = {"action": "ignored", "detail": f"{alert.labels.get('event_type')}"}
        result["fingerprint"] = alert.fingerprint
        result["status"] = alert.status
        result["recorded"] = _record(conninfo, alert, result["action"], result)
        results.append(result)
        log.info("alert %s %s: %s", source, alert.fingerprint, result["action"])
    started = [r["run_id"] for r in results if r["action"] == "started"]
    existing = [r["run_id"] for r in results if r["action"] == "existing"]
    return JSONResponse(
        {"source": source, "started": started, "existing": existing, "alerts": results},
        status_code=202,
    )


class TracktionDrAlertWebhook(AirflowPlugin):
    name = "tracktion_dr_alert_webhook"
    fastapi_apps = [{"app": app, "url_prefix": "/dr", "name": "Tracktion DR alert webhook"}]
