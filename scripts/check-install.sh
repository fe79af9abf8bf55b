#!/usr/bin/env bash
# Prove the install branch of scripts/deps.sh on a "fresh machine": every program it looks
# for is off PATH, and apt-get, sudo, systemctl, pip, cargo and rustup are recorders. Runs
# each set (test, bench, cluster) twice: as root (no sudo on the machine at all, as in CI's
# containers) and as a sudo user. Checks that every apt-get call ran as root, that installs
# were non-interactive, and that the packages asked for are the ones the set needs.
# Runs in a second; scripts/test.sh calls it first.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fail() {
  echo "check-install: $*" >&2
  echo "--- recorded calls:" >&2
  cat "$work/calls" >&2 || true
  exit 1
}

make_bin() { # make_bin DIR AS_ROOT(0|1)
  local bin=$1 as_root=$2
  mkdir -p "$bin"
  # The few real tools the script itself uses; nothing it would install.
  for t in dirname env; do ln -s "$(command -v "$t")" "$bin/$t"; done
  # npm alone (as if half-installed): node is missing, so both are installed.
  # `id -u`: the fake user's id, 0 inside sudo.
  cat >"$bin/id" <<STUB
#!$BASH
[ "\${FAKE_ROOT:-$as_root}" = 1 ] && echo 0 || echo 1000
STUB
  # A recorder for each program that would change the machine.
  for t in apt-get systemctl cargo rustup npm; do
    cat >"$bin/$t" <<STUB
#!$BASH
echo "root=\${FAKE_ROOT:-$as_root} DEBIAN_FRONTEND=\${DEBIAN_FRONTEND:-} $t \$*" >>"$work/calls"
[ "$t" != cargo ] || [ "\$1" != fmt ] && [ "\$1" != clippy ] || exit 1
STUB
  done
  # python3 exists only as a recorder of pip; `import requests, socks` fails (not installed).
  cat >"$bin/python3" <<STUB
#!$BASH
case "\$*" in
  "-m pip --version") exit 0 ;;
  "-m pip install"*) echo "root=\${FAKE_ROOT:-$as_root} pip \${*:3}" >>"$work/calls" ;;
  *) exit 1 ;;
esac
STUB
  if [ "$as_root" = 0 ]; then
    cat >"$bin/sudo" <<STUB
#!$BASH
echo "sudo \$*" >>"$work/calls"
FAKE_ROOT=1 exec "\$@"
STUB
  fi
  chmod +x "$bin"/*
}

run_set() { # run_set SET AS_ROOT EXPECTED_PACKAGES...
  local set=$1 as_root=$2
  shift 2
  local bin="$work/bin-$as_root"
  [ -d "$bin" ] || make_bin "$bin" "$as_root"
  : >"$work/calls"
  env -i HOME="$work" PATH="$bin" TOLLGATE_NODE_DIR="$work/node" "$BASH" "$root/scripts/deps.sh" "$set" >"$work/out" 2>&1 ||
    { cat "$work/out" >&2; fail "deps.sh $set (root=$as_root) exited non-zero"; }
  grep -q "apt-get update" "$work/calls" || fail "$set (root=$as_root): no apt-get update"
  local install
  install=$(grep "^root=.* apt-get install " "$work/calls") || fail "$set (root=$as_root): no apt-get install"
  # every apt-get call as root, installs non-interactive
  if grep "^root=.* apt-get " "$work/calls" | grep -vq "^root=1 "; then
    fail "$set (root=$as_root): apt-get ran without root"
  fi
  case "$install" in
  *"DEBIAN_FRONTEND=noninteractive apt-get install"*) ;;
  *) fail "$set (root=$as_root): apt-get install is not non-interactive" ;;
  esac
  for p in "$@"; do
    case " $install " in
    *" $p "*) ;;
    *) fail "$set (root=$as_root): package $p not installed" ;;
    esac
  done
  if [ "$as_root" = 1 ] && grep -q "^sudo " "$work/calls"; then
    fail "$set (root=1): used sudo as root"
  fi
  if [ "$set" = test ]; then
    grep -q "pip install.* requests pysocks" "$work/calls" || fail "test (root=$as_root): no pip install"
    grep -q "npm install.* ws@8 http-proxy-agent@7" "$work/calls" || fail "test (root=$as_root): no npm install"
  fi
}

for as_root in 1 0; do
  run_set test "$as_root" curl chromium redis-server haproxy nodejs npm iproute2 util-linux
  run_set bench "$as_root" microsocks dante-server squid tinyproxy nodejs npm
  run_set cluster "$as_root" redis-server
done
echo "check-install: the install branch works as root and through sudo (sets: test, bench, cluster)"
