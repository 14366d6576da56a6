"""Airflow plugin: the alert webhook, ``POST /dr/alerts/{source}`` on the api-server.

Alertmanager, Grafana and PagerDuty post their own webhook payloads here; firing alerts
start the DAG the plan's ``alert_routes`` choose, resolved ones are recorded on the
incident their alert started. The app is mounted by Airflow's plugin manager
(``fastapi_apps``, prefix ``/dr``) and runs inside the api-server process, so it creates
DAG runs the way the REST API does (``airflow.api.common.trigger_dag``), in the metadata
database, and the scheduler picks them up.

Authentication: ``Authorization: Bearer <token>``, compared in constant time, as bytes,
with the Airflow variable ``dr_webhook_token`` (or a secrets backend entry of that name),
else the ``DR_WEBHOOK_TOKEN`` environment variable. A missing, malformed or wrong token
(any bytes at all: non-ASCII, not UTF-8, another scheme) gets 401 and starts nothing; no
configured token gets 503 (the webhook is closed, not open). Authentication comes before
the body is read.

Body limit: ``DR_WEBHOOK_MAX_BODY_BYTES`` (default 1 MiB). A larger ``Content-Length`` is
refused with 413 before any of the body is read; a body without one (chunked) is read
chunk by chunk and refused with 413 as soon as it passes the limit.

Answers: 202 with the run ids started (or already active for the alert's fingerprint),
400 with the reason for a malformed body, 404 for an unknown source. Two posts of one
alert at the same moment start one run: both compute the same run id, the database lets
one insert it, and the other answers with that run (its own conf's incident id).
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tracktion_dr.core.errors import InvalidInput

log = logging.getLogger(__name__)

TOKEN_VARIABLE = "dr_webhook_token"  # noqa: S105 (a variable name, not a secret)
TOKEN_ENV = "DR_WEBHOOK_TOKEN"  # noqa: S105 (an env var name)
ACTIVE_STATES = ("queued", "running")

MAX_BODY_ENV = "DR_WEBHOOK_MAX_BODY_BYTES"
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
# Webhook payloads are kilobytes; below 1 KiB a real one does not fit, above 64 MiB the
# limit no longer protects the api-server.
MIN_MAX_BODY_BYTES = 1024
MAX_MAX_BODY_BYTES = 64 * 1024 * 1024
# A concurrent post of the same alert can make the run insert fail on a busy database
# ("database is locked") before the other post's run is visible: try again this often.
TRIGGER_ATTEMPTS = 4


class BodyTooLarge(InvalidInput):
    """The request body is over the webhook's limit (answered 413, nothing read further)."""


def parse_body_limit(raw: str | None) -> tuple[int, str | None]:
    """The body limit from ``DR_WEBHOOK_MAX_BODY_BYTES``'s value: ``(limit, problem)``.

    Unset or empty is the default; anything else must be a whole number of bytes between
    1 KiB and 64 MiB. A bad value is not fatal (the webhook must keep taking alerts): the
    default applies and ``problem`` says why, for the log.
    """
    if raw is None or not raw.strip():
        return DEFAULT_MAX_BODY_BYTES, None
    shown = repr(raw[:40])
    try:
        value = int(raw.strip())  # whole numbers, "2_097_152" too
    except ValueError:
        value = None
    if value is None:
        reason = "is not a whole number of bytes"
    elif value < MIN_MAX_BODY_BYTES:
        reason = f"is below the minimum of {MIN_MAX_BODY_BYTES} bytes"
    elif value > MAX_MAX_BODY_BYTES:
        reason = f"is above the maximum of {MAX_MAX_BODY_BYTES} bytes"
    else:
        return value, None
    return DEFAULT_MAX_BODY_BYTES, (
        f"{MAX_BODY_ENV}={shown} {reason}; using the default of {DEFAULT_MAX_BODY_BYTES} bytes"
    )


def _configured_body_limit(environ: Mapping[str, str] = os.environ) -> int:
    raw = environ.get(MAX_BODY_ENV)
    limit, problem = parse_body_limit(raw)
    if problem:
        log.warning("alert webhook: %s", problem)
    elif raw is not None and raw.strip():
        log.info("alert webhook: body limit %d bytes (%s)", limit, MAX_BODY_ENV)
    return limit


MAX_BODY_BYTES = _configured_body_limit()

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
    return (value or os.environ.get(TOKEN_ENV) or "").strip() or None


