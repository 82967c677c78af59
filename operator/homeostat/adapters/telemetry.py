"""The operator's metrics through ``prometheus_client`` (``ports.NopTelemetry`` when off).

A private registry keeps the exposition to Homeostat's own series (plus the process and GC
collectors every Python exporter has), so the dashboard's queries never collide with a library's
metrics. Per-service series are removed when the service is deleted, so a long-lived operator in
a churning cluster does not grow without bound.
"""

from __future__ import annotations

import collections
import math
from typing import Any

import prometheus_client
from prometheus_client import core as prom_core

_PHASES = (
    "Initializing",
    "Progressing",
    "Paused",
    "Promoting",
    "Promoted",
    "RollingBack",
    "RolledBack",
    "Aborted",
)


class PrometheusTelemetry:
    """``ports.Telemetry`` over a private ``prometheus_client`` registry."""

    def __init__(self) -> None:
        self.registry = prom_core.CollectorRegistry()
        prometheus_client.ProcessCollector(registry=self.registry)
        prometheus_client.GCCollector(registry=self.registry)
        r = self.registry
        self._reconciles = prometheus_client.Counter(
            "homeostat_reconciles",
            "Reconciles of a ReplicatedService, by outcome.",
            ["namespace", "service", "outcome"],
            registry=r,
        )
        self._reconcile_seconds = prometheus_client.Histogram(
            "homeostat_reconcile_duration_seconds",
            "Time one reconcile took, queries and writes included.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self._phase = prometheus_client.Gauge(
            "homeostat_rollout_phase",
            "1 for the rollout's current phase.",
            ["namespace", "service", "phase"],
            registry=r,
        )
        self._weight = prometheus_client.Gauge(
            "homeostat_rollout_canary_weight_percent",
            "Share of traffic on the canary.",
            ["namespace", "service"],
            registry=r,
        )
        self._analysis = prometheus_client.Counter(
            "homeostat_analysis_runs",
            "Rollout analysis runs, by verdict.",
            ["namespace", "service", "verdict"],
            registry=r,
        )
        self._mase = prometheus_client.Gauge(
            "homeostat_forecast_mase",
            "Backtest MASE of the latest forecast.",
            ["namespace", "service"],
            registry=r,
        )
        self._smape = prometheus_client.Gauge(
            "homeostat_forecast_smape_percent",
            "Backtest sMAPE of the latest forecast.",
            ["namespace", "service"],
            registry=r,
        )
        self._peak = prometheus_client.Gauge(
            "homeostat_forecast_predicted_peak",
            "Highest load forecast over the horizon.",
            ["namespace", "service"],
            registry=r,
        )
        self._replicas = prometheus_client.Gauge(
            "homeostat_autoscaler_desired_replicas",
            "Replicas the autoscaler last asked for.",
            ["namespace", "service"],
            registry=r,
        )
        self._load = prometheus_client.Gauge(
            "homeostat_autoscaler_load",
            "The load metric as the autoscaler last read it.",
            ["namespace", "service"],
            registry=r,
        )
        self._capacity = prometheus_client.Gauge(
            "homeostat_autoscaler_capacity",
            "Load the desired replicas carry (desired x targetPerReplica).",
            ["namespace", "service"],
            registry=r,
        )
        self._scalings = prometheus_client.Counter(
            "homeostat_autoscaler_decisions",
            "Autoscaler decisions, by reason.",
            ["namespace", "service", "reason"],
            registry=r,
        )
        self._remediations = prometheus_client.Counter(
            "homeostat_remediations",
            "Remediation actions, by action and outcome.",
            ["action", "outcome"],
            registry=r,
        )
        self._approvals = prometheus_client.Counter(
            "homeostat_approvals",
            "Approval requests opened and decided, by outcome.",
            ["outcome"],
            registry=r,
        )
        self._pending = prometheus_client.Gauge(
            "homeostat_pending", "Work waiting in the operator's background queues.", ["queue"], registry=r
        )
        # Every per-service child created, so a deleted service's series can be removed.
        self._children: collections.defaultdict[tuple[str, str], set[tuple[Any, tuple[str, ...]]]] = (
            collections.defaultdict(set)
        )

    def _child(self, metric: Any, namespace: str, service: str, *rest: str) -> Any:
        labels = (namespace, service, *rest)
        self._children[(namespace, service)].add((metric, labels))
        return metric.labels(*labels)

    def reconciled(self, namespace: str, service: str, seconds: float, outcome: str) -> None:
        self._child(self._reconciles, namespace, service, outcome).inc()
        self._reconcile_seconds.observe(seconds)

    def rollout(self, namespace: str, service: str, phase: str | None, weight: int) -> None:
        for name in _PHASES:
            self._child(self._phase, namespace, service, name).set(1 if name == phase else 0)
        self._child(self._weight, namespace, service).set(weight)

    def analysis(self, namespace: str, service: str, verdict: str) -> None:
        self._child(self._analysis, namespace, service, verdict).inc()

    def forecast(
        self, namespace: str, service: str, *, mase: float | None, smape: float | None, peak: float | None
    ) -> None:
        for gauge, value in ((self._mase, mase), (self._smape, smape), (self._peak, peak)):
            self._child(gauge, namespace, service).set(math.nan if value is None else value)

    def scaled(
        self, namespace: str, service: str, replicas: int, reason: str, *, load: float | None, capacity: float
    ) -> None:
        self._child(self._replicas, namespace, service).set(replicas)
        self._child(self._load, namespace, service).set(math.nan if load is None else load)
        self._child(self._capacity, namespace, service).set(capacity)
        self._child(self._scalings, namespace, service, reason).inc()

    def remediation(self, action: str, outcome: str) -> None:
        self._remediations.labels(action, outcome).inc()

    def approval(self, outcome: str) -> None:
        self._approvals.labels(outcome).inc()

    def pending(self, queue: str, depth: int) -> None:
        self._pending.labels(queue).set(depth)

    def forget(self, namespace: str, service: str) -> None:
        for metric, labels in self._children.pop((namespace, service), set()):
            metric.remove(*labels)

    def exposition(self) -> tuple[bytes, str]:
        return prometheus_client.generate_latest(self.registry), prometheus_client.CONTENT_TYPE_LATEST
