"""Healing actions against the Kubernetes API: delete and evict pods, cordon nodes, scale, edit
the template, and ask the rollout machinery for a rollback.

Evictions go through the Eviction API (policy/v1), never a plain delete, so PodDisruptionBudgets
are honoured; a 429 means the budget would be broken and the drain stops there. Every call
reuses ``adapters.kube``'s request handling (worker thread, timeouts, error mapping).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import kubernetes

from homeostat import ports
from homeostat.adapters import kube
from homeostat.core import approval as appr
from homeostat.core import children as kids
from homeostat.core import delivery
from homeostat.core import remediation as rem
from homeostat.core import spec as specs

MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
_MIRROR = "kubernetes.io/config.mirror"


def _status_code(exc: ports.Unavailable) -> str:
    return str(exc).split(":", 1)[0]


class KubernetesHealing:
    """``ports.HealingActions`` over the official client."""

    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self._calls = kube.KubernetesWorkloads(api)

    async def _call(
        self, path: str, method: str, body: Any = None, content_type: str | None = None, **kw: Any
    ) -> Any:
        return await asyncio.to_thread(self._calls._call, path, method, body, content_type, kw.get("query"))

    async def delete_pod(self, namespace: str, name: str, *, force: bool) -> bool:
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if force:
            # The node stopped answering, so no kubelet will ever confirm a graceful stop.
            body["gracePeriodSeconds"] = 0
        try:
            await self._call(
                f"/api/v1/namespaces/{namespace}/pods/{name}", "DELETE", body, "application/json"
            )
        except ports.Unavailable as exc:
            if _status_code(exc) == "404":
                return False
            raise
        return True

    async def cordon(self, node: str) -> None:
        await self._call(f"/api/v1/nodes/{node}", "PATCH", {"spec": {"unschedulable": True}}, MERGE)

    async def drain(self, node: str) -> int:
        await self.cordon(node)
        query = [("fieldSelector", f"spec.nodeName={node}")]
        listed = await self._call("/api/v1/pods", "GET", query=query)
        evicted = 0
        for pod in (listed or {}).get("items") or []:
            if not _evictable(pod):
                continue
            meta = pod["metadata"]
            eviction = {
                "apiVersion": "policy/v1",
                "kind": "Eviction",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            }
            path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/eviction"
            try:
                await self._call(path, "POST", eviction, "application/json")
            except ports.Unavailable as exc:
                code = _status_code(exc)
                if code == "404":
                    continue  # gone already
                if code == "429":
                    raise ports.EvictionRefused(
                        f"evicting {meta['namespace']}/{meta['name']} from {node} would violate a "
                        f"PodDisruptionBudget; drain stopped after {evicted} eviction(s)"
                    ) from None
                raise
            evicted += 1
        return evicted

    async def scale(self, namespace: str, service: str, replicas: int) -> None:
        path = kube._path(kids.API_VERSION, kids.KIND, namespace, service) + "/scale"
        await self._call(path, "PATCH", {"spec": {"replicas": replicas}}, MERGE)

    async def set_memory_limit(self, namespace: str, service: str, container: str, limit: str) -> None:
        path = kube._path(kids.API_VERSION, kids.KIND, namespace, service)
        body = await self._call(path, "GET")
        operations = memory_patch(body, container, limit)
        if operations:
            await self._call(path, "PATCH", operations, JSON_PATCH)

    async def approval(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """An Approval object as stored, or None when it does not exist."""
        path = f"/apis/{appr.API_VERSION}/namespaces/{namespace}/{appr.PLURAL}/{name}"
        try:
            return dict(await self._call(path, "GET"))
        except ports.Unavailable as exc:
            if _status_code(exc) == "404":
                return None
            raise

    async def rollback(self, namespace: str, service: str, command_id: str) -> None:
        path = kube._path(kids.API_VERSION, kids.KIND, namespace, service)
        patch = {"metadata": {"annotations": {delivery.ANNOTATION_COMMAND: f"abort/{command_id}"}}}
        await self._call(path, "PATCH", patch, MERGE)


def _evictable(pod: Mapping[str, Any]) -> bool:
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp") or _MIRROR in (meta.get("annotations") or {}):
        return False
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return False
    return not any(ref.get("kind") == "DaemonSet" for ref in meta.get("ownerReferences") or [])


def memory_patch(service: Mapping[str, Any], container: str, limit: str) -> list[dict[str, Any]]:
    """A JSON patch raising ``container``'s memory limit to ``limit`` (and its request by the same
    ratio, never above the limit), guarded by the resourceVersion read: a concurrent edit makes
    the API server refuse it instead of being overwritten. Empty when already at least ``limit``."""
    containers = (((service.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
        "containers"
    ) or []
    wanted = specs.quantity(limit)
    for index, spec in enumerate(containers):
        if spec.get("name") != container:
            continue
        resources = spec.get("resources") or {}
        current = specs.quantity((resources.get("limits") or {}).get("memory"))
        if wanted is None or current is None or current >= wanted:
            return []
        base = f"/spec/template/spec/containers/{index}/resources"
        ops: list[dict[str, Any]] = [
            {
                "op": "test",
                "path": "/metadata/resourceVersion",
                "value": service["metadata"]["resourceVersion"],
            },
            {"op": "replace", "path": f"{base}/limits/memory", "value": limit},
        ]
        request = specs.quantity((resources.get("requests") or {}).get("memory"))
        if request is not None:
            ops.append(
                {
                    "op": "replace",
                    "path": f"{base}/requests/memory",
                    "value": rem.mebibytes(min(wanted, request * wanted / current)),
                }
            )
        return ops
    return []
