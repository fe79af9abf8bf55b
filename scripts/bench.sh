#!/usr/bin/env bash
# Side-by-side benchmark of tollgate and peer proxies on loopback (see scripts/bench.py).
#   scripts/bench.sh            # BENCH_SECS=5 BENCH_REPS=3 BENCH_PEERS=vproxy,floor,microsocks,merino,dante,squid,tinyproxy,proxy-chain
#   scripts/bench.sh cluster    # what a Redis-shared plan costs per connection (scripts/bench_cluster.py)
#   scripts/bench.sh growth     # new tunnels at concurrency 1/32/1000 and beside 10,000 open, a reload under load (scripts/bench_growth.py)
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-peers}
if [ "$what" = cluster ]; then
  scripts/deps.sh cluster
else
  scripts/deps.sh bench
fi
# Rust peers from crates.io: merino (tokio SOCKS5) and vproxy (SOCKS5 + HTTP, splice relay).
[ "$what" = cluster ] || command -v merino >/dev/null 2>&1 || cargo install merino --locked --quiet
[ "$what" = cluster ] || command -v vproxy >/dev/null 2>&1 || cargo install vproxy --locked --quiet
# The floor (../shared/reviews/tunnel-floor: the least CPU a tunnel costs here), when present.
floor_src="$PWD/../shared/reviews/tunnel-floor"
if [ "$what" != cluster ] && [ -z "${BENCH_FLOOR:-}" ] && [ -f "$floor_src/floor-epoll.c" ]; then
  mkdir -p target/floor
  gcc -O2 -o target/floor/floor-epoll "$floor_src/floor-epoll.c" -lpthread && export BENCH_FLOOR="$PWD/target/floor/floor-epoll"
fi
# The Node.js peer from npm (HTTP proxy), kept under target/.
if [ "$what" != cluster ] && [ ! -d target/bench-node/node_modules/proxy-chain ]; then
  npm install --silent --no-audit --no-fund --prefix target/bench-node proxy-chain@3
fi
export BENCH_NODE_MODULES="$PWD/target/bench-node/node_modules"
cargo build --release --quiet
loadgen=$(cargo bench --bench loadgen --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m["target"]["name"]=="loadgen" and m.get("executable"): print(m["executable"])')
if [ "$what" = cluster ]; then
  exec python3 scripts/bench_cluster.py "$PWD/target/release/tollgate" "$loadgen"
fi
if [ "$what" = growth ]; then
  exec python3 scripts/bench_growth.py "$PWD/target/release/tollgate" "$loadgen"
fi
exec python3 scripts/bench.py "$PWD/target/release/tollgate" "$loadgen"
