"""The read-only demo: break one sandbox service, run the initial assessment, show the table.

The run is a real Airflow run (``dag.test()``) against the live sandbox; the service is
started again afterwards, whatever happened.
"""

from __future__ import annotations

import logging
import os
import sys

# The demo prints its own table; Airflow's per-task INFO lines would bury it.
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states
from tracktion_dr.scenarios.assessment import Assessment
from tracktion_dr.services.probes import ProbeResult
from tracktion_dr.services.supervisord import SupervisordController
from tracktion_sandbox import connections
from tracktion_sandbox import layout as L
from tracktion_sandbox.layout import SandboxLayout
from tracktion_sandbox.secrets import load_or_create

BROKEN_SERVICE = "tracklist-service"


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    layout = SandboxLayout()
    secrets = load_or_create(layout)
    connections.export_to_environ(secrets)
    controller = SupervisordController(
        L.HOST, L.SUPERVISOR_PORT, secrets.supervisor_user, secrets.supervisor_password
    )
    print(f"demo: stopping {BROKEN_SERVICE} to simulate a crash ...", flush=True)
    controller.stop(BROKEN_SERVICE)
    try:
        print("demo: running DAG dr_initial_assessment (dag.test) ...", flush=True)
        dag_run = run_dag("dr_initial_assessment", {"environment": "drill"})
        result = task_result(dag_run, "probe_platform")
    finally:
        controller.start(BROKEN_SERVICE)
        print(f"demo: {BROKEN_SERVICE} started again", flush=True)
    if result is None:
        print(f"demo: the assessment did not finish: {task_states(dag_run)}", file=sys.stderr)
        return 1
    assessment = Assessment([ProbeResult(**row) for row in result["results"]])
    print()
    print(assessment.report(result["incident"]["incident_id"], result["incident"]["environment"]))
    down_as_expected = assessment.down == [BROKEN_SERVICE]
    print(
        f"\ndemo: {'OK' if down_as_expected else 'UNEXPECTED'}: "
        f"down = {assessment.down or 'nothing'}, expected [{BROKEN_SERVICE!r}]"
    )
    return 0 if down_as_expected else 1


if __name__ == "__main__":
    sys.exit(main())
