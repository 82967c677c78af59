"""Benchmark: time from a canary's fault onset to its rollback, against the theoretical minimum.

A rollout that fails analysis can be rolled back no sooner than ``interval x failureLimit`` after
the first failing measurement (the analysis must see the failures). This starts a local cluster,
the traffic simulator, a real Prometheus and the operator, rolls out a revision whose pods fail
half their requests, and measures from the moment its first canary pod is ready to (a) the
rollback decision (phase RollingBack) and (b) the end of the rollback (stable serving alone).

Usage: python tests/bench/rollback.py [--trials 5] [--interval 2] [--failure-limit 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))

from cluster import local  # noqa: E402
from prom import PrometheusServer  # noqa: E402
from traffic import model, simulator  # noqa: E402

SEL = 'namespace="{{namespace}}",service="{{service}}",revision="{{revision}}"'
ERROR_RATIO = (
    f'sum(rate(homeostat_sim_requests_total{{{SEL},code=~"5.."}}[5s]))'
    f" / sum(rate(homeostat_sim_requests_total{{{SEL}}}[5s]))"
)


def body(name: str, image: str, interval: float, failure_limit: int, faulty: bool) -> dict[str, Any]:
    template: dict[str, Any] = {
        "metadata": {"labels": {"app": name}},
        "spec": {"containers": [{"name": "app", "image": image}]},
    }
    if faulty:
        template["metadata"]["annotations"] = {model.ANNOTATION_ERROR_RATE: "0.5"}
    return {
        "apiVersion": "homeostat.dev/v1alpha1",
        "kind": "ReplicatedService",
        "metadata": {"name": name, "annotations": {model.ANNOTATION_PATTERN: "constant rps=40"}},
        "spec": {
            "template": template,
            "replicas": {"min": 1, "max": 10, "desired": 4},
            "rollout": {
                "strategy": "Canary",
                "canary": {"steps": [{"weight": 25, "pause": "1h"}]},
                "analysis": {
                    "interval": f"{interval:g}s",
                    "failureLimit": failure_limit,
                    "metrics": [{"name": "error-ratio", "query": ERROR_RATIO, "max": 0.1}],
                },
            },
        },
    }


def kubectl_json(kubeconfig: Path, *args: str) -> dict[str, Any] | None:
    res = local.run_kubectl(kubeconfig, "get", *args, "-o", "json", check=False, timeout=30)
    return json.loads(res.stdout) if res.returncode == 0 else None


def poll(predicate: Any, timeout: float, interval: float = 0.05) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(interval)
    raise SystemExit("timed out")


def trial(kubeconfig: Path, namespace: str, name: str, args: argparse.Namespace) -> tuple[float, float]:
    def apply(manifest: dict[str, Any]) -> None:
        local.run_kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))

    def phase() -> str | None:
        status = (kubectl_json(kubeconfig, "rsvc", name, "-n", namespace) or {}).get("status") or {}
        return (status.get("rollout") or {}).get("phase")

    apply(body(name, "registry.k8s.io/pause:3.10", args.interval, args.failure_limit, faulty=False))
    poll(lambda: phase() == "Promoted", 120, 0.5)
    apply(body(name, "registry.k8s.io/pause:3.9", args.interval, args.failure_limit, faulty=True))
    onset = poll(
        lambda: (
            (kubectl_json(kubeconfig, "deployment", f"{name}-canary", "-n", namespace) or {})
            .get("status", {})
            .get("readyReplicas")
        ),
        120,
    )
    decided = poll(lambda: phase() in ("RollingBack", "RolledBack"), 120)
    finished = poll(lambda: phase() == "RolledBack", 120)
    return decided - onset, finished - onset


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--failure-limit", type=int, default=1)
    args = parser.parse_args()
    owned = None
    if os.environ.get("KUBECONFIG"):
        kubeconfig = Path(os.environ["KUBECONFIG"])
    else:
        owned = local.LocalCluster("homeostat-bench-rollback")
        owned.up(nodes=2)
        kubeconfig = owned.kubeconfig
    namespace = f"bench-rb-{uuid.uuid4().hex[:6]}"
    sim = simulator.Simulator(kubeconfig, namespaces=[namespace]).start()
    prom = PrometheusServer([sim.target]).start()
    decisions: list[float] = []
    finishes: list[float] = []
    try:
        local.run_kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        local.run_kubectl(kubeconfig, "create", "namespace", namespace)
        with tempfile.TemporaryDirectory() as tmp, (Path(tmp) / "op.log").open("wb") as log:
            cmd = [str(Path(sys.executable).parent / "homeostat"), "run", "--kubeconfig", str(kubeconfig)]
            cmd += ["--namespace", namespace, "--prometheus-url", prom.url, "--log-level", "warning"]
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            try:
                for i in range(args.trials):
                    decided, finished = trial(kubeconfig, namespace, f"rb-{i}", args)
                    decisions.append(decided)
                    finishes.append(finished)
                    print(
                        f"trial {i + 1}: decision {decided:.1f} s, rollback done {finished:.1f} s", flush=True
                    )
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    finally:
        prom.cleanup()
        sim.stop()
        local.run_kubectl(kubeconfig, "delete", "namespace", namespace, "--wait=false", check=False)
        if owned is not None:
            owned.down()
    minimum = args.interval * args.failure_limit
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(
        f"time to rollback after fault onset, {args.trials} trials, interval {args.interval:g} s, "
        f"failureLimit {args.failure_limit}, Prometheus scraping every 1 s, rate window 5 s"
    )
    print(f"  theoretical minimum (interval x failureLimit): {minimum:.1f} s")
    for label, values in (("rollback decided", decisions), ("rollback finished", finishes)):
        median = statistics.median(values)
        print(
            f"  {label}: median {median:.1f} s, max {max(values):.1f} s, "
            f"ratio to minimum {median / minimum:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
