"""Which of the sandbox's two database nodes is the primary now, read from their data
directories before anything starts.

The sandbox starts as primary (``pg/primary``, PRIMARY_PORT) and streaming replica
(``pg/replica``, REPLICA_PORT), but the DR DAGs move that role: ``dr_failover`` promotes
the replica and fences the old primary (``standby.signal`` and a ``DR_FENCED`` note in its
data directory), ``dr_standby_rebuild`` makes the old primary a standby of the promoted
replica, ``dr_switchover`` moves the role back. The ports stay with the data directories;
only the roles move. So ``up`` must not assume the primary's directory holds the primary:
it reads each directory (no server needs to run):

* ``standby.signal``: the node starts as a standby (read-only);
* ``primary_conninfo`` in ``postgresql.auto.conf`` (the last one wins, as in the server):
  which port it streams from;
* ``DR_FENCED``: a failover fenced it (it is the old primary, not rebuilt yet).

and decides one of:

* **standard**: the primary's directory is the primary, the replica (if any) its standby;
* **swapped**: the promoted replica is the primary and the old primary streams from it
  (after a failover and a rebuild);
* **failed over**: the promoted replica is the primary, the old primary is fenced and not
  a standby of it: the old primary stays stopped (starting it would serve stale reads, and
  it cannot follow the new timeline before a rewind); ``up`` says to run the rebuild.

Anything else (both writable, neither writable) is refused with what to run; ``up`` never
guesses which copy of the data is the real one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tracktion_sandbox.layout import PRIMARY_PORT, REPLICA_PORT, SandboxLayout

FENCE_NOTE = "DR_FENCED"  # written by tracktion_dr.services.failover.fence_old_primary
REBUILD_HINT = (
    "rebuild the old primary as a standby of the new one: trigger dr_standby_rebuild "
    "(environment drill, cluster main) in Airflow, or in a shell with the sandbox's "
    "environment: `airflow dags test dr_standby_rebuild -c "
    '\'{"environment": "drill", "cluster": "main"}\'`'
)

Kind = Literal["standard", "swapped", "failed_over"]


class TopologyError(RuntimeError):
    """The data directories describe no topology the sandbox can start; says what to run."""


@dataclass(frozen=True)
class NodeState:
    """What one data directory says about the node, read without starting it."""

    name: str  # "primary" | "replica": the directory's (and the balancer's) name
    data_dir: Path
    port: int
    initialized: bool
    standby: bool
    fenced: bool
    follows_port: int | None  # the port in its primary_conninfo, if any

    @property
    def writable(self) -> bool:
        return self.initialized and not self.standby

    def describe(self) -> str:
        if not self.initialized:
            return f"{self.name} ({self.data_dir}): no cluster"
        role = "standby" if self.standby else "primary"
        follows = f" of port {self.follows_port}" if self.standby and self.follows_port else ""
        fenced = ", fenced by a failover" if self.fenced else ""
        return f"{self.name} ({self.data_dir}, port {self.port}): {role}{follows}{fenced}"


@dataclass(frozen=True)
class Topology:
    kind: Kind
    primary: NodeState  # the node that starts writable
    standby: NodeState | None  # the node that starts as its standby (None: none starts)
    stopped: NodeState | None  # a node left stopped on purpose (the fenced old primary)

    def describe(self) -> str:
        text = f"{self.kind}: primary = {self.primary.name} (port {self.primary.port})"
        if self.standby is not None:
            text += f", standby = {self.standby.name} (port {self.standby.port})"
        if self.stopped is not None:
            text += f", {self.stopped.name} stays stopped ({self.stopped.describe()})"
        return text


_CONNINFO_LINE = re.compile(r"^\s*primary_conninfo\s*=\s*'(?P<value>(?:[^']|'')*)'", re.M)
_PORT = re.compile(r"(?:^|\s)port\s*=\s*'?(?P<port>\d+)")


def followed_port(data_dir: Path) -> int | None:
    """The port of the last ``primary_conninfo`` in ``postgresql.auto.conf`` (the server
    uses the last one), or None. The sandbox's standbys connect to 127.0.0.1 only."""
    try:
        text = (data_dir / "postgresql.auto.conf").read_text()
    except OSError:
        return None
    values = [m.group("value").replace("''", "'") for m in _CONNINFO_LINE.finditer(text)]
    if not values:
        return None
    port = _PORT.search(values[-1])
    return int(port.group("port")) if port else None


def node_state(name: str, data_dir: Path, port: int) -> NodeState:
    return NodeState(
        name=name,
        data_dir=data_dir,
        port=port,
        initialized=(data_dir / "PG_VERSION").is_file(),
        standby=(data_dir / "standby.signal").exists(),
        fenced=(data_dir / FENCE_NOTE).exists(),
        follows_port=followed_port(data_dir),
    )


def read_nodes(layout: SandboxLayout) -> tuple[NodeState, NodeState]:
    return (
        node_state("primary", layout.primary_data, PRIMARY_PORT),
        node_state("replica", layout.replica_data, REPLICA_PORT),
    )


def decide(primary: NodeState, replica: NodeState) -> Topology:
    """The topology the two nodes' directories describe, or ``TopologyError`` saying what
    to run. An uninitialised primary directory with nothing else is a fresh sandbox
    (standard); the caller's own checks refuse orphaned replica data."""
    if replica.writable and primary.writable:
        raise TopologyError(
            f"both database nodes are primaries (neither has standby.signal): "
            f"{primary.describe()}; {replica.describe()}. Starting both would let two "
            "servers accept writes. The one the load balancer's database backend points to "
            "is the live one: write standby.signal into the other's data directory, then "
            + REBUILD_HINT
        )
    if replica.writable:
        # A fenced node is the old primary as the failover left it, whatever conninfo its
        # postgresql.auto.conf still holds from an earlier life as a standby (a rebuild
        # never keeps the fence note).
        if (
            primary.initialized
            and primary.standby
            and not primary.fenced
            and primary.follows_port == replica.port
        ):
            return Topology("swapped", replica, primary, None)
        return Topology("failed_over", replica, None, primary if primary.initialized else None)
    if primary.writable or not primary.initialized:
        return Topology("standard", primary, replica, None)
    # the primary's directory is a standby and the replica is not a primary
    if primary.fenced:
        raise TopologyError(
            f"the old primary is fenced by a failover but no node is a primary: "
            f"{primary.describe()}; {replica.describe()}. Finish the failover "
            "(dr_failover target=database promotes the replica), or, if the old primary "
            "must serve again, recover it (dr_database_pitr) instead of starting it by hand"
        )
    raise TopologyError(
        f"no database node is a primary: {primary.describe()}; {replica.describe()}. "
        "Promote the node that holds the newest data (dr_failover target=database, or "
        "pg_ctl promote on it), then run up again"
    )


def detect(layout: SandboxLayout) -> Topology:
    return decide(*read_nodes(layout))
