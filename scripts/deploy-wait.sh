#!/usr/bin/env bash
# Wait until every container of the compose project is healthy (one-shot services: exited 0).
#
#   scripts/deploy-wait.sh [TIMEOUT_SECONDS]      (default 900)
#   COMPOSE="docker-compose --profile topology"   the compose command (as the Makefile runs it)
#
# Exits 0 when all are healthy; otherwise prints which are not, with their last log lines,
# and exits 1. A container without a healthcheck counts when it is running.
set -euo pipefail
cd "$(dirname "$0")/.."
timeout="${1:-900}"
compose=(${COMPOSE:-docker-compose})
deadline=$(( $(date +%s) + timeout ))

states() {
  local ids
  ids="$("${compose[@]}" ps -q 2>/dev/null || true)"
  [ -n "$ids" ] || return 0
  # name status health exit-code
  docker inspect -f '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.State.ExitCode}}' $ids \
    | sed 's|^/||'
}

while :; do
  pending=()
  failed=()
  total=0
  while read -r name status health code; do
    [ -n "$name" ] || continue
    total=$((total + 1))
    case "$status/$health" in
      running/healthy | running/none) ;;
      exited/none) [ "$code" = 0 ] || failed+=("$name (exited $code)") ;;
      exited/* | dead/*) failed+=("$name ($status, exit $code)") ;;
      *) pending+=("$name ($status/$health)") ;;
    esac
  done < <(states)
  if [ "$total" -eq 0 ]; then
    echo "deploy: no containers in this compose project (run make deploy-up)" >&2
    exit 1
  fi
  if [ ${#failed[@]} -eq 0 ] && [ ${#pending[@]} -eq 0 ]; then
    echo "deploy: all $total containers healthy"
    exit 0
  fi
  if [ ${#failed[@]} -gt 0 ] || [ "$(date +%s)" -ge "$deadline" ]; then
    echo "deploy: not healthy after waiting: ${failed[*]:-} ${pending[*]:-}" >&2
    for entry in "${failed[@]}" "${pending[@]}"; do
      name="${entry%% *}"
      echo "---- last log lines of $name" >&2
      docker logs --tail 25 "$name" 2>&1 | sed 's/^/    /' >&2 || true
    done
    exit 1
  fi
  sleep 5
done
