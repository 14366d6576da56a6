"""One module per scenario's decisions (README, layout): what a run will do and in
which order, what each step does given what it finds, when a gate opens, and the sentence
that says what is still wrong. Plain Python, no Airflow: the DAG files wire these functions
into steps (``tracktion_dr.airflow.steps``) and gates (``dag_kit.RtoGate``) and show their graph.

A run is the guard's result, a dict (it travels as XCom): the common incident fields
(``incident_id``, ``started_at``, ``environment``, ``dry_run``, ``notify``) plus what the
scenario's guard decided. A step function returns ``{"detail": ..., **figures}`` (and
``"status": "skipped"`` when it left things alone); the step kit turns that into the
step's event.

Reaching the systems needs Airflow's connections (secrets stay there): a scenario gets
them as a :class:`SystemAccess`, built by the Airflow layer (``airflow.access.ACCESS``),
so every decision here runs in a unit test without Airflow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tracktion_dr.core.plan import Controller, Environment, Plan
from tracktion_dr.services.base import ServiceController

# A gate's check: given the run, (opened?, what it saw).
GateCheck = Callable[[dict[str, Any]], tuple[bool, str]]


@dataclass(frozen=True)
class SystemAccess:
    """How a scenario reaches the systems the plan names by Airflow connection id."""

    # (conn id, database name or None) -> libpq conninfo. Holds a password: never log it.
    conninfo: Callable[[str, str | None], str]
    # the plan's controller spec -> a service controller (supervisord, compose, systemd)
    controller: Callable[[Controller], ServiceController]
    # conn id -> base URL (scheme://host:port) of an HTTP endpoint, e.g. the load balancer
    url: Callable[[str], str]
    # (AWS conn id, secret id, connection URI) -> "created" | "updated": an Airflow
    # connection written to the secrets backend (AWS Secrets Manager). The URI holds a
    # password: never log it.
    store_connection_secret: Callable[[str, str, str], str] | None = None


def environment_of(plan: Plan, run: dict[str, Any]) -> Environment:
    """The plan's environment the run acts on."""
    return plan.environment(run["environment"])


def joined(parts: dict[str, str], empty: str) -> str:
    """``"a: x; b: y"`` (a step's detail), or ``empty`` when there is nothing to say."""
    return "; ".join(f"{name}: {what}" for name, what in parts.items()) or empty
