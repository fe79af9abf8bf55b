#!/usr/bin/env bash
# Fuzz the parsers with cargo-fuzz (libFuzzer + AddressSanitizer).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     # default: 60 s each, every target
#
# Targets: sniff http_request_head http_response chunked socks5 username config forward.
# New inputs go to fuzz/target/work/<target>/ (the committed seeds in fuzz/corpus/ are read);
# crashes land in fuzz/artifacts/<target>/. cargo-fuzz needs nightly features; without a
# nightly toolchain they are enabled on stable with RUSTC_BOOTSTRAP=1.
set -euo pipefail
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(sniff http_request_head http_response chunked socks5 username config forward)
fi
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
# cargo fuzz builds with the active toolchain; on stable, allow its -Z flags.
if ! rustc --version | grep -q nightly; then
  export RUSTC_BOOTSTRAP=1
fi
cargo fuzz build -O 2>&1 | tail -n 3
for t in "${targets[@]}"; do
  mkdir -p "target/work/$t"
  log="target/work/$t.log"
  echo "== fuzz $t for ${secs}s (log: fuzz/$log)"
  if ! cargo fuzz run -O "$t" "target/work/$t" "corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "!! $t failed: see fuzz/$log and fuzz/artifacts/$t" >&2
    exit 1
  fi
  grep -E "^Done|stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)" "$log"
done
