"""Post-recovery validation: the seed's seven checks, each with its own measured evidence.

The seed's checklist printed "[Status based on execution]" and passed a missing test file
or an unreachable Prometheus silently. Here every check returns a :class:`CheckResult`
whose status is ``passed``, ``failed`` or ``skipped`` (only where the plan configures
nothing to check, and the detail says so), plus the numbers it was judged on.

Plain Python: the DAG ``dr_post_recovery_validation`` only wires these together.
"""

from __future__ import annotations

import fnmatch
import shutil
import stat
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import psycopg

from tracktion_dr.core.plan import Environment, HostRole, format_duration
from tracktion_dr.services.checks import functional_checks, service_health

CheckStatus = Literal["passed", "failed", "skipped"]

CHECKS = (
    "system_health",
    "data_integrity",
    "application_functionality",
    "performance_baseline",
    "security_posture",
    "monitoring_systems",
    "backup_systems",
)

# The host each check reads local state of (the step kit's routing, ``on_host``); a check
# not listed only talks over the network (HTTP, SQL, pg_amcheck over a connection) and runs
# on the default queue.
CHECK_HOSTS: dict[str, HostRole] = {
    # the free disk of the first cluster's data directory (and that host's CPU and memory)
    "system_health": "database_primary",
    # the functional checks upload a sample file kept on the application host
    "application_functionality": "application",
    # the listening ports of the services' host and the modes of its configuration files
    "security_posture": "application",
    # the dumps and the WAL archive, read from the plan's backup locations as the database
    # host's OS user, verified with its server tools (as the restore DAGs' guards do)
    "backup_systems": "database_primary",
}


@dataclass
class CheckResult:
    name: str
    status: CheckStatus
    detail: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _verdict(name: str, problems: list[str], ok: str, evidence: dict[str, Any]) -> CheckResult:
    if problems:
        return CheckResult(name, "failed", "; ".join(problems), evidence)
    return CheckResult(name, "passed", ok, evidence)


# --- system health -------------------------------------------------------------------------


