#!/usr/bin/env bash
# The sandbox needs PostgreSQL 15 server binaries (initdb, pg_ctl, pg_basebackup, ...) and
# zstd (archive_command / restore_command compress and decompress archived WAL; compressed
# base backups are extracted with tar + zstd). Install Debian's packages when they are
# missing and we are root; otherwise say what to do.
set -euo pipefail
bindir=/usr/lib/postgresql/15/bin
packages=()
if ! { [ -x "$bindir/initdb" ] && [ -x "$bindir/pg_ctl" ] && [ -x "$bindir/pg_basebackup" ]; }; then
  packages+=(postgresql-15 postgresql-client-15)
fi
command -v zstd >/dev/null || packages+=(zstd)
command -v tar >/dev/null || packages+=(tar)
if [ ${#packages[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "Missing: ${packages[*]} (PostgreSQL 15 server binaries in $bindir, zstd, tar)." >&2
  echo "Install them as root: apt-get install -y ${packages[*]} (Debian 12), then re-run." >&2
  exit 1
fi
echo "Installing ${packages[*]} (Debian packages)..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${packages[@]}" >/dev/null
# Debian's package creates and starts a default cluster on 5432; the sandbox uses its own.
if command -v pg_ctlcluster >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q '^15 *main'; then
  pg_ctlcluster 15 main stop || true
fi
[ -x "$bindir/initdb" ] || { echo "postgresql-15 installed but $bindir/initdb is missing" >&2; exit 1; }
command -v zstd >/dev/null || { echo "zstd installed but not on PATH" >&2; exit 1; }
