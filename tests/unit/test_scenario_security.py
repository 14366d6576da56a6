"""dr_security_incident's decisions (scenarios.security), without a sandbox."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tracktion_dr.core.errors import InvalidInput
from tracktion_dr.core.plan import PlanError, load_plan
from tracktion_dr.scenarios import security

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
FACTS = {
    "rogue": {"superuser": False, "can_login": True, "replication": False},
    "admin2": {"superuser": True, "can_login": True, "replication": False},
}
PROTECTED = {"postgres": "the DR connection's own role", "tracktion": "an application role"}


@pytest.fixture(scope="module", params=["sandbox.yaml", "tracktion.yaml"])
def plan(request):
    return load_plan(ROOT / "include" / "config" / request.param)


def test_both_plans_have_a_locked_evidence_location_and_app_roles(plan):
    assert plan.security.evidence_location.startswith("s3://")
    assert plan.security.lock_mode in ("COMPLIANCE", "GOVERNANCE")
    assert "tracktion" in plan.security.app_roles


def test_an_app_role_on_an_unknown_database_is_refused_at_load(tmp_path):
    text = (ROOT / "include" / "config" / "sandbox.yaml").read_text()
    text = text.replace(
        "tracktion: {database: tracktion, env_var", "tracktion: {database: nope, env_var"
    )
    bad = tmp_path / "plan.yaml"
    bad.write_text(text)
    with pytest.raises(PlanError, match="security.app_roles.tracktion.database"):
        load_plan(bad)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "required"),
        ("yesterday", "not an ISO 8601 time"),
        ("2026-11-26T10:00:00", "no time zone"),
        ("2026-11-27T10:00:00Z", "in the future"),
    ],
)
def test_compromised_at_is_checked(value, reason):
    with pytest.raises(InvalidInput, match=f"compromised_at: .*{reason}"):
        security.parse_compromised_at(value, NOW)


def test_compromised_at_is_normalised_to_utc():
    assert security.parse_compromised_at("2026-11-26T12:30:00+02:00", NOW) == datetime(
        2026, 11, 26, 10, 30, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("roles", "reason"),
    [
        ([], "at least one"),
        ("rogue", "at least one"),
        (["postgres"], "DR connection's own role"),
        (["tracktion"], "application role"),
        (["pg_monitor"], "built-in"),
        (["admin2"], "superuser"),
        (["ghost"], "does not exist"),
        ([""], "not a role name"),
    ],
)
def test_roles_that_must_never_be_blocked_are_refused(roles, reason):
    with pytest.raises(InvalidInput, match=f"roles: .*{reason}"):
        security.check_roles(roles, FACTS, PROTECTED)


def test_roles_are_deduplicated_and_sorted():
    assert security.check_roles(["rogue", " rogue"], FACTS, PROTECTED) == ["rogue"]


def test_protected_roles_name_dr_replication_and_app_roles(plan):
    protected = security.protected_roles(plan, "postgres", "replicator")
    assert set(protected) == {"postgres", "replicator", "tracktion"}


def test_services_default_to_the_databases_dependents_in_start_order(plan):
    environment = plan.environment("drill")
    services = security.check_services(environment, [], "tracktion")
    assert services == environment.dependents_of("tracktion")
    with pytest.raises(InvalidInput, match="services:"):
        security.check_services(environment, ["nope"], "tracktion")


def test_production_waits_for_a_human_the_drill_does_not():
    assert security.approval_branch({"needs_approval": True}) == "approve_swap"
    assert security.approval_branch({"needs_approval": False}) == "approval_not_required"


def test_the_env_file_is_rewritten_with_one_line_changed(tmp_path):
    env = tmp_path / "environment.env"
    env.write_text("TRACKTION_A=1\nexport TRACKTION_DATABASE_URL=old\n# note\n")
    security.write_env_value(env, "TRACKTION_DATABASE_URL", "new")
    assert security.read_env_file(env) == {"TRACKTION_A": "1", "TRACKTION_DATABASE_URL": "new"}
    assert "# note" in env.read_text()
    assert env.stat().st_mode & 0o777 == 0o600


def test_the_new_dsn_keeps_host_and_port_and_quotes_the_password():
    dsn = security.dsn_with_password(
        "host=db.internal port=6543 user=tracktion password=x dbname=tracktion",
        "tracktion",
        "a/b@c",
        "tracktion",
    )
    assert dsn == "postgresql://tracktion:a%2Fb%40c@db.internal:6543/tracktion?connect_timeout=2"


def test_the_report_holds_keys_and_hashes_never_secrets():
    run = {
        "rto_seconds": 1800.0,
        "rpo_seconds": 900.0,
        "backup": {"id": "tracktion_x.dump", "finished_at": "2026-11-26T10:00:00+00:00"},
        "compromised_at": "2026-11-26T11:00:00+00:00",
        "database": "tracktion",
    }
    results = {
        "preserve_evidence": {
            "bucket": "b",
            "objects": [{"key": "k", "sha256": "h", "version_id": "v", "lock_mode": "COMPLIANCE"}],
        },
        "isolate": {"roles_blocked": ["rogue"], "services_isolated": ["a"]},
        "swap": {"kept_as": "tracktion_pre_x"},
        "rotate_credentials": {"credentials_rotated": ["tracktion"], "proofs": {}},
    }
    fields = security.report_fields(run, results)
    assert fields["backup_used"] == "tracktion_x.dump"
    details = fields["details"]
    assert details["evidence"][0]["sha256"] == "h"
    assert details["roles_blocked"] == ["rogue"]
    assert details["credentials_rotated"] == ["tracktion"]
    assert details["compromised_database_kept_as"] == "tracktion_pre_x"


def test_the_plan_of_actions_preserves_evidence_before_any_repair():
    run = {
        "services": ["a"],
        "roles": ["rogue"],
        "database_name": "tracktion",
        "evidence_location": "s3://b/p",
        "incident_id": "DR-20261126-120000",
        "backup": {"id": "d"},
        "compromised_at": (NOW - timedelta(hours=1)).isoformat(),
        "restore_name": "tracktion_restore_x",
        "kept_as": "tracktion_pre_x",
        "needs_approval": True,
        "app_roles": ["tracktion"],
    }
    actions = security.plan_of_actions(run)
    first = [a.split()[0] for a in actions]
    assert first[:3] == ["isolate:", "preserve", "recover"]
    assert actions[3].startswith("approval by a human")


def test_the_dag_asks_a_human_before_the_swap_and_preserves_evidence_first():
    """Production's path: approve_swap (HITL, the question sent through DrNotifier) sits
    between the validated copy and the swap; evidence is preserved before the recovery."""
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    from tracktion_dr.airflow.dag_runs import load_dag
    from tracktion_dr.airflow.notifier import DrNotifier

    dag = load_dag("dr_security_incident")
    approve = dag.get_task("approve_swap")
    assert isinstance(approve, ApprovalOperator)
    assert any(isinstance(n, DrNotifier) for n in approve.notifiers)
    assert approve.downstream_task_ids == {"swap"}
    assert dag.get_task("approval_path").downstream_task_ids == {
        "approve_swap",
        "approval_not_required",
    }
    assert "preserve_evidence" in dag.get_task("recover_clean_point").upstream_task_ids
    # the application host's part first, then the database host's (one manifest for both)
    assert "isolate" in dag.get_task("preserve_application_files").upstream_task_ids
    assert "preserve_application_files" in dag.get_task("preserve_evidence").upstream_task_ids
