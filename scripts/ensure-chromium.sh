#!/usr/bin/env bash
# The dashboard test drives headless Chromium (Debian's chromium package). Install it when
# missing and we are root; otherwise say what to do.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "Chromium is missing (needed by tests/e2e/test_dr_dashboard.py)." >&2
  echo "Install it as root: apt-get install -y chromium (Debian 12), then re-run." >&2
  exit 1
fi
echo "Installing Chromium (Debian package chromium) for the dashboard test..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
command -v chromium >/dev/null || { echo "chromium installed but not on PATH" >&2; exit 1; }
