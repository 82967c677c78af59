"""The API-server adapter over the official client: kubeconfig reading and error mapping.

Credentials are read the way kubectl reads them (current context, ``*-data`` and path fields,
tokens, token files, exec plugins); calls go to a local HTTP server with canned answers, over
both the async path the operator uses (``kubernetes.aio``) and the sync client the kubectl
plugin uses. TLS, proxies, plugins and in-cluster credentials: ``test_kube_tls.py``.
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from homeostat import ports
from homeostat.adapters import kube
from homeostat.core import children as kids


def kubeconfig(tmp_path: Path, user: dict[str, Any], cluster: dict[str, Any] | None = None) -> Path:
    path = tmp_path / "config"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "here",
                "contexts": [{"name": "here", "context": {"cluster": "c", "user": "u", "namespace": "team"}}],
                "clusters": [{"name": "c", "cluster": cluster or {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "u", "user": user}],
            }
        )
    )
    return path


def test_a_token_and_the_context_namespace(tmp_path: Path) -> None:
    client = kube.load_client(str(kubeconfig(tmp_path, {"token": "s3cret"})))
    assert client.host == "https://127.0.0.1:6443"
    assert client.namespace == "team"
    assert client.identity.token() == "s3cret"
    creds = asyncio.run(client.connection())
    assert creds.token == "s3cret" and creds.expiration is None  # static: no reason to log in again
    assert "s3cret" not in repr(client) + repr(creds) + repr(client.identity) + repr(client.settings)


def test_data_fields_stay_in_memory(tmp_path: Path) -> None:
    ca = base64.b64encode(b"CA PEM").decode()
    cert = base64.b64encode(b"CERT PEM").decode()
    key = base64.b64encode(b"KEY PEM").decode()
    config = kubeconfig(
        tmp_path,
        {"client-certificate-data": cert, "client-key-data": key},
        {"server": "https://127.0.0.1:6443", "certificate-authority-data": ca},
    )
    before = set(os.listdir(tempfile.gettempdir()))
    creds = asyncio.run(kube.load_client(str(config)).connection())
    assert (creds.ca_data, creds.certificate_data, creds.private_key_data) == (
        "CA PEM",
        b"CERT PEM",
        b"KEY PEM",
    )
    assert set(os.listdir(tempfile.gettempdir())) <= before  # nothing written


def test_relative_paths_are_resolved_against_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    for name in ("ca.crt", "me.crt", "me.key"):
        (tmp_path / "certs" / name).write_bytes(name.encode())
    config = kubeconfig(
        tmp_path,
        {"client-certificate": "certs/me.crt", "client-key": "certs/me.key"},
        {"server": "https://127.0.0.1:6443", "certificate-authority": "certs/ca.crt"},
    )
    creds = asyncio.run(kube.load_client(str(config)).connection())
    assert (creds.ca_data, creds.certificate_data, creds.private_key_data) == ("ca.crt", b"me.crt", b"me.key")


def test_a_token_file_is_read_again_on_every_call(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    client = kube.load_client(str(kubeconfig(tmp_path, {"tokenFile": "token"})))
    assert client.identity.token() == "first"
    token.write_text("rotated\n")
    creds = asyncio.run(client.connection())
    assert creds.token == "rotated"
    # kopf logs in again within a minute, so it follows the rotation too.
    assert creds.expiration is not None
    assert 0 < creds.expiration.timestamp() - time.time() <= kube.TOKEN_FILE_PERIOD


def test_an_exec_plugin_supplies_the_token(tmp_path: Path) -> None:
    script = tmp_path / "plugin.py"
    script.write_text(
        "import json, os\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', 'kind': 'ExecCredential',"
        " 'status': {'token': os.environ['WHO'], 'expirationTimestamp': '2999-01-01T00:00:00Z'}}))\n"
    )
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(script)],
            "env": [{"name": "WHO", "value": "t0k"}],
        }
    }
    client = kube.load_client(str(kubeconfig(tmp_path, user)))
    client.identity.refresh_sync()
    assert client.identity.token() == "t0k"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- just a list\n", "not a kubeconfig"),
        ("apiVersion: v1\nkind: Config\n", "no current context"),
        (
            "current-context: x\ncontexts: [{name: x, context: {cluster: gone, user: u}}]\n",
            "unknown cluster gone",
        ),
        (
            "current-context: x\ncontexts: [{name: x, context: {cluster: c}}]\n"
            "clusters: [{name: c, cluster: {}}]\n",
            "has no server",
        ),
        ("{{{", "cannot load Kubernetes credentials"),
    ],
)
def test_unusable_kubeconfigs_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config"
    path.write_text(text)
    with pytest.raises(kube.KubeConfigError) as caught:
        kube.load_client(str(path))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_kubeconfig_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(kube.KubeConfigError, match="nowhere"):
        kube.load_client(str(tmp_path / "nowhere"))


# --- calls -------------------------------------------------------------------------------------


class Canned(http.server.BaseHTTPRequestHandler):
    answers: ClassVar[dict[tuple[str, str], tuple[int, Any]]] = {}
    seen: ClassVar[list[dict[str, Any]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.seen.append(
            {
                "method": self.command,
                "path": self.path,
                "content_type": self.headers.get("Content-Type"),
                "authorization": self.headers.get("Authorization"),
                "body": json.loads(body) if body else None,
            }
        )
        status, payload = self.answers.get(
            (self.command, self.path.split("?")[0]), (404, {"message": "nope"})
        )
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_DELETE = _answer

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Canned.seen = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Canned)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_both_paths_send_the_token_and_json(server: str) -> None:
    Canned.answers = {("POST", "/api/v1/namespaces/a/events"): (201, {"ok": True})}
    client = kube.Client(server, kube.ClientIdentity(token="tkn"))
    assert client.call_sync("/api/v1/namespaces/a/events", "POST", body={"x": 1}) == {"ok": True}
    assert asyncio.run(client.call("/api/v1/namespaces/a/events", "POST", body={"x": 2})) == {"ok": True}
    for seen, value in zip(Canned.seen, (1, 2), strict=True):
        assert seen["authorization"] == "Bearer tkn"
        assert seen["content_type"] == "application/json"
        assert seen["body"] == {"x": value}


@pytest.mark.parametrize(
    ("status", "payload", "error", "text"),
    [
        (422, {"message": "spec.replicas: Invalid value"}, ports.Rejected, "spec.replicas: Invalid value"),
        (500, {"message": "unable to convert unstructured object to x"}, ports.Rejected, "unable to convert"),
        (500, {"message": "etcd is sad"}, ports.Unavailable, "500: etcd is sad"),
        (404, {"message": "not found"}, ports.Unavailable, "404: not found"),
        (409, {"message": "conflict"}, ports.Unavailable, "409: conflict"),
    ],
)
def test_workload_errors_mean_the_same_on_both_paths(
    server: str, status: int, payload: Any, error: type[Exception], text: str
) -> None:
    path = "/apis/apps/v1/namespaces/a/deployments/web"
    Canned.answers = {("PATCH", path): (status, payload)}
    workloads = kube.KubernetesWorkloads(kube.Client(server))
    with pytest.raises(error, match=text):
        workloads._call_sync(path, "PATCH", {"spec": {}}, "application/merge-patch+json")
    with pytest.raises(error, match=text):
        asyncio.run(workloads._call(path, "PATCH", {"spec": {}}, "application/merge-patch+json"))


def test_a_missing_object_reads_as_none(server: str) -> None:
    Canned.answers = {}
    workloads = kube.KubernetesWorkloads(kube.Client(server))
    ref = kids.ChildRef("apps/v1", "Deployment", "a", "web")
    assert workloads.read_sync(ref) is None
    assert asyncio.run(workloads.get(ref)) is None


def test_an_unreachable_server_is_unavailable_on_both_paths() -> None:
    client = kube.Client("http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(ports.Unavailable, match="connection refused"):
        client.call_sync("/version", "GET")
    with pytest.raises(ports.Unavailable, match="connection refused"):
        asyncio.run(client.call("/version", "GET"))


def test_preflight_reports_the_version_or_one_line(server: str) -> None:
    Canned.answers = {("GET", "/version"): (200, {"gitVersion": "v1.34.4"})}
    assert kube.preflight(kube.Client(server)) == "v1.34.4"
    Canned.answers = {("GET", "/version"): (401, {"message": "Unauthorized"})}
    with pytest.raises(kube.KubeConfigError, match="refused us: 401 Unauthorized"):
        kube.preflight(kube.Client(server))


def _slow_plugin(tmp_path: Path, *, fail: bool = False) -> kube.Client:
    """A client whose credential plugin takes a while, as cloud CLIs do, and logs each run."""
    script = tmp_path / "plugin.py"
    script.write_text(
        "import json, sys, time\n"
        f"open({str(tmp_path / 'runs')!r}, 'a').write('run\\n')\n"
        "time.sleep(1)\n"
        + ("sys.exit(3)\n" if fail else "")
        + "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', 'status':"
        " {'token': 'slow', 'expirationTimestamp': '2999-01-01T00:00:00Z'}}))\n"
    )
    plugin = kube.Plugin(sys.executable, (str(script),))
    return kube.Client("http://127.0.0.1:9", kube.ClientIdentity(plugin=plugin))


def test_a_credential_plugin_runs_off_the_event_loop_and_once_for_concurrent_calls(
    server: str, tmp_path: Path
) -> None:
    Canned.answers = {("GET", "/version"): (200, {"gitVersion": "v1"})}
    client = kube.Client(server, _slow_plugin(tmp_path).identity)

    async def scenario() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        task = asyncio.create_task(ticker())
        answers = await asyncio.gather(*(client.call("/version", "GET") for _ in range(5)))
        task.cancel()
        await client.close()
        assert answers == [{"gitVersion": "v1"}] * 5
        return ticks

    ticks = asyncio.run(scenario())
    # The plugin sleeps for a second; a loop it blocked could not have ticked meanwhile.
    assert ticks >= 5
    assert (tmp_path / "runs").read_text().count("run") == 1
    assert {s["authorization"] for s in Canned.seen} == {"Bearer slow"}


def test_a_failing_credential_plugin_makes_calls_unavailable(tmp_path: Path) -> None:
    client = _slow_plugin(tmp_path, fail=True)
    with pytest.raises(ports.Unavailable, match="credential plugin"):
        asyncio.run(client.call("/version", "GET"))
