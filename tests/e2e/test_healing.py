"""Self-healing on a real control plane: failed nodes, pod storms, approved drains, rollbacks.

Failures are made by KWOK's chaos stages (a label on a pod or a node) or by writing a node
condition the way a kubelet would; the operator runs as a process and acts through the API
server like it would in a cluster. Each test brings its own RemediationPolicy, so the numbers it
asserts (rate limits, circuit breaker, verify window) are the ones it set.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster import local
from conftest import VENV_BIN, Cluster, OperatorProcess, get_json, wait_for
from homeostat.adapters import kube_healing
from slack import server as fake

pytestmark = pytest.mark.e2e

CHAOS_TAINT = "homeostat.dev/chaos"


def _policy(name: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "actions": {
            "RestartPod": {"risk": "low", "mode": "auto"},
            "ReschedulePods": {"risk": "low", "mode": "auto"},
            "Rollback": {"risk": "low", "mode": "auto"},
            "CordonNode": {"risk": "medium", "mode": "auto"},
        },
        "rateLimits": {"perService": {"maxActions": 20, "window": "10m"}},
        "blastRadius": {"minHealthyNodes": "50%", "maxConcurrentActions": 20},
        "cooldown": "1m",
        "verifyWindow": "1m",
        "circuitBreaker": {"failures": 5, "window": "10m"},
    }
    spec.update(overrides)
    return {
        "apiVersion": "homeostat.dev/v1alpha1",
        "kind": "RemediationPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


@pytest.fixture
def policy_name(cluster: Cluster, crds_installed: None) -> Iterator[str]:
    name = f"p-{uuid.uuid4().hex[:8]}"
    yield name
    cluster.kubectl("delete", "remediationpolicy", name, "--ignore-not-found", "--wait=false", check=False)


@pytest.fixture
def chaos_node(local_cluster: local.LocalCluster) -> Iterator[str]:
    """A KWOK node of the test's own, tainted so only pods that tolerate it land there."""
    name = f"chaos-{uuid.uuid4().hex[:6]}"
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {"type": "kwok", "kubernetes.io/hostname": name},
        },
        "spec": {"taints": [{"key": CHAOS_TAINT, "effect": "NoSchedule"}]},
    }
    local_cluster.kubectl("apply", "-f", "-", input=json.dumps(node))
    wait_for(lambda: _node_ready(get_json(local_cluster, "node", name)) == "True", what="chaos node Ready")
    yield name
    local_cluster.kubectl("delete", "node", name, "--wait=false", check=False)


def _node_ready(node: dict[str, Any] | None) -> str | None:
    for cond in (node or {}).get("status", {}).get("conditions", []):
        if cond["type"] == "Ready":
            return str(cond["status"])
    return None


def _service(
    name: str, namespace: str, policy: str, replicas: int, healing: dict[str, Any], *, node: str | None = None
) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]}
    if node:
        # Prefer the chaos node while it is healthy; once it fails, its taints send pods elsewhere.
        pod_spec["tolerations"] = [{"key": CHAOS_TAINT, "operator": "Exists", "effect": "NoSchedule"}]
        pod_spec["affinity"] = {
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
        }
    return {
        "apiVersion": "homeostat.dev/v1alpha1",
        "kind": "ReplicatedService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
            "replicas": {"min": 1, "max": 20, "desired": replicas},
            "healing": healing,
            "approvals": {"policy": policy},
        },
    }


def _apply(cluster: Cluster, *objects: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in objects))


def _pods(cluster: Cluster, namespace: str, service: str) -> list[dict[str, Any]]:
    body = get_json(cluster, "pods", "-n", namespace, "-l", f"homeostat.dev/service={service}")
    return list((body or {}).get("items") or [])


def _running_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
    return status.get("phase") == "Running" and ready and not pod["metadata"].get("deletionTimestamp")


