"""`make demo`: the whole Homeostat story on a local cluster, narrated on the terminal.

A service is created; its load follows a daily pattern (compressed to two minutes) and replicas
rise ahead of the peak; a bad canary is rolled back; a node fails and its pods move; a risky
drain waits for approval, which a signed click on the local Slack server gives. Every part is
real except what cannot be here: KWOK simulates the nodes and pods, the traffic simulator plays
the workload's metrics, and a local server stands in for Slack's Web API.

The cluster, the operator and their helpers keep running afterwards; `make cluster-down` stops
everything. Usage: python tests/demo.py [run]   (`slack` is the local Slack server, internal)
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from cluster import crds, local  # noqa: E402

CLUSTER = os.environ.get("CLUSTER", "homeostat")
DEMO = local.CACHE / "demo"
NS = "demo"
VENV_BIN = Path(sys.executable).parent
APPROVER = "U0DEMO0001"  # the Slack user allowed to approve drains in this demo

PERIOD, BASE, AMPLITUDE, TARGET = 120.0, 10.0, 60.0, 20.0  # demand 10..70 rps; 20 rps per replica
STEP, STARTUP_DELAY, INTERVAL = 8.0, 10.0, 2.0
PATTERN = f"seasonal base={BASE:g} amplitude={AMPLITUDE:g} period={PERIOD:g}s phase=4s"
DEMAND = 'sum(homeostat_sim_demand_rps{namespace="{{namespace}}", service="{{service}}"})'
SEL = 'namespace="{{namespace}}",service="{{service}}",revision="{{revision}}"'
ERROR_RATIO = (
    f'sum(rate(homeostat_sim_requests_total{{{SEL},code=~"5.."}}[5s]))'
    f" / sum(rate(homeostat_sim_requests_total{{{SEL}}}[5s]))"
)


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


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prom_query(url: str, query: str) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=5) as response:
        return list(json.load(response)["data"]["result"])


# --- the pieces --------------------------------------------------------------------------------


def stop_helpers() -> None:
    """Stop what an earlier run spawned (pid files in DEMO), and wait until it is gone: its
    Prometheus must not write into the data directory this run recreates, and its operator must
    not act on the nodes being reset."""
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
    story. It left one node NotReady and another cordoned and drained under memory pressure, so
    the cluster start waited in vain for three Ready nodes; its namespace still holds the old
    service, revisions and Approvals. Those nodes are deleted (kwokctl recreates KWOK nodes when
    the cluster starts) rather than repaired: KWOK never turns a failed node Ready again."""
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
    if get("namespace", NS):
        kubectl("delete", "namespace", NS, "--wait=false")
        # Pods on a failed node would wait for a kubelet that never answers.
        kubectl("delete", "pods", "--all", "-n", NS, "--force", "--grace-period=0", check=False)
        wait(lambda: not get("namespace", NS), 120, f"namespace {NS} deleted")
    changed = [
        n["metadata"]["name"]
        for n in get("nodes", "-l", "kwok.x-k8s.io/kwokctl-scale=node").get("items", [])
        if _changed_by_demo(n)
    ]
    if changed:
        kubectl("delete", "node", *changed)
    note(
        f"reset the previous run: namespace {NS} deleted, nodes recreated: {', '.join(changed) or 'none'} "
        f"({time.monotonic() - started:.1f} s)"
    )


