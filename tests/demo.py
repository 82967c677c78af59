"""`make demo`: the whole Homeostat story on a local cluster, narrated on the terminal.

The operator is installed with `helm install charts/homeostat` from the image the real node
imported, and runs as a pod on that node. A service, `shop`, runs the sample app
(examples/app) on the real node; a load generator on this machine sends it real HTTP requests
through its ClusterIP at a rate that follows a daily pattern compressed to two minutes; a real
Prometheus scrapes the pods' own `http_requests_total`, and replicas rise ahead of the peak. A
new revision that really answers half its requests with 500 is judged on those counters and
rolled back. Then a second service, `stock`, tells the rest of the story on KWOK nodes: a node
fails and its pods move; a risky drain waits for approval, which a signed click on a local
Slack-compatible server gives.

What is simulated, and why:
- Four past "days" of the shop's request counter are backfilled into Prometheus from the same
  formula the load generator follows: predictive scaling needs two seasons of history, and
  eight minutes of live load first would triple the demo's length. From the moment the load
  starts, every request is real and counted by the pod that answered it.
- The `stock` pods and the three nodes they run on are KWOK's: no container runs, KWOK writes
  their status. The node failure and the memory pressure are KWOK's node-not-ready stage and a
  patched node condition. The real node cannot play those parts here: it holds the operator and
  the shop, its kubelet takes about 42 s to be declared NotReady, and it is the only node its
  pods may run on (tests/e2e/test_real_node_failure.py fails it for real).
- Slack is a local server speaking Slack's Web API; the operator uses the real slack-sdk.

Prometheus and the Slack server listen on the real node's bridge address (10.244.0.1), which
the operator's pod can reach and no other interface can. The cluster, the operator, Prometheus
and the Slack server keep running afterwards (the load generator stops with the demo);
`make cluster-down` stops everything. A second `make demo` first undoes what the first changed.
Usage: python tests/demo.py [run]   (`slack` is the local Slack server, internal)
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import datetime
import json
import math
import os
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from cluster import crds, local  # noqa: E402
from cluster import node as real_node  # noqa: E402
from traffic import model  # noqa: E402

CLUSTER = os.environ.get("CLUSTER", "homeostat")
DEMO = local.CACHE / "demo"
NS = "demo"
SYSTEM, RELEASE = "homeostat-system", "homeostat"  # the operator's namespace and Helm release
HOST = real_node.NODE_IP  # where Prometheus and the Slack server listen: pods reach it, nothing else
VENV_BIN = Path(sys.executable).parent
APPROVER = "U0DEMO0001"  # the Slack user allowed to approve drains in this demo

# Offered load 5..35 requests per second, planned at 10 per replica (a sample-app pod could serve
# far more, so no request is refused when planned capacity is short: Prometheus sees the offered
# load, which is what a forecast must predict).
PERIOD, BASE, AMPLITUDE, TARGET = 120.0, 5.0, 30.0, 10.0
PATTERN = model.Seasonal(base=BASE, amplitude=AMPLITUDE, period=PERIOD, phase=4.0)
# The startup delay is how far ahead a replica must be asked for: a new pod is Ready about 5 s
# after the request, and a rate over 10 s lags the load by about 5 s; 15 s leaves a margin.
STEP, STARTUP_DELAY, INTERVAL = 8.0, 15.0, 2.0
HISTORY_DAYS = 4
JOIN_AHEAD = 10.0  # seconds from the load's start to the end of its history: Prometheus's start
LOAD_SECONDS = 420  # the load generator's bound in time; its bound in requests follows
WINDOW = "10s"  # rate() window: ten scrapes
DEMAND = (
    f'sum(rate(http_requests_total{{namespace="{{{{namespace}}}}",service="{{{{service}}}}"}}[{WINDOW}]))'
)
SEL = 'namespace="{{namespace}}",service="{{service}}",revision="{{revision}}"'
# A revision that never failed has no 5xx series at all: `or vector(0)` makes that a ratio of 0
# rather than no data, while a revision that served nothing yet still divides by nothing.
ERROR_RATIO = (
    f'(sum(rate(http_requests_total{{{SEL},code=~"5.."}}[{WINDOW}])) or vector(0))'
    f" / sum(rate(http_requests_total{{{SEL}}}[{WINDOW}]))"
)
HISTORY_LABELS = {"namespace": NS, "service": "shop", "code": "200", "job": "history", "pod": "history"}


def say(text: str) -> None:
    print(f"\n\033[1;36m==> {text}\033[0m", flush=True)


def note(text: str) -> None:
    print(f"    {text}", flush=True)


def kubectl(*args: str, input: str | None = None, check: bool = True) -> str:
    return local.run_kubectl(kubeconfig(), *args, input=input, check=check, timeout=60).stdout


def get(*args: str) -> dict[str, Any]:
    out = local.run_kubectl(kubeconfig(), "get", *args, "-o", "json", check=False, timeout=30)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def kubeconfig() -> Path:
    return local.LocalCluster(CLUSTER).kubeconfig


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig()), "HELM_CACHE_HOME": str(local.CACHE / "helm")}
    res = subprocess.run(
        [str(local.BIN / "helm"), *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    if check and res.returncode != 0:
        raise SystemExit(f"demo: helm {args[0]} failed: {res.stderr.strip()}")
    return res


def wait(predicate: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"demo: timed out waiting for {what}; see {DEMO}/operator.log")


def spawn(name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A helper process that outlives this script; `make cluster-down` stops it by its pid file."""
    pid_file = DEMO / f"{name}.pid"
    with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
        os.kill(int(pid_file.read_text()), signal.SIGTERM)
        time.sleep(1)
    log = (DEMO / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
    )
    pid_file.write_text(str(proc.pid))
    return proc


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def prom_query(url: str, query: str) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=5) as response:
        return list(json.load(response)["data"]["result"])


