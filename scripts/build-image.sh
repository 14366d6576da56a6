#!/usr/bin/env bash
# Build the deployment image (Dockerfile) on the local Docker engine.
#
#   scripts/build-image.sh              base image if missing, then $DEPLOY_IMAGE
#   DEPLOY_IMAGE=name:tag  BASE_IMAGE=debian:bookworm-slim  override the tags
#
# The build reaches apt and PyPI through the host's network (--network host). pip trusts
# the host's CA bundle as well ($PIP_CERT, $SSL_CERT_FILE or the system bundle), for the
# networks that intercept TLS; it is handed to the build stage only (.build/extra-ca.crt,
# gitignored) and is not in the final image.
set -euo pipefail
cd "$(dirname "$0")/.."
image="${DEPLOY_IMAGE:-tracktion-dr/airflow:latest}"
base="${BASE_IMAGE:-debian:bookworm-slim}"

bash scripts/build-base-image.sh "$base"

mkdir -p .build
: >.build/extra-ca.crt
for bundle in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
  if [ -n "$bundle" ] && [ -s "$bundle" ]; then
    cp "$bundle" .build/extra-ca.crt
    echo "image: pip in the build trusts the host CA bundle $bundle as well"
    break
  fi
done

echo "image: building $image from $base"
start=$(date +%s)
docker build --network host \
  --build-arg "BASE_IMAGE=$base" \
  --build-arg EXTRA_CA_FILE=.build/extra-ca.crt \
  -t "$image" .
echo "image: built $image in $(( $(date +%s) - start ))s," \
  "$(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')"
