"""dr_third_party_failover's decisions (scenarios.third_party) and the plan's external
dependency model, on real files in a temporary directory (the sandbox plan's paths follow
DR_SANDBOX_HOME) with the provider probes given as answers: where the dependents go, what
is refused before anything is touched, what a re-run still has to do, and the setting
writes themselves."""

from __future__ import annotations

import copy
import json
import stat
from pathlib import Path

import pytest
import yaml

from tracktion_dr.core.errors import InvalidInput
from tracktion_dr.core.plan import PlanError, ServiceSetting, load_plan, parse_plan
from tracktion_dr.files.service_settings import read_setting, write_setting
from tracktion_dr.scenarios import third_party
from tracktion_dr.scenarios.third_party import PRIMARY, Probe, ProviderRefused

ROOT = Path(__file__).resolve().parents[2]
SANDBOX_PLAN = ROOT / "include" / "config" / "sandbox.yaml"
PRODUCTION_PLAN = ROOT / "include" / "config" / "tracktion.yaml"
PRIMARY_URL = "http://127.0.0.1:18611"
BACKUP_URL = "http://127.0.0.1:18612"
KEY = "TRACKTION_DELIVERY_GATEWAY_URL"
INCIDENT = {
    "incident_id": "DR-20261126-031200",
    "started_at": "2026-11-26T03:12:00+00:00",
    "environment": "drill",
    "dry_run": False,
    "notify": False,
}
UP, DOWN = Probe(True, "HTTP 200"), Probe(False, "connection refused")


@pytest.fixture()
def plan(tmp_path, monkeypatch):
    monkeypatch.setenv("DR_SANDBOX_HOME", str(tmp_path))
    return load_plan(SANDBOX_PLAN)


@pytest.fixture()
def gateway(plan):
    return plan.environment("drill").external_dependencies["delivery-gateway"]


def prober(primary: Probe, backup: Probe):
    answers = {f"{PRIMARY_URL}/health": primary, f"{BACKUP_URL}/health": backup}

    def probe(url: str, timeout: float) -> Probe:
        assert timeout > 0
        return answers[url]

    return probe


def params(direction: str = "auto", fallback: str = "") -> dict:
    return {"dependency": "delivery-gateway", "direction": direction, "fallback": fallback}


# --- the plan --------------------------------------------------------------------------------


def test_both_plans_declare_the_delivery_gateway_with_a_backup_provider():
    for path in (SANDBOX_PLAN, PRODUCTION_PLAN):
        dependency = (
            load_plan(path).environment("production").external_dependencies["delivery-gateway"]
        )
        assert list(dependency.dependents) == ["notification-service"]
        assert [(f.name, f.kind) for f in dependency.fallbacks] == [
            ("backup-gateway", "backup_provider")
        ]
        assert third_party.switchable_dependencies(load_plan(path)) == ["delivery-gateway"]


def _sandbox_data() -> dict:
    return yaml.safe_load(SANDBOX_PLAN.read_text())


def _problems(data: dict) -> str:
    with pytest.raises(PlanError) as caught:
        parse_plan(data, "plan.yaml")
    return str(caught.value)


def test_an_unknown_dependent_service_is_named_with_its_path(tmp_path, monkeypatch):
    monkeypatch.setenv("DR_SANDBOX_HOME", str(tmp_path))
    data = _sandbox_data()
    drill = copy.deepcopy(data["x-sandbox"])
    gateway = drill["external_dependencies"]["delivery-gateway"]
    gateway["dependents"]["mailer"] = gateway["dependents"]["notification-service"]
    data["environments"]["drill"] = {**drill, "destructive_requires_confirmation": False}
    message = _problems(data)
    assert (
        "environments.drill.external_dependencies.delivery-gateway.dependents.mailer: "
        "unknown service 'mailer'" in message
    )


