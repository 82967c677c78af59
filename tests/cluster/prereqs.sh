#!/usr/bin/env bash
# Makes sure this machine has the system software the README's commands need, installing the
# Debian packages that are missing.
#
# Why: a fresh machine must need only `make demo` / `make test`, and no test may skip because a
# tool is absent (a machine without Prometheus used to report green having tested much less).
# Go and Python are not apt's to install here (the project needs newer Go than bookworm ships),
# so they are only checked. When everything is present this runs no apt command and takes well
# under a second, because every make target that starts a cluster runs it. When something cannot
# be provided it exits 1 with one line naming it.
#
# Usage: bash tests/cluster/prereqs.sh [--check]   (--check: report what is missing, install nothing)
# Test hooks: HOMEOSTAT_PREREQS replaces the package table ("pkg=probe,probe pkg=probe ...");
# HOMEOSTAT_PREREQS_POLICY_RC moves the policy-rc.d file written during installs.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)

GO_MIN=1.24   # the throwaway build modules of build.sh declare `go 1.24`
PY_MIN=3.11
PY=${PY:-python3}
POLICY_RC=${HOMEOSTAT_PREREQS_POLICY_RC:-/usr/sbin/policy-rc.d}
VENV=${VENV:-.venv}
case $VENV in /*) ;; *) VENV="$repo/$VENV" ;; esac

# Debian package = what must exist afterwards. A probe is a command (looked up on PATH and in the
# sbin directories, which a non-root PATH may lack) or an absolute path the code uses as such.
DEFAULT_TABLE="
prometheus=${HOMEOSTAT_PROMETHEUS_BIN:-/usr/bin/prometheus},${HOMEOSTAT_PROMTOOL_BIN:-/usr/bin/promtool}
containerd=containerd,ctr
runc=runc
containernetworking-plugins=/usr/lib/cni/bridge,/usr/lib/cni/host-local,/usr/lib/cni/loopback
buildah=buildah
mmdebstrap=mmdebstrap
iptables=iptables,ip6tables
conntrack=conntrack
iproute2=ip
gcc=gcc
libc6-dev=/usr/include/stdio.h
openssl=openssl
"
TABLE=${HOMEOSTAT_PREREQS-$DEFAULT_TABLE}

fail() {
  printf 'prerequisite missing: %s\n' "$*" >&2
  exit 1
}

present() {
  local probe=$1
  case $probe in
    /*) [ -e "$probe" ] ;;
    *) command -v "$probe" >/dev/null 2>&1 || [ -x "/usr/sbin/$probe" ] || [ -x "/sbin/$probe" ] ;;
  esac
}

missing_packages() {
  local entry pkg probes probe
  for entry in $TABLE; do
    pkg=${entry%%=*}
    probes=${entry#*=}
    for probe in ${probes//,/ }; do
      if ! present "$probe"; then
        printf '%s\n' "$pkg"
        break
      fi
    done
  done
}

version_at_least() { # have want, both "major.minor[.patch]"
  local have_major have_minor want_major want_minor rest
  IFS=. read -r have_major have_minor rest <<<"$1"
  IFS=. read -r want_major want_minor rest <<<"$2"
  [ "${have_major:-0}" -gt "$want_major" ] ||
    { [ "${have_major:-0}" -eq "$want_major" ] && [ "${have_minor:-0}" -ge "$want_minor" ]; }
}

check_go() {
  command -v go >/dev/null 2>&1 ||
    fail "go $GO_MIN+ (not on PATH; install it from https://go.dev/dl, apt's is too old)"
  local v
  # GOTOOLCHAIN=local: build.sh builds with the installed toolchain, never a downloaded one.
  v=$(GOTOOLCHAIN=local go env GOVERSION 2>/dev/null) || fail "go $GO_MIN+ (\`go env GOVERSION\` failed)"
  v=${v#go}
  version_at_least "$v" "$GO_MIN" || fail "go $GO_MIN+ (found go$v)"
}

python_venv_package() {
  # Prints python3-venv when the venv still has to be made and this Python cannot make one:
  # Debian's own python3 lacks ensurepip until python3-venv is installed.
  [ -x "$VENV/bin/python" ] && return
  "$PY" -c 'import ensurepip' 2>/dev/null || echo python3-venv
}

check_python() {
  command -v "$PY" >/dev/null 2>&1 || fail "python $PY_MIN+ ($PY is not on PATH; set PY=...)"
  local v
  v=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) ||
    fail "python $PY_MIN+ ($PY does not run)"
  version_at_least "$v" "$PY_MIN" || fail "python $PY_MIN+ ($PY is $v; set PY=python3.11 or newer)"
}

# The last apt error line says why, e.g. "E: Unable to locate package foo".
apt_reason() {
  local reason
  reason=$(grep -E '^(E|Err):' "$1" | tail -n 1)
  [ -n "$reason" ] || reason=$(grep -v '^[[:space:]]*$' "$1" | tail -n 1)
  printf '%s' "${reason:-no output}"
}

install_packages() {
  local names="$*" log
  [ "$(id -u)" = 0 ] ||
    fail "$names (not root; run: sudo apt-get install -y --no-install-recommends $names)"
  command -v apt-get >/dev/null 2>&1 || fail "$names (no apt-get on this machine; install them yourself)"
  log=$(mktemp)
  # Package scripts would start the Debian services (Prometheus on *:9090, containerd); the
  # tests run their own private instances, so nothing may start. policy-rc.d exit 101 = "do not".
  local wrote_policy=""
  if [ ! -e "$POLICY_RC" ]; then
    printf '#!/bin/sh\n# written by homeostat tests/cluster/prereqs.sh during apt-get install\nexit 101\n' >"$POLICY_RC"
    chmod 755 "$POLICY_RC"
    wrote_policy=1
  fi
  # shellcheck disable=SC2064  # expand now: the paths are fixed
  trap "rm -f '$log'${wrote_policy:+ '$POLICY_RC'}" EXIT
  export DEBIAN_FRONTEND=noninteractive
  printf '[prereqs] installing: %s\n' "$names" >&2
  apt-get update -qq >"$log" 2>&1 || fail "$names (apt-get update failed: $(apt_reason "$log"))"
  # shellcheck disable=SC2086  # one package per word
  apt-get install -y -qq --no-install-recommends $names >"$log" 2>&1 ||
    fail "$names (apt-get install $names failed: $(apt_reason "$log"))"
}

main() {
  local check_only=""
  [ "${1:-}" = "--check" ] && check_only=1
  check_go
  check_python
  local missing
  missing=$( { missing_packages; python_venv_package; } | tr '\n' ' ')
  missing=${missing% }
  [ -z "$missing" ] && return 0
  [ -n "$check_only" ] && fail "$missing (run: make prereqs)"
  install_packages "$missing"
  local still
  still=$(missing_packages | tr '\n' ' ')
  still=${still% }
  [ -z "$still" ] || fail "$still (installed, but a file it should provide is absent)"
  [ -z "$(python_venv_package)" ] || fail "python3-venv ($PY still cannot import ensurepip)"
}

main "$@"
