"""Kubernetes access through the official client: ``kubernetes.aio`` on kopf's loop, the sync
client in CLIs (ADR 0020).

One loaded configuration (``Settings``: where the server is and how to trust it; ``Identity``:
who we are) feeds the operator's ``ApiClient`` (one connection pool on kopf's event loop), the
sync client of the kubectl plugin and kopf's own login, so all three act as one identity.

The kubeconfig files are merged by the official loader; what they say is then resolved here,
strictly, because the official loader is lenient where kubectl is not: TLS follows the scheme in
any letter case, a setting that cannot work stops with one line naming it, a client key that
Python's ``ssl`` can read only from a file is deleted as soon as it is loaded, and an exec plugin
runs off the event loop, is re-run before its credential expires and may return a client
certificate.

Children are written with server-side apply under one field manager, so a re-apply of an
unchanged object is a no-op on the server and fields other controllers own are left alone.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import re
import ssl
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import aiohttp
import multidict
import urllib3
import yaml
from kubernetes import client as sync_client
from kubernetes.aio import client as aio_client
from kubernetes.config import kube_config

from homeostat import ports
from homeostat.core import children as kids
from homeostat.core import fields

_PLURALS = {
    "Deployment": "deployments",
    "Service": "services",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "ReplicatedService": "replicatedservices",
    "ControllerRevision": "controllerrevisions",
    "HTTPRoute": "httproutes",
}
CONNECT_TIMEOUT, READ_TIMEOUT = 5.0, 30.0
PLUGIN_TIMEOUT = 60.0
TOKEN_FILE_PERIOD = 60.0  # kopf logs in again this often: bound service-account tokens rotate
EXPIRY_SKEW = 60.0  # a plugin's credential is renewed this long before it expires
_CONVERSION_FAILURE = "unable to convert unstructured object"
# Server-side apply answers 500 for a field its schema does not know (``nodeSelectr``) or a
# value of the wrong type: the object is wrong, and sending it again changes nothing.
_TYPED_PATCH_FAILURE = "failed to create typed patch object"
# The client writes apply-patch+yaml bodies with json.dumps' ASCII escapes, and the API server's
# YAML reader refuses the surrogate pairs that encode an emoji: send UTF-8 JSON ourselves (JSON
# is YAML). The parameter makes the client pass the bytes through; the server ignores it.
_APPLY = "application/apply-patch+yaml; charset=utf-8"
_SERVICE_ACCOUNT = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")

# What a kubeconfig may say. Anything else in a used cluster, user or exec entry is refused.
_CLUSTER_KEYS = frozenset(
    {
        "server",
        "certificate-authority",
        "certificate-authority-data",
        "insecure-skip-tls-verify",
        "tls-server-name",
        "proxy-url",
        "disable-compression",
        "extensions",
    }
)
_USER_KEYS = frozenset(
    {
        "token",
        "tokenFile",
        "client-certificate",
        "client-certificate-data",
        "client-key",
        "client-key-data",
        "exec",
        "as",
        "as-groups",
        "extensions",
    }
)
_EXEC_KEYS = frozenset(
    {"command", "args", "env", "apiVersion", "installHint", "provideClusterInfo", "interactiveMode"}
)
_UNSUPPORTED = {
    "auth-provider": "auth-provider plugins are not supported; use an exec credential plugin "
    "(kubelogin for OIDC, gke-gcloud-auth-plugin for GKE)",
    "username": "basic authentication (username/password) is not supported",
    "password": "basic authentication (username/password) is not supported",
    "as-uid": "impersonating a UID (as-uid) is not supported",
    "as-user-extra": "impersonating user extras (as-user-extra) is not supported",
}


class KubeConfigError(Exception):
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


# --- the loaded configuration -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, repr=False)
class ServerSettings:
    """Where the API server is and how to trust it; nothing secret."""

    server: str
    namespace: str = "default"
    ca_data: str | None = None  # PEM
    insecure: bool = False
    tls_server_name: str | None = None
    proxy_url: str | None = None
    impersonate_user: str | None = None
    impersonate_groups: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"Settings(server={self.server!r})"


@dataclasses.dataclass(frozen=True, repr=False)
class Plugin:
    """A kubeconfig exec credential plugin (cloud CLIs, kubelogin)."""

    command: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    api_version: str = "client.authentication.k8s.io/v1"
    cluster: Mapping[str, Any] | None = None  # given to the plugin with provideClusterInfo
    install_hint: str | None = None

    def __repr__(self) -> str:  # never the arguments: they may hold secrets
        return f"Plugin(command={self.command!r})"

    def _environ(self) -> dict[str, str]:
        spec: dict[str, Any] = {"interactive": False}
        if self.cluster is not None:
            spec["cluster"] = dict(self.cluster)
        info = {"apiVersion": self.api_version, "kind": "ExecCredential", "spec": spec}
        return {**os.environ, **self.env, "KUBERNETES_EXEC_INFO": json.dumps(info)}

    def _failed(self, detail: str) -> KubeConfigError:
        return KubeConfigError(f"the credential plugin {self.command} failed: {detail}")

    def _missing(self) -> KubeConfigError:
        hint = (self.install_hint or "").strip().splitlines()
        return KubeConfigError(
            f"the credential plugin {self.command} was not found" + (f": {hint[0]}" if hint else "")
        )

    def _status(self, code: int, stdout: bytes, stderr: bytes) -> Mapping[str, Any]:
        if code != 0:
            lines = [line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip()]
            raise self._failed(f"exit status {code}" + (f": {lines[-1][:300]}" if lines else ""))
        try:
            answer = json.loads(stdout)
            status = answer["status"]
        except (ValueError, KeyError, TypeError):
            raise self._failed("its output is not an ExecCredential") from None
        if answer.get("apiVersion") != self.api_version:
            raise self._failed(f"it answered {answer.get('apiVersion')}, not {self.api_version}")
        if not isinstance(status, Mapping):
            raise self._failed("its output has no status")
        return status

    async def run(self) -> Mapping[str, Any]:
        """Run without blocking the event loop."""
        try:
            process = await asyncio.create_subprocess_exec(
                self.command,
                *self.args,
                env=self._environ(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except FileNotFoundError:
            raise self._missing() from None
        except OSError as exc:
            raise self._failed(_one_line(exc)) from None
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), PLUGIN_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise self._failed(f"no answer in {PLUGIN_TIMEOUT:.0f} s") from None
        return self._status(process.returncode or 0, stdout, stderr)

    def run_sync(self) -> Mapping[str, Any]:
        try:
            done = subprocess.run(
                [self.command, *self.args],
                env=self._environ(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=PLUGIN_TIMEOUT,
                check=False,
            )
        except FileNotFoundError:
            raise self._missing() from None
        except subprocess.TimeoutExpired:
            raise self._failed(f"no answer in {PLUGIN_TIMEOUT:.0f} s") from None
        except OSError as exc:
            raise self._failed(_one_line(exc)) from None
        return self._status(done.returncode, done.stdout, done.stderr)


class ClientIdentity:
    """Who we are to the API server: a token (static, from a file or from a plugin) and/or a
    client certificate (from the kubeconfig or from a plugin). Never printed."""

    def __init__(
        self,
        *,
        token: str | None = None,
        token_file: str | None = None,
        certificate: bytes | None = None,
        key: bytes | None = None,
        plugin: Plugin | None = None,
    ) -> None:
        self._token = token
        self.token_file = token_file
        self.certificate = certificate
        self.key = key
        self.plugin = plugin
        self.expires: float | None = None  # epoch seconds of the plugin's credential
        self.fetched = 0.0  # when the plugin last ran
        self.generation = 0  # bumped whenever the client certificate changes
        self._locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}

    def __repr__(self) -> str:
        return "Identity(...)"

    def token(self) -> str | None:
        """The current bearer token; a token file is read again each time (tokens rotate)."""
        if self.token_file:
            try:
                return pathlib.Path(self.token_file).read_text().strip() or None
            except OSError as exc:
                raise ports.Unavailable(f"cannot read the token file: {_one_line(exc)}") from None
        return self._token

    def stale(self, now: float | None = None) -> bool:
        if self.plugin is None:
            return False
        if not self.fetched:
            return True
        return self.expires is not None and (now or time.time()) >= self.expires - EXPIRY_SKEW

    def invalidate(self) -> None:
        """After a 401: the plugin runs again on the next call."""
        self.fetched = 0.0

    def _take(self, status: Mapping[str, Any]) -> None:
        token = status.get("token") or None
        certificate, key = status.get("clientCertificateData"), status.get("clientKeyData")
        if not token and not (certificate and key):
            assert self.plugin is not None
            raise self.plugin._failed("it returned neither a token nor a client certificate and key")
        self._token = str(token) if token else None
        if certificate and key:
            pair = (str(certificate).encode(), str(key).encode())
            if pair != (self.certificate, self.key):
                self.certificate, self.key = pair
                self.generation += 1
        stamp = status.get("expirationTimestamp")
        self.expires = fields.parse_rfc3339(str(stamp), "status.expirationTimestamp") if stamp else None
        self.fetched = time.time()

    async def refresh(self, *, force: bool = False) -> None:
        """Run a stale plugin; concurrent callers wait for one run, none blocks the loop."""
        if not (force or self.stale()):
            return
        assert self.plugin is not None
        loop = asyncio.get_running_loop()
        lock = self._locks.setdefault(loop, asyncio.Lock())
        async with lock:
            if force or self.stale():
                self._take(await self.plugin.run())

    def refresh_sync(self) -> None:
        if self.stale():
            assert self.plugin is not None
            self._take(self.plugin.run_sync())


def _ssl_context(settings: ServerSettings, identity: ClientIdentity) -> ssl.SSLContext:
    context = (
        ssl.create_default_context(cadata=settings.ca_data)
        if settings.ca_data
        else (ssl.create_default_context())
    )
    if settings.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if identity.certificate and identity.key:
        _load_key_pair(context, identity.certificate, identity.key)
    return context


def _load_key_pair(context: ssl.SSLContext, certificate: bytes, key: bytes) -> None:
    """Python's ssl reads a client key only from a file: it lives in a private directory for
    the moment ``load_cert_chain`` takes, and is deleted however that ends."""
    with tempfile.TemporaryDirectory(prefix="homeostat-") as folder:
        path = os.path.join(folder, "client.pem")
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(handle, "wb") as out:
            out.write(certificate.rstrip(b"\n") + b"\n" + key)
        try:
            context.load_cert_chain(path)
        except ssl.SSLError as exc:
            raise KubeConfigError(f"the client certificate and key do not load: {_one_line(exc)}") from None


# --- calls ------------------------------------------------------------------------------------


class Client:
    """The API server as the loaded configuration reaches it.

    ``call`` is for the operator (``kubernetes.aio``, on the running event loop); ``call_sync``
    for command-line tools (the sync client). Both raise ``ApiError`` for an error status and
    ``ports.Unavailable`` when the server cannot be reached or credentials cannot be had.
    """

    def __init__(self, settings: ServerSettings | str, identity: ClientIdentity | None = None) -> None:
        self.settings = (
            settings if isinstance(settings, ServerSettings) else ServerSettings(_server(settings))
        )
        self.identity = identity or ClientIdentity()
        self._ssl: tuple[int, ssl.SSLContext] | None = None
        self._aio: tuple[asyncio.AbstractEventLoop, int, Any] | None = None
        self._retired: list[Any] = []
        self._sync: tuple[int, Any] | None = None

    def __repr__(self) -> str:
        return f"Client(host={self.host!r})"

    @property
    def host(self) -> str:
        return self.settings.server

    @property
    def namespace(self) -> str:
        return self.settings.namespace

    def ssl_context(self) -> ssl.SSLContext:
        """Built once per client certificate (a plugin may hand out a new one)."""
        if self._ssl is None or self._ssl[0] != self.identity.generation:
            self._ssl = (self.identity.generation, _ssl_context(self.settings, self.identity))
        return self._ssl[1]

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "Content-Type": content_type or "application/json"}
        token = self.identity.token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if self.settings.impersonate_user:
            headers["Impersonate-User"] = self.settings.impersonate_user
        return headers

    def _request(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]] | None,
        content_type: str | None,
        body: Any,
    ) -> dict[str, Any]:
        """What both clients' ``param_serialize`` take."""
        headers = self._headers(content_type)
        return {
            "method": method,
            "resource_path": path,
            "query_params": list(query or ()),
            "header_params": headers,
            "body": body,
        }

    def _groups(self) -> list[tuple[str, str]]:
        return [("Impersonate-Group", group) for group in self.settings.impersonate_groups]

    # --- kubernetes.aio, for the operator

    def _aio_api(self) -> Any:
        loop = asyncio.get_running_loop()
        generation = self.identity.generation
        if self._aio is None or self._aio[0] is not loop or self._aio[1] != generation:
            if self._aio is not None and self._aio[0] is loop:
                self._retired.append(self._aio[2])  # calls may still be in flight on it
            configuration = aio_client.Configuration(host=self.settings.server)
            configuration.proxy = self.settings.proxy_url
            configuration.tls_server_name = self.settings.tls_server_name
            configuration.connection_pool_maxsize = 50
            api = aio_client.ApiClient(configuration)
            api.rest_client.ssl_context = self.ssl_context()
            self._aio = (loop, generation, api)
        return self._aio[2]

    async def call(
        self,
        path: str,
        method: str,
        *,
        body: Any = None,
        content_type: str | None = None,
        query: Sequence[tuple[str, str]] | None = None,
    ) -> Any:
        for attempt in (1, 2):
            with _credential_errors():
                await self.identity.refresh()
            api = self._aio_api()
            _, url, headers, data, _ = await api.param_serialize(
                **self._request(method, path, query, content_type, body)
            )
            sent = multidict.CIMultiDict(headers)
            sent.extend(self._groups())
            try:
                response = await api.call_api(
                    method, url, header_params=sent, body=data, _request_timeout=_AIO_TIMEOUT
                )
                raw = await response.read()
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise ports.Unavailable(_one_line(exc) or type(exc).__name__) from None
            if response.status == 401 and attempt == 1 and self.identity.plugin is not None:
                self.identity.invalidate()  # revoked or expired early: ask the plugin again
                continue
            return _decode(response.status, response.reason or "", raw)
        raise AssertionError("unreachable")  # pragma: no cover

    async def connection(self) -> ports.Credentials:
        """For kopf's login: the same server, trust and identity, and when to ask again."""
        try:
            # kopf logs in at start, after a 401 and when ``expiration`` passes: a plugin's
            # credential is renewed unless it was fetched a moment ago.
            fresh = time.time() - self.identity.fetched < 10
            if self.identity.plugin is not None:
                await self.identity.refresh(force=not fresh)
            token = self.identity.token()
        except (KubeConfigError, ports.Unavailable) as exc:
            raise ports.Unavailable(str(exc)) from None
        expires: float | None = None
        if self.identity.token_file:
            expires = time.time() + TOKEN_FILE_PERIOD
        elif self.identity.expires is not None:
            expires = self.identity.expires - EXPIRY_SKEW
        return ports.Credentials(
            server=self.settings.server,
            ca_data=self.settings.ca_data,
            insecure=self.settings.insecure,
            token=token,
            certificate_data=self.identity.certificate,
            private_key_data=self.identity.key,
            proxy_url=self.settings.proxy_url,
            namespace=self.settings.namespace,
            expiration=None if expires is None else datetime.datetime.fromtimestamp(expires, datetime.UTC),
        )

    async def close(self) -> None:
        apis = [*self._retired, *([self._aio[2]] if self._aio is not None else [])]
        self._retired, self._aio = [], None
        for api in apis:
            await api.close()

    # --- the sync client, for command-line tools

    def _sync_api(self) -> Any:
        if self._sync is None or self._sync[0] != self.identity.generation:
            api = sync_client.ApiClient(sync_client.Configuration(host=self.settings.server))
            api.rest_client.pool_manager = self._pool()
            self._sync = (self.identity.generation, api)
        return self._sync[1]

    def _pool(self) -> urllib3.PoolManager:
        options: dict[str, Any] = {
            "num_pools": 4,
            "maxsize": 4,
            "retries": False,
            "ssl_context": self.ssl_context(),
        }
        if self.settings.tls_server_name:
            options["server_hostname"] = self.settings.tls_server_name
        if self.settings.insecure:  # asked for in the kubeconfig; kubectl does not warn on each call
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        proxy = self.settings.proxy_url or _env_proxy(self.settings.server)
        return urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)

    def call_sync(
        self,
        path: str,
        method: str,
        *,
        body: Any = None,
        content_type: str | None = None,
        query: Sequence[tuple[str, str]] | None = None,
    ) -> Any:
        for attempt in (1, 2):
            with _credential_errors():
                self.identity.refresh_sync()
            api = self._sync_api()
            _, url, headers, data, _ = api.param_serialize(
                **self._request(method, path, query, content_type, body)
            )
            sent = urllib3.HTTPHeaderDict(headers)
            for name, value in self._groups():
                sent.add(name, value)
            try:
                response = api.call_api(
                    method,
                    url,
                    header_params=sent,
                    body=data,
                    _request_timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
                )
                raw = response.read()
            except sync_client.ApiException as exc:  # the sync client's wrapping of TLS errors
                raise ports.Unavailable(_one_line(exc.reason)) from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise ports.Unavailable(_one_line(exc)) from None
            if response.status == 401 and attempt == 1 and self.identity.plugin is not None:
                self.identity.invalidate()
                continue
            return _decode(response.status, response.reason or "", raw)
        raise AssertionError("unreachable")  # pragma: no cover


