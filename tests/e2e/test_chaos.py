"""SIGKILL the operator in the middle of scaling and of remediations, and take Slack away mid-approval.

The operator keeps its memory in the API server (statuses, Approval objects, the Slack message's
metadata), so a kill at any instant must lose nothing that matters and repeat nothing that
shows: every object converges after the restart, no action runs twice, no Slack message is
posted twice and no incident gets a second Approval. ``test_rollout_chaos.py`` does the same
for rollouts.

Trial counts follow ``HOMEOSTAT_CHAOS_TRIALS`` (10 in ``make test``, 50 in ``make chaos``): a
fifth of it for scaling and for remediations, at least two each, so ``make test`` runs a cheap
subset and ``make chaos`` ten of each. ``HOMEOSTAT_CHAOS_SEED`` replays a run's random kill
points (the seed is printed).

One operator serves the module (namespaces ``cx-*``): the traffic simulator and a real
Prometheus for the autoscaler, the local Slack server for approvals, signed clicks on its
interactivity endpoint. Kills go to that process; the summary table gets one row per scenario.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import os
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import chaos_report as report
import prom
from cluster import local
from conftest import OperatorProcess, get_json, wait_for
from slack import server as fake
from traffic import model, simulator

pytestmark = pytest.mark.e2e

TRIALS = int(os.environ.get("HOMEOSTAT_CHAOS_TRIALS", "10"))
SCALING_TRIALS = max(2, TRIALS // 5)
REMEDIATION_TRIALS = max(2, TRIALS // 5)
SEED = int(os.environ.get("HOMEOSTAT_CHAOS_SEED", str(int(time.time()))))

PER_REPLICA = 10.0  # rps one replica serves
DEMAND_QUERY = 'sum(homeostat_sim_demand_rps{namespace="{{namespace}}", service="{{service}}"})'
CHAOS_TAINT = "homeostat.dev/chaos"
APPROVER = "U0CHAOS"
# Generous: two cores are shared with other test runs, and a restarted operator imports,
# authenticates and lists everything before it acts again.
CONVERGE = 180.0


@dataclasses.dataclass
class Env:
    cluster: local.LocalCluster
    namespace: str
    operator: OperatorProcess
    port: int
    slack: fake.FakeSlack
    signing: str
    policy: str
    rng: random.Random
    kills: int = 0
    crashes_seen: int = 0

    def new_crashes(self) -> int:
        """Crashes since the last call: one operator serves every scenario of the module."""
        total = report.count_crashes([self.operator])
        new, self.crashes_seen = total - self.crashes_seen, total
        return new

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def restart(self, pause: float = 0.0) -> None:
        """SIGKILL, then a new process, as a Deployment's replacement pod would be."""
        self.operator.kill()
        self.kills += 1
        time.sleep(pause)
        self.operator.start()

    def wait_healthy(self) -> None:
        wait_for(self.healthy, timeout=CONVERGE, what="the restarted operator's /healthz")

    def kill_after(self, low: float, high: float) -> None:
        time.sleep(self.rng.uniform(low, high))
        self.restart(self.rng.uniform(0.0, 1.0))

    def apply(self, *objects: dict[str, Any]) -> None:
        self.cluster.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in objects))

    def rsvc(self, name: str) -> dict[str, Any]:
        return get_json(self.cluster, "rsvc", name, "-n", self.namespace) or {}

    def events(self, name: str) -> list[dict[str, Any]]:
        listing = get_json(
            self.cluster,
            "events",
            "-n",
            self.namespace,
            "--field-selector",
            f"involvedObject.kind=ReplicatedService,involvedObject.name={name}",
        )
        return list((listing or {}).get("items") or [])

    def pods(self, service: str) -> list[dict[str, Any]]:
        body = get_json(self.cluster, "pods", "-n", self.namespace, "-l", f"homeostat.dev/service={service}")
        return list((body or {}).get("items") or [])

    def approvals(self) -> list[dict[str, Any]]:
        return list((get_json(self.cluster, "approvals", "-n", self.namespace) or {}).get("items") or [])

    def history(self, service: str) -> list[dict[str, Any]]:
        status = self.rsvc(service).get("status") or {}
        return list((status.get("healing") or {}).get("history") or [])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def env(
    local_cluster: local.LocalCluster,
    crds_installed: None,
    traffic_simulator: simulator.Simulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Env]:
    prom.need_prometheus()
    workdir = tmp_path_factory.mktemp("chaos")
    token, signing = f"xoxb-chaos-{uuid.uuid4().hex}", f"signing-{uuid.uuid4().hex}"
    secrets = workdir / "secrets"
    secrets.mkdir()
    (secrets / "bot-token").write_text(token)
    (secrets / "signing-secret").write_text(signing)
    slack = fake.FakeSlack(token).start()
    server = prom.PrometheusServer([traffic_simulator.target], workdir=workdir / "prometheus").start()
    namespace = f"cx-{uuid.uuid4().hex[:8]}"
    local_cluster.kubectl("create", "namespace", namespace)
    port = free_port()
    operator = OperatorProcess(
        local_cluster.kubeconfig,
        workdir / "operator.log",
        (
            "--namespace",
            "cx-*",
            "--http-port",
            str(port),
            "--http-bind",
            "127.0.0.1",
            "--prometheus-url",
            server.url,
        ),
        env={"HOMEOSTAT_SECRETS_DIR": str(secrets), "HOMEOSTAT_SLACK_API_URL": slack.api_url},
    ).start()
    policy = f"cx-{uuid.uuid4().hex[:8]}"
    print(f"chaos seed {SEED}: {SCALING_TRIALS} scaling and {REMEDIATION_TRIALS} remediation trials")
    chaos = Env(local_cluster, namespace, operator, port, slack, signing, policy, random.Random(SEED))
    chaos.apply(remediation_policy(policy))
    try:
        server.wait_for_target_up()
        chaos.wait_healthy()
        yield chaos
    finally:
        operator.stop()
        slack.stop()
        server.cleanup()
        local_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        local_cluster.kubectl("delete", "remediationpolicy", policy, "--wait=false", check=False)
        local_cluster.kubectl(
            "delete", "nodes", "-l", "homeostat.dev/chaos-test", "--wait=false", check=False
        )
        print(f"operator log: {operator.log_path}")