def _healing(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    body = get_json(cluster, "rsvc", name, "-n", namespace) or {}
    return dict((body.get("status") or {}).get("healing") or {})


def _events(cluster: Cluster, namespace: str, reason: str) -> list[dict[str, Any]]:
    body = get_json(cluster, "events", "-n", namespace, "--field-selector", f"reason={reason}")
    return list((body or {}).get("items") or [])


def test_pods_on_a_not_ready_node_run_elsewhere_within_grace_plus_15s(
    local_cluster: local.LocalCluster,
    namespace: str,
    operator_process: OperatorProcess,
    policy_name: str,
    chaos_node: str,
) -> None:
    grace = 10
    # The cooldown applies to any action on a target: short, so the cordon may follow the reschedule.
    _apply(local_cluster, _policy(policy_name, cooldown="10s"))
    service = _service(
        "web",
        namespace,
        policy_name,
        3,
        {"nodeFailure": {"gracePeriod": f"{grace}s", "cordonAfter": "25s"}},
        node=chaos_node,
    )
    _apply(local_cluster, service)

    def all_ready_with_some_on_chaos() -> list[str] | None:
        pods = _pods(local_cluster, namespace, "web")
        if len(pods) != 3 or not all(_running_ready(p) for p in pods):
            return None
        on_chaos = [p["metadata"]["name"] for p in pods if p["spec"].get("nodeName") == chaos_node]
        return on_chaos or None

    stuck = wait_for(all_ready_with_some_on_chaos, timeout=90, what="3 ready pods, some on the chaos node")
    local_cluster.kubectl("label", "node", chaos_node, f"{local.NODE_NOT_READY_LABEL}=true")
    wait_for(
        lambda: _node_ready(get_json(local_cluster, "node", chaos_node)) == "False",
        timeout=60,
        what="node NotReady",
    )
    failed_at = time.monotonic()

    def moved() -> bool:
        pods = [
            p for p in _pods(local_cluster, namespace, "web") if not p["metadata"].get("deletionTimestamp")
        ]
        elsewhere = [p for p in pods if _running_ready(p) and p["spec"].get("nodeName") != chaos_node]
        return len(elsewhere) >= 3 and not any(p["metadata"]["name"] in stuck for p in pods)

    wait_for(moved, timeout=grace + 15, interval=0.5, what=f"pods off {chaos_node} within grace + 15 s")
    elapsed = time.monotonic() - failed_at
    assert elapsed >= grace - 1, f"acted after {elapsed:.1f}s, before the {grace}s grace period"
    history = _healing(local_cluster, namespace, "web").get("history") or []
    assert [r["action"] for r in history] == ["ReschedulePods"], history
    assert history[0]["target"] == f"Node/{chaos_node}"
    # Still NotReady past cordonAfter: cordoned, so it gets no pods if it flaps back.
    wait_for(
        lambda: (get_json(local_cluster, "node", chaos_node) or {}).get("spec", {}).get("unschedulable"),
        timeout=40,
        what="the node cordoned after cordonAfter",
    )
    history = _healing(local_cluster, namespace, "web").get("history") or []
    assert [r["action"] for r in history] == ["ReschedulePods", "CordonNode"], history


def test_a_storm_is_held_by_the_rate_limit_and_the_circuit_breaker(
    local_cluster: local.LocalCluster, namespace: str, operator_process: OperatorProcess, policy_name: str
) -> None:
    limit, replicas = 3, 8
    policy = _policy(
        policy_name,
        rateLimits={"perService": {"maxActions": limit, "window": "10m"}},
        verifyWindow="8s",
        circuitBreaker={"failures": limit, "window": "10m"},
    )
    _apply(
        local_cluster,
        policy,
        _service("storm", namespace, policy_name, replicas, {"crashLoop": {"window": "10m"}}),
    )
    wait_for(
        lambda: sum(_running_ready(p) for p in _pods(local_cluster, namespace, "storm")) == replicas,
        timeout=90,
        what=f"{replicas} ready pods",
    )
    originals = {p["metadata"]["name"] for p in _pods(local_cluster, namespace, "storm")}
    local_cluster.kubectl(
        "label",
        "pods",
        "-n",
        namespace,
        "-l",
        "homeostat.dev/service=storm",
        f"{local.POD_FAILURE_LABEL}=true",
    )

    def circuit_open() -> list[dict[str, Any]] | None:
        incidents = _healing(local_cluster, namespace, "storm").get("incidents") or []
        opened = [i for i in incidents if i.get("reason") == "CircuitOpen"]
        return opened if len(opened) == replicas - limit else None

    opened = wait_for(circuit_open, timeout=60, what="the circuit to open on the remaining incidents")
    assert {i["phase"] for i in opened} == {"Escalated"}
    time.sleep(5)  # the loop runs every second: give it time to (wrongly) act again

    history = _healing(local_cluster, namespace, "storm").get("history") or []
    assert [r["action"] for r in history] == ["RestartPod"] * limit, history
    # Each restart was judged by the service's health after the verify window: still failing.
    assert [r["outcome"] for r in history] == ["Failed"] * limit
    remaining = {p["metadata"]["name"] for p in _pods(local_cluster, namespace, "storm")} & originals
    assert len(originals - remaining) == limit, "exactly the rate limit's worth of pods were deleted"
    escalations = [
        e for e in _events(local_cluster, namespace, "RemediationEscalated") if "CircuitOpen" in e["message"]
    ]
    assert len(escalations) == replicas - limit


def test_a_drain_waits_for_approval_and_respects_the_disruption_budget(
    local_cluster: local.LocalCluster,
    namespace: str,
    operator_process: OperatorProcess,
    policy_name: str,
    chaos_node: str,
) -> None:
    policy = _policy(
        policy_name,
        verifyWindow="2m",
        actions={
            "DrainNode": {
                "risk": "high",
                "mode": "approve",
                "approvers": {"kubernetes": {"groups": ["system:masters"]}},
                "quorum": 1,
                "timeout": "10m",
            }
        },
    )
    service = _service(
        "db", namespace, policy_name, 3, {"nodeFailure": {"gracePeriod": "2s"}}, node=chaos_node
    )
    # No disruption allowed at first: the approved drain must stop at the budget, not force it.
    service["spec"]["disruptionBudget"] = {"maxUnavailable": 0}
    _apply(local_cluster, policy, service)

    def on_chaos() -> list[str] | None:
        pods = _pods(local_cluster, namespace, "db")
        names = [
            p["metadata"]["name"]
            for p in pods
            if p["spec"].get("nodeName") == chaos_node and _running_ready(p)
        ]
        return names if len(pods) == 3 and all(_running_ready(p) for p in pods) and names else None

    before = wait_for(on_chaos, timeout=90, what="ready pods, some on the chaos node")
    # A pod no controller owns: evicted, it would be gone for good, so the drain leaves it.
    bare = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bare", "namespace": namespace},
        "spec": {
            "nodeName": chaos_node,
            "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
        },
    }
    _apply(local_cluster, bare)
    wait_for(
        lambda: _running_ready(get_json(local_cluster, "pod", "bare", "-n", namespace) or {"metadata": {}}),
        what="the bare pod running",
    )
    wait_for(
        lambda: (
            (get_json(local_cluster, "pdb", "db", "-n", namespace) or {})
            .get("status", {})
            .get("disruptionsAllowed")
            == 0
        ),
        what="the PDB to allow no disruption",
    )
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    pressure = {
        "type": "MemoryPressure",
        "status": "True",
        "reason": "KubeletHasInsufficientMemory",
        "message": "simulated by the test",
        "lastTransitionTime": now,
        "lastHeartbeatTime": now,
    }
    local_cluster.kubectl(
        "patch",
        "node",
        chaos_node,
        "--subresource=status",
        "-p",
        json.dumps({"status": {"conditions": [pressure]}}),
    )

    def approval() -> dict[str, Any] | None:
        items = (get_json(local_cluster, "approvals", "-n", namespace) or {}).get("items") or []
        return items[0] if items else None

    request = wait_for(approval, timeout=30, what="an Approval for the drain")
    assert request["spec"]["action"] == "DrainNode"
    assert request["spec"]["target"]["name"] == chaos_node
    time.sleep(4)  # pending: nothing may happen yet
    still = [
        p["metadata"]["name"]
        for p in _pods(local_cluster, namespace, "db")
        if p["spec"].get("nodeName") == chaos_node
    ]
    assert sorted(still) == sorted(before), "pods were moved before anyone approved"
    node = get_json(local_cluster, "node", chaos_node) or {}
    assert not node["spec"].get("unschedulable"), "the node was cordoned before anyone approved"

    plugin = str(VENV_BIN / "kubectl-homeostat")
    approve = subprocess.run(
        [
            plugin,
            "approve",
            request["metadata"]["name"],
            "-n",
            namespace,
            "--kubeconfig",
            str(local_cluster.kubeconfig),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert approve.returncode == 0, approve.stdout + approve.stderr

    blocked = wait_for(
        lambda: _events(local_cluster, namespace, "DrainBlocked"),
        timeout=30,
        what="the budget to stop the drain",
    )
    assert "PodDisruptionBudget" in blocked[0]["message"]
    assert (get_json(local_cluster, "node", chaos_node) or {})["spec"].get("unschedulable") is True
    time.sleep(3)
    still = [
        p["metadata"]["name"]
        for p in _pods(local_cluster, namespace, "db")
        if p["spec"].get("nodeName") == chaos_node
    ]
    assert sorted(still) == sorted(before), "a pod was evicted against the disruption budget"
    # Loosen the budget: the drain resumes within the verify window and finishes.
    local_cluster.kubectl(
        "patch",
        "rsvc",
        "db",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"disruptionBudget":{"maxUnavailable":1}}}',
    )

    def drained() -> bool:
        pods = [
            p for p in _pods(local_cluster, namespace, "db") if not p["metadata"].get("deletionTimestamp")
        ]
        return (
            not [p for p in pods if p["spec"].get("nodeName") == chaos_node]
            and sum(map(_running_ready, pods)) == 3
        )

    wait_for(drained, timeout=90, what=f"{chaos_node} drained")
    resumed = _events(local_cluster, namespace, "DrainResumed")
    assert resumed and f"{namespace}/bare" in resumed[-1]["message"], resumed
    left = get_json(local_cluster, "pod", "bare", "-n", namespace) or {}
    assert left and not left["metadata"].get("deletionTimestamp"), "the drain evicted a pod nothing recreates"
    history = _healing(local_cluster, namespace, "db").get("history") or []
    assert [r["action"] for r in history] == ["DrainNode"]
    decided = (get_json(local_cluster, "approval", request["metadata"]["name"], "-n", namespace) or {})[
        "status"
    ]
    assert decided["phase"] == "Approved"


