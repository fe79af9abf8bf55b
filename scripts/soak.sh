#!/usr/bin/env bash
# Soak test: mixed load against a release build for SECONDS (default 600), then checks for
# panics, RSS growth after warm-up (≤ 10%), fds back to baseline and exact stored usage.
#   scripts/soak.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
cargo build --release --quiet
exec python3 scripts/soak.py "$PWD/target/release/tollgate" "$secs"
