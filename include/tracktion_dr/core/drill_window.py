"""Whether a scheduled drill run is still inside its window.

A drill is held in the window the plan gives its cadence (``test_schedule.<cadence>``: the
cron that opens it, the ``duration`` it lasts): people are on hand, production expects it.
Airflow still creates the newest due run of a DAG that was paused or down across that
window (``catchup=False`` skips only the older ones), so unpausing a drill DAG in the middle
of an ordinary day would take a cluster away for a drill nobody is watching. Such a run is
skipped, saying when its window closed; a drill outside its window is triggered by hand.
"""

from __future__ import annotations

from datetime import datetime, timedelta


def missed_window(
    *, run_type: str, due_at: datetime | None, started_at: datetime, window: timedelta
) -> str | None:
    """Why this run is outside its drill window, or None when it may go ahead.

    Only scheduled runs have a window: a run triggered by hand or over the REST API is an
    operator's decision and always goes ahead. ``due_at``: when the schedule made the run
    due (Airflow's ``run_after``); ``started_at``: when the run started."""
    if str(run_type).lower().removeprefix("dagruntype.") != "scheduled" or due_at is None:
        return None
    closes_at = due_at + window
    if started_at <= closes_at:
        return None
    return (
        f"this scheduled drill was due at {due_at.isoformat()} and its window "
        f"({window}) closed at {closes_at.isoformat()}; it started at "
        f"{started_at.isoformat()}, so it is skipped rather than run unattended. "
        "HINT: trigger the drill by hand to hold it now"
    )
