"""Every step runs on the host it acts on: the plan's hosts, and the queues the step kit sets.

The plan names hosts (each with its worker's Celery queue) for clusters, controllers and
storage; ``@step(kind, host=role)`` routes a step to the queue of the host its role names.
Under the compose topology's plan (include/config/compose.yaml) ``dr_database_pitr`` touches
three hosts; under the sandbox's plan (no hosts) everything stays on the default queue.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tracktion_dr.core.errors import InvalidInput
from tracktion_dr.core.plan import PlanError, parse_plan

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_PLAN = ROOT / "include" / "config" / "compose.yaml"
SANDBOX_PLAN = ROOT / "include" / "config" / "sandbox.yaml"
PITR_DAG = ROOT / "dags" / "dr_database_pitr.py"

# The hosts of the compose topology (docker-compose.yaml, profile topology).
DB_PRIMARY, DB_REPLICA, APP = "host_db_primary", "host_db_replica", "host_app"

# Each task of dr_database_pitr and the queue it must get under the compose plan: data
# directory work on the DB primary's host, services on the application host, the re-seed
# on the replica's host; gates on service health, validation over the network and the
# record/notify tail on the default queue.
PITR_QUEUES = {
    "guard": DB_PRIMARY,  # reads the cluster's WAL, archive and base backups
    "stage_recovery": DB_PRIMARY,
    "stop_services": APP,
    "prepare_data_directory": DB_PRIMARY,
    "start_postgres": DB_PRIMARY,
    "gate_recovery_target_reached": DB_PRIMARY,  # the postmaster's pid file and log
    "validate_recovered": "default",
    "promote": DB_PRIMARY,
    "start_services": APP,
    "gate_services_healthy": "default",
    "gate_functional_checks": APP,  # uploads its sample file from the app host
    "measure_data_loss": DB_PRIMARY,  # the recovery log
    "reseed_replica": DB_REPLICA,
    "record": "default",
    "notify_outcome": "default",
    "publish": "default",
    "verdict": "default",
}


@pytest.fixture
def compose_data(monkeypatch) -> dict:
    monkeypatch.setenv("DR_SANDBOX_HOME", "/srv/tracktion")
    return yaml.safe_load(COMPOSE_PLAN.read_text())


def problems_of(data: dict) -> str:
    with pytest.raises(PlanError) as caught:
        parse_plan(data, "plan.yaml")
    return str(caught.value)


def with_a_local_controller(data: dict):
    """The compose plan with its services run by docker compose on the app host (a command
    there) instead of supervisord (answered over the network)."""

    def compose_controller(env):
        env["controllers"]["sandbox_supervisor"] = {
            "kind": "docker_compose",
            "host": "app",
            "compose_file": "/srv/tracktion/app/docker-compose.yaml",
            "project": "tracktion",
        }

    return parse_plan(both(data, compose_controller), COMPOSE_PLAN)


def both(data: dict, edit) -> dict:
    """Apply ``edit`` to the shared environment block (both environments use it)."""
    data = copy.deepcopy(data)
    for env in data["environments"].values():
        edit(env)
    return data


# --------------------------------------------------------------------------- the plan


def test_compose_plan_names_a_queue_per_role(compose_data):
    plan = parse_plan(compose_data, COMPOSE_PLAN)
    assert plan.queue_for("database_primary") == DB_PRIMARY
    assert plan.queue_for("database_replica") == DB_REPLICA
    assert plan.queue_for("application") == APP
    assert plan.queue_for("storage") == APP


def test_plans_without_hosts_route_nothing(monkeypatch):
    monkeypatch.setenv("DR_SANDBOX_HOME", "/tmp/sandbox")
    for name in ("sandbox", "tracktion"):
        plan = parse_plan(yaml.safe_load((SANDBOX_PLAN.parent / f"{name}.yaml").read_text()))
        assert {plan.queue_for(r) for r in ("database_primary", "application")} == {None}


def test_unknown_host_is_named_with_its_field(compose_data):
    data = both(compose_data, lambda env: env["clusters"]["main"].update(host="db-primray"))
    text = problems_of(data)
    assert "environments.production.clusters.main.host: unknown host 'db-primray'" in text
    assert "environments.drill.clusters.main.host" in text
    assert "db-primary" in text  # the known hosts are listed


def test_unknown_controller_and_storage_hosts_are_named(compose_data):
    def edit(env):
        env["controllers"]["sandbox_supervisor"]["host"] = "web"
        env["storage_host"] = "nas"

    text = problems_of(both(compose_data, edit))
    assert "environments.drill.controllers.sandbox_supervisor.host: unknown host 'web'" in text
    assert "environments.drill.storage_host: unknown host 'nas'" in text


def test_a_host_a_step_acts_on_needs_a_queue(compose_data):
    data = both(compose_data, lambda env: env["hosts"]["db-replica"].pop("queue", None))
    text = problems_of(data)
    assert "clusters.main.replica_host: host 'db-replica' has no queue" in text


def test_environments_sending_a_role_to_different_queues_are_refused(compose_data):
    data = copy.deepcopy(compose_data)
    data["environments"]["drill"] = copy.deepcopy(data["environments"]["drill"])
    data["environments"]["drill"]["hosts"] = copy.deepcopy(data["environments"]["drill"]["hosts"])
    data["environments"]["drill"]["hosts"]["db-primary"] = {"queue": "host_drill_db"}
    text = problems_of(data)
    assert "environments.drill.clusters.main.host: sends database_primary steps to queue" in text
    assert "a task has one queue" in text


def test_an_environment_without_hosts_beside_one_with_them_is_refused(compose_data):
    data = copy.deepcopy(compose_data)
    drill = copy.deepcopy(data["environments"]["drill"])
    drill["clusters"] = {"main": {**drill["clusters"]["main"]}}
    drill["clusters"]["main"].pop("host")
    data["environments"]["drill"] = drill
    text = problems_of(data)
    assert "environments.drill: names no host for its database_primary steps" in text


def test_bad_queue_and_host_names_are_refused(compose_data):
    def bad_queue(env):
        env["hosts"] = {**env["hosts"], "backup": {"queue": "has space"}}

    text = problems_of(both(compose_data, bad_queue))
    assert "hosts.backup.queue: not a Celery queue name: 'has space'" in text

    def bad_name(env):
        env["hosts"] = {**env["hosts"], "DB Primary": {"queue": "host_x"}}

    assert "environments.drill.hosts: not host names" in problems_of(both(compose_data, bad_name))


def test_the_step_kit_refuses_an_unknown_role():
    from tracktion_dr.airflow import steps

    with pytest.raises(InvalidInput) as caught:
        steps.host_queue("database")
    assert "host" in str(caught.value) and "database_primary" in str(caught.value)


# --------------------------------------------------------------------------- the DAG


def pitr_dag(monkeypatch, plan: Path, home: str):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("DR_PLAN", str(plan))
    monkeypatch.setenv("DR_SANDBOX_HOME", home)
    bag = DagBag(dag_folder=str(PITR_DAG))
    assert bag.import_errors == {}
    return bag.dags["dr_database_pitr"]


def test_pitr_tasks_run_on_the_hosts_they_act_on(monkeypatch):
    dag = pitr_dag(monkeypatch, COMPOSE_PLAN, "/srv/tracktion")
    queues = {task.task_id: task.queue for task in dag.tasks}
    assert queues == PITR_QUEUES
    # three hosts plus the default worker in one run
    assert {DB_PRIMARY, DB_REPLICA, APP, "default"} == set(queues.values())


def test_queues_survive_serialization(monkeypatch):
    """What the scheduler reads (the serialized DAG) routes the same."""
    from airflow.serialization.serialized_objects import DagSerialization

    dag = pitr_dag(monkeypatch, COMPOSE_PLAN, "/srv/tracktion")
    restored = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    assert {t.task_id: t.queue for t in restored.tasks} == PITR_QUEUES


def test_without_hosts_every_pitr_task_stays_on_the_default_queue(monkeypatch, tmp_path):
    dag = pitr_dag(monkeypatch, SANDBOX_PLAN, str(tmp_path))
    assert {task.queue for task in dag.tasks} == {"default"}


def test_a_database_failover_fences_on_the_old_primarys_host_and_switches_over_the_network(
    monkeypatch,
):
    """dr_failover's fence writes into the old primary's data directory: its host's queue.
    Everything else (preconditions, promote with pg_promote, the balancer, the gate) talks
    over the network and stays on the default queue - a host that is gone cannot hold up
    more than its own fence."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("DR_PLAN", str(COMPOSE_PLAN))
    monkeypatch.setenv("DR_SANDBOX_HOME", "/srv/tracktion")
    bag = DagBag(dag_folder=str(ROOT / "dags" / "dr_failover.py"))
    assert bag.import_errors == {}
    queues = {task.task_id: task.queue for task in bag.dags["dr_failover"].tasks}
    assert queues.pop("fence_old_primary") == DB_PRIMARY
    assert set(queues.values()) == {"default"}, queues


