"""A stand-in for Tracktion's load balancer, with the backend API the DR plan drives.

Failover and drain steps in the plan talk to the load balancer's admin API
(``POST /api/v1/backends/{service}/servers/{host}`` with ``weight`` and ``status``). This
process implements that API and really routes: ``GET /route/{service}/...`` is proxied to
the enabled server with the highest weight and the answer carries ``X-Backend: <host>``,
so a test can prove that a weight flip moved traffic rather than trusting a 200 from the API.

The ``database`` backend (primary on PRIMARY_PORT, replica on REPLICA_PORT) is bookkeeping
only: failover flips it, and clients read it to find the writable database; it is not
proxied over HTTP.

State is a JSON file written atomically (temp file, fsync, rename), so a restart of the
load balancer — itself one of the things a DR run may restart — keeps the routing.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from tracktion_sandbox import layout as layout_mod
from tracktion_sandbox.layout import SandboxLayout
from tracktion_sandbox.service import (
    SandboxHTTPServer,
    configure_logging,
    serve_until_signalled,
)

log = logging.getLogger("tracktion_sandbox.load_balancer")

STATUSES = ("enabled", "disabled", "drain")
PROXY_TIMEOUT_SECONDS = 10.0
MAX_BODY_BYTES = 64 * 1024


class ValidationError(Exception):
    """Bad input to the admin API; ``field`` is named in the 400 answer."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def initial_state() -> dict[str, Any]:
    host = layout_mod.HOST
    backends: dict[str, Any] = {
        service: {
            "protocol": "http",
            "servers": {
                "primary": {"address": f"{host}:{port}", "weight": 100, "status": "enabled"}
            },
        }
        for service, port in layout_mod.SERVICE_PORTS.items()
    }
    backends["database"] = {
        "protocol": "postgresql",
        "servers": {
            "primary": {
                "address": f"{host}:{layout_mod.PRIMARY_PORT}",
                "weight": 100,
                "status": "enabled",
            },
            "replica": {
                "address": f"{host}:{layout_mod.REPLICA_PORT}",
                "weight": 0,
                "status": "disabled",
            },
        },
    }
    return {"backends": backends, "updated_at": _now()}


