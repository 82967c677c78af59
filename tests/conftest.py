"""Shared fixtures: a real Kubernetes API server for e2e tests, and the operator as a process.

The cluster is the local kwokctl control plane (built and cached by tests/cluster), or, when
``KUBECONFIG`` is set, whatever cluster it names (e.g. kind), so one suite serves both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml

from cluster import local
from cluster import node as real_node

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
# Simulated workload metrics and a real Prometheus scraping them (fixtures in tests/prom.py).
pytest_plugins = ["prom", "chaos_report"]


class Cluster(Protocol):
    kubeconfig: Path

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]: ...


@dataclasses.dataclass(frozen=True)
class ExternalCluster:
    """A cluster we did not start and must not stop (named by ``KUBECONFIG``)."""

    kubeconfig: Path

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return local.run_kubectl(self.kubeconfig, *args, input=input, check=check, timeout=timeout)


def wait_for(predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.5, what: str = "") -> Any:
    """Poll until ``predicate`` returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what or predicate}")
        time.sleep(interval)


def plugin(cluster: Cluster, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """``kubectl homeostat ...``: kubectl finds the plugin on PATH, as a user's kubectl would."""
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    kubectl = local.BIN / "kubectl"
    return subprocess.run(
        # kubectl refuses flags before a plugin's name; after it they reach the plugin.
        [
            str(kubectl) if kubectl.exists() else "kubectl",
            "homeostat",
            *args,
            "--kubeconfig",
            str(cluster.kubeconfig),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def service_events(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    """The Events posted about one ReplicatedService, oldest first."""
    listing = get_json(
        cluster,
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.kind=ReplicatedService,involvedObject.name={name}",
    )
    return sorted((listing or {}).get("items", []), key=lambda e: e["metadata"]["creationTimestamp"])


def get_json(cluster: Cluster, *args: str) -> dict[str, Any] | None:
    res = cluster.kubectl("get", *args, "-o", "json", check=False, timeout=30)
    return json.loads(res.stdout) if res.returncode == 0 else None


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    external = os.environ.get("KUBECONFIG")
    if external:
        yield ExternalCluster(Path(external))
        return
    local_cluster = local.LocalCluster(os.environ.get("HOMEOSTAT_TEST_CLUSTER", "homeostat-test"))
    local_cluster.up(nodes=3)
    yield local_cluster
    if not os.environ.get("HOMEOSTAT_KEEP_CLUSTER"):
        local_cluster.down()


@dataclasses.dataclass(frozen=True)
class Workloads:
    """Where pods that must really execute go, and the images they run.

    On the local cluster that is the real node (tainted so that KWOK's simulated workloads stay
    off it) and the images images.py built and imported; on another cluster (kind) every node is
    real and the images are named by HOMEOSTAT_OPERATOR_IMAGE and HOMEOSTAT_APP_IMAGE.
    """

    operator_image: str
    app_image: str
    upgrade_image: str  # the operator under a second tag, for `helm upgrade` tests
    node_selector: dict[str, str]
    tolerations: list[dict[str, str]]

    def place(self, pod_spec: dict[str, Any]) -> dict[str, Any]:
        """``pod_spec`` pinned to the real node(s)."""
        placed = dict(pod_spec)
        if self.node_selector:
            placed["nodeSelector"] = {**pod_spec.get("nodeSelector", {}), **self.node_selector}
        if self.tolerations:
            placed["tolerations"] = [*pod_spec.get("tolerations", []), *self.tolerations]
        return placed

    def helm_values(self) -> list[str]:
        """``--set`` arguments that install the operator from its image on the real node(s)."""
        repository, _, tag = self.operator_image.rpartition(":")
        values = [f"image.repository={repository}", f"image.tag={tag}", "image.pullPolicy=Never"]
        for key, value in self.node_selector.items():
            values.append(f"nodeSelector.{key.replace('.', chr(92) + '.')}={value}")
        for i, toleration in enumerate(self.tolerations):
            values += [f"tolerations[{i}].{k}={v}" for k, v in toleration.items()]
        return values


def local_workloads(cluster: local.LocalCluster) -> Workloads:
    """The real node of a local cluster and the images it imported (the demo uses it too)."""
    from cluster import images

    node = cluster.node
    return Workloads(
        operator_image=node.imported_ref(images.OPERATOR_REPOSITORY),
        app_image=node.imported_ref(images.APP_REPOSITORY),
        upgrade_image=node.imported_ref(images.OPERATOR_REPOSITORY, "upgrade"),
        node_selector={real_node.NODE_LABEL: "real"},
        tolerations=[{"key": real_node.TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
    )


@pytest.fixture(scope="session")
def workloads(cluster: Cluster) -> Workloads:
    if isinstance(cluster, local.LocalCluster):
        return local_workloads(cluster)
    names = ("HOMEOSTAT_OPERATOR_IMAGE", "HOMEOSTAT_APP_IMAGE", "HOMEOSTAT_UPGRADE_IMAGE")
    refs = {name: os.environ.get(name, "") for name in names}
    missing = [name for name, ref in refs.items() if not ref]
    if missing:
        pytest.exit(
            f"prerequisite missing: {', '.join(missing)} (images loaded into {cluster.kubeconfig})", 1
        )
    return Workloads(*(refs[name] for name in names), {}, [])


@pytest.fixture(scope="session")
def local_cluster(cluster: Cluster) -> local.LocalCluster:
    """Tests that poke KWOK itself (chaos stages, processes) need our own local cluster."""
    if not isinstance(cluster, local.LocalCluster):
        pytest.skip("needs the local KWOK control plane, not an external cluster")
    return cluster


def wait_established(cluster: Cluster, crd: str, timeout: float = 60) -> None:
    """Polled rather than `kubectl wait`: right after creation a CRD may have no conditions yet,
    which `kubectl wait` reports as an error instead of waiting."""
    wait_for(
        lambda: any(
            c.get("type") == "Established" and c.get("status") == "True"
            for c in ((get_json(cluster, "crd", crd) or {}).get("status") or {}).get("conditions") or []
        ),
        timeout=timeout,
        what=f"CRD {crd} Established",
    )


@pytest.fixture(scope="session")
def crds_installed(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    for path in sorted((REPO / "crds").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            wait_established(cluster, doc["metadata"]["name"])


@pytest.fixture(scope="session")
def gateway_api(cluster: Cluster) -> None:
    """Gateway API CRDs (HTTPRoute), for canaries that set exact traffic weights."""
    crds = local.gateway_api_crds()
    cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        str(crds / "gateway.networking.k8s.io_httproutes.yaml"),
    )
    wait_established(cluster, "httproutes.gateway.networking.k8s.io")


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def private_namespace(cluster: Cluster) -> Iterator[str]:
    """For a test that runs its own operator: outside the session operator's ``t-*``, so two
    operators never write one service's status."""
    name = f"own-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@dataclasses.dataclass
class OperatorProcess:
    """``homeostat run`` as a child process, the way a user (or a pod) starts it."""

    kubeconfig: Path
    log_path: Path
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    # Exit codes of processes that ended without the test stopping them (the chaos summary's
    # "crashes"), and the pids already accounted for, so each exit is counted once.
    exits: list[int] = dataclasses.field(default_factory=list)
    accounted: set[int] = dataclasses.field(default_factory=set)

    def _account(self) -> None:
        process = self.process
        if process is not None and process.pid not in self.accounted and process.poll() is not None:
            self.accounted.add(process.pid)
            self.exits.append(process.returncode)

    def unexpected_exits(self) -> int:
        self._account()
        return len(self.exits)

    def start(self) -> OperatorProcess:
        self._account()
        log = self.log_path.open("ab")
        cmd = [str(VENV_BIN / "homeostat"), "run", "--kubeconfig", str(self.kubeconfig), *self.extra_args]
        self.process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}, start_new_session=True
        )
        return self

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self._account()
        if self.process and self.process.poll() is None:
            self.accounted.add(self.process.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that stop the shared cluster (marker ``teardown``) run after all the others."""
    items.sort(key=lambda item: item.get_closest_marker("teardown") is not None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """On a failed e2e test, show what the shared operator logged about the test's namespace.

    CI prints only the failure, and the operator's log is gone with the runner: without this a
    timeout there says that something did not happen, never why.
    """
    report = yield
    args = getattr(item, "funcargs", {})
    proc, namespace = args.get("operator_process"), args.get("namespace")
    if report.failed and call.when == "call" and isinstance(proc, OperatorProcess) and namespace:
        lines = proc.logs().splitlines()
        about = [line for line in lines if namespace in line][-60:]
        worse = [line for line in lines if "Traceback" in line or "[ERROR" in line or "[WARNING" in line]
        report.sections.append(
            ("operator log", "\n".join([*about, "--- recent warnings and errors ---", *worse[-15:]]))
        )
    return report


@pytest.fixture(scope="session")
def operator_process(
    cluster: Cluster, crds_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """One operator for the session; tests that restart or kill it start their own."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    # Scoped to the test namespaces so tests that run an operator of their own (restarts,
    # kills) can use other namespaces without two operators fighting over one object.
    proc = OperatorProcess(cluster.kubeconfig, log, ("--namespace", "t-*")).start()
    time.sleep(1)
    if not proc.alive():
        pytest.fail(f"operator exited at start:\n{proc.logs()}")
    yield proc
    proc.stop()
    if os.environ.get("HOMEOSTAT_SHOW_OPERATOR_LOG"):
        print(proc.logs())
