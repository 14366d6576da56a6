"""Infrastructure checks with findings an operator can act on, and the repairs the plan
allows. Replaces the seed's ``infrastructure_recovery.sh``, which pinged 8.8.8.8, rewrote
``/etc/resolv.conf`` unconditionally, and ran ``docker system prune -f`` on every compute
"recovery". Here nothing touches system files: DNS problems are reported, not "fixed";
Docker is pruned only when the run's explicit ``prune_docker`` param asks for it.

Every check is a time-bounded probe (run concurrently); a finding names the area
(network, storage, compute), the subject, what was seen and, when failing, what to do.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tracktion_dr.core.plan import Environment
from tracktion_dr.services.probes import ProbeFailure, ProbeTarget, run_probes, storage_writable

AREAS = ("network", "storage", "compute")


@dataclass(frozen=True)
class Finding:
    area: str
    subject: str
    ok: bool
    detail: str
    repair: str | None = None  # the plan-allowed repair for this finding, if any

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_hosts(environment: Environment, extra_hosts: list[str] | None = None) -> list[str]:
    """Every host name the plan's URLs use, plus the plan's (and the caller's) extra ones."""
    urls = [s.health_url for s in environment.services.values()]
    urls += [s.functional_check.url for s in environment.services.values() if s.functional_check]
    urls += [d.url for d in environment.external_dependencies.values()]
    hosts = [urlsplit(url).hostname or "" for url in urls]
    hosts += environment.infrastructure.hosts + list(extra_hosts or [])
    return sorted({h for h in hosts if h and not _is_address(h)})


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def resolves(host: str) -> Callable[[float], str]:
    def check(timeout: float) -> str:
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
        except socket.gaierror as exc:
            raise ProbeFailure(f"does not resolve: {exc.strerror}") from None
        return "resolves to " + ", ".join(sorted(addresses)[:3])

    return check


def free_disk(path: str, minimum_percent: float) -> Callable[[float], str]:
    def check(timeout: float) -> str:
        usage = os.statvfs(path)
        percent = 100 * usage.f_bavail / usage.f_blocks if usage.f_blocks else 0.0
        detail = f"{percent:.1f}% free ({usage.f_bavail * usage.f_frsize / 2**30:.1f} GiB)"
        if percent < minimum_percent:
            raise ProbeFailure(f"{detail}, below the plan's {minimum_percent:g}%")
        return detail

    return check


def free_memory(
    minimum_percent: float, meminfo: Path = Path("/proc/meminfo")
) -> Callable[[float], str]:
    def check(timeout: float) -> str:
        values = {}
        for line in meminfo.read_text().splitlines():
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0])  # kB
        percent = 100 * values["MemAvailable"] / values["MemTotal"]
        detail = (
            f"{percent:.1f}% available ({values['MemAvailable'] / 2**20:.1f} of "
            f"{values['MemTotal'] / 2**20:.1f} GiB), {os.cpu_count()} CPUs, load "
            f"{os.getloadavg()[0]:.2f}"
        )
        if percent < minimum_percent:
            raise ProbeFailure(f"{detail}, below the plan's {minimum_percent:g}%")
        return detail

    return check


def _existing_parent(path: Path) -> str:
    while not path.exists() and path != path.parent:
        path = path.parent
    return str(path)


def infrastructure_findings(
    environment: Environment,
    areas: list[str],
    manager_checks: dict[str, Callable[[float], str]],
) -> list[Finding]:
    """Run every check of the chosen areas at once; one finding per check.

    ``manager_checks``: controller name -> check that the service manager answers (built by
    the Airflow layer, which knows the credentials)."""
    policy = environment.infrastructure
    timeout = environment.probe_timeout.total_seconds()
    targets: list[ProbeTarget] = []
    repairs: dict[str, str] = {}
    if "network" in areas:
        for host in plan_hosts(environment):
            targets.append(ProbeTarget(f"network:dns {host}", "external", resolves(host), timeout))
    if "storage" in areas:
        for name, area in environment.storage.items():
            subject = f"storage:{name} {area.path}"
            targets.append(
                ProbeTarget(
                    subject, "storage", storage_writable(area.path, area.must_be_writable), timeout
                )
            )
            if policy.repair_directories and not Path(area.path).is_dir():
                repairs[subject] = "recreate the directory with the plan's owner and mode"
        for path in environment.config_paths:
            targets.append(
                ProbeTarget(
                    f"storage:config {path}", "storage", storage_writable(path, False), timeout
                )
            )
        disks: dict[int, str] = {}  # one free-space check per filesystem
        for area in environment.storage.values():
            path = _existing_parent(Path(area.path))
            disks.setdefault(os.stat(path).st_dev, path)
        for disk in sorted(disks.values()):
            targets.append(
                ProbeTarget(
                    f"storage:free {disk}",
                    "storage",
                    free_disk(disk, policy.min_free_disk_percent),
                    timeout,
                )
            )
    if "compute" in areas:
        targets.append(
            ProbeTarget(
                "compute:memory", "external", free_memory(policy.min_free_memory_percent), timeout
            )
        )
        for name, check in manager_checks.items():
            subject = f"compute:service manager {name}"
            targets.append(ProbeTarget(subject, "service", check, timeout * 3))
            if policy.restart_service_manager:
                repairs[subject] = "restart the service manager"
    findings = []
    for result in run_probes(targets):
        area, _, subject = result.name.partition(":")
        findings.append(
            Finding(
                area=area,
                subject=subject,
                ok=result.healthy,
                detail=result.detail,
                repair=None if result.healthy else repairs.get(result.name),
            )
        )
    return findings


def render_findings(findings: list[Finding]) -> str:
    lines = []
    for f in findings:
        mark = "OK  " if f.ok else "FAIL"
        lines.append(f"[{mark}] {f.area:8} {f.subject}: {f.detail}")
        if not f.ok:
            lines.append(f"         -> {f.repair or 'not repaired automatically: see the finding'}")
    return "\n".join(lines)