@contextlib.contextmanager
def _credential_errors() -> Iterator[None]:
    """A plugin that cannot give credentials makes the call unavailable, like a down server."""
    try:
        yield
    except KubeConfigError as exc:
        raise ports.Unavailable(str(exc)) from None


_AIO_TIMEOUT = aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)


def _env_proxy(server: str) -> str | None:
    """``HTTPS_PROXY``/``HTTP_PROXY`` and ``NO_PROXY`` as aiohttp (``trust_env``) and kopf read them."""
    parts = urllib.parse.urlsplit(server)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def _decode(status: int, reason: str, raw: bytes) -> Any:
    try:
        payload = json.loads(raw) if raw else None
    except ValueError:
        payload = None
    if status >= 400:
        message = payload.get("message") if isinstance(payload, dict) else None
        raise ApiError(status, str(message or reason or raw[:200].decode(errors="replace")))
    return payload


# --- loading ----------------------------------------------------------------------------------


def _server(url: str) -> str:
    """The server URL with its scheme in lower case: ``HTTPS://`` is TLS like ``https://``."""
    parts = urllib.parse.urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.netloc:
        raise KubeConfigError(f"the server {url!r} is not an http(s) URL")
    return urllib.parse.urlunsplit(parts._replace(scheme=scheme)).rstrip("/")


