#!/usr/bin/env bash
# Builds the binaries of the local control plane from Go modules and caches them outside the repo.
#
# Why from source: our machines have no Docker engine and cannot download release binaries, but
# they do reach the Go module proxy. Each binary is keyed by its pinned version, so a warm run
# does nothing and a version bump rebuilds only what changed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

CACHE=${HOMEOSTAT_CACHE:-$HOME/.cache/homeostat}
BIN="$CACHE/bin"
SRC="$CACHE/src"
export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" GOPATH="$CACHE/go/path"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
mkdir -p "$BIN" "$SRC"

log() { printf '[build] %s\n' "$*" >&2; }
have() { [ -x "$BIN/$1" ] && [ -f "$BIN/.$1.version" ] && [ "$(cat "$BIN/.$1.version")" = "$2" ]; }
mark() { echo "$2" > "$BIN/.$1.version"; }

# The control plane, kubectl, and the real node's kubelet and kube-proxy, from one module build.
K8S_BINARIES="kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy"

build_kubernetes() {
  local v=$K8S_VERSION minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local b missing=""
  for b in $K8S_BINARIES; do have "$b" "$v" || missing=1; done
  [ -z "$missing" ] && return
  log "kubernetes $v (cold build: tens of minutes on 2 cores)"
  local dir="$SRC/kubernetes-$v"; mkdir -p "$dir"
  # The k8s.io/kubernetes module requires its staging modules at v0.0.0 with local replace
  # directives, which `go install` refuses; a throwaway module redirects them to published tags.
  local gomod; gomod=$(go mod download -json "k8s.io/kubernetes@$v" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  {
    echo "module homeostat.local/kubernetes-build"
    echo
    echo "go 1.24"
    echo
    echo "require k8s.io/kubernetes $v"
    echo
    sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/.*#replace \1 => \1 v0.'"${v#v1.}"'#p' "$gomod"
  } > "$dir/go.mod"
  local date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local x=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    x+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    x+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  local pkgs=""
  for b in $K8S_BINARIES; do pkgs+=" k8s.io/kubernetes/cmd/$b"; done
  # shellcheck disable=SC2086  # one package path per word
  (cd "$dir" && go build -trimpath -ldflags "-s -w $x" -o "$BIN/" $pkgs)
  for b in $K8S_BINARIES; do mark "$b" "$v"; done
}

build_etcd() {
  have etcd "$ETCD_VERSION" && return
  log "etcd $ETCD_VERSION"
  local dir="$SRC/etcd-$ETCD_VERSION"; mkdir -p "$dir"
  printf 'module homeostat.local/etcd-build\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > "$dir/go.mod"
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3)
  mark etcd "$ETCD_VERSION"
}

go_install() { # name version package ldflags
  have "$1" "$2" && return
  log "$1 $2"
  GOBIN="$BIN" GOFLAGS= go install -trimpath -ldflags "-s -w ${4:-}" "$3@$2"
  mark "$1" "$2"
}

build_etcd
go_install kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok "-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"
go_install kwokctl "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwokctl "-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"
go_install helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
build_kubernetes
log "all binaries in $BIN"
