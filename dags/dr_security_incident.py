"""
### DR security incident

The plan's scenario 6 (a compromised database role or credential), in the order that keeps
the evidence and the data safe: **contain, preserve, recover beside, swap, rotate.**

1. **guard** — checks everything before touching anything: the database, the typed
   confirmation (`RESTORE <database>`) in production, `compromised_at` (ISO 8601 with a
   zone, not in the future, and not older than every verified dump), each of `roles` exists
   and is not the DR connection's role, the replication role, a superuser or an application
   role (those are rotated, not blocked), `services` are the plan's, the evidence bucket
   has S3 Object Lock. A dry run stops here after printing every action.
2. **isolate** — the affected services out of the load balancer (every server at weight 0,
   disabled); `ALTER ROLE … NOLOGIN` and `pg_terminate_backend` for each role. DR access is
   proven still working.
3. **preserve_application_files**, then **preserve_evidence** — *before anything is
   repaired*: the application's configuration files and environment file (archived and
   stored on the application host), then `pg_dump -Fc` of the compromised database, the
   PostgreSQL log tail and the cluster's `*.conf` (on the database host), and one SHA-256
   manifest listing both parts, uploaded to the plan's `security.evidence_location` with an
   Object Lock retention (`security.lock_mode`, `security.retention`), read back and
   hash-checked.
4. **recover_clean_point** — the newest verified logical dump finished before
   `compromised_at`, restored **beside** the compromised database into
   `<db>_restore_<incident>` and validated (dr_database_restore's own steps).
5. **approve_swap** — production: a human approves in the Airflow UI (the question goes to
   Slack and PagerDuty); Reject or no answer swaps nothing. The drill environment (no typed
   confirmation demanded) goes through `approval_not_required`.
6. **swap** — `<db>` → `<db>_pre_<incident>` (kept, never dropped), restored → `<db>`.
7. **rotate_credentials** — a new password (Python `secrets`) for the plan's
   `security.app_roles` of the database, written to the environment file the services
   read (a safety copy `<file>.pre_<incident>` first), their old sessions ended, the
   services restarted and gated on health, the **old password proven refused**, and the
   services put back in the load balancer as they were.
8. **report** — evidence keys and SHA-256s, roles blocked, credentials rotated (names
   only), recovery point used; then **record**, **notify**, **verdict**.

**Where each step runs** (a plan with `hosts`, CeleryExecutor): the guard and the restore
of the clean point where the dumps are (`backup_host`); the application's evidence and the
credential rotation on the application host (its configuration and environment file); the
database's evidence on the cluster's host (its logs and `*.conf`); isolation, approval and
swap over the network on the default queue.

**Re-runs**: trigger again with the same `incident_id`: blocked roles are not altered again,
stored evidence is verified (not uploaded twice), a validated copy is not restored again,
a finished swap or rotation is only checked. Passwords never appear in logs or XCom.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, dag, task

from tracktion_dr.airflow import steps
from tracktion_dr.airflow.dag_kit import open_incident, scenario_tail, take_exclusivity
from tracktion_dr.airflow.notifier import DrNotifier
from tracktion_dr.airflow.support import DEFAULT_ARGS, common_params
from tracktion_dr.core.plan import load_plan
from tracktion_dr.scenarios import config

log = logging.getLogger(__name__)

PLAN = load_plan()
DATABASES = sorted({name for env in PLAN.environments.values() for name in env.databases})
ON_CALL = [n for n, c in PLAN.notifications.items() if c.kind in ("slack", "pagerduty")]
STEPS = ("isolate", "preserve_evidence", "recover_clean_point", "swap", "rotate_credentials")


def _admin(run: dict):
    from tracktion_dr.airflow.support import endpoint

    environment = PLAN.environment(run["environment"])
    cluster = environment.clusters[environment.databases[run["database"]].cluster]
    return endpoint(cluster.conn_id), Path(cluster.bin_dir)


def _s3():
    from tracktion_dr.airflow.backup_jobs import s3_hook

    return s3_hook(PLAN.security.evidence_conn_id, PLAN).get_conn()


def _record_fields(run: dict, context) -> dict:
    report = context["ti"].xcom_pull(task_ids="report") or {}
    return {k: v for k, v in report.items() if k != "event"}


@dag(
    dag_id="dr_security_incident",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "scenario", "security"],
    default_args=DEFAULT_ARGS,
    params={
        "database": Param(
            "tracktion",
            type="string",
            enum=DATABASES,
            title="Database",
            description="The compromised database (from the DR plan).",
            section="Security incident",
        ),
        "compromised_at": Param(
            type="string",
            title="Compromised at",
            description="ISO 8601 with a zone (e.g. 2026-11-26T14:05:00Z): the time of the "
            "compromise. The recovery point is the newest verified dump finished before it.",
            section="Security incident",
        ),
        "roles": Param(
            type="array",
            items={"type": "string"},
            title="Roles to block",
            description="Database roles to block (NOLOGIN, sessions ended). Never the DR "
            "role, a superuser or an application role (those are rotated).",
            section="Security incident",
        ),
        "services": Param(
            [],
            type="array",
            items={"type": "string"},
            title="Services to isolate",
            description="Taken out of the load balancer. Empty: the plan's services that use "
            "the database.",
            section="Security incident",
        ),
        "confirm": Param(
            "",
            type="string",
            title="Confirmation",
            description="Type RESTORE <database> (e.g. RESTORE tracktion). Required in production.",
            section="Security incident",
        ),
        **common_params(PLAN, environment_default=None),
    },
    doc_md=__doc__,
)
def dr_security_incident():
    @steps.guard(host="backups")  # picks the clean point from the local dumps
    def guard(**context) -> dict:
        from tracktion_dr.airflow.support import endpoint
        from tracktion_dr.scenarios.security import check_inputs

        incident = open_incident(context, PLAN)
        run = check_inputs(PLAN, incident, context["params"], endpoint, _s3)
        steps.print_plan_of_actions(incident, run["actions"])
        resources = [f"database:{run['database']}", f"cluster:{run['cluster']}"]
        exclusivity = {} if incident["dry_run"] else take_exclusivity(context, run, resources)
        return {**run, **exclusivity}

    @steps.step("destructive")
    def isolate(run: dict, **context) -> dict:
        from tracktion_dr.airflow.access import ACCESS
        from tracktion_dr.scenarios.security import isolate as contain

        return contain(PLAN, run, _admin(run)[0], ACCESS)

    @steps.step("destructive", host=config.FILES_HOST)  # the configuration files
    def preserve_application_files(run: dict, **context) -> dict:
        from tracktion_dr.scenarios.security import preserve_application_files as preserve

        return preserve(PLAN, run, _s3())

    # the dump, the server logs and the cluster's *.conf; the manifest lists both parts
    @steps.step("destructive", host="database_primary")
    def preserve_evidence(run: dict, application: dict, **context) -> dict:
        from tracktion_dr.scenarios.security import preserve_evidence as preserve

        admin, bindir = _admin(run)
        return preserve(PLAN, run, admin, _s3(), bindir, application.get("entry"))

    @steps.step("destructive", host="backups")  # pg_restore reads the dump there
    def recover_clean_point(run: dict, **context) -> dict:
        from tracktion_dr.scenarios.security import recover_clean_point as recover

        admin, bindir = _admin(run)
        return recover(admin, run, bindir)

    @task.branch(retries=0)
    def approval_path(run: dict) -> str:
        from tracktion_dr.scenarios.security import approval_branch

        return approval_branch(run)

    approve_swap = ApprovalOperator(
        task_id="approve_swap",
        subject="Security incident {{ ti.xcom_pull(task_ids='guard')['incident_id'] }}: "
        "swap in the clean copy?",
        body=(
            "**Compromised at** {{ ti.xcom_pull(task_ids='guard')['compromised_at'] }}\n\n"
            "**Evidence**: {{ ti.xcom_pull(task_ids='preserve_evidence')['event']['detail'] }}\n\n"
            "**Recovered**: {{ ti.xcom_pull(task_ids='recover_clean_point')['event']['detail'] }}\n\n"
            "On Approve: `{{ ti.xcom_pull(task_ids='guard')['database_name'] }}` is renamed "
            "to `{{ ti.xcom_pull(task_ids='guard')['kept_as'] }}` (kept) and the validated "
            "copy takes its name. Reject (or no answer) swaps nothing."
        ),
        defaults="Reject",
        response_timeout=PLAN.incident_response.approval_timeout,
        notifiers=[DrNotifier(kind="hitl", channels=ON_CALL, severity="critical")],
        retries=0,
    )

    @steps.step("destructive", trigger_rule="none_failed_min_one_success")
    def swap(run: dict, **context) -> dict:
        from tracktion_dr.scenarios.security import swap as swap_in

        return swap_in(_admin(run)[0], run)

    # none_failed: a rejected swap still rotates the stolen credentials. On the application
    # host: it rewrites the environment file the services read.
    @steps.step("destructive", trigger_rule="none_failed", host=config.FILES_HOST)
    def rotate_credentials(run: dict, **context) -> dict:
        from tracktion_dr.airflow.access import ACCESS
        from tracktion_dr.scenarios.security import rotate_credentials as rotate

        return rotate(PLAN, run, _admin(run)[0], ACCESS)

    @steps.step("bookkeeping", after_all=True)
    def report(run: dict, **context) -> dict:
        from tracktion_dr.scenarios.security import report_fields

        pulled = context["ti"].xcom_pull
        results = {name: pulled(task_ids=name) for name in STEPS}
        fields = report_fields(run, results)
        return {"detail": f"recovery point {fields['backup_used']}", **fields}

    run = guard()
    isolated = isolate(run)
    application_files = preserve_application_files(run)
    preserved = preserve_evidence(run, application_files)
    recovered = recover_clean_point(run)
    path = approval_path(run)
    isolated >> application_files
    preserved >> recovered >> path
    swapped = swap(run)
    path >> [approve_swap, EmptyOperator(task_id="approval_not_required")] >> swapped
    rotated = rotate_credentials(run)
    swapped >> rotated
    reported = report()
    rotated >> reported
    scenario_tail(PLAN, run, [reported], record_fields=_record_fields, exclusive=True)


dr_security_incident()