def _proxy(url: str) -> str:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise KubeConfigError(f"proxy-url {scheme}:// is not supported (http:// and https:// proxies are)")
    return url


def _pem(entry: Mapping[str, Any], field: str, base: pathlib.Path) -> bytes | None:
    """A ``*-data`` field (base64) or a path field (relative to its kubeconfig), as PEM bytes."""
    data = entry.get(f"{field}-data")
    if data:
        try:
            return base64.b64decode(str(data), validate=True)
        except ValueError:
            raise KubeConfigError(f"{field}-data is not base64") from None
    path = entry.get(field)
    if path:
        return (base / os.path.expanduser(str(path))).read_bytes()
    return None


def _refuse_unknown(kind: str, name: str, entry: Mapping[str, Any], allowed: frozenset[str]) -> None:
    for key in entry:
        if key in _UNSUPPORTED:
            raise KubeConfigError(f"{kind} {name}: {_UNSUPPORTED[key]}")
        if key not in allowed:
            raise KubeConfigError(f"{kind} {name}: the setting {key} is not supported")


def _plugin(spec: Mapping[str, Any], base: pathlib.Path, cluster: Mapping[str, Any], user: str) -> Plugin:
    _refuse_unknown("exec plugin of user", user, spec, _EXEC_KEYS)
    if spec.get("interactiveMode") == "Always":
        raise KubeConfigError(f"user {user}: the exec plugin needs a terminal (interactiveMode: Always)")
    command = str(spec.get("command") or "")
    if not command:
        raise KubeConfigError(f"user {user}: the exec plugin has no command")
    if os.sep in command and not os.path.isabs(command):
        command = str((base / command).resolve())  # like kubectl: relative to the kubeconfig
    info = None
    if spec.get("provideClusterInfo"):
        info = {
            "server": cluster.get("server"),
            "certificate-authority-data": cluster.get("certificate-authority-data"),
            "insecure-skip-tls-verify": bool(cluster.get("insecure-skip-tls-verify")),
            "tls-server-name": cluster.get("tls-server-name"),
            "proxy-url": cluster.get("proxy-url"),
        }
        info = {k: v for k, v in info.items() if v not in (None, "")}
    return Plugin(
        command,
        tuple(str(a) for a in spec.get("args") or ()),
        {str(e["name"]): str(e["value"]) for e in spec.get("env") or ()},
        str(spec.get("apiVersion") or "client.authentication.k8s.io/v1"),
        info,
        str(spec["installHint"]) if spec.get("installHint") else None,
    )


