#!/usr/bin/env bash
# Soak test: mixed load against a release build for SECONDS (default 600), then checks for
# panics, RSS growth after warm-up (≤ 10%), fds back to baseline and exact stored usage.
#   scripts/soak.sh [SECONDS] [cluster]   (cluster: the gateway is a node on a local redis-server)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
if [ "${2:-}" = cluster ]; then
  export SOAK_CLUSTER=1
  scripts/deps.sh cluster
fi
cargo build --release --quiet
exec python3 scripts/soak.py "$PWD/target/release/tollgate" "$secs"
