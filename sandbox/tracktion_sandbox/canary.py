"""The DR canary: one committed heartbeat row per second in ``dr_canary.heartbeat``.

Why: after a recovery, the newest heartbeat that survived tells exactly how much committed
data was lost (measured RPO = incident time - newest surviving heartbeat), instead of
guessing from backup timestamps.

Runs for ever (under supervisord in the sandbox). The primary may be stopped, destroyed
and restored under it: every failure closes the connection, logs one line per outage (and
a reminder every minute), and the next tick reconnects, so heartbeats resume on their own.
SIGTERM and SIGINT end it cleanly between two ticks.

Environment: ``TRACKTION_CANARY_DSN`` (libpq DSN, required; never logged),
``TRACKTION_CANARY_INTERVAL`` (seconds, default 1), ``TRACKTION_CANARY_WRITER`` (default
``<hostname>/sandbox-canary``).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from types import FrameType
from typing import Any

import psycopg

log = logging.getLogger("tracktion_sandbox.canary")

DSN_ENV = "TRACKTION_CANARY_DSN"
INSERT = "INSERT INTO dr_canary.heartbeat (writer) VALUES (%s)"
OUTAGE_REMINDER_S = 60


class Canary:
    """Writes heartbeats until ``stop`` is set; keeps at most one open connection."""

    def __init__(self, dsn: str, writer: str, interval: float = 1.0) -> None:
        self.dsn = dsn
        self.writer = writer
        self.interval = interval
        self.stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._outage_since: float | None = None
        self._last_reminder = 0.0
        self.written = 0

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self.dsn,
                autocommit=True,
                connect_timeout=2,
                application_name="sandbox-canary",
                # A primary that vanishes mid-insert must not hang the canary.
                keepalives=1,
                keepalives_idle=5,
                keepalives_interval=2,
                keepalives_count=2,
                tcp_user_timeout=5000,
                options="-c statement_timeout=5000",
            )
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
        self._conn = None

    def beat(self) -> bool:
        """Insert one heartbeat; return whether it was committed."""
        try:
            self._connection().execute(INSERT, (self.writer,))
        except psycopg.Error as exc:
            self._drop_connection()
            self._report_failure(exc)
            return False
        self.written += 1
        if self._outage_since is not None:
            log.info("heartbeats resumed after %.1f s", time.monotonic() - self._outage_since)
            self._outage_since = None
        return True

    def _report_failure(self, exc: psycopg.Error) -> None:
        now = time.monotonic()
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self._outage_since is None:
            self._outage_since = now
            self._last_reminder = now
            log.warning("heartbeat failed, retrying every %.0f s: %s", self.interval, reason)
        elif now - self._last_reminder >= OUTAGE_REMINDER_S:
            self._last_reminder = now
            log.warning("still failing after %.0f s: %s", now - self._outage_since, reason)

    def run(self) -> None:
        log.info("canary started: writer=%s interval=%.1fs", self.writer, self.interval)
        next_tick = time.monotonic()
        while not self.stop.is_set():
            self.beat()
            next_tick += self.interval
            delay = next_tick - time.monotonic()
            if delay < 0:  # a slow reconnect: skip missed ticks instead of bursting
                next_tick = time.monotonic()
                delay = 0
            self.stop.wait(delay)
        self._drop_connection()
        log.info("canary stopped after %d heartbeats", self.written)


def main() -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    dsn = os.environ.get(DSN_ENV)
    if not dsn:
        log.error("%s is not set: give the canary a libpq DSN to the primary", DSN_ENV)
        return 2
    writer = os.environ.get("TRACKTION_CANARY_WRITER") or f"{socket.gethostname()}/sandbox-canary"
    interval = float(os.environ.get("TRACKTION_CANARY_INTERVAL", "1"))
    canary = Canary(dsn, writer, interval)

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        canary.stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    canary.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
