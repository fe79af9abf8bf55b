#!/usr/bin/env bash
# The test command. Installs what the tests need (curl, Python requests + PySocks,
# Debian's chromium and redis-server, rustfmt, clippy) when missing, then runs the same
# checks as CI:
# formatting, clippy with warnings denied, and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

apt_pkgs=()
command -v curl >/dev/null 2>&1 || apt_pkgs+=(curl)
command -v python3 >/dev/null 2>&1 || apt_pkgs+=(python3)
python3 -m pip --version >/dev/null 2>&1 || apt_pkgs+=(python3-pip)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || apt_pkgs+=(chromium)
# The cluster tests start their own redis-server on ephemeral ports.
command -v redis-server >/dev/null 2>&1 || apt_pkgs+=(redis-server)
if ((${#apt_pkgs[@]})); then
  echo "installing: ${apt_pkgs[*]}"
  $SUDO apt-get update -qq
  $SUDO DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_pkgs[@]}"
fi
if ! python3 -c 'import requests, socks' >/dev/null 2>&1; then
  echo "installing: Python requests, PySocks"
  python3 -m pip install --quiet requests pysocks 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages requests pysocks
fi
for c in rustfmt clippy; do
  if ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$c"
  fi
done

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets --features fault-injection -- -D warnings"
cargo clippy --all-targets --features fault-injection --quiet -- -D warnings
echo "== cargo test --features fault-injection (test-only hooks: see Cargo.toml)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --features fault-injection --lib --bins --tests 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
