"""Canaries of workloads that execute, judged by Prometheus scraping the pods themselves.

No simulator here: the sample app runs on the real node, a load generator on this machine sends
requests to the service's ClusterIP (kube-proxy spreads them over stable and canary pods), the
pods count their own answers, Prometheus finds the pods through the API server and scrapes them,
and the operator queries it with the PromQL written in the service's spec.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import prom
import workload
from conftest import Cluster, OperatorProcess, Workloads, get_json, wait_for

pytestmark = pytest.mark.e2e

SEL = 'namespace="{{namespace}}",service="{{service}}",revision="{{revision}}"'
# A revision that never failed has no 5xx series at all: `or vector(0)` makes that a ratio of 0
# rather than no data (inconclusive), while no traffic at all still divides by nothing.
ERROR_RATIO = (
    f'(sum(rate(http_requests_total{{{SEL},code=~"5.."}}[10s])) or vector(0))'
    f" / sum(rate(http_requests_total{{{SEL}}}[10s]))"
)
CANARY = {
    "strategy": "Canary",
    "canary": {"steps": [{"weight": 25, "pause": "15s"}, {"weight": 50, "pause": "15s"}]},
    "analysis": {
        "interval": "3s",
        "failureLimit": 1,
        "inconclusiveLimit": 30,
        "consecutiveErrorLimit": 30,
        "metrics": [{"name": "error-ratio", "query": ERROR_RATIO, "max": 0.1}],
    },
}


class Load:
    """Requests to one URL at a steady rate from a thread, bounded in count and in time."""

    def __init__(self, url: str, rate: float = 40, max_seconds: float = 300) -> None:
        self.url, self.rate, self.max_seconds = url, rate, max_seconds
        self.codes: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        for _ in range(int(self.rate * self.max_seconds)):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            started = time.monotonic()
            code = workload.answer(self.url)
            self.codes[code] = self.codes.get(code, 0) + 1
            self._stop.wait(max(0.0, 1 / self.rate - (time.monotonic() - started)))


@pytest.fixture
def delivered(
    cluster: Cluster, crds_installed: None, workloads: Workloads, tmp_path: Path
) -> Iterator[tuple[str, prom.PrometheusServer, OperatorProcess]]:
    """A namespace of real pods, a Prometheus scraping them, and an operator reading it."""
    prom.need_prometheus()
    namespace = f"rd-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", namespace)
    pods = prom.RealPodTargets(
        cluster.kubeconfig, namespace, nodes=".+-real" if workloads.node_selector else ".+"
    ).start()
    server = prom.PrometheusServer([], extra_scrape_configs=pods.scrape_config).start()
    operator = OperatorProcess(
        cluster.kubeconfig,
        tmp_path / "operator.log",
        ("--namespace", namespace, "--prometheus-url", server.url),
    ).start()
    try:
        yield namespace, server, operator
    finally:
        operator.stop()
        server.cleanup()
        pods.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return (get_json(cluster, "rsvc", name, "-n", namespace) or {}).get("status") or {}


def _phase(cluster: Cluster, namespace: str, name: str) -> str | None:
    return (_status(cluster, namespace, name).get("rollout") or {}).get("phase")


def _wait_phase(
    cluster: Cluster, namespace: str, name: str, want: str, timeout: float = 180
) -> dict[str, Any]:
    return wait_for(
        lambda: _status(cluster, namespace, name) if _phase(cluster, namespace, name) == want else None,
        timeout=timeout,
        what=f"{name} {want} (now {_phase(cluster, namespace, name)})",
    )


def _scraped(server: prom.PrometheusServer, query: str) -> Callable[[], bool]:
    def check() -> bool:
        url = f"{server.url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as res:
            return bool(json.load(res)["data"]["result"])
        return False

    return check


def _service(workloads: Workloads, name: str, **env: str) -> dict[str, Any]:
    return workload.replicated_service(
        workloads, name, env=env, rollout=CANARY, replicas={"min": 1, "max": 6, "desired": 4}
    )


def _apply(cluster: Cluster, namespace: str, body: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))


def _first_revision_under_load(
    cluster: Cluster, namespace: str, server: prom.PrometheusServer, workloads: Workloads, name: str
) -> tuple[str, str]:
    _apply(cluster, namespace, _service(workloads, name))
    stable = _wait_phase(cluster, namespace, name, "Promoted")["rollout"]["stableRevision"]
    ip = (get_json(cluster, "service", name, "-n", namespace) or {})["spec"]["clusterIP"]
    return stable, f"http://{ip}:8080/"


def test_a_canary_that_really_answers_5xx_is_rolled_back(
    cluster: Cluster, workloads: Workloads, delivered: tuple[str, prom.PrometheusServer, OperatorProcess]
) -> None:
    namespace, server, operator = delivered
    stable, url = _first_revision_under_load(cluster, namespace, server, workloads, "shop")
    with Load(url) as load:
        wait_for(
            _scraped(
                server, f'http_requests_total{{namespace="{namespace}",revision="{stable}",code="200"}}'
            ),
            timeout=60,
            what="Prometheus scraping the stable pods' answers",
        )
        _apply(cluster, namespace, _service(workloads, "shop", APP_ERROR_RATIO="1"))
        wait_for(
            lambda: (
                (get_json(cluster, "deployment", "shop-canary", "-n", namespace) or {})
                .get("status", {})
                .get("readyReplicas")
            ),
            timeout=90,
            what="a canary pod Ready and taking traffic",
        )
        onset = time.monotonic()
        done = _wait_phase(cluster, namespace, "shop", "RolledBack", timeout=120)
        decided = time.monotonic() - onset
        wait_for(
            lambda: get_json(cluster, "deployment", "shop-canary", "-n", namespace) is None,
            timeout=60,
            what="the canary gone",
        )
    print(f"real 5xx canary: rolled back {decided:.1f} s after its first pod was Ready; answers {load.codes}")
    assert load.codes.get(500, 0) > 0, f"the canary never answered 5xx to the load: {load.codes}"
    assert done["rollout"]["stableRevision"] == stable
    degraded = next(c for c in done["conditions"] if c["type"] == "Degraded")
    assert "error-ratio" in degraded["message"], degraded
    assert operator.alive()


def test_a_good_canary_of_real_pods_is_promoted_under_load(
    cluster: Cluster, workloads: Workloads, delivered: tuple[str, prom.PrometheusServer, OperatorProcess]
) -> None:
    namespace, server, operator = delivered
    stable, url = _first_revision_under_load(cluster, namespace, server, workloads, "cart")
    with Load(url) as load:
        wait_for(
            _scraped(
                server, f'http_requests_total{{namespace="{namespace}",revision="{stable}",code="200"}}'
            ),
            timeout=60,
            what="Prometheus scraping the stable pods' answers",
        )
        # A harmless change makes a new revision: 5 ms more latency, no errors.
        _apply(cluster, namespace, _service(workloads, "cart", APP_LATENCY_MS="5"))
        canary = wait_for(
            lambda: (
                (current := _status(cluster, namespace, "cart").get("currentRevision")) != stable and current
            ),
            timeout=60,
            what="a new revision",
        )
        served = _scraped(
            server, f'http_requests_total{{namespace="{namespace}",revision="{canary}",code="200"}}'
        )
        wait_for(served, timeout=90, what="the canary's pods answering the load")
        onset = time.monotonic()
        done = _wait_phase(cluster, namespace, "cart", "Promoted", timeout=180)
        took = time.monotonic() - onset
    print(f"real good canary: promoted {took:.1f} s after its pods answered; answers {load.codes}")
    assert done["rollout"]["stableRevision"] == canary, done["rollout"]
    assert load.codes.get(200, 0) > 0 and not load.codes.get(500), load.codes
    degraded = [c for c in done.get("conditions") or [] if c["type"] == "Degraded" and c["status"] == "True"]
    assert not degraded, degraded
    assert operator.alive()