def _kubeconfig_paths(kubeconfig: str | None) -> list[str]:
    listed = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    paths = [os.path.expanduser(p) for p in listed.split(os.pathsep) if p]
    if not any(os.path.exists(p) for p in paths):
        raise FileNotFoundError("no such file")
    return [p for p in paths if os.path.exists(p)]


def _named(merged: Any, section: str, name: str) -> tuple[Mapping[str, Any], pathlib.Path] | None:
    for node in merged.value.get(section) or []:
        entry = getattr(node, "value", node)
        if isinstance(entry, Mapping) and str(entry.get("name")) == name:
            body = entry.get(section[:-1]) or {}
            if not isinstance(body, Mapping):
                raise ValueError(f"{section[:-1]} {name} is not a mapping")
            return body, pathlib.Path(str(getattr(node, "path", None) or ".")).resolve().parent
    return None


def _from_kubeconfig(kubeconfig: str | None) -> Client:
    paths = _kubeconfig_paths(kubeconfig)
    for path in paths:  # the official merger assumes mappings and fails obscurely otherwise
        if not isinstance(yaml.safe_load(pathlib.Path(path).read_text()), Mapping):
            raise ValueError(f"{path} is not a kubeconfig (expected a YAML mapping)")
    merger = kube_config.KubeConfigMerger(os.pathsep.join(paths))  # type: ignore[no-untyped-call]
    # Like kubectl: the first file to name a current context wins.
    current = next(
        (
            f.get("current-context")
            for f in merger.config_files.values()
            if isinstance(f, Mapping) and f.get("current-context")
        ),
        None,
    )
    context = _named(merger.config, "contexts", str(current)) if current else None
    if context is None:
        raise ValueError("no current context")
    cluster_name, user_name = str(context[0].get("cluster")), str(context[0].get("user") or "")
    found = _named(merger.config, "clusters", cluster_name)
    if found is None:
        raise ValueError(f"context {current} names an unknown cluster {cluster_name}")
    cluster, cbase = found
    user, ubase = _named(merger.config, "users", user_name) or ({}, cbase)
    _refuse_unknown("cluster", cluster_name, cluster, _CLUSTER_KEYS)
    _refuse_unknown("user", user_name, user, _USER_KEYS)
    if not cluster.get("server"):
        raise ValueError(f"cluster {cluster_name} has no server")
    ca = _pem(cluster, "certificate-authority", cbase)
    insecure = bool(cluster.get("insecure-skip-tls-verify"))
    if ca and insecure:
        raise KubeConfigError(
            f"cluster {cluster_name} sets both a certificate authority and insecure-skip-tls-verify "
            "(kubectl refuses this too)"
        )
    certificate, key = _pem(user, "client-certificate", ubase), _pem(user, "client-key", ubase)
    if bool(certificate) != bool(key):
        raise KubeConfigError(
            f"user {user_name} has a client certificate without its key, or a key without its certificate"
        )
    token_file = user.get("tokenFile")
    settings = ServerSettings(
        _server(str(cluster["server"])),
        namespace=str(context[0].get("namespace") or "default"),
        ca_data=ca.decode() if ca else None,
        insecure=insecure,
        tls_server_name=str(cluster["tls-server-name"]) if cluster.get("tls-server-name") else None,
        proxy_url=_proxy(str(cluster["proxy-url"])) if cluster.get("proxy-url") else None,
        impersonate_user=str(user["as"]) if user.get("as") else None,
        impersonate_groups=tuple(str(g) for g in user.get("as-groups") or ()),
    )
    identity = ClientIdentity(
        token=str(user["token"]) if user.get("token") else None,
        token_file=str((ubase / os.path.expanduser(str(token_file))).resolve()) if token_file else None,
        certificate=certificate,
        key=key,
        plugin=_plugin(user["exec"], ubase, cluster, user_name) if user.get("exec") else None,
    )
    if identity.token_file:
        identity.token()  # unreadable now: say so now
    return Client(settings, identity)


