"""A real node beside the KWOK nodes: kubelet + containerd + runc + CNI bridge + kube-proxy.

KWOK simulates pods, so nothing a user's pod really does (probes, OOM kills, crash loops, traffic
through a Service, the operator's own pod) can be tested on KWOK nodes alone. This module runs one
real node as plain processes on this machine, joined to the kwokctl control plane that
``local.py`` starts, following ``shared/notes/real-node.md``.

Everything stays on this machine. The node's address is the gateway address of a bridge the node
creates (``BRIDGE``), pods live in network namespaces containerd creates, Service addresses exist
only as kube-proxy's iptables rules, and a firewall chain drops anything that would reach the API
server or the bridge from another interface, or leave the bridge for another interface.

The kubelet and CNI change the host (sysctls, iptables chains, links, mounts, cgroups, a few
fixed paths). ``down()`` undoes each of them; ``leftovers()`` lists what is still there, and a
test checks that it is nothing. One real node runs per machine: the bridge, the kubelet's port
and its fixed paths are machine-wide.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from cluster import images

BRIDGE = "hs-br0"
NODE_IP = "10.244.0.1"
POD_SUBNET = "10.244.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
# KWOK gives its pods addresses in 10.0.<node>.0/24. They exist nowhere, so a packet kube-proxy
# sends to one (a Service backed by a KWOK pod) must die here instead of following the default
# route off the machine.
KWOK_POD_CIDR = "10.0.0.0/16"
KUBELET_PORT = 10250
# Real pods tolerate this taint and select this label; every other pod stays on KWOK nodes.
TAINT_KEY = "homeostat.dev/real-node"
NODE_LABEL = "homeostat.dev/node"
CHAIN_IN = "HOMEOSTAT-IN"
CHAIN_FWD = "HOMEOSTAT-FWD"
# Chains the kubelet, kube-proxy and the CNI plugins create; kube-proxy --cleanup removes only
# its own, so teardown removes every chain with these prefixes from every table.
CHAIN_PREFIXES = ("KUBE-", "CNI-", "HOMEOSTAT-")
# Set by the kubelet (kernel tunables), the CNI bridge plugin (forwarding) and kube-proxy; their
# values before the first start are restored by teardown.
SYSCTLS = (
    "kernel/panic",
    "kernel/panic_on_oops",
    "vm/overcommit_memory",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
)
# Paths the tools use whatever their flags say; removed by teardown when they did not exist before.
FIXED_PATHS = (
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/cni",
    "/run/containerd",
    "/etc/cni/net.d/cni.lock",
    "/etc/cni/net.d",
    "/etc/cni",
    "/etc/containers/networks",
)
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Which node holds the machine-wide parts, and what the host had before: on tmpfs, because a
# reboot undoes the host changes too, and outside any cache, because clusters under different
# HOMEOSTAT_CACHE directories share one machine.
MACHINE_STATE = Path("/run/homeostat-node")
OWNER = MACHINE_STATE / "owner"


class NodeError(RuntimeError):
    """The real node could not be started, reached or cleaned up; the message is one line."""


def _run(*cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, input=input, check=False)
    if check and res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise NodeError(f"{' '.join(cmd[:3])} failed: {last}")
    return res


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key


@dataclass(frozen=True)
class Pki:
    """The cluster CA kwokctl made, which signs the node's client certificates."""

    ca_cert: Path
    ca_key: Path


