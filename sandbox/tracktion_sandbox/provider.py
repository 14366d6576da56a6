"""A stand-in third party: the message-delivery gateway notification-service sends through.

Production Tracktion hands its notifications to an external delivery provider (an
e-mail/SMS gateway it does not run). The sandbox runs two instances of this stand-in under
supervisord, ``delivery-gateway-primary`` and ``delivery-gateway-backup`` (ports in
layout.py), so a third-party outage and the switch to the backup provider
(``dr_third_party_failover``) are exercised for real:

* ``GET /health``: 200 ``{"status": "healthy"}``, or 503 while the instance is failing;
* ``POST /v1/messages``: accepts a JSON message, answers 202 with an id, and appends one
  line (``{"at", "provider", "message_id", "client"}``) to its request log
  (``<logs>/<name>.requests.jsonl``), the evidence of which provider a service talks to;
  503 while failing;
* ``GET /v1/stats``: ``{"provider", "accepted"}`` since the process started.

**Failing**: stop the instance's program (supervisord), or create its fail file
(``<run>/<name>.fail``): while the file exists every request but ``/v1/stats`` is answered
503, as a provider in an outage answers. A fail file that says ``messages`` fails only the
messages while ``/health`` still answers 200: a provider whose health check lies.

Run: ``python -m tracktion_sandbox.provider --name delivery-gateway-primary --port 18611``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from tracktion_sandbox.layout import SandboxLayout
from tracktion_sandbox.service import (
    HOST,
    SandboxHTTPServer,
    configure_logging,
    serve_until_signalled,
)

log = logging.getLogger("tracktion_sandbox.provider")

MAX_MESSAGE_BYTES = 64 * 1024


class ProviderHandler(BaseHTTPRequestHandler):
    server_version = "tracktion-sandbox-provider/1.0"
    protocol_version = "HTTP/1.1"
    provider: str
    fail_file: Path
    request_log: Path
    lock: threading.Lock
    accepted: list[int]  # one counter, shared by the handler threads

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _failing(self, messages: bool = False) -> bool:
        """Whether this request is answered 503 (see the module doc)."""
        try:
            scope = self.fail_file.read_text().strip()
        except FileNotFoundError:
            return False
        return messages or scope != "messages"

    def _outage(self) -> None:
        self._send_json(503, {"status": "unavailable", "provider": self.provider})

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        path = self.path.split("?", 1)[0]
        if path == "/v1/stats":
            self._send_json(200, {"provider": self.provider, "accepted": self.accepted[0]})
        elif self._failing():
            self._outage()
        elif path == "/health":
            self._send_json(200, {"status": "healthy", "provider": self.provider})
        else:
            self._send_json(404, {"status": "error", "reason": f"no route {path}"})

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_MESSAGE_BYTES:
            self.close_connection = True
            self._send_json(413, {"status": "error", "reason": "message too large"})
            return
        body = self.rfile.read(length)
        if self._failing(messages=True):
            self._outage()
            return
        if path != "/v1/messages":
            self._send_json(404, {"status": "error", "reason": f"no route POST {path}"})
            return
        try:
            message = json.loads(body or b"{}")
        except ValueError:
            self._send_json(400, {"status": "error", "reason": "the message is not JSON"})
            return
        message_id = uuid.uuid4().hex
        line = {
            "at": datetime.now(UTC).isoformat(),
            "provider": self.provider,
            "message_id": message_id,
            "client": str(message.get("client", "")) if isinstance(message, dict) else "",
        }
        with self.lock:
            with self.request_log.open("a") as handle:
                handle.write(json.dumps(line) + "\n")
            self.accepted[0] += 1
        self._send_json(202, {"status": "accepted", "provider": self.provider, "id": message_id})

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.info('%s "%s" %s', self.client_address[0], self.requestline, code)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.warning("%s %s", self.client_address[0], format % args)


def fail_file(layout: SandboxLayout, name: str) -> Path:
    """While this file exists the provider ``name`` answers 503 (an outage)."""
    return layout.run_dir / f"{name}.fail"


def request_log(layout: SandboxLayout, name: str) -> Path:
    """One JSON line per message the provider ``name`` accepted."""
    return layout.logs / f"{name}.requests.jsonl"


def make_server(layout: SandboxLayout, name: str, port: int) -> SandboxHTTPServer:
    layout.logs.mkdir(parents=True, exist_ok=True)
    handler = type(
        "BoundProviderHandler",
        (ProviderHandler,),
        {
            "provider": name,
            "fail_file": fail_file(layout, name),
            "request_log": request_log(layout, name),
            "lock": threading.Lock(),
            "accepted": [0],
        },
    )
    return SandboxHTTPServer((HOST, port), handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Tracktion sandbox stand-in third party")
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", required=True, type=int)
    args = parser.parse_args(argv)
    configure_logging()
    serve_until_signalled(make_server(SandboxLayout(), args.name, args.port), args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