def cpu_percent(interval: float = 0.5) -> float:
    """Busy share of all CPUs over ``interval`` seconds, from /proc/stat."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    total_a, idle_a = sample()
    time.sleep(interval)
    total_b, idle_b = sample()
    total = total_b - total_a
    return 0.0 if total <= 0 else 100.0 * (1 - (idle_b - idle_a) / total)


def memory_percent() -> float:
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        info[key] = int(value.split()[0])
    return 100.0 * (1 - info["MemAvailable"] / info["MemTotal"])


def disk_percent(path: Path) -> float:
    probe = path
    while not probe.exists():
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    return 100.0 * usage.used / usage.total


def system_health(environment: Environment, database_conninfos: dict[str, str]) -> CheckResult:
    """Every service healthy, every database accepting connections, resources below the
    plan's ceilings."""
    settings = environment.validation
    problems: list[str] = []
    healthy, services = service_health(
        environment, list(environment.services), environment.probe_timeout.total_seconds()
    )
    if not healthy:
        problems.append(f"services: {services}")
    databases: dict[str, str] = {}
    for name, conninfo in database_conninfos.items():
        try:
            with psycopg.connect(conninfo, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
            databases[name] = "accepting connections"
        except psycopg.Error as exc:
            databases[name] = f"{type(exc).__name__}: {str(exc).strip()[:120]}"
            problems.append(f"database {name}: {databases[name]}")
    first_data_dir = next(iter(environment.clusters.values())).data_directory
    resources = {
        "cpu_percent": round(cpu_percent(), 1),
        "memory_percent": round(memory_percent(), 1),
        "disk_percent": round(disk_percent(Path(first_data_dir)), 1),
    }
    ceilings = {
        "cpu_percent": settings.max_cpu_percent,
        "memory_percent": settings.max_memory_percent,
        "disk_percent": settings.max_disk_percent,
    }
    for key, value in resources.items():
        if value > ceilings[key]:
            problems.append(f"{key} {value} above the ceiling {ceilings[key]}")
    resource_text = ", ".join(f"{k.split('_')[0]} {v}%" for k, v in resources.items())
    return _verdict(
        "system_health",
        problems,
        f"{services}; databases: {', '.join(f'{k} {v}' for k, v in databases.items())}; "
        f"{resource_text}",
        {
            "services": services,
            "databases": databases,
            "resources": resources,
            "ceilings": ceilings,
        },
    )


# --- data integrity ------------------------------------------------------------------------


def data_integrity(endpoint: Any, databases: dict[str, str], bindir: Path) -> CheckResult:
    """Per database: table row counts, FK orphans (anti-joins), duplicate PKs, business
    rules and pg_amcheck (the integrity module the restore DAGs use)."""
    from tracktion_dr.postgres.dumps import exact_row_counts
    from tracktion_dr.postgres.integrity import validate_database
    from tracktion_dr.scenarios.database import CANARY_TABLES

    problems: list[str] = []
    evidence: dict[str, Any] = {}
    for name, dbname in databases.items():
        report = validate_database(endpoint, dbname, bindir=bindir, ignore_tables=CANARY_TABLES)
        with psycopg.connect(endpoint.conninfo(dbname), connect_timeout=10) as conn:
            counts = exact_row_counts(conn)
        evidence[name] = {
            "checks": report.as_dict(),
            "tables": len(counts),
            "rows": sum(counts.values()),
        }
        if not report.ok:
            problems.append(f"{name}: {'; '.join(report.problems[:5])}")
    summary = "; ".join(
        f"{n}: {e['tables']} tables, {e['rows']} rows, FK/PK/rules/amcheck clean"
        for n, e in evidence.items()
    )
    return _verdict("data_integrity", problems, summary or "no databases in the plan", evidence)


# --- application functionality --------------------------------------------------------------


def application_functionality(environment: Environment) -> CheckResult:
    services = list(environment.services)
    configured = [s for s in services if environment.services[s].functional_check]
    if not configured:
        return CheckResult(
            "application_functionality",
            "skipped",
            "no functional checks configured in the plan for any service",
        )
    ok, detail = functional_checks(environment, configured)
    return CheckResult(
        "application_functionality",
        "passed" if ok else "failed",
        detail,
        {"services": configured},
    )


# --- performance baseline --------------------------------------------------------------------


def performance_baseline(environment: Environment, samples: int = 3) -> CheckResult:
    """Median health answer time per service against the plan's threshold."""
    limit = environment.validation.max_health_latency.total_seconds()
    timings: dict[str, float | None] = {}
    problems: list[str] = []
    with httpx.Client(timeout=max(limit * 5, 5)) as client:
        for name, spec in environment.services.items():
            measured: list[float] = []
            for _ in range(samples):
                started = time.perf_counter()
                try:
                    response = client.get(spec.health_url)
                    if response.status_code == 200:
                        measured.append(time.perf_counter() - started)
                except httpx.HTTPError:
                    pass
            if not measured:
                timings[name] = None
                problems.append(f"{name}: no healthy answer")
                continue
            median = sorted(measured)[len(measured) // 2]
            timings[name] = round(median, 4)
            if median >= limit:
                problems.append(f"{name}: {median:.3f}s >= {limit:.3f}s")
    text = ", ".join(f"{n} {t * 1000:.1f} ms" for n, t in timings.items() if t is not None)
    return _verdict(
        "performance_baseline",
        problems,
        f"health latency (median of {samples}) below {limit:.3f}s: {text}",
        {"seconds": timings, "threshold_seconds": limit},
    )


# --- security posture ------------------------------------------------------------------------


# Docker's embedded DNS server listens on 127.0.0.11 (/proc/net/tcp's little-endian hex),
# on a random port, inside every container of a user-defined network: it answers that
# container's own name lookups and nothing else. Not a service of the host, and no
# allow-list can name its port.
DOCKER_EMBEDDED_DNS = "0B00007F"


def listening_ports(tables: tuple[str, ...] = ("/proc/net/tcp", "/proc/net/tcp6")) -> set[int]:
    """TCP ports in LISTEN state (this network namespace), from /proc/net/tcp{,6}, but
    Docker's embedded DNS server's."""
    ports: set[int] = set()
    for table in tables:
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":  # 0A = TCP_LISTEN
                address, port = fields[1].rsplit(":", 1)
                if address != DOCKER_EMBEDDED_DNS:
                    ports.add(int(port, 16))
    return ports


UNLISTED_CONFIG_MODE = 0o640


def config_file_modes(config_paths: list[str]) -> dict[str, str]:
    """Each file under the config paths with its permission bits (e.g. ``0640``)."""
    modes: dict[str, str] = {}
    for root in config_paths:
        base = Path(root)
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for path in files:
            modes[str(path)] = f"{stat.S_IMODE(path.stat().st_mode):04o}"
    return modes


def security_posture(environment: Environment) -> CheckResult:
    settings = environment.validation
    problems: list[str] = []
    notes: list[str] = []
    listening = sorted(listening_ports())
    if settings.allowed_ports is None:
        notes.append(f"ports: no allow-list in the plan (not judged; listening: {listening})")
        unexpected: list[int] = []
    else:
        unexpected = [p for p in listening if p not in settings.allowed_ports]
        if unexpected:
            problems.append(f"ports listening outside the allow-list: {unexpected}")
        else:
            notes.append(f"{len(listening)} listening ports, all in the allow-list")
    # validation.config_file_modes (glob -> most permissive mode, first match) is the
    # ceiling per file; no match: 0640 (the seed's rule). Stricter than the ceiling is fine.
    modes = config_file_modes(environment.config_paths)
    ceilings = {
        path: next(
            (
                int(mode, 8)
                for glob, mode in settings.config_file_modes.items()
                if fnmatch.fnmatch(Path(path).name, glob)
            ),
            UNLISTED_CONFIG_MODE,
        )
        for path in modes
    }
    wrong = {path: mode for path, mode in modes.items() if int(mode, 8) & ~ceilings[path]}
    missing = [p for p in environment.config_paths if not Path(p).exists()]
    if missing:
        problems.append(f"config paths missing: {missing}")
    if wrong:
        problems.append(
            "config file permissions: "
            + ", ".join(f"{p} is {m}, at most {ceilings[p]:04o}" for p, m in sorted(wrong.items()))
        )
    elif modes:
        notes.append(f"{len(modes)} config files, modes {sorted(set(modes.values()))}")
    evidence = {
        "listening_ports": listening,
        "unexpected_ports": unexpected,
        "allowed_ports": settings.allowed_ports,
        "config_file_modes": modes,
    }
    return _verdict("security_posture", problems, "; ".join(notes), evidence)


# --- monitoring -------------------------------------------------------------------------------


def monitoring_systems(environment: Environment) -> CheckResult:
    urls = environment.validation.monitoring
    if not urls:
        return CheckResult(
            "monitoring_systems",
            "skipped",
            "no monitoring health URLs configured in the plan for this environment "
            "(validation.monitoring): nothing was checked",
        )
    problems: list[str] = []
    states: dict[str, str] = {}
    for name, url in urls.items():
        try:
            response = httpx.get(url, timeout=environment.probe_timeout.total_seconds())
            states[name] = f"HTTP {response.status_code}"
            if response.status_code != 200:
                problems.append(f"{name} ({url}): HTTP {response.status_code}")
        except httpx.HTTPError as exc:
            states[name] = type(exc).__name__
            problems.append(f"{name} ({url}): {type(exc).__name__}")
    return _verdict(
        "monitoring_systems",
        problems,
        ", ".join(f"{n}: {s}" for n, s in states.items()),
        {"urls": dict(urls), "states": states},
    )


# --- backups ----------------------------------------------------------------------------------


def backup_systems(environment: Environment, now: datetime | None = None) -> CheckResult:
    """A verified dump of every database no older than the plan's limit, and a continuous
    WAL archive (the backups catalog: the same one the restore DAGs pick from)."""
    from tracktion_dr.backups.catalog import Catalog, Status

    now = now or datetime.now(UTC)
    limit = environment.validation.backup_max_age
    problems: list[str] = []
    evidence: dict[str, Any] = {}
    cluster = next(iter(environment.clusters.values()))
    catalog = Catalog(environment.backups, bindir=Path(cluster.bin_dir), os_user=cluster.os_user)
    for name, database in environment.databases.items():
        entries = catalog.dumps(database.name)
        verified = None
        for entry in entries:
            if now - entry.finished_at > limit:
                break
            checked = entry if entry.status is Status.FAILED else catalog.verify(entry)
            if checked.status is Status.VERIFIED:
                verified = checked
                break
        if verified is None:
            newest = entries[0].id if entries else "none"
            problems.append(
                f"{name}: no verified dump younger than {format_duration(limit)} (newest: {newest})"
            )
            evidence[name] = {"newest": newest}
        else:
            age = now - verified.finished_at
            evidence[name] = {"dump": verified.id, "age_seconds": age.total_seconds()}
    try:
        state = catalog.wal_archive()
        evidence["wal_archive"] = {"continuous": state.continuous}
        if not state.continuous:
            problems.append("WAL archive has gaps")
    except Exception as exc:  # an unreadable archive is a finding, not a crash
        problems.append(f"WAL archive unreadable: {exc}")
    ok = "; ".join(
        f"{n}: {e['dump']} verified, {format_duration_seconds(e['age_seconds'])} old"
        for n, e in evidence.items()
        if n != "wal_archive"
    )
    return _verdict("backup_systems", problems, ok + "; WAL archive continuous", evidence)


def format_duration_seconds(seconds: float) -> str:
    from datetime import timedelta

    return format_duration(timedelta(seconds=seconds))


def overall(results: list[dict[str, Any]]) -> str:
    """failed if any check failed; skipped checks never count as passed."""
    statuses = [r["status"] for r in results]
    return "failed" if "failed" in statuses else "passed"


def run_named_check(
    name: str,
    environment: Environment,
    conninfo_for: Any,
    endpoint_for: Any,
) -> CheckResult:
    """One of :data:`CHECKS` by name. ``conninfo_for(conn_id, dbname)`` and
    ``endpoint_for(conn_id)`` come from the Airflow layer (secrets never pass through here
    as values of the plan)."""
    if name == "system_health":
        return system_health(
            environment,
            {
                db: conninfo_for(environment.clusters[spec.cluster].conn_id, spec.name)
                for db, spec in environment.databases.items()
            },
        )
    if name == "data_integrity":
        cluster = next(iter(environment.clusters.values()))
        return data_integrity(
            endpoint_for(cluster.conn_id),
            {db: spec.name for db, spec in environment.databases.items()},
            Path(cluster.bin_dir),
        )
    checks = {
        "application_functionality": application_functionality,
        "performance_baseline": performance_baseline,
        "security_posture": security_posture,
        "monitoring_systems": monitoring_systems,
        "backup_systems": backup_systems,
    }
    if name not in checks:
        raise ValueError(f"no validation check {name!r} (known: {list(CHECKS)})")
    return checks[name](environment)
