"""Benchmark: apply→Deployment latency and operator memory, against a baseline from the same run.

Latency is measured from the moment the API server acknowledged a ReplicatedService create to
the moment a watch sees its Deployment. The baseline is Kubernetes' own Deployment controller
on the same cluster and machine: Deployment create → its ReplicaSet seen by a watch. Memory is
the operator's resident set size, idle (baseline) and with N services reconciled.

The operator runs from the built wheel installed into a fresh virtual environment, the way the
Dockerfile installs it, so only its own dependencies are measured (the development environment
holds test tools a user's process never loads).

Usage: python tests/bench/reconcile.py [--services 100] [--fleet 1000]
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
import threading
import time
import uuid
import venv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))

from cluster import crds, local  # noqa: E402

# The restart target has room for the official client's imports (about 20 MB, ADR 0020).
TARGETS = {"p50": 0.5, "p99": 2.0, "rss_mb": 250.0, "rss_restart_mb": 275.0}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def rss_mb(pid: int) -> float:
    total = 0
    # The console script may fork nothing, but count children anyway (e.g. process pools).
    for p in [pid, *_children(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def rss_parts(pid: int) -> dict[str, float]:
    """Where the resident set is, over the process and its children: anonymous memory (Python's
    heap: objects, kopf's indexes, malloc arenas), file-backed pages (the interpreter and the
    shared libraries of what it imported) and shared memory, in MB; and how many processes."""
    parts = {"RssAnon": 0, "RssFile": 0, "RssShmem": 0}
    processes = [pid, *_children(pid)]
    for p in processes:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                key = line.split(":", 1)[0]
                if key in parts:
                    parts[key] += int(line.split()[1])
    return {
        "anon": parts["RssAnon"] / 1024,
        "file": parts["RssFile"] / 1024,
        "shmem": parts["RssShmem"] / 1024,
        "processes": float(len(processes)),
    }


def _parts_text(parts: dict[str, float]) -> str:
    return (
        f"(anonymous {parts['anon']:.0f}, file-backed {parts['file']:.0f}, shared {parts['shmem']:.0f} MB; "
        f"{parts['processes']:.0f} process(es))"
    )


def settled_rss(pid: int, started: float) -> float:
    """The resident set once it has stayed within 2 MB for 30 s: steady state, not the tail
    of the burst that led there (the operator hands freed pages back every 30 s)."""
    previous, stable_since = -1.0, time.monotonic()
    while time.monotonic() - stable_since < 30 and time.monotonic() - started < 1800:
        time.sleep(5)
        now_rss = rss_mb(pid)
        if abs(now_rss - previous) > 2:
            previous, stable_since = now_rss, time.monotonic()
    return rss_mb(pid)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children so far."""
    total = 0.0
    for p in [pid, *_children(pid)]:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def controller_manager(cluster: str) -> int | None:
    """The pid of this cluster's kube-controller-manager: the baseline for steady-state CPU."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "kube-controller-manager" in cmdline.split(" ")[0] and cluster in cmdline:
                return int(entry.name)
    return None


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Watcher:
    """Records when each named object of one kind first appears in a namespace."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str, kind: str) -> None:
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        apps = kubernetes.client.AppsV1Api(api)
        lister = apps.list_namespaced_deployment if kind == "deployment" else apps.list_namespaced_replica_set
        self._thread = threading.Thread(target=self._run, args=(lister, namespace), daemon=True)
        self._thread.start()
        time.sleep(0.5)

    def _run(self, lister: Any, namespace: str) -> None:
        watch = kubernetes.watch.Watch()
        while not self._stop.is_set():
            for event in watch.stream(lister, namespace, timeout_seconds=5):
                obj = event["object"]
                key = (
                    obj.metadata.owner_references[0].name
                    if obj.metadata.owner_references
                    else obj.metadata.name
                )
                self.seen.setdefault(key, time.monotonic())
                if self._stop.is_set():
                    break

    def wait(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(n in self.seen for n in names) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()


def rsvc_body(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "homeostat.dev/v1alpha1",
        "kind": "ReplicatedService",
        "metadata": {"name": name},
        "spec": {
            "template": {"spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}]}},
            "ports": [{"name": "http", "port": 80}],
            "replicas": {"min": replicas, "max": max(1, replicas), "desired": replicas},
        },
    }


def deployment_body(name: str) -> dict[str, Any]:
    labels = {"bench": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}]},
            },
        },
    }


