"""The benchmarks start clusters and processes; a failure must not leave them running.

`make bench` on a fresh machine once crashed in tests/bench/rollback.py (the traffic simulator
listed ReplicatedServices before the CRDs existed) and left its cluster up. Each benchmark runs
here with its cluster, CRD install and helpers replaced by recorders, a failure is injected, and
the test checks what was stopped and in which order. No cluster is started.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from cluster import crds, local

BENCH = Path(__file__).resolve().parents[1] / "bench"


class Boom(RuntimeError):
    """The injected failure."""


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def journal(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """What happened, in order; the cluster and the CRD install are recorders."""
    events: list[str] = []

    class FakeCluster:
        def __init__(self, name: str) -> None:
            self.name = name
            self.kubeconfig = Path("/nonexistent/kubeconfig")

        def up(self, nodes: int = 3, timeout: float = 180, with_node: bool = True) -> None:
            # The benchmarks measure KWOK nodes; a real node would contend with the test cluster's.
            assert not with_node, "a benchmark asked for a real node"
            events.append("cluster up")

        def down(self) -> None:
            events.append("cluster down")

    def run_kubectl(kubeconfig: Path, *args: str, **kwargs: Any) -> Any:
        events.append("kubectl " + " ".join(args[:2]))

        class Done:
            returncode, stdout, stderr = 0, "{}", ""

        return Done()

    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setattr(local, "LocalCluster", FakeCluster)
    monkeypatch.setattr(local, "run_kubectl", run_kubectl)
    monkeypatch.setattr(crds, "install", lambda kubeconfig, timeout=60: events.append("crds installed"))
    yield events


def test_rollback_installs_crds_before_the_simulator_and_cleans_up_after_a_failure(
    journal: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rollback = load("rollback")

    class Simulator:
        target = "127.0.0.1:1"

        def __init__(self, kubeconfig: Path, namespaces: list[str]) -> None:
            pass

        def start(self) -> Simulator:
            # The real one lists ReplicatedServices at once: a 404 without the CRDs.
            assert "crds installed" in journal, "simulator started before the CRDs were installed"
            journal.append("simulator started")
            return self

        def stop(self) -> None:
            journal.append("simulator stopped")

    class Prometheus:
        url = "http://127.0.0.1:1"

        def __init__(self, targets: list[str]) -> None:
            pass

        def start(self) -> None:
            journal.append("prometheus started")
            raise Boom("prometheus exited with 1")

        def cleanup(self) -> None:
            journal.append("prometheus cleaned up")

    monkeypatch.setattr(rollback.simulator, "Simulator", Simulator)
    monkeypatch.setattr(rollback, "PrometheusServer", Prometheus)
    monkeypatch.setattr(sys, "argv", ["rollback.py", "--trials", "1"])
    with pytest.raises(Boom):
        rollback.main()
    assert journal == [
        "cluster up",
        "crds installed",
        "kubectl create namespace",
        "simulator started",
        "prometheus started",
        "prometheus cleaned up",
        "simulator stopped",
        "kubectl delete namespace",
        "cluster down",
    ]


def test_rollback_takes_its_cluster_down_when_the_cluster_start_fails(
    journal: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rollback = load("rollback")

    def up(self: Any, nodes: int = 3, timeout: float = 180, with_node: bool = True) -> None:
        journal.append("cluster up")
        raise local.ClusterError("fewer than 2 nodes Ready after 180s")

    monkeypatch.setattr(local.LocalCluster, "up", up)
    monkeypatch.setattr(sys, "argv", ["rollback.py"])
    with pytest.raises(local.ClusterError):
        rollback.main()
    assert journal == ["cluster up", "cluster down"]


def test_healing_takes_its_cluster_down_after_a_failure(
    journal: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    healing = load("healing")

    def fail(kubeconfig: Path, timeout: float = 60) -> None:
        raise Boom("CRDs not Established")

    monkeypatch.setattr(crds, "install", fail)
    monkeypatch.setattr(sys, "argv", ["healing.py"])
    with pytest.raises(Boom):
        healing.main()
    assert journal == ["cluster up", "cluster down"]


def test_healing_keep_leaves_the_cluster_but_removes_its_objects(
    journal: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    healing = load("healing")

    def node_ready(kubeconfig: Path, name: str) -> str:
        raise Boom("API server went away")

    monkeypatch.setattr(healing, "node_ready", node_ready)
    monkeypatch.setattr(sys, "argv", ["healing.py", "--keep"])
    with pytest.raises(Boom):
        healing.main()
    assert "cluster down" not in journal
    assert journal[-4:] == [
        "kubectl delete node",
        "kubectl delete node",
        "kubectl delete remediationpolicy",
        "kubectl delete namespace",
    ]


def test_reconcile_takes_its_cluster_down_after_a_failure(
    journal: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    reconcile = load("reconcile")

    def fail(kubeconfig: Path, timeout: float = 60) -> None:
        raise Boom("CRDs not Established")

    monkeypatch.setattr(crds, "install", fail)
    monkeypatch.setattr(sys, "argv", ["reconcile.py"])
    with pytest.raises(Boom):
        reconcile.main()
    assert journal == ["cluster up", "cluster down"]
