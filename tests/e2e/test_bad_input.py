"""Bad input against the real API server and a running operator: each object is refused or
reported by name, and the operator goes on serving the others (issue 14).

The API server stores JSON up to 10000 levels deep wherever the schema keeps unknown fields (most
of a pod spec). Such an object must get a status that names the field, not break the process
that decodes, copies and diffs it by recursion.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from conftest import Cluster, OperatorProcess, get_json, wait_for

pytestmark = pytest.mark.e2e


def _nested_json(depth: int) -> str:
    """JSON nested ``depth`` levels deep, written flat: encoding it would recurse."""
    return '{"a":' * depth + '"x"' + "}" * depth


def _service(name: str, junk: Any = None, desired: int = 1) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": "registry.k8s.io/pause:3.10"}
    if junk is not None:
        container["junk"] = junk
    return {
        "apiVersion": "homeostat.dev/v1alpha1",
        "kind": "ReplicatedService",
        "metadata": {"name": name},
        "spec": {
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}},
            "replicas": {"min": 1, "max": 5, "desired": desired},
        },
    }


def _status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    # Only the status: the whole object would be too deep for this process's JSON decoder too.
    out = cluster.kubectl("get", "rsvc", name, "-n", namespace, "-o", "jsonpath={.status}", check=False)
    return dict(json.loads(out.stdout)) if out.returncode == 0 and out.stdout.strip() else {}


def _replicas(cluster: Cluster, namespace: str, name: str) -> int | None:
    body = get_json(cluster, "deployment", name, "-n", namespace)
    return None if body is None else int(body["spec"]["replicas"])


@pytest.mark.parametrize("depth", [600, 9000])
def test_a_service_nested_thousands_deep_is_invalid_by_name_and_the_others_are_served(
    cluster: Cluster, namespace: str, operator_process: OperatorProcess, depth: int
) -> None:
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(_service("ok")))
    wait_for(
        lambda: _replicas(cluster, namespace, "ok") == 1, timeout=60, what="the healthy service's Deployment"
    )
    deep = f"deep{depth}"
    manifest = json.dumps(_service(deep, "JUNK")).replace('"JUNK"', _nested_json(depth))
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=manifest)
    status = wait_for(
        lambda: (s := _status(cluster, namespace, deep)).get("phase") == "InvalidSpec" and s,
        timeout=60,
        what=f"{deep} reported InvalidSpec",
    )
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "InvalidSpec", degraded
    assert "spec.template.spec.containers[0].junk.a.a" in degraded["message"], degraded
    assert "nested more than 32 levels" in degraded["message"]
    assert get_json(cluster, "deployment", deep, "-n", namespace) is None, "a child of an invalid spec"
    # The others are still served: a change to the healthy service reaches its Deployment.
    cluster.kubectl(
        "patch", "rsvc", "ok", "-n", namespace, "--type=merge", "-p", '{"spec":{"replicas":{"desired":2}}}'
    )
    wait_for(lambda: _replicas(cluster, namespace, "ok") == 2, timeout=60, what="the healthy service scaled")
    # Reported once, not retried hot: the status stays as it was written.
    written = _status(cluster, namespace, deep)
    time.sleep(3)
    assert _status(cluster, namespace, deep) == written
    log = operator_process.logs()
    assert "RecursionError" not in log, log[-3000:]
    assert operator_process.alive()


def _container(**fields: Any) -> dict[str, Any]:
    return {"name": "app", "image": "registry.k8s.io/pause:3.10", **fields}


def _with(name: str, pod: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    body = _service(name)
    body["spec"]["template"] = {"metadata": {"labels": labels or {"app": name}}, "spec": pod}
    return body


@pytest.mark.parametrize(
    ("name", "pod", "labels", "field"),
    [
        # Issue 14.10: unknown to the Deployment's schema, refused by server-side apply as a 500.
        (
            "typo",
            {"nodeSelectr": {"a": "b"}, "containers": [_container()]},
            None,
            "spec.template.spec.nodeSelectr",
        ),
        (
            "env-type",
            {"containers": [_container(env=[{"name": "X", "value": 5}])]},
            None,
            'spec.template.spec.containers[name="app"].env[name="X"].value',
        ),
        # Issue 14.13: the API server says spec.template.labels, and names no field for a quantity.
        ("label", {"containers": [_container()]}, {"app": "bad label!"}, "spec.template.metadata.labels"),
        (
            "quantity",
            {"containers": [_container(resources={"limits": {"memory": "1.5.5"}})]},
            None,
            "spec.template.spec.containers[0].resources.limits.memory",
        ),
    ],
)
def test_a_template_the_api_server_refuses_is_invalid_by_the_services_field_once(
    cluster: Cluster,
    namespace: str,
    operator_process: OperatorProcess,
    name: str,
    pod: dict[str, Any],
    *,
    labels: dict[str, str] | None,
    field: str,
) -> None:
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(_with(name, pod, labels)))
    status = wait_for(
        lambda: (s := _status(cluster, namespace, name)).get("phase") == "InvalidSpec" and s,
        timeout=60,
        what=f"{name} reported InvalidSpec",
    )
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["message"].startswith(field), degraded
    # A permanent error: not retried as a temporary one, and the status is not rewritten.
    time.sleep(4)
    assert _status(cluster, namespace, name) == status
    retried = [
        line
        for line in operator_process.logs().splitlines()
        if "failed temporarily" in line and f"/{name}" in line
    ]
    assert not retried, retried[:3]


def test_a_pod_annotation_with_an_emoji_is_applied_as_written(
    cluster: Cluster, namespace: str, operator_process: OperatorProcess
) -> None:
    """Issue 14.9: the apply body's ASCII escapes of the emoji broke the API server's YAML reader."""
    body = _with("emoji", {"containers": [_container()]})
    body["spec"]["template"]["metadata"]["annotations"] = {"note": "party \U0001f389 ünïcode"}
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(body))

    def annotated() -> str | None:
        deployment = get_json(cluster, "deployment", "emoji", "-n", namespace) or {}
        meta = ((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}
        return (meta.get("annotations") or {}).get("note")

    assert (
        wait_for(annotated, timeout=60, what="the Deployment with the annotation")
        == "party \U0001f389 ünïcode"
    )
    wait_for(lambda: _status(cluster, namespace, "emoji").get("phase") == "Ready", timeout=60, what="Ready")
