"""Restart-count and disk trends, and the node failure-risk query, end to end: the operator, a
real Prometheus, simulated counters.

The traffic simulator exports ``kube_pod_container_status_restarts_total`` for pods annotated
``traffic.homeostat.dev/restart-every`` and node-exporter's filesystem gauges for nodes annotated
``traffic.homeostat.dev/disk-fill``, under the names the operator's default queries use, so
these tests run the defaults; and ``homeostat_sim_node_failure_risk`` for nodes annotated
``traffic.homeostat.dev/failure-risk``. A real Prometheus scrapes it every second; the operator's healing
loop acts on what the trend checks request, under a RemediationPolicy of the test's own.

Each test asserts *before*: the request (status, Event, predicted time) exists while the value
is still below the limit, and the prediction is close to when the simulated series reaches it.
"""

from __future__ import annotations

import datetime
import json
import math
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import prom
from conftest import Cluster, OperatorProcess, get_json, wait_for
from traffic import model, simulator

pytestmark = pytest.mark.e2e

TAINT = "homeostat.dev/disk-test"


class Setup:
    def __init__(self, cluster: Cluster, namespace: str, policy: str, operator: OperatorProcess) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.policy = policy
        self.operator = operator

    def apply(self, manifest: dict[str, Any]) -> None:
        self.cluster.kubectl("apply", "-n", self.namespace, "-f", "-", input=json.dumps(manifest))

    def get(self, name: str) -> dict[str, Any]:
        body = get_json(self.cluster, "rsvc", name, "-n", self.namespace)
        assert body is not None, f"rsvc {name} is gone"
        return body

    def pods(self, name: str) -> list[dict[str, Any]]:
        listed = get_json(self.cluster, "pods", "-n", self.namespace, "-l", f"homeostat.dev/service={name}")
        return [p for p in (listed or {}).get("items") or [] if not p["metadata"].get("deletionTimestamp")]

    def events(self, name: str) -> list[dict[str, Any]]:
        listed = get_json(
            self.cluster,
            "events",
            "-n",
            self.namespace,
            "--field-selector",
            f"involvedObject.kind=ReplicatedService,involvedObject.name={name}",
        )
        return list((listed or {}).get("items") or [])


def _policy(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "homeostat.dev/v1alpha1",
        "kind": "RemediationPolicy",
        "metadata": {"name": name},
        "spec": {
            "actions": {
                "RestartPod": {"risk": "low", "mode": "auto"},
                "CordonNode": {"risk": "medium", "mode": "auto"},
            },
            "rateLimits": {"perService": {"maxActions": 20, "window": "10m"}},
            "blastRadius": {"minHealthyNodes": "50%", "maxConcurrentActions": 20},
            "cooldown": "1m",
            "verifyWindow": "1m",
            "circuitBreaker": {"failures": 5, "window": "10m"},
        },
    }


@pytest.fixture(scope="module")
def setup(
    cluster: Cluster,
    crds_installed: None,
    prometheus: prom.PrometheusServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Setup]:
    namespace = f"mt-{uuid.uuid4().hex[:8]}"
    policy = f"mt-{uuid.uuid4().hex[:8]}"
    workdir: Path = tmp_path_factory.mktemp("trends")
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(_policy(policy)))
    operator = OperatorProcess(
        cluster.kubeconfig,
        workdir / "operator.log",
        ("--namespace", namespace, "--prometheus-url", prometheus.url, "--http-port", "0"),
    ).start()
    try:
        yield Setup(cluster, namespace, policy, operator)
    finally:
        operator.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        cluster.kubectl(
            "delete", "remediationpolicy", policy, "--ignore-not-found", "--wait=false", check=False
        )
        print(f"operator log: {operator.log_path}")


def service(
    name: str, policy: str, healing: dict[str, Any], pod_spec: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "homeostat.dev/v1alpha1",
        "kind": "ReplicatedService",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
                    **(pod_spec or {}),
                },
            },
            "replicas": {"min": 1, "max": 3, "desired": 1},
            "healing": healing,
            "approvals": {"policy": policy},
        },
    }


