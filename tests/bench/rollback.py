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
import contextlib
import json
import os
import platform
import statistics
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


@contextlib.contextmanager
def operator(kubeconfig: Path, namespace: str, prom_url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    cmd = [str(Path(sys.executable).parent / "homeostat"), "run", "--kubeconfig", str(kubeconfig)]
    cmd += ["--namespace", namespace, "--prometheus-url", prom_url, "--log-level", "warning"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--failure-limit", type=int, default=1)
    args = parser.parse_args()
    decisions: list[float] = []
    finishes: list[float] = []
    # Whatever fails, everything started here is stopped, newest first, and the cluster goes last.
    with contextlib.ExitStack() as cleanup:
        if os.environ.get("KUBECONFIG"):
            kubeconfig = Path(os.environ["KUBECONFIG"])
        else:
            owned = local.LocalCluster("homeostat-bench-rollback")
            cleanup.callback(owned.down)  # before up(): a cluster that fails to start goes too
            # KWOK nodes suffice; the machine's one real node may belong to another cluster.
            owned.up(nodes=2, with_node=False)
            kubeconfig = owned.kubeconfig
        # The traffic simulator lists ReplicatedServices from its first poll on: CRDs first.
        crds.install(kubeconfig)
        namespace = f"bench-rb-{uuid.uuid4().hex[:6]}"
        local.run_kubectl(kubeconfig, "create", "namespace", namespace)
        cleanup.callback(
            local.run_kubectl, kubeconfig, "delete", "namespace", namespace, "--wait=false", check=False
        )
        sim = simulator.Simulator(kubeconfig, namespaces=[namespace]).start()
        cleanup.callback(sim.stop)
        prom = PrometheusServer([sim.target])
        cleanup.callback(prom.cleanup)
        prom.start()
        tmp = Path(cleanup.enter_context(tempfile.TemporaryDirectory()))
        proc = cleanup.enter_context(operator(kubeconfig, namespace, prom.url, tmp / "op.log"))
        for i in range(args.trials):
            decided, finished = trial(kubeconfig, namespace, f"rb-{i}", args)
            if proc.poll() is not None:
                raise SystemExit(f"operator died:\n{(tmp / 'op.log').read_text()[-3000:]}")
            decisions.append(decided)
            finishes.append(finished)
            print(f"trial {i + 1}: decision {decided:.1f} s, rollback done {finished:.1f} s", flush=True)
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
