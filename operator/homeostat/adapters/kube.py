"""Kubernetes access over plain HTTP: aiohttp on kopf's event loop, the standard library in CLIs.

The operator used to call the official client in worker threads. That client imports about
45 MB of generated models, and every worker thread grew its own malloc arena; together they
were most of the distance to the 250 MB memory target (ADR 0016). The operator only needs a
handful of JSON calls, so they are made here directly: one connection pool on the event loop,
no threads, the same credentials kopf uses.

Children are written with server-side apply under one field manager, so a re-apply of an
unchanged object is a no-op on the server and fields other controllers own are left alone.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import json
import os
import pathlib
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
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
CONNECT_TIMEOUT, READ_TIMEOUT = 5.0, 30.0
_CONVERSION_FAILURE = "unable to convert unstructured object"
_SERVICE_ACCOUNT = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ConfigError(Exception):
    """No usable credentials or no reachable API server; the message is one line for users."""


class ApiError(Exception):
    """The API server answered with an error status; what it means is the caller's to decide."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def _path(api_version: str, kind: str, namespace: str, name: str) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{base}/namespaces/{namespace}/{_PLURALS[kind]}/{name}"


@dataclasses.dataclass
class _Exec:
    """A kubeconfig exec credential plugin (cloud CLIs); its token is cached until it expires."""

    command: str
    args: tuple[str, ...]
    env: dict[str, str]
    token: str | None = None
    expires: float = 0.0

    def fetch(self) -> Mapping[str, Any]:
        try:
            done = subprocess.run(
                [self.command, *self.args],
                env={**os.environ, **self.env},
                capture_output=True,
                timeout=60,
                check=True,
            )
            return dict(json.loads(done.stdout).get("status") or {})
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            raise ConfigError(f"the credential plugin {self.command} failed: {_one_line(exc)}") from None

    def stale(self) -> bool:
        return self.token is None or time.time() > self.expires - 60

    def bearer(self) -> str | None:
        if self.stale():
            status = self.fetch()
            self.token = status.get("token") or None
            expiry = status.get("expirationTimestamp")
            self.expires = _epoch(expiry) if expiry else time.time() + 300
        return self.token