def seconds(timestamp: str) -> float:
    return datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _requests(body: dict[str, Any], resource: str) -> list[dict[str, Any]]:
    requests = ((body.get("status") or {}).get("maintenance") or {}).get("requests") or []
    return [r for r in requests if r.get("resource") == resource]


def test_a_pod_whose_restarts_climb_is_flagged_before_the_limit_and_restarted(setup: Setup) -> None:
    every, limit = 3.0, 20  # the pod reaches 20 restarts 60 s after it started
    manifest = service(
        "flappy",
        setup.policy,
        # The default query: kube-state-metrics' counter summed by pod.
        {
            "predictiveMaintenance": {
                "restarts": {"limit": limit, "leadTime": "40s", "window": "30s", "interval": "2s"}
            }
        },
    )
    manifest["spec"]["template"]["metadata"]["annotations"] = {model.ANNOTATION_RESTART_EVERY: f"{every:g}s"}
    setup.apply(manifest)
    (first,) = wait_for(
        lambda: [p for p in setup.pods("flappy") if (p.get("status") or {}).get("startTime")],
        what="the flappy pod started",
    )
    name = first["metadata"]["name"]
    started = seconds(first["status"]["startTime"])

    def flagged() -> tuple[float, dict[str, Any], dict[str, Any]] | None:
        body = setup.get("flappy")
        mine = [r for r in _requests(body, "restarts") if r.get("pod") == name]
        return (time.time(), mine[0], body["status"]["maintenance"]) if mine else None

    seen, request, maintenance = wait_for(flagged, timeout=90, interval=0.3, what="a restart-trend request")
    truth = started + limit * every
    restarts_then = math.floor((seen - started) / every)
    predicted = seconds(request["predictedExhaustionAt"])
    print(f"flagged at {restarts_then} restarts; predicted {predicted - truth:+.1f}s from the truth")
    assert restarts_then < limit, "flagged only after the limit was reached"
    assert seen < truth
    assert (request["cause"], request["action"], request["key"]) == (
        "PredictedExhaustion",
        "RestartPod",
        f"{name}/PredictedExhaustion/restarts",
    )
    assert abs(predicted - truth) < 15
    (finding,) = [f for f in maintenance["restarts"]["findings"] if f["pod"] == name]
    assert finding["verdict"] == "ExhaustionPredicted" and finding["limit"] == limit
    assert finding["value"] < limit and finding["perSecond"] == pytest.approx(1 / every, rel=0.35)
    assert "restart limit" in maintenance["restarts"]["message"]

    events = [e for e in setup.events("flappy") if e["reason"] == "PredictedExhaustion"]
    assert events and events[0]["type"] == "Warning"
    assert name in events[0]["message"] and "restart limit 20" in events[0]["message"]

    # Healing replaces the pod (RestartPod runs automatically under the policy): it is gone and
    # a new one, starting from zero restarts, serves instead.
    wait_for(
        lambda: all(p["metadata"]["name"] != name for p in setup.pods("flappy")) and setup.pods("flappy"),
        timeout=30,
        what=f"{name} replaced",
    )
    remediations = [e for e in setup.events("flappy") if e["reason"] == "Remediation"]
    assert any("RestartPod" in e["message"] and name in e["message"] for e in remediations), remediations
    setup.cluster.kubectl("delete", "rsvc", "flappy", "-n", setup.namespace, "--wait=false")


