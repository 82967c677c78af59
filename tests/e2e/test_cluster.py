"""The local control plane is a real cluster: nodes, scheduling, KWOK chaos, clean teardown.

Every later e2e test trusts this cluster, so these tests check the properties they rely on.
"""

from __future__ import annotations

import json
import uuid

import pytest

from cluster import local
from conftest import Cluster, get_json, wait_for

pytestmark = pytest.mark.e2e


def _node_ready(node: dict[str, object] | None) -> str | None:
    if not node:
        return None
    for cond in node["status"].get("conditions", []):  # type: ignore[index]
        if cond["type"] == "Ready":
            return str(cond["status"])
    return None


def test_three_nodes_ready(cluster: Cluster) -> None:
    nodes = get_json(cluster, "nodes")
    assert nodes is not None
    ready = [n["metadata"]["name"] for n in nodes["items"] if _node_ready(n) == "True"]
    assert len(ready) >= 3, ready


def test_deployment_reaches_three_ready_pods(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl(
        "create", "deployment", "hello", "--image=registry.k8s.io/pause:3.10", "--replicas=3", "-n", namespace
    )

    def ready() -> bool:
        dep = get_json(cluster, "deployment", "hello", "-n", namespace)
        return bool(dep and dep["status"].get("readyReplicas") == 3)

    wait_for(ready, timeout=90, what="3/3 ready replicas")
    pods = get_json(cluster, "pods", "-n", namespace)
    assert pods is not None
    assert sorted(p["status"]["phase"] for p in pods["items"]) == ["Running"] * 3
    assert len({p["spec"]["nodeName"] for p in pods["items"]}) >= 1


def test_pod_failure_stage(local_cluster: local.LocalCluster, namespace: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "doomed", "namespace": namespace},
        "spec": {
            "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}],
            "restartPolicy": "Never",
        },
    }
    local_cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    wait_for(
        lambda: (
            (get_json(local_cluster, "pod", "doomed", "-n", namespace) or {}).get("status", {}).get("phase")
            == "Running"
        ),
        what="pod Running",
    )
    local_cluster.kubectl("label", "pod", "doomed", "-n", namespace, f"{local.POD_FAILURE_LABEL}=true")

    def failed() -> dict[str, object] | None:
        body = get_json(local_cluster, "pod", "doomed", "-n", namespace)
        return body if body and body["status"].get("phase") == "Failed" else None

    body = wait_for(failed, timeout=60, what="pod Failed by the chaos stage")
    state = body["status"]["containerStatuses"][0]["state"]
    assert state["terminated"]["exitCode"] != 0


def test_node_not_ready_stage(local_cluster: local.LocalCluster) -> None:
    # A node of its own, so the shared nodes other tests schedule onto stay healthy.
    name = f"chaos-{uuid.uuid4().hex[:6]}"
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"}, "labels": {"type": "kwok"}},
        "spec": {"taints": [{"key": "homeostat.dev/chaos", "effect": "NoSchedule"}]},
    }
    local_cluster.kubectl("apply", "-f", "-", input=json.dumps(node))
    try:
        wait_for(
            lambda: _node_ready(get_json(local_cluster, "node", name)) == "True", what="chaos node Ready"
        )
        local_cluster.kubectl("label", "node", name, f"{local.NODE_NOT_READY_LABEL}=true")
        wait_for(
            lambda: _node_ready(get_json(local_cluster, "node", name)) == "False",
            timeout=60,
            what="node NotReady by the chaos stage",
        )
    finally:
        local_cluster.kubectl("delete", "node", name, "--wait=false", check=False)


def test_only_loopback_and_clean_teardown() -> None:
    """A throwaway KWOK-only cluster: nothing listens beyond 127.0.0.1, and `down` leaves no
    process. (The real node is one per machine and the suite's cluster holds it; what a cluster
    with it exposes, and what its teardown leaves, test_real_node.py and test_teardown.py check.)"""
    throwaway = local.LocalCluster(f"teardown-{uuid.uuid4().hex[:6]}")
    try:
        throwaway.up(nodes=1, with_node=False)
        pids = throwaway.pids()
        assert len(pids) >= 5, "etcd, apiserver, controller-manager, scheduler and kwok should run"
        sockets = list(local.listening_sockets(pids))
        assert sockets, "the control plane should be listening somewhere"
        exposed = [(pid, addr) for pid, addr in sockets if not addr.startswith(("127.", "::1:"))]
        assert not exposed, f"listening beyond loopback: {exposed}"
    finally:
        throwaway.down()
    assert throwaway.pids() == []
    assert not throwaway.kubeconfig.exists()
