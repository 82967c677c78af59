"""The API-server adapter over HTTPS: TLS that fails closed, client certificates, the TLS server
name, proxies, exec plugins, token files and in-cluster credentials (issue #13).

A CA made here with openssl signs the servers' and the client's certificates; every server
(the API double and a CONNECT proxy) binds to 127.0.0.1. Each test runs with a private temporary
directory and checks that no file (a client key above all) is left in it.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import http.server
import json
import os
import select
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import test_kube_client

from homeostat import ports
from homeostat.adapters import kube

PLUGIN_API = "client.authentication.k8s.io/v1"


# --- certificates -----------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _leaf(folder: Path, ca: str, name: str, extensions: str) -> None:
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder,
    )  # fmt: skip
    (folder / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", "-extfile", f"{name}.ext", cwd=folder,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other-ca"):
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2", "-subj", f"/CN={ca}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
            cwd=folder,
        )  # fmt: skip
    _leaf(folder, "ca", "server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _leaf(folder, "ca", "named", "subjectAltName=DNS:api.internal\nextendedKeyUsage=serverAuth\n")
    _leaf(folder, "ca", "alice", "extendedKeyUsage=clientAuth\n")
    return folder


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


# --- servers ----------------------------------------------------------------------------------


class Echo(http.server.BaseHTTPRequestHandler):
    """Answers every request with what it saw: the credentials and the client certificate."""

    seen: ClassVar[list[dict[str, Any]]] = []

    def do_GET(self) -> None:
        peer = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        subject = dict(pair[0] for pair in (peer or {}).get("subject", ()))
        seen = {
            "authorization": self.headers.get("Authorization"),
            "client": subject.get("commonName"),
            "user": self.headers.get("Impersonate-User"),
            "groups": self.headers.get_all("Impersonate-Group") or [],
        }
        self.seen.append(seen)
        data = json.dumps({"gitVersion": "v1.34.4", **seen}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: Any) -> None:
        pass


class Quiet(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # refused handshakes are what several tests expect


def https_server(pki: Path, cert: str = "server") -> Iterator[str]:
    Echo.seen = []
    httpd = Quiet(("127.0.0.1", 0), Echo)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / f"{cert}.crt", pki / f"{cert}.key")
    context.load_verify_locations(pki / "ca.crt")
    context.verify_mode = ssl.CERT_OPTIONAL  # a client certificate is checked when one is sent
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def server(pki: Path) -> Iterator[str]:
    yield from https_server(pki)


@pytest.fixture
def named_server(pki: Path) -> Iterator[str]:
    yield from https_server(pki, "named")


class Tunnel(socketserver.BaseRequestHandler):
    """A CONNECT proxy: it records where it was asked to go and pipes the bytes."""

    targets: ClassVar[list[str]] = []

    def handle(self) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            head += chunk
        method, target = head.split(b" ")[:2]
        if method != b"CONNECT":
            self.request.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        self.targets.append(target.decode())
        host, port = target.decode().rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        sockets = [self.request, upstream]
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [], 5)
                if not readable:
                    return
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is self.request else self.request).sendall(data)
        finally:
            upstream.close()


@pytest.fixture
def proxy() -> Iterator[str]:
    Tunnel.targets = []
    socketserver.ThreadingTCPServer.daemon_threads = True
    tcp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Tunnel)
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{tcp.server_address[1]}"
    tcp.shutdown()
    tcp.server_close()


@pytest.fixture(autouse=True)
def clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No proxy or cluster from the machine; a private temporary directory, empty at the end."""
    for name in (
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "NO_PROXY",
        "no_proxy",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)
    for name in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(name, raising=False)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    yield scratch
    assert list(scratch.iterdir()) == [], "a temporary file was left behind"


def kubeconfig(tmp_path: Path, cluster: dict[str, Any], user: dict[str, Any] | None = None) -> str:
    return str(test_kube_client.kubeconfig(tmp_path, user or {"token": "s3cret"}, cluster))


def both(client: kube.Client) -> list[dict[str, Any]]:
    """``/version`` through the sync client and through kubernetes.aio."""

    async def aio() -> Any:
        try:
            return await client.call("/version", "GET")
        finally:
            await client.close()

    return [client.call_sync("/version", "GET"), asyncio.run(aio())]