def test_a_setting_the_safety_snapshot_would_not_cover_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("DR_SANDBOX_HOME", str(tmp_path))
    data = _sandbox_data()
    drill = copy.deepcopy(data["x-sandbox"])
    gateway = drill["external_dependencies"]["delivery-gateway"]
    gateway["dependents"]["notification-service"] = {"file": "/etc/elsewhere.env", "key": KEY}
    data["environments"]["drill"] = {**drill, "destructive_requires_confirmation": False}
    assert (
        "delivery-gateway.dependents.notification-service.file: /etc/elsewhere.env is neither"
        in _problems(data)
    )


def test_a_backup_provider_needs_its_health_check_and_fallbacks_need_an_endpoint(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("DR_SANDBOX_HOME", str(tmp_path))
    data = _sandbox_data()
    drill = copy.deepcopy(data["x-sandbox"])
    gateway = drill["external_dependencies"]["delivery-gateway"]
    del gateway["fallbacks"][0]["url"]
    del gateway["endpoint"]
    data["environments"]["drill"] = {**drill, "destructive_requires_confirmation": False}
    message = _problems(data)
    assert "a backup_provider fallback needs url" in message


# --- where to go -----------------------------------------------------------------------------


def test_auto_goes_to_the_first_fallback_that_answers_while_the_provider_is_down(gateway):
    target, why = third_party.choose_target(
        "delivery-gateway", gateway, "auto", DOWN, {"backup-gateway": UP}, {"n": PRIMARY}
    )
    assert target == "backup-gateway" and "answers" in why


def test_auto_goes_back_once_the_provider_answers(gateway):
    target, _ = third_party.choose_target(
        "delivery-gateway", gateway, "auto", UP, {"backup-gateway": UP}, {"n": "backup-gateway"}
    )
    assert target == PRIMARY


def test_a_fallback_that_is_itself_down_is_refused_with_a_hint(gateway):
    with pytest.raises(ProviderRefused) as caught:
        third_party.choose_target(
            "delivery-gateway", gateway, "fallback", DOWN, {"backup-gateway": DOWN}, {}
        )
    assert "every fallback of delivery-gateway is down" in str(caught.value)
    assert caught.value.hint
    with pytest.raises(ProviderRefused, match="'backup-gateway' .* is itself down"):
        third_party.choose_target(
            "delivery-gateway",
            gateway,
            "fallback",
            DOWN,
            {"backup-gateway": DOWN},
            {},
            requested="backup-gateway",
        )


def test_restore_is_refused_while_the_provider_is_down(gateway):
    with pytest.raises(ProviderRefused, match="still down") as caught:
        third_party.choose_target(
            "delivery-gateway", gateway, "restore", DOWN, {"backup-gateway": UP}, {}
        )
    assert "direction restore or auto" in caught.value.hint


def test_the_fallback_the_services_are_on_is_kept_while_it_answers(gateway):
    both = gateway.model_copy(
        update={
            "fallbacks": [
                gateway.fallbacks[0],
                gateway.fallbacks[0].model_copy(
                    update={
                        "name": "queue",
                        "kind": "queue_and_replay",
                        "url": None,
                        "value": "queue",
                    }
                ),
            ]
        }
    )
    probes = third_party.probe_fallbacks(both, prober(DOWN, DOWN))
    assert probes["queue"].up  # a mode of the service: nothing to probe
    target, _ = third_party.choose_target(
        "delivery-gateway", both, "fallback", DOWN, probes, {"n": "queue"}
    )
    assert target == "queue"  # the backup is down: the first fallback that answers


def test_only_settings_not_yet_on_the_target_are_switched(gateway):
    assert third_party.position_of(gateway, None) == PRIMARY  # the service's default
    assert third_party.position_of(gateway, BACKUP_URL) == "backup-gateway"
    assert third_party.position_of(gateway, "http://elsewhere") == "unknown"
    values = {"a": None, "b": BACKUP_URL, "c": PRIMARY_URL}
    assert third_party.missing_switches(gateway, values, "backup-gateway") == {
        "a": {"from": PRIMARY, "to": "backup-gateway"},
        "c": {"from": PRIMARY, "to": "backup-gateway"},
    }
    assert list(third_party.missing_switches(gateway, values, PRIMARY)) == ["b"]
    assert third_party.settings_at(gateway, values, PRIMARY) == (
        False,
        "setting not on primary: b: backup-gateway",
    )


# --- the guard -------------------------------------------------------------------------------


def test_the_guard_decides_the_switch_and_touches_nothing(plan, tmp_path):
    run = third_party.check_inputs(plan, INCIDENT, params(), prober=prober(DOWN, UP))
    assert run["target"] == "backup-gateway"
    assert run["services"] == ["notification-service"]
    assert run["switch"] == {"notification-service": {"from": PRIMARY, "to": "backup-gateway"}}
    assert run["resumed_safety"] is None and third_party.work_to_do(run)
    assert run["rto_seconds"] == plan.tiers["standard"].rto.total_seconds()
    assert not (tmp_path / "app" / "environment.env").exists()
    actions = "\n".join(third_party.plan_of_actions(run))
    assert "notification-service: primary -> backup-gateway" in actions


def test_the_guard_refuses_bad_inputs_before_probing(plan):
    def never(url, timeout):
        raise AssertionError("probed")

    with pytest.raises(InvalidInput, match="dependency"):
        third_party.check_inputs(
            plan, INCIDENT, {**params(), "dependency": "notification-sink"}, never
        )
    with pytest.raises(InvalidInput, match="no fallback 'nope'"):
        third_party.check_inputs(plan, INCIDENT, params("fallback", "nope"), never)
    with pytest.raises(InvalidInput, match="direction"):
        third_party.check_inputs(plan, INCIDENT, params("sideways"), never)


def test_nothing_to_do_when_already_on_the_target(plan, gateway):
    write_setting(gateway.dependents["notification-service"], BACKUP_URL)
    run = third_party.check_inputs(plan, INCIDENT, params("fallback"), prober(DOWN, UP))
    assert run["switch"] == {} and not third_party.work_to_do(run)
    assert third_party.take_safety(plan, run)["status"] == "skipped"
    assert third_party.switch_configuration(plan, run)["status"] == "skipped"


def test_a_rerun_of_the_same_switch_reuses_its_safety_snapshot_and_restarts(plan, gateway):
    environment = plan.environment("drill")
    Path(environment.config_paths[0]).mkdir(parents=True)
    (Path(environment.config_paths[0]) / "app.json").write_text("{}\n")
    run = third_party.check_inputs(plan, INCIDENT, params(), prober(DOWN, UP))
    first = third_party.take_safety(plan, run)
    switched = third_party.switch_configuration(plan, run)
    assert switched["switched"] == ["notification-service"]
    # killed here, before the restart: the re-run finds the settings switched ...
    again = third_party.check_inputs(plan, INCIDENT, params(), prober(DOWN, UP))
    assert again["switch"] == {} and again["resumed_safety"] == first["path"]
    assert third_party.work_to_do(again)  # ... and still restarts the dependents
    assert third_party.take_safety(plan, again)["path"] == first["path"]
    # the safety snapshot records the state before the switch: a rollback puts it back
    differences = third_party.config_restore.differences_from_safety(
        environment, Path(first["path"])
    )
    assert differences and "environment.env" in differences[0]


def test_the_probe_step_refuses_when_the_target_stopped_answering(plan):
    run = third_party.check_inputs(plan, INCIDENT, params(), prober(DOWN, UP))
    with pytest.raises(ProviderRefused, match="stopped answering"):
        third_party.probe_target(plan, run, prober(DOWN, DOWN))
    assert "answers" in third_party.probe_target(plan, run, prober(DOWN, UP))["detail"]


# --- the settings themselves -------------------------------------------------------------------


def test_an_env_setting_changes_only_its_line_and_keeps_the_mode(tmp_path):
    path = tmp_path / "service.env"
    path.write_text(
        "# header\nTRACKTION_SECRET=s3cr=t\nexport TRACKTION_DELIVERY_GATEWAY_URL=old\n"
    )
    path.chmod(0o640)
    setting = ServiceSetting(file=str(path), key=KEY)
    assert read_setting(setting) == "old"
    assert write_setting(setting, BACKUP_URL) is True
    assert write_setting(setting, BACKUP_URL) is False  # idempotent
    assert path.read_text() == f"# header\nTRACKTION_SECRET=s3cr=t\n{KEY}={BACKUP_URL}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_new_environment_file_is_private(tmp_path):
    setting = ServiceSetting(file=str(tmp_path / "new.env"), key=KEY)
    assert read_setting(setting) is None
    write_setting(setting, PRIMARY_URL)
    assert stat.S_IMODE((tmp_path / "new.env").stat().st_mode) == 0o600
    assert read_setting(setting) == PRIMARY_URL


def test_a_json_setting_sets_its_dotted_key(tmp_path):
    path = tmp_path / "app.json"
    path.write_text(json.dumps({"storage": {"root": "/data"}}))
    setting = ServiceSetting(file=str(path), format="json", key="delivery.gateway_url")
    write_setting(setting, BACKUP_URL)
    assert json.loads(path.read_text()) == {
        "storage": {"root": "/data"},
        "delivery": {"gateway_url": BACKUP_URL},
    }
    assert read_setting(setting) == BACKUP_URL


def test_record_fields_say_what_was_switched(plan):
    run = third_party.check_inputs(plan, INCIDENT, params(), prober(DOWN, UP))
    fields = third_party.record_fields(run, {"result": {"snapshot": "x"}})
    assert fields["details"] == {
        "dependency": "delivery-gateway",
        "direction": "auto",
        "target": "backup-gateway",
        "switched": ["notification-service"],
        "rolled_back": True,
    }


# --- the rollback and the incident response's route ---------------------------------------------


class RecordingController:
    def __init__(self):
        self.restarted: list[str] = []

    def restart(self, service: str) -> None:
        self.restarted.append(service)


def test_a_failed_switch_is_rolled_back_exactly_and_the_dependents_restarted(plan, gateway):
    from tracktion_dr.scenarios import SystemAccess

    environment = plan.environment("drill")
    Path(environment.config_paths[0]).mkdir(parents=True)
    (Path(environment.config_paths[0]) / "app.json").write_text("{}\n")
    setting = gateway.dependents["notification-service"]
    Path(setting.file).write_text("TRACKTION_OTHER=1\n")
    Path(setting.file).chmod(0o640)
    before = Path(setting.file).read_bytes()
    run = third_party.check_inputs(plan, INCIDENT, params(), prober(DOWN, UP))
    safety = third_party.take_safety(plan, run)
    third_party.switch_configuration(plan, run)
    assert read_setting(setting) == BACKUP_URL
    controller = RecordingController()
    access = SystemAccess(conninfo=None, controller=lambda spec: controller, url=None)

    undone = third_party.roll_back(plan, run, safety, access, wait=lambda env, s: "seen")

    assert Path(setting.file).read_bytes() == before
    assert stat.S_IMODE(Path(setting.file).stat().st_mode) == 0o640
    assert controller.restarted == ["notification-service"]
    assert undone["result"] and "rolled back to" in undone["detail"]
    # nothing differs any more: a second rollback does nothing
    again = third_party.roll_back(plan, run, safety, access)
    assert again["status"] == "skipped"
    assert third_party.roll_back(plan, run, None, access)["status"] == "skipped"


def test_the_incident_response_derives_the_dependency_from_the_affected_component(plan):
    from tracktion_dr.scenarios import recovery_routes as routes

    environment = plan.environment("drill")
    recovery = routes.recovery_of("dr_third_party_failover")
    assert not recovery.destructive and recovery.keys == {"dependency", "direction"}
    assert recovery.defaults(environment, ["external:delivery-gateway"], {}) == {
        "dependency": "delivery-gateway",
        "direction": "auto",
    }
    with pytest.raises(InvalidInput, match="no external dependency with fallbacks"):
        recovery.defaults(environment, ["external:notification-sink"], {})
    route = next(r for r in plan.alert_routes if r.name == "third-party-down")
    assert route.match == {"alertname": "TracktionThirdPartyDown"}
    assert "dr_third_party_failover" in plan.incident_response.scenarios