def _epoch(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class Client:
    """How to reach one API server, and the calls to it.

    ``call`` is for the operator (aiohttp, on the running event loop); ``call_sync`` for
    command-line tools that have no loop. Both raise ``ApiError`` for an error status and
    ``ports.Unavailable`` when the server cannot be reached.
    """

    def __init__(
        self,
        host: str,
        *,
        ca_path: str | None = None,
        certificate_path: str | None = None,
        private_key_path: str | None = None,
        token: str | None = None,
        token_file: str | None = None,
        exec_plugin: _Exec | None = None,
        insecure: bool = False,
        namespace: str = "default",
    ) -> None:
        self.host = host.rstrip("/")
        self.ca_path = ca_path
        self.certificate_path = certificate_path
        self.private_key_path = private_key_path
        self.insecure = insecure
        self.namespace = namespace
        self._token = token
        self._token_file = token_file
        self._exec = exec_plugin
        self._ssl: ssl.SSLContext | None = None
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._refresh: asyncio.Lock | None = None  # one credential plugin run at a time

    def __repr__(self) -> str:  # never the token
        return f"Client(host={self.host!r})"

    def bearer(self) -> str | None:
        """The current token: re-read from its file every time, since bound service-account
        tokens are rotated under a running pod."""
        if self._token_file:
            try:
                return pathlib.Path(self._token_file).read_text().strip() or None
            except OSError as exc:
                raise ports.Unavailable(f"cannot read the token file: {_one_line(exc)}") from None
        if self._exec is not None:
            return self._exec.bearer()
        return self._token

    def credentials(self) -> ports.Credentials:
        """For kopf's own client; called on every (re-)login, so rotated tokens are picked up."""
        return ports.Credentials(
            server=self.host,
            ca_path=self.ca_path,
            certificate_path=self.certificate_path,
            private_key_path=self.private_key_path,
            token=self.bearer(),
            insecure=self.insecure,
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.host.startswith("https:"):
            return None
        if self._ssl is None:
            context = ssl.create_default_context(cafile=self.ca_path)
            if self.insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if self.certificate_path and self.private_key_path:
                context.load_cert_chain(self.certificate_path, self.private_key_path)
            self._ssl = context
        return self._ssl

    def _headers(self, content_type: str | None, body: Any) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        token = self.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _url(self, path: str, query: Sequence[tuple[str, str]] | None) -> str:
        return self.host + path + (f"?{urllib.parse.urlencode(list(query))}" if query else "")

    async def call(
        self,
        path: str,
        method: str,
        *,
        body: Any = None,
        content_type: str | None = None,
        query: Sequence[tuple[str, str]] | None = None,
    ) -> Any:
        session = self._session_for_loop()
        data = None if body is None else json.dumps(body).encode()
        await self._refresh_credentials()
        try:
            async with session.request(
                method, self._url(path, query), data=data, headers=self._headers(content_type, body)
            ) as response:
                raw = await response.read()
                status = response.status
                reason = response.reason or ""
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ports.Unavailable(_one_line(exc) or type(exc).__name__) from None
        return _decode(status, reason, raw)

    async def _refresh_credentials(self) -> None:
        """Run an expiring exec plugin in a thread: a cloud CLI can take seconds, and on the
        event loop it would stall every handler. Concurrent callers wait for one run."""
        plugin = self._exec
        if plugin is None or not plugin.stale():
            return
        assert self._refresh is not None  # made with the session, for this loop
        async with self._refresh:
            if plugin.stale():
                try:
                    await asyncio.to_thread(plugin.bearer)
                except ConfigError as exc:
                    raise ports.Unavailable(str(exc)) from None

    def _session_for_loop(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            # A session belongs to the loop it was made on; CLIs may run several loops in turn.
            connector = aiohttp.TCPConnector(ssl=self.ssl_context() or False, limit=50)
            timeout = aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
            self._loop = loop
            self._refresh = asyncio.Lock()
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    def call_sync(
        self,
        path: str,
        method: str,
        *,
        body: Any = None,
        content_type: str | None = None,
        query: Sequence[tuple[str, str]] | None = None,
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self._url(path, query), data=data, method=method, headers=self._headers(content_type, body)
        )
        try:
            with urllib.request.urlopen(
                request, timeout=READ_TIMEOUT, context=self.ssl_context()
            ) as response:
                return _decode(response.status, response.reason or "", response.read())
        except urllib.error.HTTPError as exc:
            return _decode(exc.code, str(exc.reason or ""), exc.read())
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ports.Unavailable(_one_line(reason)) from None


def _decode(status: int, reason: str, raw: bytes) -> Any:
    try:
        payload = json.loads(raw) if raw else None
    except ValueError:
        payload = None
    if status >= 400:
        message = payload.get("message") if isinstance(payload, dict) else None
        raise ApiError(status, str(message or reason or raw[:200].decode(errors="replace")))
    return payload


def _materialise(data: str | None, path: str | None, base: pathlib.Path, suffix: str) -> str | None:
    """A kubeconfig ``*-data`` field as a private file (ssl and kopf take paths), else the path
    resolved against the kubeconfig's directory."""
    if data:
        handle, name = tempfile.mkstemp(prefix="homeostat-", suffix=suffix)
        with os.fdopen(handle, "wb") as out:
            out.write(base64.b64decode(data))
        return name
    if path:
        return str((base / os.path.expanduser(path)).resolve())
    return None


def _kubeconfig_files(kubeconfig: str | None) -> list[pathlib.Path]:
    if kubeconfig:
        return [pathlib.Path(kubeconfig).expanduser()]
    listed = os.environ.get("KUBECONFIG")
    if listed:
        return [pathlib.Path(p).expanduser() for p in listed.split(os.pathsep) if p]
    return [pathlib.Path("~/.kube/config").expanduser()]


def _from_kubeconfig(kubeconfig: str | None) -> Client:
    files = _kubeconfig_files(kubeconfig)
    merged: dict[str, Any] = {"clusters": {}, "users": {}, "contexts": {}, "current-context": None}
    bases: dict[tuple[str, str], pathlib.Path] = {}
    for file in files:
        if not file.exists() and len(files) > 1:
            continue
        loaded = yaml.safe_load(file.read_text())
        if not isinstance(loaded, Mapping):
            raise ValueError("not a kubeconfig (expected a YAML mapping)")
        # Like kubectl: the first file to set a value wins.
        merged["current-context"] = merged["current-context"] or loaded.get("current-context")
        for section, key in (("clusters", "cluster"), ("users", "user"), ("contexts", "context")):
            for entry in loaded.get(section) or []:
                name = str(entry.get("name"))
                if name not in merged[section]:
                    merged[section][name] = entry.get(key) or {}
                    bases[(section, name)] = file.parent
    current = merged["current-context"]
    if not current or current not in merged["contexts"]:
        raise ValueError("no current context")
    context = merged["contexts"][current]
    cluster_name, user_name = str(context.get("cluster")), str(context.get("user"))
    if cluster_name not in merged["clusters"]:
        raise ValueError(f"context {current} names an unknown cluster {cluster_name}")
    cluster = merged["clusters"][cluster_name]
    user = merged["users"].get(user_name) or {}
    cbase = bases[("clusters", cluster_name)]
    ubase = bases.get(("users", user_name), cbase)
    if not cluster.get("server"):
        raise ValueError(f"cluster {cluster_name} has no server")
    plugin = None
    if user.get("exec"):
        spec = user["exec"]
        env = {str(e["name"]): str(e["value"]) for e in spec.get("env") or []}
        plugin = _Exec(str(spec["command"]), tuple(str(a) for a in spec.get("args") or ()), env)
    token_file = user.get("tokenFile")
    return Client(
        str(cluster["server"]),
        ca_path=_materialise(
            cluster.get("certificate-authority-data"), cluster.get("certificate-authority"), cbase, ".crt"
        ),
        certificate_path=_materialise(
            user.get("client-certificate-data"), user.get("client-certificate"), ubase, ".crt"
        ),
        private_key_path=_materialise(user.get("client-key-data"), user.get("client-key"), ubase, ".key"),
        token=user.get("token"),
        token_file=str((ubase / token_file).resolve()) if token_file else None,
        exec_plugin=plugin,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        namespace=str(context.get("namespace") or "default"),
    )


def _in_cluster() -> Client:
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if ":" in host:
        host = f"[{host}]"
    namespace_file = _SERVICE_ACCOUNT / "namespace"
    return Client(
        f"https://{host}:{port}",
        ca_path=str(_SERVICE_ACCOUNT / "ca.crt"),
        token_file=str(_SERVICE_ACCOUNT / "token"),
        namespace=namespace_file.read_text().strip() if namespace_file.exists() else "default",
    )


def load_client(kubeconfig: str | None) -> Client:
    """In-cluster credentials when running in a pod, else the kubeconfig (flag, env, default)."""
    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            return _in_cluster()
        return _from_kubeconfig(kubeconfig)
    except (yaml.YAMLError, OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, KeyError):
            detail = f"missing {detail}"
        raise ConfigError(f"cannot load Kubernetes credentials from {where}: {detail}") from None


def credentials(kubeconfig: str | None) -> ports.Credentials:
    """Fresh credentials for kopf's own client."""
    return load_client(kubeconfig).credentials()


def preflight(client: Client) -> str:
    """Check the API server answers and accepts our credentials; return its version."""
    try:
        version = client.call_sync("/version", "GET")
    except ApiError as exc:
        raise ConfigError(f"the API server at {client.host} refused us: {exc.status} {exc.message}") from None
    except ports.Unavailable as exc:
        raise ConfigError(f"cannot reach the API server at {client.host}: {exc}") from None
    except ssl.SSLError as exc:
        raise ConfigError(f"cannot reach the API server at {client.host}: {_one_line(exc)}") from None
    return str((version or {}).get("gitVersion") or "unknown")


def _one_line(exc: object) -> str:
    text = str(exc)
    # Socket errors arrive wrapped in long reprs; keep the part a human can act on.
    if "Connection refused" in text or "Connect call failed" in text:
        return "connection refused"
    if "Name or service not known" in text or "Temporary failure in name resolution" in text:
        return "host name not resolved"
    if "timed out" in text or isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timed out"
    return (text.splitlines() or [""])[0][:200]


def workload_error(exc: ApiError) -> Exception:
    """What an error status means for a write of a workload object."""
    if exc.status in (400, 422) or (exc.status == 500 and _CONVERSION_FAILURE in exc.message):
        # Server-side apply reports an undecodable object (e.g. a malformed quantity in the pod
        # template) as a 500 conversion failure; it is bad input all the same.
        return ports.Rejected(exc.message)
    return ports.Unavailable(f"{exc.status}: {exc.message}")


class KubernetesWorkloads:
    """``ports.Workloads`` over ``Client``: async for the operator, ``*_sync`` for CLIs."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def _call(
        self,
        path: str,
        method: str,
        body: Any = None,
        content_type: str | None = None,
        query: Sequence[tuple[str, str]] | None = None,
    ) -> Any:
        try:
            return await self.client.call(path, method, body=body, content_type=content_type, query=query)
        except ApiError as exc:
            raise workload_error(exc) from None

    def _call_sync(
        self,
        path: str,
        method: str,
        body: Any = None,
        content_type: str | None = None,
        query: Sequence[tuple[str, str]] | None = None,
    ) -> Any:
        try:
            return self.client.call_sync(path, method, body=body, content_type=content_type, query=query)
        except ApiError as exc:
            raise workload_error(exc) from None

    async def apply(self, manifest: Mapping[str, Any]) -> Mapping[str, Any]:
        meta = manifest["metadata"]
        path = _path(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        query = [("fieldManager", kids.MANAGER), ("force", "true")]
        return dict(await self._call(path, "PATCH", dict(manifest), "application/apply-patch+yaml", query))

    async def delete(self, ref: kids.ChildRef) -> None:
        path = _path(ref.api_version, ref.kind, ref.namespace, ref.name)
        try:
            await self._call(path, "DELETE")
        except ports.Unavailable as exc:
            if not str(exc).startswith("404"):
                raise

    def read_sync(self, ref: kids.ChildRef) -> Mapping[str, Any] | None:
        """A blocking read, for command-line tools that have no event loop."""
        try:
            return dict(self._call_sync(_path(ref.api_version, ref.kind, ref.namespace, ref.name), "GET"))
        except ports.Unavailable as exc:
            if str(exc).startswith("404"):
                return None
            raise

    def merge_patch_sync(self, ref: kids.ChildRef, patch: Mapping[str, Any]) -> None:
        """A blocking JSON merge patch, for command-line tools that have no event loop."""
        path = _path(ref.api_version, ref.kind, ref.namespace, ref.name)
        self._call_sync(path, "PATCH", dict(patch), "application/merge-patch+json")

    def events_sync(self, ref: kids.ChildRef) -> list[Mapping[str, Any]]:
        """Events about one object, oldest first."""
        selector = f"involvedObject.kind={ref.kind},involvedObject.name={ref.name}"
        path = f"/api/v1/namespaces/{ref.namespace}/events"
        listing = self._call_sync(path, "GET", query=[("fieldSelector", selector)])
        items = list((listing or {}).get("items") or [])
        return sorted(items, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))

    async def get(self, ref: kids.ChildRef) -> Mapping[str, Any] | None:
        path = _path(ref.api_version, ref.kind, ref.namespace, ref.name)
        try:
            return dict(await self._call(path, "GET"))
        except ports.Unavailable as exc:
            if str(exc).startswith("404"):
                return None
            raise

    async def json_patch(self, ref: kids.ChildRef, operations: Sequence[Mapping[str, Any]]) -> None:
        path = _path(ref.api_version, ref.kind, ref.namespace, ref.name)
        body = [dict(op) for op in operations]
        await self._call(path, "PATCH", body, "application/json-patch+json")

    async def patch_status(self, owner: kids.Owner, status: Mapping[str, Any]) -> None:
        path = _path(kids.API_VERSION, kids.KIND, owner.namespace, owner.name) + "/status"
        body = {"metadata": {"uid": owner.uid}, "status": dict(status)}
        try:
            await self._call(path, "PATCH", body, "application/merge-patch+json")
        except ports.Unavailable as exc:
            if not str(exc).startswith(("404", "409")):  # deleted, or replaced by a new object
                raise