def test_a_crash_looping_new_revision_is_rolled_back(
    local_cluster: local.LocalCluster, namespace: str, operator_process: OperatorProcess, policy_name: str
) -> None:
    service = _service("api", namespace, policy_name, 3, {"crashLoop": {"window": "10m"}})
    # A pod counts as available only after 5 s ready; the bad revision's pods crash sooner, so
    # it never becomes the stable revision (as a real crash loop after start-up would not).
    service["spec"]["minReadySeconds"] = 5
    _apply(local_cluster, _policy(policy_name), service)

    def stable() -> str | None:
        body = get_json(local_cluster, "rsvc", "api", "-n", namespace) or {}
        status = body.get("status") or {}
        return status.get("stableRevision") if status.get("phase") == "Ready" else None

    good = wait_for(stable, timeout=90, what="a stable revision")
    # The new revision's pods fail a second or two after they run (the chaos label is in the
    # template).
    bad_labels = {"app": "api", local.POD_FAILURE_LABEL: "true"}
    local_cluster.kubectl(
        "patch",
        "rsvc",
        "api",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"template": {"metadata": {"labels": bad_labels}}}}),
    )

    def rolled_back() -> dict[str, Any] | None:
        body = get_json(local_cluster, "rsvc", "api", "-n", namespace) or {}
        return (body.get("status") or {}).get("rollback") or None

    rollback = wait_for(rolled_back, timeout=60, what="the rollback")
    assert rollback["stableRevision"] == good
    assert rollback["revision"] != good

    def recovered() -> bool:
        # Failed pods of the bad revision stay behind as records (a ReplicaSet scaled to zero
        # does not delete them); what serves must be the stable revision only.
        pods = [p for p in _pods(local_cluster, namespace, "api") if p["status"].get("phase") != "Failed"]
        pods = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        revisions = {p["metadata"]["labels"].get("homeostat.dev/revision") for p in pods}
        return revisions == {good} and sum(map(_running_ready, pods)) == 3

    wait_for(recovered, timeout=90, what="3 ready pods at the stable revision")

    def verified() -> list[dict[str, Any]] | None:
        history = _healing(local_cluster, namespace, "api").get("history") or []
        return history if history and history[-1]["outcome"] != "InProgress" else None

    history = wait_for(verified, timeout=30, what="the rollback to be verified")
    assert [(r["action"], r["outcome"]) for r in history] == [("Rollback", "Succeeded")], history
    annotations = (get_json(local_cluster, "rsvc", "api", "-n", namespace) or {})["metadata"]["annotations"]
    assert annotations["homeostat.dev/rollout-command"].startswith("abort/")