def start_world() -> dict[str, Any]:
    from prom import PrometheusServer
    from traffic import model

    say("A local Kubernetes control plane: etcd, kube-apiserver, controller-manager, scheduler, 3 KWOK nodes")
    reset_previous_run()
    local.LocalCluster(CLUSTER).up(nodes=3)
    note(kubectl("get", "nodes").strip().replace("\n", "\n    "))
    crds.install(kubeconfig())
    kubectl("apply", "-f", str(REPO / "policies"))
    kubectl("create", "namespace", NS, check=False)
    kubectl("apply", "-f", "-", input=json.dumps(demo_policy()))

    say("The workload's metrics: a traffic simulator scraped by a real Prometheus, with past days backfilled")
    sim_port = free_port()
    spawn(
        "simulator",
        [
            sys.executable,
            "-m",
            "traffic.simulator",
            "--kubeconfig",
            str(kubeconfig()),
            "--port",
            str(sim_port),
        ],
        env={"PYTHONPATH": str(HERE)},
    )
    target = f"127.0.0.1:{sim_port}"
    wait(lambda: _http_ok(f"http://{target}/metrics"), 30, "the traffic simulator")
    prom_dir = DEMO / "prometheus"
    subprocess.run(["rm", "-rf", str(prom_dir)], check=True)
    server = PrometheusServer([target], workdir=prom_dir)
    now = time.time()
    pattern = model.parse_pattern(PATTERN)
    labels = {"job": "homeostat-sim", "instance": target}
    server.backfill(
        model.demand_history(
            pattern, NS, "shop", start=now - 4 * PERIOD, end=now, step=1.0, extra_labels=labels
        )
    )
    prom_port = free_port()
    spawn(
        "prometheus",
        [sys.executable, str(HERE / "prom.py"), target, "--workdir", str(prom_dir), "--port", str(prom_port)],
    )
    prom_url = f"http://127.0.0.1:{prom_port}"
    wait(lambda: _http_ok(f"{prom_url}/-/ready"), 60, "Prometheus")
    note(f"Prometheus at {prom_url}, scraping {target} every second")

    say(
        "Slack: a local server speaking Slack's Web API (no Slack here); the operator uses the real slack-sdk"
    )
    slack_file = DEMO / "slack.url"
    slack_file.unlink(missing_ok=True)
    spawn("slack", [sys.executable, str(HERE / "demo.py"), "slack", str(slack_file)])
    slack_url = wait(lambda: slack_file.exists() and slack_file.read_text().strip(), 30, "the Slack server")
    secrets_dir = DEMO / "secrets"
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    signing_secret = secrets.token_hex(16)
    for name, value in (("bot-token", "xoxb-demo-token"), ("signing-secret", signing_secret)):
        path = secrets_dir / name
        path.write_text(value)
        path.chmod(0o600)
    http_port = free_port()

    say(f"The operator (log: {DEMO}/operator.log)")
    spawn(
        "operator",
        [
            str(VENV_BIN / "homeostat"),
            "run",
            "--kubeconfig",
            str(kubeconfig()),
            "--prometheus-url",
            prom_url,
            "--slack-api-url",
            slack_url,
            "--slack-channel",
            "#ops",
            "--secrets-dir",
            str(secrets_dir),
            "--http-bind",
            "127.0.0.1",
            "--http-port",
            str(http_port),
        ],
    )
    wait(lambda: _http_ok(f"http://127.0.0.1:{http_port}/healthz"), 60, "the operator")
    return {
        "prom_url": prom_url,
        "slack_url": slack_url,
        "http": f"http://127.0.0.1:{http_port}",
        "signing_secret": signing_secret,
    }


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def demo_policy() -> dict[str, Any]:
    """The shipped default policy, with drains approved in Slack by the demo's approver."""
    import yaml

    policy = yaml.safe_load((REPO / "policies" / "default.yaml").read_text())
    policy["metadata"] = {"name": "demo"}
    policy["spec"]["actions"]["DrainNode"]["approvers"] = {"slack": {"users": [APPROVER]}}
    return dict(policy)


