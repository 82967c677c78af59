"""A node drain by an operator installed for one namespace, with the chart's own RBAC (ADR 0014).

The chart is installed with ``watchNamespaces`` set. The operator runs as a local process with a
token of the chart's ServiceAccount and the flags the chart's Deployment passes (pods do not
execute under KWOK). A node under pressure carries pods of the watched service and a pod of
another namespace. With ``healing.drainAllNamespaces=false`` the account may list and evict pods
only in the watched namespace: the drain cordons the node, evicts the service's pods, leaves the
other pod where it is and says so in its Event. With the default (true) the chart's small
ClusterRole lets the same drain empty the whole node. Neither meets a 403.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_healing as healing
import test_helm as helm_tests
import yaml

from cluster import local
from conftest import REPO, Cluster, OperatorProcess, get_json, wait_for

pytestmark = pytest.mark.e2e

RELEASE = "hsdrain"  # its own release name: the chart's ClusterRole names are cluster-wide
ACCOUNT = f"{RELEASE}-homeostat"

chaos_node = healing.chaos_node
policy_name = healing.policy_name


@pytest.fixture(params=[False, True], ids=["own-namespaces", "all-namespaces"])
def install(
    request: pytest.FixtureRequest, local_cluster: local.LocalCluster, crds_installed: None
) -> Iterator[tuple[str, str, str, bool]]:
    suffix = uuid.uuid4().hex[:6]
    system, workload, bystander = f"hsd-system-{suffix}", f"hsd-{suffix}", f"other-{suffix}"
    for ns in (system, workload, bystander):
        local_cluster.kubectl("create", "namespace", ns)
    helm_tests.helm(
        local_cluster,
        "install",
        RELEASE,
        str(REPO / "charts" / "homeostat"),
        "-n",
        system,
        "--set",
        f"watchNamespaces={{{workload}}}",
        "--set",
        f"healing.drainAllNamespaces={str(request.param).lower()}",
        "--set",
        "defaultPolicy.enabled=false",
        "--wait=false",
    )
    yield system, workload, bystander, request.param
    helm_tests.helm(local_cluster, "uninstall", RELEASE, "-n", system)
    for ns in (system, workload, bystander):
        local_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _token_kubeconfig(cluster: local.LocalCluster, system: str, path: Path) -> Path:
    """A kubeconfig that authenticates as this release's ServiceAccount (like ``test_helm``'s)."""
    token = cluster.kubectl("create", "token", ACCOUNT, "-n", system, "--duration=1h").stdout.strip()
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    context = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    server = next(c for c in config["clusters"] if c["name"] == context["context"]["cluster"])
    entry = dict(server["cluster"])
    if "certificate-authority" in entry:
        entry["certificate-authority-data"] = base64.b64encode(
            Path(entry.pop("certificate-authority")).read_bytes()
        ).decode()
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": entry}],
                "users": [{"name": "operator", "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "operator"}}],
                "current-context": "sa",
            }
        )
    )
    path.chmod(0o600)
    return path


def _chart_flags(cluster: local.LocalCluster, system: str) -> tuple[str, ...]:
    """The scope flags the chart's Deployment gives the operator."""
    deployment = get_json(cluster, "deployment", ACCOUNT, "-n", system) or {}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return tuple(a for a in container["args"] if a.startswith(("--namespace", "--drain-scope")))