def _in_cluster() -> Client:
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if ":" in host:
        host = f"[{host}]"
    namespace_file = _SERVICE_ACCOUNT / "namespace"
    return Client(
        ServerSettings(
            f"https://{host}:{port}",
            namespace=namespace_file.read_text().strip() if namespace_file.exists() else "default",
            ca_data=(_SERVICE_ACCOUNT / "ca.crt").read_text(),
        ),
        ClientIdentity(token_file=str(_SERVICE_ACCOUNT / "token")),
    )


def in_cluster_available(kubeconfig: str | None) -> bool:
    """In a pod, with no kubeconfig named by flag or ``$KUBECONFIG``, and a token mounted."""
    return (
        kubeconfig is None
        and not os.environ.get("KUBECONFIG")
        and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
        and (_SERVICE_ACCOUNT / "token").is_file()
    )


def load_client(kubeconfig: str | None, *, for_kopf: bool = False) -> Client:
    """In-cluster credentials when running in a pod, else the kubeconfig (flag, env, default).

    ``for_kopf``: kopf's own client will use the same configuration, and it cannot impersonate
    or set a TLS server name, so those are refused rather than half applied."""
    try:
        client = _in_cluster() if in_cluster_available(kubeconfig) else _from_kubeconfig(kubeconfig)
    except KubeConfigError as exc:
        raise KubeConfigError(
            f"cannot use the Kubernetes credentials in {_where(kubeconfig)}: {exc}"
        ) from None
    except (
        yaml.YAMLError,
        OSError,
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        ports.Unavailable,
    ) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, FileNotFoundError) and exc.filename is None:
            detail = "no such file"
            if os.environ.get("KUBERNETES_SERVICE_HOST") and kubeconfig is None:
                detail += f" (and no service-account token is mounted at {_SERVICE_ACCOUNT})"
        elif isinstance(exc, KeyError):
            detail = f"missing {detail}"
        raise KubeConfigError(
            f"cannot load Kubernetes credentials from {_where(kubeconfig)}: {detail}"
        ) from None
    if for_kopf:
        settings = client.settings
        if settings.impersonate_user or settings.impersonate_groups:
            raise KubeConfigError(
                "impersonation (as/as-groups) is not supported by homeostat run: kopf cannot impersonate"
            )
        if settings.tls_server_name:
            raise KubeConfigError(
                "tls-server-name is not supported by homeostat run: kopf's client cannot set it"
            )
    return client