def shop(image: str, faulty: bool = False) -> dict[str, Any]:
    from traffic import model

    template: dict[str, Any] = {
        "metadata": {"labels": {"app": "shop"}},
        "spec": {"containers": [{"name": "shop", "image": image}]},
    }
    if faulty:
        template["metadata"]["annotations"] = {model.ANNOTATION_ERROR_RATE: "0.5"}
    return {
        "apiVersion": "homeostat.dev/v1alpha1",
        "kind": "ReplicatedService",
        "metadata": {"name": "shop", "annotations": {model.ANNOTATION_PATTERN: PATTERN}},
        "spec": {
            "template": template,
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
            "replicas": {"min": 1, "max": 6, "desired": 2},
            "disruptionBudget": {"maxUnavailable": 1},
            "rollout": {
                "strategy": "Canary",
                "canary": {"steps": [{"weight": 25, "pause": "5s"}, {"weight": 50, "pause": "5s"}]},
                "analysis": {
                    "interval": "2s",
                    "failureLimit": 1,
                    "metrics": [{"name": "error-ratio", "query": ERROR_RATIO, "max": 0.1}],
                },
            },
            "autoscaling": {
                "mode": "Predictive",
                "interval": f"{INTERVAL:g}s",
                "startupDelay": f"{STARTUP_DELAY:g}s",
                "metric": {
                    "query": DEMAND,
                    "targetPerReplica": TARGET,
                },
                "forecast": {"step": f"{STEP:g}s", "period": f"{PERIOD:g}s", "history": "10m"},
                "behavior": {"scaleDown": {"stabilizationWindow": "0s"}},
            },
            "healing": {"nodeFailure": {"gracePeriod": "5s"}},
            "approvals": {"policy": "demo", "slack": {"channel": "#ops"}},
        },
    }


def rsvc() -> dict[str, Any]:
    return get("rsvc", "shop", "-n", NS)


# --- the story ---------------------------------------------------------------------------------


def act_scaling(world: dict[str, Any]) -> list[dict[str, float]]:
    say("kubectl apply: ReplicatedService 'shop' (canary, predictive autoscaling, healing, approvals)")
    kubectl("apply", "-n", NS, "-f", "-", input=json.dumps(shop("registry.k8s.io/pause:3.10")))
    wait(lambda: rsvc().get("status", {}).get("phase") == "Ready", 120, "shop Ready")
    note(kubectl("get", "rsvc", "-n", NS).strip().replace("\n", "\n    "))

    say(f"Load follows a daily pattern compressed to {PERIOD:g}s; replicas rise {STARTUP_DELAY:g}s ahead")
    note("capacity = replicas x 20 rps; + = raised while the current capacity still covered demand;")
    note("decided by = the Autoscaling condition: Predictive (the forecast asked for more) or Reactive")
    note("time   demand   capacity  replicas     decided by")
    started = time.monotonic()
    samples: list[dict[str, float]] = []
    last_desired = None
    raises: dict[str, int] = {}
    while time.monotonic() - started < PERIOD + 10:
        body = rsvc()
        desired = int(body.get("spec", {}).get("replicas", {}).get("desired") or 1)
        forecast = body.get("status", {}).get("forecast") or {}
        reason = _condition(body, "Autoscaling").get("reason", "-")
        demand_now = _demand(world["prom_url"])
        samples.append(
            {
                "t": time.time(),
                "demand": demand_now,
                "desired": desired,
                "peak": float(forecast.get("predictedPeak") or math.nan),
                "peak_at": _epoch(forecast.get("predictedPeakAt")),
            }
        )
        raised = last_desired is not None and desired > last_desired
        ahead = "+" if raised and demand_now <= (last_desired or 0) * TARGET else " "
        if raised:
            raises[reason] = raises.get(reason, 0) + 1
        if desired != last_desired or len(samples) % 4 == 0:
            elapsed = time.monotonic() - started
            row = f"{elapsed:4.0f}s  {demand_now:6.1f}   {desired * TARGET:6.0f}    {desired}  {ahead}"
            note(f"{row}    {reason}")
        last_desired = desired
        time.sleep(2)
    note(
        "scale-ups by who decided them: "
        + (", ".join(f"{count} {why}" for why, count in sorted(raises.items())) or "none")
    )
    explain_forecast(rsvc())
    return samples


def _condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    conditions = body.get("status", {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == kind), {})