# --- the load and its history ------------------------------------------------------------------


def send_times(pattern: model.Pattern, start: float, end: float, limit: int) -> Iterator[float]:
    """When to send each request so that the rate follows ``pattern``: the gap after a request
    sent at ``t`` is ``1 / demand(t)``. At most ``limit`` of them, all before ``end``."""
    t, sent = start, 0
    while t < end and sent < limit:
        yield t
        sent += 1
        t += 1 / max(pattern.demand(t), 0.1)


def request_history(
    pattern: model.Pattern, labels: Mapping[str, str], *, start: float, end: float, step: float = 1.0
) -> str:
    """OpenMetrics text of an ``http_requests_total`` counter that grows as ``pattern`` says,
    from 0 at ``start`` to ``end``, one sample per ``step``: the past "days" the demo backfills,
    so that ``rate()`` over them answers the pattern as it does over the live pods' counters."""
    rendered = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    out = ["# HELP http_requests Requests answered (backfilled history).", "# TYPE http_requests counter"]
    count, t = 0.0, start
    while t <= end:
        out.append(f"http_requests_total{{{rendered}}} {count:.3f} {t:.3f}")
        count += step * pattern.demand(t + step / 2)  # the midpoint rule: exact enough at 1 s
        t += step
    return "\n".join([*out, "# EOF"]) + "\n"


class Load:
    """Real HTTP GETs of ``url`` from this machine, sent when ``send_times`` says, by a few
    threads (a slow answer does not hold the next request back). Bounded in time and in count;
    answers are counted by status code (0: no answer within 2 s)."""

    def __init__(self, url: str, pattern: model.Seasonal, max_seconds: float, workers: int = 8) -> None:
        self.url, self.pattern, self.max_seconds, self.workers = url, pattern, max_seconds, workers
        self.limit = int(max_seconds * (pattern.base + pattern.amplitude))
        self.codes: collections.Counter[int] = collections.Counter()
        self._sent: collections.deque[float] = collections.deque(maxlen=1000)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def offered(self, window: float = 4.0) -> float:
        """Requests per second sent over the last ``window`` seconds."""
        since = time.time() - window
        with self._lock:
            return sum(1 for t in self._sent if t >= since) / window

    def answers(self) -> dict[int, int]:
        with self._lock:
            return dict(self.codes)

    def _get(self) -> None:
        import workload

        code = workload.answer(self.url)
        with self._lock:
            self.codes[code] += 1

    def _run(self) -> None:
        start = time.time()
        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            for at in send_times(self.pattern, start, start + self.max_seconds, self.limit):
                if self._stop.wait(max(0.0, at - time.time())):
                    break
                with self._lock:
                    self._sent.append(time.time())
                pool.submit(self._get)
            pool.shutdown(wait=True, cancel_futures=True)


# --- the pieces --------------------------------------------------------------------------------


def stop_helpers() -> None:
    """Stop what an earlier run spawned (pid files in DEMO), and wait until it is gone: its
    Prometheus must not write into the data directory this run recreates."""
    procs = []
    for pid_file in DEMO.glob("*.pid"):
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGTERM)
            procs.append(pid)
        pid_file.unlink(missing_ok=True)
    deadline = time.monotonic() + 15
    for pid in procs:
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _changed_by_demo(node: dict[str, Any]) -> bool:
    """A node the story failed, cordoned or put under memory pressure, or one not Ready."""
    labels = node["metadata"].get("labels") or {}
    conditions = {c["type"]: c["status"] for c in (node.get("status") or {}).get("conditions") or []}
    return (
        labels.get(local.NODE_NOT_READY_LABEL) == "true"
        or bool((node.get("spec") or {}).get("unschedulable"))
        or conditions.get("Ready") != "True"
        or any(status == "True" for kind, status in conditions.items() if kind != "Ready")
    )


def reset_previous_run() -> None:
    """Undo what an earlier `make demo` changed, so a second run over its cluster tells the same
    story. It left the operator installed by Helm (with the previous run's Prometheus and Slack
    addresses and signing secret), one KWOK node NotReady and another cordoned and drained under
    memory pressure (so the cluster start waited in vain for three Ready nodes), and its
    namespace still holds the old services, revisions and Approvals. The release is uninstalled
    first, so that nothing acts on what is being reset; the KWOK nodes are deleted (kwokctl
    recreates them when the cluster starts) rather than repaired: KWOK never turns a failed node
    Ready again. The real node is never changed by the story."""
    stop_helpers()
    if not local.LocalCluster(CLUSTER).exists():
        return  # a fresh machine: up() creates the cluster
    try:
        readyz = local.run_kubectl(kubeconfig(), "get", "--raw", "/readyz", check=False, timeout=15)
    except subprocess.TimeoutExpired:
        return  # unreachable: up() recreates it from scratch
    if readyz.returncode != 0:
        return
    started = time.monotonic()
    uninstalled = helm("uninstall", RELEASE, "-n", SYSTEM, "--wait", "--timeout", "2m", check=False)
    # A run from before the chart installed the operator applied the default policy itself; the
    # chart refuses to adopt an object it did not create.
    kubectl("delete", "remediationpolicy", "default", "--ignore-not-found", check=False)
    gone = [ns for ns in (NS, SYSTEM) if get("namespace", ns)]
    for ns in gone:
        kubectl("delete", "namespace", ns, "--wait=false")
    if gone:
        # Pods on a failed KWOK node would wait for a kubelet that never answers.
        kubectl("delete", "pods", "--all", "-n", NS, "--force", "--grace-period=0", check=False)
        wait(
            lambda: not any(get("namespace", ns) for ns in gone), 120, f"namespaces {', '.join(gone)} deleted"
        )
    changed = [
        n["metadata"]["name"]
        for n in get("nodes", "-l", "kwok.x-k8s.io/kwokctl-scale=node").get("items", [])
        if _changed_by_demo(n)
    ]
    if changed:
        kubectl("delete", "node", *changed)
    release = f"release {RELEASE} uninstalled, " if uninstalled.returncode == 0 else ""
    note(
        f"reset the previous run: {release}namespaces deleted: {', '.join(gone) or 'none'}, "
        f"KWOK nodes recreated: {', '.join(changed) or 'none'} ({time.monotonic() - started:.1f} s)"
    )


