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
    """Data lost = incident time - the newest write from before the incident that survived.

    Two witnesses: the newest surviving canary heartbeat (one a second), and ``fallback``,
    the newest point the recovered copy is known to contain (the last transaction replayed
    by a recovery, to the microsecond and across all tables; a dump's snapshot time). The
    newer of the two that is not after the incident wins; when neither exists the loss is
    unknown and said so."""
    canary: datetime | None = None
    why = ""
    with psycopg.connect(conninfo, connect_timeout=10) as conn:
        exists = conn.execute(
            "SELECT pg_catalog.to_regclass(%s) IS NOT NULL", (CANARY_TABLE,)
        ).fetchone()[0]  # type: ignore[index]
        if exists:
            canary = conn.execute(
                "SELECT max(written_at) FROM dr_canary.heartbeat WHERE written_at <= %s",
                (incident_at,),
            ).fetchone()[0]  # type: ignore[index]
            why = "" if canary else "no canary heartbeat from before the incident survived"
        else:
            why = "no canary table"
    witnesses = [(canary, "canary heartbeat")] if canary else []
    if fallback is not None and fallback <= incident_at:
        witnesses.append((fallback, fallback_method or "known content of the backup"))
    if not witnesses:
        return DataLoss(
            incident_at.isoformat(), None, None, why or "no witness of the newest write"
        )
    newest, method = max(witnesses, key=lambda w: w[0])
    return DataLoss(
        incident_at.isoformat(),
        newest.isoformat(),
        round((incident_at - newest).total_seconds(), 3),
        method + (f" ({why})" if why else ""),
    )
