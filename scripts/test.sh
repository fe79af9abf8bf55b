#!/usr/bin/env bash
# The test command. Proves the install branch (scripts/check-install.sh), installs what the
# tests need when missing (scripts/deps.sh test: curl, Python requests + PySocks, Debian's
# chromium, redis-server and haproxy, node + npm with ws and http-proxy-agent, iproute2 for the IPv6
# prefix test's network namespace, rustfmt, clippy), then
# runs the same checks as CI: formatting, the layering of src/ (scripts/layers.py: no
# import goes up or sideways), clippy with warnings denied, and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== scripts/check-install.sh (the install branch, as root and through sudo)"
scripts/check-install.sh
scripts/deps.sh test

echo "== cargo fmt --check"
cargo fmt --check
echo "== scripts/layers.py (imports go down the floors listed in src/lib.rs)"
python3 scripts/layers.py .
echo "== cargo clippy --all-targets --features fault-injection -- -D warnings"
cargo clippy --all-targets --features fault-injection --quiet -- -D warnings
echo "== cargo test --features fault-injection (test-only hooks: see Cargo.toml)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --features fault-injection --lib --bins --tests 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
