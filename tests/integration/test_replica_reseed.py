"""dr_replica_reseed against the sandbox: a standby that died is rebuilt from the primary,
the old data directory kept aside, and a re-run of the same incident does nothing."""

from __future__ import annotations

import shutil
import time

import pytest
from harness.topology import _pg_ctl

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states
from tracktion_sandbox import layout as L
from tracktion_sandbox import pg

pytestmark = pytest.mark.sandbox

INCIDENT = "DR-20261126-050505"


def streaming(sandbox) -> bool:
    with pg.connect(
        L.PRIMARY_PORT, L.SUPERUSER, sandbox.secrets.postgres_password, "postgres"
    ) as c:
        row = c.execute("SELECT state FROM pg_stat_replication").fetchone()
    return bool(row and row[0] == "streaming")


def replica_rows(sandbox) -> int:
    with pg.connect(
        L.REPLICA_PORT, L.SUPERUSER, sandbox.secrets.postgres_password, L.APP_DATABASE
    ) as conn:
        return conn.execute("SELECT count(*) FROM pg_catalog.pg_class").fetchone()[0]


def test_a_dead_standby_is_reseeded_and_the_old_one_kept(sandbox):
    layout = sandbox.layout
    _pg_ctl(layout, layout.replica_data, "stop", "-m", "immediate", "-w")  # the standby dies
    assert not streaming(sandbox)
    conf = {"environment": "drill", "cluster": "main", "incident_id": INCIDENT}
    try:
        states = task_states(run := run_dag("dr_replica_reseed", conf))
        assert states["verdict"] == "success", states
        detail = task_result(run, "reseed_replica")["event"]["detail"]
        assert "re-seeded from the primary" in detail and "streaming" in detail
        deadline = time.monotonic() + 30
        while not streaming(sandbox) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert streaming(sandbox)
        assert replica_rows(sandbox) > 0, "the new standby serves reads"
        asides = list(layout.replica_data.parent.glob(f"{layout.replica_data.name}.pre_*"))
        assert asides and all((a / "PG_VERSION").exists() for a in asides), "old one kept"

        again = run_dag("dr_replica_reseed", conf)
        assert task_states(again)["verdict"] == "success"
        assert task_result(again, "reseed_replica")["event"]["detail"].startswith("nothing to do")
    finally:
        # The test's own kept copy goes (disk); the rig's standby streams again either way.
        for aside in layout.replica_data.parent.glob(f"{layout.replica_data.name}.pre_*"):
            shutil.rmtree(aside, ignore_errors=True)
        if not pg.port_open(L.REPLICA_PORT):
            _pg_ctl(layout, layout.replica_data, "start", "-w", check=False)
