"""
### DR post-recovery validation (the seed's seven checks, measured)

Run after any recovery (the quarterly drill runs it as its last step) to prove the system
is back, not just up. Each check is its own task with its own result and evidence:

| check | what is measured |
|---|---|
| `system_health` | every service's health URL, every database accepts connections, CPU / memory / disk against the plan's ceilings |
| `data_integrity` | per database: row counts, FK orphans (anti-joins), duplicate PKs, business rules, `pg_amcheck` |
| `application_functionality` | the plan's functional checks (the analysis service really analyses the sample file) |
| `performance_baseline` | median health latency per service vs `validation.max_health_latency` |
| `security_posture` | listening TCP ports vs `validation.allowed_ports`; config file modes vs `validation.config_file_modes` |
| `monitoring_systems` | `validation.monitoring` health URLs (Prometheus / Grafana); **skipped with a note** when none is configured - shown as skipped, never as passed |
| `backup_systems` | a verified dump younger than `validation.backup_max_age` per database (backups catalog), WAL archive continuous |

A failed check fails its task (red in the grid) and the run; **record** writes every
check's status and evidence to the ledger; **publish_report** writes the Markdown / HTML /
JSON report to the plan's report location and sends it when `notify` is set.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import dag, task

from tracktion_dr.airflow.dag_kit import (
    now_iso,
    open_incident,
    publish_task,
    raise_for_outcome,
    record_timeline,
    step_event,
)
from tracktion_dr.airflow.steps import on_host
from tracktion_dr.airflow.support import DEFAULT_ARGS, common_params
from tracktion_dr.core.plan import load_plan
from tracktion_dr.scenarios.validation import CHECK_HOSTS

PLAN = load_plan()
CHECK_TASKS = (
    "system_health",
    "data_integrity",
    "application_functionality",
    "performance_baseline",
    "security_posture",
    "monitoring_systems",
    "backup_systems",
)


def run_check(name: str, incident: dict, context: dict) -> dict:
    """Run one check; its result is the task's XCom also when it fails (the evidence of a
    failure matters most), and a failed check fails the task."""
    from airflow.sdk.exceptions import AirflowFailException

    from tracktion_dr.airflow.support import conninfo, endpoint
    from tracktion_dr.scenarios import validation

    started = now_iso()
    result = validation.run_named_check(
        name, PLAN.environment(incident["environment"]), conninfo, endpoint
    )
    status = {"passed": "succeeded", "failed": "failed", "skipped": "skipped"}[result.status]
    value = {
        "event": step_event(name, started, status, f"{result.status.upper()}: {result.detail}"),
        "check": result.as_dict(),
    }
    if result.status == "failed":
        context["ti"].xcom_push(key="return_value", value=value)
        raise AirflowFailException(f"{name} failed: {result.detail}")
    return value


@dag(
    dag_id="dr_post_recovery_validation",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["dr", "validation"],
    default_args=DEFAULT_ARGS,
    params=common_params(PLAN, environment_default=PLAN.default_environment),
    doc_md=__doc__,
)
def dr_post_recovery_validation():
    @task(retries=0)
    def guard(**context) -> dict:
        return open_incident(context, PLAN)

    @task(retries=0)
    def check(incident: dict, check_name: str, **context) -> dict:
        return run_check(check_name, incident, context)

    incident = guard()
    # Each check on the host whose local state it reads (CHECK_HOSTS), else the default queue.
    checks = [
        check.override(task_id=name, **on_host(CHECK_HOSTS.get(name)))(incident, name)
        for name in CHECK_TASKS
    ]

    @task(trigger_rule="all_done", retries=0)
    def record(incident: dict, **context) -> dict:
        from tracktion_dr.scenarios.validation import CHECKS

        ti = context["ti"]
        results = []
        for name in CHECKS:
            value = ti.xcom_pull(task_ids=name)
            if isinstance(value, dict) and "check" in value:
                results.append(value["check"])
            else:
                results.append(
                    {"name": name, "status": "failed", "detail": "did not run", "evidence": {}}
                )
        environment = PLAN.environment(incident["environment"])
        rto = min(PLAN.tiers[s.tier].rto for s in environment.services.values())
        return record_timeline(
            context,
            incident=incident,
            rto_target_seconds=rto.total_seconds(),
            details={"checks": results},
        )

    @task(retries=0)
    def verdict(timeline: dict) -> None:
        raise_for_outcome(timeline)

    recorded = record(incident)
    for check_task in checks:
        check_task >> recorded
    published = publish_task(PLAN, recorded)
    published >> verdict(recorded)


dr_post_recovery_validation()
