"""Faults between the operator and its API server: it survives, does nothing blind, catches up.

- A partition: the operator reaches the API server through a TCP proxy on 127.0.0.1 that the
  test cuts (connections dropped, new ones refused) and heals. Changes made meanwhile are
  applied after the heal, and the operator never exits.
- A restart of kube-apiserver (10 s down) in the middle of a canary rollout: the rollout
  converges afterwards. This one disturbs the shared test cluster, so it is marked ``chaos``
  and runs in ``make chaos``, not ``make test``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import chaos_report as report
from cluster import local
from conftest import REPO, Cluster, OperatorProcess, get_json, wait_for

pytestmark = pytest.mark.e2e


class Partition:
    """A TCP proxy to the API server that can be cut and healed (TLS passes through untouched)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.cut = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.open.update((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def sever(self) -> None:
        self.cut.set()
        with self.lock:
            for sock in self.open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self.open.clear()

    def heal(self) -> None:
        self.cut.clear()

    def close(self) -> None:
        self.sever()
        self.listener.close()


def proxied_kubeconfig(original: Path, port: int, target: Path) -> Path:
    config = yaml.safe_load(original.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{port}"
    target.write_text(yaml.safe_dump(config))
    target.chmod(0o600)
    return target


def api_address(kubeconfig: Path) -> tuple[str, int]:
    server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    host, _, port = server.removeprefix("https://").partition(":")
    return host, int(port)


@pytest.fixture
def fault_namespace(cluster: Cluster, crds_installed: None) -> Iterator[str]:
    name = f"f-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def web(name: str, rollout: dict[str, Any] | None = None, image: str = "registry.k8s.io/pause:3.10") -> str:
    body = yaml.safe_load((REPO / "examples" / "web.yaml").read_text())
    body["metadata"]["name"] = name
    body["spec"]["template"]["spec"]["containers"][0]["image"] = image
    if rollout:
        body["spec"]["rollout"] = rollout
    return json.dumps(body)


def deployment_replicas(cluster: Cluster, namespace: str, name: str) -> int | None:
    body = get_json(cluster, "deployment", name, "-n", namespace)
    return None if body is None else int(body["spec"]["replicas"])


def test_a_partition_from_the_api_server_is_survived_and_caught_up(
    local_cluster: local.LocalCluster, fault_namespace: str, tmp_path: Path, chaos_report: report.Recorder
) -> None:
    ns = fault_namespace
    proxy = Partition(api_address(local_cluster.kubeconfig))
    kubeconfig = proxied_kubeconfig(local_cluster.kubeconfig, proxy.port, tmp_path / "proxied.yaml")
    operator = OperatorProcess(
        kubeconfig, tmp_path / "operator.log", ("--namespace", ns, "--http-port", "0")
    ).start()
    try:
        local_cluster.kubectl("apply", "-n", ns, "-f", "-", input=web("web"))
        wait_for(lambda: deployment_replicas(local_cluster, ns, "web") == 3, timeout=60, what="web deployed")
        # The Service is created after the Deployment: on a busy machine, seconds after it.
        wait_for(lambda: get_json(local_cluster, "service", "web", "-n", ns), timeout=60, what="the Service")
        proxy.sever()
        # While the operator is cut off, a user scales the service and deletes a child.
        local_cluster.kubectl("scale", "rsvc", "web", "-n", ns, "--replicas=5")
        local_cluster.kubectl("delete", "service", "web", "-n", ns)
        time.sleep(15)
        assert operator.alive(), operator.logs()[-3000:]
        assert deployment_replicas(local_cluster, ns, "web") == 3  # nobody acted blind
        proxy.heal()
        wait_for(
            lambda: deployment_replicas(local_cluster, ns, "web") == 5, timeout=90, what="scale caught up"
        )
        wait_for(
            lambda: get_json(local_cluster, "service", "web", "-n", ns), timeout=90, what="Service restored"
        )
        assert operator.alive()
        chaos_report.record("partition", trials=1, faults=1, converged=1, operators=[operator])
    finally:
        operator.stop()
        proxy.close()


@pytest.mark.chaos
def test_an_api_server_restart_mid_rollout_converges(
    local_cluster: local.LocalCluster, fault_namespace: str, tmp_path: Path, chaos_report: report.Recorder
) -> None:
    ns = fault_namespace
    canary = {
        "strategy": "Canary",
        "canary": {"steps": [{"weight": 25, "pause": "3s"}, {"weight": 50, "pause": "3s"}]},
    }
    operator = OperatorProcess(
        local_cluster.kubeconfig, tmp_path / "operator.log", ("--namespace", ns, "--http-port", "0")
    ).start()

    def rollout() -> dict[str, Any]:
        body = get_json(local_cluster, "rsvc", "web", "-n", ns) or {}
        return (body.get("status") or {}).get("rollout") or {}

    try:
        local_cluster.kubectl("apply", "-n", ns, "-f", "-", input=web("web", canary))
        wait_for(lambda: rollout().get("phase") == "Promoted", timeout=60, what="first revision")
        local_cluster.kubectl(
            "apply", "-n", ns, "-f", "-", input=web("web", canary, "registry.k8s.io/pause:3.9")
        )
        wait_for(lambda: rollout().get("stepReachedAt"), timeout=60, what="first step reached")
        local_cluster.restart_apiserver(downtime=10)
        assert operator.alive(), operator.logs()[-3000:]
        done = wait_for(
            lambda: (
                rollout() if rollout().get("phase") == "Promoted" and rollout().get("step") == 1 else None
            ),
            timeout=180,
            what="rollout converged after the restart",
        )
        assert done["stableRevision"] == done["revision"]
        assert operator.alive()
        chaos_report.record("API server restart", trials=1, faults=1, converged=1, operators=[operator])
    finally:
        operator.stop()
