"""Run the whole suite as N shards side by side, each against its own sandbox.

Most of the suite's time is spent waiting on real things (PostgreSQL replaying WAL,
supervisord starting services, an Airflow scheduler picking up a run), so two shards on
two cores finish far sooner than one. The sandbox listens on fixed ports, so each shard
runs in its own network namespace with its own sandbox home and Airflow home; the
deployment tests (tests/deploy) reach the Compose deployment on the host's loopback, so
they run in the host's namespace, in a shard of their own.

Files are spread by the time they took last (tests/durations.json, rewritten from each
run's JUnit reports); a file not yet measured is weighed by its number of tests.

    python scripts/run_tests.py [pytest args...]        # what `make test` runs
    TEST_SHARDS=1 python scripts/run_tests.py ...       # one pytest, here, as before

Explicit test paths in the arguments, TEST_SHARDS=1, or no way to make a network namespace
(not root, no `ip`) run one plain pytest in place.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DURATIONS = ROOT / "tests" / "durations.json"
REPORTS = ROOT / ".test-reports"
HOST_NAMESPACE_DIRS = ("tests/deploy/",)  # they talk to the host's published ports
# A file never measured: seconds per test, by how much a test of that directory does.
UNMEASURED_SECONDS_PER_TEST = {"tests/unit/": 0.1, "tests/dags/": 0.2}
UNMEASURED_DEFAULT = 15.0
HEARTBEAT_SECONDS = 120


@dataclass
class Shard:
    name: str
    namespace: str | None  # None: the host's own
    files: list[str] = field(default_factory=list)
    weight: float = 0.0
    process: subprocess.Popen | None = None
    log: Path | None = None
    started: float = 0.0
    returncode: int | None = None


def main(argv: list[str]) -> int:
    shards_wanted = int(os.environ.get("TEST_SHARDS", "2"))
    if shards_wanted <= 1 or _names_tests(argv) or not _can_make_namespaces():
        return _plain_pytest(argv)
    # A CI timeout or a killed make: the shards and their sandboxes go too (finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    files, collected = _collect(argv)
    if collected not in (0, 5):
        print(f"run_tests: collection failed (pytest exit {collected})", file=sys.stderr)
        return collected
    if not files:
        print("run_tests: pytest collected no test files", file=sys.stderr)
        return 5
    shards = _plan(files, shards_wanted)
    REPORTS.mkdir(exist_ok=True)
    try:
        for shard in shards:
            _start(shard, argv)
        _wait(shards)
    finally:
        _stop_leftovers(shards)
    for shard in shards:
        print(f"\n{'=' * 30} shard {shard.name}: {len(shard.files)} files {'=' * 30}")
        sys.stdout.write(shard.log.read_text(errors="replace"))  # type: ignore[union-attr]
    _record_durations(shards)
    return _combined(shards)


def _names_tests(argv: list[str]) -> bool:
    return any(not a.startswith("-") and (ROOT / a.split("::")[0]).exists() for a in argv)


def _can_make_namespaces() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def _plain_pytest(argv: list[str]) -> int:
    return subprocess.call([sys.executable, "-m", "pytest", *argv], cwd=ROOT)


def _collect(argv: list[str]) -> tuple[dict[str, int], int]:
    """Test file -> number of tests, as pytest collects them with these arguments, and
    pytest's exit code (a file that does not import fails the run: it is in no shard)."""
    args = [a for a in argv if a != "-q"]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    counts: dict[str, int] = defaultdict(int)
    for line in out.stdout.splitlines():
        if "::" in line and not line.startswith(" "):
            counts[line.split("::")[0]] += 1
    if out.returncode not in (0, 5) or not counts:
        sys.stdout.write(out.stdout[-4000:])
        sys.stderr.write(out.stderr[-4000:])
    return dict(counts), out.returncode


def _plan(files: dict[str, int], count: int) -> list[Shard]:
    measured = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}

    def weight(path: str) -> float:
        if path in measured:
            return float(measured[path])
        per_test = next(
            (s for d, s in UNMEASURED_SECONDS_PER_TEST.items() if path.startswith(d)),
            UNMEASURED_DEFAULT,
        )
        return per_test * files[path]

    host = [f for f in files if f.startswith(HOST_NAMESPACE_DIRS)]
    shards = [Shard(str(i + 1), f"drtest{i + 1}") for i in range(count)]
    if host:
        # The deployment shard waits mostly on image builds and containers: it runs beside
        # the others and takes nothing else.
        shards.append(Shard("deploy", None, files=host, weight=sum(map(weight, host))))
    rest = sorted((f for f in files if f not in host), key=weight, reverse=True)
    for path in rest:  # longest first, each to the lightest shard
        lightest = min(shards[:count], key=lambda s: s.weight)
        lightest.files.append(path)
        lightest.weight += weight(path)
    return [s for s in shards if s.files]


