"""The restore's decisions from the actual state (no database needed: the state is data)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tracktion_dr.core.errors import AlreadyRecovered, InvalidInput, Refused
from tracktion_dr.postgres.restore import (
    DatabaseInfo,
    Marker,
    MarkerState,
    Phase,
    RestoreState,
    marker_for,
)
from tracktion_dr.scenarios.database import (
    pick_backup,
    refuse_already_recovered,
    refuse_unsafe_state,
)

TAG = "20261126_031205"
BACKUP = {"id": "tracktion_20261126T020000Z.dump", "sha256": "ab" * 32, "path": "/b/t.dump"}


def marker(state: MarkerState, tag: str = TAG, backup: dict = BACKUP) -> Marker:
    return marker_for("tracktion", f"DR-{tag.replace('_', '-')}", tag, backup, state)


def info(name: str, mark: Marker | None = None, allowed: bool = True) -> DatabaseInfo:
    return DatabaseInfo(name, mark, allowed, 10 << 20)


def state(live=None, scratch=None, aside=None, others=()) -> RestoreState:
    return RestoreState("tracktion", TAG, live, scratch, aside, tuple(others))


LIVE = info("tracktion")
SCRATCH = f"tracktion_restore_{TAG}"
ASIDE = f"tracktion_pre_{TAG}"


def test_marker_round_trips_through_the_comment_and_ignores_foreign_comments():
    written = marker(MarkerState.VALIDATED)
    assert Marker.from_comment(written.as_comment()) == written
    assert Marker.from_comment("default administrative connection database") is None
    assert Marker.from_comment("tracktion-dr restore {not json") is None
    assert written.same_backup({"id": "other name", "sha256": BACKUP["sha256"]})
    assert not written.same_backup({"id": BACKUP["id"], "sha256": "cd" * 32})


@pytest.mark.parametrize(
    ("restore_state", "phase"),
    [
        (state(live=LIVE), Phase.NOT_STARTED),
        (state(live=LIVE, scratch=info(SCRATCH)), Phase.INCOMPLETE),  # killed before the marker
        (state(live=LIVE, scratch=info(SCRATCH, marker(MarkerState.RESTORING))), Phase.INCOMPLETE),
        (state(live=LIVE, scratch=info(SCRATCH, marker(MarkerState.RESTORED))), Phase.RESTORED),
        (state(live=LIVE, scratch=info(SCRATCH, marker(MarkerState.INVALID))), Phase.INVALID),
        (state(live=LIVE, scratch=info(SCRATCH, marker(MarkerState.VALIDATED))), Phase.VALIDATED),
        # in place: the live database moved aside, nothing restored yet
        (state(aside=info(ASIDE)), Phase.NOT_STARTED),
        # killed between the two renames of the swap
        (
            state(scratch=info(SCRATCH, marker(MarkerState.VALIDATED), False), aside=info(ASIDE)),
            Phase.VALIDATED,
        ),
        (
            state(live=info("tracktion", marker(MarkerState.VALIDATED)), aside=info(ASIDE)),
            Phase.SWAPPED,
        ),
        # an earlier incident's restore is live: not ours
        (
            state(live=info("tracktion", marker(MarkerState.VALIDATED, "20261101_000000"))),
            Phase.NOT_STARTED,
        ),
    ],
)
def test_phase_is_read_from_names_and_markers(restore_state, phase):
    assert restore_state.phase is phase


def test_states_no_run_leaves_are_refused():
    with pytest.raises(Refused, match=f"{ASIDE} .* already exists beside tracktion"):
        refuse_unsafe_state(state(live=LIVE, aside=info(ASIDE)), "DR-20261126-031205")
    other = info(
        "tracktion_restore_20261101_000000", marker(MarkerState.VALIDATED, "20261101_000000")
    )
    with pytest.raises(
        Refused, match="re-run dr_database_restore with incident_id DR-20261101-000000"
    ):
        refuse_unsafe_state(state(others=[other]), "DR-20261126-031205")
    refuse_unsafe_state(state(live=LIVE, others=[other]), "DR-20261126-031205")  # just reported
    swapped = state(live=info("tracktion", marker(MarkerState.VALIDATED)), aside=info(ASIDE))
    refuse_unsafe_state(swapped, "DR-20261126-031205")


def test_a_new_incident_on_the_same_dump_is_already_recovered():
    earlier = state(live=info("tracktion", marker(MarkerState.VALIDATED, "20261101_000000")))
    with pytest.raises(AlreadyRecovered, match="made by incident DR-20261101-000000") as caught:
        refuse_already_recovered(earlier, BACKUP, TAG)
    assert "COMMENT ON DATABASE tracktion IS NULL" in str(caught.value)
    refuse_already_recovered(earlier, {**BACKUP, "sha256": "cd" * 32, "id": "newer"}, TAG)
    ours = state(live=info("tracktion", marker(MarkerState.VALIDATED)))
    refuse_already_recovered(ours, BACKUP, TAG)  # the same incident resumes


class Catalog:
    def __init__(self):
        self.asked: list[str] = []

    def newest_dump(self, database: str, *, backup_id: str = "latest"):
        self.asked.append(backup_id)
        return SimpleNamespace(
            as_dict=lambda: {"id": backup_id if backup_id != "latest" else "newest"}
        )


TARGET = SimpleNamespace(spec=SimpleNamespace(name="tracktion"))


def test_a_rerun_keeps_its_first_dump():
    catalog = Catalog()
    assert pick_backup(catalog, TARGET, "latest", state(live=LIVE))["id"] == "newest"
    incomplete = state(live=LIVE, scratch=info(SCRATCH, marker(MarkerState.RESTORING)))
    assert pick_backup(catalog, TARGET, "latest", incomplete)["id"] == BACKUP["id"]
    assert catalog.asked == ["latest", BACKUP["id"]]  # verified again: it is restored again
    swapped = state(live=info("tracktion", marker(MarkerState.VALIDATED)), aside=info(ASIDE))
    assert pick_backup(catalog, TARGET, "latest", swapped)["id"] == BACKUP["id"]
    assert len(catalog.asked) == 2, "a validated copy exists: the dump is not read again"
    with pytest.raises(InvalidInput, match="backup: incident .* already restored"):
        pick_backup(catalog, TARGET, "tracktion_20261126T230000Z.dump", incomplete)


@pytest.mark.parametrize("path", [None, "/nonexistent/base_20261126T013924Z"])
def test_a_failed_lay_down_of_a_backup_that_is_gone_says_so_and_marks_nothing(tmp_path, path):
    """The base backup the guard chose is no longer there (an offsite backup's mirror copy
    removed, a local one moved): the step fails saying so - a retry, never a crash on the
    missing path, and no verification record written for a backup nobody checked."""
    from pathlib import Path

    from tracktion_dr.core.errors import StepFailed
    from tracktion_dr.scenarios.database import _judge_backup_after_failed_staging

    base = {"id": "base_20261126T013924Z", "path": path}
    with pytest.raises(StepFailed) as caught:
        _judge_backup_after_failed_staging(
            base, tmp_path / "data", OSError("No space left on device"), Path("/bin"), "postgres"
        )
    text = str(caught.value)
    assert "no longer where the guard found it" in text and "No space left" in text
    assert "nothing live was touched" in text
    assert list(tmp_path.iterdir()) == []
