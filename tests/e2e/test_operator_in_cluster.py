"""The operator as users run it: `helm install` of the chart, from its image, in a pod.

On the local cluster the pod runs on the real node (kubelet + containerd), in a namespace that
enforces Pod Security "restricted", with the chart's ServiceAccount as its only credential. What a
process on the host cannot show is checked here: the pod turns Ready through its own probes, its
logs are JSON, Prometheus scrapes it and Slack reaches it through the chart's Service, two
replicas hand over when the active pod is killed, an upgrade of the image in the middle of a
canary lets the canary finish, and uninstalling leaves the services' workloads in place.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import prom
from cluster import local
from conftest import REPO, Cluster, Workloads, get_json, wait_for
from slack import server as fake
from test_reconciler import apply, wait_ready, web_manifest
from test_rollouts import status, wait_phase

pytestmark = pytest.mark.e2e

SIGNING = f"signing-{uuid.uuid4().hex}"
TOKEN = f"xoxb-{uuid.uuid4().hex}"
POD_LABEL = "app.kubernetes.io/name=homeostat"


def helm(cluster: Cluster, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "HELM_CACHE_HOME": str(local.CACHE / "helm")}
    res = subprocess.run(
        [local.tool("helm"), *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    assert res.returncode == 0, res.stderr
    return res


@dataclasses.dataclass(frozen=True)
class Release:
    system: str
    workload: str

    def pods(self, cluster: Cluster) -> list[dict[str, Any]]:
        listing = get_json(cluster, "pods", "-n", self.system, "-l", POD_LABEL) or {}
        return [p for p in listing.get("items", []) if not p["metadata"].get("deletionTimestamp")]


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _install(cluster: Cluster, workloads: Workloads, *values: str) -> Release:
    suffix = uuid.uuid4().hex[:6]
    release = Release(f"hs-sys-{suffix}", f"hsw-{suffix}")
    for ns in (release.system, release.workload):
        cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("label", "namespace", release.system, "pod-security.kubernetes.io/enforce=restricted")
    cluster.kubectl(
        "create", "secret", "generic", "slack", "-n", release.system,
        f"--from-literal=bot-token={TOKEN}", f"--from-literal=signing-secret={SIGNING}",
    )  # fmt: skip
    sets = [
        f"watchNamespaces={{{release.workload}}}",
        "slack.existingSecret=slack",
        *workloads.helm_values(),
        *values,
    ]
    helm(
        cluster, "install", "hs", str(REPO / "charts" / "homeostat"), "-n", release.system,
        *(arg for value in sets for arg in ("--set", value)), "--wait", "--timeout", "4m",
    )  # fmt: skip
    return release


def _uninstall(cluster: Cluster, release: Release) -> None:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    subprocess.run(
        [local.tool("helm"), "uninstall", "hs", "-n", release.system], env=env, capture_output=True
    )
    for ns in (release.system, release.workload):
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(scope="module")
def release(cluster: Cluster, crds_installed: None, workloads: Workloads) -> Iterator[Release]:
    installed = _install(cluster, workloads)
    yield installed
    _uninstall(cluster, installed)


def _service_ip(cluster: Cluster, release: Release) -> str:
    return str(
        (get_json(cluster, "service", "hs-homeostat", "-n", release.system) or {})["spec"]["clusterIP"]
    )


def test_the_pod_turns_ready_through_its_probes_and_reconciles_with_its_service_account(
    cluster: Cluster, release: Release, workloads: Workloads
) -> None:
    (pod,) = release.pods(cluster)
    assert _ready(pod)
    container = pod["spec"]["containers"][0]
    assert container["image"] == workloads.operator_image
    assert container["readinessProbe"] and container["livenessProbe"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    if workloads.node_selector:
        assert pod["spec"]["nodeName"].endswith("-real"), pod["spec"]["nodeName"]
    apply(cluster, release.workload, web_manifest())
    wait_ready(cluster, release.workload)
    cluster.kubectl("scale", "deployment", "web", "-n", release.workload, "--replicas=1")
    wait_for(
        lambda: (
            (get_json(cluster, "deployment", "web", "-n", release.workload) or {})
            .get("spec", {})
            .get("replicas")
            == 3
        ),
        what="drift reverted by the in-cluster operator",
    )
    (pod,) = release.pods(cluster)
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0


def test_kubectl_logs_shows_json_lines(cluster: Cluster, release: Release) -> None:
    apply(cluster, release.workload, web_manifest("logged"))
    wait_ready(cluster, release.workload, "logged")
    logs = cluster.kubectl("logs", "-n", release.system, "deployment/hs-homeostat").stdout
    lines = [line for line in logs.splitlines() if line.strip()]
    assert lines
    records = [json.loads(line) for line in lines]  # every line, or this raises
    assert any(release.workload in json.dumps(r) for r in records)
    assert TOKEN not in logs and SIGNING not in logs


def test_prometheus_scrapes_metrics_through_the_chart_service(cluster: Cluster, release: Release) -> None:
    prom.need_prometheus()
    server = prom.PrometheusServer([f"{_service_ip(cluster, release)}:8080"]).start()
    try:

        def scraped() -> bool:
            query = 'count({job="homeostat-sim", __name__=~"homeostat_.+"})'
            url = f"{server.url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
            with urllib.request.urlopen(url, timeout=5) as res:
                result = json.load(res)["data"]["result"]
            return bool(result) and float(result[0]["value"][1]) > 0

        wait_for(scraped, timeout=60, what="homeostat_* series scraped through the Service")
    finally:
        server.stop()


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as res:
            return res.status, res.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_a_signed_slack_click_reaches_the_pod_through_the_service(cluster: Cluster, release: Release) -> None:
    url = f"http://{_service_ip(cluster, release)}:8080/slack/interactions"
    body = fake.click_body(release.workload, "no-such-approval", "U0APPROVER")
    forged = fake.signed_headers("not-the-secret", body)
    assert _post(url, body, forged)[0] == 401
    status, text = _post(url, body, fake.signed_headers(SIGNING, body))
    # Past the signature check, the handler looked the Approval up with the pod's credentials.
    assert status == 404 and "no approval" in text, (status, text)


def test_uninstall_leaves_the_services_workloads_in_place(cluster: Cluster, release: Release) -> None:
    apply(cluster, release.workload, web_manifest("kept"))
    wait_ready(cluster, release.workload, "kept")
    helm(cluster, "uninstall", "hs", "-n", release.system, "--wait")
    wait_for(lambda: not release.pods(cluster), timeout=60, what="operator pod gone")
    for kind in ("deployment", "service", "rsvc"):
        assert get_json(cluster, kind, "kept", "-n", release.workload), f"{kind}/kept was removed"


def _active(cluster: Cluster, release: Release) -> str | None:
    """The pod whose newest peering message says it resumed: kopf pauses every other peer."""
    for pod in release.pods(cluster):
        name = pod["metadata"]["name"]
        logs = cluster.kubectl("logs", "-n", release.system, name, check=False).stdout
        said = [
            line
            for line in logs.splitlines()
            if "operations" in line and ("Resuming" in line or "Pausing" in line)
        ]
        if said and "Resuming" in said[-1]:
            return str(name)
    return None


def _resumptions(cluster: Cluster, release: Release, pod: str) -> int:
    logs = cluster.kubectl("logs", "-n", release.system, pod, check=False).stdout
    return sum("Resuming operations" in line for line in logs.splitlines())


def test_with_two_replicas_killing_the_active_pod_hands_over(
    cluster: Cluster, crds_installed: None, workloads: Workloads
) -> None:
    release = _install(cluster, workloads, "replicas=2")
    try:
        wait_for(
            lambda: len([p for p in release.pods(cluster) if _ready(p)]) == 2, timeout=120, what="two Ready"
        )
        apply(cluster, release.workload, web_manifest())
        wait_ready(cluster, release.workload)
        active = wait_for(lambda: _active(cluster, release), timeout=60, what="one active replica")
        standby = next(
            p["metadata"]["name"] for p in release.pods(cluster) if p["metadata"]["name"] != active
        )
        resumed = _resumptions(cluster, release, standby)
        killed = time.monotonic()
        # A graceful delete returns once the kubelet has stopped the container: nothing of the
        # active operator runs after this line.
        cluster.kubectl("delete", "pod", active, "-n", release.system, "--wait=true", timeout=120)
        gone = time.monotonic()
        cluster.kubectl("scale", "deployment", "web", "-n", release.workload, "--replicas=1")
        wait_for(
            lambda: (
                (get_json(cluster, "deployment", "web", "-n", release.workload) or {})["spec"]["replicas"]
                == 3
            ),
            timeout=120,
            what="drift reverted after the active pod was killed",
        )
        print(
            f"handover: active pod gone {gone - killed:.1f} s after the delete, "
            f"drift reverted {time.monotonic() - gone:.1f} s later"
        )
        assert _resumptions(cluster, release, standby) > resumed, "the standby never took over"
    finally:
        _uninstall(cluster, release)


def test_helm_upgrade_to_a_new_image_in_the_middle_of_a_canary_lets_it_finish(
    cluster: Cluster, crds_installed: None, workloads: Workloads
) -> None:
    release = _install(cluster, workloads)
    try:
        canary = {
            "strategy": "Canary",
            "canary": {"steps": [{"weight": 25, "pause": "20s"}, {"weight": 50, "pause": "5s"}]},
        }
        body = web_manifest("shop", rollout=canary)
        apply(cluster, release.workload, body)
        old = wait_phase(cluster, release.workload, "shop", "Promoted")["rollout"]["stableRevision"]
        body["spec"]["template"]["metadata"]["labels"]["version"] = "2"
        apply(cluster, release.workload, body)
        wait_for(
            lambda: get_json(cluster, "deployment", "shop-canary", "-n", release.workload),
            timeout=60,
            what="canary track",
        )
        upgraded = workloads.upgrade_image
        helm(
            cluster, "upgrade", "hs", str(REPO / "charts" / "homeostat"), "-n", release.system,
            "--reuse-values", "--set", f"image.tag={upgraded.rpartition(':')[2]}", "--wait", "--timeout=4m",
        )  # fmt: skip
        (pod,) = release.pods(cluster)
        assert pod["spec"]["containers"][0]["image"] == upgraded
        # The new pod found the rollout mid-way (the first pause is 20 s) and took it to the end.
        assert status(cluster, release.workload, "shop")["rollout"]["stableRevision"] == old
        wait_for(
            lambda: (
                (rollout := status(cluster, release.workload, "shop").get("rollout") or {}).get("phase")
                == "Promoted"
                and rollout.get("stableRevision") != old
            ),
            timeout=180,
            what="the canary promoted by the upgraded operator",
        )
        assert get_json(cluster, "deployment", "shop-canary", "-n", release.workload) is None
    finally:
        _uninstall(cluster, release)
