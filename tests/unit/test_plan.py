"""The DR plan model: the shipped plans load; each kind of mistake is reported with the
file, the field path and the reason."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from tracktion_dr.core.plan import PlanError, format_duration, load_plan, parse_duration, parse_plan

ROOT = Path(__file__).resolve().parents[2]
SANDBOX_PLAN = ROOT / "include" / "config" / "sandbox.yaml"
PRODUCTION_PLAN = ROOT / "include" / "config" / "tracktion.yaml"


@pytest.fixture()
def sandbox_data() -> dict:
    return yaml.safe_load(SANDBOX_PLAN.read_text())


def problems_of(data: dict) -> str:
    with pytest.raises(PlanError) as caught:
        parse_plan(data, "plan.yaml")
    return str(caught.value)


def test_shipped_plans_load_with_the_seed_objectives():
    for path in (SANDBOX_PLAN, PRODUCTION_PLAN):
        plan = load_plan(path)
        assert set(plan.environments) == {"production", "drill"}
        assert plan.tiers["critical"].rto == timedelta(minutes=30)
        assert plan.tiers["critical"].rpo == timedelta(minutes=15)
        assert plan.tiers["important"].rto == timedelta(hours=2)
        assert plan.tiers["non_critical"].rpo == timedelta(hours=24)
        assert plan.data_categories["transactional"].rpo == timedelta(minutes=15)
        assert plan.data_categories["configuration"].rpo == timedelta(hours=24)
        assert [level.level for level in plan.escalation] == [1, 2, 3, 4]
        production = plan.environment("production")
        assert production.destructive_requires_confirmation is True
        assert set(production.services) == {
            "analysis-service",
            "file-watcher",
            "tracklist-service",
            "notification-service",
        }


def test_production_plan_holds_no_personal_data():
    text = PRODUCTION_PLAN.read_text()
    for leaked in ("@tracktion.com", "+1-555", "John Smith"):
        assert leaked not in text


def test_sandbox_paths_come_from_the_sandbox_home(monkeypatch):
    monkeypatch.setenv("DR_SANDBOX_HOME", "/srv/sbx")
    plan = load_plan(SANDBOX_PLAN)
    assert plan.environment("drill").clusters["main"].data_directory == "/srv/sbx/pg/primary"
    assert plan.environment("drill").backups.logical == "file:///srv/sbx/backups/database/logical"


def test_unknown_key_is_named(sandbox_data):
    sandbox_data["tiers"]["critical"]["rto_target"] = "30m"
    message = problems_of(sandbox_data)
    assert "plan.yaml: tiers.critical.rto_target: unknown key" in message


def test_rto_that_is_not_a_duration(sandbox_data):
    sandbox_data["tiers"]["important"]["rto"] = "two hours"
    message = problems_of(sandbox_data)
    assert "plan.yaml: tiers.important.rto: not a duration: 'two hours'" in message


def test_bare_number_is_not_a_duration(sandbox_data):
    sandbox_data["data_categories"]["logs"]["rpo"] = 4
    assert "data_categories.logs.rpo: not a duration: 4" in problems_of(sandbox_data)


def test_wrong_type(sandbox_data):
    sandbox_data["environments"]["drill"]["destructive_requires_confirmation"] = "perhaps"
    message = problems_of(sandbox_data)
    assert "environments.drill.destructive_requires_confirmation:" in message
    assert "boolean" in message


def test_dependency_on_unknown_service(sandbox_data):
    drill = copy.deepcopy(sandbox_data["environments"]["drill"])
    drill["services"]["file-watcher"]["depends_on"] = ["tracktion", "analysis-servce"]
    sandbox_data["environments"]["drill"] = drill
    message = problems_of(sandbox_data)
    assert (
        "plan.yaml: environments.drill.services.file-watcher.depends_on[1]: "
        "unknown service, database or storage area 'analysis-servce'"
    ) in message
    assert "production" not in message, "only the broken environment is reported"


def test_dependency_cycle(sandbox_data):
    drill = copy.deepcopy(sandbox_data["environments"]["drill"])
    drill["services"]["analysis-service"]["depends_on"] = ["file-watcher"]
    sandbox_data["environments"]["drill"] = drill
    assert "dependency cycle: analysis-service -> file-watcher -> analysis-service" in problems_of(
        sandbox_data
    )


def test_unknown_tier_and_controller(sandbox_data):
    drill = copy.deepcopy(sandbox_data["environments"]["drill"])
    drill["services"]["tracklist-service"]["tier"] = "gold"
    drill["services"]["tracklist-service"]["controller"] = "k8s"
    sandbox_data["environments"]["drill"] = drill
    message = problems_of(sandbox_data)
    assert "environments.drill.services.tracklist-service.tier: unknown tier 'gold'" in message
    assert (
        "environments.drill.services.tracklist-service.controller: unknown controller 'k8s'"
        in message
    )


def test_escalation_needs_the_four_levels(sandbox_data):
    sandbox_data["escalation"] = sandbox_data["escalation"][:3]
    assert "escalation: escalation must list levels 1, 2, 3 and 4" in problems_of(sandbox_data)


def test_unset_environment_variable(sandbox_data, monkeypatch):
    monkeypatch.delenv("DR_SANDBOX_HOME", raising=False)
    message = problems_of(sandbox_data)
    assert (
        "environments.production.clusters.main.data_directory: environment variable DR_SANDBOX_HOME is not set"
        in message
    )


def test_bad_backup_location(sandbox_data):
    drill = copy.deepcopy(sandbox_data["environments"]["drill"])
    drill["backups"]["logical"] = "/backups/no-scheme"
    sandbox_data["environments"]["drill"] = drill
    assert "environments.drill.backups.logical: not a backup location" in problems_of(sandbox_data)


def test_yaml_syntax_error_names_the_line(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ntiers: {critical: [\n")
    with pytest.raises(PlanError) as caught:
        load_plan(broken)
    assert str(broken) in str(caught.value) and "line" in str(caught.value)


def test_every_problem_is_reported_at_once(sandbox_data):
    sandbox_data["tiers"]["critical"]["rto"] = "soon"
    sandbox_data["tiers"]["standard"]["rpo_x"] = "1h"
    message = problems_of(sandbox_data)
    assert "tiers.critical.rto" in message and "tiers.standard.rpo_x" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", timedelta(minutes=30)),
        ("2h", timedelta(hours=2)),
        ("1h30m", timedelta(minutes=90)),
        ("90s", timedelta(seconds=90)),
        ("1d", timedelta(days=1)),
        ("1w", timedelta(weeks=1)),
    ],
)
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "30", "m", "30 minutes", "1h 2x", "-5m", "0s"])
def test_not_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration():
    assert format_duration(timedelta(minutes=90, seconds=5)) == "1h 30m 5s"
    assert format_duration(timedelta(seconds=0)) == "0s"
    assert format_duration(timedelta(seconds=-42)) == "-42s"


def test_airflow_shows_the_plan_error_as_an_import_error(tmp_path):
    """What an operator sees after a typo: `airflow dags list-import-errors` names the
    plan file, the field and the reason."""
    data = yaml.safe_load(SANDBOX_PLAN.read_text())
    data["tiers"]["critical"]["rto"] = "30 minuts"
    bad_plan = tmp_path / "typo.yaml"
    bad_plan.write_text(yaml.safe_dump(data))
    env = {**os.environ, "DR_PLAN": str(bad_plan)}
    airflow = Path(sys.executable).with_name("airflow")
    result = subprocess.run(
        [str(airflow), "dags", "list-import-errors", "--local", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    # Airflow may print warnings before the JSON document; it is the line starting with "[".
    json_lines = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert json_lines, result.stdout[-2000:] + result.stderr[-2000:]
    errors = json.loads(json_lines[-1])
    assert errors, result.stderr[-2000:]
    text = json.dumps(errors)
    assert str(bad_plan) in text
    assert "tiers.critical.rto: not a duration: '30 minuts'" in text


def test_incident_response_roles_and_channels_must_exist(sandbox_data):
    data = copy.deepcopy(sandbox_data)
    data["incident_response"]["activation_roles"].append("janitor")
    data["incident_response"]["channels"] = ["slack", "pigeon"]
    text = problems_of(data)
    assert "incident_response.activation_roles[5]: unknown contact role 'janitor'" in text
    assert "incident_response.channels[1]: unknown channel 'pigeon'" in text


def test_scenarios_are_dr_dag_ids(sandbox_data):
    data = copy.deepcopy(sandbox_data)
    data["incident_response"]["scenarios"] = ["dr_initial_assessment", "Restore DB!"]
    assert "incident_response.scenarios[1]: not a DR DAG id: 'Restore DB!'" in problems_of(data)


def test_alert_routes_start_known_dags_and_scenarios(sandbox_data):
    data = copy.deepcopy(sandbox_data)
    data["alert_routes"][0]["dag_id"] = "dr_not_a_scenario"
    data["alert_routes"][1]["conf"]["scenario"] = "dr_unknown"
    text = problems_of(data)
    assert "alert_routes[0].dag_id: 'dr_not_a_scenario' is neither dr_incident_response" in text
    assert "alert_routes[1].conf.scenario: unknown scenario 'dr_unknown'" in text
    data = copy.deepcopy(sandbox_data)
    data["alert_routes"][2]["sources"] = ["nagios"]
    assert "alert_routes[2].sources[0]: Input should be 'alertmanager'" in problems_of(data)


def test_escalation_thresholds_must_not_decrease(sandbox_data):
    data = copy.deepcopy(sandbox_data)
    data["escalation"][3]["escalate_after"] = "5m"
    assert "escalation: escalation thresholds must not decrease" in problems_of(data)


def test_service_layer_must_be_known(sandbox_data):
    sandbox_data["environments"]["drill"]["services"]["notification-service"]["layer"] = "db"
    assert "services.notification-service.layer" in problems_of(sandbox_data)


def test_config_file_modes_must_be_octal(sandbox_data):
    sandbox_data["environments"]["drill"]["config_file_modes"] = {"*.json": "rw-r--r--"}
    assert "config_file_modes.*.json: not an octal file mode" in problems_of(sandbox_data)


def test_config_owner_is_user_and_group(sandbox_data):
    sandbox_data["environments"]["drill"]["config_owner"] = "tracktion"
    assert "config_owner: not an owner: 'tracktion' (write user:group)" in problems_of(sandbox_data)


def test_config_env_prefix_is_a_variable_prefix(sandbox_data):
    sandbox_data["environments"]["drill"]["config_env_prefixes"] = ["PATH; rm"]
    assert "config_env_prefixes[0]: not an environment variable prefix" in problems_of(sandbox_data)


def test_storage_audio_flag_is_boolean(sandbox_data):
    sandbox_data["environments"]["drill"]["storage"]["logs"]["audio"] = "maybe"
    assert "storage.logs.audio" in problems_of(sandbox_data)


def test_infrastructure_thresholds_are_percentages(sandbox_data):
    sandbox_data["environments"]["drill"]["infrastructure"] = {"min_free_disk_percent": 150}
    assert "infrastructure.min_free_disk_percent" in problems_of(sandbox_data)


# --- how a cluster is started and stopped (control) ------------------------------------------


def drill_cluster(data: dict) -> dict:
    """The drill environment's cluster, its own copy (the YAML anchors share objects)."""
    drill = copy.deepcopy(data["environments"]["drill"])
    data["environments"]["drill"] = drill
    return drill["clusters"]["main"]


