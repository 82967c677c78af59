"""A real Prometheus for tests, scraping the traffic simulator, plus the pytest fixtures for both.

Rollout analysis, autoscaling and healing must be tested against the real query engine (rate
windows, staleness, histogram_quantile), not canned answers, so this starts Debian's
``/usr/bin/prometheus`` on a free 127.0.0.1 port with its own TSDB directory, scraping every
second. ``stop()``/``start()`` keep the data directory, so "Prometheus is down" tests get their
history back after a restart, and ``backfill()`` seeds hours of past samples through
``promtool tsdb create-blocks-from openmetrics`` before the server starts (see ADR 0007).

Registered as a pytest plugin from conftest.py; fixtures:

- ``traffic_simulator`` (session): ``traffic.simulator.Simulator`` watching the test cluster.
- ``prometheus`` (session): a shared server scraping it. Do not stop it; use the factory.
- ``prometheus_factory``: ``make(backfill=[...], start=True) -> PrometheusServer`` for tests
  that stop, restart or seed their own server; each is stopped at the end of the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from traffic import simulator

PROMETHEUS = os.environ.get("HOMEOSTAT_PROMETHEUS_BIN", "/usr/bin/prometheus")
PROMTOOL = os.environ.get("HOMEOSTAT_PROMTOOL_BIN", "/usr/bin/promtool")

CONFIG = """\
global:
  scrape_interval: {interval}
  scrape_timeout: {interval}
  evaluation_interval: {interval}
scrape_configs:
  - job_name: homeostat-sim
    honor_labels: true
    static_configs:
      - targets: [{targets}]