def remediation_policy(name: str) -> dict[str, Any]:
    drain = {
        "risk": "high",
        "mode": "approve",
        "approvers": {"slack": {"users": [APPROVER]}},
        "timeout": "30m",
    }
    return {
        "apiVersion": "homeostat.dev/v1alpha1",
        "kind": "RemediationPolicy",
        "metadata": {"name": name},
        "spec": {
            "actions": {"RestartPod": {"risk": "low", "mode": "auto"}, "DrainNode": drain},
            # Room for every trial: a limit must never be what stops a second run of an action.
            "rateLimits": {"perService": {"maxActions": 500, "window": "10m"}},
            "blastRadius": {"minHealthyNodes": "0%", "maxConcurrentActions": 50},
            "cooldown": "5s",
            "verifyWindow": "5s",
            "circuitBreaker": {"failures": 100, "window": "10m"},
        },
    }


# --- scaling -------------------------------------------------------------------------------------


def scaling_plan(rng: random.Random, trials: int) -> list[int]:
    """Replica counts 1..5 visited so that no transition a -> b repeats: the 20 edges of the
    complete graph on five counts, walked as four circuits x -> x + k (mod 5). A repeated
    ScaledUp/ScaledDown Event for one transition is then a duplicate, whatever the timing."""
    steps = [1, 2, 3, 4]
    rng.shuffle(steps)
    at = rng.randrange(5)
    plan = [at]
    for k in steps:
        for _ in range(5):
            at = (at + k) % 5
            plan.append(at)
    return [p + 1 for p in plan[: trials + 1]]


def demand(replicas: int) -> str:
    return f"constant rps={replicas * PER_REPLICA - PER_REPLICA / 2:g}"


def scaled_to(chaos: Env, replicas: int) -> bool:
    body = chaos.rsvc("scaler")
    if (body.get("spec") or {}).get("replicas", {}).get("desired") != replicas:
        return False
    deployment = get_json(chaos.cluster, "deployment", "scaler", "-n", chaos.namespace) or {}
    return (deployment.get("spec") or {}).get("replicas") == replicas and (
        (deployment.get("status") or {}).get("readyReplicas") == replicas
    )


