#!/usr/bin/env bash
# Install what a script of this project needs, when it is missing:
#   scripts/deps.sh test      curl, Python requests + PySocks + urllib3 2, chromium, redis-server, haproxy, node + npm
#                             (ws, http-proxy-agent under target/test-node), ip and unshare (the
#                             IPv6 prefix test's network namespace), rustfmt, clippy
#   scripts/deps.sh bench     the peer proxies of scripts/bench.sh (microsocks, dante, squid, tinyproxy, npm)
#   scripts/deps.sh cluster   redis-server (scripts/bench.sh cluster, scripts/soak.sh … cluster)
# As root it calls apt-get itself; as another user, through sudo. scripts/check-install.sh
# proves both branches with every program removed from PATH.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib/install.sh
. "$here/lib/install.sh"

have() { command -v "$1" >/dev/null 2>&1; }

what=${1:?usage: scripts/deps.sh test|bench|cluster}
apt_pkgs=()
case "$what" in
test)
  have curl || apt_pkgs+=(curl)
  have python3 || apt_pkgs+=(python3)
  { have python3 && python3 -m pip --version >/dev/null 2>&1; } || apt_pkgs+=(python3-pip)
  have chromium || have chromium-browser || apt_pkgs+=(chromium)
  # The cluster tests start their own redis-server on ephemeral ports.
  have redis-server || apt_pkgs+=(redis-server)
  # A real WebSocket client (node ws + http-proxy-agent) for plain-forwarding upgrades.
  { have node && have npm; } || apt_pkgs+=(nodejs npm)
  # A real load balancer sending the PROXY protocol (tests/proxy_protocol.rs).
  have haproxy || apt_pkgs+=(haproxy)
  # The IPv6 prefix-exit test builds its own network namespace.
  have ip || apt_pkgs+=(iproute2)
  have unshare || apt_pkgs+=(util-linux)
  ;;
bench)
  have microsocks || apt_pkgs+=(microsocks)
  have danted || apt_pkgs+=(dante-server)
  have squid || apt_pkgs+=(squid)
  have tinyproxy || apt_pkgs+=(tinyproxy)
  { have node && have npm; } || apt_pkgs+=(nodejs npm)
  ;;
cluster)
  have redis-server || apt_pkgs+=(redis-server)
  ;;
*)
  echo "scripts/deps.sh: unknown set '$what' (test, bench or cluster)" >&2
  exit 2
  ;;
esac

if [ "${#apt_pkgs[@]}" -gt 0 ]; then
  apt_install "${apt_pkgs[@]}"
  # Debian starts packaged daemons; the tests and benchmarks run their own instances.
  as_root systemctl stop squid tinyproxy danted redis-server haproxy >/dev/null 2>&1 || true
fi

if [ "$what" = test ]; then
  # urllib3 2 or later: the first to speak TLS to an https:// proxy (Debian's is 1.26).
  python3 -c 'import requests, socks, urllib3; assert int(urllib3.__version__.split(".")[0]) >= 2' \
    >/dev/null 2>&1 || pip_install requests pysocks 'urllib3>=2'
  # Node packages for the tests, kept under target/ (tests/clients.rs finds them there).
  node_dir="${TOLLGATE_NODE_DIR:-$here/../target/test-node}"
  if [ ! -d "$node_dir/node_modules/ws" ] || [ ! -d "$node_dir/node_modules/http-proxy-agent" ]; then
    echo "installing (npm): ws, http-proxy-agent"
    npm install --silent --no-audit --no-fund --prefix "$node_dir" ws@8 http-proxy-agent@7
  fi
  for c in rustfmt clippy; do
    if ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1; then
      rustup component add "$c"
    fi
  done
fi
