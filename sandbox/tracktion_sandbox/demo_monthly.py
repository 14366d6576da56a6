"""``make demo``: the monthly DR drill (``dr_test_monthly``) end to end on the sandbox.

The newest dump is restored into a scratch database and validated, each service is
stopped, started and gated on health, a storage file is backed up, deleted and restored,
the scratch resources are dropped; the run is recorded in the ledger and its report is
written. The demo prints the report's summary table (measured times against the RTO
targets, data at risk against the RPO) and the path of the HTML report.

The previous demo (a dropped table recovered by PITR) is ``make demo-pitr`` or
``python -m tracktion_sandbox.demo_pitr``.
"""

from __future__ import annotations

import logging
import os
import sys

# The demo prints its own report; Airflow's per-task INFO lines would bury it.
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states  # noqa: E402
from tracktion_sandbox import connections  # noqa: E402
from tracktion_sandbox.layout import SandboxLayout  # noqa: E402
from tracktion_sandbox.secrets import load_or_create  # noqa: E402


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    connections.export_to_environ(load_or_create(SandboxLayout()))
    print("demo: running dr_test_monthly on the sandbox (drill environment) ...", flush=True)
    dag_run = run_dag("dr_test_monthly", {"environment": "drill"})
    published = task_result(dag_run, "publish")
    if not published or not published.get("paths"):
        print(f"demo: no report was written: {task_states(dag_run)}", file=sys.stderr)
        return 1
    print()
    print(published["summary"])
    print()
    print(f"demo: HTML report: {published['paths']['html']}")
    print(f"demo: Markdown: {published['paths']['markdown']}  JSON: {published['paths']['json']}")
    print(f"demo: drill {published['outcome']}")
    return 0 if published["outcome"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