"""


class RealPodTargets:
    """The pods that really execute, as Prometheus file-based discovery targets.

    Debian's Prometheus is built without Kubernetes service discovery, so this does its part: a
    thread lists the namespace's pods every second and writes those that run on a node matching
    ``nodes`` (".+" on kind, where every node is real) and expose a container port named ``port``
    to a targets file, which Prometheus re-reads. The pods' own labels win (honor_labels)."""

    def __init__(self, kubeconfig: Path, namespace: str, nodes: str = ".+-real", port: str = "http") -> None:
        self.kubeconfig, self.namespace, self.port = kubeconfig, namespace, port
        self.nodes = re.compile(nodes)
        self.path = Path(tempfile.mkdtemp(prefix="homeostat-sd-")) / "targets.json"
        self.path.write_text("[]")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @property
    def scrape_config(self) -> str:
        """The job for ``PrometheusServer(extra_scrape_configs=...)``."""
        return (
            "  - job_name: real-pods\n"
            "    honor_labels: true\n"
            "    file_sd_configs:\n"
            f"      - files: [{self.path}]\n"
            "        refresh_interval: 1s\n"
        )

    def start(self) -> RealPodTargets:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        shutil.rmtree(self.path.parent, ignore_errors=True)

    def targets(self, pods: dict[str, Any]) -> list[dict[str, Any]]:
        found = []
        for pod in pods.get("items", []):
            spec, status = pod.get("spec") or {}, pod.get("status") or {}
            if status.get("phase") != "Running" or not self.nodes.fullmatch(spec.get("nodeName") or ""):
                continue
            ports = [
                p["containerPort"]
                for c in spec.get("containers", [])
                for p in c.get("ports", [])
                if p.get("name") == self.port
            ]
            if ports and status.get("podIP"):
                found.append({"targets": [f"{status['podIP']}:{ports[0]}"], "labels": {}})
        return found

    def _loop(self) -> None:
        kubectl = (
            Path(os.environ.get("HOMEOSTAT_CACHE", Path.home() / ".cache" / "homeostat")) / "bin" / "kubectl"
        )
        while not self._stop.wait(1.0):
            res = subprocess.run(
                [
                    str(kubectl),
                    "--kubeconfig",
                    str(self.kubeconfig),
                    "get",
                    "pods",
                    "-n",
                    self.namespace,
                    "-o",
                    "json",
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if res.returncode == 0:
                text = json.dumps(self.targets(json.loads(res.stdout)))
                if text != self.path.read_text():
                    tmp = self.path.with_suffix(".tmp")
                    tmp.write_text(text)
                    tmp.replace(self.path)  # atomic: Prometheus never reads half a file


def kubelet_cadvisor_scrape_config(
    address: str, *, server_name: str, ca_file: Path, cert_file: Path, key_file: Path, keep: str = ".+"
) -> str:
    """A job scraping a kubelet's cAdvisor endpoint, as a cluster's Prometheus would: over TLS,
    verifying the kubelet's own serving certificate (``ca_file`` holds its chain; it names the
    node, not the address), and authenticating with a client certificate the kubelet's webhook
    authorizer accepts. Only the memory series of namespaces matching ``keep`` are stored."""
    return (
        "  - job_name: kubelet-cadvisor\n"
        "    scheme: https\n"
        "    metrics_path: /metrics/cadvisor\n"
        "    tls_config:\n"
        f"      ca_file: {ca_file}\n"
        f"      cert_file: {cert_file}\n"
        f"      key_file: {key_file}\n"
        f"      server_name: {server_name}\n"
        "    static_configs:\n"
        f'      - targets: ["{address}"]\n'
        "    metric_relabel_configs:\n"
        "      - source_labels: [__name__, namespace]\n"
        f'        regex: "container_memory_working_set_bytes;{keep}"\n'
        "        action: keep\n"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrometheusServer:
    """One Prometheus process; ``data_dir`` outlives ``stop()`` so a restart keeps history."""

    def __init__(
        self,
        targets: Sequence[str],
        workdir: Path | None = None,
        scrape_interval: str = "1s",
        port: int | None = None,
        extra_scrape_configs: str = "",
        *,
        host: str = "127.0.0.1",
    ) -> None:
        """``extra_scrape_configs``: more ``scrape_configs`` list items, as YAML indented by two
        spaces (e.g. ``pods_on_real_node``), after the job that scrapes ``targets``. ``host``: the
        address to listen on; ``make demo`` gives the real node's bridge address so that the
        operator's pod can query it (never a wildcard address)."""
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="homeostat-prom-"))
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config = self.workdir / "prometheus.yml"
        quoted = ", ".join(f'"{t}"' for t in targets)
        self.config.write_text(CONFIG.format(interval=scrape_interval, targets=quoted) + extra_scrape_configs)
        self.log_path = self.workdir / "prometheus.log"
        self.host, self.port = host, port or free_port()
        self.url = f"http://{host}:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> PrometheusServer:
        if self.running():
            return self
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.data_dir}",
                f"--web.listen-address={self.host}:{self.port}",
                # Backfilled history may be weeks old: keep it.
                "--storage.tsdb.retention.time=3650d",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited with {self.process.returncode}:\n{self.logs()[-3000:]}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prometheus not ready after {timeout:.0f}s:\n{self.logs()[-3000:]}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def backfill(self, openmetrics: str, max_block_duration: str = "24h") -> str:
        """Turn OpenMetrics text (samples with timestamps, ending in ``# EOF``) into TSDB blocks
        in the data directory. Only while stopped: the server loads the blocks when it starts."""
        if self.running():
            raise RuntimeError("backfill needs Prometheus stopped; blocks are loaded at start")
        with tempfile.NamedTemporaryFile("w", suffix=".om", dir=self.workdir, delete=False) as source:
            source.write(openmetrics)
        try:
            result = subprocess.run(
                [
                    PROMTOOL,
                    "tsdb",
                    "create-blocks-from",
                    "openmetrics",
                    f"--max-block-duration={max_block_duration}",
                    source.name,
                    str(self.data_dir),
                ],
                capture_output=True,
                text=True,
                timeout=300,
            )
        finally:
            os.unlink(source.name)
        if result.returncode != 0:
            raise RuntimeError(f"promtool failed ({result.returncode}): {result.stderr or result.stdout}")
        return result.stdout

    def wait_for_target_up(self, timeout: float = 30) -> None:
        """Until the first scrape succeeded, so queries for "now" have data."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(urllib.error.URLError, OSError):
                query = urllib.parse.urlencode({"query": 'up{job="homeostat-sim"} == 1'})
                with urllib.request.urlopen(f"{self.url}/api/v1/query?{query}", timeout=2) as response:
                    if b'"value"' in response.read():
                        return
            time.sleep(0.2)
        raise RuntimeError(f"no successful scrape within {timeout:.0f}s:\n{self.logs()[-3000:]}")


# --- fixtures ------------------------------------------------------------------------------------


def need_prometheus() -> None:
    # A failure, not a skip: a machine without Prometheus must not report green having tested
    # less. `make test` installs it (tests/cluster/prereqs.sh).
    for path in (PROMETHEUS, PROMTOOL):
        if not Path(path).exists():
            pytest.fail(f"{path} is missing: run `make prereqs` (Debian package prometheus)", pytrace=False)


@pytest.fixture(scope="session")
def traffic_simulator(cluster: object) -> Iterator[simulator.Simulator]:
    sim = simulator.Simulator(cluster.kubeconfig).start()  # type: ignore[attr-defined]
    yield sim
    sim.stop()


@pytest.fixture(scope="session")
def prometheus(traffic_simulator: simulator.Simulator) -> Iterator[PrometheusServer]:
    need_prometheus()
    server = PrometheusServer([traffic_simulator.target]).start()
    server.wait_for_target_up()
    yield server
    server.cleanup()


@pytest.fixture
def prometheus_factory(
    traffic_simulator: simulator.Simulator,
) -> Iterator[Callable[..., PrometheusServer]]:
    need_prometheus()
    made: list[PrometheusServer] = []

    def make(backfill: Sequence[str] = (), start: bool = True) -> PrometheusServer:
        server = PrometheusServer([traffic_simulator.target])
        made.append(server)
        for text in backfill:
            server.backfill(text)
        if start:
            server.start()
            server.wait_for_target_up()
        return server

    yield make
    for server in made:
        server.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """``python tests/prom.py [TARGET...]``: a Prometheus for ``make demo``, until Ctrl-C."""
    import argparse
    import signal
    import threading

    parser = argparse.ArgumentParser(description="Prometheus scraping the given targets every second")
    parser.add_argument("targets", nargs="*", help="host:port of a /metrics endpoint")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (never a wildcard)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the TSDB here (default: a temp dir)")
    parser.add_argument(
        "--real-pods", metavar="NAMESPACE", help="also scrape this namespace's pods on the real node"
    )
    parser.add_argument("--kubeconfig", type=Path, help="the cluster of --real-pods")
    args = parser.parse_args(argv)
    pods = RealPodTargets(args.kubeconfig, args.real_pods).start() if args.real_pods else None
    server = PrometheusServer(
        args.targets,
        workdir=args.workdir,
        port=args.port,
        host=args.host,
        extra_scrape_configs=pods.scrape_config if pods else "",
    ).start()
    if args.targets:
        server.wait_for_target_up()
    print(f"Prometheus at {server.url} (data in {server.data_dir})", flush=True)
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    if args.workdir is None:
        server.cleanup()
    else:
        server.stop()
    if pods:
        pods.stop()
    return 0


if __name__ == "__main__":  # run as a script, tests/ is on sys.path already
    raise SystemExit(main())
