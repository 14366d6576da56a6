"""Benchmark: compressed base backups and archived WAL against plain ones, on the same data.

    make sandbox-up && . sandbox/env.sh && python bench/bench_backup_compression.py --size 1GB

1. Grows the sandbox's ``tracktion`` database to ``--size`` (generator, append mode).
2. Base backups: for each candidate compression (``none`` = today's plain format, and the
   zstd/lz4 variants of ``pg_basebackup --compress``), ``--repeat`` times, alternating:
   a verified base backup through the library (``take_base_backup``: pg_basebackup, then
   the verification - pg_verifybackup where it lies, or extracted into a scratch directory
   and verified there), its size against the plain one (target: at most 0.35x), and the
   time to lay it down into a staging directory and verify it there
   (``stage_base_backup``). Medians are reported.
3. PITR time to writable, plain vs compressed (the plan's choice), alternating, on the
   same data: the guard's check of the chosen backup (pg_verifybackup of a plain one;
   the sha256 of a compressed one's archives), stop, move aside, lay down, start, replay
   the archive (compressed WAL through restore_command) to its end in standby mode,
   promote, and one write committed. "Plain, today" is the lay-down as it was before
   compression (a copy, not verified again); "plain, verified copy" is the same copy
   through ``stage_base_backup``, which now verifies every lay-down.
4. Archived WAL: a bulk insert, an update across the tables (full-page images after a
   checkpoint) and idle segments switched out by ``archive_timeout``: WAL bytes written
   with ``wal_compression`` off and ``zstd``, and the archive's bytes for them
   (``<segment>.zst`` against 16 MiB a segment); the cost of compressing and restoring
   one segment.
5. Writes ``bench/results/backup_compression.md`` and ``.json``.

Not a test: timings are written, never asserted. It changes the sandbox (a bigger database,
new timelines, a re-seeded standby); ``make sandbox-reset`` afterwards returns to a small one.
The backups, staging and moved-aside directories it makes are its own and are removed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")

import psycopg  # noqa: E402

from tracktion_dr.airflow.dag_runs import run_dag, task_states  # noqa: E402
from tracktion_dr.backups.catalog import Catalog  # noqa: E402
from tracktion_dr.core.plan import load_plan  # noqa: E402
from tracktion_dr.postgres import basebackup_format, basebackups, pitr, wal  # noqa: E402
from tracktion_dr.postgres.commands import Endpoint, chown_tree  # noqa: E402
from tracktion_dr.postgres.salvage import WalHoldings  # noqa: E402
from tracktion_sandbox import connections, generate  # noqa: E402
from tracktion_sandbox import layout as L  # noqa: E402
from tracktion_sandbox.backups import switch_and_wait_archived  # noqa: E402
from tracktion_sandbox.layout import SandboxLayout  # noqa: E402
from tracktion_sandbox.secrets import load_or_create  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BINDIR = Path("/usr/lib/postgresql/15/bin")
SEGMENT = 16 * 1024 * 1024
CANDIDATES = (
    "none",
    "server-lz4",
    "server-lz4:level=3",
    "server-zstd:level=1,workers=2",
    "server-zstd:level=3,workers=2",
    "server-zstd:level=3,workers=2;manifest=SHA256",
    "client-zstd:level=3,workers=2",
)
MANIFEST_VARIANT = ";manifest="  # a candidate's manifest checksums, when not the default


def median(values: list[float], digits: int = 2) -> float:
    return round(statistics.median(values), digits)


def rotated(items: list, by: int) -> list:
    """Each round starts with the next one: no way always runs first (or last) after a
    round of the others, which would bias it (caches, WAL piling up between runs)."""
    shift = by % len(items)
    return list(items[shift:]) + list(items[:shift])


def evict_from_page_cache(*paths: Path) -> None:
    """Written to disk and dropped from the page cache (only these files: the machine is
    shared): a backup read cold, as in a recovery hours after it was taken."""
    for path in paths:
        files = path.rglob("*") if path.is_dir() else [path]
        for file in files:
            if not file.is_file() or file.is_symlink():
                continue
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def cpu_seconds() -> float:
    """CPU used by this process and every finished child (tar, zstd, pg_verifybackup):
    the cost a busy machine cannot hide, unlike wall time."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Bench:
    def __init__(self) -> None:
        self.layout = SandboxLayout()
        secrets = load_or_create(self.layout)
        connections.export_to_environ(secrets)
        self.admin = Endpoint(L.HOST, L.PRIMARY_PORT, L.SUPERUSER, secrets.postgres_password)
        self.replication = Endpoint(
            L.HOST, L.PRIMARY_PORT, L.REPLICATION_USER, secrets.replication_password
        )
        self.secrets = secrets
        self.catalog = Catalog(load_plan().environment("drill").backups, bindir=BINDIR)
        self.made: list[Path] = []  # base backups of this bench, removed at the end

    def sql(self, query: str, dbname: str = "tracktion", *, session: str = "") -> Any:
        with psycopg.connect(
            self.admin.conninfo(dbname), connect_timeout=10, autocommit=True
        ) as conn:
            if session:
                conn.execute(session)
            cursor = conn.execute(query)
            row = cursor.fetchone() if cursor.description else None
            return row[0] if row else None

    # -- base backups ---------------------------------------------------------------

    def take(self, candidate: str) -> tuple[Path, dict[str, Any], float]:
        compression, _, manifest = candidate.partition(MANIFEST_VARIANT)
        started = time.monotonic()
        path = basebackups.take_base_backup(
            self.replication,
            self.layout.base_backups,
            label_prefix="bench-compression",
            bindir=BINDIR,
            compression=compression,
            manifest_checksums=manifest or None,
        )
        elapsed = time.monotonic() - started
        self.made.append(path)
        info = json.loads(path.with_name(path.name + basebackups.INFO_SUFFIX).read_text())
        time.sleep(1.1)  # base_<stamp> names are per second
        return path, info, elapsed

    def stage(self, backup: Path) -> dict[str, Any]:
        """Lay it down (cold: the backup's files are not in the page cache) and verify."""
        staging = self.layout.pg_root / ".bench_staging"
        shutil.rmtree(staging, ignore_errors=True)
        evict_from_page_cache(backup)
        cpu = cpu_seconds()
        try:
            staged = basebackup_format.stage_base_backup(backup, staging, BINDIR)
            staged["cpu_seconds"] = cpu_seconds() - cpu
            return staged
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def compare_formats(self, candidates: list[str], repeat: int) -> list[dict[str, Any]]:
        runs: dict[str, list[dict[str, Any]]] = {c: [] for c in candidates}
        for round_number in range(repeat):
            for compression in rotated(candidates, round_number):
                print(f"bench: base backup {compression} ({round_number + 1}/{repeat}) ...")
                path, info, total = self.take(compression)
                staged = self.stage(path)
                runs[compression].append(
                    {
                        "bytes": info["size_bytes"],
                        "plain_bytes": info.get("plain_bytes", info["size_bytes"]),
                        "backup_seconds": total,
                        "pg_basebackup_seconds": info["seconds"]["pg_basebackup"],
                        "verify_seconds": info["seconds"]["verify"],
                        "stage_seconds": staged["lay_down_seconds"],
                        "stage_verify_seconds": staged["verify_seconds"],
                        "stage_cpu_seconds": staged["cpu_seconds"],
                    }
                )
                self.discard(path)
        plain = median([r["bytes"] for r in runs.get("none", [])] or [0])
        rows = []
        for compression, results in runs.items():
            size = median([r["bytes"] for r in results])
            rows.append(
                {
                    "compression": compression,
                    "bytes": int(size),
                    "ratio_to_plain": round(size / plain, 3) if plain else None,
                    **{
                        key: median([r[key] for r in results])
                        for key in (
                            "backup_seconds",
                            "pg_basebackup_seconds",
                            "verify_seconds",
                            "stage_seconds",
                            "stage_verify_seconds",
                            "stage_cpu_seconds",
                        )
                    },
                    "runs": len(results),
                }
            )
        return rows

    def discard(self, backup: Path) -> None:
        shutil.rmtree(backup, ignore_errors=True)
        for sidecar in backup.parent.glob(backup.name + ".*"):
            sidecar.unlink()

    # -- PITR to writable -------------------------------------------------------------

    def pitr_to_writable(self, backup: Path, how: str, *, cold: bool) -> dict[str, float]:
        """stop, move aside, lay down, start, replay to the archive's end, promote, write.
        ``cold``: the backup and the WAL archive are read from disk, not the page cache."""
        switch_and_wait_archived(self.secrets)
        if cold:
            evict_from_page_cache(backup, self.layout.wal_archive)
        data = self.layout.primary_data
        paths = pitr.ClusterPaths(data, BINDIR)
        tag = f"bench_{re.sub(r'[^a-z0-9]+', '_', how.lower()).strip('_')}_{int(time.time())}"
        target = pitr.RecoveryTarget("latest")
        phases: dict[str, float] = {}
        clock = time.monotonic()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.monotonic()
            phases[name] = round(now - clock, 2)
            clock = now

        (entry,) = [e for e in self.catalog.base_backups() if e.path == backup]
        checked = self.catalog.verify(entry)  # what the guard does right before using it
        assert checked.status.value == "verified", checked.reason
        lap("check_backup")
        pitr.stop_server(paths)
        lap("stop")
        aside = pitr.aside_path(data, tag)
        data.rename(aside)
        lap("move_aside")

        def finish(staging: Path) -> None:
            pitr.write_recovery_settings(
                staging, pitr.restore_command_for(self.layout.wal_archive), target
            )

        cpu = cpu_seconds()
        try:
            if how == "plain, today":
                legacy_lay_down(backup, data, tag, finish)
            else:
                pitr.lay_down_base_backup(backup, data, "postgres", tag, finish, bindir=BINDIR)
        except BaseException:
            # The bench's own recovery failed: give the sandbox its primary back, as it was.
            shutil.rmtree(pitr.staging_path(data, tag), ignore_errors=True)
            shutil.rmtree(data, ignore_errors=True)
            aside.rename(data)
            pitr.start_server(paths, self.layout.pg_root / f"recovery_{tag}.log")
            raise
        lay_down_cpu = round(cpu_seconds() - cpu, 2)
        lap("lay_down")
        pitr.start_server(paths, self.layout.pg_root / f"recovery_{tag}.log")
        lap("start")
        end = WalHoldings.restorable_only(self.layout.wal_archive, BINDIR).end(commit_lookback=0)
        conninfo = self.admin.conninfo("postgres")
        deadline = time.monotonic() + 1800
        while True:
            state = pitr.recovery_state(conninfo)
            if time.monotonic() > deadline:
                raise SystemExit(f"replay did not reach the archive's end: {state}")
            if (
                not isinstance(state, str)
                and state.replay_lsn
                and wal.lsn_to_int(state.replay_lsn) > (end.last_record_lsn or 0)
            ):
                break
            time.sleep(0.05)
        lap("replay")
        pitr.promote_server(conninfo)
        self.sql("CREATE TABLE IF NOT EXISTS bench_writable (at timestamptz)")
        self.sql("INSERT INTO bench_writable VALUES (now()) RETURNING 1")
        lap("promote_and_write")
        pitr.clear_recovery_settings(data)
        phases["to_writable"] = round(sum(phases.values()), 2)
        phases["lay_down_cpu"] = lay_down_cpu
        shutil.rmtree(aside)  # the bench's own copy of a sandbox it just recovered
        return phases

    def compare_pitr(self, compressions: list[str], repeat: int) -> list[dict[str, Any]]:
        switch_and_wait_archived(self.secrets)
        plain, _, _ = self.take("none")
        ways = [("plain, today", plain), ("plain, verified copy", plain)]
        for compression in compressions:
            ways.append((f"compressed `{compression}`", self.take(compression)[0]))
        runs: dict[tuple[str, str], list[dict[str, float]]] = {}
        for round_number in range(repeat):
            for cache in ("cold", "warm"):
                for name, backup in rotated(ways, round_number):
                    print(f"bench: PITR to writable, {name}, {cache} ({round_number + 1}/{repeat})")
                    runs.setdefault((cache, name), []).append(
                        self.pitr_to_writable(backup, name, cold=cache == "cold")
                    )
        return [
            {
                "cache": cache,
                "way": name,
                **{key: median([r[key] for r in results]) for key in results[0]},
                "runs": len(results),
            }
            for (cache, name), results in runs.items()
        ]

    # -- archived WAL ---------------------------------------------------------------

    def wal_workloads(self) -> list[dict[str, Any]]:
        rows = []
        for setting in ("off", "zstd"):
            for name, work in self.workloads().items():
                print(f"bench: WAL, {name} with wal_compression={setting} ...")
                rows.append({"workload": name, "wal_compression": setting, **work(setting)})
        return rows

    def workloads(self) -> dict[str, Callable[[str], dict[str, Any]]]:
        def bulk_insert(setting: str) -> dict[str, Any]:
            return self.measure_wal(
                setting,
                [
                    "DROP TABLE IF EXISTS bench_wal_copy",
                    "CREATE TABLE bench_wal_copy AS SELECT * FROM tracklists LIMIT 60000",
                ],
            )

        def updates_after_checkpoint(setting: str) -> dict[str, Any]:
            return self.measure_wal(
                setting,
                [
                    "CHECKPOINT",
                    "UPDATE analysis_results SET confidence = confidence WHERE id % 40 = 0",
                ],
            )

        def idle_segments(setting: str) -> dict[str, Any]:
            # What archive_timeout does to a quiet server: a segment with a few commits
            # switched out (the sandbox's canary writes a row a second).
            return self.measure_wal(setting, ["SELECT pg_sleep(3)"], switches=3)

        return {
            "bulk insert (60k tracklists rows)": bulk_insert,
            "updates after a checkpoint (full-page images)": updates_after_checkpoint,
            "idle segments switched out": idle_segments,
        }

    def measure_wal(self, setting: str, statements: list[str], switches: int = 0) -> dict:
        switch_and_wait_archived(self.secrets)
        start = self.sql("SELECT pg_current_wal_lsn()::text", "postgres")
        with psycopg.connect(
            self.admin.conninfo("tracktion"), connect_timeout=10, autocommit=True
        ) as conn:
            conn.execute(f"SET wal_compression = '{setting}'")  # a fixed literal, not input
            for statement in statements:
                conn.execute(statement)
            for _ in range(switches):
                conn.execute("SELECT pg_sleep(1)")
                conn.execute("SELECT pg_switch_wal()")
        end = self.sql("SELECT pg_current_wal_lsn()::text", "postgres")
        switch_and_wait_archived(self.secrets)
        first = wal.Segment.from_lsn(start).number
        last = wal.Segment.from_lsn(end).number
        files = wal.list_segments(self.layout.wal_archive)
        held = [files[n] for n in range(first, last + 1) if n in files]
        return {
            "wal_bytes": wal.lsn_to_int(end) - wal.lsn_to_int(start),
            "segments": len(held),
            "archived_plain_bytes": len(held) * SEGMENT,
            "archived_bytes": sum(p.stat().st_size for p in held),
            "compressed_segments": sum(wal.is_compressed(p) for p in held),
        }

    def segment_costs(self) -> dict[str, float]:
        """Seconds to compress one full segment (archive_command) and to restore it
        (restore_command: zstd -d vs the cp of a plain one), medians over a few."""
        files = wal.list_segments(self.layout.wal_archive)
        packed = [files[n] for n in sorted(files, reverse=True) if wal.is_compressed(files[n])]
        packed = sorted(packed, key=lambda p: p.stat().st_size, reverse=True)[:5]
        compress, decompress, copy = [], [], []
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            for path in packed:
                plain = folder / wal.segment_name_of(path)
                for _ in range(3):  # the shared machine is noisy: every one three times
                    started = time.monotonic()
                    wal.decompress_segment(path, plain)
                    decompress.append(time.monotonic() - started)
                    started = time.monotonic()
                    shutil.copyfile(plain, folder / "copy")
                    copy.append(time.monotonic() - started)
                    started = time.monotonic()
                    subprocess.run(
                        [
                            "zstd",
                            "-q",
                            "-f",
                            f"-{wal.ARCHIVE_ZSTD_LEVEL}",
                            str(plain),
                            "-o",
                            f"{plain}.z",
                        ],
                        check=True,
                    )
                    compress.append(time.monotonic() - started)
        return {
            "segments_sampled": len(packed),
            "compress_seconds": median(compress, 3) if compress else None,
            "restore_decompress_seconds": median(decompress, 3) if decompress else None,
            "restore_copy_plain_seconds": median(copy, 3) if copy else None,
        }

    def archive_totals(self) -> dict[str, int]:
        files = list(wal.segment_files(self.layout.wal_archive).values())
        packed = [p for p in files if wal.is_compressed(p)]
        return {
            "compressed_segments": len(packed),
            "their_bytes": sum(p.stat().st_size for p in packed),
            "their_plain_bytes": len(packed) * SEGMENT,
        }

    def reseed_standby(self) -> None:
        dag_run = run_dag("dr_replica_reseed", {"environment": "drill", "cluster": "main"})
        print(f"bench: standby re-seeded: {task_states(dag_run)}")


