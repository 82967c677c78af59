"""A real node failing or drained: the kubelet stops and its pods are moved; a risky node is
drained through the Eviction API, one pod at a time as a real PodDisruptionBudget allows.

Nothing writes the node's condition here: the controller-manager marks the node NotReady when the
kubelet's heartbeats stop (its grace is 40 s on the local cluster), and the operator's node
healing must then move the service's pods within the policy's grace period. There is one real
node on this machine, so the pods move onto KWOK nodes; the kubelet is started again afterwards
and the node must come back Ready for the tests after this one.

The drain is asked for by a failure-risk query Prometheus really evaluates (a constant risk for
the real node stands in for someone's model) and runs only once a human approved it. The evicted
pods are real: the API server's eviction checks the real PodDisruptionBudget, and the kubelet
stops their containers gracefully. Their replacements land on KWOK nodes, which report them
Ready at once, so the budget's wait between two evictions is short here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_healing import _apply, _events, _healing, _node_ready, _pods, _policy, _running_ready

import prom
import workload
from cluster import local
from cluster import node as real_node
from conftest import OperatorProcess, Workloads, get_json, plugin, wait_for

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


@pytest.fixture
def drainable_node(local_cluster: local.LocalCluster) -> Iterator[str]:
    yield local_cluster.node.name
    local_cluster.kubectl("uncordon", local_cluster.node.name, check=False)


def test_an_approved_drain_of_the_real_node_evicts_its_pods_as_the_budget_allows(
    local_cluster: local.LocalCluster,
    private_namespace: str,
    workloads: Workloads,
    drainable_node: str,
    tmp_path: Path,
) -> None:
    namespace = private_namespace
    prom.need_prometheus()
    node = drainable_node
    risk = f'label_replace(vector(0.95), "node", "{node}", "", "")'
    server = prom.PrometheusServer([]).start()
    operator = OperatorProcess(
        local_cluster.kubeconfig,
        tmp_path / "operator.log",
        ("--namespace", namespace, "--prometheus-url", server.url, "--http-port", "0"),
    ).start()
    policy_name = f"p-{uuid.uuid4().hex[:8]}"
    try:
        drain = {
            "risk": "high",
            "mode": "approve",
            "approvers": {"kubernetes": {"groups": ["system:masters"]}},
            "quorum": 1,
            "timeout": "10m",
        }
        _apply(local_cluster, _policy(policy_name, verifyWindow="3m", actions={"DrainNode": drain}))
        replicas = 3
        service = {
            "apiVersion": "homeostat.dev/v1alpha1",
            "kind": "ReplicatedService",
            "metadata": {"name": "db", "namespace": namespace},
            "spec": {
                "template": {
                    "metadata": {"labels": {"app": "db"}},
                    "spec": _preferring_the_real_node(workloads),
                },
                "replicas": {"min": 1, "max": 10, "desired": replicas},
                "disruptionBudget": {"maxUnavailable": 1},
                "healing": {
                    "predictiveMaintenance": {
                        "query": risk,
                        "threshold": 0.8,
                        "interval": "2s",
                        "action": "Drain",
                    }
                },
                "approvals": {"policy": policy_name},
            },
        }

        def on_real_node() -> list[str] | None:
            pods = _pods(local_cluster, namespace, "db")
            names = [p["metadata"]["name"] for p in pods if p["spec"].get("nodeName") == node]
            ready = len(pods) == replicas and all(_running_ready(p) for p in pods)
            return names if ready and len(names) == replicas else None

        # Applied before the risk can be read: all three pods start on the real node.
        _apply(local_cluster, service)
        before = wait_for(on_real_node, timeout=120, what="every pod of the service ready on the real node")
        wait_for(
            lambda: (
                ((get_json(local_cluster, "pdb", "db", "-n", namespace) or {}).get("status") or {}).get(
                    "disruptionsAllowed"
                )
                == 1
            ),
            timeout=60,
            what="the PodDisruptionBudget to allow one disruption",
        )

        def approval() -> dict[str, Any] | None:
            items = (get_json(local_cluster, "approvals", "-n", namespace) or {}).get("items") or []
            return items[0] if items else None

        request = wait_for(approval, timeout=60, what="an Approval for the drain")
        assert (request["spec"]["action"], request["spec"]["target"]["name"]) == ("DrainNode", node)
        time.sleep(4)  # pending: nothing may happen yet
        assert sorted(on_real_node() or []) == sorted(before), "pods moved before anyone approved"
        assert not (get_json(local_cluster, "node", node) or {})["spec"].get("unschedulable")

        approved = plugin(local_cluster, "approve", request["metadata"]["name"], "-n", namespace)
        assert approved.returncode == 0, approved.stdout + approved.stderr
        approved_at = time.monotonic()

        # While it drains, never more than the budget's one pod short of ready.
        fewest = replicas
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            every = _pods(local_cluster, namespace, "db")
            ready = [p for p in every if _running_ready(p) and not p["metadata"].get("deletionTimestamp")]
            fewest = min(fewest, len(ready))
            # Done when the kubelet has finished stopping every evicted pod (the API server
            # removes a pod only then) and the replacements are ready elsewhere.
            left = {p["metadata"]["name"] for p in every} & set(before)
            if len(ready) == replicas and not left:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"{node} not drained within 120 s")
        drained_in = time.monotonic() - approved_at
        blocked = _events(local_cluster, namespace, "DrainBlocked")
        print(
            f"real drain: {node} drained {drained_in:.1f} s after the approval, at least {fewest} of "
            f"{replicas} pods ready throughout, "
            f"{sum(e.get('count', 1) for e in blocked)} refusal(s) by the budget"
        )
        assert fewest >= replicas - 1, f"{replicas - fewest} pods unready at once, against maxUnavailable 1"
        assert (get_json(local_cluster, "node", node) or {})["spec"].get("unschedulable") is True
        # Any refusal on the way was the budget's (the API server counts a disruption until the
        # replacement is ready), and the drain went on after it. KWOK reports replacements Ready
        # at once, so whether one comes at all is a race here: counted, not required.
        assert all("PodDisruptionBudget" in e["message"] for e in blocked), blocked
        if blocked:
            assert _events(local_cluster, namespace, "DrainResumed")
        history = _healing(local_cluster, namespace, "db").get("history") or []
        assert [r["action"] for r in history] == ["DrainNode"], history
        decided = (get_json(local_cluster, "approval", request["metadata"]["name"], "-n", namespace) or {})[
            "status"
        ]
        assert decided["phase"] == "Approved"
        assert operator.alive()
    finally:
        operator.stop()
        server.cleanup()
        local_cluster.kubectl("delete", "remediationpolicy", policy_name, "--wait=false", check=False)