def local_workloads() -> Any:
    """Where real pods go (the real node: its label and taint) and the images it imported."""
    import conftest

    return conftest.local_workloads(local.LocalCluster(CLUSTER))


def start_world() -> dict[str, Any]:
    say(
        "A local Kubernetes control plane: etcd, kube-apiserver, controller-manager, scheduler, "
        "3 KWOK nodes and one real node (kubelet, containerd, kube-proxy)"
    )
    reset_previous_run()
    local.LocalCluster(CLUSTER).up(nodes=3)
    note(kubectl("get", "nodes").strip().replace("\n", "\n    "))
    crds.install(kubeconfig())
    kubectl("create", "namespace", NS, check=False)
    kubectl("apply", "-f", "-", input=json.dumps(demo_policy()))
    workloads = local_workloads()

    say(
        "Slack: a local server speaking Slack's Web API (no Slack here); the operator uses the real slack-sdk"
    )
    slack_file = DEMO / "slack.url"
    slack_file.unlink(missing_ok=True)
    spawn("slack", [sys.executable, str(HERE / "demo.py"), "slack", str(slack_file), HOST])
    slack_url = wait(lambda: slack_file.exists() and slack_file.read_text().strip(), 30, "the Slack server")
    note(f"Slack Web API at {slack_url} (the real node's bridge address: pods reach it, other hosts cannot)")
    prom_url = f"http://{HOST}:{free_port(HOST)}"
    signing_secret = secrets.token_hex(16)

    say(f"helm install {RELEASE} charts/homeostat: the operator as a pod on the real node, from its image")
    install_operator(workloads, prom_url, slack_url, signing_secret)
    (pod,) = operator_pods()
    service = get("service", RELEASE, "-n", SYSTEM)["spec"]["clusterIP"]
    note(
        f"pod {pod['metadata']['name']} on {pod['spec']['nodeName']}, image "
        f"{pod['spec']['containers'][0]['image']}, Ready; namespace {SYSTEM} enforces Pod Security "
        "'restricted'"
    )
    note(f"Prometheus for it: {prom_url}; Slack clicks to it: http://{service}:8080/slack/interactions")
    return {
        "workloads": workloads,
        "prom_url": prom_url,
        "slack_url": slack_url,
        "http": f"http://{service}:8080",
        "signing_secret": signing_secret,
    }


def install_operator(workloads: Any, prom_url: str, slack_url: str, signing_secret: str) -> None:
    kubectl("create", "namespace", SYSTEM)
    kubectl("label", "namespace", SYSTEM, "pod-security.kubernetes.io/enforce=restricted")
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "slack", "namespace": SYSTEM},
        "stringData": {"bot-token": "xoxb-demo-token", "signing-secret": signing_secret},
    }
    kubectl("apply", "-f", "-", input=json.dumps(secret))  # on stdin: never on a command line
    values = [
        *workloads.helm_values(),
        f"prometheus.url={prom_url}",
        f"slack.apiUrl={slack_url}",
        "slack.channel=#ops",
        "slack.existingSecret=slack",
        "forecastWorkers=1",  # the chart's CPU limit is one core
    ]
    started = time.monotonic()
    helm(
        "install", RELEASE, str(REPO / "charts" / "homeostat"), "-n", SYSTEM,
        *(arg for value in values for arg in ("--set", value)), "--wait", "--timeout", "4m",
    )  # fmt: skip
    note(f"installed and Ready in {time.monotonic() - started:.1f} s (--wait: the pod's readiness probe)")


def operator_pods() -> list[dict[str, Any]]:
    pods = get("pods", "-n", SYSTEM, "-l", "app.kubernetes.io/name=homeostat").get("items", [])
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def save_operator_log() -> None:
    """The operator pod's log, where a timed-out wait tells the reader to look."""
    with contextlib.suppress(Exception):
        res = local.run_kubectl(
            kubeconfig(), "logs", "-n", SYSTEM, f"deployment/{RELEASE}", "--tail=-1", check=False, timeout=30
        )
        (DEMO / "operator.log").write_text(res.stdout + res.stderr)