# pytest's default 600 s is for one test; these grow with the trial count.
@pytest.mark.timeout(300 + 120 * SCALING_TRIALS)
def test_sigkill_at_random_points_of_scaling(env: Env, chaos_report: report.Recorder) -> None:
    plan = scaling_plan(env.rng, SCALING_TRIALS)
    print(f"scaling plan (replicas): {plan}")
    service = {
        "apiVersion": "homeostat.dev/v1alpha1",
        "kind": "ReplicatedService",
        "metadata": {
            "name": "scaler",
            "namespace": env.namespace,
            "annotations": {model.ANNOTATION_PATTERN: demand(plan[0])},
        },
        "spec": {
            "template": {
                "metadata": {"labels": {"app": "scaler"}},
                "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]},
            },
            "replicas": {"min": 1, "max": 6, "desired": plan[0]},
            "autoscaling": {
                "mode": "Reactive",
                "interval": "2s",
                "metric": {"query": DEMAND_QUERY, "targetPerReplica": PER_REPLICA},
                "behavior": {"scaleDown": {"stabilizationWindow": "0s"}},
            },
        },
    }
    env.apply(service)
    wait_for(lambda: scaled_to(env, plan[0]), timeout=CONVERGE, what=f"scaler at {plan[0]} replicas")
    kills_before, converged = env.kills, 0
    expected = set(itertools.pairwise(plan))
    try:
        for trial, replicas in enumerate(plan[1:]):
            env.cluster.kubectl(
                "annotate",
                "rsvc",
                "scaler",
                "-n",
                env.namespace,
                f"{model.ANNOTATION_PATTERN}={demand(replicas)}",
                "--overwrite",
            )
            # The simulator polls every second, Prometheus scrapes every second and the
            # autoscaler evaluates every two: the change lands within about five seconds.
            for _ in range(env.rng.choice((1, 2))):
                env.kill_after(0.0, 5.0)
            wait_for(
                lambda r=replicas: scaled_to(env, r),
                timeout=CONVERGE,
                what=f"scaling trial {trial}: {replicas} replicas",
            )
            converged += 1
        # Events are posted after the state they follow from: give the last ones time to land.
        wait_for(lambda: transitions(env) and True, timeout=30, what="Scaled Events")
        time.sleep(3)
    finally:
        seen = transitions(env)
        duplicates = sum(n - 1 for n in seen.values() if n > 1)
        chaos_report.record(
            "scaling SIGKILL",
            trials=len(plan) - 1,
            faults=env.kills - kills_before,
            converged=converged,
            duplicates=duplicates,
            crashes=env.new_crashes(),
        )
    unplanned = {t: n for t, n in seen.items() if t not in expected}
    print(
        f"scaling: trials={len(plan) - 1} kills={env.kills - kills_before} converged={converged} "
        f"scale events={sum(seen.values())} for {len(expected)} transitions, duplicates={duplicates}, "
        f"unplanned={unplanned}"
    )
    assert not {t: n for t, n in seen.items() if n > 1}, f"a scaling step was applied twice: {seen}"
    assert not unplanned, f"scaled through counts nobody asked for: {unplanned}"
    # A kill between the write and its Event may lose the Event, never double it; most arrive.
    assert len(seen) >= len(expected) // 2
    assert env.operator.alive(), env.operator.logs()[-3000:]


def transitions(chaos: Env) -> collections.Counter[tuple[int, int]]:
    counts: collections.Counter[tuple[int, int]] = collections.Counter()
    for event in chaos.events("scaler"):
        if event["reason"] in ("ScaledUp", "ScaledDown"):
            found = re.search(r"; (\d+) -> (\d+)", event["message"])
            assert found, event["message"]
            counts[(int(found[1]), int(found[2]))] += int(event.get("count") or 1)
    return counts


# --- remediations --------------------------------------------------------------------------------


def running_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
    return status.get("phase") == "Running" and ready and not pod["metadata"].get("deletionTimestamp")