def legacy_lay_down(backup: Path, data: Path, tag: str, finish: Callable[[Path], None]) -> None:
    """The lay-down before compression, as it was: a copy of the plain backup (verified
    when the guard picked it, not again), the settings, the rename."""
    staging = pitr.staging_path(data, tag)
    shutil.copytree(backup, staging, symlinks=True)
    staging.chmod(0o700)
    finish(staging)
    chown_tree(staging, "postgres")
    staging.rename(data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="1GB", help="database size to benchmark with")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, medians reported")
    parser.add_argument(
        "--pitr-compressions",
        nargs="*",
        default=[
            load_plan().backup_schedule.base_backup_compression,
            "server-zstd:level=3,workers=2",
            "server-lz4",
            "server-lz4:level=3",
        ],
        help="the compressions PITR is measured with (default: the plan's, zstd, lz4)",
    )
    parser.add_argument("--pitr-repeat", type=int, default=5, help="PITR runs of each way")
    parser.add_argument("--candidates", nargs="*", default=list(CANDIDATES))
    args = parser.parse_args()
    bench = Bench()

    print(f"bench: growing tracktion to {args.size} ...", flush=True)
    generate.generate(bench.admin.conninfo("tracktion"), size=args.size, append=True)
    database_bytes = bench.sql("SELECT pg_database_size('tracktion')")
    try:
        formats = bench.compare_formats(args.candidates, args.repeat)
        pitr_rows = bench.compare_pitr(
            list(dict.fromkeys(args.pitr_compressions)), args.pitr_repeat
        )
        wal_rows = bench.wal_workloads()
        costs = bench.segment_costs()
        totals = bench.archive_totals()
    finally:
        for backup in bench.made:
            bench.discard(backup)
        bench.sql("DROP TABLE IF EXISTS bench_wal_copy")
        bench.reseed_standby()

    result = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "database_bytes": database_bytes,
        "machine": f"{os.cpu_count()} cores, shared",
        "repeat": args.repeat,
        "pitr_repeat": args.pitr_repeat,
        "pitr_compressions": args.pitr_compressions,
        "base_backups": formats,
        "pitr": pitr_rows,
        "wal": wal_rows,
        "wal_segment_costs": costs,
        "wal_archive_totals": totals,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "backup_compression.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "backup_compression.md").write_text(render(result))
    print(render(result))
    return 0