BAD_POLICIES = [
    (
        {
            "DrainNode": {
                "risk": "critical",
                "mode": "approve",
                "approvers": {"kubernetes": {"users": ["a", "b"]}},
            }
        },
        "spec.actions.DrainNode: a critical action needs a quorum of at least 2 approvers (two-person rule)",
    ),
    (
        {"DrainNode": {"risk": "high", "mode": "auto"}},
        "spec.actions.DrainNode: a high or critical risk action cannot run automatically",
    ),
    (
        {"CordonNode": {"risk": "medium", "mode": "approve"}},
        "spec.actions.CordonNode: mode approve needs at least one approver",
    ),
    (
        {"DrainNode": {"risk": "high", "mode": "deny", "onTimeout": "Approve"}},
        "spec.actions.DrainNode: onTimeout Approve is allowed only for low or medium risk",
    ),
    ({"RestartPod": {"risk": "low", "mode": "auto", "timeout": "0s"}}, "must be a positive duration"),
    ({"RestartPod": {"risk": "whatever", "mode": "auto"}}, "Unsupported value"),
]


@pytest.mark.parametrize(("actions", "message"), BAD_POLICIES, ids=[m for _, m in BAD_POLICIES])
def test_bad_policies_are_rejected_with_clear_messages(
    cluster: Cluster, crds_installed: None, actions: dict[str, Any], message: str
) -> None:
    policy = {
        "apiVersion": "homeostat.dev/v1alpha1",
        "kind": "RemediationPolicy",
        "metadata": {"name": f"bad-{uuid.uuid4().hex[:6]}"},
        "spec": {"actions": actions},
    }
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(policy), check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_the_default_policy_is_accepted(cluster: Cluster, crds_installed: None) -> None:
    path = Path(__file__).resolve().parents[2] / "policies" / "default.yaml"
    result = cluster.kubectl("apply", "--dry-run=server", "-f", str(path), check=False)
    assert result.returncode == 0, result.stderr
    bad_percent = yaml.safe_load(path.read_text())
    bad_percent["spec"]["blastRadius"]["minHealthyNodes"] = "150%"
    result = cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=json.dumps(bad_percent), check=False
    )
    assert "minHealthyNodes must be a non-negative count or a percentage from 0% to 100%" in result.stderr


