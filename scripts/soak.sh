#!/usr/bin/env bash
# Soak test: mixed load against a release build for SECONDS (default 600), then checks for
# panics, RSS growth after warm-up (≤ 10%), fds back to baseline and exact stored usage.
#   scripts/soak.sh [SECONDS] [cluster]   (cluster: the gateway is a node on a local redis-server)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
if [ "${2:-}" = cluster ]; then
  export SOAK_CLUSTER=1
  command -v redis-server >/dev/null 2>&1 || {
    [ "$(id -u)" -eq 0 ] && SUDO="" || SUDO="sudo"
    $SUDO DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
  }
fi
cargo build --release --quiet
exec python3 scripts/soak.py "$PWD/target/release/tollgate" "$secs"
