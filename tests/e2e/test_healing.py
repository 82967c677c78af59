"""Self-healing on a real control plane: failed nodes, pod storms, approved drains, rollbacks.

Failures are made by KWOK's chaos stages (a label on a pod or a node) or by writing a node
condition the way a kubelet would; the operator runs as a process and acts through the API
server like it would in a cluster. Each test brings its own RemediationPolicy, so the numbers it
asserts (rate limits, circuit breaker, verify window) are the ones it set.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from cluster import local
from conftest import Cluster, OperatorProcess, get_json, wait_for

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
    local_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(node))
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
    _apply(local_cluster, _policy(policy_name))
    service = _service(
        "web", namespace, policy_name, 3, {"nodeFailure": {"gracePeriod": f"{grace}s"}}, node=chaos_node
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
