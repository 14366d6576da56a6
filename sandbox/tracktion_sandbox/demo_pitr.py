"""``make demo``: a database incident on the sandbox, recovered by point-in-time recovery.

While the canary writes a heartbeat every second, a table is dropped (the incident). Then
``dr_database_pitr`` runs for real (``dag.test()``) to one second before the drop, and the
demo prints the run's timeline, the RTO achieved against the tier's target and the data
actually lost (measured from the canary) against the RPO.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from datetime import timedelta

# The demo prints its own report; Airflow's per-task INFO lines would bury it.
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")

import psycopg  # noqa: E402

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states  # noqa: E402
from tracktion_dr.core.timeline import Event, Timeline  # noqa: E402
from tracktion_sandbox import connections  # noqa: E402
from tracktion_sandbox import layout as L  # noqa: E402
from tracktion_sandbox.layout import SandboxLayout  # noqa: E402
from tracktion_sandbox.secrets import load_or_create  # noqa: E402

VICTIM = "tracklists"


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    secrets = load_or_create(SandboxLayout())
    connections.export_to_environ(secrets)
    conninfo = f"host={L.HOST} port={L.PRIMARY_PORT} user={L.SUPERUSER} dbname={L.APP_DATABASE} password={secrets.postgres_password}"
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
        rows_before = conn.execute(f"SELECT count(*) FROM {VICTIM}").fetchone()[0]  # noqa: S608 - constant
        time.sleep(2)  # let the canary write a few heartbeats
        target = conn.execute("SELECT clock_timestamp()").fetchone()[0] - timedelta(seconds=1)
        incident = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        conn.execute(f"DROP TABLE {VICTIM}")  # noqa: S608 - constant
    print(
        f"demo: {incident:%H:%M:%S.%f} INCIDENT - table {VICTIM} ({rows_before} rows) dropped while the canary writes"
    )
    print(
        f"demo: running dr_database_pitr to {target.isoformat()} (1s before the drop) ...",
        flush=True,
    )
    dag_run = run_dag(
        "dr_database_pitr",
        {
            "environment": "drill",
            "cluster": "main",
            "target_type": "time",
            "target": target.isoformat(),
            "incident_started_at": incident.isoformat(),
        },
    )
    timeline_data = task_result(dag_run, "record")
    if not timeline_data or "events" not in timeline_data:
        print(f"demo: the recovery did not finish: {task_states(dag_run)}", file=sys.stderr)
        return 1
    fields = {k: timeline_data[k] for k in Timeline.__dataclass_fields__}
    fields["events"] = [Event(**e) for e in timeline_data["events"]]
    print()
    print(Timeline(**fields).render())
    with psycopg.connect(conninfo, connect_timeout=5) as conn:
        rows_after = conn.execute(f"SELECT count(*) FROM {VICTIM}").fetchone()[0]  # noqa: S608 - constant
    print(
        f"\ndemo: {VICTIM} is back with {rows_after} of {rows_before} rows; run {timeline_data['outcome']}"
    )
    return 0 if timeline_data["outcome"] == "succeeded" and rows_after == rows_before else 1


if __name__ == "__main__":
    sys.exit(main())