@dataclass(frozen=True)
class RealNode:
    """The real node of one local cluster; its state lives under ``root``, never in the repo."""

    cluster: str
    root: Path
    bin_dir: Path
    api_port: int
    pki: Pki
    sandbox_image: str = "localhost/homeostat/pause:3.10"

    @property
    def name(self) -> str:
        return f"{self.cluster}-real"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def serving_chain(self) -> Path:
        """The kubelet's self-signed serving certificate and its CA, for clients that verify it
        (it names the node, not the address)."""
        return self.root / "kubelet" / "pki" / "kubelet.crt"

    @property
    def host_record(self) -> Path:
        """The host's state before any real node changed it; shared by every cluster's node."""
        return MACHINE_STATE / "host-before.json"

    def owns_host(self) -> bool:
        """This node holds the machine-wide parts (bridge, firewall, kubepods cgroups, ...)."""
        return OWNER.exists() and OWNER.read_text().strip() == str(self.root)

    # -- start -------------------------------------------------------------------------------

    def prepare_host(self) -> None:
        """Link, routes and firewall: before the API server starts listening on every address."""
        self._claim()
        self._record_host()
        if _run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
            _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "replace", f"{NODE_IP}/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        _run("ip", "route", "replace", "blackhole", KWOK_POD_CIDR)
        # Host → ClusterIP picks the bridge address as source, so replies stay on the bridge.
        _run("ip", "route", "replace", SERVICE_CIDR, "dev", BRIDGE, "src", NODE_IP)
        self._firewall()

    def start(self, built: Sequence[images.Image] = ()) -> None:
        """Start containerd, import the ``built`` images, then the kubelet and kube-proxy."""
        for sub in ("containerd", "kubelet", "cni/net.d", "cni/ipam", "logs", "pki", "pods-logs", "runc"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._certificates()
        self._write_configs()
        self._spawn("containerd", ["containerd", "--config", str(self.root / "containerd.toml")])
        self._wait(
            lambda: self.containerd_socket.exists() and self._ctr("version").returncode == 0,
            60,
            "containerd did not start",
        )
        if built:
            self.import_images(built)
        self._spawn(
            "kubelet",
            [
                str(self.bin_dir / "kubelet"),
                f"--config={self.root / 'kubelet.yaml'}",
                f"--kubeconfig={self.root / 'kubelet.kubeconfig'}",
                f"--root-dir={self.root / 'kubelet'}",
                f"--cert-dir={self.root / 'kubelet' / 'pki'}",
                f"--hostname-override={self.name}",
                f"--node-ip={NODE_IP}",
                f"--node-labels={NODE_LABEL}=real",
                # cAdvisor finds containers through containerd's default socket, not the CRI
                # endpoint: without this its metrics stop at the pod cgroup, with no
                # `container` label, and per-container memory queries find nothing.
                f"--containerd={self.containerd_socket}",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-proxy",
            [str(self.bin_dir / "kube-proxy"), f"--config={self.root / 'kube-proxy.yaml'}", "--v=1"],
        )

    def import_images(self, built: Sequence[images.Image]) -> None:
        """Import into the node's containerd, and remember the refs: tests must run what was
        imported, not what the repo's files would build now (an edit since changes the tags)."""
        images.import_into(self.containerd_socket, built)
        (self.root / "images.json").write_text(json.dumps([i.ref for i in built]))

    def imported(self) -> list[str]:
        """The refs the last ``import_images`` brought in (empty before any)."""
        path = self.root / "images.json"
        return list(json.loads(path.read_text())) if path.exists() else []

    def imported_ref(self, repository: str, tag_suffix: str = "") -> str:
        """The imported ref of ``repository`` (with ``-<tag_suffix>`` on its tag, if given)."""
        for ref in self.imported():
            repo, _, tag = ref.rpartition(":")
            if repo == repository and (tag.endswith(f"-{tag_suffix}") if tag_suffix else "-" not in tag):
                return ref
        raise NodeError(
            f"no image of {repository} was imported into {self.name} (make cluster-up builds them)"
        )

    def _claim(self) -> None:
        if OWNER.exists() and not self.owns_host():
            other = Path(OWNER.read_text().strip())
            if _pids_under(other):
                raise NodeError(
                    f"the real node is held by cluster {other.name!r} ({other}); stop it first "
                    f"(make cluster-down CLUSTER={other.name})"
                )
            # Its processes are gone (a killed run): take over, cleaning up what it left.
            RealNode(other.name, other, self.bin_dir, self.api_port, self.pki).down()
        MACHINE_STATE.mkdir(parents=True, exist_ok=True)
        OWNER.write_text(str(self.root))

    def _record_host(self) -> None:
        if self.host_record.exists():
            return
        record = {
            "sysctls": {k: _sysctl_path(k).read_text().strip() for k in SYSCTLS if _sysctl_path(k).exists()},
            "absent_paths": [p for p in FIXED_PATHS if not os.path.lexists(p)],
        }
        self.host_record.parent.mkdir(parents=True, exist_ok=True)
        self.host_record.write_text(json.dumps(record, indent=1))

    def _firewall(self) -> None:
        """Only loopback and the bridge reach the API server and the bridge's addresses, and
        nothing a pod sends is forwarded off the bridge (pods' DNS included)."""
        rules_in = [
            ["-i", "lo", "-j", "RETURN"],
            ["-i", BRIDGE, "-j", "RETURN"],
            ["-d", POD_SUBNET, "-j", "DROP"],
            ["-p", "tcp", "--dport", str(self.api_port), "-j", "DROP"],
        ]
        rules_fwd = [
            ["-i", BRIDGE, "-o", BRIDGE, "-j", "RETURN"],
            ["-i", BRIDGE, "-j", "DROP"],
            ["-o", BRIDGE, "-j", "DROP"],
        ]
        for chain, hook, rules in ((CHAIN_IN, "INPUT", rules_in), (CHAIN_FWD, "FORWARD", rules_fwd)):
            _run("iptables", "-N", chain, check=False)
            _run("iptables", "-F", chain)
            for rule in rules:
                _run("iptables", "-A", chain, *rule)
            if _run("iptables", "-C", hook, "-j", chain, check=False).returncode != 0:
                _run("iptables", "-I", hook, "1", "-j", chain)
        # The API server's wildcard socket also takes IPv6; only loopback may reach it there.
        _run("ip6tables", "-N", CHAIN_IN, check=False)
        _run("ip6tables", "-F", CHAIN_IN)
        _run("ip6tables", "-A", CHAIN_IN, "-i", "lo", "-j", "RETURN")
        _run("ip6tables", "-A", CHAIN_IN, "-p", "tcp", "--dport", str(self.api_port), "-j", "DROP")
        if _run("ip6tables", "-C", "INPUT", "-j", CHAIN_IN, check=False).returncode != 0:
            _run("ip6tables", "-I", "INPUT", "1", "-j", CHAIN_IN)

    def _certificates(self) -> None:
        pki = self.root / "pki"
        for name, subject in (
            ("kubelet", f"/O=system:nodes/CN=system:node:{self.name}"),
            ("kube-proxy", "/CN=system:kube-proxy"),
        ):
            key, csr, crt = pki / f"{name}.key", pki / f"{name}.csr", pki / f"{name}.crt"
            if crt.exists():
                continue
            _run(
                "openssl",
                "req",
                "-new",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(csr),
                "-subj",
                subject,
            )
            _run(
                "openssl",
                "x509",
                "-req",
                "-in",
                str(csr),
                "-CA",
                str(self.pki.ca_cert),
                "-CAkey",
                str(self.pki.ca_key),
                "-CAcreateserial",
                "-CAserial",
                str(pki / "ca.srl"),
                "-out",
                str(crt),
                "-days",
                "30",
            )
            key.chmod(0o600)
            csr.unlink()

    def _kubeconfig(self, user: str) -> str:
        pki = self.root / "pki"
        return json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "local",
                        "cluster": {
                            "server": f"https://127.0.0.1:{self.api_port}",
                            "certificate-authority": str(self.pki.ca_cert),
                        },
                    }
                ],
                "users": [
                    {
                        "name": user,
                        "user": {
                            "client-certificate": str(pki / f"{user}.crt"),
                            "client-key": str(pki / f"{user}.key"),
                        },
                    }
                ],
                "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
                "current-context": "local",
            }
        )

    def _write_configs(self) -> None:
        r = self.root
        (r / "containerd.toml").write_text(
            CONTAINERD_CONFIG.format(
                root=r / "containerd",
                runc_root=r / "runc",
                cni_conf=r / "cni" / "net.d",
                sandbox_image=self.sandbox_image,
            )
        )
        (r / "cni" / "net.d" / "10-homeostat.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "0.4.0",
                    "name": "homeostat",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": True,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                                # Services only, no default route: nothing off this machine is
                                # even routable from a pod.
                                "routes": [{"dst": SERVICE_CIDR}],
                                "dataDir": str(r / "cni" / "ipam"),
                            },
                        }
                    ],
                }
            )
        )
        # Pods get no resolver that leads off the machine: there is no cluster DNS here, and the
        # host's nameserver is outside.
        (r / "resolv.conf").write_text("nameserver 127.0.0.53\noptions ndots:1\n")
        (r / "kubelet.kubeconfig").write_text(self._kubeconfig("kubelet"))
        (r / "kube-proxy.kubeconfig").write_text(self._kubeconfig("kube-proxy"))
        (r / "kubelet.yaml").write_text(json.dumps(self._kubelet_config()))
        (r / "kube-proxy.yaml").write_text(
            json.dumps(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "clientConnection": {"kubeconfig": str(r / "kube-proxy.kubeconfig")},
                    "hostnameOverride": self.name,
                    "mode": "iptables",
                    "clusterCIDR": CLUSTER_CIDR,
                    "iptables": {"localhostNodePorts": False, "syncPeriod": "10s", "minSyncPeriod": "0s"},
                    "conntrack": {"maxPerCore": 0},
                    "nodePortAddresses": [f"{NODE_IP}/32"],
                    "healthzBindAddress": f"127.0.0.1:{_free_port()}",
                    "metricsBindAddress": f"127.0.0.1:{_free_port()}",
                }
            )
        )

    def _kubelet_config(self) -> dict[str, Any]:
        r = self.root
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.pki.ca_cert)},
            },
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs",
            # cgroup v1 is in maintenance mode since 1.31 and refused unless allowed.
            "failCgroupV1": False,
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "resolvConf": str(r / "resolv.conf"),
            "podLogsDir": str(r / "pods-logs"),
            "registerWithTaints": [{"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}],
            # Images come from archives, not a registry: garbage collection would delete
            # what nothing can pull back.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "200Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "serializeImagePulls": False,
            "maxPods": 60,
            "nodeStatusUpdateFrequency": "4s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "shutdownGracePeriod": "0s",
        }

    def _spawn(self, name: str, argv: list[str]) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        (self.root / f"{name}.pid").write_text(str(proc.pid))
        (self.root / f"{name}.argv").write_text(json.dumps(argv))

    def _ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _run("ctr", "--address", str(self.containerd_socket), *args, check=False)

    def _wait(self, ready: Callable[[], bool], timeout: float, error: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise NodeError(f"{error} within {timeout:.0f}s (logs: {self.logs})")
            time.sleep(0.3)

    # -- stop --------------------------------------------------------------------------------

    def stop_kubelet(self) -> None:
        """The node failure of a node-failure test: the kubelet stops, its pods keep running."""
        self._signal("kubelet", signal.SIGKILL)

    def start_kubelet_again(self) -> None:
        argv = self._argv("kubelet")
        if argv:
            self._spawn("kubelet", argv)

    def restart_kubelet(self, **overrides: object) -> None:
        """Restart the kubelet with ``overrides`` on its configuration (none: the usual one); its
        pods keep running meanwhile, as they do across a real kubelet restart."""
        self._signal("kubelet", signal.SIGTERM)
        # The kubelet's file only: kube-proxy exits when its own configuration file changes.
        (self.root / "kubelet.yaml").write_text(json.dumps({**self._kubelet_config(), **overrides}))
        self.start_kubelet_again()

    def _argv(self, name: str) -> list[str]:
        path = self.root / f"{name}.argv"
        return json.loads(path.read_text()) if path.exists() else []

    def _signal(self, name: str, sig: int) -> None:
        pid_file = self.root / f"{name}.pid"
        if not pid_file.exists():
            return
        pid = int(pid_file.read_text())
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        _wait_gone([pid], 20)

    def running(self) -> bool:
        """The kubelet of this node is alive (its Node may still be NotReady)."""
        return self._alive("kubelet")

    def healthy(self) -> bool:
        """containerd, the kubelet and kube-proxy are all alive."""
        return all(self._alive(name) for name in ("containerd", "kubelet", "kube-proxy"))

    def _alive(self, name: str) -> bool:
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.root / f"{name}.pid").read_text())
            return Path(f"/proc/{pid}").exists() and not _zombie(pid)
        return False

    def check_alive(self) -> None:
        """Raise with the last line of its log when a process of the node has exited."""
        for name in ("containerd", "kubelet", "kube-proxy"):
            with contextlib.suppress(OSError, ValueError):
                pid = int((self.root / f"{name}.pid").read_text())
                if not Path(f"/proc/{pid}").exists() or _zombie(pid):
                    lines = (self.logs / f"{name}.log").read_text(errors="replace").strip().splitlines()
                    raise NodeError(f"{name} of {self.name} exited: {(lines or ['(no log)'])[-1][-300:]}")

    def stop(self) -> None:
        """Stop every process of the node and remove its pods' traces; the link and the firewall
        stay, so an API server listening behind them is never exposed meanwhile. Pods, mounts
        and cgroups are machine-wide: they are touched only by the node that holds the host."""
        if not self.owns_host():
            _kill(_pids_under(self.root), signal.SIGKILL)
            _wait_gone(_pids_under(self.root), 10)
            if self.root.exists() and not _mounts_under(self.root):
                shutil.rmtree(self.root, ignore_errors=True)
            return
        for name in ("kube-proxy", "kubelet"):
            self._signal(name, signal.SIGTERM)
        self._kill_containers()
        self._signal("containerd", signal.SIGTERM)
        _kill(_pids_under(self.root), signal.SIGKILL)
        _wait_gone(_pids_under(self.root), 10)
        self._unmount()
        self._remove_cgroups()
        if _mounts_under(self.root):
            raise NodeError(f"mounts remain under {self.root}: {_mounts_under(self.root)[:3]}")
        shutil.rmtree(self.root, ignore_errors=True)

    def down(self) -> None:
        """Stop every process of the node and undo every host change; idempotent. A cluster that
        does not hold the real node (KWOK-only, or another cluster's) changes nothing shared."""
        owner = self.owns_host()
        self.stop()
        if owner:
            self._restore_network()
            self._restore_host()
            OWNER.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                MACHINE_STATE.rmdir()

    def _kill_containers(self) -> None:
        """Every process in the node's pods, then the shims that watch them."""
        for _ in range(3):
            pids = [pid for group in _kubepods_groups() for pid in _procs(group)]
            pids += _pids_matching(str(self.containerd_socket))
            if not pids:
                return
            _kill(pids, signal.SIGKILL)
            _wait_gone(pids, 10)

    def _unmount(self) -> None:
        for mount in sorted(_mounts_under(self.root) + _mounts_under(Path("/var/lib/kubelet")), reverse=True):
            if _run("umount", mount, check=False).returncode != 0:
                _run("umount", "-l", mount, check=False)

    def _remove_cgroups(self) -> None:
        for _ in range(20):
            groups = _kubepods_groups()
            if not groups:
                return
            for group in sorted(groups, key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    group.rmdir()
            time.sleep(0.2)

    def _restore_network(self) -> None:
        for binary in ("iptables", "ip6tables"):
            for table in ("filter", "nat", "mangle", "raw"):
                _drop_chains(binary, table)
        _run("ip", "route", "del", "blackhole", KWOK_POD_CIDR, check=False)
        _run("ip", "route", "del", SERVICE_CIDR, "dev", BRIDGE, check=False)
        _run("ip", "link", "del", BRIDGE, check=False)
        # Host-side veth ends normally vanish with their namespaces; any left behind by a crash go.
        for line in _run("ip", "-o", "link", "show", "type", "veth", check=False).stdout.splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            if name.startswith("veth"):
                _run("ip", "link", "del", name, check=False)

    def _restore_host(self) -> None:
        if not self.host_record.exists():
            return
        record = json.loads(self.host_record.read_text())
        for key, value in record["sysctls"].items():
            with contextlib.suppress(OSError):
                _sysctl_path(key).write_text(value)
        for path in record["absent_paths"]:
            if os.path.lexists(path) and not _mounts_under(Path(path)):
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
        self.host_record.unlink()

    def leftovers(self) -> list[str]:
        """What of the node is still on this machine: empty after a clean ``down()``."""
        found = [f"process {pid}" for pid in _pids_under(self.root)]
        found += [f"container process {pid}" for g in _kubepods_groups() for pid in _procs(g)]
        found += [f"cgroup {g}" for g in _kubepods_groups()]
        found += [f"mount {m}" for m in _mounts_under(self.root) + _mounts_under(Path("/var/lib/kubelet"))]
        if _run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
            found.append(f"link {BRIDGE}")
        routes = _run("ip", "route", "show", check=False).stdout
        found += [f"route {r}" for r in routes.splitlines() if KWOK_POD_CIDR in r or SERVICE_CIDR in r]
        for binary in ("iptables", "ip6tables"):
            for table in ("filter", "nat", "mangle", "raw"):
                found += [f"{binary} -t {table} chain {c}" for c in _chains(binary, table)]
        if self.root.exists():
            found.append(f"directory {self.root}")
        return found


def host_record(path: Path) -> dict[str, Any]:
    """What ``_record_host`` kept of the host before any real node changed it (empty if none)."""
    return cast(dict[str, Any], json.loads(path.read_text())) if path.exists() else {}


def host_changes(record: dict[str, Any]) -> list[str]:
    """Sysctls and fixed paths that differ from ``record`` (see ``host_record``)."""
    changed = [
        f"sysctl {k} = {_sysctl_path(k).read_text().strip()} (was {v})"
        for k, v in record.get("sysctls", {}).items()
        if _sysctl_path(k).exists() and _sysctl_path(k).read_text().strip() != v
    ]
    changed += [f"path {p}" for p in record.get("absent_paths", []) if os.path.lexists(p)]
    return changed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _chains(binary: str, table: str) -> list[str]:
    res = _run(f"{binary}-save", "-t", table, check=False)
    return [
        line[1:].split()[0]
        for line in res.stdout.splitlines()
        if line.startswith(":") and line[1:].startswith(CHAIN_PREFIXES)
    ]


def _drop_chains(binary: str, table: str) -> None:
    """Remove our chains and every rule that jumps to one, in one atomic restore of the table."""
    saved = _run(f"{binary}-save", "-t", table, check=False).stdout
    if not any(line[1:].startswith(CHAIN_PREFIXES) for line in saved.splitlines() if line.startswith(":")):
        return
    kept = []
    for line in saved.splitlines():
        words = line.split()
        if line.startswith(":") and line[1:].startswith(CHAIN_PREFIXES):
            continue
        targets = [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-j", "-g")]
        if line.startswith("-A") and any(t.startswith(CHAIN_PREFIXES) for t in [words[1], *targets]):
            continue
        kept.append(line)
    _run(f"{binary}-restore", "-T", table, input="\n".join(kept) + "\n", check=False)


def _kubepods_groups() -> list[Path]:
    if not CGROUP_ROOT.is_dir():
        return []
    groups: list[Path] = []
    for hierarchy in CGROUP_ROOT.iterdir():
        top = hierarchy / "kubepods"
        if top.is_dir() and not top.is_symlink():
            # os.walk passes over a group that goes while it looks (a container just stopped);
            # rglob raised FileNotFoundError and `make cluster-down` stopped halfway.
            groups.extend(Path(dirpath) for dirpath, _, _ in os.walk(top))
    return groups


def _procs(group: Path) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(p) for p in (group / "cgroup.procs").read_text().split()]
    return []


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root).rstrip("/") + "/"
    mounts = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point == str(root) or point.startswith(prefix):
                mounts.append(point)
    return mounts


def _pids_matching(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(int(entry.name))
    return found


def _pids_under(root: Path) -> list[int]:
    return _pids_matching(str(root) + "/")


def _kill(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pids: Sequence[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{pid}").exists() and not _zombie(pid) for pid in pids):
        if time.monotonic() > deadline:
            return
        time.sleep(0.1)


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return False


CONTAINERD_CONFIG = """\
# The real node's own containerd: every path private to the node's directory.
version = 2
root = "{root}/root"
state = "{root}/state"
[grpc]
  address = "{root}/containerd.sock"
[ttrpc]
  address = "{root}/containerd.sock.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # The machine's root lacks CAP_SYS_RESOURCE: the sandbox's oom_score_adj of -998 would make
  # every pod fail in runc create.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc_root}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
"""
