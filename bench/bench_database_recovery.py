"""Benchmark: the database recovery DAGs under a real scheduler against the bare steps.

    make sandbox-up && . sandbox/env.sh && python bench/bench_database_recovery.py --size 1GB

1. Grows the sandbox's ``tracktion`` database to ``--size`` (the generator, append mode:
   a database already that big is left as it is) and takes a fresh dump and base backup
   with the project's own backup functions, so every side restores the same bytes.
2. Starts a real Airflow (``tracktion_sandbox.airflow_stack``: api-server, scheduler,
   dag-processor as separate processes, LocalExecutor, the scheduler settings the README
   recommends) and triggers each DAG over the REST API, as alerting or an operator does.
3. For each of full restore and PITR (latest), in the same run:
   * **bare** - the same commands by hand, one after another: stop the dependent
     services, restore (``createdb`` + ``pg_restore -j N`` beside, rename swap / stop,
     move aside, lay down the base backup, start, wait for replay, promote), start the
     services, wait until they are healthy and their functional checks pass;
   * **bare + validation** - the same, plus the DAG's validation (the library's
     ``validate_database``: counts, FK orphans, duplicate PKs, business rules,
     ``pg_amcheck``) where the DAG runs it;
   * **DAG** - triggered over REST; *time to service restored* = from the trigger until
     the last service gate opened; *time to redundancy restored* = until the standby
     re-seed finished (PITR).
4. Reports per run: those times, the ratio to the bare steps (targets: ≤ 1.3x at 1 GB,
   ≤ 1.15x at 10 GB, against bare *without* validation) and the **orchestration
   overhead** = DAG time to service − bare-with-validation time (target ≤ 5 s), split into
   the scheduling gaps between the tasks on the critical path and the task runners' own
   start-up (task duration − the step's measured work). Writes
   ``bench/results/database_recovery_<size>.md`` and ``.json``.

Not a test: timings are written, never asserted. It changes the sandbox: a bigger
database, and between rounds it removes what no later round uses (the ``*_pre_*`` copies
the runs kept, archived WAL older than the primary's current segment, its own base
backups but the newest) so a 10 GB run fits the disk; ``make sandbox-reset`` afterwards
returns to a small sandbox with a full archive again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tracktion_dr.core.plan import load_plan
from tracktion_dr.core.timeline import parse_time
from tracktion_dr.postgres import basebackups, dumps, pitr
from tracktion_dr.postgres.commands import Endpoint
from tracktion_dr.postgres.integrity import validate_database
from tracktion_dr.postgres.salvage import WalHoldings
from tracktion_dr.postgres.wal import Segment, lsn_to_int
from tracktion_dr.scenarios.database import start_services, stop_services
from tracktion_dr.services.checks import functional_checks, service_health
from tracktion_dr.services.supervisord import SupervisordController
from tracktion_sandbox import connections, generate
from tracktion_sandbox import layout as L
from tracktion_sandbox.airflow_stack import LOW_LATENCY, AirflowStack
from tracktion_sandbox.layout import SandboxLayout
from tracktion_sandbox.secrets import load_or_create

RESULTS = Path(__file__).resolve().parent / "results"
BINDIR = Path("/usr/lib/postgresql/15/bin")
ENVIRONMENT = "drill"
SERVICE_GATES = ("gate_database_accepts", "gate_services_healthy", "gate_functional_checks")
TARGETS = {"overhead_seconds": 5.0, "ratio_1GB": 1.3, "ratio_10GB": 1.15}


class Bare:
    """The bare steps, with the sandbox's real controllers and the plan's services."""

    def __init__(self, layout: SandboxLayout, secrets: Any):
        self.layout = layout
        self.environment = load_plan().environment(ENVIRONMENT)
        self.services = self.environment.start_order(self.environment.dependents_of("tracktion"))
        self.admin = Endpoint(L.HOST, L.PRIMARY_PORT, L.SUPERUSER, secrets.postgres_password)
        self.secrets = secrets

    def controller(self, _spec: Any) -> SupervisordController:
        return SupervisordController(
            L.HOST,
            L.SUPERVISOR_PORT,
            self.secrets.supervisor_user,
            self.secrets.supervisor_password,
        )

    def stop(self) -> None:
        stop_services(self.environment, self.services, self.controller)

    def start_and_wait(self) -> None:
        start_services(self.environment, self.services, self.controller)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            healthy, _ = service_health(self.environment, self.services, timeout=2)
            if healthy and functional_checks(self.environment, self.services)[0]:
                return
            time.sleep(0.1)
        raise SystemExit("bench: services did not come back within 300 s")

    def validate(self, database: str, expected_counts: dict[str, int] | None = None) -> None:
        report = validate_database(
            self.admin,
            database,
            expected_counts=expected_counts,
            bindir=BINDIR,
            install_amcheck=expected_counts is not None,
        )
        if not report.ok:
            raise SystemExit(f"bench: bare validation of {database} failed: {report.problems}")

    def restore(self, dump: Path, jobs: int, validated: bool) -> float:
        """Restore beside, (validate,) swap by rename - the DAG's commands by hand."""
        tag = f"bench{int(time.time())}"
        scratch, aside = f"tracktion_restore_{tag}", f"tracktion_pre_{tag}"
        started = time.monotonic()
        self.stop()
        dumps.restore_dump(self.admin, dump, scratch, jobs=jobs, bindir=BINDIR, owner="tracktion")
        if validated:
            self.validate(scratch, dumps.read_manifest(dump)["row_counts"])
        with psycopg.connect(self.admin.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity "
                "WHERE datname = 'tracktion' AND pid <> pg_catalog.pg_backend_pid()"
            )
            for old, new in (("tracktion", aside), (scratch, "tracktion")):
                conn.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(old), sql.Identifier(new)
                    )
                )
        self.start_and_wait()
        elapsed = time.monotonic() - started
        dumps.drop_database(self.admin, aside)  # the bench's own copy, not a recovery's
        return elapsed

    def pitr(self, base: Path, validated: bool) -> float:
        """Standby mode to the end of the archive, (validate read-only,) promote."""
        layout = self.layout
        paths = pitr.ClusterPaths(layout.primary_data)
        tag = f"bench_{int(time.time())}"
        started = time.monotonic()
        self.stop()
        pitr.stop_server(paths)
        layout.primary_data.rename(pitr.aside_path(layout.primary_data, tag))
        pitr.lay_down_base_backup(
            base,
            layout.primary_data,
            "postgres",
            tag,
            lambda staging: pitr.write_recovery_settings(
                staging, pitr.restore_command_for(layout.wal_archive), pitr.RecoveryTarget("latest")
            ),
        )
        pitr.start_server(paths, layout.pg_root / f"recovery_{tag}.log")
        end = WalHoldings.restorable_only(layout.wal_archive, BINDIR).end(commit_lookback=0)
        while True:
            state = pitr.recovery_state(self.admin.conninfo("postgres"))
            if (
                not isinstance(state, str)
                and state.replay_lsn
                and lsn_to_int(state.replay_lsn) > (end.last_record_lsn or 0)
            ):
                break
            time.sleep(0.1)
        if validated:
            self.validate("tracktion")
        pitr.promote_server(self.admin.conninfo("postgres"))
        self.start_and_wait()
        elapsed = time.monotonic() - started
        pitr.clear_recovery_settings(layout.primary_data)
        return elapsed


