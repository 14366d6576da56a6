#!/usr/bin/env bash
# Smoke test of a running compose deployment (make deploy-up DEPLOY_PROFILES=topology):
# the REST API answers with a token from /auth/token; the test DAG tests/deploy/dags/
# deploy_smoke.py, copied into the DAG folder of the containers that parse it, is
# triggered over REST; each task must succeed on the worker of its queue's host.
#   COMPOSE="docker-compose --profile topology"  AIRFLOW_URL=http://localhost:8080
set -euo pipefail
cd "$(dirname "$0")/.."
compose=(${COMPOSE:-docker-compose --profile topology})
url="${AIRFLOW_URL:-http://localhost:8080}"
password="$(sed -n 's/^AIRFLOW_ADMIN_PASSWORD=//p' deploy/airflow-admin.env)"

for service in airflow-dag-processor airflow-worker db-primary db-replica; do
  id="$("${compose[@]}" ps -q "$service")"
  [ -n "$id" ] || { echo "smoke: service $service is not running" >&2; exit 1; }
  docker cp tests/deploy/dags/deploy_smoke.py "$id:/opt/tracktion-dr/dags/deploy_smoke.py"
done
# Parse it now rather than at the dag-processor's next folder scan (minutes).
"${compose[@]}" exec -T airflow-dag-processor airflow dags reserialize >/dev/null 2>&1 || true
echo "smoke: worker containers: $(docker ps --format '{{.ID}}={{.Names}}' | grep -E 'worker|db-' | tr '\n' ' ')"

AIRFLOW_URL="$url" AIRFLOW_PASSWORD="$password" python3 - <<'PY'
import json
import os
import sys
import time
import urllib.parse
import urllib.request

url = os.environ["AIRFLOW_URL"]


def call(method, path, body=None, token=None):
    request = urllib.request.Request(
        url + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


token = call("POST", "/auth/token", {"username": "admin", "password": os.environ["AIRFLOW_PASSWORD"]})["access_token"]
print("smoke: version", call("GET", "/api/v2/version", token=token)["version"])
deadline = time.monotonic() + 300
while True:
    try:
        call("GET", "/api/v2/dags/deploy_smoke", token=token)
        break
    except urllib.error.HTTPError as exc:
        if exc.code != 404 or time.monotonic() > deadline:
            raise
        time.sleep(5)
call("PATCH", "/api/v2/dags/deploy_smoke", {"is_paused": False}, token=token)
run = call("POST", "/api/v2/dags/deploy_smoke/dagRuns", {"logical_date": None}, token=token)
run_path = "/api/v2/dags/deploy_smoke/dagRuns/" + urllib.parse.quote(run["dag_run_id"], safe="")
print("smoke: triggered", run["dag_run_id"])
while call("GET", run_path, token=token)["state"] not in ("success", "failed"):
    if time.monotonic() > deadline:
        sys.exit("smoke: the run did not finish within 5 minutes")
    time.sleep(5)
state = call("GET", run_path, token=token)["state"]
expected = {
    "on_default_worker": ("default", None),
    "on_db_primary": ("host_db_primary", "db-primary"),
    "on_db_replica": ("host_db_replica", "db-replica"),
}
failed = state != "success"
for ti in call("GET", run_path + "/taskInstances", token=token)["task_instances"]:
    print(f"smoke: {ti['task_id']}: {ti['state']} on {ti['hostname']} (queue {ti['queue']})")
    queue, host = expected[ti["task_id"]]
    failed |= ti["state"] != "success" or ti["queue"] != queue
    if host is not None:
        failed |= ti["hostname"] != host
        xcom = call("GET", run_path + f"/taskInstances/{ti['task_id']}/xcomEntries/return_value", token=token)
        print(f"smoke: {ti['task_id']} returned", xcom["value"])
print("smoke:", state)
sys.exit(1 if failed else 0)
PY
