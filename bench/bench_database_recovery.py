"""Benchmark: the database recovery DAGs under a real scheduler against the bare steps.

    make sandbox-up && . sandbox/env.sh && python bench/bench_database_recovery.py --size 1GB
    python bench/bench_database_recovery.py --compose --size 1GB    # the compose deployment

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
   With ``--compose`` the same is measured in the compose deployment (docker-compose.yaml's
   ``topology`` profile, brought up in a project of its own, ``tracktion-bench``, and
   removed afterwards unless ``--keep``): CeleryExecutor, each step on its host's worker;
   the bare steps run on the database host ``db-primary`` (this file, fed to its Python by
   ``compose exec``: ``step ...`` below), against the plan's own cluster, controller and
   services there, as the DAG's steps do.
4. Reports per run: those times, the ratio to the bare steps (targets: ≤ 1.3x at 1 GB,
   ≤ 1.15x at 10 GB, against bare *without* validation) and the **orchestration
   overhead** = DAG time to service − bare-with-validation time (target ≤ 5 s), split into
   the scheduling gaps between the tasks on the critical path and the task runners' own
   start-up (task duration − the step's measured work). Writes
   ``bench/results/database_recovery_<size>.md`` and ``.json`` (``--compose``:
   ``database_recovery_compose_<size>.*``).

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
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
from psycopg import sql

from tracktion_dr.airflow import support
from tracktion_dr.backups.catalog import local_path
from tracktion_dr.core.plan import load_plan
from tracktion_dr.core.timeline import parse_time
from tracktion_dr.postgres import basebackups, dumps, pitr
from tracktion_dr.postgres.control import cluster_control
from tracktion_dr.postgres.integrity import validate_database
from tracktion_dr.postgres.salvage import WalHoldings
from tracktion_dr.postgres.wal import Segment, lsn_to_int
from tracktion_dr.scenarios.database import start_services, stop_services
from tracktion_dr.services.checks import functional_checks, service_health

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
ENVIRONMENT = "drill"
CLUSTER = "main"
SERVICE_GATES = ("gate_database_accepts", "gate_services_healthy", "gate_functional_checks")
TARGETS = {"overhead_seconds": 5.0, "ratio_1GB": 1.3, "ratio_10GB": 1.15}
# The bench's own base backups, listed beside them (several processes take them in a
# compose run): all but the newest are removed between rounds.
TAKEN_LIST = ".bench_base_backups"
COMPOSE_PROJECT = "tracktion-bench"
COMPOSE_API_PORT = "18381"
DB_HOST_SERVICE = "db-primary"  # the compose service that is the cluster's host


class Bare:
    """The bare steps, by hand, on the plan's own cluster, controller and services: the
    sandbox's, or a compose host's when this file runs there (the same plan the DAG reads,
    through the same Airflow connections)."""

    def __init__(self, functional_here: bool = True) -> None:
        # In the compose deployment a functional check uploads a sample file that lives on
        # the application host: there it is a step of its own (``functional``).
        self.functional_here = functional_here
        self.environment = load_plan().environment(ENVIRONMENT)
        self.cluster = self.environment.clusters[CLUSTER]
        self.services = self.environment.start_order(self.environment.dependents_of("tracktion"))
        self.admin = support.endpoint(self.cluster.conn_id)
        self.replication = support.endpoint(self.cluster.replication_conn_id)
        self.control = cluster_control(self.cluster)
        self.bindir = Path(self.cluster.bin_dir)
        backups = self.environment.backups
        self.dumps = local_path(backups.logical)
        self.base_backups = local_path(backups.base)
        self.wal_archive = local_path(backups.wal_archive)

    def stop(self) -> None:
        stop_services(self.environment, self.services, support.controller)

    def start_and_wait(self) -> None:
        start_services(self.environment, self.services, support.controller)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            healthy, _ = service_health(self.environment, self.services, timeout=2)
            if healthy and (not self.functional_here or self.functional_checks_pass()):
                return
            time.sleep(0.1)
        raise SystemExit("bench: services did not come back within 300 s")

    def functional_checks_pass(self) -> bool:
        return functional_checks(self.environment, self.services)[0]

    def wait_functional(self) -> float:
        started = time.monotonic()
        while not self.functional_checks_pass():
            if time.monotonic() - started > 300:
                raise SystemExit("bench: functional checks did not pass within 300 s")
            time.sleep(0.1)
        return time.monotonic() - started

    def validate(self, database: str, expected_counts: dict[str, int] | None = None) -> None:
        report = validate_database(
            self.admin,
            database,
            expected_counts=expected_counts,
            bindir=self.bindir,
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
        dumps.restore_dump(
            self.admin, dump, scratch, jobs=jobs, bindir=self.bindir, owner="tracktion"
        )
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
        data = self.control.data_directory
        tag = f"bench_{int(time.time())}"
        started = time.monotonic()
        self.stop()
        pitr.stop_server(self.control)
        data.rename(pitr.aside_path(data, tag))
        pitr.lay_down_base_backup(
            base,
            data,
            self.control.os_user,
            tag,
            lambda staging: pitr.write_recovery_settings(
                staging, pitr.restore_command_for(self.wal_archive), pitr.RecoveryTarget("latest")
            ),
        )
        pitr.start_server(self.control, data.parent / f"recovery_{tag}.log")
        end = WalHoldings.restorable_only(self.wal_archive, self.bindir).end(commit_lookback=0)
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
        pitr.clear_recovery_settings(data)
        return elapsed

    # -- the bench's own housekeeping ---------------------------------------------------

    def take_base_backup(self) -> Path:
        base = basebackups.take_base_backup(
            self.replication, self.base_backups, label_prefix="bench", bindir=self.bindir
        )
        with (self.base_backups / TAKEN_LIST).open("a") as taken:
            taken.write(base.name + "\n")
        return base

    def newest_base_backup(self) -> Path:
        names = (self.base_backups / TAKEN_LIST).read_text().split()
        return self.base_backups / names[-1]

    def write_after_backup(self, megabytes: int) -> None:
        """About ``megabytes`` of WAL in a bench table, then the segment switched and
        archived."""
        with psycopg.connect(self.admin.conninfo("tracktion"), autocommit=True) as conn:
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

    def fresh_pitr_round(self, wal_mb: int) -> Path:
        """Every PITR replays the same WAL: a new base backup, then the same writes after
        it (archived), so no run replays what an earlier run (or a restore) wrote."""
        newest = self.take_base_backup()
        self.write_after_backup(wal_mb)
        return newest

    def discard_kept_copies(self) -> None:
        """The bench's own cluster, not a recovery: the copies each run kept (``*.pre_*``
        data directories, ``tracktion_pre_*`` databases) are removed so a 10 GB run fits
        the disk, and so are the WAL and base backups no later round can use."""
        self.trim_wal_archive()
        for kept in self.control.data_directory.parent.glob("*.pre_*"):
            shutil.rmtree(kept)
        with psycopg.connect(self.admin.conninfo("postgres"), autocommit=True) as conn:
            names = conn.execute(
                "SELECT datname FROM pg_catalog.pg_database "
                "WHERE datname LIKE 'tracktion\\_pre\\_%'"
            ).fetchall()
        for (name,) in names:
            dumps.drop_database(self.admin, name)

    def trim_wal_archive(self) -> None:
        """Archived WAL older than both the segment the primary writes now and every
        replication slot's restart point is removed, and so are the bench's base backups
        but the newest. Every later PITR round starts from a base backup taken after this
        point and a restore needs no WAL, so nothing measured loses what it replays; a
        10 GB run's generation alone archives ~18 GB of WAL, and each restore round a
        database's worth."""
        with psycopg.connect(self.admin.conninfo("postgres")) as conn:
            keep_from = conn.execute(
                "SELECT pg_catalog.pg_walfile_name(LEAST(pg_catalog.pg_current_wal_lsn(), "
                "(SELECT min(restart_lsn) FROM pg_catalog.pg_replication_slots)))"
            ).fetchone()[0]  # type: ignore[index]
        oldest_kept = Segment.parse(keep_from).number
        removed = 0
        for path in self.wal_archive.iterdir():
            head = path.name.split(".", 1)[0]  # <segment>, <segment>.zst, <seg>.<off>.backup
            try:
                segment = Segment.parse(head)
            except ValueError:
                continue  # timeline history files and anything else stay
            if len(head) == 24 and segment.number < oldest_kept:
                path.unlink()
                removed += 1
        listed = self.base_backups / TAKEN_LIST
        names = listed.read_text().split() if listed.exists() else []
        for name in names[:-1]:
            old = self.base_backups / name
            for path in [old, *old.parent.glob(f"{old.name}.*")]:
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        if names:
            listed.write_text(names[-1] + "\n")
        print(f"bench: trimmed {removed} archived WAL files older than {keep_from}", flush=True)


