"""The reconciler end to end: kubectl apply in, Deployment/Service/PDB out, kept that way.

Runs `homeostat run` as a real process against a real API server (the local control plane, or
the cluster named by KUBECONFIG) and drives it only through kubectl, as a user would.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, Cluster, OperatorProcess, get_json, service_events, wait_for

pytestmark = pytest.mark.e2e

SERVICE_LABEL = "homeostat.dev/service"


def web_manifest(name: str = "web", **spec_overrides: Any) -> dict[str, Any]:
    body = yaml.safe_load((REPO / "examples" / "web.yaml").read_text())
    body["metadata"]["name"] = name
    body["spec"].update(spec_overrides)
    return body


def apply(cluster: Cluster, namespace: str, body: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))


def rsvc(cluster: Cluster, namespace: str, name: str = "web") -> dict[str, Any]:
    return get_json(cluster, "rsvc", name, "-n", namespace) or {}


def wait_ready(
    cluster: Cluster, namespace: str, name: str = "web", revision: str | None = None
) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        body = rsvc(cluster, namespace, name)
        status = body.get("status") or {}
        ok = (
            status.get("phase") == "Ready"
            and status.get("observedGeneration") == body["metadata"]["generation"]
        )
        if ok and (revision is None or status.get("currentRevision") == revision):
            return body
        return None

    return wait_for(ready, timeout=90, what=f"rsvc/{name} Ready")


def events(cluster: Cluster, namespace: str, name: str = "web") -> list[dict[str, Any]]:
    return service_events(cluster, namespace, name)


def children_versions(cluster: Cluster, namespace: str) -> dict[str, str]:
    versions = {}
    for kind in ("deployment", "service", "poddisruptionbudget", "rsvc"):
        body = get_json(cluster, kind, "web", "-n", namespace)
        assert body, kind
        versions[kind] = body["metadata"]["resourceVersion"]
    return versions


@pytest.fixture
def running(operator_process: OperatorProcess) -> OperatorProcess:
    assert operator_process.alive(), operator_process.logs()[-3000:]
    return operator_process


def test_apply_creates_children_and_reports_ready(
    cluster: Cluster, namespace: str, running: OperatorProcess
) -> None:
    apply(cluster, namespace, web_manifest())
    body = wait_ready(cluster, namespace)
    uid = body["metadata"]["uid"]
    status = body["status"]
    assert (status["readyReplicas"], status["desiredReplicas"]) == (3, 3)
    assert status["selector"] == f"{SERVICE_LABEL}=web"
    for kind in ("deployment", "service", "poddisruptionbudget"):
        child = get_json(cluster, kind, "web", "-n", namespace)
        assert child, kind
        owner = child["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("ReplicatedService", uid, True)
    pods = get_json(cluster, "pods", "-n", namespace, "-l", f"{SERVICE_LABEL}=web")
    assert pods
    assert len(pods["items"]) == 3
    assert all(p["status"]["phase"] == "Running" for p in pods["items"])
    reasons = {(e["type"], e["reason"]) for e in events(cluster, namespace)}
    assert {("Normal", "Created"), ("Normal", "Ready")} <= reasons

    table = cluster.kubectl("get", "rsvc", "web", "-n", namespace).stdout.splitlines()
    header = table[0].split()
    for column in ("PHASE", "READY", "DESIRED", "REVISION"):
        assert column in header, header
    row = dict(zip(header, table[1].split(), strict=False))
    assert (row["PHASE"], row["READY"], row["DESIRED"]) == ("Ready", "3", "3")
    assert row["REVISION"] == status["currentRevision"]


def test_template_change_is_a_new_revision(
    cluster: Cluster, namespace: str, running: OperatorProcess
) -> None:
    manifest = web_manifest()
    apply(cluster, namespace, manifest)
    first = wait_ready(cluster, namespace)["status"]["currentRevision"]
    changed = copy.deepcopy(manifest)
    changed["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.k8s.io/pause:3.9"
    apply(cluster, namespace, changed)

    def rolled() -> dict[str, Any] | None:
        status = rsvc(cluster, namespace).get("status") or {}
        rev = status.get("currentRevision")
        return status if rev not in (None, first) and status.get("phase") == "Ready" else None

    status = wait_for(rolled, timeout=90, what="new revision Ready")
    assert status["stableRevision"] == status["currentRevision"]
    dep = get_json(cluster, "deployment", "web", "-n", namespace)
    assert dep
    assert (
        dep["spec"]["template"]["metadata"]["labels"]["homeostat.dev/revision"] == status["currentRevision"]
    )
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.k8s.io/pause:3.9"
    pods = get_json(
        cluster, "pods", "-n", namespace, "-l", f"homeostat.dev/revision={status['currentRevision']}"
    )
    assert pods
    assert len(pods["items"]) == 3


def test_manual_drift_is_reverted(cluster: Cluster, namespace: str, running: OperatorProcess) -> None:
    apply(cluster, namespace, web_manifest())
    wait_ready(cluster, namespace)
    cluster.kubectl("scale", "deployment", "web", "-n", namespace, "--replicas=5")
    cluster.kubectl("delete", "service", "web", "-n", namespace)
    cluster.kubectl("label", "pdb", "web", "-n", namespace, "app.kubernetes.io/managed-by-", check=False)
    cluster.kubectl(
        "patch",
        "pdb",
        "web",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"maxUnavailable":2}}',
        check=False,
    )

    def restored() -> bool:
        dep = get_json(cluster, "deployment", "web", "-n", namespace)
        svc = get_json(cluster, "service", "web", "-n", namespace)
        pdb = get_json(cluster, "pdb", "web", "-n", namespace)
        return bool(
            dep
            and dep["spec"]["replicas"] == 3
            and svc
            and pdb
            and pdb["spec"].get("maxUnavailable") == 1
            and pdb["metadata"]["labels"].get("app.kubernetes.io/managed-by") == "homeostat"
        )

    wait_for(restored, timeout=60, what="children restored")
    assert ("Normal", "Updated") in {(e["type"], e["reason"]) for e in events(cluster, namespace)}


def test_scale_subresource(cluster: Cluster, namespace: str, running: OperatorProcess) -> None:
    apply(cluster, namespace, web_manifest())
    wait_ready(cluster, namespace)
    cluster.kubectl("scale", "rsvc", "web", "-n", namespace, "--replicas=5")
    wait_for(
        lambda: (rsvc(cluster, namespace).get("status") or {}).get("readyReplicas") == 5,
        timeout=60,
        what="5 ready replicas after kubectl scale",
    )
    scale = json.loads(
        cluster.kubectl(
            "get",
            "--raw",
            f"/apis/homeostat.dev/v1alpha1/namespaces/{namespace}/replicatedservices/web/scale",
        ).stdout
    )
    assert scale["spec"]["replicas"] == 5
    assert scale["status"]["replicas"] == 5
    # Outside the bounds is refused by the API server, not silently clamped.
    res = cluster.kubectl("scale", "rsvc", "web", "-n", namespace, "--replicas=50", check=False)
    assert res.returncode != 0
    assert "replicas" in res.stderr


def test_delete_removes_children(cluster: Cluster, namespace: str, running: OperatorProcess) -> None:
    apply(cluster, namespace, web_manifest())
    wait_ready(cluster, namespace)
    cluster.kubectl("delete", "rsvc", "web", "-n", namespace, "--wait=true", timeout=60)

    def gone() -> bool:
        return all(
            get_json(cluster, kind, "web", "-n", namespace) is None
            for kind in ("deployment", "service", "pdb")
        )

    wait_for(gone, timeout=60, what="children garbage-collected")


def test_unusable_template_is_a_condition_not_a_crash(
    cluster: Cluster, namespace: str, running: OperatorProcess
) -> None:
    bad = web_manifest("bad")
    # Passes the CRD (the pod spec is preserved as given) but the Deployment API refuses it.
    bad["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "lots"}}
    apply(cluster, namespace, bad)

    def invalid() -> dict[str, Any] | None:
        status = rsvc(cluster, namespace, "bad").get("status") or {}
        return status if status.get("phase") == "InvalidSpec" else None

    status = wait_for(invalid, timeout=60, what="InvalidSpec condition")
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert "cpu" in degraded["message"] or "quantities" in degraded["message"]
    assert ("Warning", "InvalidSpec") in {(e["type"], e["reason"]) for e in events(cluster, namespace, "bad")}
    # Fixing the spec recovers, and the operator never went down in between.
    apply(cluster, namespace, web_manifest("bad"))
    wait_ready(cluster, namespace, "bad")
    assert running.alive()


def test_restart_makes_no_changes(cluster: Cluster, tmp_path: Path) -> None:
    """An operator restart must not rewrite children or start a spurious rollout."""
    namespace = f"r-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", namespace)
    first = OperatorProcess(cluster.kubeconfig, tmp_path / "first.log", ("--namespace", namespace)).start()
    try:
        apply(cluster, namespace, web_manifest())
        wait_ready(cluster, namespace)
        time.sleep(3)  # let trailing child events settle
        before = children_versions(cluster, namespace)
        events_before = len(events(cluster, namespace))
        first.kill()  # SIGKILL: no graceful shutdown
        second = OperatorProcess(
            cluster.kubeconfig, tmp_path / "second.log", ("--namespace", namespace, "--log-level", "debug")
        ).start()
        try:
            wait_for(lambda: "0 applied, status unchanged" in second.logs(), timeout=60, what="resume")
            time.sleep(5)
            assert children_versions(cluster, namespace) == before
            assert len(events(cluster, namespace)) == events_before
            assert second.alive()
        finally:
            second.stop()
    finally:
        first.kill()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
