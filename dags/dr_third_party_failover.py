"""
### DR third-party failover

A provider Tracktion does not run (the plan's `external_dependencies`, e.g. the message
delivery gateway) is down: the services that depend on it are **switched to a fallback**
(a backup provider, or a degraded / queue-and-replay mode the service understands), and
**switched back** once the provider answers again. The plan says where each dependent
reads the provider's endpoint or mode (an environment-file line or a JSON key) and how it
is restarted (its controller).

**Flow**
1. `guard`: inputs checked; the provider and every fallback probed; where the dependents
   are now read from their configuration; the target decided. **Refused, nothing
   touched**: a fallback that is itself down, a `restore` while the provider is still down.
2. `probe`: the target still answers right before anything changes.
3. `safety_snapshot`: the live configuration and environment file archived (`safety/` of
   the plan's `backups.configuration`, as `dr_config_recovery` does); a re-run of the same
   incident and switch reuses the first run's.
4. `switch_configuration`: only the settings not yet on the target are rewritten (every
   other line and the file's mode stay as they were).
5. `restart_dependents`: through the plan's controller, dependencies first.
6. `gate_services` (RTO gate, the dependents' strictest tier): the settings are on the
   target, the dependents are healthy **and pass their functional checks** (which send
   through the provider they now use).
7. `rollback` runs when a step after the probe fails or the gate breaches: the
   configuration is put back exactly as the safety snapshot recorded it and the
   dependents restarted; the run fails, saying why.

**Params**: `dependency` (the plan's name), `direction` (`auto`: to a fallback while the
provider is down, back once it answers; `fallback`; `restore`), `fallback` (empty: the one
the services are already on, else the first that answers), plus the common params
(`dry_run` probes and prints the plan of actions, touches nothing).

**Idempotent**: a re-run does only what is missing (nothing when the dependents are
already on the target and working; a restart when an earlier run of the incident switched
but may not have restarted).
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Param, dag

from tracktion_dr.airflow import steps
from tracktion_dr.airflow.access import ACCESS
from tracktion_dr.airflow.dag_kit import RtoGate, open_incident, scenario_tail
from tracktion_dr.airflow.gate_triggers import named_check
from tracktion_dr.airflow.support import DEFAULT_ARGS, common_params
from tracktion_dr.core.plan import load_plan
from tracktion_dr.notify.runs import notify_started
from tracktion_dr.scenarios import config, third_party

PLAN = load_plan()
DAG_ID = "dr_third_party_failover"
RTO_SECONDS = third_party.rto_seconds(PLAN)  # parse time; the guard sets the run's own
DEPENDENCIES = third_party.switchable_dependencies(PLAN)
# A failed step is answered by the exact rollback (it waits for a *failed* upstream), not
# by a retry: these steps fail once and hand over to it.
NO_RETRY = {"retries": 0}
# The dependents' configuration and environment file, and the safety snapshots, are the
# application host's files; the provider's probe answers over the network (default queue).
FILES_HOST = config.FILES_HOST


def record_fields(run: dict, context) -> dict:
    rollback = context["ti"].xcom_pull(task_ids="rollback")
    return third_party.record_fields(run, rollback)


@dag(
    dag_id=DAG_ID,
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "scenario", "third-party"],
    default_args=DEFAULT_ARGS,
    params={
        **common_params(PLAN, environment_default=None),
        "dependency": Param(
            type="string",
            enum=DEPENDENCIES,
            title="External dependency",
            description="The plan's external dependency (with fallbacks) whose dependents "
            "are switched.",
            section="Third party",
        ),
        "direction": Param(
            "auto",
            type="string",
            enum=list(third_party.DIRECTIONS),
            title="Direction",
            description="auto: to a fallback while the provider is down, back once it "
            "answers; fallback: to a fallback (refused if it is down); restore: back to the "
            "provider (refused while it is down).",
            section="Third party",
        ),
        "fallback": Param(
            "",
            type="string",
            title="Fallback",
            description="A fallback's name from the plan; empty: the one the services are "
            "already on, else the first that answers.",
            section="Third party",
        ),
    },
    doc_md=__doc__,
)
def dr_third_party_failover():
    @steps.guard(host=FILES_HOST)  # reads where the dependents point now
    def guard(**context) -> dict:
        run = third_party.check_inputs(PLAN, open_incident(context, PLAN), context["params"])
        steps.print_plan_of_actions(run, third_party.plan_of_actions(run))
        notify_started(PLAN, run, DAG_ID, third_party.started_summary(run))
        return run

    @steps.step("check", **NO_RETRY)
    def probe(run: dict, **context) -> dict:
        return third_party.probe_target(PLAN, run)

    @steps.step("destructive", host=FILES_HOST, **NO_RETRY)
    def safety_snapshot(run: dict, probed: dict, **context) -> dict:
        return third_party.take_safety(PLAN, run)

    @steps.step("destructive", host=FILES_HOST, **NO_RETRY)
    def switch_configuration(run: dict, safety: dict, **context) -> dict:
        return third_party.switch_configuration(PLAN, run)

    @steps.step("destructive", host=config.restart_host(PLAN), **NO_RETRY)
    def restart_dependents(run: dict, switched: dict, **context) -> dict:
        return third_party.restart_dependents(PLAN, run, ACCESS)

    @steps.step(
        "destructive", after_all=True, trigger_rule="one_failed", host=FILES_HOST, **NO_RETRY
    )
    def rollback(run: dict, **context) -> dict:
        """Runs when a step after the probe failed (or the gate breached)."""
        safety = context["ti"].xcom_pull(task_ids="safety_snapshot")
        return third_party.roll_back(PLAN, run, safety, ACCESS)

    run = guard()
    safety = safety_snapshot(run, probe(run))
    switched = switch_configuration(run, safety)
    restarted = restart_dependents(run, switched)
    gate = RtoGate(
        task_id="gate_services",
        check=named_check("third_party_switched"),
        incident=run,
        plan=PLAN,
        rto_seconds=RTO_SECONDS,
        **steps.on_host(FILES_HOST),  # reads the settings back; functional checks' samples
    )
    restarted >> gate
    undo = rollback()
    [safety, switched, restarted, gate] >> undo
    scenario_tail(PLAN, run, [gate, undo], record_fields=record_fields)


dr_third_party_failover()