def start_load_and_prometheus(world: dict[str, Any]) -> Load:
    """The load, then the history, then Prometheus. The history runs a few seconds into the
    future, to ``joined``: Prometheus drops what it scrapes before the newest backfilled sample
    (out of bounds), so the pods' counters are first stored within a scrape after ``joined``,
    and rate() over the join neither counts a second twice nor drops one. (A history ending
    when the load started, before the first scrape, showed a dip of half the load for 10 s.)"""
    from prom import PrometheusServer

    say("Load: real requests to the shop's ClusterIP, following a daily pattern compressed to two minutes")
    ip = get("service", "shop", "-n", NS)["spec"]["clusterIP"]
    load = Load(f"http://{ip}:8080/", PATTERN, LOAD_SECONDS).start()
    note(
        f"GET http://{ip}:8080/ from this machine (kube-proxy spreads them over the pods), "
        f"{BASE:g} to {BASE + AMPLITUDE:g} requests/s, one 'day' = {PERIOD:g} s; "
        f"stops after {LOAD_SECONDS} s or {load.limit} requests"
    )

    say("Prometheus scrapes the shop's pods; four past 'days' of their counter backfilled")
    prom_dir, prom_url = DEMO / "prometheus", world["prom_url"]
    subprocess.run(["rm", "-rf", str(prom_dir)], check=True)
    joined = time.time() + JOIN_AHEAD
    history = request_history(PATTERN, HISTORY_LABELS, start=joined - HISTORY_DAYS * PERIOD, end=joined)
    PrometheusServer([], workdir=prom_dir).backfill(history)
    spawn(
        "prometheus",
        [
            sys.executable, str(HERE / "prom.py"), "--host", HOST, "--port", prom_url.rpartition(":")[2],
            "--workdir", str(prom_dir), "--real-pods", NS, "--kubeconfig", str(kubeconfig()),
        ],
    )  # fmt: skip
    first = wait(lambda: _first_scrape(prom_url), 60, "Prometheus scraping the shop's pods", interval=0.5)
    started = time.monotonic()
    wait(
        lambda: _condition(rsvc(), "Autoscaling").get("reason") not in (None, "MetricUnavailable"),
        90,
        "the operator reading Prometheus",
    )
    waited = time.monotonic() - started
    note(
        f"Prometheus at {prom_url}: every second, the shop's pods on the real node, found through the "
        "API server (job real-pods)"
    )
    note(
        f"the {HISTORY_DAYS} past 'days' (job history) come from the formula the load follows: a forecast "
        f"needs two seasons, and this saves eight minutes. They end {JOIN_AHEAD:g} s after the load "
        f"started, once Prometheus runs; the pods' own counters were first stored {first - joined:.1f} s "
        "later, and carry the measure from there"
    )
    note(
        f"the operator reads it {waited:.0f} s after the first scrape. Installed before Prometheus ran, it "
        "held the shop's replicas (MetricUnavailable), and after three refused connections it stops "
        "asking for 30 s (its circuit breaker)"
    )
    return load


def _first_scrape(prom_url: str) -> float | None:
    """When Prometheus first stored a shop pod's counter (unix seconds), once it has."""
    selector = f'http_requests_total{{namespace="{NS}",service="shop",job="real-pods"}}[10m]'
    with contextlib.suppress(Exception):
        series = prom_query(prom_url, selector)
        if series:
            return min(float(s["values"][0][0]) for s in series)
    return None


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _query_value(prom_url: str, query: str) -> float:
    with contextlib.suppress(Exception):
        result = prom_query(prom_url, query)
        if result:
            return float(result[0]["value"][1])
    return math.nan


def demo_policy() -> dict[str, Any]:
    """The shipped default policy, with drains approved in Slack by the demo's approver."""
    import yaml

    policy = yaml.safe_load((REPO / "policies" / "default.yaml").read_text())
    policy["metadata"] = {"name": "demo"}
    policy["spec"]["actions"]["DrainNode"]["approvers"] = {"slack": {"users": [APPROVER]}}
    return dict(policy)


def shop(workloads: Any, faulty: bool = False) -> dict[str, Any]:
    """The sample app on the real node, with a canary rollout and predictive autoscaling;
    ``faulty``: a revision that answers half its requests with 500 (APP_ERROR_RATIO)."""
    import workload

    body = workload.replicated_service(
        workloads,
        "shop",
        env={"APP_ERROR_RATIO": "0.5"} if faulty else None,
        replicas={"min": 1, "max": 6, "desired": 2},
        disruptionBudget={"maxUnavailable": 1},
        rollout={
            "strategy": "Canary",
            "canary": {"steps": [{"weight": 25, "pause": "5s"}, {"weight": 50, "pause": "5s"}]},
            "analysis": {
                "interval": "2s",
                "failureLimit": 1,
                # A new pod has no rate until it was scraped twice: no data is not a verdict.
                "inconclusiveLimit": 30,
                "metrics": [{"name": "error-ratio", "query": ERROR_RATIO, "max": 0.1}],
            },
        },
        autoscaling={
            "mode": "Predictive",
            "interval": f"{INTERVAL:g}s",
            "startupDelay": f"{STARTUP_DELAY:g}s",
            "metric": {"query": DEMAND, "targetPerReplica": TARGET},
            "forecast": {"step": f"{STEP:g}s", "period": f"{PERIOD:g}s", "history": "10m"},
            "behavior": {"scaleDown": {"stabilizationWindow": "0s"}},
        },
    )
    # Ready 3 s after it starts, so Prometheus (which finds a pod within a second or two) has
    # counted it at 0 before it serves: rate() cannot see what a counter served before its
    # first scrape, and a new pod's first requests went missing from the measured load.
    (container,) = body["spec"]["template"]["spec"]["containers"]
    container["readinessProbe"]["initialDelaySeconds"] = 3
    return body


