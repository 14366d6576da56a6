"""A scheduled drill run started after its window closed is skipped; any other run goes ahead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tracktion_dr.core.drill_window import missed_window

DUE = datetime(2026, 10, 1, 6, 0, tzinfo=UTC)
WINDOW = timedelta(hours=8)


def test_a_scheduled_run_started_after_its_window_is_skipped_saying_when_it_closed():
    reason = missed_window(
        run_type="scheduled", due_at=DUE, started_at=DUE + timedelta(days=57), window=WINDOW
    )
    assert reason is not None
    assert "2026-10-01T14:00:00+00:00" in reason  # when the window closed
    assert "trigger the drill by hand" in reason


@pytest.mark.parametrize("late", [timedelta(0), timedelta(minutes=3), WINDOW])
def test_a_scheduled_run_inside_its_window_goes_ahead(late):
    assert (
        missed_window(run_type="scheduled", due_at=DUE, started_at=DUE + late, window=WINDOW)
        is None
    )


def test_the_window_is_the_cadences_own():
    started = DUE + timedelta(hours=20)
    assert missed_window(run_type="scheduled", due_at=DUE, started_at=started, window=WINDOW)
    assert not missed_window(
        run_type="scheduled", due_at=DUE, started_at=started, window=timedelta(days=2)
    )


@pytest.mark.parametrize("run_type", ["manual", "asset_triggered", "backfill", "DagRunType.MANUAL"])
def test_a_run_triggered_by_hand_or_by_other_means_always_goes_ahead(run_type):
    started = DUE + timedelta(days=300)
    assert missed_window(run_type=run_type, due_at=DUE, started_at=started, window=WINDOW) is None


def test_the_enum_spelling_of_a_scheduled_run_is_recognised():
    started = DUE + timedelta(days=1)
    assert missed_window(
        run_type="DagRunType.SCHEDULED", due_at=DUE, started_at=started, window=WINDOW
    )


def test_a_run_without_a_due_time_goes_ahead():
    assert (
        missed_window(
            run_type="scheduled", due_at=None, started_at=DUE + timedelta(days=9), window=WINDOW
        )
        is None
    )
