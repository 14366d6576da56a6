"""dr_security_incident in production, on a real Airflow (api-server, scheduler,
dag-processor): the swap to the clean point waits for a human. The question and its answer
link reach the on-call's Slack; nothing is swapped while it is open; approved over the REST
API, the clean point goes live and the compromised database is kept aside.

The compromise (a rogue role writing rows after a known time) and its teardown are the
integration test's fixture, reused here.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

# The integration tests' support modules (restore_support, the compromise fixture): e2e is
# collected before tests/integration puts its folder on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from restore_support import DATABASE, connect  # noqa: E402
from test_security_incident import ROGUE, ROGUE_PREFIX, compromise  # noqa: E402, F401

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(600)]
DAG_ID = "dr_security_incident"


def test_production_swap_waits_for_the_approval_then_goes_live(airflow, sandbox, compromise):  # noqa: F811
    incident = compromise["incident"]
    airflow.api("PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": False}).raise_for_status()
    try:
        response = airflow.api(
            "POST",
            f"/api/v2/dags/{DAG_ID}/dagRuns",
            json={
                "logical_date": None,
                "conf": {
                    "environment": "production",
                    "confirm": f"RESTORE {DATABASE}",
                    "database": DATABASE,
                    "compromised_at": compromise["compromised_at"],
                    "roles": [ROGUE],
                    "incident_id": incident.incident_id,
                    "incident_started_at": incident.started_at,
                },
            },
        )
        assert response.status_code == 200, response.text
        run_id = response.json()["dag_run_id"]

        def state(task_id: str) -> str | None:
            got = airflow.api(
                "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}"
            )
            return got.json().get("state") if got.status_code == 200 else None

        airflow.wait_until(
            "the swap's approval to wait for a human",
            lambda: state("approve_swap") == "awaiting_input",
            timeout=420,
        )
        records = map(json.loads, sandbox.layout.sink_webhooks.read_text().splitlines())
        link = f"/dags/{DAG_ID}/runs/{run_id}/tasks/approve_swap/required_actions"
        assert any(r["path"].startswith("/slack") and link in json.dumps(r) for r in records)
        # Nothing swapped while the question is open: the compromised rows are still live.
        rogue_rows = "SELECT count(*) FROM audio_files WHERE file_path LIKE %s"
        with connect() as conn:
            assert conn.execute(rogue_rows, (ROGUE_PREFIX + "%",)).fetchone() == (3,)
        assert state("swap") in (None, "none", "scheduled")
        # Airflow 3.3.2 resume race (see test_failover_manual): answer like a human would.
        time.sleep(20)
        airflow.api(
            "PATCH",
            f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/approve_swap/-1/hitlDetails",
            json={"chosen_options": ["Approve"]},
        ).raise_for_status()
        final = airflow.wait_until(
            "the run to finish",
            lambda: (s := airflow.run_state(DAG_ID, run_id)) in ("success", "failed") and s,
            timeout=420,
        )
        assert final == "success", airflow.log_tail()
        assert state("swap") == "success"
        with connect() as conn:
            assert conn.execute(rogue_rows, (ROGUE_PREFIX + "%",)).fetchone() == (0,)
        with connect(incident.kept) as conn:
            assert conn.execute(rogue_rows, (ROGUE_PREFIX + "%",)).fetchone() == (3,)
    finally:
        airflow.api("PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": True})