def test_memory_and_restart_checks_share_status_without_dropping_each_other(setup: Setup) -> None:
    """Two checks of one service run as separate tasks and write the same status key: each
    keeps its own part (memory at the top, restarts under its key) and its own requests."""
    memory_query = (
        "sum by (pod) (homeostat_sim_memory_working_set_bytes"
        '{namespace="{{namespace}}", service="{{service}}"})'
    )
    healing = {
        "predictiveMaintenance": {
            "memory": {"query": memory_query, "leadTime": "2m", "window": "1m", "interval": "2s"},
            "restarts": {"limit": 1000, "leadTime": "1m", "window": "1m", "interval": "3s"},
        }
    }
    # The pod leaks towards its 160 Mi limit (flagged at once) and restarts every 2 s (a trend,
    # but 1000 restarts are far away: Growing, no request).
    manifest = service("both", setup.policy, healing)
    template = manifest["spec"]["template"]
    template["metadata"]["annotations"] = {
        model.ANNOTATION_MEMORY_LEAK: "2Mi",
        model.ANNOTATION_RESTART_EVERY: "2s",
    }
    template["spec"]["containers"][0]["resources"] = {"limits": {"memory": "160Mi"}}
    setup.apply(manifest)

    def together() -> dict[str, Any] | None:
        maintenance = (setup.get("both").get("status") or {}).get("maintenance") or {}
        memory = [r for r in maintenance.get("requests") or [] if r.get("resource", "memory") == "memory"]
        restarts = (maintenance.get("restarts") or {}).get("findings") or []
        growing = [f for f in restarts if f["verdict"] == "Growing"]
        return maintenance if memory and growing and maintenance.get("findings") else None

    maintenance = wait_for(
        together, timeout=90, interval=0.3, what="memory request and restart trend together"
    )
    assert maintenance["reason"] == "Evaluated" and maintenance["restarts"]["reason"] == "Evaluated"
    assert not _requests({"status": {"maintenance": maintenance}}, "restarts")
    setup.cluster.kubectl("delete", "rsvc", "both", "-n", setup.namespace, "--wait=false")


@pytest.fixture
def filling_node(cluster: Cluster, traffic_simulator: simulator.Simulator) -> Iterator[str]:
    """A KWOK node of the test's own (tainted, so only the test's pod lands there), whose disk
    is half full and fills by 40 % of its size a minute: the 90 % threshold is a minute away."""
    name = f"disk-{uuid.uuid4().hex[:6]}"
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {
                "kwok.x-k8s.io/node": "fake",
                model.ANNOTATION_DISK_USED: "0.5",
                model.ANNOTATION_DISK_FILL: "0.4",
            },
            "labels": {"type": "kwok", "kubernetes.io/hostname": name},
        },
        "spec": {"taints": [{"key": TAINT, "effect": "NoSchedule"}]},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(node))
    yield name
    cluster.kubectl("delete", "node", name, "--wait=false", check=False)


def test_a_node_whose_disk_fills_is_flagged_before_the_threshold_and_cordoned(
    setup: Setup, filling_node: str, traffic_simulator: simulator.Simulator
) -> None:
    pinned = {
        "tolerations": [{"key": TAINT, "operator": "Exists", "effect": "NoSchedule"}],
        "nodeSelector": {"kubernetes.io/hostname": filling_node},
    }
    healing = {
        "predictiveMaintenance": {
            "action": "Cordon",
            # The default query: node-exporter's filesystem gauges of "/", by node.
            "disk": {"threshold": 0.9, "leadTime": "40s", "window": "30s", "interval": "2s"},
        }
    }
    setup.apply(service("full", setup.policy, healing, pinned))
    wait_for(
        lambda: [p for p in setup.pods("full") if p["spec"].get("nodeName") == filling_node],
        what="the pod on the filling node",
    )

    def flagged() -> tuple[float, dict[str, Any], dict[str, Any]] | None:
        body = setup.get("full")
        mine = [r for r in _requests(body, "disk") if r.get("node") == filling_node]
        return (time.time(), mine[0], body["status"]["maintenance"]) if mine else None

    seen, request, maintenance = wait_for(flagged, timeout=90, interval=0.3, what="a disk-trend request")
    with traffic_simulator.lock:
        disk = traffic_simulator.world.nodes[filling_node]
    used_then = disk.used_at(seen)
    truth = disk.since + (0.9 - disk.used) / disk.fill * 60
    predicted = seconds(request["predictedExhaustionAt"])
    print(f"flagged at {used_then:.1%} used; predicted {predicted - truth:+.1f}s from the truth")
    assert used_then < 0.9, "flagged only after the threshold was reached"
    assert (request["cause"], request["action"]) == ("PredictedExhaustion", "CordonNode")
    assert request["key"] == f"{filling_node}/PredictedExhaustion/disk"
    assert abs(predicted - truth) < 10
    (finding,) = [f for f in maintenance["disk"]["findings"] if f["node"] == filling_node]
    assert finding["verdict"] == "ExhaustionPredicted" and finding["value"] < 0.9
    # Only the nodes hosting the service's pods are judged: the other nodes' disks are not.
    assert maintenance["disk"]["checked"] == 1

    events = [e for e in setup.events("full") if e["reason"] == "PredictedExhaustion"]
    assert events and events[0]["type"] == "Warning"
    assert filling_node in events[0]["message"] and "disk" in events[0]["message"]

    # The configured action runs through the healing loop: the node is cordoned.
    wait_for(
        lambda: (get_json(setup.cluster, "node", filling_node) or {}).get("spec", {}).get("unschedulable"),
        timeout=30,
        what=f"node {filling_node} cordoned",
    )
    remediations = [e for e in setup.events("full") if e["reason"] == "Remediation"]
    assert any("CordonNode" in e["message"] and filling_node in e["message"] for e in remediations)
    setup.cluster.kubectl("delete", "rsvc", "full", "-n", setup.namespace, "--wait=false")