# --------------------------------------------------------------------------- the quarterly drill
# dr_test_quarterly and the step DAGs of its chain (compose.yaml's drills.quarterly.steps)
# after dr_database_pitr: each task on the host whose files or processes it touches. The
# default worker (airflow-worker) mounts none of the hosts' volumes: no data directory, no
# backups, no application files.

QUARTERLY_QUEUES = {
    "dr_test_quarterly": {
        "guard": DB_PRIMARY,  # the cluster's recoverable window, from the local backups
        "simulate_loss": DB_PRIMARY,  # pg_ctl stop, the data directory moved aside
        "step_1_dr_database_pitr": "default",  # triggers the child run, waits deferred
        "step_2_dr_infrastructure_recovery": "default",
        "step_3_dr_application_recovery": "default",
        "step_4_dr_config_recovery": "default",
        "step_5_dr_post_recovery_validation": "default",
        "safety_net": DB_PRIMARY,  # the lost data directory put back, pg_ctl start
        "record": "default",
        "notify_outcome": "default",
        "publish": "default",
        "verdict": "default",
    },
    "dr_infrastructure_recovery": {
        "guard": "default",  # params and the plan only
        "inspect": APP,  # storage areas writable, free disk, memory: the storage host's
        "repair": APP,  # recreates a missing storage directory there
        "gate_repaired": APP,  # the same local checks again
        "report": APP,
        "record": "default",
        "notify_outcome": "default",
        "publish": "default",
        "verdict": "default",
    },
    "dr_application_recovery": {
        "guard": "default",
        "probe": APP,  # analysis-service's functional check uploads a local sample file
        "recover_analysis_service": APP,  # probes it again before acting
        "gate_analysis_service": APP,
        # health URLs, the functional check's request, supervisord's XML-RPC: network only
        "recover_file_watcher": "default",
        "gate_file_watcher": "default",
        "recover_tracklist_service": "default",
        "gate_tracklist_service": "default",
        "recover_notification_service": "default",
        "gate_notification_service": "default",
        "report": APP,
        "record": "default",
        "notify_outcome": "default",
        "publish": "default",
        "verdict": "default",
    },
    "dr_config_recovery": {
        "guard": APP,  # picks the snapshot from the local backups.configuration
        "safety_snapshot": APP,  # archives the live configuration files
        "restore": APP,  # swaps the configuration folders
        "validate_live": APP,
        "restart_services": "default",  # supervisord's XML-RPC
        "gate_services": APP,  # every service's probe, the sample file included
        "rollback": APP,
        "record": "default",
        "notify_outcome": "default",
        "publish": "default",
        "verdict": "default",
    },
    "dr_post_recovery_validation": {
        "guard": "default",
        "system_health": DB_PRIMARY,  # free disk of the data directory
        "data_integrity": "default",  # SQL and pg_amcheck over a connection
        "application_functionality": APP,  # the sample file
        "security_posture": APP,  # the services' listening ports and config file modes
        "performance_baseline": "default",
        "monitoring_systems": "default",
        "backup_systems": DB_PRIMARY,  # dumps and WAL archive read locally, verified
        "record": "default",
        "publish": "default",
        "verdict": "default",
    },
}


