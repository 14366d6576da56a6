# Source this file (". sandbox/env.sh", or run "make shell") to get a shell in which plain
# "airflow ..." commands act on the sandbox: its Airflow home, DAGs, plan and connections.
_dr_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
export DR_SANDBOX_HOME="${DR_SANDBOX_HOME:-$_dr_root/.sandbox}"
export DR_PLAN="${DR_PLAN:-$_dr_root/include/config/sandbox.yaml}"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$_dr_root/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$_dr_root/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$_dr_root/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAG_DISCOVERY_SAFE_MODE=False
export AIRFLOW__CORE__UNIT_TEST_MODE=False
# airflow standalone starts its components as "airflow ..." subprocesses: the venv goes first.
export PATH="$_dr_root/.venv/bin:$PATH"
if [ -f "$DR_SANDBOX_HOME/airflow.env" ]; then
  . "$DR_SANDBOX_HOME/airflow.env"
fi
unset _dr_root
