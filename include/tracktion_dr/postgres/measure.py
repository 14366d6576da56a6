"""Measured data loss: what the recovered database no longer has, from the canary.

A heartbeat row is committed every second (``dr_canary.heartbeat``). After a recovery,
the newest heartbeat written *before the incident* that survived tells exactly how much
was lost: ``incident time - newest surviving heartbeat``. Heartbeats written after the
recovery (the canary resumes) are ignored. Where no canary exists, the caller falls back
to the last replayed transaction time from the server log.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg

CANARY_TABLE = "dr_canary.heartbeat"


@dataclass(frozen=True)
class DataLoss:
    incident_at: str
    newest_surviving_write: str | None
    seconds: float | None
    method: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if self.seconds is None:
            return f"data loss unknown ({self.method})"
        return f"{self.seconds:.1f}s of writes lost (newest surviving write {self.newest_surviving_write}; {self.method})"


def canary_data_loss(
    conninfo: str,
    incident_at: datetime,
    *,
    fallback: datetime | None = None,
    fallback_method: str = "",
) -> DataLoss:
    """Data loss from the newest surviving pre-incident heartbeat; when none survived (the
    backup predates the canary), from ``fallback`` - the newest point the backup is known
    to contain (a dump's snapshot time, the last replayed commit)."""

    def from_fallback(why: str) -> DataLoss:
        if fallback is None:
            return DataLoss(incident_at.isoformat(), None, None, why)
        return DataLoss(
            incident_at.isoformat(),
            fallback.isoformat(),
            round((incident_at - fallback).total_seconds(), 3),
            f"{fallback_method} ({why})",
        )

    with psycopg.connect(conninfo, connect_timeout=10) as conn:
        exists = conn.execute(
            "SELECT pg_catalog.to_regclass(%s) IS NOT NULL", (CANARY_TABLE,)
        ).fetchone()[0]  # type: ignore[index]
        if not exists:
            return from_fallback("no canary table")
        newest = conn.execute(
            "SELECT max(written_at) FROM dr_canary.heartbeat WHERE written_at <= %s", (incident_at,)
        ).fetchone()[0]  # type: ignore[index]
    if newest is None:
        return from_fallback("no canary heartbeat from before the incident survived")
    return DataLoss(
        incident_at.isoformat(),
        newest.isoformat(),
        round((incident_at - newest).total_seconds(), 3),
        "canary heartbeat",
    )