def write_after_backup(admin: Endpoint, megabytes: int) -> None:
    """About ``megabytes`` of WAL in a bench table, then the segment switched and archived."""
    with psycopg.connect(admin.conninfo("tracktion"), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_after_backup (id bigint, filler text)")
        conn.execute(
            "INSERT INTO bench_after_backup SELECT i, pg_catalog.repeat('x', 900) "
            "FROM pg_catalog.generate_series(1, %s) AS i",
            (megabytes * 1024,),
        )
        segment = conn.execute(
            "SELECT pg_catalog.pg_walfile_name(pg_catalog.pg_switch_wal())"
        ).fetchone()[0]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            archived = conn.execute(
                "SELECT last_archived_wal FROM pg_catalog.pg_stat_archiver"
            ).fetchone()[0]
            if archived and archived >= segment:
                return
            time.sleep(0.1)
    raise SystemExit(f"bench: {segment} was not archived within 120 s")


def discard_kept_copies(bare: Bare, base_backups_taken: list[Path]) -> None:
    """The bench's own sandbox, not a recovery: the copies each run kept (``*.pre_*``
    data directories, ``tracktion_pre_*`` databases) are removed so a 10 GB run fits the
    disk, and so are the WAL and base backups no later round can use."""
    trim_wal_archive(bare, base_backups_taken)
    for kept in bare.layout.pg_root.glob("*.pre_*"):
        shutil.rmtree(kept)
    with psycopg.connect(bare.admin.conninfo("postgres"), autocommit=True) as conn:
        names = conn.execute(
            "SELECT datname FROM pg_catalog.pg_database WHERE datname LIKE 'tracktion\\_pre\\_%'"
        ).fetchall()
    for (name,) in names:
        dumps.drop_database(bare.admin, name)


def trim_wal_archive(bare: Bare, base_backups_taken: list[Path]) -> None:
    """The bench's own sandbox: archived WAL older than both the segment the primary writes
    now and every replication slot's restart point is removed, and so are the bench's base
    backups but the newest. Every later PITR round starts from a base backup taken after
    this point and a restore needs no WAL, so nothing measured loses what it replays; a
    10 GB run's generation alone archives ~18 GB of WAL, and each restore round a
    database's worth."""
    with psycopg.connect(bare.admin.conninfo("postgres")) as conn:
        keep_from = conn.execute(
            "SELECT pg_catalog.pg_walfile_name(LEAST(pg_catalog.pg_current_wal_lsn(), "
            "(SELECT min(restart_lsn) FROM pg_catalog.pg_replication_slots)))"
        ).fetchone()[0]  # type: ignore[index]
    oldest_kept = Segment.parse(keep_from).number
    removed = 0
    for path in bare.layout.wal_archive.iterdir():
        head = path.name.split(".", 1)[0]  # <segment>, <segment>.zst, <segment>.<off>.backup
        try:
            segment = Segment.parse(head)
        except ValueError:
            continue  # timeline history files and anything else stay
        if len(head) == 24 and segment.number < oldest_kept:
            path.unlink()
            removed += 1
    for old in base_backups_taken[:-1]:
        for path in [old, *old.parent.glob(f"{old.name}.*")]:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    del base_backups_taken[:-1]
    print(f"bench: trimmed {removed} archived WAL files older than {keep_from}", flush=True)


def _t(value: str | None) -> float | None:
    return parse_time(value).timestamp() if value else None


def dag_run(stack: AirflowStack, dag_id: str, conf: dict[str, Any]) -> dict[str, Any]:
    """Trigger over REST, wait, and read where the time went."""
    triggered = time.time()
    run_id = stack.trigger(dag_id, conf)
    state = stack.wait_for_run(dag_id, run_id, timeout=4 * 3600)
    if state != "success":
        raise SystemExit(f"bench: {dag_id} {run_id} ended {state}\n{stack.log_tail()}")
    instances = {ti["task_id"]: ti for ti in stack.task_instances(dag_id, run_id)}
    upstream = {
        task["task_id"]: set()
        for task in stack.api("GET", f"/api/v2/dags/{dag_id}/tasks").json()["tasks"]
    }
    for task in stack.api("GET", f"/api/v2/dags/{dag_id}/tasks").json()["tasks"]:
        for downstream in task["downstream_task_ids"]:
            upstream[downstream].add(task["task_id"])
    gates = [g for g in SERVICE_GATES if g in instances and instances[g]["end_date"]]
    last_gate = max(gates, key=lambda g: _t(instances[g]["end_date"]) or 0)
    service_at = _t(instances[last_gate]["end_date"])
    reseed = instances.get("reseed_replica", {}).get("end_date")

    # The critical path to service: back from the last gate, always through the upstream
    # task that finished last.
    path, task_id = [], last_gate
    while task_id:
        path.append(task_id)
        done = [u for u in upstream[task_id] if instances.get(u, {}).get("end_date")]
        task_id = max(done, key=lambda u: _t(instances[u]["end_date"]) or 0) if done else None
    path.reverse()
    gaps, runner, work = 0.0, 0.0, 0.0
    previous_end = triggered
    per_task = []
    for task_id in path:
        ti = instances[task_id]
        start, end = _t(ti["start_date"]), _t(ti["end_date"])
        gaps += max(0.0, start - previous_end)
        event = (stack.xcom(dag_id, run_id, task_id) or {}).get("event") or {}
        inside = (
            _t(event["finished_at"]) - _t(event["started_at"])
            if event.get("started_at") and event.get("finished_at")
            else end - start
        )
        work += inside
        runner += max(0.0, (end - start) - inside)
        per_task.append(
            {
                "task": task_id,
                "gap": round(max(0.0, start - previous_end), 2),
                "task_seconds": round(end - start, 2),
                "work_seconds": round(inside, 2),
            }
        )
        previous_end = end
    return {
        "run_id": run_id,
        "service_seconds": round(service_at - triggered, 2),
        "redundancy_seconds": round(_t(reseed) - triggered, 2) if reseed else None,
        "critical_path": path,
        "work_on_path_seconds": round(work, 2),
        "scheduling_gaps_seconds": round(gaps, 2),
        "task_runner_seconds": round(runner, 2),
        "guard_seconds": next((t["task_seconds"] for t in per_task if t["task"] == "guard"), None),
        "per_task": per_task,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="1GB", help="database size to benchmark with")
    parser.add_argument("--jobs", type=int, default=2, help="pg_restore -j")
    parser.add_argument("--only", choices=["restore", "pitr"], help="one scenario only")
    parser.add_argument(
        "--wal-mb", type=int, default=64, help="WAL written after each PITR's base backup"
    )
    args = parser.parse_args()
    layout = SandboxLayout()
    secrets = load_or_create(layout)
    connections.export_to_environ(secrets)
    bare = Bare(layout, secrets)
    replication = Endpoint(L.HOST, L.PRIMARY_PORT, L.REPLICATION_USER, secrets.replication_password)

    print(f"bench: growing tracktion to {args.size} ...", flush=True)
    generate.generate(bare.admin.conninfo("tracktion"), size=args.size, append=True)
    with psycopg.connect(bare.admin.conninfo("tracktion")) as conn:
        size_bytes = conn.execute("SELECT pg_catalog.pg_database_size('tracktion')").fetchone()[0]
    print(f"bench: {size_bytes / 2**30:.2f} GiB; a dump and a base backup ...", flush=True)
    dump = dumps.take_logical_dump(bare.admin, "tracktion", layout.logical_dumps, bindir=BINDIR)
    base = basebackups.take_base_backup(
        replication, layout.base_backups, label_prefix="bench", bindir=BINDIR
    )
    base_backup_bytes = basebackups.directory_size(base)  # it is trimmed away later
    base_backups_taken = [base]
    trim_wal_archive(bare, base_backups_taken)  # the generation's WAL: no round replays it

    def fresh_pitr_round() -> Path:
        """Every PITR replays the same WAL: a new base backup, then the same writes after
        it (archived), so no run replays what an earlier run (or a restore) wrote."""
        newest = basebackups.take_base_backup(
            replication, layout.base_backups, label_prefix="bench", bindir=BINDIR
        )
        base_backups_taken.append(newest)
        write_after_backup(bare.admin, args.wal_mb)
        return newest

    stack = AirflowStack(
        Path(tempfile.mkdtemp(prefix="bench-airflow-")), api_port=18380, triggerer=True
    )
    rows = []
    try:
        stack.start()
        stack.wait_for_dags(unpause=["dr_database_restore", "dr_database_pitr"])
        # A deployment's workers are up long before the worst night: one dry run of each
        # DAG first, so the first measured task is not the stack's first task process.
        for dag_id, conf in (
            ("dr_database_restore", {"environment": ENVIRONMENT, "database": "tracktion"}),
            (
                "dr_database_pitr",
                {"environment": ENVIRONMENT, "cluster": "main", "target_type": "latest"},
            ),
        ):
            stack.wait_for_run(dag_id, stack.trigger(dag_id, {**conf, "dry_run": True}), 600)
        scenarios = [
            (
                "full restore",
                "dr_database_restore",
                {
                    "environment": ENVIRONMENT,
                    "database": "tracktion",
                    "backup": dump.name,
                    "jobs": args.jobs,
                },
                lambda validated: bare.restore(dump, args.jobs, validated),
            ),
            (
                "PITR (latest)",
                "dr_database_pitr",
                {"environment": ENVIRONMENT, "cluster": "main", "target_type": "latest"},
                lambda validated: bare.pitr(fresh_pitr_round(), validated),
            ),
        ]
        for name, dag_id, conf, bare_run in scenarios:
            if args.only and args.only not in dag_id:
                continue
            print(f"bench: {name}: bare steps ...", flush=True)
            bare_s = bare_run(False)
            discard_kept_copies(bare, base_backups_taken)
            print(f"bench: {name}: bare steps + validation ...", flush=True)
            bare_validated_s = bare_run(True)
            discard_kept_copies(bare, base_backups_taken)
            print(f"bench: {name}: {dag_id} over REST ...", flush=True)
            if dag_id == "dr_database_pitr":
                fresh_pitr_round()  # the DAG's guard takes the newest base backup
            measured = dag_run(stack, dag_id, conf)
            discard_kept_copies(bare, base_backups_taken)
            rows.append(
                {
                    "scenario": name,
                    "dag_id": dag_id,
                    "bare_seconds": round(bare_s, 2),
                    "bare_validated_seconds": round(bare_validated_s, 2),
                    **measured,
                    "ratio_to_bare": round(measured["service_seconds"] / bare_s, 2),
                    "overhead_seconds": round(measured["service_seconds"] - bare_validated_s, 2),
                }
            )
            print(json.dumps(rows[-1], indent=2), flush=True)
    finally:
        stack.stop()

    ratio_target = TARGETS["ratio_10GB"] if size_bytes >= 5 * 2**30 else TARGETS["ratio_1GB"]
    result = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "database_bytes": size_bytes,
        "dump_bytes": dump.stat().st_size,
        "base_backup_bytes": base_backup_bytes,
        "jobs": args.jobs,
        "machine": f"{os.cpu_count()} cores",
        "scheduler": "real: api-server + scheduler + dag-processor, LocalExecutor, REST trigger",
        "scheduler_settings": LOW_LATENCY,
        "targets": {"overhead_seconds": TARGETS["overhead_seconds"], "ratio": ratio_target},
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    label = f"{round(size_bytes / 2**30)}GB"
    (RESULTS / f"database_recovery_{label}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Database recovery benchmark, {label} ({result['measured_at']})",
        "",
        f"Database {size_bytes / 2**30:.2f} GiB, dump {result['dump_bytes'] / 2**20:.0f} MiB, "
        f"base backup {result['base_backup_bytes'] / 2**20:.0f} MiB, pg_restore -j {args.jobs}, "
        f"{result['machine']}; {result['scheduler']}.",
        "",
        "| scenario | bare (s) | bare + validation (s) | DAG: service restored (s) | DAG / bare "
        f"(target ≤ {ratio_target}) | overhead (s, target ≤ {TARGETS['overhead_seconds']:.0f}) "
        "| of which scheduling gaps / task start-up / guard (s) | redundancy restored (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['scenario']} | {row['bare_seconds']} | {row['bare_validated_seconds']} | "
            f"{row['service_seconds']} | {row['ratio_to_bare']} | {row['overhead_seconds']} | "
            f"{row['scheduling_gaps_seconds']} / {row['task_runner_seconds']} / "
            f"{row['guard_seconds']} | "
            f"{row['redundancy_seconds'] or '-'} |"
        )
    lines += [""] + [
        f"Critical path of {row['dag_id']}: {' → '.join(row['critical_path'])} "
        f"({len(row['critical_path'])} tasks, {row['work_on_path_seconds']} s of work)."
        for row in rows
    ]
    (RESULTS / f"database_recovery_{label}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
