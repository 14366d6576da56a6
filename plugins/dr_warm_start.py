"""Warm start for task processes: the DR library imported once per Airflow process.

Every task runs in a process forked from its executor's worker (LocalExecutor) or pool
process (Celery prefork), which parses the DAG file again before the step runs. A recovery
has ten tasks on its path to service restored, so the library's imports (psycopg, the plan
model, the step kit) would be paid ten times over on the worst night. With
``[core] lazy_load_plugins = False`` (the README's recommended setting, and the stack the
benchmarks use) Airflow imports this plugin when the process starts, before it forks, and
every task process inherits the modules already loaded.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

import tracktion_dr.airflow.dag_kit  # noqa: F401
import tracktion_dr.airflow.steps  # noqa: F401
import tracktion_dr.airflow.support  # noqa: F401
import tracktion_dr.postgres.pitr  # noqa: F401
import tracktion_dr.scenarios.database  # noqa: F401


class DrWarmStartPlugin(AirflowPlugin):
    name = "dr_warm_start"