def refused(client: kube.Client, match: str) -> None:
    with pytest.raises(ports.Unavailable, match=match):
        client.call_sync("/version", "GET")
    with pytest.raises(ports.Unavailable, match=match):
        asyncio.run(client.call("/version", "GET"))


# --- TLS --------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["https", "HTTPS", "Https"])
def test_a_verified_connection_in_any_letter_case(
    tmp_path: Path, pki: Path, server: str, scheme: str
) -> None:
    url = server.replace("https", scheme, 1)
    client = kube.load_client(
        kubeconfig(tmp_path, {"server": url, "certificate-authority-data": b64(pki / "ca.crt")})
    )
    assert client.host.startswith("https://")
    answers = both(client)
    assert [a["authorization"] for a in answers] == ["Bearer s3cret"] * 2


@pytest.mark.parametrize("scheme", ["https", "HTTPS"])
def test_a_ca_mismatch_is_refused_and_the_token_never_sent(
    tmp_path: Path, pki: Path, server: str, scheme: str
) -> None:
    url = server.replace("https", scheme, 1)
    cluster = {"server": url, "certificate-authority-data": b64(pki / "other-ca.crt")}
    refused(kube.load_client(kubeconfig(tmp_path, cluster)), "certificate verify failed")
    assert Echo.seen == []


def test_insecure_skip_tls_verify(tmp_path: Path, server: str) -> None:
    client = kube.load_client(kubeconfig(tmp_path, {"server": server, "insecure-skip-tls-verify": True}))
    assert len(both(client)) == 2


def test_a_ca_with_insecure_skip_tls_verify_is_refused(tmp_path: Path, pki: Path, server: str) -> None:
    cluster = {
        "server": server,
        "certificate-authority-data": b64(pki / "ca.crt"),
        "insecure-skip-tls-verify": True,
    }
    with pytest.raises(
        kube.KubeConfigError, match="both a certificate authority and insecure-skip-tls-verify"
    ):
        kube.load_client(kubeconfig(tmp_path, cluster))


@pytest.mark.parametrize("as_files", [False, True])
def test_mutual_tls(tmp_path: Path, pki: Path, server: str, as_files: bool) -> None:
    if as_files:
        user = {"client-certificate": str(pki / "alice.crt"), "client-key": str(pki / "alice.key")}
    else:
        user = {"client-certificate-data": b64(pki / "alice.crt"), "client-key-data": b64(pki / "alice.key")}
    client = kube.load_client(
        kubeconfig(tmp_path, {"server": server, "certificate-authority": str(pki / "ca.crt")}, user)
    )
    assert [a["client"] for a in both(client)] == ["alice", "alice"]
    assert [a["authorization"] for a in Echo.seen] == [None, None]


def test_tls_server_name(tmp_path: Path, pki: Path, named_server: str) -> None:
    cluster = {"server": named_server, "certificate-authority-data": b64(pki / "ca.crt")}
    refused(kube.load_client(kubeconfig(tmp_path, cluster)), "certificate verify failed")  # not 127.0.0.1's
    config = kubeconfig(tmp_path, {**cluster, "tls-server-name": "api.internal"})
    assert len(both(kube.load_client(config))) == 2
    with pytest.raises(kube.KubeConfigError, match="tls-server-name is not supported by homeostat run"):
        kube.load_client(config, for_kopf=True)


# --- proxies ----------------------------------------------------------------------------------


def test_proxy_url_is_used_by_both_clients_and_kopf(
    tmp_path: Path, pki: Path, server: str, proxy: str
) -> None:
    cluster = {"server": server, "certificate-authority-data": b64(pki / "ca.crt"), "proxy-url": proxy}
    client = kube.load_client(kubeconfig(tmp_path, cluster))
    assert len(both(client)) == 2
    assert Tunnel.targets == [server.removeprefix("https://")] * 2
    assert asyncio.run(client.connection()).proxy_url == proxy


def test_https_proxy_from_the_environment_is_used_by_both_clients(
    tmp_path: Path, pki: Path, server: str, proxy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy)
    cluster = {"server": server, "certificate-authority-data": b64(pki / "ca.crt")}
    assert len(both(kube.load_client(kubeconfig(tmp_path, cluster)))) == 2
    assert len(Tunnel.targets) == 2
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert len(both(kube.load_client(kubeconfig(tmp_path, cluster)))) == 2
    assert len(Tunnel.targets) == 2  # bypassed, by both


