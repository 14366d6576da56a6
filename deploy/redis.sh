#!/usr/bin/env bash
# The Celery broker: Redis from this image, password from $REDIS_PASSWORD (the env file).
# The configuration is read from standard input so the password is not on the command line.
set -euo pipefail
: "${REDIS_PASSWORD:?REDIS_PASSWORD is not set: generate the env file (scripts/deploy-env.sh)}"
exec redis-server - <<CONF
bind 0.0.0.0 ::
port 6379
requirepass $REDIS_PASSWORD
dir /tmp
save ""
appendonly no
CONF
