"""deploy_smoke: one task per Celery queue of the compose deployment (a test fixture).

Not a DR DAG and not in dags/: scripts/deploy-smoke.sh copies it into the running
deployment, triggers it over REST and checks each task ran on the worker of its queue's
host (the task instance's hostname) and saw that host (the DB host's data directory).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from airflow.sdk import dag, task


@dag(schedule=None, catchup=False, tags=["deploy-test"], doc_md=__doc__)
def deploy_smoke():
    @task(queue="default")
    def on_default_worker() -> dict[str, str]:
        return {"hostname": socket.gethostname()}

    @task(queue="host_db_primary")
    def on_db_primary() -> dict[str, str]:
        home = Path(os.environ.get("DR_SANDBOX_HOME", "/srv/tracktion"))
        data_dir = home / "pg" / "primary"
        version = (data_dir / "PG_VERSION").read_text().strip()
        return {"hostname": socket.gethostname(), "data_dir": str(data_dir), "pg": version}

    @task(queue="host_db_replica")
    def on_db_replica() -> dict[str, str]:
        home = Path(os.environ.get("DR_SANDBOX_HOME", "/srv/tracktion"))
        data_dir = home / "pg" / "replica"
        standby = (data_dir / "standby.signal").exists()
        return {"hostname": socket.gethostname(), "data_dir": str(data_dir), "standby": standby}

    on_default_worker() >> [on_db_primary(), on_db_replica()]


deploy_smoke()