def stock() -> dict[str, Any]:
    """Pods on KWOK nodes (simulated: nothing runs), for the node failure and the drain."""
    return {
        "apiVersion": "homeostat.dev/v1alpha1",
        "kind": "ReplicatedService",
        "metadata": {"name": "stock"},
        "spec": {
            "template": {
                "metadata": {"labels": {"app": "stock"}},
                "spec": {"containers": [{"name": "stock", "image": "registry.k8s.io/pause:3.10"}]},
            },
            "replicas": {"min": 1, "max": 6, "desired": 4},
            "disruptionBudget": {"maxUnavailable": 1},
            "healing": {"nodeFailure": {"gracePeriod": "5s"}},
            "approvals": {"policy": "demo", "slack": {"channel": "#ops"}},
        },
    }


def rsvc(name: str = "shop") -> dict[str, Any]:
    return get("rsvc", name, "-n", NS)


# --- the story ---------------------------------------------------------------------------------


def act_apply(world: dict[str, Any]) -> None:
    say(
        "kubectl apply: ReplicatedService 'shop', the sample app on the real node "
        "(canary rollout, predictive autoscaling)"
    )
    kubectl("apply", "-n", NS, "-f", "-", input=json.dumps(shop(world["workloads"])))
    note("and 'stock' (pods on KWOK nodes, simulated: for the node failure and the drain at the end)")
    kubectl("apply", "-n", NS, "-f", "-", input=json.dumps(stock()))
    for name in ("shop", "stock"):
        wait(lambda n=name: rsvc(n).get("status", {}).get("phase") == "Ready", 120, f"{name} Ready")
    note(kubectl("get", "rsvc", "-n", NS).strip().replace("\n", "\n    "))
    wide = kubectl("get", "pods", "-n", NS, "-o", "custom-columns=POD:.metadata.name,NODE:.spec.nodeName")
    note(wide.strip().replace("\n", "\n    "))


def act_scaling(world: dict[str, Any], load: Load) -> list[dict[str, float]]:
    say(
        f"Replicas follow the load: the forecast asks now for what the next {STARTUP_DELAY + INTERVAL:g} s "
        "will need (startup delay + interval)"
    )
    note(
        f"startup delay {STARTUP_DELAY:g} s: a new pod is Ready about 5 s after it is asked for, and the "
        f"rate over {WINDOW} lags the load by about 5 s; the rest is margin"
    )
    note(
        "offered = requests/s the generator sent (last 4 s); Prometheus = "
        f"sum(rate(http_requests_total[{WINDOW}])), what the operator reads (it lags about half the window)"
    )
    note(
        f"capacity = replicas x {TARGET:g} rps (targetPerReplica: what a replica is planned to carry; a pod "
        "could serve more, so nothing is refused); + = raised while capacity still covered the offered load"
    )
    note(
        "decided by = the Autoscaling condition's reason: Predictive (the forecast asked for more), "
        "Reactive (the current load did), or why the forecast was not used (e.g. ForecastUnreliable)"
    )
    note("time  offered  Prometheus  capacity  replicas (ready)    decided by")
    started = time.time()
    samples: list[dict[str, float]] = []
    last_desired = None
    raises: dict[str, int] = {}
    while time.time() - started < PERIOD + 10:
        body = rsvc()
        desired = int(body.get("spec", {}).get("replicas", {}).get("desired") or 1)
        forecast = body.get("status", {}).get("forecast") or {}
        reason = _condition(body, "Autoscaling").get("reason", "-")
        offered = load.offered()
        seen = _query_value(
            world["prom_url"], f'sum(rate(http_requests_total{{namespace="{NS}",service="shop"}}[{WINDOW}]))'
        )
        ready = _ready_pods("shop")
        samples.append(
            {
                "t": time.time(),
                "offered": offered,
                "seen": seen,
                "desired": desired,
                "ready": ready,
                "peak": float(forecast.get("predictedPeak") or math.nan),
                "peak_at": _epoch(forecast.get("predictedPeakAt")),
            }
        )
        raised = last_desired is not None and desired > last_desired
        ahead = "+" if raised and offered <= (last_desired or 0) * TARGET else " "
        if raised:
            raises[reason] = raises.get(reason, 0) + 1
        if desired != last_desired or len(samples) % 4 == 0:
            elapsed = samples[-1]["t"] - started
            row = f"{elapsed:3.0f}s  {offered:6.1f}  {seen:9.1f}  {desired * TARGET:8.0f}"
            row += f"  {desired:5d} ({ready})  {ahead}"
            note(f"{row}    {reason}")
        last_desired = desired
        time.sleep(2)
    note(
        "scale-ups by who decided them: "
        + (", ".join(f"{count} {why}" for why, count in sorted(raises.items())) or "none")
    )
    for line in lead_lines(scale_up_leads(samples, TARGET), TARGET, started):
        note(line)
    explain_forecast(rsvc())
    return samples


@dataclasses.dataclass(frozen=True)
class Raise:
    """One scale-up: when it was asked for, and how many seconds after that the new pods were
    all ready and the offered load first passed the capacity before it (None: not in the act;
    negative: the load had passed it already)."""

    at: float
    before: int
    after: int
    ready_after: float | None
    needed_after: float | None


