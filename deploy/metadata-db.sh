#!/usr/bin/env bash
# The Airflow metadata database of the compose deployment: PostgreSQL 15 from this image.
#
# Runs as the postgres OS user. On first start (empty data directory) it creates the cluster
# with the superuser `airflow` (password from $POSTGRES_PASSWORD, handed to initdb in a 0600
# file, never on a command line) and the database `airflow`; later starts only run it.
# A production deployment may point AIRFLOW__DATABASE__SQL_ALCHEMY_CONN at a managed
# PostgreSQL instead and drop this service.
set -euo pipefail
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is not set: generate the env file (scripts/deploy-env.sh)}"
export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
user="${POSTGRES_USER:-airflow}"
database="${POSTGRES_DB:-airflow}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  echo "metadata-db: creating the cluster in $PGDATA"
  pwfile="$(mktemp)"
  trap 'rm -f "$pwfile"' EXIT
  chmod 0600 "$pwfile"
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb -D "$PGDATA" --username="$user" --pwfile="$pwfile" --auth-local=peer \
    --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  cat >>"$PGDATA/postgresql.conf" <<CONF
listen_addresses = '*'
password_encryption = 'scram-sha-256'
max_connections = 200
CONF
  # Like the official postgres image: the local socket (inside this container only) trusts,
  # everything over the network needs the password.
  cat >"$PGDATA/pg_hba.conf" <<HBA
local   all  all                 trust
host    all  all  127.0.0.1/32   scram-sha-256
host    all  all  0.0.0.0/0      scram-sha-256
host    all  all  ::/0           scram-sha-256
HBA
  # The database is created in single-user mode, before the server listens on the network.
  echo "CREATE DATABASE \"$database\" OWNER \"$user\"" \
    | postgres --single -D "$PGDATA" -j postgres >/dev/null
fi
exec postgres -D "$PGDATA"