RISK_TAINT = "homeostat.dev/risk-test"
RISK_QUERY = "max by (node) (homeostat_sim_node_failure_risk)"


def _node(name: str, risk: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", model.ANNOTATION_FAILURE_RISK: risk},
            "labels": {"type": "kwok", "kubernetes.io/hostname": name, **labels},
        },
        "spec": {"taints": [{"key": RISK_TAINT, "effect": "NoSchedule"}]},
    }


@pytest.fixture
def risky_nodes(
    cluster: Cluster, traffic_simulator: simulator.Simulator
) -> Iterator[tuple[str, str, str, str]]:
    """Three KWOK nodes of the test's own, tainted so only the test's pods land there: two
    labelled for the service's pods (risks 0.3 and 0.5) and one that hosts none (risk 0.99).
    Returns the label value and the three names."""
    tag = uuid.uuid4().hex[:6]
    names = (f"risk-a-{tag}", f"risk-b-{tag}", f"risk-c-{tag}")
    hosts = {"homeostat.dev/risk-test": tag}
    for name, risk, labels in zip(names, ("0.3", "0.5", "0.99"), (hosts, hosts, {}), strict=True):
        cluster.kubectl("apply", "-f", "-", input=json.dumps(_node(name, risk, labels)))
    yield (tag, *names)
    for name in names:
        cluster.kubectl("delete", "node", name, "--wait=false", check=False)


