"""Start and stop a real Kubernetes control plane as local processes, for tests and the demo.

Our machines have no Docker engine, so kind cannot run. kwokctl's binary runtime starts etcd,
kube-apiserver, kube-controller-manager, kube-scheduler and kwok-controller as plain processes
from binaries we build ourselves (build.sh); KWOK simulates nodes and pod lifecycles. Beside the
KWOK nodes runs one real node (node.py: kubelet, containerd, runc, CNI, kube-proxy) whose pods
really execute, from images built without a registry (images.py). The control plane binds to
127.0.0.1, except the API server, which pods must reach: it listens on every address behind a
firewall chain that admits only loopback and the node's bridge. The same API is used by the
pytest fixture and by `make cluster-up/down`.

Usage: python tests/cluster/local.py up|down|status|kubeconfig [--name NAME] [--nodes N] [--no-real-node]
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script (make cluster-up): its siblings are `cluster.*`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster import images
from cluster import node as real_node

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("HOMEOSTAT_CACHE", str(Path.home() / ".cache" / "homeostat")))
BIN = CACHE / "bin"
WORKDIR = CACHE / "kwok"

# Stages kwok loads by default; passing any Stage object replaces the defaults, so we list them
# together with the chaos stages tests use to fail containers and nodes on demand.
STAGE_FILES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
    "kustomize/stage/pod/chaos/pod-container-running-failed.yaml",
    "kustomize/stage/node/chaos/node-not-ready.yaml",
)

POD_FAILURE_LABEL = "pod-container-running-failed.stage.kwok.x-k8s.io"
NODE_NOT_READY_LABEL = "node-not-ready.stage.kwok.x-k8s.io"


class ClusterError(RuntimeError):
    """The local cluster could not be built, started or reached."""


def versions() -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in (HERE / "versions.env").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pins[key] = value
    return pins


def build() -> None:
    """Build (or find cached) binaries; a warm cache makes this a no-op."""
    subprocess.run(["bash", str(HERE / "build.sh")], check=True)


def _tool_env() -> dict[str, str]:
    env = dict(os.environ)
    # kwokctl runs `kubectl` from PATH; Debian's is far too old, so ours goes first.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["KWOK_WORKDIR"] = str(WORKDIR)
    env["GOMODCACHE"] = str(CACHE / "go" / "mod")
    env["GOFLAGS"] = "-mod=mod"
    env["GOTOOLCHAIN"] = "local"
    return env


def kwok_source_dir() -> Path:
    pin = versions()["KWOK_VERSION"]
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"sigs.k8s.io/kwok@{pin}"],
        check=True,
        capture_output=True,
        text=True,
        env=_tool_env(),
    )
    return Path(json.loads(out.stdout)["Dir"])


def gateway_api_crds() -> Path:
    """The standard-channel Gateway API CRDs of the pinned release, from its Go module.

    Release YAML cannot be downloaded here, but the module carries the same files.
    """
    pin = versions()["GATEWAY_API_VERSION"]
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"sigs.k8s.io/gateway-api@{pin}"],
        check=True,
        capture_output=True,
        text=True,
        env=_tool_env(),
    )
    return Path(json.loads(out.stdout)["Dir"]) / "config" / "crd" / "standard"


def _args(**flags: str) -> list[dict[str, str]]:
    return [{"key": key.replace("_", "-"), "value": value} for key, value in flags.items()]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(kube_version: str, api_port: int, pki: Path, with_node: bool) -> str:
    # The default /24 service range runs out at ~250 Services, far below the 1000-service bench.
    apiserver = {"service_cluster_ip_range": real_node.SERVICE_CIDR}
    if with_node:
        apiserver |= {
            # kwokctl binds 127.0.0.1, which pods cannot reach; node.prepare_host() has put the
            # firewall chain in front of this port before the API server starts.
            "bind_address": "0.0.0.0",
            "advertise_address": real_node.NODE_IP,
            # Node names do not resolve here: logs, exec and port-forward go to the node's IP.
            "kubelet_preferred_address_types": "InternalIP,Hostname",
            "kubelet_client_certificate": str(pki / "admin.crt"),
            "kubelet_client_key": str(pki / "admin.key"),
        }
    options = {
        "runtime": "binary",
        "kubeVersion": kube_version,
        "bindAddress": "127.0.0.1",
        "kubeApiserverPort": api_port,
        # Pods reach the API server through the kubernetes Service (10.96.0.1 → the node's IP).
        "kubeApiserverCertSANs": [real_node.NODE_IP, "10.96.0.1"],
        "kubeApiserverBinary": str(BIN / "kube-apiserver"),
        "kubeControllerManagerBinary": str(BIN / "kube-controller-manager"),
        "kubeSchedulerBinary": str(BIN / "kube-scheduler"),
        "kubectlBinary": str(BIN / "kubectl"),
        "etcdBinary": str(BIN / "etcd"),
        "kwokControllerBinary": str(BIN / "kwok"),
        "cacheDir": str(WORKDIR / "cache"),
        # The controller-manager's default client rate limit (20 QPS) would make the built-in
        # controllers, not the code under test, the bottleneck of every bulk test and benchmark.
        "disableQPSLimits": True,
    }
    if with_node:
        # A stopped kubelet's node turns NotReady in ~40 s instead of kwokctl's 3m20s. kwokctl
        # multiplies these and KWOK's own lease by its heartbeat factor (5 unless told), so the
        # factor goes to 1: KWOK renews its leases often enough for the shorter grace.
        options |= {
            "heartbeatFactor": 1,
            "kubeControllerManagerNodeMonitorPeriodMilliseconds": 5000,
            "kubeControllerManagerNodeMonitorGracePeriodMilliseconds": 40000,
        }
    docs = [
        json.dumps(
            {
                "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
                "kind": "KwokctlConfiguration",
                "options": options,
                "componentsPatches": [
                    {"name": "kube-apiserver", "extraArgs": _args(**apiserver)},
                    # kwokctl passes --manage-all-nodes=true; these later flags win, so KWOK
                    # leaves the real node to its kubelet and still runs its own nodes.
                    {
                        "name": "kwok-controller",
                        "extraArgs": _args(
                            manage_all_nodes="false",
                            manage_nodes_with_annotation_selector="kwok.x-k8s.io/node=fake",
                        ),
                    },
                ],
            }
        )
    ]
    source = kwok_source_dir()
    docs.extend((source / rel).read_text() for rel in STAGE_FILES)
    return "\n---\n".join(docs) + "\n"


@dataclass(frozen=True)
class LocalCluster:
    """A kwokctl cluster whose state lives under the cache directory, never in the repo."""

    name: str = "homeostat"

    @property
    def state_dir(self) -> Path:
        return WORKDIR / "clusters" / self.name

    @property
    def kubeconfig(self) -> Path:
        return CACHE / "kubeconfigs" / f"{self.name}.yaml"

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return run_kubectl(self.kubeconfig, *args, input=input, check=check, timeout=timeout)

    def exists(self) -> bool:
        return (self.state_dir / "kwok.yaml").exists()

    @property
    def node(self) -> real_node.RealNode:
        """The cluster's real node (whether or not it runs)."""
        return real_node.RealNode(
            cluster=self.name,
            root=CACHE / "node" / self.name,
            bin_dir=BIN,
            api_port=self.api_port(),
            pki=real_node.Pki(self.state_dir / "pki" / "ca.crt", self.state_dir / "pki" / "ca.key"),
        )

    def api_port(self) -> int:
        """The API server's port, from the kubeconfig kwokctl wrote (0 before the cluster exists)."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in self.kubeconfig.read_text().splitlines():
                if line.strip().startswith("server:"):
                    return int(line.rsplit(":", 1)[1])
        return 0

    def up(self, nodes: int = 3, timeout: float = 180, with_node: bool = True) -> None:
        build()
        # The second operator tag is what a test `helm upgrade`s to in the middle of a rollout.
        built = [*images.build_all(), images.build_operator(tag_suffix="upgrade")] if with_node else []
        if self.exists():
            if self._healthy():
                if with_node:
                    self._ensure_real_node(built, timeout)
                self._ensure_nodes(nodes, timeout, with_node)
                return
            self.down()
        pins = versions()
        port = _free_port()
        if with_node:
            replace(self.node, api_port=port).prepare_host()
        config_path = CACHE / "kwok" / f"{self.name}-config.yaml"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(_config(pins["K8S_VERSION"], port, self.state_dir / "pki", with_node))
        self.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
        self.kubeconfig.unlink(missing_ok=True)
        res = subprocess.run(
            [
                str(BIN / "kwokctl"),
                "--v=WARN",
                "create",
                "cluster",
                "--name",
                self.name,
                "--config",
                str(config_path),
                "--kubeconfig",
                str(self.kubeconfig),
                "--wait",
                f"{int(timeout)}s",
                "--quiet-pull",
            ],
            env=_tool_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            last = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise ClusterError(f"kwokctl create cluster {self.name} failed: {last}")
        os.chmod(self.kubeconfig, 0o600)
        if with_node:
            self._ensure_real_node(built, timeout)
        self._ensure_nodes(nodes, timeout, with_node)

    def _ensure_real_node(self, built: Sequence[images.Image], timeout: float) -> None:
        """Start the real node unless its kubelet is already running and its node Ready."""
        node = self.node
        if node.healthy() and node.name in ready_nodes(self.kubeconfig):
            node.import_images(built)
            return
        node.stop()
        node.prepare_host()
        node.start(built)
        deadline = time.monotonic() + timeout
        while node.name not in ready_nodes(self.kubeconfig):
            node.check_alive()
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"real node {node.name} not Ready after {timeout:.0f}s (logs: {node.logs})"
                )
            time.sleep(0.5)

    def _healthy(self) -> bool:
        if not self.kubeconfig.exists():
            return False
        res = self.kubectl("get", "--raw", "/readyz", check=False, timeout=10)
        return res.returncode == 0

    def _ensure_nodes(self, nodes: int, timeout: float, with_node: bool) -> None:
        """``nodes`` KWOK nodes (kwokctl scales only its own), and the real node, Ready."""
        subprocess.run(
            [
                str(BIN / "kwokctl"),
                "--v=WARN",
                "scale",
                "node",
                "--name",
                self.name,
                "--replicas",
                str(nodes),
            ],
            check=True,
            env=_tool_env(),
            stdout=subprocess.DEVNULL,
        )
        wait_nodes_ready(self.kubeconfig, nodes + int(with_node), timeout)

    def down(self) -> None:
        """Stop every process of the cluster and undo what its real node changed on the host."""
        self.node.down()
        if self.exists():
            subprocess.run(
                [str(BIN / "kwokctl"), "--v=WARN", "delete", "cluster", "--name", self.name],
                check=False,
                env=_tool_env(),
            )
        # kwokctl stops what it started; anything still alive (a crashed delete) goes too.
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self.kubeconfig.unlink(missing_ok=True)

    def restart_apiserver(self, downtime: float = 5.0, timeout: float = 120) -> None:
        """Stop kube-apiserver for ``downtime`` seconds and start it again, as in a control-plane
        upgrade. The controller-manager and scheduler exit when they cannot renew their leader
        lease meanwhile; a kubelet would restart them as static pods, so this does too."""
        processes = {
            name: self._process(name)
            for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
        }
        pid = processes["kube-apiserver"][0]
        os.kill(pid, 15)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(downtime)
        self._spawn("kube-apiserver", processes["kube-apiserver"])
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"kube-apiserver of {self.name} not healthy {timeout:.0f}s after a restart"
                )
            time.sleep(0.5)
        time.sleep(3)  # a component that lost its lease exits within moments of the API's return
        for name in ("kube-controller-manager", "kube-scheduler"):
            if not Path(f"/proc/{processes[name][0]}").exists():
                self._spawn(name, processes[name])

    def _process(self, name: str) -> tuple[int, list[str], str, dict[str, str]]:
        """A component's pid, command line, working directory and environment."""
        pid = int((self.state_dir / "pids" / f"{name}.pid").read_text().strip())
        proc = Path(f"/proc/{pid}")
        argv = [a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
        environ = dict(
            item.decode().split("=", 1)
            for item in (proc / "environ").read_bytes().split(b"\0")
            if b"=" in item
        )
        return pid, argv, os.readlink(proc / "cwd"), environ

    def _spawn(self, name: str, process: tuple[int, list[str], str, dict[str, str]]) -> None:
        _, argv, cwd, environ = process
        with (self.state_dir / "logs" / f"{name}.log").open("ab") as log:
            started = subprocess.Popen(
                argv, cwd=cwd, env=environ, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        (self.state_dir / "pids" / f"{name}.pid").write_text(str(started.pid))

    def pids(self) -> list[int]:
        """Processes of this cluster: anything whose command line points into its state dir."""
        marker = str(self.state_dir) + "/"
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmdline:
                found.append(int(entry.name))
        return found


def tool(name: str) -> str:
    """Path of a binary built by build.sh; a missing one stops the run with one line, never a skip."""
    import pytest  # only the tests call this; the CLI entry point must not need pytest

    path = BIN / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.exit(f"prerequisite missing: {path} (run `make binaries`; make test does)", returncode=1)
    return str(path)


def run_kubectl(
    kubeconfig: Path, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    kubectl = BIN / "kubectl"
    exe = str(kubectl) if kubectl.exists() else "kubectl"
    res = subprocess.run(
        [exe, "--kubeconfig", str(kubeconfig), *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and res.returncode != 0:
        raise ClusterError(f"kubectl {' '.join(args)} failed: {res.stderr.strip()}")
    return res


def ready_nodes(kubeconfig: Path) -> list[str]:
    res = run_kubectl(kubeconfig, "get", "nodes", "-o", "json", check=False, timeout=20)
    if res.returncode != 0:
        return []
    names = []
    for node in json.loads(res.stdout)["items"]:
        for cond in node.get("status", {}).get("conditions", []):
            if cond["type"] == "Ready" and cond["status"] == "True":
                names.append(node["metadata"]["name"])
    return names


def wait_nodes_ready(kubeconfig: Path, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(ready_nodes(kubeconfig)) < count:
        if time.monotonic() > deadline:
            raise ClusterError(f"fewer than {count} nodes Ready after {timeout:.0f}s")
        time.sleep(0.5)


def listening_sockets(pids: Sequence[int]) -> Iterator[tuple[int, str]]:
    """(pid, local address) of every TCP socket in LISTEN state owned by the given processes."""
    inode_pid: dict[str, int] = {}
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        with contextlib.suppress(OSError):
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inode_pid[target[8:-1]] = pid
    for table, family in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 6)):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and inode in inode_pid:
                    yield inode_pid[inode], _decode_address(local, family)


def _decode_address(hex_addr: str, family: int) -> str:
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    if family == 4:
        addr = ".".join(str(b) for b in reversed(raw))
    else:
        words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
        addr = str(ipaddress.IPv6Address(b"".join(words)))
    return f"{addr}:{int(port, 16)}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status", "kubeconfig", "build"])
    parser.add_argument("--name", default=os.environ.get("HOMEOSTAT_CLUSTER", "homeostat"))
    parser.add_argument("--nodes", type=int, default=3, help="KWOK nodes (the real node comes on top)")
    parser.add_argument(
        "--no-real-node", action="store_true", help="KWOK nodes only (no kubelet, no host changes)"
    )
    args = parser.parse_args(argv)
    cluster = LocalCluster(args.name)
    try:
        if args.command == "build":
            build()
        elif args.command == "up":
            started = time.monotonic()
            cluster.up(nodes=args.nodes, with_node=not args.no_real_node)
            print(f"cluster {cluster.name} up in {time.monotonic() - started:.1f}s")
            print(f"export KUBECONFIG={cluster.kubeconfig}")
        elif args.command == "down":
            cluster.down()
            print(f"cluster {cluster.name} down")
        elif args.command == "kubeconfig":
            print(cluster.kubeconfig)
        else:
            state = "up" if cluster.exists() and cluster._healthy() else "down"
            print(f"cluster {cluster.name}: {state}, {len(cluster.pids())} processes")
    except (ClusterError, real_node.NodeError, images.ImageBuildError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
