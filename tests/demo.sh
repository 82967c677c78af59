#!/usr/bin/env bash
# `make demo`: a local cluster, the operator, a sample service, and self-healing you can watch.
# Later capabilities (forecast-driven scaling, canaries, approvals) extend this story.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${HOMEOSTAT_CACHE:-$HOME/.cache/homeostat}
CLUSTER=${CLUSTER:-homeostat}
NS=demo
PY=.venv/bin/python
DEMO="$CACHE/demo"
mkdir -p "$DEMO"

say() { printf '\n\033[1;36m==> %s\033[0m\n' "$*"; }
pause() { sleep "${1:-3}"; }

say "Starting a local Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler, KWOK nodes)"
$PY tests/cluster/local.py up --name "$CLUSTER"
export KUBECONFIG="$CACHE/kubeconfigs/$CLUSTER.yaml"
export PATH="$CACHE/bin:$PATH"
kubectl get nodes

say "Installing the ReplicatedService CRD"
kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
kubectl wait --for=condition=Established crd/replicatedservices.homeostat.dev >/dev/null
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null

if [ -f "$DEMO/operator.pid" ] && kill -0 "$(cat "$DEMO/operator.pid")" 2>/dev/null; then
  kill "$(cat "$DEMO/operator.pid")" && sleep 1
fi
say "Running the operator (log: $DEMO/operator.log)"
.venv/bin/homeostat run --kubeconfig "$KUBECONFIG" > "$DEMO/operator.log" 2>&1 &
echo $! > "$DEMO/operator.pid"
pause 3

say "kubectl apply -f examples/web.yaml"
kubectl apply -n "$NS" -f examples/web.yaml
kubectl wait -n "$NS" --for=jsonpath='{.status.phase}'=Ready rsvc/web --timeout=90s >/dev/null
kubectl get -n "$NS" rsvc,deployment,service,pdb,pods

say "Healing: someone deletes the Deployment by hand"
kubectl delete -n "$NS" deployment web --wait=false
pause 4
kubectl get -n "$NS" deployment web
kubectl wait -n "$NS" --for=jsonpath='{.status.phase}'=Ready rsvc/web --timeout=90s >/dev/null

say "Drift: someone scales the Deployment to 1; Homeostat puts it back to the declared 3"
kubectl scale -n "$NS" deployment web --replicas=1
pause 3
kubectl get -n "$NS" deployment web

say "Scaling through the scale subresource: kubectl scale rsvc web --replicas=5"
kubectl scale -n "$NS" rsvc web --replicas=5
kubectl wait -n "$NS" --for=jsonpath='{.status.readyReplicas}'=5 rsvc/web --timeout=90s >/dev/null
kubectl get -n "$NS" rsvc web

say "Bad input is refused with a clear message: replicas.min above max"
kubectl patch -n "$NS" rsvc web --type=merge -p '{"spec":{"replicas":{"min":9}}}' || true

say "What Homeostat recorded (Events on the service)"
kubectl get events -n "$NS" --field-selector involvedObject.kind=ReplicatedService \
  --sort-by=.lastTimestamp -o custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message

cat <<MSG

The cluster and the operator are still running. Try:
  export KUBECONFIG=$KUBECONFIG PATH=$CACHE/bin:\$PATH
  kubectl get rsvc -n $NS            # phase, ready/desired, revision
  kubectl describe rsvc -n $NS web   # conditions and Events
  tail -f $DEMO/operator.log
Stop everything with: make cluster-down
MSG