# --- the steps, by name: in this process (the sandbox) or on the compose DB host -----------


def run_step(name: str, args: argparse.Namespace) -> dict[str, Any]:
    bare = Bare(functional_here=not args.functional_elsewhere)
    if name == "prepare":
        from tracktion_sandbox import generate

        print(f"bench: growing tracktion to {args.size} ...", file=sys.stderr, flush=True)
        generate.generate(bare.admin.conninfo("tracktion"), size=args.size, append=True)
        with psycopg.connect(bare.admin.conninfo("tracktion")) as conn:
            size = conn.execute("SELECT pg_catalog.pg_database_size('tracktion')").fetchone()[0]
        print(f"bench: {size / 2**30:.2f} GiB; a dump, a base backup", file=sys.stderr, flush=True)
        dump = dumps.take_logical_dump(bare.admin, "tracktion", bare.dumps, bindir=bare.bindir)
        base = bare.take_base_backup()
        base_bytes = basebackups.directory_size(base)  # it is trimmed away later
        bare.trim_wal_archive()  # the generation's WAL: no round replays it
        return {
            "database_bytes": size,
            "dump": dump.name,
            "dump_bytes": dump.stat().st_size,
            "base_backup_bytes": base_bytes,
        }
    if name == "restore":
        return {"seconds": bare.restore(bare.dumps / args.dump, args.jobs, args.validated)}
    if name == "pitr":
        return {"seconds": bare.pitr(bare.fresh_pitr_round(args.wal_mb), args.validated)}
    if name == "fresh-round":
        return {"base_backup": bare.fresh_pitr_round(args.wal_mb).name}
    if name == "discard":
        bare.discard_kept_copies()
        return {}
    if name == "functional":
        return {"seconds": bare.wait_functional()}
    raise SystemExit(f"bench: no step {name!r}")


