#!/usr/bin/env bash
# Installs the Debian packages the test suite drives (real tools, not mocks) when they are missing.
# Usage: scripts/system-packages.sh [bench]  (needs root or sudo for apt-get; prints what it does)
#   bench: also what `make bench` compares against (HAProxy, the sidecar of bench/e2e.py and bench/failover.py)
set -euo pipefail

# command -> Debian package providing it
declare -A NEEDED=(
  [promtool]=prometheus
  [dnsmasq]=dnsmasq-base
  [chromium]=chromium
)
if [ "${1:-}" = bench ]; then
  NEEDED[haproxy]=haproxy
fi

missing=()
for cmd in "${!NEEDED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${NEEDED[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "system-packages: need root to install: ${missing[*]}" >&2; exit 1
  fi
fi
echo "system-packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