def workload(
    name: str, namespace: str, policy: str, replicas: int, healing: dict[str, Any]
) -> dict[str, Any]:
    return {
        "apiVersion": "homeostat.dev/v1alpha1",
        "kind": "ReplicatedService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]},
            },
            "replicas": {"min": 1, "max": 10, "desired": replicas},
            "healing": healing,
            "approvals": {"policy": policy, "slack": {"channel": "#ops"}},
        },
    }


def on_node(service: dict[str, Any], node: str) -> dict[str, Any]:
    """Prefer ``node`` while it is healthy; its taint keeps every other workload off it."""
    pod = service["spec"]["template"]["spec"]
    pod["tolerations"] = [{"key": CHAOS_TAINT, "operator": "Exists", "effect": "NoSchedule"}]
    term = {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}
    pod["affinity"] = {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "preference": term}]
        }
    }
    return service


def chaos_node(chaos: Env) -> str:
    name = f"cx-{uuid.uuid4().hex[:6]}"
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {"type": "kwok", "kubernetes.io/hostname": name, "homeostat.dev/chaos-test": "true"},
        },
        "spec": {"taints": [{"key": CHAOS_TAINT, "effect": "NoSchedule"}]},
    }
    chaos.cluster.kubectl("apply", "-f", "-", input=json.dumps(node))

    def ready() -> bool:
        conditions = ((get_json(chaos.cluster, "node", name) or {}).get("status") or {}).get("conditions")
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions or [])

    # Pods scheduled before the node is Ready go elsewhere, and the trial would have no victim.
    wait_for(ready, timeout=CONVERGE, what=f"node {name} Ready")
    return name


def place(chaos: Env, service: str, node: str, replicas: int) -> set[str]:
    """Until ``replicas`` pods are ready and some run on ``node``; the names of those. The node
    is only preferred, so when the scheduler put them all elsewhere they are rescheduled."""
    deadline = time.monotonic() + CONVERGE
    while True:
        pods = chaos.pods(service)
        if len(pods) == replicas and all(map(running_ready, pods)):
            there = {p["metadata"]["name"] for p in pods if p["spec"].get("nodeName") == node}
            if there:
                return there
            chaos.cluster.kubectl(
                "delete",
                "pods",
                "-n",
                chaos.namespace,
                "-l",
                f"homeostat.dev/service={service}",
                "--wait=false",
            )
        if time.monotonic() > deadline:
            pytest.fail(f"no pod of {service} on {node} after {CONVERGE:.0f}s")
        time.sleep(1)


def pressure(chaos: Env, node: str) -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    condition = {"type": "DiskPressure", "status": "True", "reason": "Chaos", "message": "simulated"}
    condition.update(lastTransitionTime=now, lastHeartbeatTime=now)
    chaos.cluster.kubectl(
        "patch",
        "node",
        node,
        "--subresource=status",
        "-p",
        json.dumps({"status": {"conditions": [condition]}}),
    )


def approvals_for(chaos: Env, node: str) -> list[dict[str, Any]]:
    return [a for a in chaos.approvals() if a["spec"]["target"]["name"] == node]


def posts_for(chaos: Env, approval: str) -> list[fake.Call]:
    ref = f"Approval {chaos.namespace}/{approval}"
    return [c for c in chaos.slack.calls_of("chat.postMessage") if ref in json.dumps(c.args)]


def click(chaos: Env, approval: str) -> int:
    body = fake.click_body(
        chaos.namespace, approval, APPROVER, "approve", response_url=chaos.slack.response_url()
    )
    request = urllib.request.Request(
        f"http://127.0.0.1:{chaos.port}/slack/interactions",
        data=body,
        headers=fake.signed_headers(chaos.signing, body, int(time.time())),
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def executions(chaos: Env, service: str, action: str, target: str) -> int:
    """How often ``action`` ran on ``target``: its Remediation Events, added up."""
    prefix = f"{action} on {target} "
    return sum(
        int(e.get("count") or 1)
        for e in chaos.events(service)
        if e["reason"] == "Remediation" and e["message"].startswith(prefix)
    )


@dataclasses.dataclass
class Outcome:
    converged: bool = False
    duplicates: int = 0
    lost: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)


