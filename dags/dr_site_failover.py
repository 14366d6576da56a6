"""
### DR site failover (the plan's scenario 1: the data center is gone)

Brings Tracktion up in the **recovery site** (the backup region) from the **offsite copy
only**, moves traffic there, and measures what was lost. `mode=drill` (the plan's
bi-annual business-continuity exercise, `dr_test_site_failover`) runs the same into the
recovery site without touching production.

**Flow**
1. `guard` - nothing touched yet. The environment's `recovery_site` says what runs in the
   site (its clusters, services, balancer server) and where it restores from (`backups`,
   the cross-region copy). **The primary site is declared lost**: every database server
   and service of it is probed and none may answer (a site that still answers is refused:
   recover the component in place). In production the operator also types
   `RESTORE site <stack>`. The site's data directory must be empty (or this incident's
   recovery, resumed). CloudFormation validates the stack's template and the stack is
   looked at; the offsite copy is read through the backups catalog (a usable base backup,
   WAL without a gap); **what the offsite copy lacks is measured now** (the primary's
   `pg_wal` and local archive, when the disks are still readable, against the offsite
   WAL's end). Prints the plan of actions (the whole output of a `dry_run`).
2. `create_stack` / `update_stack` / `wait_for_stack` - dr_site_provision's operators;
   `read_outputs`: the stack's endpoints, and its database must be the server the plan's
   site connection names.
3. `stage_database` (base backup from the offsite copy beside the site's empty data
   directory, `pg_verifybackup`, standby-mode settings), `lay_down_database` (renamed into
   place, the site's settings: port, archiving off), `start_postgres`;
   **gate_replay_caught_up**: replay past the last record the offsite copy holds;
   `validate_database` read-only; `promote`.
4. `start_services` in dependency order through the plan's controllers; **gates**:
   services healthy, functional checks.
5. `move_traffic`: the site's load balancer enables the site's servers; in `failover` mode
   the switchable DNS records (the plan's `dns`) go to their secondary in one Route53
   UPSERT batch, waited INSYNC; **gate_traffic_moved**.
6. `validate_site` (a write commits; every service answers through the balancer),
   `measure_data_loss`, `dismantle_drill_site` (drill only: services and server stopped,
   the restored data directory moved aside, the balancer's servers disabled), record,
   notify, verdict.

**RTO** counts against the recovery site's tier (`recovery_site.tier`); **data loss** is
measured: the recovered database's newest canary heartbeat / last replayed transaction
against the primary's last commit (read from its WAL when readable) - otherwise against
the incident time, recorded as an upper bound.

**Killed mid-way?** Re-run with the same `incident_id`: the stack is found, a staged or laid
down recovery is this incident's and is resumed, traffic moves only where it has not.

Not done here: storage and configuration in the site (the sandbox's site shares the
primary's files), failing back (rebuild the old site as a standby of this one).
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Param, dag

from tracktion_dr.airflow import steps
from tracktion_dr.airflow.dag_kit import RtoGate, open_incident, scenario_tail, take_exclusivity
from tracktion_dr.airflow.gate_triggers import named_check
from tracktion_dr.airflow.site_steps import (
    STACK_REQUEST_KEY,
    RecoveryStackCreateOperator,
    RecoveryStackSensor,
    cloudformation_client,
    route53_client,
)
from tracktion_dr.airflow.support import DEFAULT_ARGS, common_params
from tracktion_dr.core.plan import load_plan
from tracktion_dr.scenarios import site, site_failover

PLAN = load_plan()
DAG_ID = "dr_site_failover"
RTO_SECONDS = site.rto_seconds(PLAN)


def _access():
    from tracktion_dr.airflow.access import ACCESS

    return ACCESS


def _balancer_url(run: dict) -> str:
    """The site's load balancer, from the stack's Outputs (read again: a gate has only the run)."""
    return site.read_endpoints(PLAN, run, cloudformation_client)["endpoints"]["load_balancer"]


def _record_fields(run: dict, context) -> dict:
    ti = context["ti"]
    return site_failover.record_fields(
        run, ti.xcom_pull(task_ids="read_outputs"), ti.xcom_pull(task_ids="measure_data_loss")
    )


def _probe_database(conninfo: str, timeout: float) -> str:
    from tracktion_dr.services.probes import postgres_ready

    return postgres_ready(conninfo)(timeout)


def _probe_http(url: str, timeout: float) -> str:
    from tracktion_dr.services.probes import http_health

    return http_health(url)(timeout)


# The steps, each written once through the kit; the DAG below only wires them.


@steps.guard()
def guard(**context) -> dict:
    from tracktion_dr.notify.runs import notify_started

    incident = open_incident(context, PLAN)
    run, request = site_failover.check_inputs(
        PLAN,
        incident,
        context["params"],
        access=_access(),
        connect_cloudformation=cloudformation_client,
        probe_database=_probe_database,
        probe_http=_probe_http,
    )
    context["ti"].xcom_push(key=STACK_REQUEST_KEY, value=request)
    steps.print_plan_of_actions(run, run["actions"])
    if run["dry_run"]:
        return run
    resources = [f"site:{run['stack_name']}"]
    resources += [f"site-cluster:{name}" for name in run["clusters"]]
    run = {**run, **take_exclusivity(context, run, resources)}
    notify_started(PLAN, run, DAG_ID, site_failover.started_summary(run))
    return run


@steps.step("destructive")
def update_stack(run: dict, created: dict, **context) -> dict:
    return site.update_stack(PLAN, run, cloudformation_client)


@steps.step("check", skip_in_dry_run=True)
def read_outputs(run: dict, ready: dict, **context) -> dict:
    endpoints = site.read_endpoints(PLAN, run, cloudformation_client)["endpoints"]
    return site_failover.check_endpoints(PLAN, run, endpoints, _access())


@steps.step("destructive")
def stage_database(run: dict, outputs: dict, **context) -> str:
    return site_failover.stage_databases(PLAN, run)


@steps.step("destructive")
def lay_down_database(run: dict, staged: dict, **context) -> str:
    return site_failover.lay_down_databases(PLAN, run)


@steps.step("destructive")
def start_postgres(run: dict, laid: dict, **context) -> str:
    return site_failover.start_databases(PLAN, run)


@steps.step("check", skip_in_dry_run=True)
def validate_database(run: dict, **context) -> dict:
    from tracktion_dr.airflow.support import endpoint

    return site_failover.validate_databases(PLAN, run, endpoint)


@steps.step("destructive")
def promote(run: dict, validated: dict, **context) -> str:
    return site_failover.promote_databases(PLAN, run, _access())


@steps.step("destructive")
def start_services(run: dict, promoted: dict, **context) -> str:
    return site_failover.start_services(PLAN, run, _access())


@steps.step("destructive")
def move_traffic(run: dict, **context) -> dict:
    moved = site_failover.move_traffic(PLAN, run, _balancer_url(run), route53_client)
    synced = site_failover.wait_dns_in_sync(run, moved["change_id"], route53_client)
    return {**moved, "detail": f"{moved['detail']}; {synced}"}


@steps.step("check", skip_in_dry_run=True)
def validate_site(run: dict, moved: dict, **context) -> dict:
    return site_failover.validate_site(run, _balancer_url(run), _access())


@steps.step("check", skip_in_dry_run=True, after_all=True)
def measure_data_loss(run: dict, **context) -> dict:
    if context["ti"].xcom_pull(task_ids="promote") is None:
        return {"status": "skipped", "detail": "the site's database was not recovered"}
    return site_failover.measure_data_loss(run, _access())


@steps.step("destructive", after_all=True)
def dismantle_drill_site(run: dict, **context) -> dict | str:
    if run["mode"] != site_failover.DRILL:
        return {"status": "skipped", "detail": "a failover: the site now serves Tracktion"}
    outputs = context["ti"].xcom_pull(task_ids="read_outputs") or {}
    balancer = (outputs.get("endpoints") or {}).get("load_balancer")
    return site_failover.dismantle_drill_site(PLAN, run, _access(), balancer)


@dag(
    dag_id=DAG_ID,
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "scenario", "site"],
    default_args=DEFAULT_ARGS,
    params={
        "mode": Param(
            "drill",
            type="string",
            enum=list(site_failover.MODES),
            title="Mode",
            description="failover: the primary site is lost (refused while any of it answers); "
            "DNS moves to the recovery site. drill: the same into the recovery site, production "
            "untouched, the site dismantled afterwards.",
            section="Site failover",
        ),
        "confirm": Param(
            "",
            type="string",
            title="Confirmation",
            description="A failover where the environment demands it: type RESTORE site "
            "<stack name> (the plan's recovery_site.stack_name).",
            section="Site failover",
        ),
        **common_params(PLAN, environment_default=None),
    },
    doc_md=__doc__,
)
def dr_site_failover():
    def gate(task_id: str, check, **kwargs) -> RtoGate:
        return RtoGate(
            task_id=task_id, check=check, incident=run, plan=PLAN, rto_seconds=RTO_SECONDS, **kwargs
        )

    run = guard()
    created = RecoveryStackCreateOperator(
        task_id="create_stack", stack_request=run[STACK_REQUEST_KEY]
    )
    run >> created
    updated = update_stack(run, created.output)
    ready = RecoveryStackSensor(task_id="wait_for_stack")
    updated >> ready
    outputs = read_outputs(run, ready.output)
    started_pg = start_postgres(run, lay_down_database(run, stage_database(run, outputs)))
    gate_replay = gate(
        "gate_replay_caught_up",
        named_check("site_replay_caught_up"),
        poke_interval=1,
    )
    validated = validate_database(run)
    started_pg >> gate_replay >> validated
    services_started = start_services(run, promote(run, validated))
    gate_healthy = gate("gate_services_healthy", named_check("site_services_healthy"))
    gate_functional = gate("gate_functional_checks", named_check("site_functional_checks_pass"))
    services_started >> gate_healthy >> gate_functional
    moved = move_traffic(run)
    gate_functional >> moved
    gate_traffic = gate(
        "gate_traffic_moved",
        named_check("site_traffic_moved"),
        poke_interval=1,
    )
    moved >> gate_traffic
    validated_site = validate_site(run, moved)
    gate_traffic >> validated_site
    loss = measure_data_loss()
    dismantled = dismantle_drill_site()
    validated_site >> loss >> dismantled
    scenario_tail(PLAN, run, [dismantled], record_fields=_record_fields, exclusive=True)


dr_site_failover()
