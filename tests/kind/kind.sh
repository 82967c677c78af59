#!/usr/bin/env bash
# The same real-workload e2e suite on a kind cluster, for users who have Docker.
#
# Why: our own machines have no Docker, so `make test` runs a kwokctl control plane with one
# real kubelet node. Users with Docker get a cluster whose every node is real; this builds the
# operator and sample-app images with `docker build`, loads them into kind (no registry), installs
# the operator with the repo's Helm chart as a user would, and runs `pytest -m e2e` against it.
# It cannot run on our machines; tests/unit/test_kind.py checks the script, the Makefile targets
# and that the chart renders with the values used here.
#
# Usage: tests/kind/kind.sh up|e2e|down      (make kind-up / make kind-e2e / make kind-down)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
CACHE=${HOMEOSTAT_CACHE:-$HOME/.cache/homeostat}
NAME=${KIND_CLUSTER:-homeostat}
KUBECONFIG_FILE=${KIND_KUBECONFIG:-$CACHE/kubeconfigs/kind-$NAME.yaml}
KIND_VERSION=${KIND_VERSION:-v0.33.0}
OPERATOR_REPOSITORY=localhost/homeostat/operator
APP_REPOSITORY=localhost/homeostat/sample-app
TAG=dev
NAMESPACE=homeostat-system
VENV_BIN=${VENV_BIN:-$repo/.venv/bin}
# helm and kubectl: the user's, else the ones tests/cluster/build.sh built.
export PATH="$PATH:$CACHE/bin"

fail() {
  printf 'kind: %s\n' "$*" >&2
  exit 1
}

need() { # command, how to get it
  command -v "$1" >/dev/null 2>&1 || fail "prerequisite missing: $1 ($2)"
}

ensure_kind() {
  command -v kind >/dev/null 2>&1 && return
  # kind is a Go module like the control-plane binaries: build it into the same cache.
  need go "install Go 1.24+, or kind itself from https://kind.sigs.k8s.io"
  GOBIN="$CACHE/bin" GOTOOLCHAIN=local go install "sigs.k8s.io/kind@$KIND_VERSION" ||
    fail "prerequisite missing: kind (go install sigs.k8s.io/kind@$KIND_VERSION failed)"
}

kube() { kubectl --kubeconfig "$KUBECONFIG_FILE" "$@"; }

up() {
  need docker "install Docker; kind runs its nodes as containers"
  docker info >/dev/null 2>&1 || fail "prerequisite missing: a running Docker daemon (docker info failed)"
  ensure_kind
  need helm "run make binaries, which builds it into $CACHE/bin"
  need kubectl "run make binaries, which builds it into $CACHE/bin"
  mkdir -p "$(dirname "$KUBECONFIG_FILE")"
  if ! kind get clusters 2>/dev/null | grep -qx "$NAME"; then
    # Its own kubeconfig file: the user's ~/.kube/config is left alone.
    kind create cluster --name "$NAME" --config "$repo/kind-config.yaml" --kubeconfig "$KUBECONFIG_FILE"
  else
    kind get kubeconfig --name "$NAME" >"$KUBECONFIG_FILE"
  fi
  chmod 600 "$KUBECONFIG_FILE"
  # The repo Dockerfiles' default bases are public images; kind nodes cannot see the host's
  # images, so they are loaded into every node instead of pulled from a registry.
  docker build -t "$OPERATOR_REPOSITORY:$TAG" "$repo"
  docker build -t "$APP_REPOSITORY:$TAG" "$repo/examples/app"
  # A second tag of the same image: what the suite `helm upgrade`s to in the middle of a canary.
  docker tag "$OPERATOR_REPOSITORY:$TAG" "$OPERATOR_REPOSITORY:$TAG-upgrade"
  kind load docker-image --name "$NAME" "$OPERATOR_REPOSITORY:$TAG" "$OPERATOR_REPOSITORY:$TAG-upgrade" \
    "$APP_REPOSITORY:$TAG"
  # pullPolicy Never: a `dev` tag must never be looked up in a registry.
  helm upgrade --install homeostat "$repo/charts/homeostat" \
    --kubeconfig "$KUBECONFIG_FILE" -n "$NAMESPACE" --create-namespace \
    --set image.repository="$OPERATOR_REPOSITORY" --set image.tag="$TAG" --set image.pullPolicy=Never \
    --wait --timeout 5m
  kube -n "$NAMESPACE" get pods
  echo "kind cluster $NAME up; export KUBECONFIG=$KUBECONFIG_FILE"
}

e2e() {
  [ -f "$KUBECONFIG_FILE" ] || fail "no kind cluster $NAME: run make kind-up first"
  [ -x "$VENV_BIN/pytest" ] || fail "prerequisite missing: $VENV_BIN/pytest (run make venv)"
  # KUBECONFIG makes the suite use this cluster instead of starting the local one; the image
  # names tell it what kind.sh loaded.
  KUBECONFIG="$KUBECONFIG_FILE" \
    HOMEOSTAT_OPERATOR_IMAGE="$OPERATOR_REPOSITORY:$TAG" \
    HOMEOSTAT_APP_IMAGE="$APP_REPOSITORY:$TAG" \
    HOMEOSTAT_UPGRADE_IMAGE="$OPERATOR_REPOSITORY:$TAG-upgrade" \
    "$VENV_BIN/pytest" -m e2e -q "$@"
}

down() {
  ensure_kind
  kind delete cluster --name "$NAME"
  rm -f "$KUBECONFIG_FILE"
}

cd "$repo"
case "${1:-}" in
  up) up ;;
  e2e) shift; e2e "$@" ;;
  down) down ;;
  *) fail "usage: tests/kind/kind.sh up|e2e|down" ;;
esac