def explain_forecast(body: dict[str, Any]) -> None:
    """status.forecast, with what its backtest figures mean for the decision the reader just saw.

    The operator trusts a forecast whose backtest sMAPE is at most 5 %, whatever its MASE.
    MASE divides by the error of copying the previous "day", and the simulated load repeats
    exactly, so that error is nearly zero and a close forecast still scores MASE above 1: shown
    bare, right after predictive scale-ups, it read as a contradiction."""
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
            "because this simulated load repeats exactly, so repeating the last 'day' is almost perfect"
        )
    elif mase is not None:
        note("  the operator trusts it: it beats repeating the previous 'day' (MASE below 1)")
    autoscaling = _condition(body, "Autoscaling")
    note(f"Autoscaling condition: {autoscaling.get('reason')}: {autoscaling.get('message')}")


def _epoch(stamp: Any) -> float:
    if not stamp:
        return math.nan
    return datetime.datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()


def _demand(prom_url: str) -> float:
    with contextlib.suppress(Exception):
        result = prom_query(prom_url, f'sum(homeostat_sim_demand_rps{{namespace="{NS}",service="shop"}})')
        if result:
            return float(result[0]["value"][1])
    return math.nan


def act_canary() -> None:
    say("A new revision that fails half its requests: the canary is judged by Prometheus and rolled back")
    note(
        "traffic follows ready pods (trafficRouting Service): the canary's share is its ready pods / all "
        "ready pods, the nearest a step's weight can get with this many replicas (one stable pod stays)"
    )
    kubectl("apply", "-n", NS, "-f", "-", input=json.dumps(shop("registry.k8s.io/pause:3.9", faulty=True)))
    steps = shop("")["spec"]["rollout"]["canary"]["steps"]
    seen = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rollout = rsvc().get("status", {}).get("rollout") or {}
        canary, stable = _ready_pods("shop-canary"), _ready_pods("shop")
        state = (rollout.get("phase"), rollout.get("step"), rollout.get("weight"), canary, stable)
        if state != seen:
            note(_canary_line(rollout, steps, canary, stable))
            seen = state
        if rollout.get("phase") == "RolledBack":
            break
        time.sleep(0.5)
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


def _shop_pods() -> list[dict[str, Any]]:
    return [
        p
        for p in get("pods", "-n", NS, "-l", "homeostat.dev/service=shop").get("items", [])
        if not p["metadata"].get("deletionTimestamp")
    ]


def _busiest_node(exclude: set[str]) -> str:
    counts: dict[str, int] = {}
    for pod in _shop_pods():
        node = pod["spec"].get("nodeName")
        if node and node not in exclude:
            counts[node] = counts.get(node, 0) + 1
    return max(counts, key=lambda n: counts[n])


def _ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", [])
    )


def act_node_failure() -> str:
    say("A node stops reporting (KWOK's node-not-ready stage): its pods are moved after a 5 s grace")
    # The autoscaler owns the replica count: judge by whatever it currently asks for.
    wait(lambda: len(_shop_pods()) >= 2, 60, "at least two pods")
    node = _busiest_node(set())
    on_node = [p["metadata"]["name"] for p in _shop_pods() if p["spec"].get("nodeName") == node]
    note(f"{node} runs {len(on_node)} shop pods: {', '.join(on_node)}")
    started = time.monotonic()
    kubectl("label", "node", node, f"{local.NODE_NOT_READY_LABEL}=true", "--overwrite")

    def moved() -> bool:
        pods = _shop_pods()
        gone = all(p["spec"].get("nodeName") != node for p in pods)
        return (
            gone
            and not any(name in on_node for name in (p["metadata"]["name"] for p in pods))
            and all(_ready(p) for p in pods)
        )

    wait(moved, 120, "pods moved off the failed node", interval=0.2)
    note(f"all shop pods ready on other nodes {time.monotonic() - started:.1f} s after the failure")
    note("(Kubernetes alone waits 300 s, the default tolerationSeconds, before evicting them)")
    return node


