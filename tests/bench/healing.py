"""Benchmark: how long pods on a failed node take to run elsewhere, Homeostat against Kubernetes.

Two KWOK nodes of the benchmark's own fail at the same moment (the node-not-ready chaos stage).
One hosts the pods of a ReplicatedService with ``healing.nodeFailure`` (grace period
``--grace``); the other hosts the pods of a plain Deployment, which Kubernetes moves by itself
through taint-based eviction once the default ``tolerationSeconds`` (300 s, added to every pod
by the DefaultTolerationSeconds admission plugin) run out. Measured for each: from the node
being reported NotReady to every replica Running and Ready on another node.

Usage: python tests/bench/healing.py [--replicas 5] [--grace 10] [--cluster NAME] [--keep] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))

from cluster import crds, local  # noqa: E402

TAINT = "homeostat.dev/chaos"
BASELINE_TIMEOUT = 300 + 180


def kubectl(
    kubeconfig: Path, *args: str, data: Any = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    text = json.dumps(data) if data is not None else None
    return local.run_kubectl(kubeconfig, *args, input=text, check=check, timeout=120)


def get(kubeconfig: Path, *args: str) -> dict[str, Any]:
    result = kubectl(kubeconfig, "get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else {}


def node_ready(kubeconfig: Path, name: str) -> str:
    for cond in get(kubeconfig, "node", name).get("status", {}).get("conditions", []):
        if cond["type"] == "Ready":
            return str(cond["status"])
    return "Unknown"


def pod_spec(node: str) -> dict[str, Any]:
    return {
        "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
        "tolerations": [{"key": TAINT, "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "preference": {
                            "matchExpressions": [
                                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
                            ]
                        },
                    }
                ]
            }
        },
    }


def ready_elsewhere(kubeconfig: Path, namespace: str, selector: str, failed_node: str) -> tuple[int, int]:
    """(pods Running and Ready off the failed node, pods still on it and not deleted)."""
    items = get(kubeconfig, "pods", "-n", namespace, "-l", selector).get("items", [])
    good = stuck = 0
    for pod in items:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        status = pod.get("status") or {}
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
        if pod["spec"].get("nodeName") == failed_node:
            stuck += 1
        elif status.get("phase") == "Running" and ready:
            good += 1
    return good, stuck


@contextlib.contextmanager
def operator(kubeconfig: Path, namespace: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    args = [str(Path(sys.executable).parent / "homeostat"), "run", "--kubeconfig", str(kubeconfig)]
    args += ["--namespace", namespace, "--log-level", "warning", "--http-port", "0"]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicas", type=int, default=5)
    parser.add_argument(
        "--grace", type=int, default=10, help="spec.healing.nodeFailure.gracePeriod in seconds"
    )
    parser.add_argument("--cluster", default="homeostat-bench-healing", help="local cluster name")
    parser.add_argument("--keep", action="store_true", help="leave the local cluster running")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    # Whatever fails, everything made here is undone, newest first, and the cluster goes last.
    with contextlib.ExitStack() as cleanup:
        if os.environ.get("KUBECONFIG"):
            kubeconfig = Path(os.environ["KUBECONFIG"])
        else:
            owned = local.LocalCluster(args.cluster)
            if not args.keep:
                cleanup.callback(owned.down)  # before up(): a cluster that fails to start goes too
            owned.up(nodes=3, with_node=False)
            kubeconfig = owned.kubeconfig
        suffix = uuid.uuid4().hex[:6]
        namespace, policy = f"bench-heal-{suffix}", f"bench-{suffix}"
        nodes = {"homeostat": f"bench-h-{suffix}", "kubernetes": f"bench-k-{suffix}"}
        results: dict[str, Any] = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "replicas": args.replicas,
            "grace_s": args.grace,
        }
        crds.install(kubeconfig)
        kubectl(kubeconfig, "create", "namespace", namespace)
        cleanup.callback(kubectl, kubeconfig, "delete", "namespace", namespace, "--wait=false", check=False)
        cleanup.callback(
            kubectl, kubeconfig, "delete", "remediationpolicy", policy, "--ignore-not-found", check=False
        )
        for name in nodes.values():
            cleanup.callback(kubectl, kubeconfig, "delete", "node", name, "--wait=false", check=False)
        for name in nodes.values():
            node = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {"kwok.x-k8s.io/node": "fake"},
                    "labels": {"type": "kwok", "kubernetes.io/hostname": name},
                },
                "spec": {"taints": [{"key": TAINT, "effect": "NoSchedule"}]},
            }
            kubectl(kubeconfig, "apply", "-f", "-", data=node)
        deadline = time.monotonic() + 60
        while any(node_ready(kubeconfig, n) != "True" for n in nodes.values()):
            if time.monotonic() > deadline:
                raise SystemExit("benchmark nodes did not become Ready")
            time.sleep(0.5)
        rules = {"risk": "low", "mode": "auto"}
        kubectl(
            kubeconfig,
            "apply",
            "-f",
            "-",
            data={
                "apiVersion": "homeostat.dev/v1alpha1",
                "kind": "RemediationPolicy",
                "metadata": {"name": policy},
                "spec": {"actions": {"ReschedulePods": rules, "RestartPod": rules}, "cooldown": "1m"},
            },
        )
        healed = {
            "apiVersion": "homeostat.dev/v1alpha1",
            "kind": "ReplicatedService",
            "metadata": {"name": "healed", "namespace": namespace},
            "spec": {
                "template": {"metadata": {"labels": {"app": "healed"}}, "spec": pod_spec(nodes["homeostat"])},
                "replicas": {"min": 1, "max": 50, "desired": args.replicas},
                "healing": {"nodeFailure": {"gracePeriod": f"{args.grace}s"}},
                "approvals": {"policy": policy},
            },
        }
        baseline = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "baseline", "namespace": namespace},
            "spec": {
                "replicas": args.replicas,
                "selector": {"matchLabels": {"app": "baseline"}},
                "template": {
                    "metadata": {"labels": {"app": "baseline"}},
                    "spec": pod_spec(nodes["kubernetes"]),
                },
            },
        }
        selectors = {"homeostat": "homeostat.dev/service=healed", "kubernetes": "app=baseline"}
        with (
            tempfile.TemporaryDirectory() as tmp,
            operator(kubeconfig, namespace, Path(tmp) / "op.log") as proc,
        ):
            kubectl(kubeconfig, "apply", "-f", "-", data=healed)
            kubectl(kubeconfig, "apply", "-f", "-", data=baseline)
            deadline = time.monotonic() + 120
            while True:
                placed = {
                    who: ready_elsewhere(kubeconfig, namespace, selectors[who], "-")[0] for who in nodes
                }
                on_node = {
                    who: ready_elsewhere(kubeconfig, namespace, selectors[who], nodes[who])[1]
                    for who in nodes
                }
                if all(placed[w] == args.replicas and on_node[w] > 0 for w in nodes):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"pods did not settle on the benchmark nodes: {placed} {on_node}")
                time.sleep(1)
            results["pods_on_failed_node"] = on_node
            for name in nodes.values():
                kubectl(kubeconfig, "label", "node", name, f"{local.NODE_NOT_READY_LABEL}=true")
            failed_at: dict[str, float] = {}
            recovered: dict[str, float] = {}
            deadline = time.monotonic() + BASELINE_TIMEOUT
            while len(recovered) < len(nodes) and time.monotonic() < deadline:
                now = time.monotonic()
                for who, name in nodes.items():
                    if who not in failed_at and node_ready(kubeconfig, name) == "False":
                        failed_at[who] = now
                    if who in failed_at and who not in recovered:
                        good, stuck = ready_elsewhere(kubeconfig, namespace, selectors[who], name)
                        if good >= args.replicas and stuck == 0:
                            recovered[who] = now - failed_at[who]
                time.sleep(1)
            if proc.poll() is not None:
                raise SystemExit(f"operator died:\n{(Path(tmp) / 'op.log').read_text()[-3000:]}")
        for who in nodes:
            results[f"{who}_s"] = recovered.get(who)
    report(results, args)
    return 0


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(results, indent=2))
        return
    ours, theirs = results.get("homeostat_s"), results.get("kubernetes_s")
    print(f"machine: {results['machine']}")
    print(f"replicas per workload: {results['replicas']}")
    print(f"pods on each failed node: {results['pods_on_failed_node']}")
    print("node NotReady -> every replica Running and Ready on another node:")
    print(
        f"  Homeostat (gracePeriod {results['grace_s']} s): "
        + (f"{ours:.1f} s" if ours else "did not recover")
    )
    print(
        "  Kubernetes default (taint-based eviction, tolerationSeconds 300): "
        + (f"{theirs:.1f} s" if theirs else f"did not recover within {BASELINE_TIMEOUT} s")
    )
    if ours and theirs:
        print(f"  ratio: Homeostat is {theirs / ours:.1f}x faster")
        target = results["grace_s"] + 15
        print(f"  target (grace + 15 s = {target} s): {'met' if ours <= target else 'MISSED'}")


if __name__ == "__main__":
    raise SystemExit(main())