def dag_of(monkeypatch, dag_id: str, plan: Path, home: str):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("DR_PLAN", str(plan))
    monkeypatch.setenv("DR_SANDBOX_HOME", home)
    bag = DagBag(dag_folder=str(ROOT / "dags" / f"{dag_id}.py"))
    assert bag.import_errors == {}
    return bag.dags[dag_id]


def test_the_quarterly_chain_is_the_one_routed_here(compose_data):
    """The DAGs checked below are the compose plan's chain (PITR is checked above)."""
    chain = [s["dag_id"] for s in compose_data["drills"]["quarterly"]["steps"]]
    assert chain == ["dr_database_pitr", *list(QUARTERLY_QUEUES)[1:]]


@pytest.mark.parametrize("dag_id", list(QUARTERLY_QUEUES))
def test_quarterly_drill_tasks_run_on_the_hosts_they_act_on(monkeypatch, dag_id):
    dag = dag_of(monkeypatch, dag_id, COMPOSE_PLAN, "/srv/tracktion")
    assert {task.task_id: task.queue for task in dag.tasks} == QUARTERLY_QUEUES[dag_id]


@pytest.mark.parametrize("dag_id", list(QUARTERLY_QUEUES))
def test_quarterly_drill_queues_survive_serialization(monkeypatch, dag_id):
    from airflow.serialization.serialized_objects import DagSerialization

    dag = dag_of(monkeypatch, dag_id, COMPOSE_PLAN, "/srv/tracktion")
    restored = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    assert {t.task_id: t.queue for t in restored.tasks} == QUARTERLY_QUEUES[dag_id]


