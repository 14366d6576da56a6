"""A real Airflow for end-to-end tests (``tracktion_sandbox.airflow_stack``): api-server,
scheduler, dag-processor and triggerer (gates and the incident watch wait there) as
separate processes on a temporary AIRFLOW_HOME (SQLite, LocalExecutor), wired to the live
sandbox through the same AIRFLOW_CONN_* environment as ``make airflow``. No process
outlives the module.

One difference from an operator's deployment, for the tests' sake: the test-only fixture
DAGs (tests/dags_fixtures) are a second DAG bundle. The plan is the sandbox's own, drill
schedules included: a drill DAG unpaused here gets its missed run, which its guard skips
(test_native_orchestration.py checks that).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracktion_sandbox.airflow_stack import AirflowStack

ROOT = Path(__file__).resolve().parents[2]
# The DAGs the end-to-end tests start (both unscheduled): the only ones unpaused.
E2E_DAGS = ("dr_incident_response", "dr_initial_assessment")
API_PORT = 18280  # inside the test's own network namespace; not the UI's 8080


def e2e_environment(home: Path) -> dict[str, str]:
    bundles = [
        {
            "name": "dags-folder",
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {},
        },
        {
            "name": "test-fixtures",
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(ROOT / "tests" / "dags_fixtures")},
        },
    ]
    return {
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
    }


@pytest.fixture(scope="module")
def airflow(sandbox, tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow-e2e")
    stack = AirflowStack(
        home / "airflow", api_port=API_PORT, triggerer=True, extra_env=e2e_environment(home)
    )
    try:
        stack.start()
        dags = stack.wait_for_dags(unpause=E2E_DAGS)
        running = [d["dag_id"] for d in dags if not d["is_paused"] and d["dag_id"] not in E2E_DAGS]
        assert running == [], f"only {E2E_DAGS} may run here, not {running}"
        yield stack
    finally:
        stack.stop()