def render(result: dict[str, Any]) -> str:
    mib = 2**20
    lines = [
        f"# Backup compression benchmark ({result['measured_at']})",
        "",
        f"Database {result['database_bytes'] / 2**30:.2f} GiB, {result['machine']}; "
        f"medians of {result['repeat']} runs of each backup and {result['pitr_repeat']} of "
        "each PITR, run in rotating order.",
        "",
        "## Base backups: size, time to take (verified), time to lay down (verified)",
        "",
        "| compression | size (MiB) | size / plain | backup total (s) | pg_basebackup (s) "
        "| verification (s) | lay down, cold (s) | verify laid down (s) | lay down + verify CPU (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["base_backups"]:
        lines.append(
            f"| `{row['compression']}` | {row['bytes'] / mib:.0f} | {row['ratio_to_plain']} | "
            f"{row['backup_seconds']} | {row['pg_basebackup_seconds']} | {row['verify_seconds']} | "
            f"{row['stage_seconds']} | {row['stage_verify_seconds']} | {row['stage_cpu_seconds']} |"
        )
    lines += [
        "",
        "Target: at most 0.35x of the plain size. A plain backup is verified where it lies "
        "(pg_verifybackup); a compressed one is extracted into a scratch directory and verified "
        "there, so its verification includes an extraction. Lay down: `stage_base_backup` into "
        "an empty directory with the backup's files out of the page cache, then pg_verifybackup "
        "there; CPU = user + system seconds of the bench and its children (tar, zstd, "
        "pg_verifybackup), which contention on the shared machine does not inflate.",
        "",
        "## PITR to writable, plain vs compressed",
        "",
        "| cache | way | check backup (s) | stop (s) | move aside (s) | lay down (s) | start (s) "
        "| replay (s) | promote + write (s) | **to writable (s)** | lay down CPU (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["pitr"]:
        lines.append(
            f"| {row['cache']} | {row['way']} | {row['check_backup']} | {row['stop']} | "
            f"{row['move_aside']} | {row['lay_down']} | {row['start']} | {row['replay']} | "
            f"{row['promote_and_write']} | **{row['to_writable']}** | {row['lay_down_cpu']} |"
        )
    lines += [
        "",
        "cold: the backup and the WAL archive dropped from the page cache first (a recovery "
        "hours after the backup); warm: as left by the previous run. check backup: what the "
        "guard does right before using it (plain: pg_verifybackup of the backup; compressed: "
        "sha256 of its archives, equal to the ones recorded when it was fully verified). lay "
        "down: plain, today = a copy (not verified again); plain, verified copy and compressed "
        "= `stage_base_backup` (copy or extract, then pg_verifybackup of what will start).",
        "",
        "## Archived WAL",
        "",
        "| workload | wal_compression | WAL written (MiB) | segments | archive, plain (MiB) "
        "| archive, .zst (MiB) | .zst / plain |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["wal"]:
        plain = row["archived_plain_bytes"]
        lines.append(
            f"| {row['workload']} | {row['wal_compression']} | {row['wal_bytes'] / mib:.1f} | "
            f"{row['segments']} | {plain / mib:.0f} | {row['archived_bytes'] / mib:.2f} | "
            f"{round(row['archived_bytes'] / plain, 3) if plain else '-'} |"
        )
    costs, totals = result["wal_segment_costs"], result["wal_archive_totals"]
    ratio = (
        totals["their_bytes"] / totals["their_plain_bytes"] if totals["their_plain_bytes"] else 0
    )
    lines += [
        "",
        f"One full segment: compressed by archive_command in {costs['compress_seconds']} s; "
        f"restored by restore_command in {costs['restore_decompress_seconds']} s "
        f"(zstd -d) against {costs['restore_copy_plain_seconds']} s for a plain copy "
        f"(medians over the {costs['segments_sampled']} largest archived segments, 3 times each).",
        "",
        f"The whole archive's compressed segments: {totals['compressed_segments']} segments, "
        f"{totals['their_bytes'] / mib:.0f} MiB instead of {totals['their_plain_bytes'] / mib:.0f} MiB "
        f"({ratio:.3f}x).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