def measure_latency(
    api: kubernetes.client.ApiClient, namespace: str, count: int, kind: str, pause: float = 0.05
) -> list[float]:
    custom = kubernetes.client.CustomObjectsApi(api)
    apps = kubernetes.client.AppsV1Api(api)
    watcher = Watcher(api, namespace, "deployment" if kind == "rsvc" else "replicaset")
    acked: dict[str, float] = {}
    names = [f"{kind}-{i:04d}" for i in range(count)]
    try:
        for name in names:
            if kind == "rsvc":
                custom.create_namespaced_custom_object(
                    "homeostat.dev", "v1alpha1", namespace, "replicatedservices", rsvc_body(name, 1)
                )
            else:
                apps.create_namespaced_deployment(namespace, deployment_body(name))
            acked[name] = time.monotonic()
            time.sleep(pause)  # a steady stream of applies, not one burst
        watcher.wait(names, timeout=120)
    finally:
        watcher.stop()
    missing = [n for n in names if n not in watcher.seen]
    if missing:
        raise SystemExit(f"{len(missing)} {kind} objects never produced their child, e.g. {missing[:3]}")
    # A watch can see the child before the create call returns to us; clamp at zero.
    return [max(0.0, watcher.seen[n] - acked[n]) for n in names]


def ready_count(api: kubernetes.client.ApiClient, namespace: str) -> int:
    custom = kubernetes.client.CustomObjectsApi(api)
    items = custom.list_namespaced_custom_object("homeostat.dev", "v1alpha1", namespace, "replicatedservices")
    return sum(1 for i in items["items"] if (i.get("status") or {}).get("phase") == "Ready")


def install_operator(where: Path) -> Path:
    """Build the wheel and install it into a fresh environment; return its console script."""
    dist = where / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(REPO)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    env_dir = where / "venv"
    venv.create(env_dir, with_pip=True)
    wheel = next(dist.glob("homeostat-*.whl"))
    subprocess.run([str(env_dir / "bin" / "pip"), "install", "--quiet", str(wheel)], check=True, timeout=900)
    return env_dir / "bin" / "homeostat"