def test_a_node_whose_failure_risk_crosses_the_threshold_is_cordoned_and_the_others_are_not(
    setup: Setup, risky_nodes: tuple[str, str, str, str]
) -> None:
    tag, node_a, node_b, node_c = risky_nodes
    pinned = {
        "tolerations": [{"key": RISK_TAINT, "operator": "Exists", "effect": "NoSchedule"}],
        "nodeSelector": {"homeostat.dev/risk-test": tag},
        # One pod per node, so the service runs on both labelled nodes.
        "affinity": {
            "podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "labelSelector": {"matchLabels": {"app": "risky"}},
                        "topologyKey": "kubernetes.io/hostname",
                    }
                ]
            }
        },
    }
    healing = {
        "predictiveMaintenance": {"query": RISK_QUERY, "threshold": 0.8, "interval": "2s", "action": "Cordon"}
    }
    manifest = service("risky", setup.policy, healing, pinned)
    manifest["spec"]["replicas"] = {"min": 2, "max": 2, "desired": 2}
    setup.apply(manifest)
    wait_for(
        lambda: {p["spec"].get("nodeName") for p in setup.pods("risky")} == {node_a, node_b},
        timeout=90,
        what="a pod on each labelled node",
    )

    def risk() -> dict[str, Any]:
        return dict(((setup.get("risky").get("status") or {}).get("maintenance") or {}).get("risk") or {})

    def node(name: str) -> dict[str, Any]:
        body = get_json(setup.cluster, "node", name)
        assert body is not None, f"node {name} is gone"
        return body

    def readings(*expected: tuple[str, str, float]) -> dict[str, Any] | None:
        part = risk()
        got = {(f["node"], f["verdict"], f.get("value")) for f in part.get("findings") or []}
        return part if got == set(expected) else None

    # Both hosting nodes are judged (the non-hosting one at 0.99 is not), neither is at risk.
    below = wait_for(
        lambda: readings((node_a, "BelowThreshold", 0.3), (node_b, "BelowThreshold", 0.5)),
        timeout=90,
        interval=0.5,
        what="both hosting nodes read below the threshold",
    )
    assert below["reason"] == "Evaluated" and below["checked"] == 2
    assert not _requests(setup.get("risky"), "risk")

    # Node A's risk crosses the threshold: a request for the node action, a Warning Event, and
    # the healing loop cordons it under the policy.
    setup.cluster.kubectl("annotate", "node", node_a, "--overwrite", f"{model.ANNOTATION_FAILURE_RISK}=0.93")

    def flagged() -> dict[str, Any] | None:
        mine = [r for r in _requests(setup.get("risky"), "risk") if r.get("node") == node_a]
        return mine[0] if mine else None

    request = wait_for(flagged, timeout=60, interval=0.3, what="a failure-risk request for node A")
    assert (request["cause"], request["action"], request["key"]) == (
        "PredictedExhaustion",
        "CordonNode",
        f"{node_a}/PredictedExhaustion/risk",
    )
    assert request["message"] == f"node {node_a} failure risk 0.93 >= 0.8 from {RISK_QUERY}"
    events = [e for e in setup.events("risky") if e["reason"] == "PredictedExhaustion"]
    assert events and events[0]["type"] == "Warning"
    assert f"node {node_a} failure risk 0.93 >= 0.8" in events[0]["message"]
    wait_for(lambda: node(node_a).get("spec", {}).get("unschedulable"), timeout=60, what=f"{node_a} cordoned")
    remediations = [e for e in setup.events("risky") if e["reason"] == "Remediation"]
    assert any("CordonNode" in e["message"] and node_a in e["message"] for e in remediations), remediations
    # Only node A: B is below the threshold, C (0.99) runs none of the service's pods.
    assert [r["node"] for r in _requests(setup.get("risky"), "risk")] == [node_a]
    assert not node(node_b).get("spec", {}).get("unschedulable")
    assert not node(node_c).get("spec", {}).get("unschedulable")

    # The risk falls: the request is cleared (the cordon stays; uncordoning is a human's call).
    setup.cluster.kubectl("annotate", "node", node_a, "--overwrite", f"{model.ANNOTATION_FAILURE_RISK}=0.1")
    wait_for(lambda: not _requests(setup.get("risky"), "risk"), timeout=60, what="the request cleared")

    # An answer that is no risk (NaN) is never acted on, however high B was before: NoData.
    setup.cluster.kubectl("annotate", "node", node_b, "--overwrite", f"{model.ANNOTATION_FAILURE_RISK}=NaN")
    blind = wait_for(
        lambda: readings((node_a, "BelowThreshold", 0.1), (node_b, "NoData", None)),
        timeout=60,
        what="node B without a usable risk",
    )
    assert blind["reason"] == "NoData" and node_b in blind["message"]
    assert not _requests(setup.get("risky"), "risk")
    assert not node(node_b).get("spec", {}).get("unschedulable")
    setup.cluster.kubectl("delete", "rsvc", "risky", "-n", setup.namespace, "--wait=false")


