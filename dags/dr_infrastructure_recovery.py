"""
### DR infrastructure recovery

The seed's network / storage / compute checks as probes with clear findings, and only the
repairs the plan allows. Replaces `infrastructure_recovery.sh`.

| area | checks (all concurrent, each time-bounded) | repair (only if the plan allows it) |
|---|---|---|
| network | DNS resolution of every host the plan's URLs use, plus `infrastructure.hosts` | none: findings only (this DAG never rewrites `/etc/resolv.conf`) |
| storage | every storage area present and writable, config paths present, free disk vs `min_free_disk_percent` | `repair_directories`: recreate a missing storage directory with the plan's owner and mode |
| compute | available memory vs `min_free_memory_percent` (CPUs, load shown), every service manager (supervisord, Docker engine, systemd) answers | `restart_service_manager`: `systemctl restart docker` for a compose controller |

Docker is pruned **only** when `prune_docker` is set (and only where a compose controller
is in use).

**Flow**: `guard` → `inspect` (findings before) → `repair` → `gate_repaired` (the
repaired findings are OK again, within the critical tier's RTO) → `report` (all findings;
**fails the run** when anything is still failing, naming it) → `record` →
`notify_outcome` + `publish` (report) → `verdict`.

**Params**: `areas` (`network`, `storage`, `compute`; default all), `prune_docker`, and
the common params (`dry_run` lists the repairs it would make).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from airflow.sdk import Param, dag, task

from tracktion_dr.dag_kit import RtoGate, finish_run
from tracktion_dr.dag_support import DEFAULT_ARGS, common_params
from tracktion_dr.plan import load_plan

log = logging.getLogger(__name__)

PLAN = load_plan()
DAG_ID = "dr_infrastructure_recovery"
AREAS = ["network", "storage", "compute"]
# Everything runs on the infrastructure: it is back when the most critical tier could be.
RTO_SECONDS = min(t.rto.total_seconds() for t in PLAN.tiers.values())


def manager_checks(environment) -> dict:
    from tracktion_dr.dag_support import controller
    from tracktion_dr.probes import ProbeFailure
    from tracktion_dr.services.commands import last_lines, run_command

    checks = {}
    for name, spec in environment.controllers.items():
        if spec.kind == "supervisord":

            def check(timeout, spec=spec):
                try:
                    programs = controller(spec).programs()
                except Exception as exc:
                    raise ProbeFailure(str(exc)[:200]) from None
                return f"supervisord answers ({len(programs)} programs)"

        else:
            argv = (
                ["docker", "info", "--format", "{{.ServerVersion}}"]
                if spec.kind == "docker_compose"
                else ["systemctl", "is-system-running"]
            )

            def check(timeout, argv=argv):
                try:
                    result = run_command(argv, timeout)
                except Exception as exc:
                    raise ProbeFailure(str(exc)[:200]) from None
                output = last_lines(result.stdout or result.stderr, 1)
                if result.returncode != 0 and "degraded" not in output:
                    raise ProbeFailure(f"{argv[0]}: {output}")
                return f"{argv[0]} answers: {output}"

        checks[name] = check
    return checks


def findings_now(incident: dict) -> list:
    from tracktion_dr.infrastructure import infrastructure_findings
    from tracktion_dr.plan import load_plan as current_plan

    environment = current_plan().environment(incident["environment"])
    return infrastructure_findings(environment, incident["areas"], manager_checks(environment))


def repaired_are_ok(incident: dict, **_) -> tuple[bool, str]:
    from airflow.sdk import get_current_context

    repaired = get_current_context()["ti"].xcom_pull(task_ids="repair").get("repaired", [])
    if not repaired:
        return True, "nothing was repaired"
    still = [
        f"{f.subject}: {f.detail}"
        for f in findings_now(incident)
        if f.subject in repaired and not f.ok
    ]
    return (not still), "; ".join(still) or f"{len(repaired)} repaired finding(s) OK"


@dag(
    dag_id=DAG_ID,
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "scenario", "infrastructure"],
    default_args=DEFAULT_ARGS,
    params={
        **common_params(PLAN, environment_default=None),
        "areas": Param(
            AREAS,
            type="array",
            items={"type": "string", "enum": AREAS},
            title="Areas",
            description="Which checks to run: network (DNS), storage (mounts, free disk), "
            "compute (memory, service managers).",
            section="Recovery",
        ),
        "prune_docker": Param(
            False,
            type="boolean",
            title="Prune Docker",
            description="Run 'docker system prune --force' on compose hosts. Off unless you "
            "set it: it removes stopped containers and unused images.",
            section="Recovery",
        ),
    },
    doc_md=__doc__,
)
def dr_infrastructure_recovery():
    @task(retries=0)
    def guard(**context) -> dict:
        from tracktion_dr.dag_kit import open_incident
        from tracktion_dr.incident import InvalidInput
        from tracktion_dr.notify.runs import notify_started

        incident = open_incident(context, PLAN)
        areas = list(context["params"]["areas"]) or AREAS
        unknown = [a for a in areas if a not in AREAS]
        if unknown:
            raise InvalidInput("areas", f"unknown {unknown} (choose from {AREAS})")
        incident.update(areas=areas, prune_docker=bool(context["params"]["prune_docker"]))
        notify_started(PLAN, incident, DAG_ID, f"checking {', '.join(areas)}")
        return incident

    @task(retries=0)
    def inspect(incident: dict) -> dict:
        from tracktion_dr.dag_kit import now_iso, step_event
        from tracktion_dr.infrastructure import render_findings

        started = now_iso()
        findings = findings_now(incident)
        log.info("\n%s", render_findings(findings))
        failing = [f for f in findings if not f.ok]
        detail = f"{len(findings) - len(failing)}/{len(findings)} checks OK"
        return {
            "event": step_event("inspect", started, detail=detail),
            "findings": [f.as_dict() for f in findings],
        }

    @task(retries=0)
    def repair(incident: dict, before: dict) -> dict:
        from tracktion_dr.dag_kit import now_iso, step_event
        from tracktion_dr.services.dependencies import ensure_storage_area
        from tracktion_dr.services.systemd import SystemdController

        started = now_iso()
        environment = PLAN.environment(incident["environment"])
        actions: dict[str, str] = {}
        for finding in before["findings"]:
            if finding["ok"] or not finding["repair"]:
                continue
            subject = finding["subject"]
            if incident["dry_run"]:
                actions[subject] = f"dry run: would {finding['repair']}"
            elif finding["area"] == "storage":
                name = subject.split()[0]
                actions[subject] = ensure_storage_area(environment.storage[name])
            elif subject.startswith("service manager "):
                spec = environment.controllers[subject.removeprefix("service manager ")]
                if spec.kind == "docker_compose":
                    SystemdController().restart("docker")
                    actions[subject] = "systemctl restart docker"
                else:
                    actions[subject] = f"no automatic restart for {spec.kind}: restart it by hand"
        compose = [c for c in environment.controllers.values() if c.kind == "docker_compose"]
        if incident["prune_docker"]:
            if not compose:
                actions["docker"] = (
                    "prune_docker set, but no compose controller here: nothing pruned"
                )
            elif incident["dry_run"]:
                actions["docker"] = "dry run: would run docker system prune --force"
            else:
                from tracktion_dr.services.commands import run_command

                result = run_command(["docker", "system", "prune", "--force"], 600)
                actions["docker"] = f"docker system prune --force: exit {result.returncode}"
        for subject, action in actions.items():
            log.info("%s: %s", subject, action)
        repaired = [s for s, a in actions.items() if not a.startswith(("dry run", "no automatic"))]
        status = "skipped" if incident["dry_run"] or not actions else "succeeded"
        detail = "; ".join(f"{s}: {a}" for s, a in actions.items()) or "nothing to repair"
        return {
            "event": step_event("repair", started, status, detail),
            "actions": actions,
            "repaired": repaired,
        }

    incident = guard()
    before = inspect(incident)
    repaired = repair(incident, before)
    gate = RtoGate(
        task_id="gate_repaired",
        check=repaired_are_ok,
        incident=incident,
        plan=PLAN,
        rto_seconds=RTO_SECONDS,
        poke_interval=2,
    )
    repaired >> gate

    @task(trigger_rule="all_done", retries=0)
    def report(incident: dict, **context) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from tracktion_dr.infrastructure import render_findings

        findings = findings_now(incident)
        log.info("\n%s", render_findings(findings))
        context["ti"].xcom_push(key="findings", value=[f.as_dict() for f in findings])
        failing = [f for f in findings if not f.ok]
        if failing and not incident["dry_run"]:
            raise AirflowFailException(
                "infrastructure findings still failing: "
                + "; ".join(f"{f.area} {f.subject}: {f.detail}" for f in failing)
            )
        return {"checks": len(findings), "failing": len(failing)}

    @task(trigger_rule="all_done", retries=0)
    def record(incident: dict, **context) -> dict:
        from tracktion_dr.dag_kit import record_timeline

        ti = context["ti"]
        return record_timeline(
            context,
            incident=incident,
            rto_target_seconds=RTO_SECONDS,
            details={
                "findings_before": (ti.xcom_pull(task_ids="inspect") or {}).get("findings"),
                "repairs": (ti.xcom_pull(task_ids="repair") or {}).get("actions"),
                "findings_after": ti.xcom_pull(task_ids="report", key="findings"),
            },
        )

    reported = report(incident)
    gate >> reported
    recorded = record(incident)
    reported >> recorded
    finish_run(PLAN, incident, recorded)


dr_infrastructure_recovery()
