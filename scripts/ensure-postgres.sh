#!/usr/bin/env bash
# The sandbox needs PostgreSQL 15 server binaries (initdb, pg_ctl, pg_basebackup, ...).
# Install Debian's package when they are missing and we are root; otherwise say what to do.
set -euo pipefail
bindir=/usr/lib/postgresql/15/bin
if [ -x "$bindir/initdb" ] && [ -x "$bindir/pg_ctl" ] && [ -x "$bindir/pg_basebackup" ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "PostgreSQL 15 server binaries are missing from $bindir." >&2
  echo "Install them as root: apt-get install -y postgresql-15 (Debian 12), then re-run." >&2
  exit 1
fi
echo "Installing PostgreSQL 15 server binaries (Debian package postgresql-15)..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq postgresql-15 postgresql-client-15 >/dev/null
# Debian's package creates and starts a default cluster on 5432; the sandbox uses its own.
if command -v pg_ctlcluster >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q '^15 *main'; then
  pg_ctlcluster 15 main stop || true
fi
[ -x "$bindir/initdb" ] || { echo "postgresql-15 installed but $bindir/initdb is missing" >&2; exit 1; }
