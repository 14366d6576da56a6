"""Plan additions for the drills, validation and reports (issue 7): both shipped plans
load them; each mistake names the field."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from tracktion_dr.core.plan import PlanError, load_plan, parse_plan

ROOT = Path(__file__).resolve().parents[2]
SANDBOX_PLAN = ROOT / "include" / "config" / "sandbox.yaml"
PRODUCTION_PLAN = ROOT / "include" / "config" / "tracktion.yaml"


@pytest.fixture()
def data() -> dict:
    return yaml.safe_load(SANDBOX_PLAN.read_text())


def problems_of(data: dict) -> str:
    with pytest.raises(PlanError) as caught:
        parse_plan(data, "plan.yaml")
    return str(caught.value)


def test_both_plans_carry_drills_validation_and_reports():
    for path in (SANDBOX_PLAN, PRODUCTION_PLAN):
        plan = load_plan(path)
        assert plan.drills and plan.reports
        assert [s.dag_id for s in plan.drills.quarterly.steps] == [
            "dr_database_pitr",
            "dr_infrastructure_recovery",
            "dr_application_recovery",
            "dr_config_recovery",
            "dr_post_recovery_validation",
        ]
        assert plan.drills.quarterly.steps[0].conf["target_type"] == "latest"
        assert plan.drills.monthly.environment == "drill"
        validation = plan.environment("drill").validation
        assert validation.max_health_latency == timedelta(seconds=1)
        assert validation.allowed_ports
    sandbox = load_plan(SANDBOX_PLAN)
    assert sandbox.environment("drill").validation.monitoring == {}
    production = load_plan(PRODUCTION_PLAN)
    assert set(production.environment("production").validation.monitoring) == {
        "prometheus",
        "grafana",
    }


def test_plans_without_the_new_sections_still_load(data):
    for key in ("drills", "reports"):
        data.pop(key)
    for env in data["environments"].values():
        env.pop("validation")
        env.pop("shares_production_targets")
    plan = parse_plan(data)
    assert plan.drills is None and plan.reports is None
    assert plan.environment("drill").validation.allowed_ports is None


def test_unknown_monthly_service_is_named(data):
    data["drills"]["monthly"]["services"].append("billing-service")
    assert "drills.monthly.services[4]: unknown service 'billing-service'" in problems_of(data)


def test_unknown_quarterly_cluster_is_named(data):
    data["drills"]["quarterly"]["cluster"] = "analytics"
    assert "drills.quarterly.cluster: unknown cluster 'analytics'" in problems_of(data)


def test_drills_never_target_production(data):
    data["drills"]["monthly"]["environment"] = "production"
    assert "drills.monthly.environment" in problems_of(data)


def test_a_step_must_name_a_dr_dag(data):
    data["drills"]["quarterly"]["steps"].append({"dag_id": "rm -rf /"})
    assert "drills.quarterly.steps[5].dag_id" in problems_of(data)


def test_scratch_prefix_cannot_be_empty(data):
    data["drills"]["monthly"]["scratch_prefix"] = ""
    assert "drills.monthly.scratch_prefix" in problems_of(data)


def test_report_channels_must_exist(data):
    data["reports"]["channels"] = ["email", "carrier-pigeon"]
    assert "reports.channels[1]: unknown channel 'carrier-pigeon'" in problems_of(data)


def test_validation_values_are_checked(data):
    drill = data["environments"]["drill"]
    drill["validation"] = {**drill["validation"], "allowed_ports": [0]}
    assert "environments.drill.validation.allowed_ports: not a TCP port: 0" in problems_of(data)
    drill["validation"] = {
        **drill["validation"],
        "allowed_ports": [22],
        "config_file_modes": {"*": "rw"},
    }
    assert "not an octal file mode: 'rw'" in problems_of(data)
    drill["validation"] = {**drill["validation"], "config_file_modes": {"*": "0640"}}
    drill["validation"] = {
        **drill["validation"],
        "allowed_ports": [22],
        "monitoring": {"prometheus": "prometheus:9090"},
    }
    assert "environments.drill.validation.monitoring.prometheus" in problems_of(data)
