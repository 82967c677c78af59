"""A real node failure: the kubelet stops, the node goes NotReady, its pods are moved.

Nothing writes the node's condition here: the controller-manager marks the node NotReady when the
kubelet's heartbeats stop (its grace is 40 s on the local cluster), and the operator's node
healing must then move the service's pods within the policy's grace period. There is one real
node on this machine, so the pods move onto KWOK nodes; the kubelet is started again afterwards
and the node must come back Ready for the tests after this one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from test_healing import _apply, _healing, _node_ready, _pods, _policy, _running_ready

import workload
from cluster import local
from cluster import node as real_node
from conftest import OperatorProcess, Workloads, get_json, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def policy_name(local_cluster: local.LocalCluster, crds_installed: None) -> Iterator[str]:
    name = f"p-{uuid.uuid4().hex[:8]}"
    yield name
    local_cluster.kubectl(
        "delete", "remediationpolicy", name, "--ignore-not-found", "--wait=false", check=False
    )


def _preferring_the_real_node(workloads: Workloads) -> dict[str, Any]:
    """The app's pod spec, preferring the real node while it is healthy: once it fails (or is
    cordoned) the pods go to KWOK nodes, the only other nodes on this machine."""
    spec = workload.pod_spec(workloads)
    spec.pop("nodeSelector", None)
    spec["affinity"] = {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "preference": {
                        "matchExpressions": [
                            {"key": real_node.NODE_LABEL, "operator": "In", "values": ["real"]}
                        ]
                    },
                }
            ]
        }
    }
    return spec


@pytest.fixture
def stoppable_node(local_cluster: local.LocalCluster) -> Iterator[real_node.RealNode]:
    node = local_cluster.node
    yield node
    node.restart_kubelet()  # the usual configuration, whatever the test did to it
    wait_for(
        lambda: _node_ready(get_json(local_cluster, "node", node.name)) == "True",
        timeout=120,
        what="the real node Ready again",
    )
    local_cluster.kubectl("uncordon", node.name, check=False)


def test_pods_of_a_real_node_whose_kubelet_stops_are_moved_within_the_grace_period(
    local_cluster: local.LocalCluster,
    namespace: str,
    operator_process: OperatorProcess,
    workloads: Workloads,
    stoppable_node: real_node.RealNode,
) -> None:
    grace = 10
    policy_name = f"p-{uuid.uuid4().hex[:8]}"
    _apply(local_cluster, _policy(policy_name, cooldown="10s"))
    spec = _preferring_the_real_node(workloads)
    service = {
        "apiVersion": "homeostat.dev/v1alpha1",
        "kind": "ReplicatedService",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": spec},
            "replicas": {"min": 1, "max": 10, "desired": 2},
            "healing": {"nodeFailure": {"gracePeriod": f"{grace}s", "cordonAfter": "10m"}},
            "approvals": {"policy": policy_name},
        },
    }
    _apply(local_cluster, service)

    def on_real_node() -> list[str] | None:
        pods = _pods(local_cluster, namespace, "web")
        names = [p["metadata"]["name"] for p in pods if p["spec"].get("nodeName") == stoppable_node.name]
        return names if len(pods) == 2 and all(_running_ready(p) for p in pods) and names else None

    stuck = wait_for(on_real_node, timeout=120, what="ready pods of the service on the real node")
    stopped = time.monotonic()
    stoppable_node.stop_kubelet()
    wait_for(
        lambda: _node_ready(get_json(local_cluster, "node", stoppable_node.name)) != "True",
        timeout=90,
        what="the real node NotReady after its kubelet stopped",
    )
    not_ready = time.monotonic()

    def moved() -> bool:
        pods = [
            p for p in _pods(local_cluster, namespace, "web") if not p["metadata"].get("deletionTimestamp")
        ]
        elsewhere = [
            p for p in pods if _running_ready(p) and p["spec"].get("nodeName") != stoppable_node.name
        ]
        return len(elsewhere) >= 2 and not any(p["metadata"]["name"] in stuck for p in pods)

    wait_for(moved, timeout=grace + 20, interval=0.5, what="pods off the real node within grace + 20 s")
    elapsed = time.monotonic() - not_ready
    print(
        f"real node failure: NotReady {not_ready - stopped:.1f} s after the kubelet stopped, "
        f"pods moved {elapsed:.1f} s later (grace {grace} s)"
    )
    assert elapsed >= grace - 1, f"acted after {elapsed:.1f}s, before the {grace}s grace period"
    history = _healing(local_cluster, namespace, "web").get("history") or []
    assert [r["action"] for r in history] == ["ReschedulePods"], history
    assert history[0]["target"] == f"Node/{stoppable_node.name}"
    local_cluster.kubectl("delete", "remediationpolicy", policy_name, "--wait=false", check=False)