class LocalSteps:
    """The steps in this process, against the sandbox."""

    functional_elsewhere = False

    def __call__(self, name: str, host: str = "", **options: Any) -> dict[str, Any]:
        return run_step(name, argparse.Namespace(**{**STEP_DEFAULTS, **options}))


STEP_DEFAULTS: dict[str, Any] = {
    "size": "1GB",
    "dump": "",
    "jobs": 2,
    "validated": False,
    "wal_mb": 64,
    "functional_elsewhere": False,
}


class ComposeSteps:
    """The steps on the compose deployment's database host: this file on its Python's
    standard input (the image has the project, not bench/), as root like its DR agent."""

    functional_elsewhere = True

    def __init__(self, compose: list[str], env: dict[str, str]):
        self.compose, self.env = compose, env

    def __call__(self, name: str, host: str = DB_HOST_SERVICE, **options: Any) -> dict[str, Any]:
        argv = ["step", name]
        options = {**STEP_DEFAULTS, "functional_elsewhere": True, **options}
        for key, value in options.items():
            if isinstance(value, bool):
                argv += [f"--{key.replace('_', '-')}"] if value else []
            else:
                argv += [f"--{key.replace('_', '-')}", str(value)]
        command = [*self.compose, "exec", "-T", host, "python", "-", *argv]
        done = subprocess.run(
            command,
            cwd=ROOT,
            env=self.env,
            input=Path(__file__).read_text(),
            capture_output=True,
            text=True,
        )
        sys.stderr.write(done.stderr[-4000:])
        if done.returncode != 0:
            raise SystemExit(f"bench: {shlex.join(command)} exited {done.returncode}")
        return json.loads(done.stdout.strip().splitlines()[-1])


# --- Airflow over REST: the sandbox's own stack, or the compose deployment's API -----------


