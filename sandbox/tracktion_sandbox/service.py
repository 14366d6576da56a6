"""A stand-in for one Tracktion HTTP service, honest about its dependencies.

The DR DAGs decide "the service is back" from ``GET /health``. A stand-in that always says
200 would let a recovery pass while the database is still down, so each stand-in checks its
real dependencies on every probe: the database (a fresh connection with a 2 s connect
timeout and ``SELECT 1``) and the storage directory (create and delete a file in it). It
answers 200 only when all of them pass, else 503 naming the failed check.

``notification-service`` implements ``POST /notify/test``: it sends a test message through
its delivery gateway (a third party: ``provider.py``), whose base URL it reads at start from
``TRACKTION_DELIVERY_GATEWAY_URL`` (environment, or the environment file below, which
``dr_third_party_failover`` switches), and answers 200 ``{"status": "success", "gateway",
"provider"}`` only when the gateway accepted it (else 502 naming the gateway and why). Its
``/health`` does not depend on the gateway: the process is fine, its provider is not.

``analysis-service`` also implements ``POST /analyze`` (multipart field ``file`` or a raw
``audio/*`` body), parsing the upload with mutagen, so the post-recovery functional check
exercises a real code path instead of a canned answer.

**Configuration, read once at start** (as production services read theirs), so a bad
configuration really breaks a service and ``dr_config_recovery``'s rollback is exercised:

* the environment file (``TRACKTION_ENV_FILE``, the plan's ``config_env_file``): its
  ``NAME=value`` lines are laid over the process environment, as a systemd
  ``EnvironmentFile=`` or compose ``env_file`` would; a missing file is no error;
* ``<TRACKTION_CONFIG_DIR>/services.yaml`` must list the service under ``services:``
  (a service the configuration does not declare refuses to start);
* ``<TRACKTION_CONFIG_DIR>/app.json``: ``storage.root`` is the storage path of the
  services that use storage (``TRACKTION_STORAGE_PATH`` from the environment overrides
  it); ``storage.<area>`` (optional) is the path of a storage area a service works on
  (``AREAS``: analysis-service and file-watcher use ``audio_files``), checked by
  ``/health`` like the root - ``dr_storage_failover`` repoints it to the area's backup
  location; analysis-service needs ``analysis.formats`` (the audio formats ``/analyze``
  accepts: the functional check's mp3 is refused when it is not listed) and
  ``analysis.max_upload_mb``.

A missing or malformed file or key ends the process at once with exit status 78
(``EX_CONFIG``) and a log line naming the file, the key and the reason; supervisord then
reports it BACKOFF/FATAL. A value that is valid but wrong (a storage root that does not
exist) starts the service and makes ``/health`` fail, naming the check.

Run: ``python -m tracktion_sandbox.service --name analysis-service --port 18001``; the
database comes from ``TRACKTION_DATABASE_URL``. Without ``TRACKTION_CONFIG_DIR`` the
settings come from the environment alone (every format accepted).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

log = logging.getLogger("tracktion_sandbox.service")

VERSION = "sandbox-1.0"
HOST = "127.0.0.1"
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
DB_CONNECT_TIMEOUT_SECONDS = 2
DB_STATEMENT_TIMEOUT_MS = 2000

# Which checks each service's /health runs, in order.
DEPENDENCIES: dict[str, tuple[str, ...]] = {
    "analysis-service": ("database", "storage"),
    "file-watcher": ("storage", "database"),
    "tracklist-service": ("database",),
    "notification-service": (),
}

# The storage areas each service works on (``storage.<area>`` in app.json, when present).
AREAS: dict[str, tuple[str, ...]] = {
    "analysis-service": ("audio_files",),
    "file-watcher": ("audio_files",),
}

AUDIO_FORMATS = {"WAVE": "wav", "FLAC": "flac", "MP3": "mp3"}

CONFIG_DIR_ENV = "TRACKTION_CONFIG_DIR"
DELIVERY_GATEWAY_ENV = "TRACKTION_DELIVERY_GATEWAY_URL"
GATEWAY_TIMEOUT_SECONDS = 3.0
ENV_FILE_ENV = "TRACKTION_ENV_FILE"
APP_CONFIG_FILE = "app.json"
SERVICES_CONFIG_FILE = "services.yaml"
EX_CONFIG = 78  # sysexits.h: "configuration error"


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    port: int
    database_url: str | None
    storage_path: Path | None
    formats: frozenset[str] = frozenset(AUDIO_FORMATS.values())
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    delivery_gateway_url: str | None = None
    area_paths: dict[str, Path] = field(default_factory=dict)


class ConfigurationError(Exception):
    """The service's configuration is missing or wrong; the message names file and key."""


