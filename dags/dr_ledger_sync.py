"""
### Ledger sync

Schedule: every 10 minutes.

A recovery never waits for the ledger: when the ledger's database does not answer (a
disaster that took the ops host too), a run keeps its record in the worker's spool folder
(`$DR_LEDGER_SPOOL`, default `$AIRFLOW_HOME/dr_ledger_spool`) and its incident clock beside
it. This DAG writes what is spooled to the ledger once it answers again (every run's
`record` step does the same first). Each record written is moved to `sent/` in the spool,
never deleted. With the ledger still down the run fails, visibly, and tries again at the
next interval.

In a multi-host deployment each worker has its own spool: run this DAG on every worker
queue that runs recovery steps (one copy of the task per queue).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, task

from tracktion_dr.airflow.support import DEFAULT_ARGS


@dag(
    dag_id="dr_ledger_sync",
    schedule=timedelta(minutes=10),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dr", "ledger"],
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
)
def dr_ledger_sync():
    @task(retries=0, execution_timeout=timedelta(minutes=5))
    def flush_spool() -> dict:
        from tracktion_dr.airflow.support import conninfo
        from tracktion_dr.evidence import ledger

        written = ledger.flush_spool(conninfo(ledger.LEDGER_CONN_ID))
        return {"written": written, "spool": str(ledger.spool_directory())}

    flush_spool()


dr_ledger_sync()
