"""The pure parts of the healing adapter: the memory-limit JSON patch and which pods a drain evicts.

The calls themselves are exercised against a real API server in tests/e2e/test_healing.py; these
rows pin the details a cluster rarely shows (no request to scale, an unknown container, a limit
that is already high enough, DaemonSet and mirror pods).
"""

from __future__ import annotations

from typing import Any

import pytest

from homeostat.adapters import kube_healing

APP = "/spec/template/spec/containers/1"


def service(resources: dict[str, Any]) -> dict[str, Any]:
    containers = [
        {"name": "sidecar", "image": "x"},
        {"name": "app", "image": "y", "resources": resources},
    ]
    return {"metadata": {"resourceVersion": "42"}, "spec": {"template": {"spec": {"containers": containers}}}}


@pytest.mark.parametrize(
    ("resources", "limit", "expected"),
    [
        (
            {"limits": {"memory": "64Mi"}, "requests": {"memory": "32Mi"}},
            "96Mi",
            [
                {"op": "test", "path": f"{APP}/name", "value": "app"},
                {"op": "test", "path": f"{APP}/resources/limits/memory", "value": "64Mi"},
                {"op": "replace", "path": f"{APP}/resources/limits/memory", "value": "96Mi"},
                {"op": "test", "path": f"{APP}/resources/requests/memory", "value": "32Mi"},
                {"op": "replace", "path": f"{APP}/resources/requests/memory", "value": "48Mi"},
            ],
        ),
        (
            {"limits": {"memory": "1Gi"}},
            "1536Mi",
            [
                {"op": "test", "path": f"{APP}/name", "value": "app"},
                {"op": "test", "path": f"{APP}/resources/limits/memory", "value": "1Gi"},
                {"op": "replace", "path": f"{APP}/resources/limits/memory", "value": "1536Mi"},
            ],
        ),
        ({"limits": {"memory": "128Mi"}}, "96Mi", []),  # already at least that much: idempotent
        ({}, "96Mi", []),  # no limit to raise
    ],
)
def test_memory_patch(resources: dict[str, Any], limit: str, expected: list[dict[str, Any]]) -> None:
    assert kube_healing.memory_patch(service(resources), "app", limit) == expected


def test_memory_patch_of_an_unknown_container_is_empty() -> None:
    assert kube_healing.memory_patch(service({"limits": {"memory": "64Mi"}}), "nope", "96Mi") == []


OWNED = [{"kind": "ReplicaSet", "controller": True}]


def pod(**meta: Any) -> dict[str, Any]:
    phase = meta.pop("phase", "Running")
    return {"metadata": {"name": "p", "namespace": "n", **meta}, "status": {"phase": phase}}


@pytest.mark.parametrize(
    ("body", "evict"),
    [
        (pod(), False),  # no controller: nothing would recreate it
        (pod(ownerReferences=[{"kind": "ReplicaSet"}]), False),  # an owner, but not a controller
        (pod(ownerReferences=[{"kind": "ReplicaSet", "controller": True}]), True),
        (pod(ownerReferences=[{"kind": "DaemonSet", "controller": True}]), False),
        (pod(annotations={"kubernetes.io/config.mirror": "x"}), False),
        (pod(ownerReferences=OWNED, deletionTimestamp="2026-01-01T00:00:00Z"), False),
        (pod(ownerReferences=OWNED, phase="Succeeded"), False),
        (pod(ownerReferences=OWNED, phase="Failed"), False),
    ],
)
def test_which_pods_a_drain_evicts(body: dict[str, Any], evict: bool) -> None:
    assert kube_healing._evictable(body) is evict
