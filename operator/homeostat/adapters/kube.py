"""Kubernetes access through the official (synchronous) client, kept off kopf's event loop.

Every call runs in a worker thread so a slow API server never stalls other handlers. Children
are written with server-side apply under one field manager, so a re-apply of an unchanged
object is a no-op on the server and fields other controllers own are left alone.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import kubernetes
import urllib3
import yaml

from homeostat import ports
from homeostat.core import children as kids

_PLURALS = {
    "Deployment": "deployments",
    "Service": "services",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "ReplicatedService": "replicatedservices",
    "ControllerRevision": "controllerrevisions",
    "HTTPRoute": "httproutes",
}
TIMEOUT = (5.0, 30.0)  # connect, read
_CONVERSION_FAILURE = "unable to convert unstructured object"


class ConfigError(Exception):
    """No usable credentials or no reachable API server; the message is one line for users."""


def _path(api_version: str, kind: str, namespace: str, name: str) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{base}/namespaces/{namespace}/{_PLURALS[kind]}/{name}"


def load_client(kubeconfig: str | None) -> kubernetes.client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (flag, env, default)."""
    configuration = kubernetes.client.Configuration()
    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        else:
            kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    except (
        kubernetes.config.ConfigException,
        yaml.YAMLError,
        OSError,
        ValueError,
        TypeError,
        KeyError,
    ) as exc:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot load Kubernetes credentials from {where}: {detail}") from None
    configuration.retries = 1
    return kubernetes.client.ApiClient(configuration)


def credentials(kubeconfig: str | None) -> ports.Credentials:
    """Fresh credentials for kopf's own client; re-read on every login so rotated tokens work."""
    configuration = load_client(kubeconfig).configuration
    token = (configuration.api_key or {}).get("authorization") or (configuration.api_key or {}).get(
        "BearerToken"
    )
    if token and token.lower().startswith("bearer "):
        token = token[7:]
    return ports.Credentials(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        token=token,
        insecure=not configuration.verify_ssl,
    )


def preflight(api: kubernetes.client.ApiClient) -> str:
    """Check the API server answers and accepts our credentials; return its version."""
    host = api.configuration.host
    try:
        version = kubernetes.client.VersionApi(api).get_code(_request_timeout=(5, 10))
    except kubernetes.client.ApiException as exc:
        raise ConfigError(f"the API server at {host} refused us: {exc.status} {exc.reason}") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ConfigError(f"cannot reach the API server at {host}: {_one_line(reason)}") from None
    return str(version.git_version)


def _one_line(exc: object) -> str:
    text = str(exc)
    # urllib3 wraps the socket error in a long repr; keep the part a human can act on.
    if "Connection refused" in text:
        return "connection refused"
    if "Name or service not known" in text or "Temporary failure in name resolution" in text:
        return "host name not resolved"
    if "timed out" in text:
        return "timed out"
    return text.splitlines()[0][:200]


def request(
    api: kubernetes.client.ApiClient,
    path: str,
    method: str,
    *,
    body: Any = None,
    content_type: str | None = None,
    query: list[tuple[str, str]] | None = None,
) -> Any:
    """One JSON call to the API server, with our timeout. Blocking: run it in a worker thread.

    Errors (``ApiException``, urllib3's and socket errors) are left to the caller, because what
    a 404 or a 409 means depends on what was asked.
    """
    headers = {"Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    return api.call_api(
        path,
        method,
        query_params=query or [],
        header_params=headers,
        body=body,
        response_type="object",
        auth_settings=["BearerToken"],
        _return_http_data_only=True,
        _request_timeout=TIMEOUT,
    )


class KubernetesWorkloads:
    """``ports.Workloads`` over the official client, each call in a worker thread."""

    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self._api = api

    def _call(
        self,
        path: str,
        method: str,
        body: Any = None,
        content_type: str | None = None,
        query: list[tuple[str, str]] | None = None,
    ) -> Any:
        try:
            return request(self._api, path, method, body=body, content_type=content_type, query=query)
        except kubernetes.client.ApiException as exc:
            message = _api_message(exc)
            if exc.status in (400, 422) or (exc.status == 500 and _CONVERSION_FAILURE in message):
                # Server-side apply reports an undecodable object (e.g. a malformed quantity in
                # the pod template) as a 500 conversion failure; it is bad input all the same.
                raise ports.Rejected(message) from None
            raise ports.Unavailable(f"{exc.status}: {message}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ports.Unavailable(_one_line(exc)) from None

    async def apply(self, manifest: Mapping[str, Any]) -> Mapping[str, Any]:
        meta = manifest["metadata"]
        path = _path(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        query = [("fieldManager", kids.MANAGER), ("force", "true")]
        result = await asyncio.to_thread(
            self._call, path, "PATCH", dict(manifest), "application/apply-patch+yaml", query
        )
        return dict(result)

    async def delete(self, ref: kids.ChildRef) -> None:
        path = _path(ref.api_version, ref.kind, ref.namespace, ref.name)
        try:
            await asyncio.to_thread(self._call, path, "DELETE")
        except ports.Unavailable as exc:
            if not str(exc).startswith("404"):
                raise

    def read_sync(self, ref: kids.ChildRef) -> Mapping[str, Any] | None:
        """A blocking read, for command-line tools that have no event loop."""
        try:
            return dict(self._call(_path(ref.api_version, ref.kind, ref.namespace, ref.name), "GET"))
        except ports.Unavailable as exc:
            if str(exc).startswith("404"):
                return None
            raise

    def merge_patch_sync(self, ref: kids.ChildRef, patch: Mapping[str, Any]) -> None:
        """A blocking JSON merge patch, for command-line tools that have no event loop."""
        path = _path(ref.api_version, ref.kind, ref.namespace, ref.name)
        self._call(path, "PATCH", dict(patch), "application/merge-patch+json")

    def events_sync(self, ref: kids.ChildRef) -> list[Mapping[str, Any]]:
        """Events about one object, oldest first."""
        selector = f"involvedObject.kind={ref.kind},involvedObject.name={ref.name}"
        path = f"/api/v1/namespaces/{ref.namespace}/events"
        listing = self._call(path, "GET", query=[("fieldSelector", selector)])
        items = list((listing or {}).get("items") or [])
        return sorted(items, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))

    async def get(self, ref: kids.ChildRef) -> Mapping[str, Any] | None:
        path = _path(ref.api_version, ref.kind, ref.namespace, ref.name)
        try:
            return dict(await asyncio.to_thread(self._call, path, "GET"))
        except ports.Unavailable as exc:
            if str(exc).startswith("404"):
                return None
            raise

    async def json_patch(self, ref: kids.ChildRef, operations: Sequence[Mapping[str, Any]]) -> None:
        path = _path(ref.api_version, ref.kind, ref.namespace, ref.name)
        body = [dict(op) for op in operations]
        await asyncio.to_thread(self._call, path, "PATCH", body, "application/json-patch+json")

    async def patch_status(self, owner: kids.Owner, status: Mapping[str, Any]) -> None:
        path = _path(kids.API_VERSION, kids.KIND, owner.namespace, owner.name) + "/status"
        body = {"metadata": {"uid": owner.uid}, "status": dict(status)}
        try:
            await asyncio.to_thread(self._call, path, "PATCH", body, "application/merge-patch+json")
        except ports.Unavailable as exc:
            if not str(exc).startswith(("404", "409")):  # deleted, or replaced by a new object
                raise


def _api_message(exc: kubernetes.client.ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except ValueError:
        return str(exc.reason)
