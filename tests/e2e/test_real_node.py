"""The real node: pods that execute, beside KWOK nodes that only pretend to.

Everything the rest of the suite builds on for real workloads is checked here once: a pod of the
sample app turns Ready through its own probes, answers through its pod IP and through a Service
(kube-proxy), shows its logs, runs an exec, and talks to the API server with its ServiceAccount;
simulated workloads never land on the real node; and nothing on the node is reachable from an
interface other than loopback and the node's own bridge.
"""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import workload
from cluster import local
from cluster import node as real_node
from conftest import Cluster, Workloads, get_json, wait_for

pytestmark = pytest.mark.e2e


def _http(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as res:
            return res.status, res.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _pod(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return get_json(cluster, "pod", name, "-n", namespace) or {}


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


@pytest.fixture
def app_pod(cluster: Cluster, namespace: str, workloads: Workloads) -> dict[str, Any]:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app", "labels": {"app": "sample"}},
        "spec": {**workload.pod_spec(workloads), "automountServiceAccountToken": True},
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))
    return wait_for(
        lambda: (p := _pod(cluster, namespace, "app")) and _ready(p) and p, timeout=90, what="app pod Ready"
    )


def test_a_real_pod_turns_ready_serves_and_shows_logs(
    cluster: Cluster, namespace: str, app_pod: dict[str, Any]
) -> None:
    status, body = _http(f"http://{app_pod['status']['podIP']}:8080/metrics")
    assert status == 200
    assert f'namespace="{namespace}"' in body and "http_requests_total" in body
    assert _http(f"http://{app_pod['status']['podIP']}:8080/")[0] == 200

    logs = cluster.kubectl("logs", "-n", namespace, "app").stdout
    assert logs.strip(), "the app wrote nothing the kubelet could show"
    out = cluster.kubectl("exec", "-n", namespace, "app", "--", "python3", "-c", "print(6 * 7)").stdout
    assert out.strip() == "42"


def test_traffic_reaches_the_pod_through_a_service(
    cluster: Cluster, namespace: str, app_pod: dict[str, Any]
) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "sample"},
        "spec": {"selector": {"app": "sample"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(service))
    ip = (get_json(cluster, "service", "sample", "-n", namespace) or {})["spec"]["clusterIP"]

    def answered() -> bool:
        try:
            return _http(f"http://{ip}/", timeout=2)[0] == 200
        except OSError:
            return False  # kube-proxy has not written the Service's rules yet

    wait_for(answered, timeout=60, what=f"the Service {ip} answering through kube-proxy")


def test_a_pod_reaches_the_api_server_with_its_service_account(
    cluster: Cluster, namespace: str, app_pod: dict[str, Any]
) -> None:
    probe = (
        "import json, ssl, urllib.request\n"
        "sa = '/var/run/secrets/kubernetes.io/serviceaccount/'\n"
        "ctx = ssl.create_default_context(cafile=sa + 'ca.crt')\n"
        # The kubernetes Service's ClusterIP, verified against the cluster CA (an IP SAN).
        "req = urllib.request.Request('https://10.96.0.1/version',"
        " headers={'Authorization': 'Bearer ' + open(sa + 'token').read()})\n"
        "print(json.load(urllib.request.urlopen(req, context=ctx, timeout=10))['gitVersion'])\n"
    )
    out = cluster.kubectl("exec", "-n", namespace, "app", "--", "python3", "-c", probe, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("v1.")


def test_simulated_pods_stay_on_kwok_nodes(cluster: Cluster, namespace: str, workloads: Workloads) -> None:
    if not workloads.tolerations:
        pytest.skip("every node of this cluster is real: there are no KWOK nodes to keep apart")
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "simulated"},
        "spec": {
            "replicas": 6,
            "selector": {"matchLabels": {"app": "simulated"}},
            "template": {
                "metadata": {"labels": {"app": "simulated"}},
                "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
            },
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(deployment))

    def placed() -> list[str] | None:
        pods = (get_json(cluster, "pods", "-n", namespace, "-l", "app=simulated") or {}).get("items", [])
        nodes = [p["spec"].get("nodeName") for p in pods]
        return nodes if len(nodes) == 6 and all(nodes) else None

    nodes = wait_for(placed, timeout=60, what="six simulated pods scheduled")
    real = {
        n["metadata"]["name"]
        for n in (get_json(cluster, "nodes", "-l", f"{real_node.NODE_LABEL}=real") or {})["items"]
    }
    assert real, "the real node is missing"
    assert not set(nodes) & real, nodes


@pytest.fixture
def outside_host() -> Iterator[str]:
    """A network namespace joined to the host by a veth pair: a machine on another interface."""
    ns, host_end, ns_end = f"hs-out-{uuid.uuid4().hex[:4]}", "hs-out0", "hs-out1"
    commands = [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end, "netns", ns],
        ["ip", "addr", "add", "198.51.100.1/30", "dev", host_end],
        ["ip", "link", "set", host_end, "up"],
        ["ip", "-n", ns, "addr", "add", "198.51.100.2/30", "dev", ns_end],
        ["ip", "-n", ns, "link", "set", ns_end, "up"],
        ["ip", "-n", ns, "link", "set", "lo", "up"],
        ["ip", "-n", ns, "route", "add", real_node.POD_SUBNET, "via", "198.51.100.1"],
    ]
    try:
        for cmd in commands:
            subprocess.run(cmd, check=True, capture_output=True)
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", host_end], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def _connects(ns: str, address: str, port: int) -> bool:
    script = (
        "import socket,sys\n"
        "s=socket.socket(); s.settimeout(2)\n"
        f"sys.exit(0 if s.connect_ex(({address!r}, {port})) == 0 else 1)\n"
    )
    res = subprocess.run(
        ["ip", "netns", "exec", ns, "python3", "-c", script], capture_output=True, check=False
    )
    return res.returncode == 0


def test_nothing_is_reachable_from_another_interface(
    local_cluster: local.LocalCluster, namespace: str, app_pod: dict[str, Any], outside_host: str
) -> None:
    port = local_cluster.api_port()
    pod_ip = app_pod["status"]["podIP"]
    # A listener of our own on the host's veth address: the path from outside works, so each
    # refusal below is the firewall's doing, not a missing route.
    with socket.socket() as control:
        control.bind(("198.51.100.1", 0))
        control.listen(1)
        assert _connects(outside_host, "198.51.100.1", control.getsockname()[1]) is True
    # The API server listens on every address, the host's veth address included.
    assert _connects(outside_host, "198.51.100.1", port) is False
    assert _connects(outside_host, real_node.NODE_IP, port) is False
    assert _connects(outside_host, pod_ip, 8080) is False
    # From the host itself, the same addresses answer.
    assert _http(f"http://{pod_ip}:8080/healthz")[0] == 200


def test_another_clusters_down_leaves_the_real_node_alone(
    local_cluster: local.LocalCluster, namespace: str, app_pod: dict[str, Any]
) -> None:
    """The bridge, the firewall, pods' cgroups and mounts are machine-wide: a KWOK-only cluster
    (a benchmark's) that goes down must not take them with it."""
    other = local.LocalCluster(f"kwok-only-{uuid.uuid4().hex[:4]}")
    try:
        other.up(nodes=1, with_node=False)
    finally:
        other.down()
    node = local_cluster.node
    assert node.running() and node.owns_host()
    assert _ready(_pod(local_cluster, namespace, "app"))
    assert _http(f"http://{app_pod['status']['podIP']}:8080/healthz")[0] == 200
    assert any(real_node.CHAIN_IN in thing for thing in node.leftovers()), "the firewall chain went"