def test_an_oom_killed_container_gets_a_higher_memory_limit_as_a_new_revision(
    local_cluster: local.LocalCluster, namespace: str, operator_process: OperatorProcess, policy_name: str
) -> None:
    actions = {"RaiseMemoryLimit": {"risk": "medium", "mode": "auto"}}
    service = _service("mem", namespace, policy_name, 2, {"oom": {"increasePercent": 50, "maxMemory": "1Gi"}})
    container = service["spec"]["template"]["spec"]["containers"][0]
    container["resources"] = {"limits": {"memory": "64Mi"}, "requests": {"memory": "32Mi"}}
    _apply(local_cluster, _policy(policy_name, actions=actions), service)
    pods = wait_for(
        lambda: [p for p in _pods(local_cluster, namespace, "mem") if _running_ready(p)] or None,
        timeout=90,
        what="a ready pod",
    )
    victim = pods[0]["metadata"]["name"]
    # KWOK's failure stage reports the reason we give it, as the kubelet would for an OOM kill.
    local_cluster.kubectl(
        "annotate", "pod", victim, "-n", namespace, f"{local.POD_FAILURE_LABEL}/reason=OOMKilled"
    )
    local_cluster.kubectl("label", "pod", victim, "-n", namespace, f"{local.POD_FAILURE_LABEL}=true")

    def raised() -> dict[str, Any] | None:
        body = get_json(local_cluster, "rsvc", "mem", "-n", namespace) or {}
        resources = body["spec"]["template"]["spec"]["containers"][0].get("resources") or {}
        return resources if resources.get("limits", {}).get("memory") != "64Mi" else None

    resources = wait_for(raised, timeout=30, what="the memory limit to be raised")
    assert resources == {"limits": {"memory": "96Mi"}, "requests": {"memory": "48Mi"}}

    def rolled_out() -> bool:
        body = get_json(local_cluster, "rsvc", "mem", "-n", namespace) or {}
        status = body.get("status") or {}
        return status.get("phase") == "Ready" and status.get("stableRevision") == status.get(
            "currentRevision"
        )

    wait_for(rolled_out, timeout=90, what="the new revision rolled out")
    history = _healing(local_cluster, namespace, "mem").get("history") or []
    assert [r["action"] for r in history][:1] == ["RaiseMemoryLimit"], history
    assert history[0]["target"] == f"Container/{namespace}/mem/app"