def scale_up_leads(samples: Sequence[Mapping[str, float]], target: float) -> list[Raise]:
    """Every raise of the desired replicas in ``samples`` (``t``, ``offered``, ``desired``,
    ``ready``), judged by the samples alone: to the resolution of their spacing."""
    found = []
    for i in range(1, len(samples)):
        before, after = int(samples[i - 1]["desired"]), int(samples[i]["desired"])
        if after <= before:
            continue
        t, capacity = samples[i]["t"], before * target
        ready = next((s["t"] - t for s in samples[i:] if s["ready"] >= after), None)
        if samples[i]["offered"] > capacity:
            j = i
            while j > 0 and samples[j - 1]["offered"] > capacity:
                j -= 1
            needed: float | None = samples[j]["t"] - t
        else:
            needed = next((s["t"] - t for s in samples[i:] if s["offered"] > capacity), None)
        found.append(Raise(t, before, after, ready, needed))
    return found


def lead_lines(found: Sequence[Raise], target: float, t0: float) -> list[str]:
    """What each scale-up bought (at seconds since ``t0``, as in the table), then how far ahead
    of the load the pods were ready. Whole seconds first, so the figures on a line add up."""
    lines, leads = [], []
    for r in found:
        capacity = f"{r.before * target:g} rps"
        ready = None if r.ready_after is None else round(r.ready_after)
        if ready is None:
            got = "not all ready in the act"
        else:
            got = "ready within the same sample" if ready == 0 else f"ready {ready} s later"
        if r.needed_after is None:
            verdict = f"the load never passed {capacity} in the act (the forecast's safety band asked for it)"
        else:
            needed = round(r.needed_after)
            verdict = f"the load passed {capacity} {_relative(needed)}"
            if ready is not None and ready <= needed:
                leads.append(needed - ready)
                verdict += f": the pods were ready {leads[-1]} s before it needed them"
            elif ready is not None:
                verdict += f": the pods were ready {ready - needed} s after it needed them"
        lines.append(f"at {r.at - t0:.0f} s, {r.before} -> {r.after} replicas, {got}; {verdict}")
    needed_count = sum(r.needed_after is not None for r in found)
    if needed_count:
        lines.append(
            f"{len(leads)} of the {needed_count} scale-ups the load needed had their pods ready before it"
            + (f", median lead {statistics.median(leads):g} s" if leads else "")
            + " (to the ~2 s between samples)"
        )
    return lines


def _relative(seconds: int) -> str:
    if seconds == 0:
        return "at the raise"
    return f"{abs(seconds)} s {'after' if seconds > 0 else 'before'} the raise"


def _condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    conditions = body.get("status", {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == kind), {})


def explain_forecast(body: dict[str, Any]) -> None:
    """status.forecast, with what its backtest figures mean for the decision the reader just saw.

    The operator trusts a forecast whose backtest sMAPE is at most 5 %, whatever its MASE.
    MASE divides by the error of copying the previous "day", and this load repeats its curve
    (the backfilled days and the generator follow one formula), so that error is small and a
    close forecast still scores MASE above 1: shown bare, right after predictive scale-ups, it
    read as a contradiction."""
    forecast = body.get("status", {}).get("forecast") or {}
    peak = forecast.get("predictedPeak")
    note(
        f"status.forecast: method {forecast.get('method')}, horizon {forecast.get('horizon')}, "
        + (
            f"predicted peak {float(peak):.1f} rps at {forecast.get('predictedPeakAt')}"
            if peak
            else "no peak"
        )
    )
    mase, smape = forecast.get("mase"), forecast.get("smape")
    if mase is not None and smape is not None:
        note(
            f"backtest, one step ahead: off by {float(smape):.1f} % on average (sMAPE); "
            f"MASE {float(mase):.2f} = its error / the error of repeating the previous 'day'"
        )
    if forecast.get("fallback"):
        note(
            f"  the operator does not trust it now; replicas follow the current load: {forecast['fallback']}"
        )
    elif mase is not None and float(mase) > 1:
        note(
            "  the operator trusts it because it is at most 5 % off (sMAPE). MASE is above 1 "
            "because this load repeats its daily curve, so repeating the last 'day' is almost perfect"
        )
    elif mase is not None:
        note("  the operator trusts it: it beats repeating the previous 'day' (MASE below 1)")
    autoscaling = _condition(body, "Autoscaling")
    note(f"Autoscaling condition: {autoscaling.get('reason')}: {autoscaling.get('message')}")


def _epoch(stamp: Any) -> float:
    if not stamp:
        return math.nan
    return datetime.datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()


def act_canary(world: dict[str, Any], load: Load) -> None:
    say(
        "A new revision that fails half its requests (APP_ERROR_RATIO=0.5): judged by Prometheus, rolled back"
    )
    note(
        "traffic follows ready pods (trafficRouting Service, kube-proxy picks a pod per connection): the "
        "canary's share is its ready pods / all ready pods, the nearest a step's weight can get with this "
        "many replicas"
    )
    before = load.answers()
    kubectl("apply", "-n", NS, "-f", "-", input=json.dumps(shop(world["workloads"], faulty=True)))
    steps = shop(world["workloads"])["spec"]["rollout"]["canary"]["steps"]
    seen = None
    first_ready = None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        rollout = rsvc().get("status", {}).get("rollout") or {}
        canary, stable = _ready_pods("shop-canary"), _ready_pods("shop")
        if canary and first_ready is None:
            first_ready = time.monotonic()
        state = (rollout.get("phase"), rollout.get("step"), rollout.get("weight"), canary, stable)
        if seen is None and rollout.get("phase") == "Promoted":
            pass  # the first revision's rollout, until the operator has seen the new template
        elif state != seen:
            note(_canary_line(rollout, steps, canary, stable))
            seen = state
        if rollout.get("phase") == "RolledBack":
            break
        time.sleep(0.5)
    else:
        raise SystemExit(f"demo: the bad canary was not rolled back in 180 s; see {DEMO}/operator.log")
    if first_ready is not None:
        note(f"rolled back {time.monotonic() - first_ready:.1f} s after the first canary pod was Ready")
    after = load.answers()
    answered = {code: after.get(code, 0) - before.get(code, 0) for code in after}
    note(
        "the load generator's answers during the act: "
        + ", ".join(f"{n} x {code or 'no answer'}" for code, n in sorted(answered.items()) if n)
    )
    status = rsvc().get("status", {})
    degraded = _condition({"status": status}, "Degraded")
    note(f"status.phase {status.get('phase')}; Degraded: {degraded.get('message')}")


