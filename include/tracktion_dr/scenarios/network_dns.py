"""dr_network_dns's decisions (the plan's scenario 5, network and DNS): verify that the
plan's public records resolve, from each of the plan's viewpoints, to the values of a
site that answers; and, where the plan allows it, switch them to the secondary site (or
back to the primary) with one Route53 change batch, wait until Route53 serves it
everywhere (INSYNC), and verify again.

The guard reads each record as Route53 holds it now and decides what it points at
(``primary``, ``secondary`` or neither). A switch is refused before anything is changed
when a record may not be switched (``allow_switch``) or when the site it would point at
does not answer its health check; a record already on its target is left alone, so a
re-run changes nothing. Reachability is probed from the worker that runs the task.

The sandbox has no DNS server for moto's Route53: its plan's only viewpoint reads the
zone through the Route53 API; production adds public resolvers (dnspython), whose answers
include their caches (a switched record is seen there once its TTL has passed).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tracktion_dr.core.errors import FailoverRefused, InvalidInput, StepFailed
from tracktion_dr.core.incident import check_confirmation
from tracktion_dr.core.plan import Dns, DnsRecord, DnsViewpoint, Plan
from tracktion_dr.scenarios import GateCheck, environment_of, joined
from tracktion_dr.services import dns as records_api
from tracktion_dr.services.probes import ProbeFailure, http_health

# AWS connection id -> a boto3 Route53 client
Connect = Callable[[str], Any]
# (URL, timeout seconds) -> what answered; raises ProbeFailure when it does not
Probe = Callable[[str, float], str]

VERIFY, FAILOVER, FAILBACK = "verify", "failover", "failback"
ACTIONS = (VERIFY, FAILOVER, FAILBACK)
PRIMARY, SECONDARY = "primary", "secondary"
SYNC_POLL_SECONDS = 2.0


def probe_health(url: str, timeout: float) -> str:
    return http_health(url)(timeout)


def dns_sections(plan: Plan) -> dict[str, Dns]:
    return {name: env.dns for name, env in plan.environments.items() if env.dns}


def record_names(plan: Plan) -> list[str]:
    return sorted({name for dns in dns_sections(plan).values() for name in dns.records})


def rto_seconds(plan: Plan) -> float:
    targets = [plan.tiers[dns.tier].rto.total_seconds() for dns in dns_sections(plan).values()]
    return min(targets or [t.rto.total_seconds() for t in plan.tiers.values()])


def dns_of(plan: Plan, environment: str) -> Dns:
    dns = plan.environment(environment).dns
    if dns is None:
        raise InvalidInput(
            "environment",
            f"the plan gives the {environment} environment no dns section "
            f"(environments that have one: {sorted(dns_sections(plan))})",
        )
    return dns


def side_of(record: DnsRecord, values: list[str] | None) -> str | None:
    """Which of the plan's targets the values are (None: neither, or no record)."""
    if records_api.same_values(values, record.primary.values):
        return PRIMARY
    if record.secondary and records_api.same_values(values, record.secondary.values):
        return SECONDARY
    return None


def target_side(action: str, record: DnsRecord, on: str | None) -> str | None:
    if action == FAILOVER:
        return SECONDARY
    if action == FAILBACK:
        return PRIMARY
    return on  # verify: the record should stay where it is, on a site that answers


def _target(record: DnsRecord, side: str | None) -> Any:
    return {PRIMARY: record.primary, SECONDARY: record.secondary}.get(side or "")


