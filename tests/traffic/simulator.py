"""Serves what the cluster's simulated pods would report, as Prometheus metrics on 127.0.0.1.

KWOK pods execute nothing, so rollout analysis, autoscaling and healing tests scrape this
process instead (``make demo`` does not: its shop runs the sample app on the real node). It
polls the cluster for ``ReplicatedService`` objects and their pods, splits each service's
demand evenly over its Ready pods, applies the faults the pods' annotations ask for (see
``traffic.model``), and answers ``GET /metrics``.

Run it as a process (``cd tests && python -m traffic.simulator --kubeconfig K --port P``) or
in a thread (``Simulator(kubeconfig).start()``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.server
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import kubernetes

from traffic import model

logger = logging.getLogger("traffic.simulator")

GROUP, VERSION, PLURAL = "homeostat.dev", "v1alpha1", "replicatedservices"


def _timestamp(value: Any) -> float | None:
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    if isinstance(value, str) and value:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


def _ready(pod: Mapping[str, Any]) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


def _first_container(pod: Mapping[str, Any]) -> str:
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    return str(containers[0].get("name") or "app")


class Simulator:
    """Polls the cluster every ``poll_interval`` seconds and serves ``/metrics``."""

    def __init__(
        self,
        kubeconfig: str | Path | None,
        port: int = 0,
        namespaces: Sequence[str] = (),
        poll_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.namespaces = tuple(namespaces)
        self.poll_interval = poll_interval
        self.clock = clock
        self.world = model.World(clock())
        self.lock = threading.Lock()
        self.problems: dict[str, str] = {}  # object -> why its annotation was ignored
        self.polls = 0
        self._stop = threading.Event()
        self._api = kubernetes.config.new_client_from_config(
            config_file=str(kubeconfig) if kubeconfig else None
        )
        simulator = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/metrics":
                    body = simulator.metrics().encode()
                    content_type = "text/plain; version=0.0.4; charset=utf-8"
                elif self.path == "/healthz":
                    body, content_type = b"ok\n", "text/plain"
                else:
                    self.send_error(404)
                    return
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(200)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.target = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.target}/metrics"
        self._threads: list[threading.Thread] = []

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Simulator:
        self.poll()  # serve a complete picture from the first scrape on
        self._threads = [
            threading.Thread(target=self.server.serve_forever, args=(0.1,), daemon=True, name="sim-http"),
            threading.Thread(target=self._poll_loop, daemon=True, name="sim-poll"),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        for thread in self._threads:
            thread.join(timeout=10)
        self._api.close()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- state -------------------------------------------------------------------------------------

    def metrics(self) -> str:
        with self.lock:
            self.world.advance(self.clock())
            return self.world.exposition()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.poll()
            except Exception as exc:  # keep serving the last picture; the cluster may come back
                logger.warning(
                    "polling the cluster failed: %s", str(exc).splitlines()[0] if str(exc) else exc
                )

    def poll(self) -> None:
        """Read services and pods once and hand them to the model."""
        custom = kubernetes.client.CustomObjectsApi(self._api)
        core = kubernetes.client.CoreV1Api(self._api)
        if self.namespaces:
            services = [
                s
                for ns in self.namespaces
                for s in custom.list_namespaced_custom_object(
                    GROUP, VERSION, ns, PLURAL, _request_timeout=10
                )["items"]
            ]
            pod_items = [
                p
                for ns in self.namespaces
                for p in self._api.sanitize_for_serialization(
                    core.list_namespaced_pod(ns, label_selector=model.LABEL_SERVICE, _request_timeout=10)
                )["items"]
            ]
        else:
            services = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, _request_timeout=10)["items"]
            pod_items = self._api.sanitize_for_serialization(
                core.list_pod_for_all_namespaces(label_selector=model.LABEL_SERVICE, _request_timeout=10)
            )["items"]
        problems: dict[str, str] = {}
        disks = self._node_disks(core, problems)
        patterns: dict[tuple[str, str], model.Pattern] = {}
        for service in services:
            meta = service["metadata"]
            key = (meta["namespace"], meta["name"])
            try:
                patterns[key] = model.parse_pattern(
                    (meta.get("annotations") or {}).get(model.ANNOTATION_PATTERN)
                )
            except model.PatternError as exc:
                problems[f"rsvc {key[0]}/{key[1]}"] = str(exc)
                patterns[key] = model.Constant()
        now = self.clock()
        pods: list[model.PodInfo] = []
        for pod in pod_items:
            meta = pod["metadata"]
            labels = meta.get("labels") or {}
            try:
                faults = model.parse_faults(meta.get("annotations") or {})
            except model.PatternError as exc:
                problems[f"pod {meta['namespace']}/{meta['name']}"] = str(exc)
                faults = model.Faults()
            started = _timestamp((pod.get("status") or {}).get("startTime"))
            pods.append(
                model.PodInfo(
                    uid=meta["uid"],
                    namespace=meta["namespace"],
                    service=labels.get(model.LABEL_SERVICE, ""),
                    revision=labels.get(model.LABEL_REVISION, ""),
                    track=labels.get(model.LABEL_TRACK, ""),
                    name=meta["name"],
                    started=now if started is None else started,
                    ready=_ready(pod) and (meta["namespace"], labels.get(model.LABEL_SERVICE)) in patterns,
                    faults=faults,
                    container=_first_container(pod),
                )
            )
        for what, why in problems.items():
            if self.problems.get(what) != why:
                logger.warning("ignoring traffic annotations of %s: %s", what, why)
        with self.lock:
            self.world.advance(now)  # what happened so far, with the pods Ready until now
            self.world.update(patterns, pods)
            if disks is not None:
                self.world.update_nodes(disks)
            self.problems = problems
            self.polls += 1

    def _node_disks(self, core: Any, problems: dict[str, str]) -> list[model.NodeDisk] | None:
        """Every node's disk (None when nodes cannot be listed, e.g. with namespaced credentials)."""
        try:
            items = self._api.sanitize_for_serialization(core.list_node(_request_timeout=10))["items"]
        except kubernetes.client.ApiException as exc:
            if exc.status in (401, 403):
                return None
            raise
        now = self.clock()
        disks = []
        for node in items:
            name = node["metadata"]["name"]
            try:
                disks.append(model.parse_node_disk(name, node["metadata"].get("annotations") or {}, now))
            except model.PatternError as exc:
                problems[f"node {name}"] = str(exc)
                disks.append(model.NodeDisk(name, since=now))
        return disks


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m traffic.simulator", description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument(
        "-n", "--namespace", action="append", default=[], help="only this namespace (repeatable)"
    )
    parser.add_argument("--poll-interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    sim = Simulator(args.kubeconfig, args.port, args.namespace, args.poll_interval).start()
    print(f"serving simulated metrics at {sim.url}", flush=True)
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
