"""Approval objects over the Kubernetes API: the gate remediation calls, and the store the
approval handlers and the kubectl plugin read and write.

The gate is create-or-get by a name derived from action + target + cause + incident occurrence,
so asking on every reconcile (or from two operator processes, or after a restart) finds the one
request instead of opening another.
Status writes carry the resourceVersion they were computed from: two clicks racing each other
end as one write and one ``Conflict``, and the loser re-reads and is judged against the winner.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from typing import Any

from homeostat import ports
from homeostat.adapters import kube
from homeostat.core import approval as appr
from homeostat.core import children as kids
from homeostat.core import fields

_INSTANCE = socket.gethostname()[:128]


def _path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/{appr.API_VERSION}/namespaces/{namespace}/{appr.PLURAL}"
    return f"{base}/{name}" if name else base


def _error(exc: kube.ApiError) -> Exception:
    if exc.status == 409:
        return ports.Conflict(exc.message)
    if exc.status == 404:
        return LookupError(exc.message)
    if exc.status in (400, 403, 422):
        return ports.Rejected(f"{exc.status}: {exc.message}")
    return ports.Unavailable(f"{exc.status}: {exc.message}")


class KubeApprovals:
    """``ports.ApprovalStore`` and ``ports.ApprovalGate`` over ``adapters.kube``."""

    def __init__(self, client: kube.Client, requester: str = kids.MANAGER) -> None:
        self._client = client
        self.requester = requester

    def _call(
        self,
        path: str,
        method: str,
        body: Any = None,
        content_type: str | None = None,
        query: list[tuple[str, str]] | None = None,
    ) -> Any:
        try:
            return self._client.call_sync(path, method, body=body, content_type=content_type, query=query)
        except kube.ApiError as exc:
            raise _error(exc) from None

    async def _run(self, path: str, method: str, body: Any = None, content_type: str | None = None) -> Any:
        try:
            return await self._client.call(path, method, body=body, content_type=content_type)
        except kube.ApiError as exc:
            raise _error(exc) from None

    # --- ports.ApprovalStore -------------------------------------------------------------------

    async def get(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        try:
            return dict(await self._run(_path(namespace, name), "GET"))
        except LookupError:
            return None

    async def create(self, manifest: Mapping[str, Any]) -> Mapping[str, Any]:
        namespace = manifest["metadata"]["namespace"]
        return dict(await self._run(_path(namespace), "POST", dict(manifest)))

    async def patch_status(
        self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None
    ) -> Mapping[str, Any]:
        body: dict[str, Any] = {"status": dict(status)}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            path = _path(namespace, name) + "/status"
            return dict(await self._run(path, "PATCH", body, "application/merge-patch+json"))
        except LookupError as exc:
            raise ports.Rejected(f"approval {namespace}/{name} no longer exists: {exc}") from None

    async def post_event(self, involved: Mapping[str, Any], type: str, reason: str, message: str) -> None:
        now = fields.rfc3339(time.time())
        namespace = involved["namespace"]
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{involved['name']}.", "namespace": namespace},
            "involvedObject": dict(involved),
            "type": type,
            "reason": reason,
            "message": message,
            "source": {"component": kids.MANAGER},
            "reportingComponent": kids.MANAGER,
            "reportingInstance": _INSTANCE,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self._run(f"/api/v1/namespaces/{namespace}/events", "POST", event)
        except LookupError as exc:
            raise ports.Rejected(str(exc)) from None

    # --- ports.ApprovalGate --------------------------------------------------------------------

    async def request(self, namespace: str, request: appr.ApprovalRequest) -> ports.ApprovalTicket:
        name = appr.object_name(request.action, request.target, request.cause, request.incident)
        body = await self.get(namespace, name)
        if body is None:
            manifest = await self._manifest(namespace, name, request)
            try:
                body = await self.create(manifest)
            except ports.Conflict:  # another process opened it first: that one is ours too
                body = await self.get(namespace, name)
                if body is None:
                    raise ports.Unavailable(
                        f"approval {namespace}/{name} vanished while being opened"
                    ) from None
        return ticket(body, time.time())

    async def find(
        self, namespace: str, action: str, target: appr.Target, cause: str, incident: str
    ) -> ports.ApprovalTicket | None:
        body = await self.get(namespace, appr.object_name(action, target, cause, incident))
        return None if body is None else ticket(body, time.time())

    async def record_outcome(
        self, ticket: ports.ApprovalTicket, result: appr.ActionResult, message: str
    ) -> None:
        outcome = {"result": result.value, "message": message[:1024], "at": fields.rfc3339(time.time())}
        await self.patch_status(ticket.namespace, ticket.name, {"outcome": outcome}, None)

    async def _manifest(self, namespace: str, name: str, request: appr.ApprovalRequest) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "name": name,
            "namespace": namespace,
            "labels": {
                kids.LABEL_MANAGED_BY: kids.MANAGER,
                appr.LABEL_ACTION: request.action,
            },
        }
        if request.service:
            meta["labels"][appr.LABEL_SERVICE] = request.service
            owner = await self._service_uid(namespace, request.service)
            if owner:
                # Deleting the service deletes its open requests with it.
                meta["ownerReferences"] = [
                    {"apiVersion": kids.API_VERSION, "kind": kids.KIND, "name": request.service, "uid": owner}
                ]
        return {
            "apiVersion": appr.API_VERSION,
            "kind": appr.KIND,
            "metadata": meta,
            "spec": request.as_spec(),
        }

    async def _service_uid(self, namespace: str, service: str) -> str | None:
        path = f"/apis/{kids.API_VERSION}/namespaces/{namespace}/replicatedservices/{service}"
        try:
            return str((await self._run(path, "GET"))["metadata"]["uid"])
        except LookupError:
            return None

    # --- for the kubectl plugin ----------------------------------------------------------------

    def whoami(self) -> tuple[str, tuple[str, ...]]:
        """The caller's user name and groups as the API server authenticated them."""
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        result = self._call("/apis/authentication.k8s.io/v1/selfsubjectreviews", "POST", review)
        info = (result.get("status") or {}).get("userInfo") or {}
        return str(info.get("username") or ""), tuple(info.get("groups") or ())

    def get_sync(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        try:
            return dict(self._call(_path(namespace, name), "GET"))
        except LookupError:
            return None

    def list_sync(self, namespace: str | None) -> list[Mapping[str, Any]]:
        path = f"/apis/{appr.API_VERSION}/{appr.PLURAL}" if namespace is None else _path(namespace)
        return list(self._call(path, "GET").get("items") or [])

    def patch_status_sync(
        self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None
    ) -> Mapping[str, Any]:
        body: dict[str, Any] = {"status": dict(status)}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return dict(
            self._call(_path(namespace, name) + "/status", "PATCH", body, "application/merge-patch+json")
        )


def ticket(body: Mapping[str, Any], now: float) -> ports.ApprovalTicket:
    """The phase a caller must act on. A pending request past its expiry reads as Expired even
    before the operator has recorded it: the gate never says yes late."""
    meta = body["metadata"]
    try:
        # An unreadable status holds like an invalid spec: the gate never reads it as Pending.
        state = appr.State.from_storage(body.get("status"))
        state = appr.expire(appr.parse_request(body.get("spec") or {}), state, now)
    except ValueError as exc:
        return ports.ApprovalTicket(
            meta["namespace"], meta["name"], appr.ApprovalPhase.DENIED, f"invalid approval: {exc}"
        )
    return ports.ApprovalTicket(meta["namespace"], meta["name"], state.phase, state.reason)