def test_an_application_service_is_host_bound_for_a_sample_file_or_a_local_controller(
    compose_data,
):
    """The rule behind dr_application_recovery's queues: a probe uploading a sample file or
    a controller that is a command on the host (docker compose, systemd) binds a service's
    step and gate to the application host; health URLs and supervisord do not."""
    from tracktion_dr.scenarios import application

    plan = parse_plan(compose_data, COMPOSE_PLAN)
    assert application.service_host(plan, "analysis-service") == "application"
    assert application.service_host(plan, "tracklist-service") is None
    assert application.probes_host(plan) == "application"

    local = with_a_local_controller(compose_data)
    assert application.service_host(local, "tracklist-service") == "application"


# --------------------------------------------------------------------------- backups, restore

# The backup jobs run where the backups are (the plan's backup_host: the compose plan's is
# the DB primary's host, whose archive_command writes the WAL archive onto the backups
# volume), the configuration snapshot where the files are, the storage jobs on the storage
# host; dr_database_restore reads its dump there and stops/starts services on the app host.
BACKUP_RESTORE_MONTHLY_QUEUES = {
    "dr_backup_base": {"base_backup": DB_PRIMARY},
    "dr_backup_logical_dump": {"dump_and_check": DB_PRIMARY},
    "dr_backup_verify": {
        "check_backups": DB_PRIMARY,
        "check_wal_continuity": DB_PRIMARY,
        "test_restore": DB_PRIMARY,
        "record": "default",
        "verdict": "default",
    },
    "dr_backup_wal_watch": {"check_wal_archive": DB_PRIMARY},
    "dr_rpo_watch": {"check_rpo": DB_PRIMARY},  # every restorable point is a backup
    "dr_backup_retention": {"apply_retention": DB_PRIMARY},
    "dr_backup_offsite": {"copy_offsite": DB_PRIMARY},
    "dr_backup_config_snapshot": {"snapshot_configuration": APP},
    "dr_backup_storage_sync": {"sync_storage": APP},
    "dr_backup_storage_incremental": {"snapshot_storage": APP},
    "dr_backup_storage_full": {"snapshot_storage": APP},
    "dr_database_restore": {
        "guard": DB_PRIMARY,  # reads the dumps
        "stop_services": APP,
        "restore_beside": DB_PRIMARY,  # pg_restore reads the dump file
        "validate_restored": DB_PRIMARY,  # against the dump's manifest
        "swap": "default",
        "start_services": APP,
        "gate_database_accepts": "default",
        "gate_services_healthy": "default",
        "gate_functional_checks": APP,  # its sample file is on the app host
        "measure_data_loss": "default",
        "record": "default",
        "notify_outcome": "default",
        "publish": "default",
        "verdict": "default",
    },
    # the monthly drill: each test where what it acts on is
    "dr_test_monthly": {
        "guard": "default",
        "test_databases": DB_PRIMARY,  # restores the newest dumps
        "test_services": APP,
        "test_storage": APP,  # the storage host
        "teardown": APP,  # empties the scratch directory on the storage host
        "measure_rpo": DB_PRIMARY,  # reads the WAL archive and base backups
        "record": "default",
        "notify_outcome": "default",
        "publish": "default",
        "verdict": "default",
    },
    "dr_replica_reseed": {
        "guard": "default",
        "primary_accepts": "default",
        "reseed_replica": DB_REPLICA,
        "record": "default",
        "notify_outcome": "default",
        "publish": "default",
        "verdict": "default",
    },
}