def _ready_pods(deployment: str) -> int:
    return int(get("deployment", deployment, "-n", NS).get("status", {}).get("readyReplicas") or 0)


def _canary_line(rollout: dict[str, Any], steps: list[dict[str, Any]], canary: int, stable: int) -> str:
    """One rollout state as a reader can check it: the step and the weight it asks for, and the
    ready pods behind the share the canary actually gets (status.rollout.achievedWeight)."""
    phase, step = rollout.get("phase"), int(rollout.get("step") or 0)
    serving = canary + stable
    share = f"{round(100 * canary / serving)}%" if serving else "-"
    pods = f"canary {canary} + stable {stable} ready pods: canary gets {share}"
    if phase in ("Progressing", "Paused") and step < len(steps):
        return f"{phase}, step {step + 1}/{len(steps)} asks {steps[step]['weight']}%; {pods}"
    if phase == "RollingBack":
        return f"RollingBack ({_failure(rollout)}): stable back to full size before the canary goes; {pods}"
    if phase == "RolledBack":
        return f"RolledBack: the canary is gone; {pods}"
    return f"{phase}; {pods}"


def _failure(rollout: dict[str, Any]) -> str:
    failure = rollout.get("failure") or {}
    return str(failure.get("message") or rollout.get("cause") or "analysis failed")


def _stock_pods() -> list[dict[str, Any]]:
    return [
        p
        for p in get("pods", "-n", NS, "-l", "homeostat.dev/service=stock").get("items", [])
        if not p["metadata"].get("deletionTimestamp")
    ]


def _busiest_node(exclude: set[str]) -> str:
    counts: dict[str, int] = {}
    for pod in _stock_pods():
        node = pod["spec"].get("nodeName")
        if node and node not in exclude:
            counts[node] = counts.get(node, 0) + 1
    return max(counts, key=lambda n: counts[n])


def _ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", [])
    )


def act_node_failure() -> str:
    say("A KWOK node stops reporting (KWOK's node-not-ready stage): its 'stock' pods move after a 5 s grace")
    note("(simulated pods on simulated nodes; the real node holds the operator and the shop)")
    node = _busiest_node(set())
    on_node = [p["metadata"]["name"] for p in _stock_pods() if p["spec"].get("nodeName") == node]
    note(f"{node} runs {len(on_node)} stock pods: {', '.join(on_node)}")
    started = time.monotonic()
    kubectl("label", "node", node, f"{local.NODE_NOT_READY_LABEL}=true", "--overwrite")

    def moved() -> bool:
        pods = _stock_pods()
        gone = all(p["spec"].get("nodeName") != node for p in pods)
        return (
            gone
            and not any(name in on_node for name in (p["metadata"]["name"] for p in pods))
            and all(_ready(p) for p in pods)
        )

    wait(moved, 120, "pods moved off the failed node", interval=0.2)
    note(f"all stock pods ready on other nodes {time.monotonic() - started:.1f} s after the failure")
    note("(Kubernetes alone waits 300 s, the default tolerationSeconds, before evicting them)")
    return node


def act_drain(world: dict[str, Any], failed: str) -> None:
    from slack_sdk import WebClient

    from slack.server import click_body, signed_headers

    say("A KWOK node reports memory pressure: draining it is risky, so Homeostat asks on Slack and waits")
    node = _busiest_node({failed})
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    pressure = {
        "type": "MemoryPressure",
        "status": "True",
        "reason": "KubeletHasInsufficientMemory",
        "message": "simulated by make demo",
        "lastTransitionTime": now,
        "lastHeartbeatTime": now,
    }
    kubectl(
        "patch",
        "node",
        node,
        "--subresource=status",
        "-p",
        json.dumps({"status": {"conditions": [pressure]}}),
    )

    def drain_request() -> dict[str, Any] | None:
        items = get("approvals", "-n", NS).get("items") or []
        return next((a for a in items if a["spec"]["action"] == "DrainNode"), None)

    request = wait(drain_request, 60, "an approval request")
    name = request["metadata"]["name"]
    note(f"Approval {name}: {request['spec']['action']} of {request['spec']['target']['name']}, pending")
    client = WebClient(token="xoxb-demo-token", base_url=world["slack_url"])

    def posted() -> list[dict[str, Any]]:
        channel = client.conversations_list()["channels"]
        ops = next(c["id"] for c in channel if c["name"] == "ops")
        return list(client.conversations_history(channel=ops)["messages"])

    message = wait(
        lambda: next((m for m in posted() if name in json.dumps(m)), None), 60, "the Slack message"
    )
    note(f"#ops on Slack: {message.get('text')}")
    time.sleep(3)
    cordoned = get("node", node).get("spec", {}).get("unschedulable")
    note(f"3 s later, without an answer: node cordoned? {bool(cordoned)}  (nothing risky runs unapproved)")

    body = click_body(NS, name, APPROVER, message_ts=str(message.get("ts", "")))
    req = urllib.request.Request(
        f"{world['http']}/slack/interactions",
        data=body,
        headers=signed_headers(world["signing_secret"], body),
    )
    with urllib.request.urlopen(req, timeout=10) as response:
        note(
            f"{APPROVER} clicks Approve (a request signed as Slack signs it, to the operator's Service): "
            f"HTTP {response.status}"
        )
    wait(lambda: get("approval", name, "-n", NS).get("status", {}).get("phase") == "Approved", 60, "approved")
    started = time.monotonic()

    def drained() -> bool:
        return get("node", node).get("spec", {}).get("unschedulable") and all(
            p["spec"].get("nodeName") != node for p in _stock_pods()
        )

    wait(drained, 120, f"{node} drained")
    note(
        f"{node} cordoned and drained via the Eviction API (PDB respected) in "
        f"{time.monotonic() - started:.1f} s"
    )
    updated = wait(
        lambda: next((m for m in posted() if m.get("ts") == message.get("ts") and m != message), None),
        30,
        "the updated Slack message",
    )
    note(f"#ops on Slack, updated: {updated.get('text')}")