def check_inputs(
    plan: Plan,
    incident: dict[str, Any],
    params: Any,
    connect: Connect,
    probe: Probe = probe_health,
) -> dict[str, Any]:
    """The run: every selected record as Route53 holds it, its target and whether it must
    change. Refused, nothing touched: an unknown action or record, a switch of a record
    the plan does not allow to switch, a switch to a site that does not answer, a switch
    without the confirmation the environment demands, a zone Route53 does not have."""
    dns = dns_of(plan, incident["environment"])
    action = params.get("action") or VERIFY
    if action not in ACTIONS:
        raise InvalidInput("action", f"{action!r} is not one of {list(ACTIONS)}")
    selected = list(params.get("records") or []) or list(dns.records)
    unknown = [name for name in selected if name not in dns.records]
    if unknown:
        raise InvalidInput(
            "records", f"{unknown} are not records of the plan ({sorted(dns.records)})"
        )
    if action != VERIFY:
        fixed = [name for name in selected if not dns.records[name].allow_switch]
        if fixed and params.get("records"):
            raise InvalidInput(
                "records",
                f"the plan does not allow switching {fixed} (allow_switch is off)",
                hint="leave them out, or set allow_switch and a secondary in the plan",
            )
        selected = [name for name in selected if dns.records[name].allow_switch]
        if not selected:
            raise InvalidInput("action", "the plan allows no record of this zone to be switched")
    client = connect(dns.aws_conn_id)
    zone_id = records_api.hosted_zone_id(client, dns.hosted_zone)
    timeout = dns.probe_timeout.total_seconds()
    records: dict[str, dict[str, Any]] = {}
    down: dict[str, str] = {}
    for name in selected:
        spec = dns.records[name]
        current = records_api.route53_values(client, zone_id, name, spec.type)
        on = side_of(spec, current)
        side = target_side(action, spec, on)
        target = _target(spec, side)
        change = action != VERIFY and side != on
        if change:
            try:
                probe(target.health_url, timeout)
            except ProbeFailure as exc:
                down[name] = f"its {side} {target.health_url} does not answer ({exc})"
        records[name] = {
            "type": spec.type,
            "ttl": spec.ttl,
            "current": current,
            "on": on,
            "target": side,
            "target_values": list(target.values) if target else None,
            "health_url": target.health_url if target else None,
            "change": change,
        }
    if down:
        raise FailoverRefused(
            "nothing was switched: " + joined(down, ""),
            hint="start the site the records would point at, or wait until it answers",
        )
    if any(r["change"] for r in records.values()) and not incident["dry_run"]:
        check_confirmation(
            environment_of(plan, incident).destructive_requires_confirmation,
            params.get("confirm"),
            f"dns {dns.hosted_zone}",
            incident["environment"],
        )
    return {
        **incident,
        "action": action,
        "hosted_zone": dns.hosted_zone,
        "zone_id": zone_id,
        "aws_conn_id": dns.aws_conn_id,
        "records": records,
        "viewpoints": [v.name for v in dns.viewpoints],
        "rto_seconds": plan.tiers[dns.tier].rto.total_seconds(),
        "sync_timeout_seconds": dns.sync_timeout.total_seconds(),
    }


def plan_of_actions(run: dict[str, Any]) -> list[str]:
    changing = {n: r for n, r in run["records"].items() if r["change"]}
    staying = [n for n in run["records"] if n not in changing]
    switch = (
        "switch_records: one Route53 change batch (UPSERT): "
        + "; ".join(
            f"{n} {r['type']} {r['current']} -> {r['target_values']} ({r['target']})"
            for n, r in changing.items()
        )
        if changing
        else "switch_records: nothing to change"
        + (f" ({', '.join(staying)} already where the run wants them)" if staying else "")
    )
    return [
        f"verify_before: resolution from {', '.join(run['viewpoints'])} and reachability of "
        f"what the records point at ({run['action']}: "
        + ("a problem fails the run)" if run["action"] == VERIFY else "a report, not a verdict)"),
        switch,
        f"wait_in_sync: until Route53 serves the change everywhere (INSYNC, at most "
        f"{run['sync_timeout_seconds']:.0f}s)",
        "gate_dns: every record, from every viewpoint, on its target, and the target answers, "
        "within the tier's RTO",
    ]


def started_summary(run: dict[str, Any]) -> str:
    changing = [n for n, r in run["records"].items() if r["change"]]
    return f"DNS {run['action']} in {run['hosted_zone']}: " + (
        f"switching {', '.join(changing)}" if changing else "nothing to switch"
    )


# --- what the viewpoints see -------------------------------------------------------------------


def seen_from(
    viewpoint: DnsViewpoint, client: Any, zone_id: str, name: str, record_type: str, timeout: float
) -> list[str] | None:
    if viewpoint.kind == "route53_api":
        return records_api.route53_values(client, zone_id, name, record_type)
    return records_api.resolver_values(
        viewpoint.address or "", viewpoint.port, name, record_type, timeout
    )


def findings(
    plan: Plan, run: dict[str, Any], connect: Connect, probe: Probe, *, targets: bool
) -> dict[str, str]:
    """record -> what is wrong with it (empty: nothing). Each viewpoint must see the
    values of one of the plan's sites (``targets``: the run's target) and that site must
    answer its health check."""
    dns = dns_of(plan, run["environment"])
    client = connect(dns.aws_conn_id)
    timeout = dns.probe_timeout.total_seconds()
    problems: dict[str, str] = {}
    for name, wanted in run["records"].items():
        spec = dns.records[name]
        sides: set[str | None] = set()
        for viewpoint in dns.viewpoints:
            try:
                values = seen_from(viewpoint, client, run["zone_id"], name, spec.type, timeout)
            except records_api.DnsError as exc:
                problems[name] = f"{viewpoint.name}: {exc}"
                break
            side = side_of(spec, values)
            if targets and side != wanted["target"]:
                problems[name] = (
                    f"{viewpoint.name} sees {values}, not the {wanted['target']} {wanted['target_values']}"
                )
                break
            if side is None:
                problems[name] = (
                    f"{viewpoint.name} sees {values}: neither the primary nor the secondary"
                )
                break
            sides.add(side)
        if name in problems:
            continue
        if len(sides) > 1:
            problems[name] = "the viewpoints disagree: " + ", ".join(sorted(map(str, sides)))
            continue
        (side,) = sides
        url = _target(spec, side).health_url
        try:
            probe(url, timeout)
        except ProbeFailure as exc:
            problems[name] = f"on the {side} ({url}), which does not answer: {exc}"
    return problems


