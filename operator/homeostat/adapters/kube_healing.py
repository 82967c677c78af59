"""Healing actions against the Kubernetes API: delete and evict pods, cordon nodes, scale, edit
the template, and ask the rollout machinery for a rollback.

Evictions go through the Eviction API (policy/v1), never a plain delete, so PodDisruptionBudgets
are honoured; a 429 means the budget would be broken and the drain stops there. Every call
reuses ``adapters.kube``'s request handling (timeouts, error mapping).

An operator installed for a few namespaces may not be allowed to list or evict pods anywhere
else (ADR 0014). Given those namespaces (``drain_namespaces``), a drain cordons the node, evicts
only the pods of those namespaces and says that the rest were left in place, instead of failing
on a cluster-wide list it has no right to.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

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
    """``ports.HealingActions`` over ``adapters.kube``."""

    def __init__(self, client: kube.Client, *, drain_namespaces: Sequence[str] = ()) -> None:
        """``drain_namespaces``: the namespace patterns (``--namespace`` values: names, globs,
        ``!exclusions``) a drain is confined to; empty drains pods of every namespace."""
        self._calls = kube.KubernetesWorkloads(client)
        self.drain_namespaces = tuple(drain_namespaces)

    async def _call(
        self, path: str, method: str, body: Any = None, content_type: str | None = None, **kw: Any
    ) -> Any:
        return await self._calls._call(path, method, body, content_type, kw.get("query"))

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

    async def drain(self, node: str) -> ports.Drained:
        await self.cordon(node)
        query = [("fieldSelector", f"spec.nodeName={node}")]
        if not self.drain_namespaces:
            try:
                listed = await self._call("/api/v1/pods", "GET", query=query)
            except ports.Unavailable as exc:
                if _status_code(exc) != "403":
                    raise
                raise ports.Unavailable(
                    f"403: not allowed to list the pods of every namespace on {node}: grant it (chart "
                    "value healing.drainAllNamespaces) or confine drains with --drain-scope=watched"
                ) from None
            pods = list((listed or {}).get("items") or [])
            namespaces: tuple[str, ...] = ()
        else:
            namespaces = await self._drained_namespaces()
            pods = []
            for namespace in namespaces:
                path = f"/api/v1/namespaces/{namespace}/pods"
                pods.extend(((await self._call(path, "GET", query=query)) or {}).get("items") or [])
        evicted = 0
        scoped = in_scope_pods(pods, self.drain_namespaces)
        unmanaged = tuple(
            f"{p['metadata'].get('namespace')}/{p['metadata'].get('name')}"
            for p in scoped
            if _running(p) and not _controller(p)
        )
        for meta in evictions(scoped):  # already in scope: no patterns to judge again
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
        return ports.Drained(evicted, namespaces, unmanaged)

    async def _drained_namespaces(self) -> tuple[str, ...]:
        """The existing namespaces the patterns name. Exact names need no lookup (a namespaced
        install's Roles are per name); globs are matched against the namespace list, which a
        namespaced operator may read (kopf needs it too)."""
        exact = [p for p in self.drain_namespaces if not p.startswith("!") and not _glob(p)]
        if len(exact) == len(self.drain_namespaces):
            return tuple(sorted(set(exact)))
        listed = await self._call("/api/v1/namespaces", "GET")
        names = [str(item["metadata"]["name"]) for item in (listed or {}).get("items") or []]
        return tuple(sorted({n for n in names if in_scope(n, self.drain_namespaces)}))

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


def _glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def in_scope(namespace: str, patterns: Iterable[str]) -> bool:
    """Whether ``namespace`` is one the patterns name, the way kopf reads ``--namespace``: it
    matches a pattern and no ``!`` exclusion. No patterns at all means every namespace."""
    patterns = tuple(patterns)
    if not patterns:
        return True
    included = [p for p in patterns if not p.startswith("!")]
    excluded = [p[1:] for p in patterns if p.startswith("!")]
    if any(fnmatch.fnmatchcase(namespace, p) for p in excluded):
        return False
    return not included or any(fnmatch.fnmatchcase(namespace, p) for p in included)


def evictions(pods: Iterable[Mapping[str, Any]], patterns: Iterable[str] = ()) -> list[Mapping[str, Any]]:
    """The metadata of the pods a drain evicts: running pods a controller owns that are
    neither mirror nor DaemonSet pods, in the namespaces the patterns name (all when there are
    none). A pod no controller owns would be gone for good, so it stays (``kubectl drain``
    refuses it without --force)."""
    return [pod["metadata"] for pod in in_scope_pods(pods, patterns) if _evictable(pod)]


def in_scope_pods(pods: Iterable[Mapping[str, Any]], patterns: Iterable[str]) -> list[Mapping[str, Any]]:
    """The pods in the namespaces the patterns name; all of them when there are no patterns."""
    patterns = tuple(patterns)
    if not patterns:
        return list(pods)
    return [pod for pod in pods if in_scope(str(pod["metadata"].get("namespace") or ""), patterns)]


def _running(pod: Mapping[str, Any]) -> bool:
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp") or _MIRROR in (meta.get("annotations") or {}):
        return False
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def _controller(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    refs = (pod.get("metadata") or {}).get("ownerReferences") or []
    return next((ref for ref in refs if ref.get("controller")), None)


def _evictable(pod: Mapping[str, Any]) -> bool:
    controller = _controller(pod)
    return _running(pod) and controller is not None and controller.get("kind") != "DaemonSet"


def memory_patch(service: Mapping[str, Any], container: str, limit: str) -> list[dict[str, Any]]:
    """A JSON patch raising ``container``'s memory limit to ``limit`` (and its request by the same
    ratio, never above the limit), guarded by the values it replaces: an edit of those fields
    since they were read makes the API server refuse it instead of being overwritten. Not by the
    resourceVersion: every status write bumps it, and the pod failure that asks for the raise
    also changes the service's status, so that guard lost races it had no reason to.
    Empty when already at least ``limit``."""
    containers = (((service.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
        "containers"
    ) or []
    wanted = specs.quantity(limit)
    for index, spec in enumerate(containers):
        if spec.get("name") != container:
            continue
        resources = spec.get("resources") or {}
        raw_limit = (resources.get("limits") or {}).get("memory")
        current = specs.quantity(raw_limit)
        if wanted is None or current is None or current >= wanted:
            return []
        at = f"/spec/template/spec/containers/{index}"
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": f"{at}/name", "value": container},
            {"op": "test", "path": f"{at}/resources/limits/memory", "value": raw_limit},
            {"op": "replace", "path": f"{at}/resources/limits/memory", "value": limit},
        ]
        raw_request = (resources.get("requests") or {}).get("memory")
        request = specs.quantity(raw_request)
        if request is not None:
            raised = rem.mebibytes(min(wanted, request * wanted / current))
            ops.append({"op": "test", "path": f"{at}/resources/requests/memory", "value": raw_request})
            ops.append({"op": "replace", "path": f"{at}/resources/requests/memory", "value": raised})
        return ops
    return []