def _start(shard: Shard, argv: list[str]) -> None:
    shard.log = REPORTS / f"shard-{shard.name}.log"
    env = dict(os.environ)
    prefix: list[str] = []
    if shard.namespace is not None:
        _namespace(shard.namespace)
        prefix = ["ip", "netns", "exec", shard.namespace]
        # Own state: the sandbox and the Airflow metadata database of this shard only.
        env["DR_SANDBOX_HOME"] = str(ROOT / f".sandbox-{shard.namespace}")
        env["AIRFLOW_HOME"] = str(ROOT / f".airflow-{shard.namespace}")
    junit = REPORTS / f"shard-{shard.name}.xml"
    script = '. sandbox/env.sh && airflow db migrate >/dev/null && exec python -m pytest "$@"'
    command = [
        *prefix,
        "bash",
        "-c",
        script,
        "pytest",
        *argv,
        f"--junitxml={junit}",
        *shard.files,
    ]
    print(
        f"run_tests: shard {shard.name} ({shard.namespace or 'host namespace'}): "
        f"{len(shard.files)} files, ~{shard.weight / 60:.0f} min by the last run",
        flush=True,
    )
    shard.started = time.monotonic()
    shard.process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=shard.log.open("w"), stderr=subprocess.STDOUT
    )


def _namespace(name: str) -> None:
    existing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    if name not in existing.split():
        subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)


def _wait(shards: list[Shard]) -> None:
    last_beat = time.monotonic()
    while any(s.returncode is None for s in shards):
        for shard in shards:
            if shard.returncode is None and shard.process.poll() is not None:  # type: ignore[union-attr]
                shard.returncode = shard.process.returncode  # type: ignore[union-attr]
                print(
                    f"run_tests: shard {shard.name} finished (exit {shard.returncode}) in "
                    f"{(time.monotonic() - shard.started) / 60:.1f} min: {_last_line(shard)}",
                    flush=True,
                )
        if time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
            last_beat = time.monotonic()
            running = [f"{s.name}: {_last_line(s)}" for s in shards if s.returncode is None]
            print("run_tests: still running - " + " | ".join(running), flush=True)
        time.sleep(1)


def _stop_leftovers(shards: list[Shard]) -> None:
    """Nothing a shard started outlives the run: its pytest (interrupted run) and whatever
    is left in its namespace (a sandbox a killed session could not stop)."""
    for shard in shards:
        if shard.process is not None and shard.process.poll() is None:
            shard.process.terminate()
            try:
                shard.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                shard.process.kill()
        if shard.namespace is None:
            continue
        pids = subprocess.run(
            ["ip", "netns", "pids", shard.namespace], capture_output=True, text=True
        ).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass


def _last_line(shard: Shard) -> str:
    lines = [ln for ln in shard.log.read_text(errors="replace").splitlines() if ln.strip()]  # type: ignore[union-attr]
    return lines[-1][-120:] if lines else "(no output yet)"


def _record_durations(shards: list[Shard]) -> None:
    """Seconds per test file from this run's JUnit reports, merged into the stored ones."""
    seconds: dict[str, float] = defaultdict(float)
    for shard in shards:
        junit = REPORTS / f"shard-{shard.name}.xml"
        if not junit.exists():
            continue
        for case in ET.parse(junit).iter("testcase"):  # noqa: S314 - our own pytest wrote it
            module = case.get("classname", "").split(".")
            path = "/".join(module[:-1] if module[-1][:1].isupper() else module) + ".py"
            seconds[path] += float(case.get("time") or 0)
    if not seconds:
        return
    stored = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    stored.update({k: round(v, 1) for k, v in seconds.items()})
    DURATIONS.write_text(json.dumps(dict(sorted(stored.items())), indent=1) + "\n")


def _combined(shards: list[Shard]) -> int:
    codes = [s.returncode for s in shards]
    failed = [c for c in codes if c not in (0, 5)]
    if failed:
        return failed[0]  # type: ignore[return-value]
    return 5 if all(c == 5 for c in codes) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
