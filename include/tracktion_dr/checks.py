"""Health and functional checks a gate opens on.

A health URL answering 200 says a process is up; the functional check says it does its job
(the analysis service really analyses an uploaded audio file).
"""

from __future__ import annotations

from pathlib import Path

import httpx

from tracktion_dr.plan import Environment, FunctionalCheck


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
    """Run the plan's functional check; a missing sample file is a failure, not a skip
    (the seed skipped silently, which hides a broken check for months)."""
    timeout = check.timeout.total_seconds()
    try:
        if check.sample_file:
            sample = Path(check.sample_file)
            if not sample.is_file():
                return False, f"sample file {sample} is missing"
            with sample.open("rb") as handle:
                response = httpx.request(
                    check.method, check.url, files={"file": (sample.name, handle)}, timeout=timeout
                )
        else:
            response = httpx.request(check.method, check.url, timeout=timeout)
    except httpx.HTTPError as exc:
        return False, f"{check.method} {check.url}: {type(exc).__name__}: {exc}"
    if response.status_code != check.expect_status:
        return (
            False,
            f"{check.method} {check.url}: HTTP {response.status_code} {response.text[:120]}",
        )
    if check.expect_json:
        try:
            body = response.json()
        except ValueError:
            return False, f"{check.url}: answer is not JSON"
        wrong = {k: body.get(k) for k, v in check.expect_json.items() if body.get(k) != v}
        if wrong:
            return False, f"{check.url}: expected {check.expect_json}, got {wrong}"
    return True, f"{check.method} {check.url}: HTTP {response.status_code}, as expected"


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
