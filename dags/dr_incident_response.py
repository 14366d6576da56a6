"""
### DR incident response

From an alert (or an operator) to a **verified** recovery: the seed's *Immediate
Response*, *Recovery Team Activation*, *War Room*, *Status Update*, *Customer
Communication*, *Escalation* and *Post-Incident Review*, as one run.

| step | what |
|---|---|
| `guard` | checks every input before anything is sent: severity, scenario, the affected components, the scenario's params; refuses an unattended destructive recovery where the environment demands a human |
| `assess` | the `dr_initial_assessment` probes; an alert about components that are healthy is a **false positive** |
| `triage` | false positive: `stand_down` (chat note, nobody paged, nothing started); otherwise the response below |
| `alert_stakeholders`, `activate_team`, `war_room` | the alert on every channel, the customers' first notice (status page), each activation role paged (PagerDuty, e-mail), the Slack war room and the incident document |
| `choose_recovery` | `approve_recovery` when the recovery is destructive in an environment that demands a human (or `auto_recover` is off), else straight on |
| `approve_recovery` | human-in-the-loop: the question, plan of actions and answer link go to chat and PagerDuty; the commander picks the scenario (or none); no answer in `approval_timeout` escalates |
| `recovery_request`, `start_recovery` | the conf the recovery DAG needs, derived from the affected components; one run per incident and scenario |
| `watch_recovery` | status updates on the plan's cadence, escalation levels paged as their thresholds pass |
| `verify_recovery` | independent of the recovery's own verdict: the assessment again and the post-recovery validation checks for the affected components |
| `close_incident` | **restored** (team notice + PagerDuty *resolve*, customers' notice + status page *resolved*) only when verified; otherwise the next escalation level is paged with what is still down |
| `record`, `post_incident_review`, `verdict` | the ledger, the review from the ledger's timeline, the run's state |

**Params**: `severity`, `description`, `scenario` (one of the plan's
`incident_response.scenarios`), `affected` (component names as the assessment prints
them), `scenario_conf` (the scenario's own params), `auto_recover`, plus the common ones.
Started by hand, or by the alert webhook (`POST /dr/alerts/{source}`, routes in the plan).
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, dag, task

from tracktion_dr.airflow import incident_steps as incident
from tracktion_dr.airflow import steps
from tracktion_dr.airflow.approval import DECISION_KEY, RecoveryApproval
from tracktion_dr.airflow.dag_kit import raise_for_outcome, record_timeline
from tracktion_dr.airflow.incident_watch import RecoveryWatch
from tracktion_dr.airflow.notifier import DrNotifier
from tracktion_dr.airflow.support import DEFAULT_ARGS, common_params
from tracktion_dr.core.plan import load_plan

PLAN = load_plan()
RESPONSE = ["alert_stakeholders", "activate_team", "war_room"]
# Where a waiting decision is announced: the on-call's chat and pager.
ON_CALL = [n for n, c in PLAN.notifications.items() if c.kind in ("slack", "pagerduty")]

PARAMS = {
    **common_params(PLAN, environment_default=PLAN.default_environment),
    "severity": Param(
        type="string",
        enum=list(PLAN.tiers),
        title="Severity",
        description="The plan's business-impact tier of what is down; its RTO is the ETA.",
        section="Incident",
    ),
    "description": Param(
        type="string",
        minLength=1,
        title="Description",
        description="What is happening, as the stakeholders should read it.",
        section="Incident",
    ),
    "affected": Param(
        [],
        type="array",
        items={"type": "string"},
        title="Affected components",
        description="As the assessment names them: a service, database:<name>, "
        "replica:<cluster>, storage:<area>, external:<name>, backups. Empty: the whole platform.",
        section="Incident",
    ),
    "scenario": Param(
        "",
        type="string",
        enum=["", *PLAN.incident_response.scenarios],
        title="Recovery scenario",
        description="Which recovery DAG to start (empty: none, the team recovers by hand).",
        section="Recovery",
    ),
    "scenario_conf": Param(
        {},
        type="object",
        title="Scenario params",
        description='The scenario\'s own params, e.g. {"target_type": "time", ...}; the '
        "rest is derived from the affected components.",
        section="Recovery",
    ),
    "auto_recover": Param(
        False,
        type="boolean",
        title="Start the recovery without approval",
        description="Off: the commander decides in the UI. Refused for a destructive "
        "recovery where the environment demands confirmation.",
        section="Recovery",
    ),
    # An incident response exists to notify: on unless switched off.
    "notify": Param(
        True,
        type="boolean",
        title="Notify",
        description="Send the alert, activation, approval, status and restoration messages "
        "(best effort).",
        section="Run",
    ),
}


@steps.guard()
def guard(**context) -> dict:
    return incident.open_incident(PLAN, context)


@steps.step("check")
def assess(run: dict, **context) -> dict:
    return incident.assess(PLAN, run, context)


# Only under a plan whose storage is on a host of its own: probed there, beside assess.
@task(task_id=incident.STORAGE_PROBE_TASK, retries=0, **steps.on_host("storage"))
def probe_storage(run: dict) -> list[dict]:
    return incident.probe_storage(PLAN, run["environment"])


@task.branch(retries=0)
def triage(assessment: dict) -> list[str]:
    return ["stand_down"] if assessment["false_positive"] else RESPONSE


@steps.step("notify")
def stand_down(run: dict, assessment: dict, **context) -> dict:
    return incident.stand_down(PLAN, run, assessment)


@steps.step("notify")
def alert_stakeholders(run: dict, assessment: dict, **context) -> dict:
    return incident.alert_stakeholders(PLAN, run, assessment)


@steps.step("notify")
def activate_team(run: dict, **context) -> dict:
    return incident.activate_team(PLAN, run)


@steps.step("notify")
def war_room(run: dict, assessment: dict, **context) -> dict:
    return incident.war_room(PLAN, run, assessment)


@task.branch(retries=0, trigger_rule="none_failed_min_one_success")
def choose_recovery(run: dict, assessment: dict) -> str | None:
    if assessment["false_positive"]:
        return None  # stood down: nothing to choose
    if not run["scenario"]:
        return "no_recovery"
    return "recovery_request" if run["auto_recover"] else "approve_recovery"


@steps.step("bookkeeping", trigger_rule="none_failed_min_one_success")
def recovery_request(run: dict, **context) -> dict:
    decision = context["ti"].xcom_pull(task_ids="approve_recovery", key=DECISION_KEY)
    return incident.recovery_request(PLAN, run, decision)


@steps.step("check", after_all=True)
def verify_recovery(run: dict, **context) -> dict:
    ti = context["ti"]
    return incident.verify_recovery(
        PLAN,
        run,
        ti.xcom_pull(task_ids="watch_recovery"),
        ti.xcom_pull(task_ids="recovery_request"),
    )


@steps.step("notify", after_all=True)
def close_incident(run: dict, **context) -> dict:
    ti = context["ti"]
    return incident.close_incident(
        PLAN,
        run,
        triage=ti.xcom_pull(task_ids="assess"),
        decision=ti.xcom_pull(task_ids="approve_recovery", key=DECISION_KEY),
        recovery=ti.xcom_pull(task_ids="watch_recovery"),
        verification=ti.xcom_pull(task_ids="verify_recovery"),
    )


@task(trigger_rule="all_done", retries=0)
def record(**context) -> dict:
    run = steps.guard_result(context)
    if run is None:  # refused: nothing was sent or started, nothing to record
        return {"outcome": "failed", "details": {"failed_tasks": ["guard"]}, "refused": True}
    return record_timeline(context, incident=run, rto_target_seconds=run["rto_seconds"])


@steps.step("bookkeeping", after_all=True)
def post_incident_review(run: dict, **context) -> dict:
    return incident.post_incident_review(
        PLAN, run, context["ti"].xcom_pull(task_ids="close_incident")
    )


@task(retries=0)
def verdict(timeline: dict) -> None:
    raise_for_outcome(timeline)


@dag(
    dag_id="dr_incident_response",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=4,
    tags=["dr", "incident"],
    default_args=DEFAULT_ARGS,
    params=PARAMS,
    doc_md=__doc__,
)
def dr_incident_response():
    run = guard()
    assessment = assess(run)
    response = [alert_stakeholders(run, assessment), activate_team(run), war_room(run, assessment)]
    stood_down = stand_down(run, assessment)
    triage(assessment) >> [stood_down, *response]

    chosen = choose_recovery(run, assessment)
    response >> chosen
    approve = RecoveryApproval(
        task_id="approve_recovery",
        plan=PLAN,
        start_task_id="recovery_request",
        no_recovery_task_id="no_recovery",
        notifiers=[DrNotifier(kind="hitl", channels=ON_CALL, severity="critical")],
    )
    request = recovery_request(run)
    no_recovery = EmptyOperator(task_id="no_recovery", trigger_rule="none_failed_min_one_success")
    chosen >> [approve, request, no_recovery]
    approve >> [request, no_recovery]
    start_recovery = TriggerDagRunOperator(
        task_id="start_recovery",
        # Jinja, not XComArgs: the DAG serializer reads trigger_dag_id for its dependency graph.
        trigger_dag_id="{{ ti.xcom_pull(task_ids='recovery_request')['dag_id'] }}",
        trigger_run_id="{{ ti.xcom_pull(task_ids='recovery_request')['run_id'] }}",
        conf=request["conf"],
        wait_for_completion=False,
        # A re-run of the incident finds its recovery run already there: watch that one.
        skip_when_already_exists=True,
        retries=0,
    )
    watch = RecoveryWatch(
        task_id="watch_recovery",
        plan=PLAN,
        incident=run,
        recovery=request,
        poke_interval=5,
        trigger_rule="none_failed_min_one_success",
    )
    request >> start_recovery >> watch
    verified = verify_recovery()
    closed = close_incident()
    watch >> verified >> closed
    # Not wired to choose_recovery: a branch that chooses nothing skips its direct downstream.
    [no_recovery, approve, stood_down, *response] >> closed
    timeline = record()
    review = post_incident_review()
    judged = verdict(timeline)
    # The verdict also waits on the guard: a refused guard is the run's one failed task.
    closed >> timeline >> review >> judged
    run >> judged
    if incident.storage_probed_on_its_host(PLAN):
        # beside assess, which reads its results; the record waits for it (never the verdict)
        probe_storage(run) >> timeline


dr_incident_response()
