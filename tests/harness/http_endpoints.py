"""A real HTTP server in its own process, for probing many endpoints at once.

    python tests/harness/http_endpoints.py [--port 0]

Prints the port it listens on (one line, then flushes) and serves until killed:

- ``/hang/<group>/...``  accepts the request and never answers (until the client hangs up);
- ``/stats/<group>``     ``{"hanging_now": n, "hanging_peak": m}``: how many of the group's
                         hung requests wait now, and the most that ever waited at once (a
                         batch probed one endpoint after another shows a peak of 1);
- ``/drip/...``          sends a 200's headers, then one body byte every 0.2 s, forever:
                         each read is quick, only a bound on the whole request ends it;
- ``/close/...``         reads the request and closes the connection without a word;
- ``/status/<code>``     answers ``<code>`` with a small JSON body naming it;
- anything else          answers 200 ``{"status":"healthy"}``.

Plain asyncio streams (no framework): one process holds thousands of open connections
cheaply, so the benchmark measures the prober, not the server. Keeps connections alive
between requests like any HTTP/1.1 server. Imports nothing from the project.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys


def _raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _response(code: int, body: bytes, content_length: int | None = None) -> bytes:
    reason = {200: "OK", 500: "Internal Server Error", 503: "Service Unavailable"}.get(code, "")
    length = len(body) if content_length is None else content_length
    head = (
        f"HTTP/1.1 {code} {reason}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {length}\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body


# group -> [hanging now, hanging peak]
_HANGING: dict[str, list[int]] = {}


async def _hang(group: str, reader: asyncio.StreamReader) -> None:
    counts = _HANGING.setdefault(group, [0, 0])
    counts[0] += 1
    counts[1] = max(counts[1], counts[0])
    try:
        await reader.read()  # never answers; returns only when the client hangs up
    finally:
        counts[0] -= 1
    raise ConnectionError("the client gave up")


async def _answer(path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    parts = path.split("/")
    if path.startswith("/hang"):
        await _hang(parts[2] if len(parts) > 2 else "", reader)
    if path.startswith("/close"):
        raise ConnectionError("closing without an answer")
    if path.startswith("/drip"):
        writer.write(_response(200, b"", content_length=1_000_000))
        while True:
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.write(b" ")
    if path.startswith("/stats/"):
        now, peak = _HANGING.get(parts[2], [0, 0])
        body = json.dumps({"hanging_now": now, "hanging_peak": peak})
        writer.write(_response(200, body.encode()))
    elif path.startswith("/status/"):
        code = int(parts[2])
        body = json.dumps({"status": "unhealthy" if code >= 400 else "ok", "code": code})
        writer.write(_response(code, body.encode()))
    else:
        writer.write(_response(200, b'{"status":"healthy"}'))
    await writer.drain()


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            _method, path, _version = request_line.split(" ", 2)
            await _answer(path, reader, writer)
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _main(port: int) -> None:
    server = await asyncio.start_server(_serve_connection, "127.0.0.1", port, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 = any free port (printed)")
    args = parser.parse_args()
    _raise_open_files_limit()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.port))
    sys.exit(0)
