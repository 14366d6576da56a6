"""dr_service_dependencies_recovery's decisions (scenarios.dependencies), without a sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracktion_dr.core.plan import load_plan
from tracktion_dr.scenarios import dependencies

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def plan():
    return load_plan(ROOT / "include" / "config" / "sandbox.yaml")


def test_layers_in_the_seeds_order_and_the_strictest_rto(plan):
    assert dependencies.LAYERS == ("database", "cache", "queue", "storage", "application")
    assert dependencies.rto_seconds(plan) == 1800.0, "the database and analysis are critical"


def test_a_layer_is_back_when_every_component_is_healthy():
    assert dependencies.layer_state("cache", {}) == (True, "no cache in the plan")
    opened, seen = dependencies.layer_state(
        "database",
        {
            "main": {"healthy": False, "detail": "connection refused"},
            "ops": {"healthy": True, "detail": "ok"},
        },
    )
    assert (opened, seen) == (False, "main: connection refused")
    assert dependencies.layer_state("storage", {"a": {"healthy": True, "detail": "ok"}}) == (
        True,
        "1 healthy: a",
    )


def test_the_plan_of_actions_names_each_layer_and_in_a_dry_run_what_is_down_now():
    run = {"dry_run": True}
    generic = dependencies.plan_of_actions(run)
    assert [line.split(":")[0] for line in generic] == list(dependencies.LAYERS)
    assert "a missing data directory is a restore" in generic[0]
    assert all("gate_" in line for line in generic)
    health = {layer: {} for layer in dependencies.LAYERS}
    health["database"] = {"main": {"healthy": False, "detail": "refused"}}
    health["application"] = {"file-watcher": {"healthy": True, "detail": "ok"}}
    now = dependencies.plan_of_actions(run, health)
    assert now[0].endswith("(now: down: main)")
    assert now[-1].endswith("(now: nothing to do)")


def test_a_real_run_does_not_probe_in_its_guard(plan):
    """Its steps look for themselves, each right before acting (no access needed here)."""
    assert dependencies.health_for_the_plan(plan, {"dry_run": False}, access=None) is None  # type: ignore[arg-type]