class ComposeAirflow:
    """The compose deployment's REST API, with the calls ``dag_run`` makes."""

    def __init__(self, compose: list[str], env: dict[str, str], url: str, password: str):
        self.compose, self.env = compose, env
        self.http = httpx.Client(base_url=url, timeout=60)
        answer = self.http.post("/auth/token", json={"username": "admin", "password": password})
        answer.raise_for_status()
        self.http.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, path, **kwargs)

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        response = self.api(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf}
        )
        response.raise_for_status()
        return response.json()["dag_run_id"]

    def unpause(self, dag_id: str) -> None:
        self.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False}).raise_for_status()

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")
            response.raise_for_status()
            if response.json()["state"] in ("success", "failed"):
                return response.json()["state"]
            time.sleep(0.5)
        raise SystemExit(f"bench: {dag_id} {run_id} did not finish within {timeout:.0f} s")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances"
        response = self.api("GET", path, params={"limit": 200})
        response.raise_for_status()
        return response.json()["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        path = (
            f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"
            f"/xcomEntries/{key}"
        )
        response = self.api("GET", path, params={"deserialize": True, "stringify": False})
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()["value"]

    def log_tail(self, lines: int = 40) -> str:
        done = subprocess.run(
            [*self.compose, "logs", "--no-color", "--tail", str(lines)],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
        )
        return done.stdout[-8000:]


def _t(value: str | None) -> float | None:
    return parse_time(value).timestamp() if value else None


def dag_run(stack: Any, dag_id: str, conf: dict[str, Any]) -> dict[str, Any]:
    """Trigger over REST, wait, and read where the time went."""
    triggered = time.time()
    run_id = stack.trigger(dag_id, conf)
    state = stack.wait_for_run(dag_id, run_id, timeout=4 * 3600)
    if state != "success":
        raise SystemExit(f"bench: {dag_id} {run_id} ended {state}\n{stack.log_tail()}")
    instances = {ti["task_id"]: ti for ti in stack.task_instances(dag_id, run_id)}
    tasks = stack.api("GET", f"/api/v2/dags/{dag_id}/tasks").json()["tasks"]
    upstream: dict[str, set[str]] = {task["task_id"]: set() for task in tasks}
    for task in tasks:
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
                "host": ti.get("hostname"),
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


# --- the whole run ----------------------------------------------------------------------


def compose_up() -> tuple[list[str], dict[str, str], str, str]:
    """The deployment in the bench's own compose project (the Makefile's deploy-up: Docker
    started, images built when missing, healthy when it returns); the caller removes it
    unless ``--keep``."""
    compose = os.environ.get(
        "COMPOSE", "docker-compose" if shutil.which("docker-compose") else "docker compose"
    ).split()
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": COMPOSE_PROJECT,
        "AIRFLOW_PORT": COMPOSE_API_PORT,
        "DEPLOY_PROFILES": "topology",
    }
    subprocess.run(["bash", "scripts/ensure-docker.sh"], cwd=ROOT, check=True)
    print(f"bench: bringing up compose project {COMPOSE_PROJECT} ...", flush=True)
    subprocess.run(
        ["make", "--no-print-directory", "deploy-up", "DEPLOY_PROFILES=topology"],
        cwd=ROOT,
        env=env,
        check=True,
    )
    password = next(
        line.split("=", 1)[1]
        for line in (ROOT / "deploy" / "airflow-admin.env").read_text().splitlines()
        if line.startswith("AIRFLOW_ADMIN_PASSWORD=")
    )
    return (
        [*compose, "--profile", "topology"],
        env,
        f"http://127.0.0.1:{COMPOSE_API_PORT}",
        password,
    )


def measure(args: argparse.Namespace, steps: Any, stack: Any) -> dict[str, Any]:
    prepared = steps("prepare", size=args.size)
    # A deployment's workers are up long before the worst night: one dry run of each DAG
    # first, so the first measured task is not the stack's first task process.
    for dag_id, conf in (
        ("dr_database_restore", {"environment": ENVIRONMENT, "database": "tracktion"}),
        (
            "dr_database_pitr",
            {"environment": ENVIRONMENT, "cluster": CLUSTER, "target_type": "latest"},
        ),
    ):
        stack.wait_for_run(dag_id, stack.trigger(dag_id, {**conf, "dry_run": True}), 900)
    scenarios = [
        (
            "full restore",
            "dr_database_restore",
            {
                "environment": ENVIRONMENT,
                "database": "tracktion",
                "backup": prepared["dump"],
                "jobs": args.jobs,
            },
            lambda validated: steps(
                "restore", dump=prepared["dump"], jobs=args.jobs, validated=validated
            )["seconds"],
        ),
        (
            "PITR (latest)",
            "dr_database_pitr",
            {"environment": ENVIRONMENT, "cluster": CLUSTER, "target_type": "latest"},
            lambda validated: steps("pitr", wal_mb=args.wal_mb, validated=validated)["seconds"],
        ),
    ]

    def bare_with_checks(run_bare: Any, validated: bool) -> float:
        """The bare steps; the functional checks timed where their sample files are."""
        seconds = run_bare(validated)
        if steps.functional_elsewhere:
            seconds += steps("functional", host="app")["seconds"]
        return seconds

    rows = []
    for name, dag_id, conf, bare_run in scenarios:
        if args.only and args.only not in dag_id:
            continue
        print(f"bench: {name}: bare steps ...", flush=True)
        bare_s = bare_with_checks(bare_run, False)
        steps("discard")
        print(f"bench: {name}: bare steps + validation ...", flush=True)
        bare_validated_s = bare_with_checks(bare_run, True)
        steps("discard")
        print(f"bench: {name}: {dag_id} over REST ...", flush=True)
        if dag_id == "dr_database_pitr":
            steps("fresh-round", wal_mb=args.wal_mb)  # the DAG's guard takes the newest
        measured = dag_run(stack, dag_id, conf)
        steps("discard")
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
    return {**prepared, "rows": rows}


