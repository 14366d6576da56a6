"""dr_third_party_failover against the live sandbox: a real third party fails and comes back.

The sandbox runs a stand-in delivery gateway twice under supervisord (primary and backup,
tracktion_sandbox/provider.py); notification-service reads the gateway from
TRACKTION_DELIVERY_GATEWAY_URL (its environment, or the plan's environment file) at start,
and its plan functional check sends a message through it. Which gateway the service really
talks to is read from each gateway's request log.

When the primary gateway is stopped, Then notification-service's functional check fails;
When the DAG runs (auto), Then the service is switched to the backup gateway, its check
passes and the backup's request log shows the service's messages;
When the primary is back and the DAG runs (restore), Then the service talks to the primary
again; a third run finds nothing to do.
When both gateways are down, Then a switch to the fallback is refused and nothing is touched.
When the backup's health check answers but it refuses messages, Then the switch is made,
the gate breaches and the configuration is rolled back exactly, the run failed.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states
from tracktion_dr.core.plan import load_plan
from tracktion_dr.services import ServiceState
from tracktion_dr.services.checks import functional_check
from tracktion_sandbox import layout as L
from tracktion_sandbox import provider

pytestmark = pytest.mark.sandbox

DAG_ID = "dr_third_party_failover"
SERVICE = "notification-service"
PRIMARY, BACKUP = "delivery-gateway-primary", "delivery-gateway-backup"
CHECK_WAIT_SECONDS = 30


def conf(direction: str, **extra) -> dict:
    return {
        "environment": "drill",
        "dependency": "delivery-gateway",
        "direction": direction,
        **extra,
    }


def service_check():
    return load_plan().environment("drill").services[SERVICE].functional_check


def check_passes() -> tuple[bool, str]:
    return functional_check(service_check())


def wait_for_check(expected: bool) -> str:
    """The functional check's answer once it is ``expected`` (a restarted service takes a
    moment to listen); fails the test with what it saw otherwise."""
    deadline = time.monotonic() + CHECK_WAIT_SECONDS
    passed, detail = check_passes()
    while passed != expected and time.monotonic() < deadline:
        time.sleep(0.5)
        passed, detail = check_passes()
    assert passed == expected, detail
    return detail


def messages_from_service(sandbox, gateway: str) -> int:
    log = provider.request_log(sandbox.layout, gateway)
    if not log.exists():
        return 0
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return sum(1 for line in lines if line["client"] == SERVICE)


def pid_of(controller, program: str) -> str:
    return controller.status(program).detail.split(",")[0]


@pytest.fixture()
def gateways(sandbox, supervisor_controller):
    """Both gateways running and healthy; afterwards both are running again, no fail file
    is left, the environment file is exactly as before (or absent again) and the service
    restarted on it, so later tests see the sandbox as they expect."""
    env_file: Path = sandbox.layout.app_env_file
    before = env_file.read_bytes() if env_file.exists() else None
    mode = env_file.stat().st_mode & 0o7777 if before is not None else None
    for gateway in (PRIMARY, BACKUP):
        provider.fail_file(sandbox.layout, gateway).unlink(missing_ok=True)
        supervisor_controller.start(gateway)
    wait_for_check(True)
    config = sandbox.layout.app_config
    patterns = (f"{env_file.name}.before-*", f"{config.name}.before-*")
    asides = {p for pattern in patterns for p in env_file.parent.glob(pattern)}
    yield supervisor_controller
    # what the test's rollback moved aside (the switched file, the configuration folder)
    for aside in {p for pattern in patterns for p in env_file.parent.glob(pattern)} - asides:
        if aside.is_dir():
            shutil.rmtree(aside)
        else:
            aside.unlink()
    for gateway in (PRIMARY, BACKUP):
        provider.fail_file(sandbox.layout, gateway).unlink(missing_ok=True)
        supervisor_controller.start(gateway)
    if before is None:
        env_file.unlink(missing_ok=True)  # the test's own file: there was none
    elif env_file.read_bytes() != before:
        env_file.write_bytes(before)
        env_file.chmod(mode)
    supervisor_controller.restart(SERVICE)
    wait_for_check(True)


def test_an_outage_is_switched_to_the_backup_and_back(sandbox, gateways):
    controller = gateways
    primary_before = messages_from_service(sandbox, PRIMARY)
    check_passes()
    assert messages_from_service(sandbox, PRIMARY) > primary_before, "talks to the primary"

    # The third party goes down: the service's functional check fails.
    controller.stop(PRIMARY)
    assert controller.status(PRIMARY).state == ServiceState.STOPPED
    assert "delivery gateway http://127.0.0.1:18611" in wait_for_check(False)

    backup_before = messages_from_service(sandbox, BACKUP)
    dag_run = run_dag(DAG_ID, conf("auto"))
    states = task_states(dag_run)
    assert states["verdict"] == "success", states
    assert states["rollback"] == "skipped", states
    guard = task_result(dag_run, "guard")
    assert guard["target"] == "backup-gateway"
    assert task_result(dag_run, "switch_configuration")["switched"] == [SERVICE]
    assert f"{L.DELIVERY_GATEWAY_ENV}={L.provider_url(BACKUP)}" in (
        sandbox.layout.app_env_file.read_text()
    )
    # The service works again, and really through the backup provider.
    wait_for_check(True)
    assert messages_from_service(sandbox, BACKUP) > backup_before
    assert Path(task_result(dag_run, "safety_snapshot")["path"]).is_file()

    # Switching back is refused while the primary is still down: nothing touched.
    pid = pid_of(controller, SERVICE)
    refused = run_dag(DAG_ID, conf("restore"))
    assert task_states(refused)["guard"] == "failed"
    assert pid_of(controller, SERVICE) == pid

    # The provider returns: restore switches the service back to it.
    controller.start(PRIMARY)
    dag_run = run_dag(DAG_ID, conf("restore"))
    states = task_states(dag_run)
    assert states["verdict"] == "success", states
    assert task_result(dag_run, "guard")["target"] == "primary"
    assert f"{L.DELIVERY_GATEWAY_ENV}={L.provider_url(PRIMARY)}" in (
        sandbox.layout.app_env_file.read_text()
    )
    wait_for_check(True)
    primary_before, backup_before = (
        messages_from_service(sandbox, PRIMARY),
        messages_from_service(sandbox, BACKUP),
    )
    check_passes()
    assert messages_from_service(sandbox, PRIMARY) == primary_before + 1
    assert messages_from_service(sandbox, BACKUP) == backup_before

    # A re-run finds nothing missing: no switch, no restart.
    pid = pid_of(controller, SERVICE)
    again = run_dag(DAG_ID, conf("auto"))
    assert task_states(again)["verdict"] == "success"
    assert task_result(again, "switch_configuration")["event"]["status"] == "skipped"
    assert task_result(again, "restart_dependents")["event"]["status"] == "skipped"
    assert pid_of(controller, SERVICE) == pid


def test_a_switch_to_a_fallback_that_is_down_is_refused_before_anything_is_touched(
    sandbox, gateways
):
    controller = gateways
    env_file = sandbox.layout.app_env_file
    before = env_file.read_bytes() if env_file.exists() else None
    controller.stop(PRIMARY)
    provider.fail_file(sandbox.layout, BACKUP).touch()  # the backup answers 503
    wait_for_check(False)
    pid = pid_of(controller, SERVICE)
    safety = sandbox.layout.config_backups / "safety"
    snapshots_before = sorted(safety.glob("*")) if safety.exists() else []

    dag_run = run_dag(DAG_ID, conf("fallback", fallback="backup-gateway"))

    states = task_states(dag_run)
    assert states["guard"] == "failed", states
    assert states["switch_configuration"] != "success" and states["verdict"] != "success"
    assert (env_file.read_bytes() if env_file.exists() else None) == before
    assert pid_of(controller, SERVICE) == pid
    assert (sorted(safety.glob("*")) if safety.exists() else []) == snapshots_before


def test_a_switch_that_does_not_work_is_rolled_back_exactly(sandbox, gateways):
    controller = gateways
    env_file = sandbox.layout.app_env_file
    before = env_file.read_bytes() if env_file.exists() else None
    controller.stop(PRIMARY)
    # The backup's health check answers, but it accepts no message: the guard and the
    # probe let the switch happen, the functional check behind the gate cannot pass.
    provider.fail_file(sandbox.layout, BACKUP).write_text("messages\n")
    wait_for_check(False)
    # The RTO budget is spent (the incident started 5h ago, the tier's RTO is 4h): the gate
    # waits its minimum and breaches.
    started = (datetime.now(UTC) - timedelta(hours=5)).isoformat()

    dag_run = run_dag(DAG_ID, conf("auto", incident_started_at=started))

    states = task_states(dag_run)
    assert states["switch_configuration"] == "success", states
    assert states["gate_services"] == "failed" and states["rollback"] == "success", states
    assert states["verdict"] == "failed"
    assert (env_file.read_bytes() if env_file.exists() else None) == before
    assert task_result(dag_run, "record")["details"]["rolled_back"] is True