def _where(kubeconfig: str | None) -> str:
    if in_cluster_available(kubeconfig):
        return str(_SERVICE_ACCOUNT)
    return kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"


def preflight(client: Client) -> str:
    """Check the API server answers and accepts our credentials; return its version."""
    try:
        client.identity.refresh_sync()
    except KubeConfigError as exc:
        raise KubeConfigError(f"cannot get credentials for {client.host}: {exc}") from None
    try:
        version = client.call_sync("/version", "GET")
    except ApiError as exc:
        raise KubeConfigError(
            f"the API server at {client.host} refused us: {exc.status} {exc.message}"
        ) from None
    except ports.Unavailable as exc:
        raise KubeConfigError(f"cannot reach the API server at {client.host}: {exc}") from None
    return str((version or {}).get("gitVersion") or "unknown")


_VERIFY = re.compile(r"certificate verify failed: ([^()'\"\]\n]+)")


def _one_line(exc: object) -> str:
    text = str(exc)
    # Socket and TLS errors arrive wrapped in long reprs; keep the part a human can act on.
    verify = _VERIFY.search(text)
    if verify:
        return f"certificate verify failed: {verify.group(1).strip()}"
    if "Connection refused" in text or "Connect call failed" in text:
        return "connection refused"
    if "Name or service not known" in text or "Temporary failure in name resolution" in text:
        return "host name not resolved"
    if "timed out" in text or isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timed out"
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines or [""])[-1 if text.startswith("SSLError") else 0][:200]


def workload_error(exc: ApiError) -> Exception:
    """What an error status means for a write of a workload object."""
    if exc.status in (400, 422) or (
        exc.status == 500 and (_CONVERSION_FAILURE in exc.message or _TYPED_PATCH_FAILURE in exc.message)
    ):
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
        body = json.dumps(manifest, ensure_ascii=False).encode()
        return dict(await self._call(path, "PATCH", body, _APPLY, query))

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
