"""dr_infrastructure_recovery's decisions (scenarios.infrastructure), without a sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracktion_dr.core.errors import InvalidInput, ValidationFailed
from tracktion_dr.core.plan import Controller, load_plan
from tracktion_dr.scenarios import infrastructure
from tracktion_dr.services.infrastructure import Finding

ROOT = Path(__file__).resolve().parents[2]
INCIDENT = {"incident_id": "DR-20261126-031200", "environment": "drill", "dry_run": False}
MISSING_DIRECTORY = Finding(
    "storage",
    "user_uploads /data/user_uploads",
    False,
    "missing",
    "recreate the directory with the plan's owner and mode",
)


@pytest.fixture()
def plan(tmp_path, monkeypatch):
    monkeypatch.setenv("DR_SANDBOX_HOME", str(tmp_path))
    return load_plan(ROOT / "include" / "config" / "sandbox.yaml")


def with_compose_host(environment):
    controllers = {
        **environment.controllers,
        "compose": Controller(kind="docker_compose", compose_file="/x.yaml", project="p"),
    }
    return environment.model_copy(update={"controllers": controllers})


def test_areas_default_to_all_and_unknown_ones_are_refused():
    run = infrastructure.check_inputs(dict(INCIDENT), {"areas": [], "prune_docker": False})
    assert run["areas"] == ["network", "storage", "compute"] and run["prune_docker"] is False
    with pytest.raises(InvalidInput, match=r"areas: unknown \['disk'\]"):
        infrastructure.check_inputs(dict(INCIDENT), {"areas": ["disk"], "prune_docker": False})


def test_the_plan_of_actions_follows_what_the_plan_allows(plan):
    run = {**INCIDENT, "areas": ["storage", "compute"], "prune_docker": True}
    actions = infrastructure.plan_of_actions(plan, run)
    assert "recreate a missing storage directory with the plan's owner and mode" in actions
    assert "compute: findings only (the plan's restart_service_manager is off)" in actions
    assert any(a.startswith("docker system prune --force") for a in actions)
    assert "network: findings only (system files are never rewritten)" in actions


def test_only_plan_allowed_repairs_are_automatic(plan):
    environment = with_compose_host(plan.environment("drill"))
    assert infrastructure.automatic_repair(environment, MISSING_DIRECTORY) == (
        "recreate the directory"
    )
    ok = Finding("storage", MISSING_DIRECTORY.subject, True, "present")
    assert infrastructure.automatic_repair(environment, ok) is None
    dns = Finding("network", "dns tracktion-db.invalid", False, "does not resolve")
    assert infrastructure.automatic_repair(environment, dns) is None, "never a system file"
    restart = "restart the service manager"
    compose = Finding("compute", "service manager compose", False, "no answer", restart)
    supervisor = Finding("compute", "service manager sandbox_supervisor", False, "x", restart)
    assert infrastructure.automatic_repair(environment, compose) == "systemctl restart docker"
    assert infrastructure.automatic_repair(environment, supervisor) is None, "by hand"


def test_the_gate_waits_for_automatic_repairs_only(plan):
    environment = plan.environment("drill")
    dns = Finding("network", "dns tracktion-db.invalid", False, "does not resolve")
    opened, seen = infrastructure.repairs_hold(environment, [MISSING_DIRECTORY, dns])
    assert not opened and seen == "user_uploads /data/user_uploads: missing"
    assert infrastructure.repairs_hold(environment, [dns]) == (
        True,
        "0/1 checks OK, no repair pending",
    )


def test_repair_recreates_a_missing_directory_and_a_second_run_leaves_it(plan):
    environment = plan.environment("drill")
    uploads = Path(environment.storage["user_uploads"].path)
    finding = Finding(
        "storage", f"user_uploads {uploads}", False, "missing", MISSING_DIRECTORY.repair
    )
    before = {"findings": [finding.as_dict()]}
    run = {**INCIDENT, "prune_docker": True}
    done = infrastructure.repair(plan, run, before, access=None)  # type: ignore[arg-type]
    assert uploads.is_dir()
    assert done["actions"] == {
        f"user_uploads {uploads}": "recreated (owner unchanged, mode default)",
        "docker": "prune_docker set, but no compose controller here: nothing pruned",
    }
    assert done["status"] == "succeeded" and done["repaired"] == list(done["actions"])
    again = infrastructure.repair(plan, {**run, "prune_docker": False}, before, access=None)  # type: ignore[arg-type]
    assert again["actions"] == {f"user_uploads {uploads}": "present"}


def test_nothing_to_repair_is_a_skipped_step(plan):
    run = {**INCIDENT, "prune_docker": False}
    done = infrastructure.repair(plan, run, {"findings": []}, access=None)  # type: ignore[arg-type]
    assert done == {
        "status": "skipped",
        "detail": "nothing to repair",
        "actions": {},
        "repaired": [],
    }


def test_failing_findings_fail_the_run_by_name_unless_dry_run():
    dns = Finding("network", "dns tracktion-db.invalid", False, "does not resolve")
    with pytest.raises(ValidationFailed, match="network dns tracktion-db.invalid: does not"):
        infrastructure.judge_findings({"dry_run": False}, [dns])
    assert infrastructure.judge_findings({"dry_run": True}, [dns]) == "0/1 checks OK"
