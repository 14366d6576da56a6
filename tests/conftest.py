"""Shared test set-up: Airflow's environment, and one sandbox for the whole session.

The sandbox is started once (``up`` is idempotent) and, if this session started it, stopped
at the end; tests that break something put it back themselves.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Before anything imports Airflow: point it at this project (make test does the same
# through sandbox/env.sh; this keeps a bare "pytest" run consistent).
os.environ.setdefault("DR_SANDBOX_HOME", str(ROOT / ".sandbox"))
os.environ.setdefault("DR_PLAN", str(ROOT / "include" / "config" / "sandbox.yaml"))
os.environ.setdefault("AIRFLOW_HOME", str(ROOT / ".airflow"))
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
# A second DAG bundle holds test-only fixture DAGs (never shipped in dags/), so dag.test()
# can serialize and run them like real ones.
os.environ["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"] = json.dumps(
    [
        {"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {}},
        {
            "name": "test-fixtures",
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(ROOT / "tests" / "dags_fixtures")},
        },
    ]
)


@pytest.fixture(scope="session")
def sandbox():
    from tracktion_sandbox import cli, connections
    from tracktion_sandbox import layout as L
    from tracktion_sandbox.layout import SandboxLayout
    from tracktion_sandbox.secrets import load_or_create

    layout = SandboxLayout()
    was_running = cli.port_open(L.PRIMARY_PORT) and cli.port_open(L.SUPERVISOR_PORT)
    cli.up(layout, size="30MB")
    secrets = load_or_create(layout)
    connections.export_to_environ(secrets)
    yield SimpleNamespace(layout=layout, secrets=secrets)
    if not was_running:
        cli.down(layout)


@pytest.fixture(scope="session")
def supervisor_controller(sandbox):
    from tracktion_dr.services.supervisord import SupervisordController
    from tracktion_sandbox import layout as L

    return SupervisordController(
        L.HOST,
        L.SUPERVISOR_PORT,
        sandbox.secrets.supervisor_user,
        sandbox.secrets.supervisor_password,
    )
