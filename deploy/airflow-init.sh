#!/usr/bin/env bash
# One-shot setup of the compose deployment, run before the Airflow services start:
# migrate the metadata database, then write the admin password (from the admin env file,
# deploy/airflow-admin.env) into the simple auth manager's password file on the `auth`
# volume the api-server reads. Idempotent: every `deploy-up` runs it again.
set -euo pipefail
echo "airflow-init: $(airflow version 2>/dev/null | tail -n1)"
echo "airflow-init: migrating the metadata database"
airflow db migrate
passwords_file="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:?not set}"
if [ -n "${AIRFLOW_ADMIN_PASSWORD:-}" ]; then
  echo "airflow-init: writing the admin password file $passwords_file"
  umask 077
  python - "$passwords_file" <<'PY'
import json
import os
import sys

users = [u.split(":")[0] for u in os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin").split(",") if u]
with open(sys.argv[1] + ".tmp", "w") as handle:
    json.dump({name: os.environ["AIRFLOW_ADMIN_PASSWORD"] for name in users}, handle)
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
PY
fi
echo "airflow-init: done"
