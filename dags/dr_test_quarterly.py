"""
### DR quarterly full-system recovery test

The plan's quarterly drill (`test_schedule.quarterly.cron`) against the **drill**
environment, with the RTO clock running from the simulated loss:

1. **guard** - refuses `production`; the chain's DAGs exist; the cluster can be recovered
   (a recoverable window exists in the backups); nothing touched yet.
2. **simulate_loss** - the drill cluster is lost: PostgreSQL stopped like a crash, its data
   directory moved aside to `<dir>.lost_<tag>` (kept, never deleted). The clock starts here.
3. **step_N_<dag>** - the plan's `drills.quarterly.steps`, in order: each step's own DAG is
   run for real with its conf (plus this drill's incident id and clock start) and waited
   for; its ledger record and state are the step's result. The sandbox plan's chain is
   `dr_database_pitr` (PITR to latest) → `dr_initial_assessment` (infrastructure checks) →
   `dr_post_recovery_validation`; `dr_infrastructure_recovery`, `dr_application_recovery`
   and `dr_config_recovery` are added to the YAML list when they land - no code change.
4. **safety_net** (always runs) - if the cluster does not answer after the chain, the lost
   data directory is put back (the failed one moved aside) so the drill never leaves the
   environment down.
5. **record**: simulated loss and each step's time, RTO achieved (last step done - loss)
   vs the tier's target, data lost (measured from the canary by the PITR step) vs RPO;
   **publish_report**; **verdict**.
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
    refusing_bad_input,
    step_event,
)
from tracktion_dr.airflow.support import DEFAULT_ARGS, common_params
from tracktion_dr.core.plan import load_plan

PLAN = load_plan()
SCHEDULE = PLAN.test_schedule["quarterly"].cron if "quarterly" in PLAN.test_schedule else None
STEPS = list(PLAN.drills.quarterly.steps) if PLAN.drills else []


def step_task_id(index: int, dag_id: str) -> str:
    return f"step_{index + 1}_{dag_id}"


@dag(
    dag_id="dr_test_quarterly",
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "drill"],
    default_args=DEFAULT_ARGS,
    params=common_params(PLAN, environment_default="drill"),
    doc_md=__doc__,
)
def dr_test_quarterly():
    @task(retries=0)
    def guard(**context) -> dict:
        from tracktion_dr.scenarios.drills import guard_quarterly

        incident = open_incident(context, PLAN)
        with refusing_bad_input():
            return {**incident, **guard_quarterly(PLAN, incident)}

    @task(retries=0)
    def simulate_loss(run: dict) -> dict:
        from tracktion_dr.scenarios.drills import simulate_cluster_loss

        started = now_iso()
        if run["dry_run"]:
            return {**run, "event": step_event("simulate_loss", started, "skipped", "dry run")}
        loss = simulate_cluster_loss(
            PLAN.environment(run["environment"]), run["cluster"], run["tag"]
        )
        detail = (
            f"cluster {run['cluster']} lost at {loss['lost_at']}: stopped (immediate), data "
            f"directory moved aside to {loss['moved_aside']}"
        )
        print(detail)
        return {
            **run,
            **loss,
            "started_at": loss["lost_at"],
            "event": step_event("simulate_loss", started, detail=detail),
        }

    @task(retries=0)
    def run_chain_step(run: dict, index: int, **context) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from tracktion_dr.airflow.drill_steps import run_step
        from tracktion_dr.core.timeline import Event

        step = STEPS[index]
        name = step_task_id(index, step.dag_id)
        started = now_iso()
        if run["dry_run"]:
            return {"event": step_event(name, started, "skipped", "dry run")}
        conf = {
            **step.conf,
            "incident_id": run["incident_id"],
            "incident_started_at": run["lost_at"],
        }
        result = run_step(step.dag_id, conf, PLAN.drills.quarterly.step_timeout.total_seconds())
        record = result.get("record") or {}
        ok = result["state"] == "success"
        detail = (
            f"{step.label or step.dag_id}: {step.dag_id} run {result.get('run_id')} {result['state']}"
            + (
                f"; RTO achieved {record.get('rto_achieved_seconds')}s"
                if record.get("rto_achieved_seconds")
                else ""
            )
            + (
                f"; data lost {record['data_loss_seconds']:.1f}s"
                if record.get("data_loss_seconds") is not None
                else ""
            )
            + (
                f"; failed tasks {sorted(k for k, v in result.get('task_states', {}).items() if v == 'failed')}"
                if not ok
                else ""
            )
            + (f"; {result['error'][-300:]}" if result.get("error") else "")
        )
        print(detail)
        event = Event(name, "gate", started, now_iso(), "succeeded" if ok else "failed", detail)
        value = {
            "event": event.__dict__,
            "child": {k: v for k, v in result.items() if k != "record"},
            "record": {
                k: record.get(k)
                for k in (
                    "rto_achieved_seconds",
                    "data_loss_seconds",
                    "rpo_target_seconds",
                    "outcome",
                )
            }
            if record
            else None,
            "label": step.label or step.dag_id,
        }
        if not ok:
            context["ti"].xcom_push(key="return_value", value=value)
            raise AirflowFailException(detail)
        return value

    @task(retries=0, trigger_rule="all_done")
    def safety_net(**context) -> str:
        from tracktion_dr.scenarios.drills import put_back_if_down

        run = context["ti"].xcom_pull(task_ids="simulate_loss")
        if not run or run.get("dry_run") or not run.get("moved_aside"):
            return "nothing was lost: nothing to put back"
        detail = put_back_if_down(PLAN.environment(run["environment"]), run["cluster"], run)
        print(detail)
        return detail

    @task(trigger_rule="all_done", retries=0)
    def record(**context) -> dict:
        ti = context["ti"]
        run = ti.xcom_pull(task_ids="simulate_loss") or ti.xcom_pull(task_ids="guard")
        if not run:
            from tracktion_dr.core.incident import resolve_incident

            run = resolve_incident(
                {**context["params"], "environment": "drill"},
                run_started_at=context["dag_run"].start_date or datetime.now(UTC),
                known_environments=sorted(PLAN.environments),
                plan_name=PLAN.name,
            ).as_dict()
        steps, loss, rpo_target = [], None, None
        loss_event = (ti.xcom_pull(task_ids="simulate_loss") or {}).get("event")
        if loss_event:
            steps.append(
                {
                    "name": "simulate_loss",
                    "status": loss_event["status"],
                    "seconds": 0.0,
                    "target_seconds": None,
                    "detail": loss_event["detail"],
                }
            )
        for index, step in enumerate(STEPS):
            value = ti.xcom_pull(task_ids=step_task_id(index, step.dag_id)) or {}
            event = value.get("event")
            if not event:
                steps.append(
                    {
                        "name": step_task_id(index, step.dag_id),
                        "status": "not run",
                        "seconds": None,
                        "target_seconds": None,
                        "detail": step.label,
                    }
                )
                continue
            # Time since the loss when the step finished: what the RTO clock reads.
            at = (
                datetime.fromisoformat(event["finished_at"])
                - datetime.fromisoformat(run["started_at"])
            ).total_seconds()
            steps.append(
                {
                    "name": f"{event['name']} ({value.get('label')})",
                    "status": event["status"],
                    "seconds": at,
                    "target_seconds": None,
                    "detail": event["detail"],
                    "took_seconds": (
                        datetime.fromisoformat(event["finished_at"])
                        - datetime.fromisoformat(event["started_at"])
                    ).total_seconds(),
                }
            )
            child = value.get("record") or {}
            if child.get("data_loss_seconds") is not None and loss is None:
                loss, rpo_target = child["data_loss_seconds"], child.get("rpo_target_seconds")
        environment = PLAN.environment(run["environment"])
        tiers = [
            PLAN.tiers[d.tier]
            for d in environment.databases.values()
            if d.cluster == run.get("cluster", PLAN.drills.quarterly.cluster)
        ]
        rto = min(t.rto for t in tiers).total_seconds() if tiers else 4 * 3600.0
        for step in steps:
            if step["seconds"] is not None and step["name"] != "simulate_loss":
                step["target_seconds"] = rto
        return record_timeline(
            context,
            incident=run,
            rto_target_seconds=rto,
            rpo_target_seconds=rpo_target
            or (min(t.rpo for t in tiers).total_seconds() if tiers else None),
            data_loss_seconds=loss,
            details={
                "steps": steps,
                "notes": [
                    "step times are the RTO clock (time since the simulated loss) when each step finished",
                    f"safety net: {ti.xcom_pull(task_ids='safety_net')}",
                ],
            },
        )

    @task(retries=0)
    def verdict(timeline: dict) -> None:
        raise_for_outcome(timeline)

    lost = simulate_loss(guard())
    previous = lost
    for index, step in enumerate(STEPS):
        current = run_chain_step.override(task_id=step_task_id(index, step.dag_id))(lost, index)
        previous >> current
        previous = current
    net = safety_net()
    previous >> net
    recorded = record()
    net >> recorded
    published = publish_task(PLAN, recorded)
    published >> verdict(recorded)


dr_test_quarterly()