def restart_trial(chaos: Env, trial: int) -> Outcome:
    """A crash-looping pod is restarted (auto): kills anywhere from the failure to the verify."""
    if not chaos.rsvc("looper"):
        chaos.apply(workload("looper", chaos.namespace, chaos.policy, 3, {"crashLoop": {"window": "10m"}}))
    ready = wait_for(
        lambda: (pods := [p for p in chaos.pods("looper") if running_ready(p)]) and len(pods) == 3 and pods,
        timeout=CONVERGE,
        what="3 ready looper pods",
    )
    victim = chaos.rng.choice(ready)["metadata"]["name"]
    target = f"Pod/{chaos.namespace}/{victim}"
    chaos.cluster.kubectl("label", "pod", victim, "-n", chaos.namespace, f"{local.POD_FAILURE_LABEL}=true")
    for _ in range(chaos.rng.choice((1, 2))):
        chaos.kill_after(0.0, 6.0)

    def recovered() -> bool:
        pods = [p for p in chaos.pods("looper") if not p["metadata"].get("deletionTimestamp")]
        names = {p["metadata"]["name"] for p in pods}
        return victim not in names and len(pods) == 3 and all(map(running_ready, pods))

    wait_for(recovered, timeout=CONVERGE, what=f"restart trial {trial}: {victim} replaced")
    # Verified (or its record lost to a kill): nothing left in progress for the victim.
    wait_for(
        lambda: all(
            r.get("outcome") != "InProgress" for r in chaos.history("looper") if r["target"] == target
        ),
        timeout=CONVERGE,
        what=f"restart trial {trial}: the restart verified",
    )
    outcome = Outcome(converged=True)
    runs = [r for r in chaos.history("looper") if r["target"] == target and r["action"] == "RestartPod"]
    events = executions(chaos, "looper", "RestartPod", target)
    outcome.duplicates = max(len(runs), events) - 1 if max(len(runs), events) > 1 else 0
    outcome.lost = int(not runs)
    outcome.notes.append(f"restart {victim}: history={len(runs)} events={events}")
    return outcome


def drain_trial(chaos: Env, trial: int) -> Outcome:
    """A node under pressure is drained after a signed Slack click: kills before the request,
    between the request and the click, and after the click, in a random one or two of them."""
    node = chaos_node(chaos)
    name = f"drain-{trial}"
    chaos.apply(
        on_node(
            workload(name, chaos.namespace, chaos.policy, 2, {"nodeFailure": {"gracePeriod": "2s"}}), node
        )
    )

    place(chaos, name, node, 2)
    phases = chaos.rng.sample(["detect", "asked", "clicked"], chaos.rng.choice((1, 2)))
    pressure(chaos, node)
    if "detect" in phases:
        chaos.kill_after(0.0, 3.0)
    first = wait_for(
        lambda: approvals_for(chaos, node), timeout=CONVERGE, what=f"drain trial {trial}: an Approval"
    )
    approval = first[0]["metadata"]["name"]
    if "asked" in phases:
        chaos.kill_after(0.0, 1.5)
    wait_for(
        lambda: posts_for(chaos, approval), timeout=CONVERGE, what=f"drain trial {trial}: the Slack post"
    )

    def phase() -> str:
        found = [a for a in approvals_for(chaos, node) if a["metadata"]["name"] == approval]
        return str(((found[0] if found else {}).get("status") or {}).get("phase") or "")

    def approved() -> bool:
        if phase() == "Approved":
            return True
        if chaos.healthy():
            click(chaos, approval)
        return False

    wait_for(approved, timeout=CONVERGE, interval=2, what=f"drain trial {trial}: approved")
    if "clicked" in phases:
        chaos.kill_after(0.0, 2.0)

    def drained() -> bool:
        pods = [p for p in chaos.pods(name) if not p["metadata"].get("deletionTimestamp")]
        off = [p for p in pods if p["spec"].get("nodeName") != node]
        return len(pods) == 2 and len(off) == 2 and all(map(running_ready, off))

    wait_for(drained, timeout=CONVERGE, what=f"drain trial {trial}: {node} drained")
    target = f"Node/{node}"
    wait_for(
        lambda: all(r.get("outcome") != "InProgress" for r in chaos.history(name) if r["target"] == target),
        timeout=CONVERGE,
        what=f"drain trial {trial}: the drain verified",
    )
    time.sleep(2)  # a second run (the defect this looks for) would come right after a restart
    runs = [r for r in chaos.history(name) if r["target"] == target and r["action"] == "DrainNode"]
    events = executions(chaos, name, "DrainNode", target)
    requests = approvals_for(chaos, node)
    posts = posts_for(chaos, approval)
    outcome = Outcome(converged=True)
    outcome.duplicates = (
        max(len(runs) - 1, events - 1, 0) + max(len(requests) - 1, 0) + max(len(posts) - 1, 0)
    )
    outcome.lost = int(not runs)
    recorded = [((a.get("status") or {}).get("outcome") or {}).get("result", "none") for a in requests]
    outcome.notes.append(
        f"drain {node} (kills {phases}): history={len(runs)} events={events} "
        f"approvals={len(requests)} posts={len(posts)} outcome={','.join(recorded)}"
    )
    chaos.cluster.kubectl("delete", "rsvc", name, "-n", chaos.namespace, "--wait=false", check=False)
    chaos.cluster.kubectl("delete", "node", node, "--wait=false", check=False)
    return outcome


