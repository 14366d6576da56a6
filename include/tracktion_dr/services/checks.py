"""Health and functional checks a gate opens on.

A health URL answering 200 says a process is up; the functional check says it does its job
(the analysis service really analyses an uploaded audio file).
"""

from __future__ import annotations

import httpx

from tracktion_dr.core.plan import Environment, FunctionalCheck
from tracktion_dr.services.probes import ProbeFailure
from tracktion_dr.services.recovery import functional_check as run_functional_check


def service_health(
    environment: Environment, services: list[str], timeout: float = 5
) -> tuple[bool, str]:
    """(all healthy?, a per-service summary)."""
    states = []
    healthy = True
    for name in services:
        url = environment.services[name].health_url
        try:
            response = httpx.get(url, timeout=timeout)
            ok = response.status_code == 200
            states.append(f"{name}: {'healthy' if ok else f'HTTP {response.status_code}'}")
        except httpx.HTTPError as exc:
            ok = False
            states.append(f"{name}: {type(exc).__name__}")
        healthy &= ok
    return healthy, "; ".join(states) or "no services"


def functional_check(check: FunctionalCheck) -> tuple[bool, str]:
    """The plan's functional check as a gate sees it: (passed?, what it saw). A missing
    sample file is a failure, not a skip (the seed skipped silently, which hides a broken
    check for months). One implementation: ``services.recovery.functional_check``."""
    try:
        return True, run_functional_check(check)
    except ProbeFailure as exc:
        return False, str(exc)


def functional_checks(environment: Environment, services: list[str]) -> tuple[bool, str]:
    results = []
    ok = True
    for name in services:
        check = environment.services[name].functional_check
        if check is None:
            continue
        passed, detail = functional_check(check)
        ok &= passed
        results.append(f"{name}: {detail}")
    return ok, "; ".join(results) or "no functional checks in the plan for these services"