def test_a_socks_proxy_is_refused(tmp_path: Path, server: str) -> None:
    with pytest.raises(kube.KubeConfigError, match="socks5:// is not supported"):
        kube.load_client(kubeconfig(tmp_path, {"server": server, "proxy-url": "socks5://127.0.0.1:1080"}))


# --- exec plugins -----------------------------------------------------------------------------


def plugin_user(tmp_path: Path, status: str, *, name: str = "plugin.py", **spec: Any) -> dict[str, Any]:
    """A plugin that logs each run and its KUBERNETES_EXEC_INFO, then prints ``status`` (Python)."""
    script = tmp_path / name
    script.write_text(
        "import datetime, json, os, sys, time\n"
        f"open({str(tmp_path / 'runs')!r}, 'a').write(os.environ['KUBERNETES_EXEC_INFO'] + '\\n')\n"
        "now = datetime.datetime.now(datetime.timezone.utc)\n"
        "def stamp(s): return (now + datetime.timedelta(seconds=s)).strftime('%Y-%m-%dT%H:%M:%SZ')\n"
        f"status = {status}\n"
        f"print(json.dumps({{'apiVersion': {PLUGIN_API!r}, 'kind': 'ExecCredential', 'status': status}}))\n"
    )
    return {"exec": {"apiVersion": PLUGIN_API, "command": sys.executable, "args": [str(script)], **spec}}


def runs(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "runs").read_text().splitlines()]


def test_a_plugin_token_is_renewed_before_it_expires(tmp_path: Path, pki: Path, server: str) -> None:
    cluster = {"server": server, "certificate-authority-data": b64(pki / "ca.crt")}
    # Expiring within the renewal margin: every call asks again.
    soon = kube.load_client(
        kubeconfig(
            tmp_path, cluster, plugin_user(tmp_path, "{'token': 'soon', 'expirationTimestamp': stamp(30)}")
        )
    )
    both(soon)
    assert len(runs(tmp_path)) == 2
    (tmp_path / "runs").unlink()
    later = kube.load_client(
        kubeconfig(
            tmp_path, cluster, plugin_user(tmp_path, "{'token': 'later', 'expirationTimestamp': stamp(3600)}")
        )
    )
    both(later)
    assert len(runs(tmp_path)) == 1  # cached until near its expiry
    creds = asyncio.run(later.connection())  # kopf: renewed at login, told when to come back
    assert creds.token == "later" and creds.expiration is not None
    remaining = creds.expiration - datetime.datetime.now(datetime.UTC)
    assert 3600 - kube.EXPIRY_SKEW - 30 < remaining.total_seconds() <= 3600 - kube.EXPIRY_SKEW
    assert [a["authorization"] for a in Echo.seen] == ["Bearer soon"] * 2 + ["Bearer later"] * 2


def test_a_plugin_gets_its_exec_info_and_the_cluster(tmp_path: Path, pki: Path, server: str) -> None:
    cluster = {"server": server, "certificate-authority-data": b64(pki / "ca.crt")}
    user = plugin_user(tmp_path, "{'token': 't'}", provideClusterInfo=True)
    kube.load_client(kubeconfig(tmp_path, cluster, user)).call_sync("/version", "GET")
    (info,) = runs(tmp_path)
    assert info["kind"] == "ExecCredential" and info["apiVersion"] == PLUGIN_API
    assert info["spec"]["interactive"] is False
    assert info["spec"]["cluster"]["server"] == server


def test_a_plugin_returning_a_client_certificate(tmp_path: Path, pki: Path, server: str) -> None:
    cert, key = (pki / "alice.crt").read_text(), (pki / "alice.key").read_text()
    status = (
        f"{{'clientCertificateData': {cert!r}, 'clientKeyData': {key!r}, 'expirationTimestamp': stamp(3600)}}"
    )
    cluster = {"server": server, "certificate-authority-data": b64(pki / "ca.crt")}
    client = kube.load_client(kubeconfig(tmp_path, cluster, plugin_user(tmp_path, status)))
    assert [a["client"] for a in both(client)] == ["alice", "alice"]
    assert len(runs(tmp_path)) == 1
    creds = asyncio.run(client.connection())
    assert creds.certificate_data == cert.encode() and creds.private_key_data == key.encode()


