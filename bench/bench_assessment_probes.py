"""Benchmark: does a batch of probes take about its slowest timeout, whatever its size?

    . sandbox/env.sh && python bench/bench_assessment_probes.py [--sizes 20 200 1000]
        [--repetitions 5] [--timeout 2] [--cpu-hogs 0] [--name assessment_probes]

No sandbox needed: it runs on loopback (inside a helper's network namespace if you use
one: ``ip netns exec NAME python bench/bench_assessment_probes.py``).

1. Starts ``tests/harness/http_endpoints.py`` in a separate process: a real HTTP server
   on a free loopback port whose ``/hang/...`` paths never answer.
2. For each size N, two batches: N HTTP health probes (``http_health``), every tenth one
   hung, all with the same timeout ("HTTP only"); and the same plus two probes that run in
   threads, a writable temporary directory and a check that blocks until the batch is over
   ("mixed": it ends at the batch deadline, timeout + ``DEADLINE_GRACE_SECONDS``). Each is
   timed ``--repetitions`` times: wall time of ``run_probes`` (median and max) and the CPU
   time this process spent in it.
3. Checks every result (healthy endpoints UP, hung ones DOWN "no answer within Ns") and
   counts the wrong ones: a fast batch that calls healthy services down is no success.
4. Writes ``bench/results/<name>.md`` and ``.json`` (``--name``, default
   ``assessment_probes``): the times, the targets (200 endpoints within timeout + 1 s,
   1000 within timeout + 2 s, judged on the max) and whether each is met.

``--cpu-hogs N`` runs N busy-looping processes meanwhile (stopped at the end), to see the
batch on a host whose CPU is taken: ``--cpu-hogs 2 --name assessment_probes_loaded``.

File descriptors: one batch holds one socket per endpoint (1000 at N = 1000) in this
process, and the server as many again. Both raise their soft ``RLIMIT_NOFILE`` to the hard
limit at start (the limits seen are written to the results); with a hard limit below about
1100 the largest size cannot be measured and is reported as such.

Not a test: timings are written, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from tracktion_dr.services.probes import (
    ProbeResult,
    ProbeTarget,
    http_health,
    run_probes,
    storage_writable,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SERVER = ROOT / "tests" / "harness" / "http_endpoints.py"
HUNG_EVERY = 10  # every tenth endpoint never answers: 10 %
# Extra seconds over the timeout allowed for the whole batch, by size (the targets).
ALLOWANCE_SECONDS = {200: 1.0, 1000: 2.0}
FDS_PER_ENDPOINT_MARGIN = 100


def raise_open_files_limit() -> tuple[int, int, int]:
    """(soft before, soft after, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard


def start_cpu_hogs(count: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def start_server() -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [sys.executable, str(SERVER)], stdout=subprocess.PIPE, text=True, close_fds=True
    )
    assert server.stdout is not None
    port = server.stdout.readline().strip()
    if not port.isdigit():
        server.kill()
        raise SystemExit(f"the endpoint server did not start (printed {port!r})")
    return server, f"http://127.0.0.1:{port}"


def batch(
    base_url: str, size: int, timeout: float, scratch: Path, release: threading.Event, mixed: bool
) -> list[ProbeTarget]:
    targets = []
    for i in range(size):
        if i % HUNG_EVERY == HUNG_EVERY - 1:
            name, path = f"hung-{i}", f"/hang/{i}"
        else:
            name, path = f"svc-{i}", f"/health/{i}"
        targets.append(ProbeTarget(name, "service", http_health(base_url + path), timeout))
    if not mixed:
        return targets

    def blocks_until_released(probe_timeout: float) -> str:
        release.wait(60)
        return "released"

    targets.append(ProbeTarget("storage:scratch", "storage", storage_writable(scratch), timeout))
    targets.append(ProbeTarget("hung-thread", "external", blocks_until_released, timeout))
    return targets


def judge(targets: list[ProbeTarget], results: list[ProbeResult], timeout: float) -> dict:
    """Counts of right and wrong results (the expected one is known from the target)."""
    counts = {"healthy_up": 0, "hung_down": 0, "wrong": 0, "order_kept": True}
    no_answer = f"no answer within {timeout:g}s"
    if [r.name for r in results] != [t.name for t in targets]:
        counts["order_kept"] = False
    for target, result in zip(targets, results, strict=False):
        expects_hang = target.name.startswith("hung-")
        if expects_hang and result.status == "DOWN" and result.detail == no_answer:
            counts["hung_down"] += 1
        elif not expects_hang and result.healthy:
            counts["healthy_up"] += 1
        else:
            counts["wrong"] += 1
            if counts["wrong"] <= 3:
                print(f"    wrong: {result.name}: {result.status} {result.detail}", flush=True)
    return counts


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of another process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    server_pid: int, base_url: str, size: int, timeout: float, repetitions: int, mixed: bool
) -> dict:
    times: list[float] = []
    cpu: list[float] = []
    server_cpu: list[float] = []
    totals = {"healthy_up": 0, "hung_down": 0, "wrong": 0, "order_kept": True}
    for _ in range(repetitions):
        release = threading.Event()
        with tempfile.TemporaryDirectory(prefix="bench-probes-") as scratch:
            targets = batch(base_url, size, timeout, Path(scratch), release, mixed)
            server_before = process_cpu_seconds(server_pid)
            started, cpu_before = time.monotonic(), cpu_seconds()
            results = run_probes(targets)
            elapsed, cpu_used = time.monotonic() - started, cpu_seconds() - cpu_before
            server_cpu.append(process_cpu_seconds(server_pid) - server_before)
            release.set()
        counts = judge(targets, results, timeout)
        for key in ("healthy_up", "hung_down", "wrong"):
            totals[key] += counts[key]
        totals["order_kept"] = totals["order_kept"] and counts["order_kept"]
        times.append(elapsed)
        cpu.append(cpu_used)
        mix = "mixed" if mixed else "HTTP only"
        print(f"  N={size} {mix}: {elapsed:.2f}s (CPU {cpu_used:.2f}s), {counts}", flush=True)
        time.sleep(0.5)  # let the server see the abandoned connections close
    allowance = ALLOWANCE_SECONDS.get(size)
    target_seconds = timeout + allowance if allowance is not None else None
    return {
        "endpoints": size,
        "hung": size // HUNG_EVERY,
        "thread_probes": 2 if mixed else 0,
        "repetitions": repetitions,
        "seconds": [round(t, 3) for t in times],
        "median_seconds": round(statistics.median(times), 3),
        "max_seconds": round(max(times), 3),
        "cpu_seconds": [round(t, 3) for t in cpu],
        "median_cpu_seconds": round(statistics.median(cpu), 3),
        "median_server_cpu_seconds": round(statistics.median(server_cpu), 3),
        "target_seconds": target_seconds,
        "target_met": None if target_seconds is None else max(times) <= target_seconds,
        **totals,
    }