def _pod_on(node: str, namespace: str, name: str) -> dict[str, Any]:
    """A ReplicaSet of one pod bound to ``node``: a drain evicts only pods a controller owns."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeName": node,
                    "tolerations": [{"key": healing.CHAOS_TAINT, "operator": "Exists"}],
                    "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
                },
            },
        },
    }


def _pod_of(cluster: Cluster, namespace: str, name: str) -> str | None:
    listed = get_json(cluster, "pods", "-n", namespace, "-l", f"app={name}") or {}
    live = [p for p in listed.get("items") or [] if not p["metadata"].get("deletionTimestamp")]
    return str(live[0]["metadata"]["name"]) if live else None


def test_a_namespaced_install_drains_with_the_charts_rbac(
    local_cluster: local.LocalCluster,
    install: tuple[str, str, str, bool],
    policy_name: str,
    chaos_node: str,
    tmp_path: Path,
) -> None:
    system, workload, bystander, drain_all = install
    # The cluster-wide ServiceAccount token is not there yet the moment helm returns.
    wait_for(lambda: get_json(local_cluster, "serviceaccount", ACCOUNT, "-n", system), what="the account")
    flags = _chart_flags(local_cluster, system)
    assert flags == (f"--namespace={workload}", *(() if drain_all else ("--drain-scope=watched",)))
    kubeconfig = _token_kubeconfig(local_cluster, system, tmp_path / "sa.kubeconfig")
    # Confined, the chart really withholds cluster-wide pod rights: the 403 a drain used to meet.
    denied = local_cluster.kubectl(
        "auth",
        "can-i",
        "list",
        "pods",
        "--all-namespaces",
        f"--as=system:serviceaccount:{system}:{ACCOUNT}",
        check=False,
    )
    assert denied.stdout.strip() == ("yes" if drain_all else "no")

    drain = {"risk": "medium", "mode": "auto"}
    policy = healing._policy(policy_name, actions={"DrainNode": drain, "CordonNode": drain})
    service = healing._service(
        "cache", workload, policy_name, 2, {"nodeFailure": {"gracePeriod": "2s"}}, node=chaos_node
    )
    healing._apply(local_cluster, policy, _pod_on(chaos_node, bystander, "neighbour"))
    neighbour_pod = wait_for(lambda: _pod_of(local_cluster, bystander, "neighbour"), what="the neighbour pod")
    operator = OperatorProcess(kubeconfig, tmp_path / "operator.log", flags).start()
    try:
        healing._apply(local_cluster, service)

        def on_chaos() -> list[str] | None:
            pods = healing._pods(local_cluster, workload, "cache")
            names = [p["metadata"]["name"] for p in pods if p["spec"].get("nodeName") == chaos_node]
            return names if len(pods) == 2 and all(map(healing._running_ready, pods)) and names else None

        wait_for(on_chaos, timeout=90, what="ready pods of the service on the chaos node")
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

        def drained() -> bool:
            pods = [
                p
                for p in healing._pods(local_cluster, workload, "cache")
                if not p["metadata"].get("deletionTimestamp")
            ]
            off = [p for p in pods if p["spec"].get("nodeName") != chaos_node]
            return len(off) == 2 and all(map(healing._running_ready, off)) and len(pods) == 2

        wait_for(drained, timeout=90, what=f"the service's pods drained off {chaos_node}")
        node = get_json(local_cluster, "node", chaos_node) or {}
        assert node["spec"].get("unschedulable") is True, "the node was not cordoned"

        def said() -> list[str]:
            events = healing._events(local_cluster, workload, "Remediation")
            events += healing._events(local_cluster, workload, "DrainResumed")
            return [e["message"] for e in events if "drained" in e["message"]]

        texts = wait_for(said, timeout=30, what="the Event of the drain")
        if drain_all:
            wait_for(
                lambda: not get_json(local_cluster, "pod", neighbour_pod, "-n", bystander),
                timeout=30,
                what="the other namespace's pod evicted too",
            )
            assert "left in place" not in texts[0]
        else:
            neighbour = get_json(local_cluster, "pod", neighbour_pod, "-n", bystander) or {}
            assert neighbour["spec"]["nodeName"] == chaos_node
            assert not neighbour["metadata"].get("deletionTimestamp"), (
                "a pod of another namespace was evicted"
            )
            assert "pods of other namespaces were left in place" in texts[0]
            assert workload in texts[0] and bystander not in texts[0]
        history = healing._healing(local_cluster, workload, "cache").get("history") or []
        assert "DrainNode" in [r["action"] for r in history]
        logs = operator.logs()
        assert "Forbidden" not in logs and " 403" not in logs, logs[-3000:]
        assert operator.alive()
    finally:
        operator.stop()
