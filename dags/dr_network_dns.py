"""
### DR network and DNS (scenario 5)

Verifies that the plan's public DNS records resolve, from each of the plan's
**viewpoints**, to a site that answers; and, where the plan allows it, **switches** them to
the secondary site (`failover`) or back to the primary (`failback`) with one Route53
change batch, waits until Route53 serves the change everywhere (INSYNC), and verifies
again. The environment's `dns` section in the plan names the hosted zone, the AWS
connection, the viewpoints (`route53_api`: the zone as Route53 serves it; `resolver`: a
DNS resolver, e.g. 8.8.8.8) and each record's primary and secondary values and health
URLs (`allow_switch` marks the records this DAG may change).

**Flow**
1. `guard`: reads each record as Route53 holds it and what it points at (primary,
   secondary, neither). For a switch, **refuses before anything is changed** when a record
   may not be switched or when the site it would point at does not answer its health
   check; asks the typed confirmation `RESTORE dns <zone>` where the environment demands
   it. Prints the plan of actions.
2. `verify_before`: resolution from every viewpoint and reachability of what the records
   point at. For `verify` a problem fails the run; before a switch it is the picture the
   switch answers.
3. `switch_records`: one change batch (UPSERT) of the records Route53 does not already
   hold with their target's values; nothing when every record is already there.
4. `wait_in_sync`: until the change is INSYNC (at most the plan's `sync_timeout`).
5. `gate_dns`: every record, from every viewpoint, holds its target's values and the target
   answers, within the tier's RTO (a resolver viewpoint sees a switch once the record's TTL
   has passed).

Idempotent: a re-run after a switch finds the records on their target and changes
nothing; `failback` switches back once the primary answers again.

**Params**: `action` (`verify` | `failover` | `failback`), `records` (empty: every record
of the zone the action applies to), `confirm`, plus the common params (`dry_run` reads
and probes, prints the change it would make, changes nothing).

Not done here: the plan's other network remedies (a backup ISP, another DNS provider, a
backup CDN) are outside what Route53 can switch. In the sandbox no DNS server serves
moto's Route53, so its only viewpoint reads the zone through the Route53 API.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Param, dag

from tracktion_dr.airflow import steps
from tracktion_dr.airflow.dag_kit import RtoGate, open_incident, scenario_tail
from tracktion_dr.airflow.gate_triggers import named_check
from tracktion_dr.airflow.site_steps import route53_client
from tracktion_dr.airflow.support import DEFAULT_ARGS, common_params
from tracktion_dr.core.plan import load_plan
from tracktion_dr.notify.runs import notify_started
from tracktion_dr.scenarios import network_dns

PLAN = load_plan()
DAG_ID = "dr_network_dns"
RTO_SECONDS = network_dns.rto_seconds(PLAN)


def record_fields(run: dict, context) -> dict:
    switched = context["ti"].xcom_pull(task_ids="switch_records")
    return network_dns.record_fields(run, switched, rto_target_seconds=RTO_SECONDS)


@dag(
    dag_id=DAG_ID,
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "scenario", "network", "dns"],
    default_args=DEFAULT_ARGS,
    params={
        **common_params(PLAN, environment_default=None),
        "action": Param(
            "verify",
            type="string",
            enum=list(network_dns.ACTIONS),
            title="Action",
            description="verify: check only; failover: to the secondary; failback: to the primary.",
            section="DNS",
        ),
        "records": Param(
            [],
            type="array",
            items={"type": "string", "enum": network_dns.record_names(PLAN) or [""]},
            title="Records",
            description="The records to verify or switch; empty: every record the action applies to.",
            section="DNS",
        ),
        "confirm": Param(
            "",
            type="string",
            title="Confirmation",
            description="To switch records where the environment demands it: type RESTORE dns <zone>.",
            section="DNS",
        ),
    },
    doc_md=__doc__,
)
def dr_network_dns():
    @steps.guard()
    def guard(**context) -> dict:
        run = network_dns.check_inputs(
            PLAN, open_incident(context, PLAN), context["params"], route53_client
        )
        steps.print_plan_of_actions(run, network_dns.plan_of_actions(run))
        notify_started(PLAN, run, DAG_ID, network_dns.started_summary(run))
        return run

    @steps.step("check")
    def verify_before(run: dict, **context) -> dict:
        return network_dns.verify_before(PLAN, run, route53_client)

    @steps.step("destructive")
    def switch_records(run: dict, before: dict, **context) -> dict:
        return network_dns.switch_records(PLAN, run, route53_client)

    @steps.step("check")
    def wait_in_sync(run: dict, switched: dict, **context) -> dict:
        return network_dns.wait_in_sync(PLAN, run, switched.get("change_id"), route53_client)

    run = guard()
    synced = wait_in_sync(run, switch_records(run, verify_before(run)))
    gate = RtoGate(
        task_id="gate_dns",
        check=named_check("dns_records_hold"),
        incident=run,
        plan=PLAN,
        rto_seconds=RTO_SECONDS,
        poke_interval=5,
    )
    synced >> gate
    scenario_tail(PLAN, run, [gate], record_fields=record_fields)


dr_network_dns()