def verify_before(
    plan: Plan, run: dict[str, Any], connect: Connect, probe: Probe = probe_health
) -> dict[str, Any]:
    """Resolution and reachability as they are. For ``verify`` a problem is the run's
    finding (the step fails); before a switch it is the picture the switch answers."""
    problems = findings(plan, run, connect, probe, targets=False)
    names = list(run["records"])
    detail = joined(problems, f"{len(names)} record(s) resolve everywhere to a site that answers")
    status = "failed" if problems and run["action"] == VERIFY else "succeeded"
    return {"detail": detail, "status": status, "problems": problems}


def switch_records(plan: Plan, run: dict[str, Any], connect: Connect) -> dict[str, Any]:
    """UPSERT, in one change batch, every record Route53 does not already hold with its
    target's values (read again now: a re-run or a retry changes only what is missing)."""
    if run["action"] == VERIFY:
        return {
            "detail": "verify only: nothing changed",
            "status": "skipped",
            "change_id": None,
            "switched": [],
        }
    dns = dns_of(plan, run["environment"])
    client = connect(dns.aws_conn_id)
    pending = []
    for name, wanted in run["records"].items():
        now = records_api.route53_values(client, run["zone_id"], name, wanted["type"])
        if records_api.same_values(now, wanted["target_values"]):
            continue
        pending.append(
            {
                "name": name,
                "type": wanted["type"],
                "ttl": wanted["ttl"],
                "values": wanted["target_values"],
            }
        )
    if not pending:
        return {
            "detail": "every record already holds its target's values: nothing changed",
            "status": "skipped",
            "change_id": None,
            "switched": [],
        }
    change_id = records_api.upsert_records(
        client,
        run["zone_id"],
        pending,
        f"{run['incident_id']}: dr_network_dns {run['action']}",
    )
    switched = [record["name"] for record in pending]
    return {
        "detail": f"change {change_id}: "
        + "; ".join(f"{r['name']} -> {r['values']}" for r in pending),
        "change_id": change_id,
        "switched": switched,
    }


def wait_in_sync(
    plan: Plan,
    run: dict[str, Any],
    change_id: str | None,
    connect: Connect,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Poll the change until Route53 reports it INSYNC (served by all its servers)."""
    if not change_id:
        return {"detail": "no change to wait for", "status": "skipped"}
    client = connect(dns_of(plan, run["environment"]).aws_conn_id)
    deadline = clock() + float(run["sync_timeout_seconds"])
    status = records_api.change_status(client, change_id)
    while status != records_api.INSYNC:
        if clock() >= deadline:
            raise StepFailed(
                f"Route53 change {change_id} still {status} after {run['sync_timeout_seconds']:.0f}s"
            )
        sleep(SYNC_POLL_SECONDS)
        status = records_api.change_status(client, change_id)
    return {"detail": f"change {change_id} INSYNC", "change_id": change_id}


def gate_check(plan: Plan, connect: Connect, probe: Probe = probe_health) -> GateCheck:
    """Gate: every record, from every viewpoint, holds its target's values, and the target
    answers (for ``verify``: the site each record is on answers)."""

    def check(run: dict[str, Any]) -> tuple[bool, str]:
        problems = findings(plan, run, connect, probe, targets=run["action"] != VERIFY)
        if problems:
            return False, joined(problems, "")
        return True, f"{len(run['records'])} record(s) resolve to sites that answer"

    return check


def record_fields(
    run: dict[str, Any], switched: dict[str, Any] | None, *, rto_target_seconds: float
) -> dict[str, Any]:
    return {
        "rto_target_seconds": run.get("rto_seconds") or rto_target_seconds,
        "details": {
            "action": run["action"],
            "hosted_zone": run["hosted_zone"],
            "records": {
                n: {"from": r["current"], "target": r["target"]} for n, r in run["records"].items()
            },
            "switched": (switched or {}).get("switched", []),
            "change_id": (switched or {}).get("change_id"),
        },
    }
