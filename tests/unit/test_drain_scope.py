"""Which pods a node drain evicts when the operator is confined to its namespaces (ADR 0014).

The selection is table-driven; the drain itself runs against a small canned API server on
127.0.0.1 (real kubernetes client, real HTTP), which answers 403 to anything a namespaced
install's RBAC would refuse, so the test fails if the drain reaches outside its namespaces.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from homeostat import ports
from homeostat.adapters import kube, kube_healing

NODE = "kwok-node-1"


def pod(namespace: str, name: str, *, owner: str = "ReplicaSet", phase: str = "Running") -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": namespace,
            "name": name,
            "ownerReferences": [{"kind": owner, "name": "x", "controller": True}] if owner else [],
        },
        "spec": {"nodeName": NODE},
        "status": {"phase": phase},
    }


@pytest.mark.parametrize(
    ("namespace", "patterns", "expected"),
    [
        ("team-a", (), True),  # no patterns: every namespace (cluster-wide install)
        ("team-a", ("team-a",), True),
        ("team-b", ("team-a",), False),
        ("team-b", ("team-*",), True),
        ("kube-system", ("team-*",), False),
        ("team-b", ("team-*", "!team-b"), False),
        ("team-c", ("team-*", "!team-b"), True),
        ("anything", ("!kube-system",), True),  # only exclusions: everything else
        ("kube-system", ("!kube-system",), False),
        ("team-a1", ("team-a",), False),  # exact names are not prefixes
    ],
)
def test_in_scope(namespace: str, patterns: tuple[str, ...], expected: bool) -> None:
    assert kube_healing.in_scope(namespace, patterns) is expected


PODS = [
    pod("team-a", "web-1"),
    pod("team-a", "logs-x", owner="DaemonSet"),
    pod("team-a", "job-done", phase="Succeeded"),
    pod("team-b", "db-0", owner="StatefulSet"),
    pod("kube-system", "coredns-1"),
    pod("team-a", "bare", owner=""),
]


@pytest.mark.parametrize(
    ("patterns", "evicted"),
    [
        ((), ["team-a/web-1", "team-b/db-0", "kube-system/coredns-1"]),
        (("team-a",), ["team-a/web-1"]),
        (("team-*",), ["team-a/web-1", "team-b/db-0"]),
        (("team-*", "!team-a"), ["team-b/db-0"]),
        (("other",), []),
    ],
)
def test_which_pods_a_confined_drain_evicts(patterns: tuple[str, ...], evicted: list[str]) -> None:
    chosen = kube_healing.evictions(PODS, patterns)
    assert [f"{m['namespace']}/{m['name']}" for m in chosen] == evicted


@pytest.mark.parametrize(
    ("drained", "text"),
    [
        (ports.Drained(3), "node n1 drained, 3 pod(s) evicted"),
        (
            ports.Drained(2, (), ("team-a/bare",)),
            "node n1 drained, 2 pod(s) evicted; 1 pod(s) no controller owns were left in place: team-a/bare",
        ),
        (
            ports.Drained(1, ("team-a", "team-b")),
            "node n1 cordoned and drained of the pods in namespace(s) team-a, team-b, 1 pod(s) evicted; "
            "pods of other namespaces were left in place",
        ),
    ],
)
def test_the_drain_says_what_it_left(drained: ports.Drained, text: str) -> None:
    assert drained.describe("n1") == text


# --- the drain against a canned API server ----------------------------------------------------


class FakeAPI:
    """Just enough of the API server for a drain, with a namespaced install's RBAC: pods may be
    listed and evicted in ``allowed`` namespaces only, namespaces listed, nodes patched."""

    def __init__(self, pods: list[dict[str, Any]], allowed: set[str], namespaces: list[str]) -> None:
        self.pods, self.allowed, self.namespaces = pods, allowed, namespaces
        self.requests: list[tuple[str, str]] = []
        self.evicted: list[str] = []
        self.cordoned: list[str] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.handle(self, "GET")

            def do_POST(self) -> None:
                fake.handle(self, "POST")

            def do_PATCH(self) -> None:
                fake.handle(self, "PATCH")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def handle(self, request: http.server.BaseHTTPRequestHandler, method: str) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        if length:
            request.rfile.read(length)
        url = urllib.parse.urlsplit(request.path)
        query = urllib.parse.parse_qs(url.query)
        parts = url.path.strip("/").split("/")
        self.requests.append((method, url.path))
        if method == "PATCH" and parts[:3] == ["api", "v1", "nodes"]:
            self.cordoned.append(parts[3])
            return self.send(request, 200, {"kind": "Node", "metadata": {"name": parts[3]}})
        if method == "GET" and url.path == "/api/v1/namespaces":
            items = [{"metadata": {"name": n}} for n in self.namespaces]
            return self.send(request, 200, {"kind": "NamespaceList", "items": items})
        if method == "GET" and parts[:3] == ["api", "v1", "namespaces"] and parts[4:] == ["pods"]:
            namespace = parts[3]
            if namespace not in self.allowed:
                return self.forbidden(request)
            node = query.get("fieldSelector", [""])[0].removeprefix("spec.nodeName=")
            items = [
                p
                for p in self.pods
                if p["metadata"]["namespace"] == namespace and p["spec"]["nodeName"] == node
            ]
            return self.send(request, 200, {"kind": "PodList", "items": items})
        if method == "POST" and parts[-1] == "eviction" and parts[3] in self.allowed:
            self.evicted.append(f"{parts[3]}/{parts[5]}")
            return self.send(request, 201, {"kind": "Status", "status": "Success"})
        return self.forbidden(request)  # /api/v1/pods (cluster-wide) and everything else

    def forbidden(self, request: http.server.BaseHTTPRequestHandler) -> None:
        self.send(request, 403, {"kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403})

    @staticmethod
    def send(request: http.server.BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)


@pytest.fixture
def api() -> Iterator[FakeAPI]:
    fake = FakeAPI(PODS, {"team-a", "team-b"}, ["team-a", "team-b", "kube-system", "default"])
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def healing(fake: FakeAPI, patterns: tuple[str, ...]) -> kube_healing.KubernetesHealing:
    return kube_healing.KubernetesHealing(kube.Client(fake.url), drain_namespaces=patterns)


@pytest.mark.parametrize(
    ("patterns", "evicted", "namespaces"),
    [
        (("team-a",), ["team-a/web-1"], ("team-a",)),
        (("team-a", "team-b"), ["team-a/web-1", "team-b/db-0"], ("team-a", "team-b")),
        (("team-*",), ["team-a/web-1", "team-b/db-0"], ("team-a", "team-b")),
    ],
)
def test_a_confined_drain_cordons_and_stays_in_its_namespaces(
    api: FakeAPI, patterns: tuple[str, ...], evicted: list[str], namespaces: tuple[str, ...]
) -> None:
    drained = asyncio.run(healing(api, patterns).drain(NODE))
    # Every row's namespaces include team-a, whose pod with no controller stays.
    assert drained == ports.Drained(len(evicted), namespaces, ("team-a/bare",))
    assert api.cordoned == [NODE]
    assert sorted(api.evicted) == sorted(evicted)
    assert ("GET", "/api/v1/pods") not in api.requests  # never the cluster-wide list
    assert "kube-system/coredns-1" not in api.evicted
    assert "left in place" in drained.describe(NODE)


def test_exact_namespaces_need_no_namespace_list(api: FakeAPI) -> None:
    asyncio.run(healing(api, ("team-a",)).drain(NODE))
    assert ("GET", "/api/v1/namespaces") not in api.requests


def test_an_unconfined_drain_without_cluster_rights_says_how_to_fix_it(api: FakeAPI) -> None:
    with pytest.raises(ports.Unavailable, match=r"drainAllNamespaces.*--drain-scope=watched"):
        asyncio.run(healing(api, ()).drain(NODE))
    assert api.evicted == []


def test_a_drain_judges_each_pod_s_scope_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # The pods a drain lists are put in scope once, and the evictions are chosen among those.
    asked: list[str] = []
    real = kube_healing.in_scope

    def counted(namespace: str, patterns: Any) -> bool:
        asked.append(namespace)
        return real(namespace, patterns)

    listed = {"team-a": [p for p in PODS if p["metadata"]["namespace"] == "team-a"]}
    evicted: list[str] = []

    async def call(
        path: str, method: str, body: Any = None, content_type: str | None = None, **kw: Any
    ) -> Any:
        if path.endswith("/eviction"):
            evicted.append(path.split("/")[-2])
            return {}
        if path.endswith("/pods"):
            return {"items": listed[path.split("/")[-2]]}
        return {}

    monkeypatch.setattr(kube_healing, "in_scope", counted)
    healing = object.__new__(kube_healing.KubernetesHealing)
    healing.drain_namespaces = ("team-a",)
    monkeypatch.setattr(healing, "_call", call)
    drained = asyncio.run(healing.drain(NODE))
    assert (evicted, drained.unmanaged) == (["web-1"], ("team-a/bare",))
    assert sorted(asked) == sorted(p["metadata"]["namespace"] for p in listed["team-a"])
