#!/usr/bin/env bash
# The deployment needs a Docker engine, docker-compose and (to build the base image without
# a registry) debootstrap. Install Debian's packages when they are missing and we are root,
# and start the engine when it does not answer; otherwise say what to do.
set -euo pipefail
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "docker: missing ${missing[*]}. HINT: as root, apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "docker: installing ${missing[*]} (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if docker info >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "docker: the engine does not answer. HINT: start it (systemctl start docker) or join the docker group" >&2
  exit 1
fi
if command -v systemctl >/dev/null && systemctl start docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  exit 0
fi
echo "docker: starting dockerd in the background (log /var/log/dockerd.log)"
nohup dockerd >/var/log/dockerd.log 2>&1 &
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 1
done
echo "docker: dockerd did not answer within 60 s; see /var/log/dockerd.log" >&2
exit 1