def test_with_prometheus_down_no_node_is_acted_on_and_the_log_says_so_once(
    cluster: Cluster, crds_installed: None, tmp_path: Path, risky_nodes: tuple[str, str, str, str]
) -> None:
    """An operator whose Prometheus does not answer: the node at 0.99 keeps its pods and stays
    schedulable, status says MetricUnavailable, and the warning is logged once, not per interval."""
    tag, _, _, node_c = risky_nodes
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    namespace, policy = f"mt-{uuid.uuid4().hex[:8]}", f"mt-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(_policy(policy)))
    cluster.kubectl("label", "node", node_c, f"homeostat.dev/risk-down={tag}")
    operator = OperatorProcess(
        cluster.kubeconfig,
        tmp_path / "operator.log",
        ("--namespace", namespace, "--prometheus-url", f"http://127.0.0.1:{port}", "--http-port", "0"),
    ).start()
    blind = Setup(cluster, namespace, policy, operator)
    try:
        pinned = {
            "tolerations": [{"key": RISK_TAINT, "operator": "Exists", "effect": "NoSchedule"}],
            "nodeSelector": {"homeostat.dev/risk-down": tag},
        }
        healing = {
            "predictiveMaintenance": {
                "query": RISK_QUERY,
                "threshold": 0.8,
                "interval": "1s",
                "action": "Cordon",
            }
        }
        blind.apply(service("unseen", policy, healing, pinned))
        wait_for(
            lambda: [p for p in blind.pods("unseen") if p["spec"].get("nodeName") == node_c],
            timeout=90,
            what="the pod on the risky node",
        )

        def part() -> dict[str, Any]:
            return dict(
                ((blind.get("unseen").get("status") or {}).get("maintenance") or {}).get("risk") or {}
            )

        first = wait_for(
            lambda: (p := part()).get("reason") == "MetricUnavailable" and p,
            timeout=90,
            what="the risk check reporting Prometheus unavailable",
        )
        assert "no node acted on" in first["message"]
        # Several more evaluations, still blind: nothing requested, nothing cordoned, one log line.
        for _ in range(3):
            seen = part().get("lastEvaluated")
            wait_for(
                lambda seen=seen: part().get("lastEvaluated") not in (None, seen), timeout=60, what="a re-run"
            )
        assert part()["reason"] == "MetricUnavailable"
        assert not _requests(blind.get("unseen"), "risk")
        assert not (get_json(cluster, "node", node_c) or {}).get("spec", {}).get("unschedulable")
        log = operator.log_path.read_text()
        assert log.count(f"{namespace}/unseen: failure risk unknown, no node acted on") == 1, log[-3000:]
    finally:
        operator.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        cluster.kubectl(
            "delete", "remediationpolicy", policy, "--ignore-not-found", "--wait=false", check=False
        )


@pytest.mark.parametrize(
    ("healing", "accepted", "message"),
    [
        ({"predictiveMaintenance": {"restarts": {}}}, True, ""),  # no node-risk query needed
        ({"predictiveMaintenance": {"disk": {}, "action": "Drain"}}, True, ""),
        (
            {"predictiveMaintenance": {"restarts": {"limit": 0}}},
            False,
            "spec.healing.predictiveMaintenance.restarts.limit",
        ),
        (
            {"predictiveMaintenance": {"restarts": {"leadTime": "0s"}}},
            False,
            "spec.healing.predictiveMaintenance.restarts.leadTime must be a positive duration",
        ),
        (
            {"predictiveMaintenance": {"disk": {"threshold": 1.5}}},
            False,
            "spec.healing.predictiveMaintenance.disk.threshold",
        ),
        (
            {"predictiveMaintenance": {"disk": {"threshold": 0}}},
            False,
            "spec.healing.predictiveMaintenance.disk.threshold",
        ),
        (
            {"predictiveMaintenance": {"disk": {"window": "soon"}}},
            False,
            "spec.healing.predictiveMaintenance.disk.window",
        ),
        ({"predictiveMaintenance": {"query": "q", "threshold": 0.5, "interval": "10s"}}, True, ""),
        (
            {"predictiveMaintenance": {"query": "q", "threshold": 1.5}},
            False,
            "spec.healing.predictiveMaintenance.threshold",
        ),
        (
            {"predictiveMaintenance": {"query": "q", "interval": "0s"}},
            False,
            "spec.healing.predictiveMaintenance.interval must be a positive duration",
        ),
    ],
)
def test_api_validation_of_the_trend_blocks(
    cluster: Cluster, crds_installed: None, healing: dict[str, Any], accepted: bool, message: str
) -> None:
    manifest = service("validated", "default", healing)
    manifest["metadata"]["namespace"] = "default"
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(manifest), check=False)
    assert (result.returncode == 0) is accepted, result.stderr
    assert message in result.stderr