@contextlib.contextmanager
def operator(
    script: Path, kubeconfig: Path, namespaces: list[str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    args = [str(script), "run", "--kubeconfig", str(kubeconfig)]
    for ns in namespaces:
        args += ["--namespace", ns]
    args += ["--log-level", "warning"]
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
    parser.add_argument("--services", type=int, default=100, help="services for the latency run")
    parser.add_argument("--fleet", type=int, default=1000, help="services for the memory run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    owned = None
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    # Whatever fails, everything made here is undone, newest first, and the cluster goes last.
    with contextlib.ExitStack() as cleanup:
        if os.environ.get("KUBECONFIG"):
            kubeconfig = Path(os.environ["KUBECONFIG"])
        else:
            owned = local.LocalCluster("homeostat-bench")
            cleanup.callback(owned.down)  # before up(): a cluster that fails to start goes too
            # KWOK nodes take 110 pods each; every benchmarked service runs one pod.
            owned.up(nodes=(args.services * 2 + args.fleet) // 100 + 2, with_node=False)
            kubeconfig = owned.kubeconfig
        crds.install(kubeconfig)
        api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        cleanup.callback(api.close)
        core = kubernetes.client.CoreV1Api(api)
        suffix = uuid.uuid4().hex[:6]
        lat_ns, base_ns, fleet_ns = f"bench-lat-{suffix}", f"bench-base-{suffix}", f"bench-fleet-{suffix}"
        for ns in (lat_ns, base_ns, fleet_ns):
            core.create_namespace({"metadata": {"name": ns}})
            cleanup.callback(
                local.run_kubectl, kubeconfig, "delete", "namespace", ns, "--wait=false", check=False
            )

        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            script = install_operator(Path(tmp))
            proc = stack.enter_context(operator(script, kubeconfig, [lat_ns, fleet_ns], Path(tmp) / "op.log"))
            time.sleep(5)
            results["rss_idle_mb"] = rss_mb(proc.pid)
            results["rss_idle_parts"] = rss_parts(proc.pid)

            baseline = measure_latency(api, base_ns, args.services, "deployment")
            ours = measure_latency(api, lat_ns, args.services, "rsvc")
            for label, values in (("baseline", baseline), ("homeostat", ours)):
                results[f"{label}_p50_s"] = statistics.median(values)
                results[f"{label}_p99_s"] = percentile(values, 99)

            custom = kubernetes.client.CustomObjectsApi(api)
            started = time.monotonic()
            for i in range(args.fleet):
                custom.create_namespaced_custom_object(
                    "homeostat.dev", "v1alpha1", fleet_ns, "replicatedservices", rsvc_body(f"svc-{i:04d}", 1)
                )
            deadline = time.monotonic() + 900
            while (ready := ready_count(api, fleet_ns)) < args.fleet and time.monotonic() < deadline:
                time.sleep(5)
            results["fleet_ready"] = ready
            results["fleet_converge_s"] = time.monotonic() - started
            results["rss_fleet_mb"] = settled_rss(proc.pid, started)
            results["rss_fleet_parts"] = rss_parts(proc.pid)
            if proc.poll() is not None:
                raise SystemExit(
                    f"operator died during the benchmark:\n{(Path(tmp) / 'op.log').read_text()[-3000:]}"
                )
            # Steady state: nothing changes; what does watching 1100 services cost?
            kcm = controller_manager("homeostat-bench") if owned is not None else None
            ours0, kcm0, window = cpu_seconds(proc.pid), cpu_seconds(kcm) if kcm else 0.0, 60.0
            time.sleep(window)
            results["cpu_fleet_pct"] = 100 * (cpu_seconds(proc.pid) - ours0) / window
            results["cpu_kcm_pct"] = 100 * (cpu_seconds(kcm) - kcm0) / window if kcm else None
            # A restart with the fleet in place: every object arrives at once, the worst case.
            stack.close()
            proc = stack.enter_context(
                operator(script, kubeconfig, [lat_ns, fleet_ns], Path(tmp) / "op-restart.log")
            )
            results["rss_restart_mb"] = settled_rss(proc.pid, started)
            results["rss_restart_parts"] = rss_parts(proc.pid)

    report(results, args)
    return 0


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(results, indent=2))
        return
    r = results
    print(f"machine: {r['machine']}")
    print(f"apply->Deployment latency over {args.services} services")
    print("  baseline: Deployment->ReplicaSet by kube-controller-manager, same cluster, same run")
    for q in ("p50", "p99"):
        ours, base = r[f"homeostat_{q}_s"], r[f"baseline_{q}_s"]
        ratio = ours / base if base > 0 else float("inf")
        verdict = "meets" if ours <= TARGETS[q] else "MISSES"
        print(
            f"  {q}: homeostat {ours * 1000:7.1f} ms   baseline {base * 1000:7.1f} ms   "
            f"ratio {ratio:5.2f}x   target <= {TARGETS[q]} s: {verdict}"
        )
    ratio = r["rss_fleet_mb"] / r["rss_idle_mb"]
    verdict = "meets" if r["rss_fleet_mb"] <= TARGETS["rss_mb"] else "MISSES"
    print(f"operator RSS: idle {r['rss_idle_mb']:.0f} MB (baseline) {_parts_text(r['rss_idle_parts'])}")
    print(
        f"  with {r['fleet_ready']}/{args.fleet} more services Ready, settled: {r['rss_fleet_mb']:.0f} MB, "
        f"ratio to idle {ratio:.2f}x, target <= {TARGETS['rss_mb']:.0f} MB: {verdict}"
    )
    print(f"    {_parts_text(r['rss_fleet_parts'])}")
    print(f"fleet of {args.fleet} converged to Ready in {r['fleet_converge_s']:.0f} s")
    kcm = r.get("cpu_kcm_pct")
    base = f"kube-controller-manager {kcm:.1f}%, ratio {r['cpu_fleet_pct'] / kcm:.2f}x" if kcm else "n/a"
    print(
        f"steady-state CPU over 60 s with the fleet: {r['cpu_fleet_pct']:.1f}% of a core (baseline: {base})"
    )
    verdict = "meets" if r["rss_restart_mb"] <= TARGETS["rss_restart_mb"] else "MISSES"
    print(
        f"operator RSS after a restart with the fleet in place (every object at once), settled: "
        f"{r['rss_restart_mb']:.0f} MB, target <= {TARGETS['rss_restart_mb']:.0f} MB: {verdict}"
    )
    print(f"    {_parts_text(r['rss_restart_parts'])}")


if __name__ == "__main__":
    sys.exit(main())