# --------------------------------------------------------------------------- configuration


def read_environment_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines (``export`` prefixes and ``#`` comments allowed)."""
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        if sep and key and not key.startswith("#"):
            values[key] = value
    return values


def _setting(document: Any, dotted: str, where: Path) -> Any:
    value = document
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ConfigurationError(f"{where}: required key {dotted!r} is missing")
        value = value[part]
    return value


def _load_file(path: Path) -> Any:
    import yaml

    try:
        text = path.read_text()
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except (ValueError, yaml.YAMLError) as exc:  # ValueError: JSON and UTF-8 errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigurationError(f"{path}: not valid {path.suffix[1:].upper()}: {first}") from None


def load_config(
    name: str, port: int, environ: dict[str, str] | None = None
) -> tuple[ServiceConfig, dict[str, str]]:
    """The service's settings from its configuration files and environment (see the
    module doc); also returns what was read from where, for the start-up log line."""
    env = dict(os.environ if environ is None else environ)
    sources: dict[str, str] = {}
    gateway_source = "environment"
    env_file = Path(env[ENV_FILE_ENV]) if env.get(ENV_FILE_ENV) else None
    if env_file is not None:
        if env_file.is_file():
            from_file = read_environment_file(env_file)
            env.update(from_file)
            if DELIVERY_GATEWAY_ENV in from_file:
                gateway_source = "environment file"
            sources["environment file"] = f"{env_file} ({len(from_file)} variables)"
        else:
            sources["environment file"] = f"{env_file} (absent)"
    storage = env.get("TRACKTION_STORAGE_PATH") or None
    if storage:
        sources["storage"] = "TRACKTION_STORAGE_PATH"
    formats = frozenset(AUDIO_FORMATS.values())
    max_upload = MAX_UPLOAD_BYTES
    area_paths: dict[str, Path] = {}
    config_dir = Path(env[CONFIG_DIR_ENV]) if env.get(CONFIG_DIR_ENV) else None
    if config_dir is not None:
        services_file = config_dir / SERVICES_CONFIG_FILE
        declared = _setting(_load_file(services_file), "services", services_file)
        if not isinstance(declared, dict) or not isinstance(declared.get(name), dict):
            raise ConfigurationError(f"{services_file}: services.{name} is not declared")
        app_file = config_dir / APP_CONFIG_FILE
        app = _load_file(app_file)
        if "storage" in DEPENDENCIES[name] and storage is None:
            root = _setting(app, "storage.root", app_file)
            if not isinstance(root, str) or not root:
                raise ConfigurationError(f"{app_file}: storage.root must be a path")
            storage = root
            sources["storage"] = f"{app_file} storage.root"
        if name == "analysis-service":
            formats, max_upload = _analysis_settings(app, app_file)
        area_paths = _area_paths(name, app, app_file)
        if area_paths:
            sources["areas"] = f"{app_file} " + ", ".join(f"storage.{a}" for a in area_paths)
        sources["configuration"] = str(config_dir)
    gateway = env.get(DELIVERY_GATEWAY_ENV) or None
    if gateway:
        sources["delivery gateway"] = f"{DELIVERY_GATEWAY_ENV} ({gateway_source})"
    config = ServiceConfig(
        name=name,
        port=port,
        database_url=env.get("TRACKTION_DATABASE_URL") or None,
        storage_path=Path(storage) if storage else None,
        formats=formats,
        max_upload_bytes=max_upload,
        delivery_gateway_url=gateway,
        area_paths=area_paths,
    )
    return config, sources


def _area_paths(name: str, app: Any, app_file: Path) -> dict[str, Path]:
    """``storage.<area>`` for each area the service works on, where app.json names one."""
    storage = app.get("storage") if isinstance(app, dict) else None
    paths = {}
    for area in AREAS.get(name, ()):
        value = storage.get(area) if isinstance(storage, dict) else None
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise ConfigurationError(f"{app_file}: storage.{area} must be a path")
        paths[area] = Path(value)
    return paths


def _analysis_settings(app: Any, app_file: Path) -> tuple[frozenset[str], int]:
    listed = _setting(app, "analysis.formats", app_file)
    known = set(AUDIO_FORMATS.values())
    if (
        not isinstance(listed, list)
        or not listed
        or not all(isinstance(f, str) and f in known for f in listed)
    ):
        raise ConfigurationError(
            f"{app_file}: analysis.formats must be a non-empty list of {sorted(known)}"
        )
    max_mb = _setting(app, "analysis.max_upload_mb", app_file)
    if isinstance(max_mb, bool) or not isinstance(max_mb, int) or not 0 < max_mb <= 1024:
        raise ConfigurationError(f"{app_file}: analysis.max_upload_mb must be 1..1024")
    return frozenset(listed), max_mb * 1024 * 1024


class RequestError(Exception):
    """A client error answered with ``status`` and a JSON reason."""

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# --------------------------------------------------------------------------- health checks


def check_database(url: str | None) -> dict[str, Any]:
    if not url:
        return {"ok": False, "error": "TRACKTION_DATABASE_URL is not set"}
    import psycopg

    started = time.monotonic()
    try:
        with psycopg.connect(
            url,
            connect_timeout=DB_CONNECT_TIMEOUT_SECONDS,
            options=f"-c statement_timeout={DB_STATEMENT_TIMEOUT_MS}",
            application_name="tracktion-sandbox-health",
            autocommit=True,
        ) as conn:
            conn.execute("SELECT 1").fetchone()
    except psycopg.Error as exc:
        # psycopg's message names host/port/user but never the password
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return {"ok": False, "error": reason}
    return {"ok": True, "latency_ms": round((time.monotonic() - started) * 1000, 1)}


def check_storage(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {"ok": False, "error": "TRACKTION_STORAGE_PATH is not set"}
    started = time.monotonic()
    try:
        # A real write, not os.access(): root passes access() checks on read-only mounts.
        with tempfile.NamedTemporaryFile(dir=path, prefix=".health-", delete=True) as handle:
            handle.write(b"ok")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        return {"ok": False, "path": str(path), "error": f"{exc.strerror or exc} ({path})"}
    return {
        "ok": True,
        "path": str(path),
        "latency_ms": round((time.monotonic() - started) * 1000, 1),
    }


# Where the writable database is: the load balancer's ``database`` backend (failover flips
# it). When set, the service connects to the server that backend selects, so a database
# failover really repoints the services; if the balancer does not answer, the configured
# DSN is used as it is.
DATABASE_ROUTE_ENV = "TRACKTION_DATABASE_ROUTE"
ROUTE_TIMEOUT_SECONDS = 1.0


def routed_database_url(url: str | None) -> str | None:
    route = os.environ.get(DATABASE_ROUTE_ENV)
    if not url or not route:
        return url
    import urllib.request

    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        with urllib.request.urlopen(  # noqa: S310 (an http:// URL from our own environment)
            f"{route.rstrip('/')}/api/v1/backends/database", timeout=ROUTE_TIMEOUT_SECONDS
        ) as answer:
            servers = json.loads(answer.read())["servers"]
    except (OSError, ValueError, KeyError):
        return url
    enabled = [
        s for _, s in sorted(servers.items()) if s["status"] == "enabled" and s["weight"] > 0
    ]
    if not enabled:
        return url
    host, _, port = max(enabled, key=lambda s: s["weight"])["address"].rpartition(":")
    return make_conninfo(**{**conninfo_to_dict(url), "host": host, "port": port})


def run_checks(config: ServiceConfig) -> tuple[bool, dict[str, dict[str, Any]]]:
    checks: dict[str, dict[str, Any]] = {}
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "database": lambda: check_database(routed_database_url(config.database_url)),
        "storage": lambda: check_storage(config.storage_path),
    }
    for name in DEPENDENCIES.get(config.name, ("database", "storage")):
        checks[name] = runners[name]()
    for area, path in config.area_paths.items():
        checks[area] = check_storage(path)
    return all(check["ok"] for check in checks.values()), checks


# --------------------------------------------------------------------------- audio analysis


def extract_upload(content_type: str, body: bytes) -> bytes:
    """Return the audio bytes of a multipart ``file`` field or a raw ``audio/*`` body."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type.startswith("audio/") or media_type == "application/octet-stream":
        return body
    if media_type != "multipart/form-data":
        raise RequestError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"Content-Type must be multipart/form-data or audio/*, got {media_type or 'none'}",
        )
    # email's MIME parser handles multipart/form-data bodies (the cgi module is gone in 3.13)
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise RequestError(HTTPStatus.BAD_REQUEST, "malformed multipart body")
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "file":
            payload = part.get_payload(decode=True)
            if not isinstance(payload, bytes):
                raise RequestError(HTTPStatus.BAD_REQUEST, "field 'file' has no content")
            return payload
    raise RequestError(HTTPStatus.BAD_REQUEST, "multipart body has no field named 'file'")


def send_test_message(config: ServiceConfig) -> dict[str, Any]:
    """Send one test message through the delivery gateway; raise RequestError(502) naming
    the gateway when it does not accept it."""
    import urllib.error
    import urllib.request

    gateway = config.delivery_gateway_url
    if not gateway:
        raise RequestError(HTTPStatus.BAD_GATEWAY, f"{DELIVERY_GATEWAY_ENV} is not set")
    request = urllib.request.Request(  # noqa: S310 (an http:// URL from our own configuration)
        f"{gateway.rstrip('/')}/v1/messages",
        data=json.dumps({"client": config.name, "text": "delivery test"}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=GATEWAY_TIMEOUT_SECONDS) as answer:  # noqa: S310
            accepted = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        raise RequestError(
            HTTPStatus.BAD_GATEWAY, f"delivery gateway {gateway} answered HTTP {exc.code}"
        ) from None
    except (OSError, ValueError) as exc:
        raise RequestError(
            HTTPStatus.BAD_GATEWAY, f"delivery gateway {gateway} unreachable: {exc}"
        ) from None
    return {
        "status": "success",
        "gateway": gateway,
        "provider": accepted.get("provider"),
        "id": accepted.get("id"),
    }


def analyze_audio(data: bytes) -> dict[str, Any]:
    """Parse audio with mutagen; raise RequestError(422) when it is not readable audio."""
    import mutagen

    if not data:
        raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, "empty upload")
    try:
        parsed = mutagen.File(io.BytesIO(data))
    except mutagen.MutagenError as exc:
        raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, f"unreadable audio: {exc}") from exc
    if parsed is None or parsed.info is None:
        raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, "not a recognised audio format")
    info = parsed.info
    duration = float(getattr(info, "length", 0) or 0)
    sample_rate = int(getattr(info, "sample_rate", 0) or 0)
    if duration <= 0 or sample_rate <= 0:
        raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, "audio has no duration or sample rate")
    kind = type(parsed).__name__
    return {
        "status": "success",
        "format": AUDIO_FORMATS.get(kind, kind.lower()),
        "duration_seconds": round(duration, 3),
        "sample_rate": sample_rate,
        "channels": int(getattr(info, "channels", 0) or 0),
        "bytes": len(data),
    }


# --------------------------------------------------------------------------- HTTP


class ServiceHandler(BaseHTTPRequestHandler):
    server_version = f"tracktion-sandbox/{VERSION}"
    protocol_version = "HTTP/1.1"
    config: ServiceConfig  # set on the subclass made by make_server

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        path = self.path.split("?", 1)[0]
        if path == "/health":
            healthy, checks = run_checks(self.config)
            failed = [name for name, check in checks.items() if not check["ok"]]
            payload: dict[str, Any] = {
                "status": "healthy" if healthy else "unhealthy",
                "service": self.config.name,
                "version": VERSION,
                "checks": checks,
            }
            if failed:
                payload["failed"] = failed
            self._send_json(200 if healthy else 503, payload)
        elif path == "/":
            self._send_json(200, {"service": self.config.name, "version": VERSION})
        else:
            self._send_json(404, {"status": "error", "reason": f"no route {path}"})

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path == "/notify/test" and self.config.name == "notification-service":
            self._drain()
            try:
                self._send_json(200, send_test_message(self.config))
            except RequestError as exc:
                self._send_json(exc.status, {"status": "error", "reason": exc.reason})
            return
        if path != "/analyze" or self.config.name != "analysis-service":
            self._drain()
            self._send_json(404, {"status": "error", "reason": f"no route POST {path}"})
            return
        try:
            body = self._read_body()
            data = extract_upload(self.headers.get("Content-Type", ""), body)
            result = analyze_audio(data)
            if result["format"] not in self.config.formats:
                raise RequestError(
                    HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                    f"{result['format']} is not an enabled format "
                    f"(analysis.formats: {sorted(self.config.formats)})",
                )
        except RequestError as exc:
            self._send_json(exc.status, {"status": "error", "reason": exc.reason})
            return
        self._send_json(200, result)

    def _read_body(self) -> bytes:
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
        try:
            length = int(length_header)
        except ValueError as exc:
            raise RequestError(HTTPStatus.BAD_REQUEST, "Content-Length is not a number") from exc
        if length < 0 or length > self.config.max_upload_bytes:
            self.close_connection = True
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"upload exceeds {self.config.max_upload_bytes} bytes",
            )
        return self.rfile.read(length)

    def _drain(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if 0 < length <= self.config.max_upload_bytes:
            self.rfile.read(length)
        elif length:
            self.close_connection = True

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.info('%s "%s" %s', self.client_address[0], self.requestline, code)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.warning("%s %s", self.client_address[0], format % args)


class SandboxHTTPServer(ThreadingHTTPServer):
    """Threaded server; a deeper accept queue than http.server's 5, because a DR run
    probes every service concurrently."""

    daemon_threads = True
    request_queue_size = 64


def make_server(config: ServiceConfig) -> SandboxHTTPServer:
    handler = type("BoundServiceHandler", (ServiceHandler,), {"config": config})
    return SandboxHTTPServer((HOST, config.port), handler)


def serve_until_signalled(server: ThreadingHTTPServer, name: str) -> None:
    """Serve in a thread; SIGTERM/SIGINT shut the server down cleanly."""
    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("%s: received %s, shutting down", name, signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    thread = threading.Thread(target=server.serve_forever, name=f"{name}-http", daemon=True)
    thread.start()
    log.info("%s listening on http://%s:%s", name, *server.server_address[:2])
    stop.wait()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
    log.info("%s stopped", name)


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Tracktion sandbox stand-in service")
    parser.add_argument("--name", required=True, choices=sorted(DEPENDENCIES))
    parser.add_argument("--port", required=True, type=int)
    args = parser.parse_args(argv)
    configure_logging()
    try:
        config, sources = load_config(args.name, args.port)
    except ConfigurationError as exc:
        log.error("%s: configuration refused, not starting: %s", args.name, exc)
        return EX_CONFIG
    # where each setting came from; never a value of the environment file
    log.info("%s: settings from %s", args.name, sources or "the environment only")
    serve_until_signalled(make_server(config), config.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