@pytest.mark.timeout(300 + 240 * REMEDIATION_TRIALS)
def test_sigkill_at_random_points_of_remediations(env: Env, chaos_report: report.Recorder) -> None:
    kinds: list[Callable[[Env, int], Outcome]] = [restart_trial, drain_trial]
    env.rng.shuffle(kinds)
    kills_before = env.kills
    outcomes: list[Outcome] = []
    try:
        for trial in range(REMEDIATION_TRIALS):
            outcomes.append(kinds[trial % 2](env, trial))
    finally:
        chaos_report.record(
            "remediation SIGKILL",
            trials=REMEDIATION_TRIALS,
            faults=env.kills - kills_before,
            converged=sum(o.converged for o in outcomes),
            duplicates=sum(o.duplicates for o in outcomes),
            crashes=env.new_crashes(),
        )
    for outcome in outcomes:
        print(" ", *outcome.notes)
    print(
        f"remediations: trials={REMEDIATION_TRIALS} kills={env.kills - kills_before} "
        f"converged={sum(o.converged for o in outcomes)} duplicates={sum(o.duplicates for o in outcomes)} "
        f"records lost to a kill={sum(o.lost for o in outcomes)}"
    )
    assert all(o.converged for o in outcomes)
    assert sum(o.duplicates for o in outcomes) == 0, [o.notes for o in outcomes if o.duplicates]
    # Write-ahead: every action taken has its record, whenever the kill came.
    assert sum(o.lost for o in outcomes) == 0, [o.notes for o in outcomes if o.lost]
    assert env.operator.alive(), env.operator.logs()[-3000:]


# --- Slack failing and rate-limiting mid-approval ------------------------------------------------