def test_the_production_plan_runs_its_clusters_the_debian_way():
    production = load_plan(PRODUCTION_PLAN).environment("production").clusters["main"]
    assert (production.control.kind, production.control.version, production.control.name) == (
        "pg_ctlcluster",
        15,
        "main",
    )
    assert production.control.config_directory_for(production.data_directory) == (
        "/etc/postgresql/15/main"
    )
    assert production.replica_control is not None
    assert production.replica_control.kind == "pg_ctlcluster"
    drill = load_plan(PRODUCTION_PLAN).environment("drill").clusters["main"]
    assert drill.control.debian_cluster() == (15, "drill")
    # the sandbox keeps pg_ctl, the default
    sandbox = load_plan(SANDBOX_PLAN).environment("drill").clusters["main"]
    assert sandbox.control.kind == "pg_ctl" and sandbox.replica_control is None


def test_a_systemd_unit_of_a_debian_cluster_is_configured_in_etc(sandbox_data):
    drill_cluster(sandbox_data)["control"] = {"kind": "systemd", "unit": "postgresql@15-main"}
    plan = parse_plan(sandbox_data, "plan.yaml")
    control = plan.environment("drill").clusters["main"].control
    assert control.config_directory_for("/x") == "/etc/postgresql/15/main"
    other = control.model_copy(update={"unit": "postgresql-15.service"})
    assert other.config_directory_for("/var/lib/pgsql/15/data") == "/var/lib/pgsql/15/data"