@pytest.mark.parametrize("dag_id", list(BACKUP_RESTORE_MONTHLY_QUEUES))
def test_backup_restore_and_monthly_tasks_run_where_what_they_act_on_is(monkeypatch, dag_id):
    dag = dag_of(monkeypatch, dag_id, COMPOSE_PLAN, "/srv/tracktion")
    assert {t.task_id: t.queue for t in dag.tasks} == BACKUP_RESTORE_MONTHLY_QUEUES[dag_id]


# --------------------------------------------------------------------------- the other scenarios
# Storage work on the storage host; the services' configuration, environment file and
# safety snapshots on the application host (config.FILES_HOST); supervisord restarts and
# health URLs over the network; a cluster started on its host; the standby rebuild on the
# host of the node the roles say is not the primary (one step per node, a branch picks).
TAIL = {
    "record": "default",
    "notify_outcome": "default",
    "publish": "default",
    "verdict": "default",
}
SCENARIO_QUEUES = {
    "dr_storage_recovery": {
        "guard": APP,  # picks the storage snapshots from the local backups.storage
        "inspect_before": APP,
        "restore_from_backup": APP,
        "gate_integrity": APP,
        "report": APP,
        **TAIL,
    },
    "dr_storage_failover": {
        "guard": APP,  # reads the path setting from the configuration
        "safety_snapshot": APP,
        "bring_up_to_date": APP,  # the storage host (the app host in the compose plan)
        "repoint": APP,
        "restart_services": "default",  # supervisord's XML-RPC
        "gate_services": APP,  # functional checks read their samples there
        "rollback": APP,
        **TAIL,
    },
    "dr_third_party_failover": {
        "guard": APP,
        "probe": "default",  # the provider's URL
        "safety_snapshot": APP,
        "switch_configuration": APP,
        "restart_dependents": "default",
        "gate_services": APP,
        "rollback": APP,
        **TAIL,
    },
    "dr_service_dependencies_recovery": {
        "guard": APP,
        "recover_database": DB_PRIMARY,  # starts the cluster the way its host runs it
        "gate_database": "default",  # a query over the network
        "recover_cache": "default",
        "gate_cache": "default",
        "recover_queue": "default",
        "gate_queue": "default",
        "recover_storage": APP,  # recreates a missing directory on the storage host
        "gate_storage": APP,
        "recover_application": APP,  # probes with sample files before restarting
        "gate_application": APP,
        **TAIL,
    },
    "dr_standby_rebuild": {
        "guard": "default",
        "find_roles": "default",  # asks both nodes over the network
        "rebuild_where": "default",
        "rebuild_primary": DB_PRIMARY,
        "rebuild_replica": DB_REPLICA,
        "gate_standby_streaming": "default",
        **TAIL,
    },
    "dr_security_incident": {
        "guard": DB_PRIMARY,  # the backup host: picks the clean point from the local dumps
        "isolate": "default",  # the balancer and ALTER ROLE over the network
        "preserve_application_files": APP,  # the configuration and environment file
        "preserve_evidence": DB_PRIMARY,  # server logs and *.conf; one manifest for both
        "recover_clean_point": DB_PRIMARY,  # pg_restore reads the dump on the backup host
        "approval_path": "default",
        "approve_swap": "default",
        "approval_not_required": "default",
        "swap": "default",
        "rotate_credentials": APP,  # rewrites the environment file the services read
        "report": "default",
        **TAIL,
    },
    # the old primary's steps on its host, one set per node (a branch picks by to_node)
    "dr_switchover": {
        "guard": "default",
        "switch_from": "default",
        **{
            f"{step}_{node}": host
            for node, host in (("primary", DB_PRIMARY), ("replica", DB_REPLICA))
            for step in ("preconditions_from", "switch_from", "give_writes_back_from", "rebuild")
        },
        "stop_services": "default",  # supervisord's XML-RPC
        "start_services": "default",
        "gate_new_primary": APP,  # the services' functional checks
        "gate_standby_streaming": "default",
        **TAIL,
    },
}