def _utf8(text: str) -> bytes:
    # An environment value that is not UTF-8 arrives with surrogate escapes: its own bytes.
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def authorization_headers(raw_headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """Every ``Authorization`` header value as the bytes received (ASGI ``scope["headers"]``)."""
    return [value for name, value in raw_headers if name.lower() == b"authorization"]


def bearer_token_matches(values: list[bytes], expected: str) -> bool:
    """Exactly one ``Authorization: Bearer <token>`` whose token is ``expected``.

    Compared as bytes in constant time, so no header value - non-ASCII, not UTF-8, huge,
    empty - can raise; anything but the one exact form is False. The scheme is
    case-insensitive (RFC 9110), the separator exactly one space.
    """
    if len(values) != 1 or not expected:
        return False
    scheme, separator, token = values[0].partition(b" ")
    if not separator or scheme.lower() != b"bearer" or not token:
        return False
    return hmac.compare_digest(token, _utf8(expected))


async def read_limited_body(
    declared_length: str | None, chunks: AsyncIterator[bytes], limit: int
) -> bytes:
    """The body, refused with :class:`BodyTooLarge` as soon as it is over ``limit``: from
    its declared ``Content-Length`` before anything is read, else while it streams in."""
    if declared_length is not None:
        try:
            declared = int(declared_length)
        except ValueError:
            raise InvalidInput("Content-Length", "is not a whole number of bytes") from None
        if declared > limit:
            raise BodyTooLarge(
                "body", f"{declared} bytes declared, over the limit of {limit} bytes"
            )
    received: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge("body", f"more than the limit of {limit} bytes")
        received.append(chunk)
    return b"".join(received)


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


def _stored_run(dag_id: str, run_id: str) -> dict[str, Any] | None:
    """The run as the database has it, described (its conf's incident id), or None."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        return _describe(run) if run is not None else None


def _is_busy_database(exc: Exception) -> bool:
    """A lock or serialization conflict with a concurrent writer: worth another attempt."""
    from sqlalchemy.exc import OperationalError

    return isinstance(exc, OperationalError) and any(
        word in str(exc).lower() for word in ("locked", "busy", "deadlock", "serializ")
    )


def _trigger_or_join(
    route: Any, run_id: str, conf: dict[str, Any], note: str
) -> tuple[dict[str, Any], bool]:
    """Create the run ``run_id``, or find it created by a concurrent post of the same alert:
    ``(run, created)``. The unique run id decides; whichever way the loser's insert fails
    (DagRunAlreadyExists, a unique-constraint IntegrityError, a locked database), the run
    is looked up before the failure counts."""
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.utils.types import DagRunTriggeredByType

    for attempt in range(1, TRIGGER_ATTEMPTS + 1):
        try:
            trigger_dag(
                route.dag_id,
                run_id=run_id,
                conf=conf,
                triggered_by=DagRunTriggeredByType.REST_API,
                note=note,
            )
        except Exception as exc:
            existing = _stored_run(route.dag_id, run_id)
            if existing is not None:  # the same alert posted concurrently: that run is ours
                log.info(
                    "run %s: created by a concurrent post of the same alert (%s); joined it",
                    run_id,
                    type(exc).__name__,
                )
                return existing, False
            if attempt == TRIGGER_ATTEMPTS or not _is_busy_database(exc):
                raise
            log.info("run %s: database busy (%s), attempt %d", run_id, type(exc).__name__, attempt)
            time.sleep(0.2 * attempt)
            continue
        # Read back, not taken from the call: the answer names the run as stored.
        stored = _stored_run(route.dag_id, run_id)
        if stored is None:
            raise LookupError(f"run {run_id} of {route.dag_id} was created but is not found")
        return stored, True
    raise AssertionError("unreachable")  # pragma: no cover


def _start(alert: Any, plan: Any, incident_id: str, now: datetime) -> dict[str, Any]:
    """Start the routed DAG for a firing alert, unless its fingerprint has an active run.

    Every answer describes the run as stored (its conf's incident id), so concurrent posts
    of one alert all name the same run and the same incident."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

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
    note = f"started by {alert.source} alert {alert.fingerprint}: {alert.summary}"[:1000]
    run, created = _trigger_or_join(route, run_id, run_conf(route, alert, incident_id, now), note)
    result = {"action": "started" if created else "existing", "route": route.name, **run}
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


def _refuse(status: int, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers or None)


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


@app.post("/alerts/{source}", status_code=202)
async def alerts_endpoint(source: str, request: Request) -> JSONResponse:
    """Authenticate, then read the body within its limit and parse it in the event loop
    (cheap), then do the database work in a worker thread."""
    import json

    from starlette.concurrency import run_in_threadpool

    from tracktion_dr.scenarios.alerts import SOURCES, MalformedPayload, parse_alerts

    expected = await run_in_threadpool(_expected_token)  # a Variable: a database read
    if not expected:
        log.error("alert webhook: refused a post, no token configured (%s)", TOKEN_VARIABLE)
        return _refuse(503, "webhook token is not configured")
    if not bearer_token_matches(authorization_headers(request.scope["headers"]), expected):
        log.warning(
            "alert webhook: refused a post from %s: no valid bearer token", _client(request)
        )
        return _refuse(401, "missing or invalid bearer token", **{"WWW-Authenticate": "Bearer"})
    if source not in SOURCES:
        return _refuse(404, f"unknown source {source!r}; use one of {list(SOURCES)}")
    try:
        raw = await read_limited_body(
            request.headers.get("content-length"), request.stream(), MAX_BODY_BYTES
        )
    except BodyTooLarge as exc:
        log.warning(
            "alert webhook %s: refused a post from %s: %s", source, _client(request), exc.reason
        )
        # The rest of the body is never read: the connection cannot be reused.
        return _refuse(413, f"body: {exc.reason} ({MAX_BODY_ENV})", Connection="close")
    except InvalidInput as exc:
        return _refuse(400, str(exc))
    try:
        payload = json.loads(raw)
        alerts = parse_alerts(source, payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        log.warning("alert webhook %s: refused a body that is not JSON", source)
        return _refuse(400, f"body is not JSON: {exc}")
    except MalformedPayload as exc:
        log.warning("alert webhook %s: refused a malformed payload: %s", source, str(exc)[:200])
        return _refuse(400, f"malformed {source} payload: {exc}")
    return await run_in_threadpool(_handle, source, alerts)


# Incident ids are per second (DR-YYYYMMDD-HHMMSS): two different alerts in the same second
# must not share one. Allocation is serialized in this process and skips ids that recent
# alert runs already carry (another api-server worker can still race within one second;
# the recovery run ids then still differ by scenario).
_INCIDENT_IDS = threading.Lock()


def _recent_incident_ids(now: datetime) -> set[str]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        runs = session.scalars(
            select(DagRun).where(
                DagRun.run_id.startswith("alert__"), DagRun.run_after >= now - timedelta(minutes=5)
            )
        )
        return {str((run.conf or {}).get("incident_id")) for run in runs}


def _free_incident_id(now: datetime, taken: set[str]) -> str:
    from tracktion_dr.core.incident import new_incident_id

    moment = now
    while (incident_id := new_incident_id(moment)) in taken:
        moment += timedelta(seconds=1)
    taken.add(incident_id)
    return incident_id


def _handle(source: str, alerts: list[Any]) -> JSONResponse:
    with _INCIDENT_IDS:
        return _handle_serialized(source, alerts)


def _handle_serialized(source: str, alerts: list[Any]) -> JSONResponse:
    from tracktion_dr.core.plan import PlanError, load_plan
    from tracktion_dr.scenarios.alerts import UnroutableAlert

    try:
        plan = load_plan()
    except PlanError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=500)
    conninfo = _ledger_conninfo()
    now = datetime.now(UTC)
    results = []
    taken = _recent_incident_ids(now) if any(a.status == "firing" for a in alerts) else set()
    for alert in alerts:
        if alert.status == "firing":
            incident_id = _free_incident_id(now, taken)
            try:
                result = _start(alert, plan, incident_id, now)
            except UnroutableAlert as exc:  # the route needs a label this alert lacks
                result = {"action": "unroutable", "detail": str(exc)}
            except Exception as exc:
                # First line only: SQLAlchemy appends the statement and its parameters
                # (the run's conf, from the body), which neither the log nor the answer gets.
                reason = (str(exc).splitlines() or [""])[0]
                detail = f"{type(exc).__name__}: {reason}"[:300]
                log.error(
                    "alert source=%s fingerprint=%r: could not start a run: %s",
                    source,
                    alert.fingerprint[:80],
                    detail,
                )
                log.debug(
                    "alert %r: the failure's traceback", alert.fingerprint[:80], exc_info=True
                )
                result = {"action": "error", "detail": detail}
        elif alert.status == "resolved":
            result = _resolve(alert)
        else:
            result = {"action": "ignored", "detail": f"{alert.labels.get('event_type')}"}
        result["fingerprint"] = alert.fingerprint
        result["status"] = alert.status
        result["recorded"] = _record(conninfo, alert, result["action"], result)
        results.append(result)
        log.info(
            "alert source=%s fingerprint=%r status=%s action=%s dag_id=%s run_id=%s incident=%s",
            source,
            alert.fingerprint[:80],
            alert.status,
            result["action"],
            result.get("dag_id", "-"),
            result.get("run_id", "-"),
            result.get("incident_id", "-"),
        )
    started = [r["run_id"] for r in results if r["action"] == "started"]
    existing = [r["run_id"] for r in results if r["action"] == "existing"]
    return JSONResponse(
        {"source": source, "started": started, "existing": existing, "alerts": results},
        status_code=202,
    )


class TracktionDrAlertWebhook(AirflowPlugin):
    name = "tracktion_dr_alert_webhook"
    fastapi_apps = [{"app": app, "url_prefix": "/dr", "name": "Tracktion DR alert webhook"}]