def test_a_relative_plugin_command_is_found_next_to_the_kubeconfig(tmp_path: Path, server: str) -> None:
    script = tmp_path / "bin" / "creds"
    script.parent.mkdir()
    script.write_text(f'#!/bin/sh\necho \'{{"apiVersion": "{PLUGIN_API}", "status": {{"token": "rel"}}}}\'\n')
    script.chmod(0o755)
    user = {"exec": {"apiVersion": PLUGIN_API, "command": "./bin/creds"}}
    client = kube.load_client(
        kubeconfig(tmp_path, {"server": server, "insecure-skip-tls-verify": True}, user)
    )
    assert client.call_sync("/version", "GET")["authorization"] == "Bearer rel"


def test_a_failing_plugin_shows_its_stderr_and_never_its_arguments(tmp_path: Path, server: str) -> None:
    script = tmp_path / "aws.py"
    script.write_text(
        "import sys\nsys.stderr.write('Error: the SSO session expired\\nrun aws sso login\\n')\nsys.exit(2)\n"
    )
    user = {
        "exec": {
            "apiVersion": PLUGIN_API,
            "command": sys.executable,
            "args": [str(script), "--secret=hunter2"],
        }
    }
    client = kube.load_client(
        kubeconfig(tmp_path, {"server": server, "insecure-skip-tls-verify": True}, user)
    )
    for call in (
        lambda: client.call_sync("/version", "GET"),
        lambda: asyncio.run(client.call("/version", "GET")),
    ):
        with pytest.raises(ports.Unavailable) as caught:
            call()
        assert "run aws sso login" in str(caught.value) and "exit status 2" in str(caught.value)
        assert "hunter2" not in str(caught.value)
    with pytest.raises(kube.KubeConfigError) as caught_preflight:
        kube.preflight(client)
    assert "run aws sso login" in str(caught_preflight.value) and "hunter2" not in str(caught_preflight.value)


def test_a_missing_plugin_says_how_to_install_it(tmp_path: Path, server: str) -> None:
    user = {"exec": {"apiVersion": PLUGIN_API, "command": "no-such-plugin", "installHint": "brew install it"}}
    client = kube.load_client(
        kubeconfig(tmp_path, {"server": server, "insecure-skip-tls-verify": True}, user)
    )
    with pytest.raises(ports.Unavailable, match="no-such-plugin was not found: brew install it"):
        asyncio.run(client.call("/version", "GET"))


def test_a_slow_plugin_does_not_block_the_event_loop(tmp_path: Path, server: str) -> None:
    user = plugin_user(tmp_path, "time.sleep(0.6) or {'token': 'slow', 'expirationTimestamp': stamp(3600)}")
    client = kube.load_client(
        kubeconfig(tmp_path, {"server": server, "insecure-skip-tls-verify": True}, user)
    )

    async def scenario() -> float:
        worst, last = 0.0, time.monotonic()

        async def ticker() -> None:
            nonlocal worst, last
            while True:
                await asyncio.sleep(0.02)
                now = time.monotonic()
                worst, last = max(worst, now - last), now

        task = asyncio.create_task(ticker())
        await asyncio.gather(*(client.call("/version", "GET") for _ in range(4)))
        task.cancel()
        await client.close()
        return worst

    assert asyncio.run(scenario()) < 0.3  # the plugin took 0.6 s
    assert len(runs(tmp_path)) == 1  # once for the four concurrent calls


# --- token files, in-cluster, impersonation, refusals ------------------------------------------


def test_a_token_file_is_followed_as_it_rotates(tmp_path: Path, server: str) -> None:
    token = tmp_path / "token"
    token.write_text("one\n")
    client = kube.load_client(
        kubeconfig(tmp_path, {"server": server, "insecure-skip-tls-verify": True}, {"tokenFile": "token"})
    )
    client.call_sync("/version", "GET")
    token.write_text("two\n")
    both(client)
    assert [a["authorization"] for a in Echo.seen] == ["Bearer one", "Bearer two", "Bearer two"]


