# Sourced by the scripts that install what they need (test.sh, bench.sh, soak.sh, fuzz.sh,
# deps.sh). Works as root (CI) and as a sudo user alike.

# as_root CMD...: run CMD as root: directly when we already are, through sudo otherwise.
# (A variable prefix such as `$SUDO VAR=x cmd` breaks as root, where $SUDO is empty and
# bash then runs `VAR=x` as a command name; `env` carries the variable in both cases.)
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  else
    sudo "$@"
  fi
}

# apt_install PKG...: install Debian packages non-interactively; nothing to do without PKGs.
apt_install() {
  [ "$#" -gt 0 ] || return 0
  echo "installing: $*"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# pip_install PKG...: install Python packages for this user, also on Debian's externally
# managed Python (PEP 668).
pip_install() {
  [ "$#" -gt 0 ] || return 0
  echo "installing (pip): $*"
  python3 -m pip install --quiet "$@" 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages "$@"
}
