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