@pytest.mark.parametrize("dag_id", list(SCENARIO_QUEUES))
def test_the_other_scenarios_run_each_task_where_what_it_acts_on_is(monkeypatch, dag_id):
    dag = dag_of(monkeypatch, dag_id, COMPOSE_PLAN, "/srv/tracktion")
    assert {t.task_id: t.queue for t in dag.tasks} == SCENARIO_QUEUES[dag_id]


def test_a_service_layer_under_a_local_controller_is_restarted_on_the_application_host(
    compose_data,
):
    """The rule behind the dependency recovery's cache/queue steps: supervisord answers
    over the network; a controller that is a command on the host binds them to it."""
    from tracktion_dr.scenarios import dependencies

    plan = parse_plan(compose_data, COMPOSE_PLAN)
    assert dependencies.step_host(plan, "cache") is None
    assert dependencies.step_host(plan, "database") == "database_primary"
    assert dependencies.gate_host(plan, "database") is None

    local = with_a_local_controller(compose_data)
    assert dependencies.step_host(local, "cache") == "application"
    assert dependencies.step_host(local, "queue") == "application"


@pytest.mark.parametrize(
    "dag_id", [*QUARTERLY_QUEUES, *BACKUP_RESTORE_MONTHLY_QUEUES, *SCENARIO_QUEUES]
)
def test_without_hosts_every_routed_dag_stays_on_the_default_queue(monkeypatch, tmp_path, dag_id):
    dag = dag_of(monkeypatch, dag_id, SANDBOX_PLAN, str(tmp_path))
    assert {task.queue for task in dag.tasks} == {"default"}


def test_an_unknown_backup_host_is_named(compose_data):
    for env in compose_data["environments"].values():
        env["backup_host"] = "vault"
    text = problems_of(compose_data)
    assert "environments.drill.backup_host: unknown host 'vault'" in text


def test_a_backup_host_in_one_environment_only_is_refused(compose_data):
    """Its runs in the other environment would read that host's backups."""
    compose_data["environments"]["production"] = {
        **compose_data["environments"]["production"],
        "backup_host": None,
    }
    text = problems_of(compose_data)
    assert "environments.production" in text and "names no host for its backups steps" in text


@pytest.mark.parametrize("dag_id", ["dr_initial_assessment", "dr_incident_response"])
def test_the_assessment_probes_storage_on_the_storage_host_and_the_rest_over_the_network(
    monkeypatch, tmp_path, dag_id
):
    """The storage areas are the storage host's directories: a probe_storage task there,
    beside the assessment; everything else answers over the network. Without hosts the
    assessment looks at the storage itself (no extra task)."""
    queues = {t.task_id: t.queue for t in dag_of(monkeypatch, dag_id, COMPOSE_PLAN, "/srv/t").tasks}
    assert queues.pop("probe_storage") == APP
    assert set(queues.values()) == {"default"}
    local = dag_of(monkeypatch, dag_id, SANDBOX_PLAN, str(tmp_path))
    assert "probe_storage" not in local.task_ids