class CallLog:
    """When each Slack call arrived, by polling the fake's record (it keeps no times)."""

    def __init__(self, slack: fake.FakeSlack) -> None:
        self.slack = slack
        self.seen = len(slack.calls)
        self.times: list[tuple[float, fake.Call]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.stop.wait(0.02):
            calls = list(self.slack.calls)
            for call in calls[self.seen :]:
                self.times.append((time.monotonic(), call))
            self.seen = len(calls)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def test_slack_outage_then_rate_limit_with_a_sigkill_in_between(
    env: Env, chaos_report: report.Recorder
) -> None:
    """Slack answers 500 when the drain asks for approval, the operator is SIGKILLed during the
    outage, then Slack rate-limits (429, Retry-After 2 s) before it recovers. Nothing runs while
    nobody answered; the request is posted once, after Retry-After; one click drains once."""
    retry_after, limited = 2, 2
    node = chaos_node(env)
    name = "slack-drain"
    env.apply(
        on_node(workload(name, env.namespace, env.policy, 2, {"nodeFailure": {"gracePeriod": "2s"}}), node)
    )
    before = place(env, name, node, 2)
    outage_converged = limit_converged = False
    duplicates, kills_before, refused = 0, env.kills, 0
    env.slack.fail("error")
    try:
        pressure(env, node)
        (request,) = wait_for(lambda: approvals_for(env, node), timeout=CONVERGE, what="an Approval")
        approval = request["metadata"]["name"]

        def slack_status() -> dict[str, Any]:
            found = [a for a in approvals_for(env, node) if a["metadata"]["name"] == approval]
            return dict(((found[0] if found else {}).get("status") or {}).get("slack") or {})

        wait_for(
            lambda: slack_status().get("attempts", 0) >= 2, timeout=CONVERGE, what="retries against Slack"
        )
        env.restart(env.rng.uniform(0.0, 1.0))
        env.wait_healthy()
        failing = len(env.slack.calls)
        wait_for(lambda: len(env.slack.calls) > failing, timeout=CONVERGE, what="the new process retrying")
        time.sleep(3)
        # Unanswered: nothing ran, one request, nothing posted.
        on_node_now = {p["metadata"]["name"] for p in env.pods(name) if p["spec"].get("nodeName") == node}
        assert on_node_now == before, "pods moved while the approval was unanswered"
        assert not (get_json(env.cluster, "node", node) or {}).get("spec", {}).get("unschedulable")
        assert not [r for r in env.history(name) if r["action"] == "DrainNode"]
        assert len(approvals_for(env, node)) == 1
        assert not slack_status().get("posted") and not posts_for(env, approval)
        outage_converged = True

        calls = CallLog(env.slack)
        env.slack.rate_limit(calls=limited, retry_after=retry_after)
        try:
            wait_for(
                lambda: slack_status().get("posted"), timeout=CONVERGE, what="posted after Slack recovered"
            )
        finally:
            calls.close()
        refused = sum(1 for _, c in calls.times if c.status == 429)
        gaps = [
            later - at
            for (at, call), (later, _) in zip(calls.times, calls.times[1:], strict=False)
            if call.status == 429
        ]
        start = calls.times[0][0] if calls.times else 0.0
        timeline = [(round(t - start, 2), c.method, c.status) for t, c in calls.times]
        print(f"Slack calls after the outage: {timeline}")
        assert refused == limited, calls.times
        # Retry-After honoured: nothing sooner than it after a 429 (20 ms polling slack).
        assert gaps and min(gaps) >= retry_after - 0.1, gaps
        assert len(posts_for(env, approval)) == 1

        wait_for(lambda: click(env, approval) == 200, timeout=60, what="the click accepted")

        def drained() -> bool:
            pods = [p for p in env.pods(name) if not p["metadata"].get("deletionTimestamp")]
            return len(pods) == 2 and all(
                p["spec"].get("nodeName") != node and running_ready(p) for p in pods
            )

        wait_for(drained, timeout=CONVERGE, what=f"{node} drained after the click")
        time.sleep(2)
        runs = [r for r in env.history(name) if r["action"] == "DrainNode"]
        duplicates = (
            max(len(runs) - 1, 0)
            + max(len(posts_for(env, approval)) - 1, 0)
            + max(len(approvals_for(env, node)) - 1, 0)
        )
        assert duplicates == 0, (runs, posts_for(env, approval), approvals_for(env, node))
        assert len(runs) == 1 and executions(env, name, "DrainNode", f"Node/{node}") <= 1
        limit_converged = True
    finally:
        env.slack.fail("ok")
        chaos_report.record(
            "Slack outage",
            trials=1,
            faults=1 + env.kills - kills_before,  # the outage and the SIGKILL inside it
            converged=int(outage_converged),
            duplicates=duplicates,
            crashes=env.new_crashes(),
        )
        chaos_report.record(
            "Slack rate limit", trials=1, faults=refused, converged=int(limit_converged), duplicates=0
        )
        env.cluster.kubectl("delete", "node", node, "--wait=false", check=False)


def test_the_operator_never_crashed(env: Env) -> None:
    """Last in the module: every exit was a kill of ours, and no traceback reached the log."""
    unexpected, _ = report.tracebacks(env.operator.logs())
    assert env.operator.unexpected_exits() == 0, env.operator.exits
    assert not unexpected, unexpected[:3]