@pytest.fixture
def service_account(tmp_path: Path, pki: Path, server: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "serviceaccount"
    folder.mkdir()
    (folder / "ca.crt").write_bytes((pki / "ca.crt").read_bytes())
    (folder / "namespace").write_text("homeostat-system\n")
    (folder / "token").write_text("pod-token\n")
    monkeypatch.setattr(kube, "_SERVICE_ACCOUNT", folder)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", server.rsplit(":", 1)[1])
    return folder


def test_in_cluster_credentials(service_account: Path) -> None:
    client = kube.load_client(None)
    assert client.namespace == "homeostat-system"
    client.call_sync("/version", "GET")
    (service_account / "token").write_text("rotated\n")
    both(client)
    assert [a["authorization"] for a in Echo.seen] == ["Bearer pod-token", "Bearer rotated", "Bearer rotated"]


def test_in_cluster_only_with_a_mounted_token_and_no_kubeconfig(
    tmp_path: Path, service_account: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = kubeconfig(tmp_path, {"server": "https://kubeconfig.example:6443"})
    monkeypatch.setenv("KUBECONFIG", config)
    assert kube.load_client(None).host == "https://kubeconfig.example:6443"  # $KUBECONFIG wins
    monkeypatch.delenv("KUBECONFIG")
    (service_account / "token").unlink()  # a CI runner pod: the variable set, no token mounted
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(kube.KubeConfigError, match="no service-account token is mounted"):
        kube.load_client(None)
    (tmp_path / "home" / ".kube").mkdir(parents=True)
    (tmp_path / "home" / ".kube" / "config").write_text(Path(config).read_text())
    assert kube.load_client(None).host == "https://kubeconfig.example:6443"


def test_impersonation_in_the_plugin_and_refused_for_kopf(tmp_path: Path, server: str) -> None:
    user = {"token": "admin", "as": "alice", "as-groups": ["devs", "oncall"]}
    config = kubeconfig(tmp_path, {"server": server, "insecure-skip-tls-verify": True}, user)
    answers = both(kube.load_client(config))
    assert [(a["user"], a["groups"]) for a in answers] == [("alice", ["devs", "oncall"])] * 2
    with pytest.raises(
        kube.KubeConfigError, match=r"impersonation \(as/as-groups\) is not supported by homeostat run"
    ):
        kube.load_client(config, for_kopf=True)


@pytest.mark.parametrize(
    ("user", "cluster", "message"),
    [
        ({"auth-provider": {"name": "oidc"}}, {}, "auth-provider plugins are not supported"),
        ({"username": "u", "password": "p"}, {}, r"basic authentication \(username/password\)"),
        ({"token": "t", "as-user-extra": {"a": ["b"]}}, {}, "as-user-extra"),
        ({"token": "t", "mystery": 1}, {}, "the setting mystery is not supported"),
        ({"token": "t"}, {"compression": "zstd"}, "the setting compression is not supported"),
        (
            {"exec": {"apiVersion": PLUGIN_API, "command": "x", "interactiveMode": "Always"}},
            {},
            "needs a terminal",
        ),
        ({"client-certificate-data": "Y2VydA=="}, {}, "without its key"),
        ({"token": "t"}, {"server": "ftp://x"}, "not an http"),
    ],
)
def test_an_unsupported_setting_stops_with_one_line_naming_it(
    tmp_path: Path, user: dict[str, Any], cluster: dict[str, Any], message: str
) -> None:
    with pytest.raises(kube.KubeConfigError, match=message) as caught:
        kube.load_client(kubeconfig(tmp_path, {"server": "https://127.0.0.1:6443", **cluster}, user))
    assert "\n" not in str(caught.value)


def test_the_key_file_ssl_needs_is_deleted_once_loaded(pki: Path, clean_environment: Path) -> None:
    identity = kube.ClientIdentity(
        certificate=(pki / "alice.crt").read_bytes(), key=(pki / "alice.key").read_bytes()
    )
    opened: list[str] = []
    real = ssl.SSLContext.load_cert_chain

    def spy(self: ssl.SSLContext, certfile: Any, *args: Any, **kwargs: Any) -> None:
        opened.append(str(certfile))
        assert os.stat(certfile).st_mode & 0o077 == 0  # private while it exists
        real(self, certfile, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ssl.SSLContext, "load_cert_chain", spy)
        kube.Client("https://127.0.0.1:1", identity).ssl_context()
    assert opened and opened[0].startswith(str(clean_environment))
    assert not os.path.exists(opened[0])
