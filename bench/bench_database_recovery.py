"""Benchmark: the database recovery DAGs against the bare manual steps, in the same run.

    make sandbox-up && . sandbox/env.sh && python bench/bench_database_recovery.py --size 1GB

1. Grows the sandbox's ``tracktion`` database to ``--size`` (generator, append mode) and
   takes a fresh dump and base backup, so both sides restore the same bytes.
2. Full restore: bare ``createdb`` + ``pg_restore -j N`` into a scratch database plus the
   same service stop/start, vs ``dr_database_restore`` end to end (``dag.test()``; it also
   validates and swaps, which the bare steps do not).
3. PITR: bare stop / move aside / copy base backup / recovery.signal / start / wait for
   promotion / restart services, vs ``dr_database_pitr`` end to end.
4. Writes ``bench/results/database_recovery.md`` and ``.json``: seconds for each, the
   ratio (target: DAG within 1.15x of the bare steps) and the per-task orchestration
   overhead (DAG wall time minus the time spent inside its steps and gates).

Not a test: timings are written, never asserted. It changes the sandbox (a bigger database,
kept ``*_pre_*`` copies); ``make sandbox-reset`` afterwards returns to a small one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")

import httpx  # noqa: E402
import psycopg  # noqa: E402

from tracktion_dr.airflow.dag_runs import run_dag, task_result  # noqa: E402
from tracktion_dr.core.timeline import parse_time  # noqa: E402
from tracktion_dr.postgres import basebackups, dumps, pitr  # noqa: E402
from tracktion_dr.postgres.commands import Endpoint  # noqa: E402
from tracktion_dr.services.supervisord import SupervisordController  # noqa: E402
from tracktion_sandbox import connections, generate  # noqa: E402
from tracktion_sandbox import layout as L  # noqa: E402
from tracktion_sandbox.layout import SandboxLayout  # noqa: E402
from tracktion_sandbox.secrets import load_or_create  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SERVICES = ["analysis-service", "tracklist-service", "file-watcher"]  # dependents, start order
BINDIR = Path("/usr/lib/postgresql/15/bin")


def wait_healthy(layout: SandboxLayout) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if all(
                httpx.get(f"{layout.service_url(s)}/health", timeout=2).status_code == 200
                for s in SERVICES
            ):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("services did not come back within 120s")


def bare_restore(
    admin: Endpoint, dump: Path, jobs: int, controller: SupervisordController, layout: SandboxLayout
) -> float:
    scratch = f"tracktion_bench_bare_{int(time.time())}"
    started = time.monotonic()
    for service in reversed(SERVICES):
        controller.stop(service)
    dumps.restore_dump(admin, dump, scratch, jobs=jobs, bindir=BINDIR, owner="tracktion")
    for service in SERVICES:
        controller.start(service)
    wait_healthy(layout)
    elapsed = time.monotonic() - started
    dumps.drop_database(admin, scratch)
    return elapsed


def bare_pitr(
    layout: SandboxLayout, base: Path, controller: SupervisordController, admin: Endpoint
) -> float:
    """The same recovery to latest by hand: standby mode, wait until replay has passed the
    last record the archive holds, promote."""
    from tracktion_dr.postgres.salvage import WalHoldings
    from tracktion_dr.postgres.wal import lsn_to_int

    paths = pitr.ClusterPaths(layout.primary_data)
    tag = f"bench_{int(time.time())}"
    target = pitr.RecoveryTarget("latest")
    started = time.monotonic()
    for service in reversed(SERVICES):
        controller.stop(service)
    pitr.stop_server(paths)
    layout.primary_data.rename(pitr.aside_path(layout.primary_data, tag))
    pitr.lay_down_base_backup(
        base,
        layout.primary_data,
        "postgres",
        tag,
        lambda staging: pitr.write_recovery_settings(
            staging, pitr.restore_command_for(layout.wal_archive), target
        ),
    )
    pitr.start_server(paths, layout.pg_root / f"recovery_{tag}.log")
    end = WalHoldings.restorable_only(layout.wal_archive, BINDIR).end(commit_lookback=0)
    while True:
        state = pitr.recovery_state(admin.conninfo("postgres"))
        if (
            not isinstance(state, str)
            and state.replay_lsn
            and lsn_to_int(state.replay_lsn) > (end.last_record_lsn or 0)
        ):
            break
        time.sleep(0.2)
    pitr.promote_server(admin.conninfo("postgres"))
    for service in SERVICES:
        controller.start(service)
    wait_healthy(layout)
    elapsed = time.monotonic() - started
    pitr.clear_recovery_settings(layout.primary_data)
    return elapsed


def dag_seconds(dag_id: str, conf: dict) -> tuple[float, dict]:
    started = time.monotonic()
    dag_run = run_dag(dag_id, conf)
    elapsed = time.monotonic() - started
    timeline = task_result(dag_run, "record") or {}
    if timeline.get("outcome") != "succeeded":
        raise SystemExit(f"{dag_id} did not succeed: {timeline.get('details')}")
    return elapsed, timeline


def inside_tasks(timeline: dict) -> float:
    return sum(
        (parse_time(e["finished_at"]) - parse_time(e["started_at"])).total_seconds()
        for e in timeline["events"]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="1GB", help="database size to benchmark with")
    parser.add_argument("--jobs", type=int, default=2, help="pg_restore -j")
    args = parser.parse_args()
    layout = SandboxLayout()
    secrets = load_or_create(layout)
    connections.export_to_environ(secrets)
    admin = Endpoint(L.HOST, L.PRIMARY_PORT, L.SUPERUSER, secrets.postgres_password)
    replication = Endpoint(L.HOST, L.PRIMARY_PORT, L.REPLICATION_USER, secrets.replication_password)
    controller = SupervisordController(
        L.HOST, L.SUPERVISOR_PORT, secrets.supervisor_user, secrets.supervisor_password
    )

    print(f"bench: growing tracktion to {args.size} ...", flush=True)
    generate.generate(admin.conninfo("tracktion"), size=args.size, append=True)
    with psycopg.connect(admin.conninfo("tracktion")) as conn:
        size_bytes = conn.execute("SELECT pg_database_size('tracktion')").fetchone()[0]
    print(
        f"bench: database is {size_bytes / 2**30:.2f} GiB; taking a dump and a base backup ...",
        flush=True,
    )
    dump = dumps.take_logical_dump(admin, "tracktion", layout.logical_dumps, bindir=BINDIR)
    base = basebackups.take_base_backup(
        replication, layout.base_backups, label_prefix="bench", bindir=BINDIR
    )

    print("bench: bare pg_restore + service restart ...", flush=True)
    bare_restore_s = bare_restore(admin, dump, args.jobs, controller, layout)
    print("bench: dr_database_restore ...", flush=True)
    dag_restore_s, restore_timeline = dag_seconds(
        "dr_database_restore",
        {"environment": "drill", "database": "tracktion", "backup": dump.name, "jobs": args.jobs},
    )
    print("bench: bare PITR steps ...", flush=True)
    bare_pitr_s = bare_pitr(layout, base, controller, admin)
    print("bench: dr_database_pitr ...", flush=True)
    dag_pitr_s, pitr_timeline = dag_seconds(
        "dr_database_pitr", {"environment": "drill", "cluster": "main", "target_type": "latest"}
    )

    rows = [
        (
            "full restore",
            bare_restore_s,
            dag_restore_s,
            inside_tasks(restore_timeline),
            len(restore_timeline["events"]),
        ),
        (
            "PITR (latest)",
            bare_pitr_s,
            dag_pitr_s,
            inside_tasks(pitr_timeline),
            len(pitr_timeline["events"]),
        ),
    ]
    result = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "database_bytes": size_bytes,
        "dump_bytes": dump.stat().st_size,
        "jobs": args.jobs,
        "machine": f"{os.cpu_count()} cores",
        "rows": [
            {
                "scenario": name,
                "bare_seconds": round(bare, 1),
                "dag_seconds": round(dag, 1),
                "ratio": round(dag / bare, 2),
                "inside_tasks_seconds": round(inside, 1),
                "tasks": tasks,
                "overhead_per_task_seconds": round(max(dag - inside, 0) / tasks, 2),
            }
            for name, bare, dag, inside, tasks in rows
        ],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "database_recovery.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Database recovery benchmark ({result['measured_at']})",
        "",
        f"Database {size_bytes / 2**30:.2f} GiB, dump {result['dump_bytes'] / 2**20:.0f} MiB, pg_restore -j {args.jobs}, {result['machine']}.",
        "",
        "| scenario | bare steps (s) | DAG end to end (s) | DAG / bare | time inside tasks (s) | tasks | orchestration overhead per task (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['scenario']} | {row['bare_seconds']} | {row['dag_seconds']} | {row['ratio']} | "
            f"{row['inside_tasks_seconds']} | {row['tasks']} | {row['overhead_per_task_seconds']} |"
        )
    lines += [
        "",
        "Target: DAG within 1.15x of the bare steps. The DAG also validates (counts, FK, PK, "
        "business rules, pg_amcheck), swaps and measures data loss; the bare steps do none of that.",
    ]
    (RESULTS / "database_recovery.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
