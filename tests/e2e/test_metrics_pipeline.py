"""The metrics pipeline end to end: operator-made pods -> traffic simulator -> real Prometheus
-> ``PrometheusMetrics``, with the PromQL that rollout analysis and healing rely on.

Pods are created by the operator from a ReplicatedService on the real control plane; their
fault annotations come from the pod template, exactly as a user would set them on a revision.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import pytest

from conftest import Cluster, OperatorProcess, get_json, wait_for
from homeostat import ports
from homeostat.adapters import prometheus as prom_adapter
from prom import PrometheusServer
from traffic import model

pytestmark = pytest.mark.e2e

MI = 2**20


def service(name: str, pattern: str, replicas: int, **faults: str) -> dict[str, Any]:
    annotations = {f"traffic.homeostat.dev/{k.replace('_', '-')}": v for k, v in faults.items()}
    return {
        "apiVersion": "homeostat.dev/v1alpha1",
        "kind": "ReplicatedService",
        "metadata": {"name": name, "annotations": {model.ANNOTATION_PATTERN: pattern}},
        "spec": {
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]},
            },
            "replicas": {"min": 1, "max": 6, "desired": replicas},
        },
    }


def create_ready(cluster: Cluster, namespace: str, body: dict[str, Any]) -> str:
    """Apply and wait until the operator reports every replica Ready; return the revision."""
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))
    name = body["metadata"]["name"]

    def ready() -> str | None:
        current = get_json(cluster, "rsvc", name, "-n", namespace) or {}
        status = current.get("status") or {}
        if (
            status.get("observedGeneration") == current["metadata"]["generation"]
            and status.get("phase") == "Ready"
            and status.get("readyReplicas") == body["spec"]["replicas"]["desired"]
        ):
            return str(status["currentRevision"])
        return None

    return str(wait_for(ready, timeout=90, what=f"rsvc/{name} Ready"))


def instant(provider: prom_adapter.PrometheusMetrics, query: str) -> tuple[ports.Sample, ...]:
    return asyncio.run(provider.instant(query))


def by(samples: tuple[ports.Sample, ...], label: str) -> dict[str, float]:
    return {s.labels[label]: s.value for s in samples}


def settle(
    provider: prom_adapter.PrometheusMetrics, query: str, label: str, expected: dict[str, float]
) -> dict[str, float]:
    """Poll until the per-``label`` values match ``expected`` (5 % or 0.02 absolute)."""
    last: dict[str, float] = {}

    def matches() -> bool:
        nonlocal last
        try:
            last = by(instant(provider, query), label)
        except ports.Unavailable as exc:  # e.g. the breaker waiting out its cooldown
            last = {"unavailable": str(exc)}  # type: ignore[dict-item]
            return False
        return set(last) == set(expected) and all(
            math.isclose(last[k], v, rel_tol=0.05, abs_tol=0.02) for k, v in expected.items()
        )

    try:
        wait_for(matches, timeout=60, interval=1, what=f"{query} -> {expected}")
    except BaseException:
        print("last answer:", last)
        raise
    return last


def test_rates_error_ratio_and_memory_per_revision(
    cluster: Cluster, operator_process: OperatorProcess, namespace: str, prometheus: PrometheusServer
) -> None:
    good = create_ready(cluster, namespace, service("good", "constant rps=20", 2))
    bad = create_ready(
        cluster,
        namespace,
        service("bad", "constant rps=10", 2, error_rate="0.5", memory_leak="2Mi", latency="0.8"),
    )
    assert good != bad
    provider = prom_adapter.PrometheusMetrics(prometheus.url, timeout=5)
    sel = f'namespace="{namespace}"'

    rates = settle(
        provider,
        f"sum by (revision) (rate(homeostat_sim_requests_total{{{sel}}}[10s]))",
        "revision",
        {good: 20.0, bad: 10.0},
    )
    assert rates[good] > rates[bad]

    settle(
        provider,
        f'sum by (revision) (rate(homeostat_sim_requests_total{{{sel},code=~"5.."}}[10s]))'
        f" / sum by (revision) (rate(homeostat_sim_requests_total{{{sel}}}[10s]))",
        "revision",
        {good: 0.0, bad: 0.5},
    )

    p50 = by(
        instant(
            provider,
            "histogram_quantile(0.5, sum by (revision, le) "
            f"(rate(homeostat_sim_request_duration_seconds_bucket{{{sel}}}[10s])))",
        ),
        "revision",
    )
    assert p50[good] <= 0.025  # half the requests take 20 ms
    assert 0.5 < p50[bad] <= 1.0  # 0.8 s injected: every request in the (0.5, 1] bucket

    memory = f"max by (revision) (homeostat_sim_memory_working_set_bytes{{{sel}}})"
    first = by(instant(provider, memory), "revision")
    time.sleep(5)
    second = by(instant(provider, memory), "revision")
    assert second[good] == first[good] == 50 * MI
    assert second[bad] - first[bad] >= 6 * MI  # 2 MiB/s for ~5 s, give or take a scrape
    slope = by(
        instant(provider, f"max by (revision) (deriv(homeostat_sim_memory_working_set_bytes{{{sel}}}[20s]))"),
        "revision",
    )
    assert slope[good] == pytest.approx(0.0, abs=1.0)
    assert slope[bad] == pytest.approx(2 * MI, rel=0.05)

    # A range query with a step: one point per 2 s over the last 10 s, demand constant.
    now = time.time()
    series = asyncio.run(
        provider.range(f'homeostat_sim_demand_rps{{{sel},service="good"}}', now - 10, now, 2)
    )
    assert len(series) == 1
    assert [t for t, _ in series[0].points] == pytest.approx([now - 10 + 2 * i for i in range(6)], abs=1)
    assert {v for _, v in series[0].points} == {20.0}

    # No traffic at all: the ratio is NaN (0/0), which must reach the caller as NaN.
    nan = instant(provider, f'sum(rate(homeostat_sim_requests_total{{{sel},service="good"}}[10s])) * 0 / 0')
    assert len(nan) == 1 and math.isnan(nan[0].value)
    assert instant(provider, f'homeostat_sim_demand_rps{{{sel},service="nope"}}') == ()

    # Fix the faulty service: the new template is a new revision, and the per-revision
    # series follow it (the old pods' series go stale as soon as they stop being scraped).
    fixed = create_ready(cluster, namespace, service("bad", "constant rps=10", 2))
    assert fixed != bad
    settle(
        provider,
        f'sum by (revision) (rate(homeostat_sim_requests_total{{{sel},service="bad",code=~"5.."}}[5s]))'
        f' / sum by (revision) (rate(homeostat_sim_requests_total{{{sel},service="bad"}}[5s]))',
        "revision",
        {fixed: 0.0},
    )


def test_prometheus_down_is_unavailable_then_answers_again_with_its_history(
    cluster: Cluster, operator_process: OperatorProcess, namespace: str, prometheus_factory: Any
) -> None:
    revision = create_ready(cluster, namespace, service("web", "constant rps=12", 3))
    server: PrometheusServer = prometheus_factory()
    breaker = prom_adapter.CircuitBreaker(threshold=2, cooldown=1.0)
    provider = prom_adapter.PrometheusMetrics(server.url, timeout=3, breaker=breaker)
    query = f'sum by (revision) (rate(homeostat_sim_requests_total{{namespace="{namespace}"}}[5s]))'
    settle(provider, query, "revision", {revision: 12.0})
    before_stop = time.time()
    demand = f'homeostat_sim_demand_rps{{namespace="{namespace}"}}'
    scraped = asyncio.run(provider.range(demand, before_stop - 30, before_stop, 1))
    assert len(scraped) == 1 and len(scraped[0].points) >= 3

    server.stop()
    for _ in range(2):
        with pytest.raises(ports.Unavailable, match="connection refused"):
            instant(provider, query)
    with pytest.raises(ports.Unavailable, match="circuit open after 2 consecutive failures"):
        instant(provider, query)
    time.sleep(1.1)  # cooldown over: the probe finds Prometheus still down and reopens
    with pytest.raises(ports.Unavailable, match="connection refused"):
        instant(provider, query)
    assert breaker.state is prom_adapter.BreakerState.OPEN

    server.start()
    settle(provider, query, "revision", {revision: 12.0})
    assert breaker.state is prom_adapter.BreakerState.CLOSED
    # The restart kept the data directory: what was scraped before the outage is still there.
    history = asyncio.run(provider.range(demand, before_stop - 30, before_stop, 1))
    assert history == scraped


def test_backfilled_seasonal_history_is_queryable_at_once(
    prometheus_factory: Any, traffic_simulator: Any
) -> None:
    """Hours of compressed seasons, seeded before Prometheus starts, as autoscaling needs."""
    pattern = model.Seasonal(base=10, amplitude=40, period=600)
    now = time.time()
    start = now - 6 * 3600
    history = model.demand_history(
        pattern,
        "t-backfill",
        "web",
        start=start,
        end=now - 1,
        step=15,
        # The scrape's own job and instance, so live samples continue this very series.
        extra_labels={"job": "homeostat-sim", "instance": traffic_simulator.target},
    )
    server: PrometheusServer = prometheus_factory(backfill=[history])
    provider = prom_adapter.PrometheusMetrics(server.url, timeout=10)
    series = asyncio.run(
        provider.range('homeostat_sim_demand_rps{namespace="t-backfill"}', start, now - 60, 60)
    )
    assert len(series) == 1
    points = series[0].points
    assert len(points) >= 6 * 60 - 2
    # A range point is the latest sample at or before it: at most one 15 s step stale.
    slack = 40 * math.pi * 15 / 600
    for t, value in points:
        assert value == pytest.approx(pattern.demand(t), abs=slack)
    assert max(v for _, v in points) == pytest.approx(50, abs=1)
    assert min(v for _, v in points) == pytest.approx(10, abs=1)