def save_plot(samples: list[dict[str, float]]) -> Path:
    """The offered load, what Prometheus measured, the forecast's predicted peaks and the
    capacity asked for and ready, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    t0 = samples[0]["t"]
    t = [s["t"] - t0 for s in samples]
    figure, axes = pyplot.subplots(figsize=(12, 4.5))
    axes.plot(t, [s["offered"] for s in samples], color="black", label="offered (requests/s sent)")
    axes.plot(
        t,
        [s["seen"] for s in samples],
        color="grey",
        linestyle="--",
        label=f"measured by Prometheus (rate over {WINDOW})",
    )
    axes.step(
        t,
        [s["desired"] * TARGET for s in samples],
        where="post",
        color="tab:green",
        label=f"capacity asked for (desired replicas x {TARGET:g} rps)",
    )
    axes.step(
        t,
        [s["ready"] * TARGET for s in samples],
        where="post",
        color="tab:blue",
        alpha=0.6,
        label=f"capacity ready (ready pods x {TARGET:g} rps)",
    )
    peaks = [(s["peak_at"] - t0, s["peak"]) for s in samples if not math.isnan(s["peak"])]
    axes.scatter(
        [p[0] for p in peaks],
        [p[1] for p in peaks],
        color="tab:orange",
        s=12,
        label="forecast: predicted peak, when",
    )
    axes.set_xlabel("seconds")
    axes.set_ylabel("requests per second")
    axes.set_title(
        f"make demo: real requests to the sample app, predictive autoscaling, {STARTUP_DELAY:g} s "
        f"startup delay, one 'day' = {PERIOD:g} s"
    )
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    figure.tight_layout()
    plot = DEMO / "forecast.png"
    figure.savefig(plot, dpi=100)
    return plot


def run() -> int:
    DEMO.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        world = start_world()
        act_apply(world)
        load = start_load_and_prometheus(world)
        try:
            samples = act_scaling(world, load)
            act_canary(world, load)
        finally:
            load.stop()
        note(f"the load generator stopped: {sum(load.answers().values())} requests in all")
        failed = act_node_failure()
        act_drain(world, failed)
    finally:
        save_operator_log()
    say("Offered load, forecast and capacity during the scaling act")
    plot = save_plot(samples)
    note(f"saved {plot}")
    say("What Homeostat recorded (Events on the services, without the per-scale Deployment updates)")
    table = kubectl(
        "get",
        "events",
        "-n",
        NS,
        "--field-selector",
        "involvedObject.kind=ReplicatedService,reason!=Updated",
        "--sort-by=.lastTimestamp",
        "-o",
        "custom-columns=OBJECT:.involvedObject.name,TYPE:.type,REASON:.reason,MESSAGE:.message",
    )
    note(table.strip().replace("\n", "\n    "))
    note(
        "(after the load generator stopped, the shop's load reads 0 while the forecast still expects the "
        "daily curve: it is then no longer trusted, ForecastUnreliable)"
    )
    print(
        f"""
The demo took {time.monotonic() - started:.0f} s. All but the load generator is still running. Look around:
  export KUBECONFIG={kubeconfig()} PATH={local.BIN}:{VENV_BIN}:$PATH
  kubectl get rsvc -n {NS}                 # phase, replicas, revision, canary weight, predicted peak
  kubectl homeostat status shop -n {NS}    # the rollout
  kubectl homeostat approvals -n {NS}      # approval requests and their decisions
  kubectl describe rsvc shop -n {NS}       # conditions and Events
  kubectl logs -n {SYSTEM} deploy/{RELEASE}   # the operator (saved in {DEMO}/operator.log)
  helm status {RELEASE} -n {SYSTEM}
  open {DEMO}/forecast.png                 # offered load, forecast and capacity
Stop everything with: make cluster-down
"""
    )
    return 0


def serve_slack(url_file: str, host: str) -> int:
    from slack.server import FakeSlack

    fake = FakeSlack(token="xoxb-demo-token", host=host).start()
    Path(url_file).write_text(fake.api_url)
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    fake.stop()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["slack"]:
        sys.exit(serve_slack(sys.argv[2], sys.argv[3]))
    sys.exit(run())