def act_drain(world: dict[str, Any], failed: str) -> None:
    from slack_sdk import WebClient

    from slack.server import click_body, signed_headers

    say("A node reports memory pressure: draining it is risky, so Homeostat asks on Slack and waits")
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
    request = wait(lambda: (get("approvals", "-n", NS).get("items") or [None])[0], 60, "an approval request")
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
        note(f"{APPROVER} clicks Approve (a request signed as Slack signs it): HTTP {response.status}")
    wait(lambda: get("approval", name, "-n", NS).get("status", {}).get("phase") == "Approved", 60, "approved")
    started = time.monotonic()

    def drained() -> bool:
        return get("node", node).get("spec", {}).get("unschedulable") and all(
            p["spec"].get("nodeName") != node for p in _shop_pods()
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


def save_plot(world: dict[str, Any], samples: list[dict[str, float]]) -> Path:
    """Demand, the forecast's predicted peaks and the capacity the operator provided, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    t0 = samples[0]["t"]
    q = urllib.parse.urlencode(
        {
            "query": f'sum(homeostat_sim_ready_pods{{namespace="{NS}",service="shop"}}) * {TARGET:g}',
            "start": t0,
            "end": samples[-1]["t"],
            "step": 1,
        }
    )
    with urllib.request.urlopen(f"{world['prom_url']}/api/v1/query_range?{q}", timeout=10) as response:
        ready = json.load(response)["data"]["result"][0]["values"]
    figure, axes = pyplot.subplots(figsize=(10, 4.5))
    axes.plot(
        [s["t"] - t0 for s in samples], [s["demand"] for s in samples], color="black", label="demand (rps)"
    )
    axes.step(
        [s["t"] - t0 for s in samples],
        [s["desired"] * TARGET for s in samples],
        where="post",
        color="tab:green",
        label="capacity asked for (desired replicas x 20 rps)",
    )
    axes.step(
        [float(t) - t0 for t, _ in ready],
        [float(v) for _, v in ready],
        where="post",
        color="tab:blue",
        alpha=0.6,
        label="capacity ready (ready pods x 20 rps)",
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
        f"make demo: predictive autoscaling, {STARTUP_DELAY:g} s startup delay, one 'day' = {PERIOD:g} s"
    )
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    plot = DEMO / "forecast.png"
    figure.savefig(plot, dpi=100)
    return plot


def run() -> int:
    DEMO.mkdir(parents=True, exist_ok=True)
    world = start_world()
    samples = act_scaling(world)
    act_canary()
    failed = act_node_failure()
    act_drain(world, failed)
    say("Demand, forecast and capacity during the scaling act")
    plot = save_plot(world, samples)
    note(f"saved {plot}")
    say("What Homeostat recorded (Events on the service, without the per-scale Deployment updates)")
    table = kubectl(
        "get",
        "events",
        "-n",
        NS,
        "--field-selector",
        "involvedObject.kind=ReplicatedService,reason!=Updated",
        "--sort-by=.lastTimestamp",
        "-o",
        "custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message",
    )
    note(table.strip().replace("\n", "\n    "))
    print(
        f"""
Everything is still running. Look around:
  export KUBECONFIG={kubeconfig()} PATH={local.BIN}:{VENV_BIN}:$PATH
  kubectl get rsvc -n {NS}                 # phase, replicas, revision, canary weight, predicted peak
  kubectl homeostat status shop -n {NS}    # the rollout
  kubectl homeostat approvals -n {NS}      # approval requests and their decisions
  kubectl describe rsvc shop -n {NS}       # conditions and Events
  open {DEMO}/forecast.png                 # demand, forecast and capacity
  tail -f {DEMO}/operator.log
Stop everything with: make cluster-down
"""
    )
    return 0


def serve_slack(url_file: str) -> int:
    from slack.server import FakeSlack

    fake = FakeSlack(token="xoxb-demo-token").start()
    Path(url_file).write_text(fake.api_url)
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    fake.stop()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["slack"]:
        sys.exit(serve_slack(sys.argv[2]))
    sys.exit(run())
