"""The drills' decisions (scenarios.drills) as dr_test_monthly and dr_test_quarterly use
them, without a sandbox: what a failed part does to its step, what the record says (targets,
data at risk, the chain's times on the RTO clock since the simulated loss), and the storage
test on real files in a temporary directory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tracktion_dr.core.errors import ValidationFailed
from tracktion_dr.core.plan import load_plan
from tracktion_dr.scenarios import drills

ROOT = Path(__file__).resolve().parents[2]
LOST_AT = datetime(2026, 11, 26, 3, 0, tzinfo=UTC)
INCIDENT = {
    "incident_id": "DR-20261126-030000",
    "started_at": (LOST_AT - timedelta(seconds=20)).isoformat(),
    "environment": "drill",
    "dry_run": False,
    "notify": False,
}


@pytest.fixture()
def plan(tmp_path, monkeypatch):
    monkeypatch.setenv("DR_SANDBOX_HOME", str(tmp_path))
    return load_plan(ROOT / "include" / "config" / "sandbox.yaml")


def part(name: str, status: str = "succeeded", **extra) -> dict:
    return {"name": name, "status": status, "detail": f"{name} {status}", **extra}


def at(seconds: float) -> str:
    return (LOST_AT + timedelta(seconds=seconds)).isoformat()


def test_a_failed_part_fails_its_step_naming_only_the_failed_parts():
    assert drills.judge_parts("test_services", [part("a"), part("b")]) == (
        "a: a succeeded; b: b succeeded"
    )
    with pytest.raises(ValidationFailed) as failed:
        drills.judge_parts("test_services", [part("a"), part("b", "failed")])
    assert str(failed.value) == "test_services failed: b: b failed"
    assert drills.judge_parts("test_storage", []) == "nothing to test"


def test_the_monthly_plan_of_actions_names_every_scratch_resource(plan):
    run = {**INCIDENT, **drills.guard_monthly(plan, INCIDENT, "t1")}
    actions = drills.monthly_plan_of_actions(run)
    assert "dr_test_tracktion_t1" in actions[0]
    assert "analysis-service" in actions[1] and "user_uploads" in actions[2]
    assert run["scratch_dir"] in actions[2]


def test_the_monthly_record_carries_the_strictest_target_the_dump_and_the_exposure(plan):
    run = {**INCIDENT, **drills.guard_monthly(plan, INCIDENT, "t1")}
    parts = [
        part("database_restore:tracktion", evidence={"dump": "tracktion_x.dump"}),
        part("service_recovery:analysis-service"),
    ]
    rpo = drills.rpo_exposure("tracktion", LOST_AT, 900, LOST_AT + timedelta(seconds=42))
    assert rpo["data_loss_seconds"] == 42 and "42s ago" in rpo["detail"]
    fields = drills.monthly_record_fields(plan, run, parts, rpo, ["dropped dr_test_tracktion_t1"])
    assert fields["rto_target_seconds"] == 1800  # the critical tier: tracktion, analysis
    assert fields["rpo_target_seconds"] == 900 and fields["data_loss_seconds"] == 42
    assert fields["backup_used"] == "tracktion_x.dump"
    assert fields["details"]["steps"] == parts
    assert fields["details"]["notes"] == [rpo["note"], "teardown: dropped dr_test_tracktion_t1"]
    unmeasured = drills.rpo_exposure("tracktion", None, 900, LOST_AT)
    assert "data_loss_seconds" not in unmeasured and "not measured" in unmeasured["note"]
    empty = drills.monthly_record_fields(plan, {**run, "databases": [], "services": []}, [], {}, [])
    assert empty["rto_target_seconds"] == 24 * 3600  # neither: the loosest tier
    assert empty["backup_used"] is None and empty["details"]["notes"] == []


def test_a_storage_area_is_written_backed_up_deleted_restored_and_compared(plan, tmp_path):
    area = Path(plan.environment("drill").storage["user_uploads"].path)
    area.mkdir(parents=True)
    (area / "kept.txt").write_text("a user's upload\n")
    run = {**INCIDENT, "storage_areas": ["user_uploads"], "scratch_dir": str(tmp_path / "s")}
    [result] = drills.test_storage(plan, run)
    assert result["status"] == "succeeded", result
    assert result["name"] == "storage_recovery:user_uploads"
    assert [p.name for p in area.iterdir()] == ["kept.txt"], "the drill's file is gone again"
    # the services that need the area set the target (the loosest tier when none does)
    environment = plan.environment("drill")
    needing = [
        plan.tiers[environment.services[s].tier].rto.total_seconds()
        for s in environment.dependents_of("user_uploads")
    ]
    assert result["target_seconds"] == min(needing or [24 * 3600])


class Step:
    def __init__(self, dag_id: str, label: str = "", conf: dict | None = None):
        self.dag_id, self.label, self.conf = dag_id, label, conf or {}


def test_a_chain_step_runs_its_dag_with_the_drills_incident_and_clock(plan):
    step = Step("dr_database_pitr", "database recovery", {"target_type": "latest"})
    loss = {"lost_at": LOST_AT.isoformat()}
    assert drills.chain_step_conf(step, INCIDENT, loss) == {
        "target_type": "latest",
        "incident_id": INCIDENT["incident_id"],
        "incident_started_at": LOST_AT.isoformat(),
    }
    assert drills.chain_task_id(0, "dr_database_pitr") == "step_1_dr_database_pitr"
    run = {**INCIDENT, "cluster": "main", "tag": "t1"}
    actions = drills.quarterly_plan_of_actions(plan, run)
    assert actions[0].startswith("simulate_loss: stop main")
    assert actions[1].startswith("step_1_dr_database_pitr: run dr_database_pitr")
    assert actions[-1].startswith("safety_net")


def test_a_chain_steps_outcome_says_what_its_run_did():
    step = Step("dr_database_pitr", "database recovery")
    good = drills.judge_chain_step(
        step,
        {
            "state": "success",
            "run_id": "r1",
            "record": {"rto_achieved_seconds": 61.5, "data_loss_seconds": 2.25, "x": 1},
        },
        at(1),
        at(60),
    )
    assert good["status"] == "succeeded" and good["label"] == "database recovery"
    assert good["detail"] == (
        "database recovery: dr_database_pitr run r1 success; RTO achieved 61.5s; data lost 2.2s"
    )
    assert good["record"] == {
        "rto_achieved_seconds": 61.5,
        "data_loss_seconds": 2.25,
        "rpo_target_seconds": None,
        "outcome": None,
    }
    bad = drills.judge_chain_step(
        Step("dr_config_recovery"),
        {
            "state": "failed",
            "run_id": None,
            "task_states": {"restore": "failed", "guard": "success"},
            "error": "exit 1: boom",
        },
        at(60),
        at(70),
    )
    assert bad["status"] == "failed" and bad["record"] is None
    assert bad["detail"].endswith("failed; failed tasks ['restore']; exit 1: boom")
    late = drills.judge_chain_step(
        step, {"state": "success", "run_id": "r2", "task_states": {}}, at(1), at(91), 60
    )
    assert late["status"] == "failed"
    assert late["detail"].endswith("success; took 90s, over its step timeout of 60s")


def test_the_quarterly_record_reads_each_step_on_the_clock_since_the_loss(plan):
    run = {**INCIDENT, "cluster": "main"}
    loss = {
        "lost_at": LOST_AT.isoformat(),
        "event": {"status": "succeeded", "detail": "cluster main lost"},
    }
    pitr = {
        "status": "succeeded",
        "detail": "pitr ok",
        "started_at": at(1),
        "finished_at": at(90),
        "record": {"data_loss_seconds": 1.5, "rpo_target_seconds": 900},
    }
    config = {
        "status": "failed",
        "detail": "config failed",
        "started_at": at(90),
        "finished_at": at(100),
    }
    chain = [
        ("step_1_dr_database_pitr", "database recovery", pitr),
        ("step_2_dr_config_recovery", "configuration recovery", config),
        ("step_3_dr_post_recovery_validation", "validation", None),
    ]
    fields = drills.quarterly_record_fields(plan, run, loss, chain, "nothing to put back")
    assert fields["clock_started_at"] == LOST_AT.isoformat()
    assert fields["rto_target_seconds"] == 1800  # main holds tracktion (critical)
    assert fields["data_loss_seconds"] == 1.5 and fields["rpo_target_seconds"] == 900
    steps = fields["details"]["steps"]
    assert [s["name"] for s in steps] == [
        "simulate_loss",
        "step_1_dr_database_pitr (database recovery)",
        "step_2_dr_config_recovery (configuration recovery)",
        "step_3_dr_post_recovery_validation",
    ]
    assert [s["status"] for s in steps] == ["succeeded", "succeeded", "failed", "not run"]
    assert steps[1]["seconds"] == 90 and steps[1]["took_seconds"] == 89
    assert steps[2]["seconds"] == 100 and steps[2]["target_seconds"] == 1800
    assert fields["details"]["notes"][-1] == "safety net: nothing to put back"


def test_a_dry_run_quarterly_record_keeps_the_incidents_clock(plan):
    run = {**INCIDENT, "cluster": "main", "dry_run": True}
    skipped = {"status": "skipped", "detail": "dry run", "started_at": at(0), "finished_at": at(0)}
    loss = {"event": skipped}
    fields = drills.quarterly_record_fields(plan, run, loss, [("step_1_x", "x", skipped)], None)
    assert fields["clock_started_at"] == INCIDENT["started_at"]
    assert [s["status"] for s in fields["details"]["steps"]] == ["skipped", "skipped"]
    assert fields["data_loss_seconds"] is None


def test_nothing_lost_means_nothing_to_put_back(plan):
    assert drills.safety_net(plan, INCIDENT, None) == "nothing was lost: nothing to put back"
    assert drills.safety_net(plan, INCIDENT, {"lost_at": at(0)}) == (
        "nothing was lost: nothing to put back"
    )
