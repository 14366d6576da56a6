"""Failover from a primary to its secondary: service backends and the database.

Services: traffic is switched through the load balancer's admin API (the seed's
``POST /api/v1/backends/{service}/servers/{host}`` with ``weight`` and ``status``), only
after the primary is confirmed unhealthy and the secondary confirmed healthy, and the switch
is proven by routing a request through the balancer (its ``X-Backend`` answer header), not
by trusting the API's 200.

Database: fence the old primary first (so it cannot accept writes if it comes back: a
running postmaster is stopped the way its host runs it - the plan's ``control`` -,
``standby.signal`` is written into its data directory so a restart comes up read-only,
and a ``DR_FENCED`` note says why) - but only once its data directory is proven to hold
the old primary and not the standby (:func:`check_fence_target`) - then ``pg_promote`` the
streaming replica, repoint the balancer's ``database`` backend, prove a write commits on
the new primary, and measure the data lost from the canary heartbeats that survived.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tracktion_dr.core.errors import CommandError, FailoverRefused
from tracktion_dr.core.plan import Cluster
from tracktion_dr.postgres.control import cluster_control
from tracktion_dr.postgres.identity import (
    DirectoryIdentity,
    ServerIdentity,
    directory_identity,
    server_identity,
)

log = logging.getLogger(__name__)

VERIFY_WRITER = "dr-failover-verify"
FENCE_NOTE = "DR_FENCED"
PROMOTED_ALREADY = (
    "promoted already (writable): the fence goes on only if this incident fenced the old "
    "primary (a re-run after the switch was cut short)"
)
HTTP_TIMEOUT = 5.0


# --- load balancer ---------------------------------------------------------------------


class LoadBalancer:
    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")

    def backend(self, service: str) -> dict[str, Any]:
        response = httpx.get(f"{self.base_url}/api/v1/backends/{service}", timeout=HTTP_TIMEOUT)
        if response.status_code == 404:
            raise FailoverRefused(f"the load balancer has no backend {service!r}")
        response.raise_for_status()
        return response.json()

    def set_server(self, service: str, server: str, *, weight: int, status: str) -> dict[str, Any]:
        response = httpx.post(
            f"{self.base_url}/api/v1/backends/{service}/servers/{server}",
            json={"weight": weight, "status": status},
            timeout=HTTP_TIMEOUT,
        )
        if response.status_code != 200:
            raise RuntimeError(
                f"load balancer refused {service}/{server}: HTTP {response.status_code} "
                f"{response.text[:200]}"
            )
        return response.json()

    def switch(self, service: str, primary: str, secondary: str) -> None:
        """Secondary in first, then primary out: there is never a moment with no server."""
        self.set_server(service, secondary, weight=100, status="enabled")
        self.set_server(service, primary, weight=0, status="disabled")

    def routed_to(self, service: str, path: str = "/health") -> tuple[str | None, int | None]:
        """Which server answers a request routed through the balancer, and its status."""
        try:
            response = httpx.get(f"{self.base_url}/route/{service}{path}", timeout=HTTP_TIMEOUT)
        except httpx.HTTPError:
            return None, None
        return response.headers.get("X-Backend"), response.status_code


def server_health(address: str, path: str = "/health") -> tuple[bool, str]:
    try:
        response = httpx.get(f"http://{address}{path}", timeout=HTTP_TIMEOUT)
    except httpx.HTTPError as exc:
        text = str(exc) or type(exc).__name__
        return False, "connection refused" if "refused" in text.lower() else text[:160]
    return response.is_success, f"HTTP {response.status_code}"


def check_service_preconditions(
    backend: dict[str, Any], primary: str, secondary: str
) -> dict[str, Any]:
    """Raise FailoverRefused unless the primary is down and the secondary healthy."""
    servers = backend["servers"]
    for role, name in (("primary", primary), ("secondary", secondary)):
        if name not in servers:
            raise FailoverRefused(
                f"{role} server {name!r} is not in the backend (have {sorted(servers)})"
            )
    primary_ok, primary_detail = server_health(servers[primary]["address"])
    secondary_ok, secondary_detail = server_health(servers[secondary]["address"])
    found = {
        "primary": {"server": primary, "healthy": primary_ok, "detail": primary_detail},
        "secondary": {"server": secondary, "healthy": secondary_ok, "detail": secondary_detail},
    }
    if primary_ok:
        raise FailoverRefused(
            f"primary {primary} is healthy ({primary_detail}): failover not needed, nothing switched"
        )
    if not secondary_ok:
        raise FailoverRefused(
            f"secondary {secondary} is also down ({secondary_detail}): nothing switched"
        )
    return found


# --- database --------------------------------------------------------------------------


def _connect(conninfo: str, timeout: float = 5) -> psycopg.Connection[Any]:
    return psycopg.connect(
        conninfo,
        connect_timeout=max(2, math.ceil(timeout)),
        autocommit=True,
        application_name="tracktion-dr-failover",
        options="-c statement_timeout=90000",
    )


def database_role(conninfo: str) -> tuple[bool, str]:
    """(reachable and writable?, description)."""
    try:
        with _connect(conninfo) as conn:
            (in_recovery,) = conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()  # type: ignore[misc]
    except psycopg.Error as exc:
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        return False, (lines[-1] if lines else type(exc).__name__)[:160]
    return (not in_recovery), ("standby (in recovery)" if in_recovery else "primary (writable)")


def check_database_preconditions(primary_conninfo: str, replica_conninfo: str) -> dict[str, Any]:
    primary_up, primary_detail = database_role(primary_conninfo)
    try:
        with _connect(replica_conninfo) as conn:
            (in_recovery,) = conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()  # type: ignore[misc]
            replay = conn.execute("SELECT pg_catalog.pg_last_xact_replay_timestamp()").fetchone()[0]  # type: ignore[index]
            # the pair's identity (a standby has its primary's): what the switch checks the
            # directory it fences against
            system_identifier = conn.execute(
                "SELECT system_identifier::text FROM pg_catalog.pg_control_system()"
            ).fetchone()[0]  # type: ignore[index]
    except psycopg.Error as exc:
        raise FailoverRefused(
            f"the replica is not reachable ({str(exc).strip().splitlines()[-1][:160]}): "
            "nothing switched"
        ) from None
    if primary_up:
        raise FailoverRefused(
            f"the primary is up and writable ({primary_detail}): nothing switched"
        )
    # A replica already promoted is either this incident's own switch, killed after
    # pg_promote (a re-run must finish it: repoint, gate, measure), or another failover's.
    # Only the old primary's host can tell (this incident's fence note in its data
    # directory): fence_old_primary checks it there before anything is switched.
    return {
        "primary": primary_detail,
        "replica": "standby (in recovery)" if in_recovery else PROMOTED_ALREADY,
        "replica_last_replay": replay.isoformat() if replay else None,
        "system_identifier": system_identifier,
    }


def check_fence_target(
    cluster: Cluster, incident_id: str, standby: ServerIdentity
) -> DirectoryIdentity | None:
    """Prove the cluster's data directory on this host holds the old primary, before it is
    stopped or fenced; ``FailoverRefused`` (nothing touched) when it does not.

    The old primary is down, so what it is comes from its data directory (pg_controldata,
    postmaster.pid) and is compared with the standby being promoted, asked over its
    connection: the same system identifier (a physical standby shares its primary's), and
    not that standby - not in recovery (unless this incident fenced it and someone started
    it read-only since), not the standby's own postmaster (same start time and port), not
    on the promoted standby's new timeline. Needed because the plan names the old primary
    by a local path that, on a host pair, the standby's host has too.
    None when the directory is not here (then there is nothing to stop on this host)."""
    data = Path(cluster.data_directory)
    if not data.is_dir():
        return None
    found = directory_identity(data, bindir=Path(cluster.bin_dir), os_user=cluster.os_user)
    hint = (
        "run the fence on the old primary's host (dr_failover's fence_old_primary goes to "
        "the worker queue of the cluster's host in the plan), or correct the "
        "cluster's data_directory in the plan; nothing was stopped or fenced"
    )
    if found is None:
        raise FailoverRefused(
            f"{data} holds no PostgreSQL cluster (no global/pg_control): it is not the old primary",
            hint=hint,
        )
    if found.system_identifier != standby.system_identifier:
        raise FailoverRefused(
            f"{data} is another cluster (system identifier {found.system_identifier}), not "
            f"the old primary of the standby being promoted ({standby.system_identifier})",
            hint=hint,
        )
    if found.in_recovery and not fenced_by(data, incident_id):
        raise FailoverRefused(
            f"{data} is a standby ({found.state}), not the old primary: {found.describe()}",
            hint=hint,
        )
    if (
        found.postmaster_started is not None
        and found.postmaster_started == int(standby.postmaster_started.timestamp())
        and found.port == standby.port
    ):
        raise FailoverRefused(
            f"{data} is the standby being promoted itself (its postmaster started at "
            f"{standby.postmaster_started.isoformat()} on port {standby.port})",
            hint=hint,
        )
    if not standby.in_recovery and not found.in_recovery and found.timeline >= standby.timeline:
        raise FailoverRefused(
            f"{data} is on timeline {found.timeline}, the promoted standby's: it is the "
            "promoted standby (or a copy of it), not the old primary",
            hint=hint,
        )
    return found


def fenced_by(data_directory: Path, incident_id: str) -> bool:
    """This incident's fence note is in the data directory."""
    try:
        return f"({incident_id})" in (data_directory / FENCE_NOTE).read_text()
    except OSError:
        return False


def _fence_note_line(data_directory: Path) -> str:
    try:
        return (data_directory / FENCE_NOTE).read_text().splitlines()[0][:200]
    except (OSError, IndexError):
        return f"no {FENCE_NOTE} note"


def fence_old_primary(cluster: Cluster, incident_id: str, *, standby_conninfo: str) -> list[str]:
    """Make sure the old primary cannot accept writes if it comes back: after proving the
    data directory is the old primary (:func:`check_fence_target`, against the standby on
    ``standby_conninfo``), stop it the way its host runs it and write standby.signal.

    A standby found promoted already is accepted only when this incident's fence note is
    in the directory (the run that wrote it was cut short after pg_promote): the fence is
    confirmed and the switch finishes; otherwise another failover promoted it - refused."""
    try:
        standby = server_identity(standby_conninfo)
    except psycopg.Error as exc:
        raise FailoverRefused(
            f"the standby to promote does not answer ({str(exc).strip().splitlines()[-1][:160]}): "
            "nothing fenced, nothing switched"
        ) from None
    found = check_fence_target(cluster, incident_id, standby)
    data = Path(cluster.data_directory)
    if found is None:
        return [f"{data} is not reachable from here: fence it on its host"]
    if not standby.in_recovery and not fenced_by(data, incident_id):
        raise FailoverRefused(
            f"the standby is promoted already ({standby.describe()}) and {data} carries no "
            f"fence of {incident_id}: another failover promoted it - nothing fenced, nothing "
            f"switched ({_fence_note_line(data)})",
            hint="the pair is failed over already: rebuild the old primary as a standby "
            "(dr_standby_rebuild), or re-run the incident that fenced it",
        )
    actions = [f"checked: {found.describe()}; the standby: {standby.describe()}"]
    if not standby.in_recovery:
        actions.append(f"the standby was promoted by an earlier run of {incident_id}: resuming")
    control = cluster_control(cluster)
    if control.is_running():
        try:
            control.stop("fast", timeout=60)
        except CommandError as exc:
            raise RuntimeError(f"could not stop the old primary: {exc}") from None
        actions.append(f"stopped the old primary's postmaster ({control.describe()})")
    signal_file = data / "standby.signal"
    if not signal_file.exists():
        signal_file.write_text("")
        actions.append("wrote standby.signal: a restart comes up read-only")
    note = data / FENCE_NOTE
    note.write_text(
        f"Fenced by dr_failover ({incident_id}) at {datetime.now(UTC).isoformat()}: the replica "
        "was promoted. Do not remove standby.signal; rebuild this node as a standby of the "
        "new primary (pg_rewind or pg_basebackup).\n"
    )
    actions.append(f"wrote {FENCE_NOTE}")
    return actions


def promote(replica_conninfo: str, wait_seconds: int = 60) -> str:
    with _connect(replica_conninfo) as conn:
        (in_recovery,) = conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()  # type: ignore[misc]
        if not in_recovery:
            return "already promoted"
        (done,) = conn.execute("SELECT pg_catalog.pg_promote(true, %s)", (wait_seconds,)).fetchone()  # type: ignore[misc]
    if not done:
        raise RuntimeError(f"pg_promote did not finish within {wait_seconds}s")
    return "promoted with pg_promote"


def verify_write(conninfo: str) -> str:
    """Commit a canary row on the new primary and read it back."""
    with _connect(conninfo) as conn:
        (row_id, written_at) = conn.execute(
            "INSERT INTO dr_canary.heartbeat (writer) VALUES (%s) RETURNING id, written_at",
            (VERIFY_WRITER,),
        ).fetchone()  # type: ignore[misc]
        (count,) = conn.execute(
            "SELECT count(*) FROM dr_canary.heartbeat WHERE id = %s", (row_id,)
        ).fetchone()  # type: ignore[misc]
    if count != 1:
        raise RuntimeError("the verification write did not read back")
    return f"write committed on the new primary (heartbeat {row_id} at {written_at.isoformat()})"


def canary_data_loss(conninfo: str, incident_at: datetime) -> dict[str, Any]:
    """Data lost = incident time - newest surviving canary heartbeat written before the
    incident (the failover's own verification write comes after it and never counts)."""
    from tracktion_dr.postgres.measure import canary_data_loss as measure

    loss = measure(conninfo, incident_at)
    return {
        "newest_surviving_write": loss.newest_surviving_write,
        "data_loss_seconds": loss.seconds,
    }
