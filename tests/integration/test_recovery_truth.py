"""Evidence that is true, checked by an observer outside the DAG.

An observer thread polls the primary (a write, so a read-only or paused server does not
count as back) and the /health of the services that depend on it every 200 ms, from before
the incident until after the run (service is restored when all of them answer: one service
started first is not the service back). The primary is killed and its data directory lost; dr_database_pitr recovers to
latest. Then:

* the RTO the run reports is within 2 s of the outage the observer saw (kill -> the first
  moment from which database and service answered for good);
* the data loss it reports equals the span of the observer's rows actually missing
  (incident time - the newest of its rows from before the incident that survived), within
  the observer's own 200 ms resolution.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime

import httpx
import psycopg
import pytest
from pitr_support import kill_primary
from psycopg import sql

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states
from tracktion_dr.airflow.support import endpoint
from tracktion_dr.core.plan import load_plan

pytestmark = pytest.mark.sandbox
POLL_SECONDS = 0.2


class Observer(threading.Thread):
    def __init__(self, conninfo: str, table: sql.Identifier, health_urls: list[str]):
        super().__init__(daemon=True)
        self.conninfo, self.table, self.health_urls = conninfo, table, health_urls
        self.samples: list[tuple[datetime, bool]] = []
        self.committed: dict[int, datetime] = {}
        self.stop = threading.Event()

    def write(self) -> bool:
        try:
            with psycopg.connect(self.conninfo, connect_timeout=1, autocommit=True) as conn:
                row_id, written_at = conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (written_at) VALUES (clock_timestamp()) "
                        "RETURNING id, written_at"
                    ).format(self.table)
                ).fetchone()
            self.committed[row_id] = written_at
            return True
        except psycopg.Error:
            return False

    def healthy(self) -> bool:
        try:
            return all(httpx.get(url, timeout=1).status_code == 200 for url in self.health_urls)
        except httpx.HTTPError:
            return False

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            ok = self.write() & self.healthy()
            self.samples.append((datetime.now(UTC), ok))
            self.stop.wait(max(0.0, POLL_SECONDS - (time.monotonic() - started)))

    def outage_end(self, incident: datetime) -> datetime:
        """The first sample from which everything answered until the end."""
        after = [(at, ok) for at, ok in self.samples if at >= incident]
        last_down = max((i for i, (_, ok) in enumerate(after) if not ok), default=None)
        assert last_down is not None, "the observer never saw the outage"
        assert last_down + 1 < len(after), "the observer never saw the system back"
        return after[last_down + 1][0]


def test_reported_rto_and_data_loss_match_what_an_observer_saw(sandbox):
    layout = sandbox.layout
    primary = endpoint("tracktion_pg_primary")
    table = sql.Identifier(f"truth_probe_{uuid.uuid4().hex[:10]}")
    with psycopg.connect(primary.conninfo("tracktion"), autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id bigserial PRIMARY KEY, written_at timestamptz NOT NULL)"
            ).format(table)
        )
    environment = load_plan().environment("drill")
    dependents = environment.dependents_of("tracktion")
    observer = Observer(
        primary.conninfo("tracktion"),
        table,
        [environment.services[name].health_url for name in dependents],
    )
    observer.start()
    time.sleep(3)  # a steady state first: rows written, service healthy

    kill_primary(layout.primary_data)
    incident = datetime.now(UTC)
    lost = layout.primary_data.with_name(f"primary.lost-in-truth-test-{uuid.uuid4().hex[:6]}")
    layout.primary_data.rename(lost)  # the disk is gone (kept aside, never deleted)
    try:
        dag_run = run_dag(
            "dr_database_pitr",
            {
                "environment": "drill",
                "cluster": "main",
                "target_type": "latest",
                "incident_started_at": incident.isoformat(),
            },
        )
        time.sleep(3)  # let the observer see the system stay up
    finally:
        observer.stop.set()
        observer.join(timeout=10)
    assert task_states(dag_run)["verdict"] == "success", task_states(dag_run)
    timeline = task_result(dag_run, "record")

    observed_rto = (observer.outage_end(incident) - incident).total_seconds()
    assert timeline["rto_achieved_seconds"] == pytest.approx(observed_rto, abs=2.0), (
        f"reported RTO {timeline['rto_achieved_seconds']:.1f}s, observed {observed_rto:.1f}s"
    )

    before = {i: at for i, at in observer.committed.items() if at <= incident}
    with psycopg.connect(primary.conninfo("tracktion")) as conn:
        surviving = {
            r[0]
            for r in conn.execute(
                sql.SQL("SELECT id FROM {} WHERE id = ANY(%s)").format(table), (list(before),)
            ).fetchall()
        }
    newest_surviving = max(before[i] for i in surviving)
    missing = sorted(set(before) - surviving)
    assert all(before[i] > newest_surviving for i in missing), "only the newest rows are lost"
    lost_span = (incident - newest_surviving).total_seconds()
    assert timeline["data_loss_seconds"] == pytest.approx(lost_span, abs=POLL_SECONDS + 0.05), (
        f"reported {timeline['data_loss_seconds']}s lost; the observer's rows say {lost_span:.2f}s "
        f"({len(missing)} rows missing)"
    )
