"""Common run inputs: checked before anything is touched, with the field named."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tracktion_dr.core.incident import InvalidInput, new_incident_id, resolve_incident

NOW = datetime(2026, 11, 26, 3, 30, tzinfo=UTC)
ENVIRONMENTS = ["drill", "production"]


def resolve(**params):
    base = {"environment": "drill", "incident_id": "", "incident_started_at": ""}
    return resolve_incident(
        {**base, **params},
        run_started_at=NOW,
        known_environments=ENVIRONMENTS,
        plan_name="t",
        now=NOW,
    )


def test_defaults_generate_the_id_from_the_clock_start():
    incident = resolve()
    assert incident.incident_id == "DR-20261126-033000"
    assert incident.started_at == NOW.isoformat()
    assert new_incident_id(NOW) == "DR-20261126-033000"


def test_given_start_time_drives_the_id_and_clock():
    incident = resolve(incident_started_at="2026-11-26T04:12:05+01:00")
    assert incident.started_at == "2026-11-26T03:12:05+00:00"
    assert incident.incident_id == "DR-20261126-031205"


@pytest.mark.parametrize(
    ("params", "field", "reason"),
    [
        ({"incident_id": "INC-42"}, "incident_id", "does not match DR-YYYYMMDD-HHMMSS"),
        ({"environment": "staging"}, "environment", "not one of the plan's environments"),
        ({"incident_started_at": "yesterday"}, "incident_started_at", "not an ISO 8601"),
        ({"incident_started_at": "2026-11-26T03:00:00"}, "incident_started_at", "no time zone"),
        (
            {"incident_started_at": (NOW + timedelta(hours=1)).isoformat()},
            "incident_started_at",
            "in the future",
        ),
        ({"incident_started_at": "2025-11-26T03:00:00Z"}, "incident_started_at", "days ago"),
    ],
)
def test_bad_inputs_name_the_field(params, field, reason):
    with pytest.raises(InvalidInput) as caught:
        resolve(**params)
    assert caught.value.field == field
    assert reason in str(caught.value)


def test_destructive_runs_need_the_typed_confirmation_where_the_plan_says_so():
    from tracktion_dr.core.incident import check_confirmation

    check_confirmation(False, "", "configuration")  # drill: not required
    check_confirmation(True, " RESTORE configuration ", "configuration")
    for typed in ("", "restore configuration", "RESTORE config"):
        with pytest.raises(InvalidInput) as caught:
            check_confirmation(True, typed, "configuration")
        assert caught.value.field == "confirm"
        assert "'RESTORE configuration'" in caught.value.reason
