"""Self-healing against workloads that execute: the sample app on the real node, failing for real.

test_healing.py makes the same failures with KWOK's chaos stages; here the kernel OOM-kills a
container that outgrows its limit and the kubelet reports CrashLoopBackOff for a revision that
exits at start, so the operator acts on the pod statuses a kubelet really writes. A container that leaks is
seen the way a cluster's Prometheus sees it, through the kubelet's cAdvisor endpoint.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import prom
import workload
from cluster import local
from cluster import node as real_node
from conftest import Cluster, OperatorProcess, Workloads, get_json, plugin, wait_for

pytestmark = pytest.mark.e2e


def _policy(name: str, actions: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "homeostat.dev/v1alpha1",
        "kind": "RemediationPolicy",
        "metadata": {"name": name},
        "spec": {
            "actions": actions,
            "rateLimits": {"perService": {"maxActions": 10, "window": "10m"}},
            "blastRadius": {"minHealthyNodes": "50%", "maxConcurrentActions": 10},
            "cooldown": "1m",
            "verifyWindow": "30s",
            "circuitBreaker": {"failures": 5, "window": "10m"},
        },
    }


@pytest.fixture
def policy_name(cluster: Cluster, crds_installed: None) -> Iterator[str]:
    name = f"p-{uuid.uuid4().hex[:8]}"
    yield name
    cluster.kubectl("delete", "remediationpolicy", name, "--ignore-not-found", "--wait=false", check=False)


def _apply(cluster: Cluster, namespace: str, *objects: dict[str, Any]) -> None:
    body = "\n---\n".join(json.dumps(o) for o in objects)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=body)


def _rsvc(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return get_json(cluster, "rsvc", name, "-n", namespace) or {}


def _pods(cluster: Cluster, namespace: str, service: str) -> list[dict[str, Any]]:
    body = get_json(cluster, "pods", "-n", namespace, "-l", f"homeostat.dev/service={service}")
    return [p for p in (body or {}).get("items") or [] if not p["metadata"].get("deletionTimestamp")]


def _ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
    return status.get("phase") == "Running" and ready


def _limit(body: dict[str, Any]) -> str | None:
    container = body["spec"]["template"]["spec"]["containers"][0]
    return ((container.get("resources") or {}).get("limits") or {}).get("memory")


def _history(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    return list(
        ((_rsvc(cluster, namespace, name).get("status") or {}).get("healing") or {}).get("history") or []
    )


def _settled(body: dict[str, Any]) -> str | None:
    status = body.get("status") or {}
    if status.get("phase") == "Ready" and status.get("stableRevision") == status.get("currentRevision"):
        return str(status.get("stableRevision") or "") or None
    return None


def test_a_real_oom_kill_raises_the_limit_after_approval_and_the_new_revision_holds(
    cluster: Cluster,
    namespace: str,
    operator_process: OperatorProcess,
    workloads: Workloads,
    policy_name: str,
) -> None:
    # About 20 MiB of Python plus a leak capped at 72 MiB: past 64Mi (the kernel kills it a few
    # seconds after start), well inside the doubled 128Mi.
    approve = {"kubernetes": {"groups": ["system:masters"]}}
    policy = _policy(
        policy_name,
        {"RaiseMemoryLimit": {"risk": "medium", "mode": "approve", "approvers": approve, "quorum": 1}},
    )
    service = workload.replicated_service(
        workloads,
        "mem",
        memory="64Mi",
        env={"APP_LEAK_MB_PER_S": "16", "APP_LEAK_LIMIT_MB": "72"},
        replicas={"min": 1, "max": 2, "desired": 1},
        healing={"oom": {"increasePercent": 100, "maxMemory": "256Mi"}},
        approvals={"policy": policy_name},
    )
    _apply(cluster, namespace, policy, service)

    def oom_killed() -> dict[str, Any] | None:
        for pod in _pods(cluster, namespace, "mem"):
            for c in (pod.get("status") or {}).get("containerStatuses") or []:
                last = (c.get("lastState") or {}).get("terminated") or {}
                now = (c.get("state") or {}).get("terminated") or {}
                if "OOMKilled" in (last.get("reason"), now.get("reason")):
                    return c
        return None

    begun = time.monotonic()
    killed = wait_for(oom_killed, timeout=120, what="the kubelet to report OOMKilled")
    killed_at = time.monotonic()
    terminated = (killed.get("lastState") or {}).get("terminated") or killed["state"]["terminated"]
    assert terminated["exitCode"] == 137, terminated

    def approval() -> dict[str, Any] | None:
        items = (get_json(cluster, "approvals", "-n", namespace) or {}).get("items") or []
        return next((a for a in items if a["spec"]["action"] == "RaiseMemoryLimit"), None)

    request = wait_for(approval, timeout=60, what="an Approval for RaiseMemoryLimit")
    requested_at = time.monotonic()
    assert request["spec"]["target"]["name"].endswith("app"), request["spec"]["target"]
    time.sleep(3)  # pending: nothing may change yet
    assert _limit(_rsvc(cluster, namespace, "mem")) == "64Mi", "raised before anyone approved"

    approved = plugin(cluster, "approve", request["metadata"]["name"], "-n", namespace)
    assert approved.returncode == 0, approved.stdout + approved.stderr
    approved_at = time.monotonic()
    wait_for(
        lambda: _limit(_rsvc(cluster, namespace, "mem")) == "128Mi",
        timeout=30,
        what="the limit raised to 128Mi",
    )
    revision = wait_for(
        lambda: _settled(_rsvc(cluster, namespace, "mem")), timeout=120, what="the new revision Ready"
    )

    def holding() -> list[dict[str, Any]] | None:
        pods = [p for p in _pods(cluster, namespace, "mem") if p["status"].get("phase") != "Failed"]
        if not pods or any(p["metadata"]["labels"].get("homeostat.dev/revision") != revision for p in pods):
            return None
        return pods if all(map(_ready, pods)) else None

    pods = wait_for(holding, timeout=60, what="only pods of the raised revision, Ready")
    ready_at = time.monotonic()
    time.sleep(10)  # the leak has reached its cap: the raised limit must hold it
    for pod in pods:
        fresh = get_json(cluster, "pod", pod["metadata"]["name"], "-n", namespace) or {}
        (status,) = fresh["status"]["containerStatuses"]
        assert status["restartCount"] == 0 and status["ready"], status
        assert fresh["spec"]["containers"][0]["resources"]["limits"]["memory"] == "128Mi"
    history = _history(cluster, namespace, "mem")
    assert [r["action"] for r in history][:1] == ["RaiseMemoryLimit"], history
    print(
        f"OOM kill {killed_at - begun:.1f}s after apply; approval requested {requested_at - killed_at:.1f}s"
        f" after it; raised revision Ready {ready_at - approved_at:.1f}s after the approval"
    )


def test_a_really_crash_looping_revision_is_rolled_back(
    cluster: Cluster,
    namespace: str,
    operator_process: OperatorProcess,
    workloads: Workloads,
    policy_name: str,
) -> None:
    policy = _policy(policy_name, {"Rollback": {"risk": "low", "mode": "auto"}})
    spec = {
        "replicas": {"min": 1, "max": 3, "desired": 2},
        # A pod counts as available only after 5 s Ready, so a revision that dies at start never
        # becomes the stable one.
        "minReadySeconds": 5,
        "healing": {"crashLoop": {"window": "10m"}},
        "approvals": {"policy": policy_name},
    }
    _apply(cluster, namespace, policy, workload.replicated_service(workloads, "api", **spec))
    good = wait_for(lambda: _settled(_rsvc(cluster, namespace, "api")), timeout=120, what="a stable revision")
    bad = workload.replicated_service(workloads, "api", env={"APP_CRASH_ON_START": "1"}, **spec)
    _apply(cluster, namespace, bad)
    changed = time.monotonic()

    def crash_looping() -> bool:
        for pod in _pods(cluster, namespace, "api"):
            for c in (pod.get("status") or {}).get("containerStatuses") or []:
                if ((c.get("state") or {}).get("waiting") or {}).get("reason") == "CrashLoopBackOff":
                    return True
        return False

    def rolled_back() -> dict[str, Any] | None:
        return (_rsvc(cluster, namespace, "api").get("status") or {}).get("rollback") or None

    # Either may come first: the operator may act on the restarts before the kubelet's backoff.
    wait_for(lambda: crash_looping() or rolled_back(), timeout=90, what="CrashLoopBackOff from the kubelet")
    looped = crash_looping()
    rollback = wait_for(rolled_back, timeout=90, what="the rollback")
    rolled_at = time.monotonic()
    assert rollback["stableRevision"] == good and rollback["revision"] != good

    def recovered() -> bool:
        pods = [p for p in _pods(cluster, namespace, "api") if p["status"].get("phase") != "Failed"]
        revisions = {p["metadata"]["labels"].get("homeostat.dev/revision") for p in pods}
        return revisions == {good} and sum(map(_ready, pods)) == 2

    wait_for(recovered, timeout=120, what="2 Ready pods at the stable revision")
    recovered_at = time.monotonic()
    history = wait_for(
        lambda: (h := _history(cluster, namespace, "api")) and h[-1]["outcome"] != "InProgress" and h,
        timeout=90,
        what="the rollback verified",
    )
    assert [(r["action"], r["outcome"]) for r in history] == [("Rollback", "Succeeded")], history
    # The kubelet's own word for the crash loop (the operator may have read it between two polls).
    events = (get_json(cluster, "events", "-n", namespace, "--field-selector", "reason=BackOff") or {}).get(
        "items"
    ) or []
    assert any("restarting failed container" in e.get("message", "") for e in events), events
    print(
        f"CrashLoopBackOff seen before the rollback: {looped}; rolled back {rolled_at - changed:.1f}s"
        f" after the bad revision was applied; stable again {recovered_at - rolled_at:.1f}s later"
    )


def test_a_real_leak_seen_through_cadvisor_gets_the_pod_restarted_before_its_oom(
    local_cluster: local.LocalCluster,
    private_namespace: str,
    workloads: Workloads,
    policy_name: str,
    tmp_path: Path,
) -> None:
    namespace = private_namespace
    prom.need_prometheus()
    node = local_cluster.node
    pki = local_cluster.state_dir / "pki"
    cadvisor = prom.kubelet_cadvisor_scrape_config(
        f"{real_node.NODE_IP}:{real_node.KUBELET_PORT}",
        server_name=node.name,
        ca_file=node.serving_chain,
        cert_file=pki / "admin.crt",
        key_file=pki / "admin.key",
        keep=namespace,
    )
    server = prom.PrometheusServer([], scrape_interval="2s", extra_scrape_configs=cadvisor).start()
    operator = OperatorProcess(
        local_cluster.kubeconfig,
        tmp_path / "operator.log",
        ("--namespace", namespace, "--prometheus-url", server.url, "--http-port", "0"),
    ).start()
    try:
        limit_mib, leak_mib = 160, 1
        policy = _policy(policy_name, {"RestartPod": {"risk": "low", "mode": "auto"}})
        memory = {"leadTime": "2m", "window": "1m", "interval": "2s"}  # the default query: cAdvisor's
        service = workload.replicated_service(
            workloads,
            "leaky",
            memory=f"{limit_mib}Mi",
            env={"APP_LEAK_MB_PER_S": str(leak_mib)},
            replicas={"min": 1, "max": 1, "desired": 1},
            healing={"predictiveMaintenance": {"memory": memory}},
            approvals={"policy": policy_name},
        )
        _apply(local_cluster, namespace, policy, service)
        (first,) = wait_for(
            lambda: (pods := _pods(local_cluster, namespace, "leaky")) and all(map(_ready, pods)) and pods,
            timeout=120,
            what="the leaking pod Ready",
        )
        name = first["metadata"]["name"]
        scraped = (
            f'container_memory_working_set_bytes{{namespace="{namespace}",pod="{name}",container="app"}}'
        )
        wait_for(
            lambda: _query(server, scraped), timeout=60, what="Prometheus scraping the pod's cAdvisor memory"
        )

        def flagged() -> dict[str, Any] | None:
            maintenance = (_rsvc(local_cluster, namespace, "leaky").get("status") or {}).get(
                "maintenance"
            ) or {}
            return next((r for r in maintenance.get("requests") or [] if r.get("pod") == name), None)

        request = wait_for(flagged, timeout=150, interval=1, what="a PredictedExhaustion request")
        flagged_at = time.time()
        assert (request["cause"], request["action"]) == ("PredictedExhaustion", "RestartPod")
        working_set = float(_query(server, scraped)[0]["value"][1])

        def replaced() -> dict[str, Any] | None:
            pods = _pods(local_cluster, namespace, "leaky")
            return (
                pods[0]
                if len(pods) == 1 and pods[0]["metadata"]["name"] != name and _ready(pods[0])
                else None
            )

        second = wait_for(replaced, timeout=60, what="the leaking pod replaced")
        replaced_at = time.time()
        # The truth: where the leak would have hit the limit, from the memory it had when flagged.
        oom_at = flagged_at + (limit_mib * 2**20 - working_set) / (leak_mib * 2**20)
        assert replaced_at < oom_at, "replaced only after the leak would have reached the limit"
        gone = get_json(local_cluster, "pod", name, "-n", namespace)
        for c in ((gone or {}).get("status") or {}).get("containerStatuses") or []:
            assert "OOMKilled" not in json.dumps(c), c
        # The pod goes first, then the status records it: wait for the record.
        history = wait_for(
            lambda: _history(local_cluster, namespace, "leaky"), timeout=30, what="the restart recorded"
        )
        assert [(r["action"], r["target"]) for r in history][:1] == [
            ("RestartPod", f"Pod/{namespace}/{name}")
        ], history
        print(
            f"cAdvisor leak: flagged at {working_set / 2**20:.0f} MiB of {limit_mib} MiB, "
            f"{oom_at - flagged_at:.0f} s before the limit; replaced {replaced_at - flagged_at:.1f} s later "
            f"by {second['metadata']['name']}"
        )
        assert operator.alive()
    finally:
        operator.stop()
        server.cleanup()


def _query(server: prom.PrometheusServer, query: str) -> list[dict[str, Any]]:
    url = f"{server.url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    try:
        with urllib.request.urlopen(url, timeout=5) as res:
            return list(json.load(res)["data"]["result"])
    except OSError:
        return []