def select_server(backend: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The enabled server with the highest weight (> 0); ties go to the first by name."""
    candidates = [
        (name, server)
        for name, server in sorted(backend["servers"].items())
        if server["status"] == "enabled" and server["weight"] > 0
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda item: item[1]["weight"])


class BackendStore:
    """The routing table, guarded by a lock and persisted on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._state = self._load()

    def _load(self) -> dict[str, Any]:
        try:
            state = json.loads(self.path.read_text())
            if not isinstance(state.get("backends"), dict):
                raise ValueError("no 'backends' object")
            log.info("loaded routing state from %s", self.path)
            return state
        except FileNotFoundError:
            state = initial_state()
            self._save(state)
            log.info("wrote initial routing state to %s", self.path)
            return state
        except (ValueError, json.JSONDecodeError) as exc:
            # Refuse to silently reset routing: an operator may have drained a server.
            raise SystemExit(f"load balancer state {self.path} is unreadable: {exc}") from exc

    def _save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(state, handle, indent=2, sort_keys=True)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._state)

    def update_server(self, service: str, host: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ValidationError("body", "must be a JSON object")
        unknown = sorted(set(body) - {"weight", "status", "address"})
        if unknown:
            raise ValidationError(unknown[0], "unknown field (allowed: weight, status, address)")
        if not body.keys() & {"weight", "status"}:
            raise ValidationError("weight", "give at least one of 'weight' or 'status'")
        changes: dict[str, Any] = {}
        if "weight" in body:
            weight = body["weight"]
            if isinstance(weight, bool) or not isinstance(weight, int):
                raise ValidationError("weight", f"must be an integer 0-100, got {weight!r}")
            if not 0 <= weight <= 100:
                raise ValidationError("weight", f"must be between 0 and 100, got {weight}")
            changes["weight"] = weight
        if "status" in body:
            status = body["status"]
            if status not in STATUSES:
                raise ValidationError(
                    "status", f"must be one of {', '.join(STATUSES)}, got {status!r}"
                )
            changes["status"] = status
        if "address" in body:
            address = body["address"]
            if not isinstance(address, str) or not _valid_address(address):
                raise ValidationError("address", f"must be 'host:port', got {address!r}")
            changes["address"] = address
        with self._lock:
            backends = self._state["backends"]
            if service not in backends:
                raise ValidationError(
                    "service", f"unknown service {service!r} (known: {', '.join(sorted(backends))})"
                )
            if host not in backends[service]["servers"] and "address" not in changes:
                raise ValidationError(
                    "host",
                    f"unknown server {host!r} in backend {service!r} (give 'address' to add it)",
                )
            new_state = copy.deepcopy(self._state)
            servers = new_state["backends"][service]["servers"]
            servers.setdefault(host, {"address": "", "weight": 0, "status": "disabled"})
            servers[host].update(changes)
            new_state["updated_at"] = _now()
            self._save(new_state)
            self._state = new_state
            log.info("backend %s server %s now %s", service, host, changes)
            return {
                "service": service,
                "host": host,
                **copy.deepcopy(new_state["backends"][service]["servers"][host]),
                "updated_at": new_state["updated_at"],
            }

    def remove_server(self, service: str, host: str) -> dict[str, Any]:
        with self._lock:
            backends = self._state["backends"]
            if service not in backends:
                raise ValidationError("service", f"unknown service {service!r}", status=404)
            if host not in backends[service]["servers"]:
                raise ValidationError(
                    "host", f"unknown server {host!r} in backend {service!r}", status=404
                )
            new_state = copy.deepcopy(self._state)
            removed = new_state["backends"][service]["servers"].pop(host)
            new_state["updated_at"] = _now()
            self._save(new_state)
            self._state = new_state
            log.info("backend %s server %s removed", service, host)
            return {"service": service, "host": host, "removed": removed}


def _valid_address(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


class LoadBalancerHandler(BaseHTTPRequestHandler):
    server_version = "tracktion-sandbox-lb/1.0"
    protocol_version = "HTTP/1.1"
    store: BackendStore

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, payload: Any, extra: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", extra or {})

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        parts = [p for p in path.split("/") if p]
        if path == "/":
            self._send_json(200, {"service": "load-balancer", "version": "sandbox-1.0"})
        elif path == "/health":
            self._send_json(200, {"status": "healthy", "service": "load-balancer"})
        elif parts[:3] == ["api", "v1", "backends"] and len(parts) == 3:
            self._send_json(200, self.store.snapshot())
        elif parts[:3] == ["api", "v1", "backends"] and len(parts) == 4:
            backends = self.store.snapshot()["backends"]
            if parts[3] not in backends:
                self._send_json(404, {"error": f"unknown service {parts[3]!r}", "field": "service"})
            else:
                self._send_json(200, backends[parts[3]])
        elif len(parts) >= 2 and parts[0] == "route":
            self._route(parts[1], "/" + "/".join(parts[2:]), self.path.partition("?")[2])
        else:
            self._send_json(404, {"error": f"no route {path}"})

    def do_POST(self) -> None:  # noqa: N802
        parts = [p for p in self.path.split("?", 1)[0].split("/") if p]
        try:
            body = self._read_json()
            if not (
                len(parts) == 6 and parts[:3] == ["api", "v1", "backends"] and parts[4] == "servers"
            ):
                self._send_json(404, {"error": f"no route POST {self.path}"})
                return
            result = self.store.update_server(parts[3], parts[5], body)
        except ValidationError as exc:
            self._send_json(exc.status, {"error": str(exc), "field": exc.field})
            return
        self._send_json(200, result)

    def do_DELETE(self) -> None:  # noqa: N802
        parts = [p for p in self.path.split("?", 1)[0].split("/") if p]
        if not (
            len(parts) == 6 and parts[:3] == ["api", "v1", "backends"] and parts[4] == "servers"
        ):
            self._send_json(404, {"error": f"no route DELETE {self.path}"})
            return
        try:
            result = self.store.remove_server(parts[3], parts[5])
        except ValidationError as exc:
            self._send_json(exc.status, {"error": str(exc), "field": exc.field})
            return
        self._send_json(200, result)

    def _read_json(self) -> Any:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError as exc:
            raise ValidationError("body", "Content-Length is not a number") from exc
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise ValidationError("body", f"larger than {MAX_BODY_BYTES} bytes", status=413)
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            return json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValidationError("body", f"invalid JSON: {exc}") from exc

    def _route(self, service: str, rest: str, query: str) -> None:
        backends = self.store.snapshot()["backends"]
        backend = backends.get(service)
        if backend is None:
            self._send_json(404, {"error": f"unknown service {service!r}", "field": "service"})
            return
        if backend.get("protocol", "http") != "http":
            self._send_json(400, {"error": f"backend {service!r} is not HTTP", "field": "service"})
            return
        chosen = select_server(backend)
        if chosen is None:
            self._send_json(503, {"error": f"no enabled server with weight > 0 for {service!r}"})
            return
        host, server = chosen
        url = f"http://{server['address']}{rest}" + (f"?{query}" if query else "")
        extra = {"X-Backend": host}
        request = urllib.request.Request(url, method="GET")  # noqa: S310 (http:// built above)
        try:
            with urllib.request.urlopen(request, timeout=PROXY_TIMEOUT_SECONDS) as answer:  # noqa: S310
                status, body, ctype = (
                    answer.status,
                    answer.read(),
                    answer.headers.get_content_type(),
                )
        except urllib.error.HTTPError as exc:
            status, body, ctype = exc.code, exc.read(), exc.headers.get_content_type()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            self._send_json(
                502, {"error": f"backend {host} ({server['address']}): {reason}"}, extra
            )
            return
        self._send(status, body, ctype, extra)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.info('%s "%s" %s', self.client_address[0], self.requestline, code)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.warning("%s %s", self.client_address[0], format % args)


def make_server(
    layout: SandboxLayout,
    port: int = layout_mod.LOAD_BALANCER_PORT,
    state: Path | None = None,
) -> SandboxHTTPServer:
    store = BackendStore(state or layout.load_balancer_state)
    handler = type("BoundLoadBalancerHandler", (LoadBalancerHandler,), {"store": store})
    return SandboxHTTPServer((layout_mod.HOST, port), handler)


def main(argv: list[str] | None = None) -> int:
    import argparse

    # --port/--state: the recovery site's balancer (recovery_site.py) is another instance.
    parser = argparse.ArgumentParser(description="Tracktion sandbox load balancer")
    parser.add_argument("--port", type=int, default=layout_mod.LOAD_BALANCER_PORT)
    parser.add_argument("--state", type=Path, default=None)
    args = parser.parse_args(argv)
    configure_logging()
    serve_until_signalled(make_server(SandboxLayout(), args.port, args.state), "load-balancer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