def write_results(name: str, result: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    limits = result["open_files_limit"]
    lines = [
        f"# Assessment probes benchmark ({result['finished_at']})",
        "",
        f"{result['implementation']}. Per-probe timeout {result['timeout_seconds']:g} s; "
        f"every tenth endpoint never answers; server in a separate process on loopback; "
        f"{result['cpus']} cores, {result['cpu_hogs']} busy-looping processes beside, load "
        f"average {result['load_average_before']} before; "
        f"{result['repetitions']} repetitions per size. Open-files "
        f"soft limit {limits['soft_before']} raised to {limits['soft_after']} "
        f"(hard {limits['hard']}).",
        "",
        "| endpoints | thread probes | hung | median (s) | max (s) | target (s) | met | "
        "CPU median (s) | server CPU median (s) | healthy UP | hung DOWN | wrong | order kept |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["sizes"]:
        if "skipped" in row:
            lines.append(f"| {row['endpoints']} | - | - | {row['skipped']} ||||||||||")
            continue
        target = "-" if row["target_seconds"] is None else f"≤ {row['target_seconds']:g}"
        met = "-" if row["target_met"] is None else ("yes" if row["target_met"] else "**no**")
        lines.append(
            f"| {row['endpoints']} | {row['thread_probes']} | {row['hung']} | "
            f"{row['median_seconds']:.2f} | {row['max_seconds']:.2f} | {target} | {met} | "
            f"{row['median_cpu_seconds']:.2f} | {row['median_server_cpu_seconds']:.2f} | "
            f"{row['healthy_up']} | "
            f"{row['hung_down']} | {row['wrong']} | {'yes' if row['order_kept'] else 'no'} |"
        )
    lines += [
        "",
        "Thread probes: a writable temporary directory and a check that blocks until the "
        "batch is over (counted in 'hung DOWN'); a batch holding a blocked one ends at the "
        "batch deadline, timeout + 0.5 s grace. CPU: user + system time of the probing "
        "process during the call; server CPU: the same for the endpoint server. 'wrong': a "
        "result other than the expected one (a healthy endpoint reported not answering "
        "means prober and server together did not get the CPU to exchange its answer within "
        "the timeout). Counts are summed over the repetitions. Target: the whole batch within "
        "timeout + 1 s at 200 endpoints and timeout + 2 s at 1000, judged on the slowest "
        "repetition.",
    ]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 200, 1000])
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--name", default="assessment_probes", help="results file stem")
    parser.add_argument("--cpu-hogs", type=int, default=0, help="busy processes meanwhile")
    parser.add_argument(
        "--implementation",
        default=(
            "HTTP probes on one aiohttp session in an event loop on its own thread (the "
            "caller keeps the deadline); other checks in threads beside it"
        ),
        help="a sentence describing the code measured (written to the results)",
    )
    args = parser.parse_args()
    soft_before, soft_after, hard = raise_open_files_limit()
    print(f"open files: soft {soft_before} -> {soft_after} (hard {hard})", flush=True)
    load_before = " / ".join(f"{load:.1f}" for load in os.getloadavg())
    server, base_url = start_server()
    hogs = start_cpu_hogs(args.cpu_hogs)
    sizes = []
    try:
        for size in args.sizes:
            if size + FDS_PER_ENDPOINT_MARGIN > soft_after:
                sizes.append({"endpoints": size, "skipped": f"open-files limit {soft_after}"})
                continue
            for mixed in (False, True):
                sizes.append(
                    measure(server.pid, base_url, size, args.timeout, args.repetitions, mixed)
                )
    finally:
        for process in [*hogs, server]:
            process.terminate()
            process.wait(10)
    write_results(
        args.name,
        {
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "implementation": args.implementation,
            "timeout_seconds": args.timeout,
            "repetitions": args.repetitions,
            "cpus": os.cpu_count(),
            "cpu_hogs": args.cpu_hogs,
            "load_average_before": load_before,
            "open_files_limit": {
                "soft_before": soft_before,
                "soft_after": soft_after,
                "hard": hard,
            },
            "sizes": sizes,
        },
    )
    print((RESULTS / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
