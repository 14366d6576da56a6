"""The notification sink: where the sandbox's Slack, PagerDuty, status-page, webhook and
e-mail notifications really arrive.

DR runs notify through Airflow connections and providers. Pointing those connections here
(instead of mocking the providers) tests the whole delivery path — URL, auth header,
payload, SMTP dialogue — and leaves evidence a test can read: one JSON object per line in
``layout.sink_webhooks`` (HTTP) and ``layout.sink_mail`` (SMTP).

One asyncio process serves both: aiohttp for HTTP on SINK_HTTP_PORT and aiosmtpd's SMTP
protocol on SINK_SMTP_PORT. Answers mimic the real services where callers check them:
Slack webhooks answer ``ok``, PagerDuty Events API v2 answers 202 with a ``dedup_key``, and
``/statuspage`` is Atlassian Statuspage v1's incident API for real (``StatusPage``).
Credentials are never recorded: only that an Authorization header or SMTP login was present.
The SMTP side offers AUTH without TLS and accepts any login, so an Airflow SMTP connection
with a user works; it does not offer STARTTLS (set the connection's ``disable_tls``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import uuid
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tracktion_sandbox import layout as layout_mod
from tracktion_sandbox.layout import SandboxLayout

log = logging.getLogger("tracktion_sandbox.sink")

SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "x-api-key", "x-auth-token"}
)
MAX_BODY_BYTES = 5 * 1024 * 1024


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line; a single write on an O_APPEND descriptor keeps lines whole."""
    line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, line)
        if written != len(line):
            raise OSError(f"short write to {path}: {written} of {len(line)} bytes")
    finally:
        os.close(fd)


def read_records(path: Path) -> list[dict[str, Any]]:
    """All records in a sink file (for tests and the demo)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _redacted_headers(headers: Any) -> dict[str, str]:
    recorded: dict[str, str] = {}
    for key, value in headers.items():
        recorded[key] = "<present>" if key.lower() in SECRET_HEADERS else value
    return recorded


# --------------------------------------------------------------------------- HTTP


def _record_request(layout: SandboxLayout, request: web.Request, raw: bytes) -> tuple[dict, Any]:
    """Record one request (headers redacted) to the webhooks JSONL; returns it and its JSON."""
    record: dict[str, Any] = {
        "received_at": _now(),
        "method": request.method,
        "path": request.path,
        "query": request.query_string,
        "headers": _redacted_headers(request.headers),
    }
    parsed: Any = None
    text = raw.decode("utf-8", errors="replace")
    try:
        parsed = json.loads(raw) if raw else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        parsed = None
    if parsed is not None:
        record["json"] = parsed
    elif raw:
        record["body"] = text
        if request.content_type == "application/x-www-form-urlencoded":
            record["form"] = dict(parse_qsl(text))
    append_record(layout.sink_webhooks, record)
    log.info("recorded %s %s (%d bytes)", request.method, request.path, len(raw))
    return record, parsed


STATUSPAGE_STATUSES = ("investigating", "identified", "monitoring", "resolved")


class StatusPage:
    """Atlassian Statuspage v1's incident endpoints, for real: create (201 with an ``id``),
    update by id (200; 404 for an unknown id), the unresolved list, and 401 without an
    ``Authorization: OAuth <key>`` header. Incidents are kept in a JSON file beside the
    records, so a restarted sink still knows them (like the real page would)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.incidents: dict[str, dict[str, Any]] = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self.incidents = {}

    def _save(self) -> None:
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.incidents, indent=1))
        os.replace(temporary, self.path)

    async def handle(self, request: web.Request, layout: SandboxLayout) -> web.Response:
        raw = await request.read()
        _record, parsed = _record_request(layout, request, raw)
        authorization = request.headers.get("Authorization", "")
        if not authorization.startswith("OAuth ") or not authorization[6:].strip():
            return web.json_response({"error": "Could not authenticate"}, status=401)
        page_id = request.match_info["page_id"]
        incident_id = request.match_info.get("incident_id")
        if request.method == "GET" and incident_id == "unresolved":
            return web.json_response(self.unresolved(page_id))
        if request.method == "POST" and incident_id is None:
            return self.create(page_id, parsed)
        if request.method == "PATCH" and incident_id:
            return self.update(page_id, incident_id, parsed)
        if request.method == "GET" and incident_id:
            incident = self.incidents.get(incident_id)
            if incident is None or incident["page_id"] != page_id:
                return web.json_response({"error": "Incident not found"}, status=404)
            return web.json_response(incident)
        return web.json_response({"error": "Method not allowed"}, status=405)

    def unresolved(self, page_id: str) -> list[dict[str, Any]]:
        found = [
            incident
            for incident in self.incidents.values()
            if incident["page_id"] == page_id and incident["status"] != "resolved"
        ]
        return sorted(found, key=lambda incident: incident["created_at"], reverse=True)

    @staticmethod
    def _fields(parsed: Any) -> dict[str, Any] | None:
        if isinstance(parsed, dict) and isinstance(parsed.get("incident"), dict):
            return parsed["incident"]
        return None

    def create(self, page_id: str, parsed: Any) -> web.Response:
        fields = self._fields(parsed)
        if fields is None or not fields.get("name"):
            return web.json_response({"error": ["name can't be blank"]}, status=422)
        status = fields.get("status", "investigating")
        if status not in STATUSPAGE_STATUSES:
            return web.json_response({"error": [f"status {status} is invalid"]}, status=422)
        now = _now()
        incident_id = uuid.uuid4().hex[:12]
        incident = {
            "id": incident_id,
            "page_id": page_id,
            "name": str(fields["name"]),
            "status": status,
            "created_at": now,
            "updated_at": now,
            "resolved_at": now if status == "resolved" else None,
            "shortlink": f"https://stspg.io/{incident_id[:6]}",
            "metadata": fields.get("metadata") or {},
            "incident_updates": [self._update(status, fields.get("body", ""), now)],
        }
        self.incidents[incident_id] = incident
        self._save()
        return web.json_response(incident, status=201)

    def update(self, page_id: str, incident_id: str, parsed: Any) -> web.Response:
        incident = self.incidents.get(incident_id)
        if incident is None or incident["page_id"] != page_id:
            return web.json_response({"error": "Incident not found"}, status=404)
        fields = self._fields(parsed)
        if fields is None:
            return web.json_response({"error": ["incident is missing"]}, status=422)
        status = fields.get("status", incident["status"])
        if status not in STATUSPAGE_STATUSES:
            return web.json_response({"error": [f"status {status} is invalid"]}, status=422)
        now = _now()
        for key in ("name", "metadata"):
            if key in fields:
                incident[key] = fields[key]
        incident["status"] = status
        incident["updated_at"] = now
        if status == "resolved":
            incident["resolved_at"] = now
        incident["incident_updates"].insert(0, self._update(status, fields.get("body", ""), now))
        self._save()
        return web.json_response(incident)

    @staticmethod
    def _update(status: str, body: Any, now: str) -> dict[str, Any]:
        return {"id": uuid.uuid4().hex[:12], "status": status, "body": str(body), "created_at": now}