def write_results(args: argparse.Namespace, measured: dict[str, Any], scheduler: dict) -> None:
    size_bytes, rows = measured["database_bytes"], measured["rows"]
    ratio_target = TARGETS["ratio_10GB"] if size_bytes >= 5 * 2**30 else TARGETS["ratio_1GB"]
    result = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "database_bytes": size_bytes,
        "dump_bytes": measured["dump_bytes"],
        "base_backup_bytes": measured["base_backup_bytes"],
        "jobs": args.jobs,
        "machine": f"{os.cpu_count()} cores",
        **scheduler,
        "targets": {"overhead_seconds": TARGETS["overhead_seconds"], "ratio": ratio_target},
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    label = ("compose_" if args.compose else "") + f"{round(size_bytes / 2**30)}GB"
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="1GB", help="database size to benchmark with")
    parser.add_argument("--jobs", type=int, default=2, help="pg_restore -j")
    parser.add_argument("--only", choices=["restore", "pitr"], help="one scenario only")
    parser.add_argument(
        "--wal-mb", type=int, default=64, help="WAL written after each PITR's base backup"
    )
    parser.add_argument("--compose", action="store_true", help="in the compose deployment")
    parser.add_argument("--keep", action="store_true", help="--compose: leave it running")
    if sys.argv[1:2] == ["step"]:  # one step, here (on a compose host: see ComposeSteps)
        step = argparse.ArgumentParser(prog="step")
        step.add_argument("name")
        step.add_argument("--size", default="1GB")
        step.add_argument("--dump", default="")
        step.add_argument("--jobs", type=int, default=2)
        step.add_argument("--validated", action="store_true")
        step.add_argument("--wal-mb", type=int, default=64)
        step.add_argument("--functional-elsewhere", action="store_true")
        options = step.parse_args(sys.argv[2:])
        print(json.dumps(run_step(options.name, options)), flush=True)
        return 0
    args = parser.parse_args()
    if args.compose:
        compose, env, url, password = compose_up()
        try:
            stack = ComposeAirflow(compose, env, url, password)
            for dag_id in ("dr_database_restore", "dr_database_pitr"):
                stack.unpause(dag_id)
            measured = measure(args, ComposeSteps(compose, env), stack)
        finally:
            if not args.keep:
                subprocess.run([*compose, "down", "-v", "--remove-orphans"], cwd=ROOT, env=env)
        write_results(
            args,
            measured,
            {
                "scheduler": "the compose deployment: CeleryExecutor, each step on its host's "
                "worker, REST trigger",
            },
        )
        return 0

    from tracktion_sandbox import connections
    from tracktion_sandbox.airflow_stack import LOW_LATENCY, AirflowStack
    from tracktion_sandbox.layout import SandboxLayout
    from tracktion_sandbox.secrets import load_or_create

    connections.export_to_environ(load_or_create(SandboxLayout()))
    stack = AirflowStack(
        Path(tempfile.mkdtemp(prefix="bench-airflow-")), api_port=18380, triggerer=True
    )
    try:
        stack.start()
        stack.wait_for_dags(unpause=["dr_database_restore", "dr_database_pitr"])
        measured = measure(args, LocalSteps(), stack)
    finally:
        stack.stop()
    write_results(
        args,
        measured,
        {
            "scheduler": "real: api-server + scheduler + dag-processor, LocalExecutor, REST "
            "trigger",
            "scheduler_settings": LOW_LATENCY,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
