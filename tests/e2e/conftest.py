"""A real Airflow for end-to-end tests (``tracktion_sandbox.airflow_stack``): api-server,
scheduler and dag-processor as separate processes on a temporary AIRFLOW_HOME (SQLite,
LocalExecutor), wired to the live sandbox through the same AIRFLOW_CONN_* environment as
``make airflow``. No process outlives the module.
"""

from __future__ import annotations

import pytest

from tracktion_sandbox.airflow_stack import AirflowStack

# The DAGs the end-to-end tests start (both unscheduled): the only ones unpaused.
E2E_DAGS = ("dr_incident_response", "dr_initial_assessment")
API_PORT = 18280  # inside the test's own network namespace; not the UI's 8080


@pytest.fixture(scope="module")
def airflow(sandbox, tmp_path_factory):
    stack = AirflowStack(tmp_path_factory.mktemp("airflow-e2e"), api_port=API_PORT)
    try:
        stack.start()
        dags = stack.wait_for_dags(unpause=E2E_DAGS)
        running = [d["dag_id"] for d in dags if not d["is_paused"] and d["dag_id"] not in E2E_DAGS]
        assert running == [], f"only {E2E_DAGS} may run here, not {running}"
        yield stack
    finally:
        stack.stop()