def make_http_app(layout: SandboxLayout) -> web.Application:
    status_page = StatusPage(layout.sink_dir / "statuspage.json")

    async def statuspage(request: web.Request) -> web.Response:
        return await status_page.handle(request, layout)

    async def record_post(request: web.Request) -> web.Response:
        raw = await request.read()
        record, parsed = _record_request(layout, request, raw)

        if request.path.startswith("/pagerduty"):
            if not isinstance(parsed, dict):
                return web.json_response(
                    {"status": "invalid event", "message": "Event object is invalid"}, status=400
                )
            dedup_key = parsed.get("dedup_key") or uuid.uuid4().hex
            return web.json_response(
                {"status": "success", "message": "Event processed", "dedup_key": dedup_key},
                status=202,
            )
        if request.path.startswith("/slack-api/"):
            # Slack Web API shape (the SlackHook's client checks "ok"): nothing is created
            # here, the call is only recorded - the sandbox has no Slack workspace.
            method = request.path.removeprefix("/slack-api/")
            form = parsed if isinstance(parsed, dict) else record.get("form", {})
            answer: dict[str, Any] = {"ok": True}
            if method == "conversations.create":
                name = str(form.get("name", ""))
                answer["channel"] = {
                    "id": "C" + uuid.uuid5(uuid.NAMESPACE_DNS, name).hex[:10].upper(),
                    "name": name,
                }
            return web.json_response(answer)
        return web.Response(text="ok")

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "healthy", "service": "notification-sink"})

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_get("/", health)
    app.router.add_get("/health", health)
    for pattern in (
        "/statuspage/v1/pages/{page_id}/incidents",
        "/statuspage/v1/pages/{page_id}/incidents/{incident_id}",
    ):
        app.router.add_route("*", pattern, statuspage)
    app.router.add_route("POST", "/{tail:.*}", record_post)
    app.router.add_route("PUT", "/{tail:.*}", record_post)
    return app


# --------------------------------------------------------------------------- SMTP


class MailRecorder:
    """aiosmtpd handler: one JSON line per accepted message."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def handle_DATA(  # noqa: N802 (aiosmtpd hook name)
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode("utf-8", errors="replace")
        message = BytesParser(policy=policy.default).parsebytes(content)
        body_part = message.get_body(preferencelist=("plain", "html"))
        try:
            body = body_part.get_content() if body_part is not None else ""
        except (LookupError, ValueError):
            body = content.decode("utf-8", errors="replace")
        record = {
            "received_at": _now(),
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "subject": str(message.get("Subject", "")),
            "from_header": str(message.get("From", "")),
            "to_header": str(message.get("To", "")),
            "authenticated": bool(session.authenticated),
            "body": body,
        }
        append_record(self.path, record)
        log.info("recorded mail to %s", ", ".join(record["rcpt_tos"]))
        return "250 Message accepted for delivery"


def _accept_any_login(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    # The sandbox has no mail accounts; accept the login but never keep the password.
    login = auth_data.login.decode(errors="replace") if isinstance(auth_data, LoginPassword) else ""
    return AuthResult(success=True, auth_data=login)


# --------------------------------------------------------------------------- main


async def serve(layout: SandboxLayout, stop: asyncio.Event) -> None:
    layout.sink_dir.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()

    runner = web.AppRunner(make_http_app(layout), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, layout_mod.HOST, layout_mod.SINK_HTTP_PORT)
    await site.start()

    recorder = MailRecorder(layout.sink_mail)
    smtp_server = await loop.create_server(
        lambda: SMTP(
            recorder,
            hostname="sink.tracktion.sandbox",
            authenticator=_accept_any_login,
            auth_require_tls=False,
            loop=loop,
        ),
        layout_mod.HOST,
        layout_mod.SINK_SMTP_PORT,
    )
    log.info(
        "notification sink: http://%s:%s, smtp %s:%s; records in %s",
        layout_mod.HOST,
        layout_mod.SINK_HTTP_PORT,
        layout_mod.HOST,
        layout_mod.SINK_SMTP_PORT,
        layout.sink_dir,
    )
    try:
        await stop.wait()
    finally:
        smtp_server.close()
        await smtp_server.wait_closed()
        await runner.cleanup()
        log.info("notification sink stopped")


async def _main_async() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await serve(SandboxLayout(), stop)


def main() -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(_main_async())
    return 0


if __name__ == "__main__":
    sys.exit(main())