def test_the_memory_limit_patch_survives_status_writes_but_not_an_edit_of_the_limit(
    cluster: Cluster, crds_installed: None, namespace: str, policy_name: str
) -> None:
    """The raise is guarded by the values it replaces. A status write in between (the pod
    failure that asks for the raise changes the service's status too) must not refuse it; an edit
    of the limit in between must, instead of being overwritten."""
    service = _service("guard", namespace, policy_name, 1, {"oom": {}})
    container = service["spec"]["template"]["spec"]["containers"][0]
    container["resources"] = {"limits": {"memory": "64Mi"}, "requests": {"memory": "32Mi"}}
    _apply(cluster, service)
    read = get_json(cluster, "rsvc", "guard", "-n", namespace) or {}
    status = json.dumps({"status": {"observedGeneration": 99}})
    cluster.kubectl(
        "patch", "rsvc", "guard", "-n", namespace, "--subresource=status", "--type=merge", "-p", status
    )
    raise_to = json.dumps(kube_healing.memory_patch(read, "app", "96Mi"))
    cluster.kubectl("patch", "rsvc", "guard", "-n", namespace, "--type=json", "-p", raise_to)
    stored = get_json(cluster, "rsvc", "guard", "-n", namespace) or {}
    resources = stored["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources == {"limits": {"memory": "96Mi"}, "requests": {"memory": "48Mi"}}

    stale = json.dumps(kube_healing.memory_patch(stored, "app", "144Mi"))
    edit = [
        {"op": "replace", "path": "/spec/template/spec/containers/0/resources/limits/memory", "value": "2Gi"}
    ]
    cluster.kubectl("patch", "rsvc", "guard", "-n", namespace, "--type=json", "-p", json.dumps(edit))
    refused = cluster.kubectl(
        "patch", "rsvc", "guard", "-n", namespace, "--type=json", "-p", stale, check=False
    )
    assert refused.returncode != 0 and "invalid" in refused.stderr, refused.stderr  # 422
    stored = get_json(cluster, "rsvc", "guard", "-n", namespace) or {}
    assert stored["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "2Gi"


def test_rate_limits_and_history_survive_an_operator_restart(
    local_cluster: local.LocalCluster, crds_installed: None, policy_name: str, tmp_path: Path
) -> None:
    # A namespace and an operator of the test's own: it is killed halfway.
    namespace = f"h2r-{uuid.uuid4().hex[:8]}"
    local_cluster.kubectl("create", "namespace", namespace)
    flags = ("--namespace", namespace, "--http-port", "0")
    first = OperatorProcess(local_cluster.kubeconfig, tmp_path / "first.log", flags).start()
    second: OperatorProcess | None = None
    try:
        limit, replicas = 2, 5
        policy = _policy(
            policy_name,
            rateLimits={"perService": {"maxActions": limit, "window": "10m"}},
            verifyWindow="10s",
            circuitBreaker={"failures": limit, "window": "10m"},
        )
        healing = {"crashLoop": {"window": "10m"}}
        _apply(local_cluster, policy, _service("svc", namespace, policy_name, replicas, healing))
        wait_for(
            lambda: sum(_running_ready(p) for p in _pods(local_cluster, namespace, "svc")) == replicas,
            timeout=90,
            what=f"{replicas} ready pods",
        )
        originals = {p["metadata"]["name"] for p in _pods(local_cluster, namespace, "svc")}
        local_cluster.kubectl(
            "label",
            "pods",
            "-n",
            namespace,
            "-l",
            "homeostat.dev/service=svc",
            f"{local.POD_FAILURE_LABEL}=true",
        )
        wait_for(
            lambda: len(_healing(local_cluster, namespace, "svc").get("history") or []) == limit,
            timeout=30,
            what="the rate limit's worth of restarts",
        )
        first.kill()
        second = OperatorProcess(local_cluster.kubeconfig, tmp_path / "second.log", flags).start()

        def circuit_open() -> bool:
            incidents = _healing(local_cluster, namespace, "svc").get("incidents") or []
            return len([i for i in incidents if i.get("reason") == "CircuitOpen"]) == replicas - limit

        wait_for(circuit_open, timeout=60, what="the circuit to open after the restart")
        history = _healing(local_cluster, namespace, "svc").get("history") or []
        assert [(r["action"], r["outcome"]) for r in history] == [("RestartPod", "Failed")] * limit
        remaining = {p["metadata"]["name"] for p in _pods(local_cluster, namespace, "svc")} & originals
        assert len(originals - remaining) == limit, "the restarted operator acted beyond the rate limit"
        assert second.alive(), second.logs()[-2000:]
    finally:
        first.kill()
        if second is not None:
            second.stop()
        local_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_a_drain_is_approved_by_a_signed_slack_click(
    local_cluster: local.LocalCluster, crds_installed: None, policy_name: str, chaos_node: str, tmp_path: Path
) -> None:
    """The headline flow: a Slack message appears, an allowed user's signed click drains the node,
    and the message is updated without its buttons."""
    token, signing, approver = f"xoxb-{uuid.uuid4().hex}", f"s-{uuid.uuid4().hex}", "U0DRAINER"
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "bot-token").write_text(token)
    (secrets / "signing-secret").write_text(signing)
    slack = fake.FakeSlack(token).start()
    namespace = f"h2s-{uuid.uuid4().hex[:8]}"
    local_cluster.kubectl("create", "namespace", namespace)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    flags = ("--namespace", namespace, "--http-port", str(port), "--http-bind", "127.0.0.1")
    env = {"HOMEOSTAT_SECRETS_DIR": str(secrets), "HOMEOSTAT_SLACK_API_URL": slack.api_url}
    proc = OperatorProcess(local_cluster.kubeconfig, tmp_path / "operator.log", flags, env=env).start()
    try:
        drain = {"risk": "high", "mode": "approve", "approvers": {"slack": {"users": [approver]}}}
        policy = _policy(policy_name, actions={"DrainNode": drain})
        service = _service(
            "cache", namespace, policy_name, 2, {"nodeFailure": {"gracePeriod": "2s"}}, node=chaos_node
        )
        service["spec"]["approvals"]["slack"] = {"channel": "#ops"}
        _apply(local_cluster, policy, service)

        def on_chaos() -> list[str] | None:
            pods = _pods(local_cluster, namespace, "cache")
            names = [p["metadata"]["name"] for p in pods if p["spec"].get("nodeName") == chaos_node]
            return names if len(pods) == 2 and all(map(_running_ready, pods)) and names else None

        wait_for(on_chaos, timeout=90, what="ready pods on the chaos node")
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        pressure = {"type": "DiskPressure", "status": "True", "reason": "Test", "message": "simulated"}
        pressure.update(lastTransitionTime=now, lastHeartbeatTime=now)
        local_cluster.kubectl(
            "patch",
            "node",
            chaos_node,
            "--subresource=status",
            "-p",
            json.dumps({"status": {"conditions": [pressure]}}),
        )

        def message() -> tuple[str, dict[str, Any]] | None:
            items = (get_json(local_cluster, "approvals", "-n", namespace) or {}).get("items") or []
            for item in items:
                ref = f"{namespace}/{item['metadata']['name']}"
                for posted in slack.messages.values():
                    if f"Approval {ref}" in json.dumps(posted["blocks"]):
                        return item["metadata"]["name"], posted
            return None

        name, posted = wait_for(message, timeout=45, what="the Slack message for the drain")
        assert "DrainNode" in json.dumps(posted["blocks"]) and posted.get("channel")
        assert any(p["spec"].get("nodeName") == chaos_node for p in _pods(local_cluster, namespace, "cache"))

        body = fake.click_body(namespace, name, approver, "approve", response_url=slack.response_url("drain"))
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/slack/interactions",
            data=body,
            headers=fake.signed_headers(signing, body, int(time.time())),
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

        def drained() -> bool:
            pods = [
                p
                for p in _pods(local_cluster, namespace, "cache")
                if not p["metadata"].get("deletionTimestamp")
            ]
            off = [p for p in pods if p["spec"].get("nodeName") != chaos_node]
            return len(off) == 2 and all(map(_running_ready, off)) and len(pods) == 2

        wait_for(drained, timeout=60, what=f"{chaos_node} drained after the click")
        wait_for(
            lambda: (
                "Approved" in json.dumps(slack.messages[posted["ts"]]["blocks"])
                and '"actions"' not in json.dumps(slack.messages[posted["ts"]]["blocks"])
            ),
            timeout=30,
            what="the Slack message updated to the decision, without buttons",
        )
        history = _healing(local_cluster, namespace, "cache").get("history") or []
        assert [r["action"] for r in history] == ["DrainNode"]
        assert token not in proc.logs() and signing not in proc.logs()
    finally:
        proc.stop()
        slack.stop()
        local_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