@pytest.mark.parametrize(
    ("control", "expected"),
    [
        (
            {"kind": "pg_ctlcluster", "version": 15},
            "environments.drill.clusters.main.control: kind pg_ctlcluster needs name "
            "(pg_ctlcluster <version> <name>, e.g. version: 15, name: main)",
        ),
        (
            {"kind": "systemd"},
            "environments.drill.clusters.main.control: kind systemd needs unit "
            "(e.g. unit: postgresql@15-main)",
        ),
        (
            {"kind": "pg_ctl", "version": 15, "name": "main"},
            "environments.drill.clusters.main.control: name and version: not used by kind pg_ctl",
        ),
        (
            {"kind": "pg_ctlcluster", "version": 15, "name": "main", "config_directory": "/etc/pg"},
            "environments.drill.clusters.main.control: config_directory: pg_ctlcluster 15 main "
            "reads its configuration from /etc/postgresql/15/main, not /etc/pg",
        ),
        (
            {"kind": "pg_ctlcluster", "version": 14, "name": "main"},
            "environments.drill.clusters.main: control.version: the cluster is PostgreSQL 14 "
            "but bin_dir /usr/lib/postgresql/15/bin holds PostgreSQL 15's programs",
        ),
        (
            {"kind": "pg_ctl", "config_directory": "/etc/postgresql/15/main"},
            "environments.drill.clusters.main: control.config_directory: pg_ctl starts the "
            "server with the postgresql.conf of its data directory",
        ),
        (
            {"kind": "pg_ctlcluster", "version": 15, "name": "../main"},
            "environments.drill.clusters.main.control: name: not a Debian cluster name: '../main'",
        ),
        (
            {"kind": "upstart"},
            "environments.drill.clusters.main.control.kind: Input should be 'pg_ctl', "
            "'pg_ctlcluster' or 'systemd'",
        ),
    ],
)
def test_a_control_that_cannot_work_is_refused_naming_the_field(sandbox_data, control, expected):
    drill_cluster(sandbox_data)["control"] = control
    message = problems_of(sandbox_data)
    assert f"plan.yaml: {expected}" in message
    assert "environments.production" not in message, "only the broken environment"


def test_a_replica_control_needs_a_replica(sandbox_data):
    cluster = drill_cluster(sandbox_data)
    del cluster["replica_data_directory"]
    cluster["replica_control"] = {"kind": "pg_ctlcluster", "version": 15, "name": "main"}
    assert (
        "environments.drill.clusters.main: replica_control: there is no "
        "replica_data_directory to control"
    ) in problems_of(sandbox_data)
