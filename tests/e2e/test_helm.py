"""`helm install` of the chart on a real API server, and the chart's RBAC actually sufficing.

Pods do not execute under KWOK, so the operator the chart deploys never really runs; the
API server still admits (or refuses) its pod under Pod Security "restricted". To prove the
chart's permissions are enough, the operator runs as a local process with a token of the
chart's ServiceAccount and must do its whole job with it.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cluster import local
from conftest import REPO, Cluster, OperatorProcess, get_json, wait_for
from test_reconciler import apply, events, wait_ready, web_manifest

pytestmark = pytest.mark.e2e


def helm(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    exe = local.tool("helm")
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "HELM_CACHE_HOME": str(local.CACHE / "helm")}
    res = subprocess.run([exe, *args], capture_output=True, text=True, env=env, timeout=180, check=False)
    assert res.returncode == 0, res.stderr
    return res


@pytest.fixture
def installed(cluster: Cluster, crds_installed: None) -> Iterator[tuple[str, str]]:
    suffix = uuid.uuid4().hex[:6]
    system, workload = f"homeostat-system-{suffix}", f"sa-{suffix}"
    for ns in (system, workload):
        cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("label", "namespace", system, "pod-security.kubernetes.io/enforce=restricted")
    helm(
        cluster,
        "install",
        "hs",
        str(REPO / "charts" / "homeostat"),
        "-n",
        system,
        "--set",
        f"watchNamespaces={{{workload}}}",
        "--wait=false",
    )
    yield system, workload
    helm(cluster, "uninstall", "hs", "-n", system)
    for ns in (system, workload):
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_operator_pod_is_admitted_under_restricted(cluster: Cluster, installed: tuple[str, str]) -> None:
    system, _ = installed

    def pod() -> dict[str, object] | None:
        pods = get_json(cluster, "pods", "-n", system, "-l", "app.kubernetes.io/name=homeostat")
        return pods["items"][0] if pods and pods["items"] else None

    body = wait_for(pod, timeout=60, what="operator pod admitted")
    assert body["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True  # type: ignore[index]
    replica_sets = get_json(cluster, "events", "-n", system, "--field-selector", "reason=FailedCreate")
    assert replica_sets is not None
    assert replica_sets["items"] == [], [e["message"] for e in replica_sets["items"]]


def _token_kubeconfig(cluster: Cluster, system: str, path: Path) -> Path:
    token = cluster.kubectl("create", "token", "hs-homeostat", "-n", system, "--duration=1h").stdout.strip()
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    context = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    server = next(c for c in config["clusters"] if c["name"] == context["context"]["cluster"])
    cluster_entry = dict(server["cluster"])
    if "certificate-authority" in cluster_entry:
        ca = Path(cluster_entry.pop("certificate-authority")).read_bytes()
        cluster_entry["certificate-authority-data"] = base64.b64encode(ca).decode()
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster_entry}],
                "users": [{"name": "operator", "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "operator"}}],
                "current-context": "sa",
            }
        )
    )
    path.chmod(0o600)
    return path


def test_service_account_permissions_suffice(
    cluster: Cluster, installed: tuple[str, str], tmp_path: Path
) -> None:
    system, workload = installed
    kubeconfig = _token_kubeconfig(cluster, system, tmp_path / "sa.kubeconfig")
    operator = OperatorProcess(kubeconfig, tmp_path / "operator.log", ("--namespace", workload)).start()
    try:
        apply(cluster, workload, web_manifest())
        wait_ready(cluster, workload)
        cluster.kubectl("scale", "deployment", "web", "-n", workload, "--replicas=1")

        def reverted() -> bool:
            dep = get_json(cluster, "deployment", "web", "-n", workload) or {}
            return bool(dep.get("spec", {}).get("replicas") == 3)

        wait_for(reverted, what="drift reverted with the chart's permissions")
        assert {"Created", "Ready"} <= {e["reason"] for e in events(cluster, workload)}
        logs = operator.logs()
        assert "Forbidden" not in logs and " 403" not in logs, logs[-3000:]
        assert operator.alive()
    finally:
        operator.stop()
    # The token must never reach the logs.
    token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
    assert token not in operator.logs()
    assert json.dumps(token)[1:-1] not in operator.logs()
