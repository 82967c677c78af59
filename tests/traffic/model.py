"""What simulated workloads would report: demand patterns, faults, counters, text exposition.

Pods under KWOK run nothing, so tests that need workload behaviour (request rates, error
ratios, latency, memory) get it from this model. It is deterministic on purpose: errors are
exactly ``rate x requests`` and latency follows a fixed shape, so a test can predict what
Prometheus must answer. Time is always an argument (unix seconds), which also lets the same
pattern be rendered as past history for backfilling Prometheus.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence

ANNOTATION_PATTERN = "traffic.homeostat.dev/pattern"
ANNOTATION_ERROR_RATE = "traffic.homeostat.dev/error-rate"
ANNOTATION_LATENCY = "traffic.homeostat.dev/latency"
# Latency that grows with the load on the pod (seconds per request per second served), so more
# replicas serve faster: what SLO healing's scale-up is verified against.
ANNOTATION_LATENCY_PER_RPS = "traffic.homeostat.dev/latency-per-rps"
ANNOTATION_MEMORY_LEAK = "traffic.homeostat.dev/memory-leak"
ANNOTATION_MEMORY = "traffic.homeostat.dev/memory"
ANNOTATION_CAPACITY = "traffic.homeostat.dev/capacity"
# A pod's containers "restart" this often (kube_pod_container_status_restarts_total climbs).
ANNOTATION_RESTART_EVERY = "traffic.homeostat.dev/restart-every"
# On a node: its root filesystem fills by this fraction per minute (from when first seen), from
# the fraction in disk-used (default DEFAULT_DISK_USED).
ANNOTATION_DISK_FILL = "traffic.homeostat.dev/disk-fill"
ANNOTATION_DISK_USED = "traffic.homeostat.dev/disk-used"
DEFAULT_DISK_USED = 0.3
# On a node: the failure risk (0 to 1, or NaN) exported as homeostat_sim_node_failure_risk{node}
# for the operator's predictiveMaintenance.query; nodes without it export no series.
ANNOTATION_FAILURE_RISK = "traffic.homeostat.dev/failure-risk"
DISK_SIZE = 100 * 2**30

LABEL_SERVICE = "homeostat.dev/service"
LABEL_REVISION = "homeostat.dev/revision"
LABEL_TRACK = "homeostat.dev/track"

DEFAULT_RPS = 10.0
DEFAULT_MEMORY = 50 * 2**20
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Share of requests and their latency (seconds) before injected latency is added: a fixed,
# right-skewed shape, so quantiles are predictable (p50 = 20 ms, p99 within the 0.25 s bucket).
LATENCY_SHAPE = ((0.5, 0.02), (0.3, 0.04), (0.15, 0.08), (0.05, 0.2))


class PatternError(ValueError):
    """A pattern or fault annotation that cannot be read; the message says which and why."""


# --- demand ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Constant:
    rps: float = DEFAULT_RPS

    def demand(self, t: float) -> float:
        return self.rps


@dataclasses.dataclass(frozen=True)
class Seasonal:
    """``base + amplitude * (1 - cos(2 pi (t - phase) / period)) / 2``: a trough of ``base`` at
    ``t = phase`` (mod period, t in unix seconds) and a peak of ``base + amplitude`` half a
    period later, like a day squeezed into ``period`` seconds."""

    base: float
    amplitude: float
    period: float
    phase: float = 0.0

    def demand(self, t: float) -> float:
        angle = 2 * math.pi * (t - self.phase) / self.period
        return self.base + self.amplitude * (1 - math.cos(angle)) / 2


Pattern = Constant | Seasonal

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|K|M|G|T)?$")
_QUANTITY_UNITS = {
    None: 1,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}


def parse_duration(text: str) -> float:
    match = _DURATION.match(text.strip())
    if not match:
        raise PatternError(f"{text!r} is not a duration like 300s, 5m or 1h")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_quantity(text: str) -> float:
    match = _QUANTITY.match(text.strip())
    if not match:
        raise PatternError(f"{text!r} is not a quantity like 2Mi or 1500000")
    return float(match.group(1)) * _QUANTITY_UNITS[match.group(2)]


def _number(key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise PatternError(f"{key}={text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise PatternError(f"{key}={text!r} must be a finite number >= 0")
    return value


def parse_pattern(text: str | None) -> Pattern:
    """``constant rps=20`` or ``seasonal base=10 amplitude=40 period=300s phase=0s``."""
    if text is None or not text.strip():
        return Constant()
    kind, *words = text.split()
    fields: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise PatternError(f"{word!r} in pattern {text!r} is not key=value")
        fields[key] = value
    if kind == "constant":
        _only(fields, {"rps"}, text)
        return Constant(_number("rps", fields.get("rps", str(DEFAULT_RPS))))
    if kind == "seasonal":
        _only(fields, {"base", "amplitude", "period", "phase"}, text)
        if "period" not in fields:
            raise PatternError(f"pattern {text!r} needs period=, e.g. period=300s")
        period = parse_duration(fields["period"])
        if period <= 0:
            raise PatternError(f"pattern {text!r}: period must be > 0")
        return Seasonal(
            base=_number("base", fields.get("base", "0")),
            amplitude=_number("amplitude", fields.get("amplitude", "0")),
            period=period,
            phase=parse_duration(fields.get("phase", "0s")),
        )
    raise PatternError(f"unknown pattern kind {kind!r} in {text!r}; use constant or seasonal")


def _only(fields: Mapping[str, str], allowed: set[str], text: str) -> None:
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise PatternError(f"unknown key(s) {', '.join(unknown)} in pattern {text!r}")


# --- faults ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Faults:
    """Per-pod behaviour read from its annotations (the revision's pod template)."""

    error_rate: float = 0.0
    latency: float = 0.0  # seconds added to every request
    latency_per_rps: float = 0.0  # seconds added to every request per request per second served
    memory_leak: float = 0.0  # bytes per second since the pod started
    memory: float = DEFAULT_MEMORY  # baseline working set
    capacity: float | None = None  # requests per second one pod can serve; beyond it, 503s
    restart_every: float = 0.0  # seconds between container restarts; 0: never


def parse_faults(annotations: Mapping[str, str]) -> Faults:
    faults = Faults()
    if ANNOTATION_ERROR_RATE in annotations:
        rate = _number("error-rate", annotations[ANNOTATION_ERROR_RATE])
        if rate > 1:
            raise PatternError(f"error-rate={rate} must be between 0 and 1")
        faults = dataclasses.replace(faults, error_rate=rate)
    if ANNOTATION_LATENCY in annotations:
        faults = dataclasses.replace(faults, latency=parse_duration(annotations[ANNOTATION_LATENCY]))
    if ANNOTATION_LATENCY_PER_RPS in annotations:
        per_rps = parse_duration(annotations[ANNOTATION_LATENCY_PER_RPS])
        faults = dataclasses.replace(faults, latency_per_rps=per_rps)
    if ANNOTATION_MEMORY_LEAK in annotations:
        faults = dataclasses.replace(faults, memory_leak=parse_quantity(annotations[ANNOTATION_MEMORY_LEAK]))
    if ANNOTATION_MEMORY in annotations:
        faults = dataclasses.replace(faults, memory=parse_quantity(annotations[ANNOTATION_MEMORY]))
    if ANNOTATION_CAPACITY in annotations:
        capacity = _number("capacity", annotations[ANNOTATION_CAPACITY])
        faults = dataclasses.replace(faults, capacity=capacity if capacity > 0 else None)
    if ANNOTATION_RESTART_EVERY in annotations:
        every = parse_duration(annotations[ANNOTATION_RESTART_EVERY])
        if every <= 0:
            raise PatternError(f"restart-every={every} must be a positive duration")
        faults = dataclasses.replace(faults, restart_every=every)
    return faults


@dataclasses.dataclass(frozen=True)
class NodeDisk:
    """A node's root filesystem: ``used`` (a fraction) at ``since``, growing ``fill`` per minute."""

    name: str
    used: float = DEFAULT_DISK_USED
    fill: float = 0.0
    since: float = 0.0
    failure_risk: float | None = None

    def used_at(self, now: float) -> float:
        return min(1.0, self.used + self.fill * max(0.0, now - self.since) / 60)


def parse_node_disk(name: str, annotations: Mapping[str, str], now: float) -> NodeDisk:
    used = _number("disk-used", annotations.get(ANNOTATION_DISK_USED, str(DEFAULT_DISK_USED)))
    fill = _number("disk-fill", annotations.get(ANNOTATION_DISK_FILL, "0"))
    if used > 1:
        raise PatternError(f"disk-used={used} must be between 0 and 1")
    risk_text = annotations.get(ANNOTATION_FAILURE_RISK)
    risk = None
    if risk_text is not None:
        risk = math.nan if risk_text.strip().lower() == "nan" else _number("failure-risk", risk_text)
    return NodeDisk(name, used, fill, now, risk)


# --- per-pod counters ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PodInfo:
    uid: str
    namespace: str
    service: str
    revision: str
    track: str
    name: str
    started: float
    ready: bool
    faults: Faults
    container: str = "app"  # the first container's name, for per-container series


@dataclasses.dataclass
class PodCounters:
    """Monotonic counters of one pod, alive as long as the pod (keyed by uid)."""

    info: PodInfo
    ok: float = 0.0
    errors: float = 0.0
    shed: float = 0.0
    latency_sum: float = 0.0
    latency_count: float = 0.0
    buckets: list[float] = dataclasses.field(default_factory=lambda: [0.0] * len(BUCKETS))

    def serve(self, rps: float, seconds: float) -> None:
        faults = self.info.faults
        served_rps = rps if faults.capacity is None else min(rps, faults.capacity)
        served = served_rps * seconds
        self.shed += (rps - served_rps) * seconds
        self.errors += served * faults.error_rate
        self.ok += served * (1 - faults.error_rate)
        self.latency_count += served
        for share, base in LATENCY_SHAPE:
            latency = base + faults.latency + faults.latency_per_rps * served_rps
            self.latency_sum += served * share * latency
            for index, bound in enumerate(BUCKETS):
                if latency <= bound:
                    self.buckets[index] += served * share

    def memory(self, now: float) -> float:
        return self.info.faults.memory + self.info.faults.memory_leak * max(0.0, now - self.info.started)

    def restarts(self, now: float) -> int:
        every = self.info.faults.restart_every
        return int(max(0.0, now - self.info.started) // every) if every > 0 else 0


class World:
    """Services, their demand and their pods' counters; ``advance`` integrates demand over time.

    Not thread-safe: the simulator holds a lock around every call.
    """

    def __init__(self, now: float) -> None:
        self.now = now
        self.patterns: dict[tuple[str, str], Pattern] = {}
        self.pods: dict[str, PodCounters] = {}
        self.nodes: dict[str, NodeDisk] = {}

    def demand(self, namespace: str, service: str, t: float | None = None) -> float:
        pattern = self.patterns.get((namespace, service), Constant())
        return pattern.demand(self.now if t is None else t)

    def advance(self, now: float) -> None:
        """Serve the demand between the last call and ``now`` with the pods Ready meanwhile."""
        seconds = now - self.now
        if seconds <= 0:
            return
        middle = self.now + seconds / 2
        ready: dict[tuple[str, str], list[PodCounters]] = {}
        for counters in self.pods.values():
            if counters.info.ready:
                ready.setdefault((counters.info.namespace, counters.info.service), []).append(counters)
        for key, pods in ready.items():
            per_pod = self.demand(*key, t=middle) / len(pods)
            for counters in pods:
                counters.serve(per_pod, seconds)
        self.now = now

    def update(self, patterns: Mapping[tuple[str, str], Pattern], pods: Iterable[PodInfo]) -> None:
        """Replace what the cluster looks like; counters of pods that still exist carry on."""
        self.patterns = dict(patterns)
        alive: dict[str, PodCounters] = {}
        for info in pods:
            counters = self.pods.get(info.uid) or PodCounters(info)
            counters.info = info
            alive[info.uid] = counters
        self.pods = alive

    def update_nodes(self, nodes: Iterable[NodeDisk]) -> None:
        """Replace the nodes; a node whose disk settings did not change keeps filling from when
        they were first seen."""
        kept: dict[str, NodeDisk] = {}
        for node in nodes:
            old = self.nodes.get(node.name)
            same = old is not None and (old.used, old.fill) == (node.used, node.fill)
            # The risk is a level, not a trend: it changes without restarting the fill.
            kept[node.name] = (
                dataclasses.replace(old, failure_risk=node.failure_risk) if same and old is not None else node
            )
        self.nodes = kept

    def exposition(self) -> str:
        return render(self)


# --- Prometheus text exposition ----------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _value(v: float) -> str:
    return repr(float(v))


def render(world: World) -> str:
    lines: list[str] = []

    def header(name: str, kind: str, text: str) -> None:
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")

    header("homeostat_sim_demand_rps", "gauge", "Requests per second offered to the service.")
    services = sorted(world.patterns)
    for namespace, service in services:
        labels = _labels([("namespace", namespace), ("service", service)])
        lines.append(f"homeostat_sim_demand_rps{labels} {_value(world.demand(namespace, service))}")

    header("homeostat_sim_ready_pods", "gauge", "Ready pods sharing the service's demand.")
    for namespace, service in services:
        count = sum(
            1
            for c in world.pods.values()
            if c.info.ready and (c.info.namespace, c.info.service) == (namespace, service)
        )
        labels = _labels([("namespace", namespace), ("service", service)])
        lines.append(f"homeostat_sim_ready_pods{labels} {count}")

    ready = sorted(
        (c for c in world.pods.values() if c.info.ready), key=lambda c: (c.info.namespace, c.info.name)
    )

    def pod_labels(c: PodCounters) -> list[tuple[str, str]]:
        i = c.info
        return [
            ("namespace", i.namespace),
            ("service", i.service),
            ("revision", i.revision),
            ("track", i.track),
            ("pod", i.name),
        ]

    header("homeostat_sim_requests_total", "counter", "Requests answered, by HTTP status code.")
    for c in ready:
        for code, value in (("200", c.ok), ("500", c.errors), ("503", c.shed)):
            lines.append(
                f"homeostat_sim_requests_total{_labels([*pod_labels(c), ('code', code)])} {_value(value)}"
            )

    header("homeostat_sim_request_duration_seconds", "histogram", "Latency of requests served.")
    for c in ready:
        base = pod_labels(c)
        name = "homeostat_sim_request_duration_seconds"
        for bound, value in zip(BUCKETS, c.buckets, strict=True):
            lines.append(f"{name}_bucket{_labels([*base, ('le', repr(bound))])} {_value(value)}")
        lines.append(f"{name}_bucket{_labels([*base, ('le', '+Inf')])} {_value(c.latency_count)}")
        lines.append(f"{name}_sum{_labels(base)} {_value(c.latency_sum)}")
        lines.append(f"{name}_count{_labels(base)} {_value(c.latency_count)}")

    header("homeostat_sim_memory_working_set_bytes", "gauge", "Working set of the pod's container.")
    for c in ready:
        i = c.info
        labels = _labels(
            [("namespace", i.namespace), ("service", i.service), ("revision", i.revision), ("pod", i.name)]
        )
        lines.append(f"homeostat_sim_memory_working_set_bytes{labels} {_value(c.memory(world.now))}")

    # Named like kube-state-metrics and node-exporter, so the operator's default queries work.
    header("kube_pod_container_status_restarts_total", "counter", "Restarts of the pod's container.")
    for c in ready:
        i = c.info
        labels = _labels([("namespace", i.namespace), ("pod", i.name), ("container", i.container)])
        lines.append(f"kube_pod_container_status_restarts_total{labels} {c.restarts(world.now)}")
    header("node_filesystem_size_bytes", "gauge", "Size of the node's root filesystem.")
    nodes = sorted(world.nodes.values(), key=lambda n: n.name)
    for node in nodes:
        labels = _labels([("node", node.name), ("mountpoint", "/"), ("device", "/dev/root")])
        lines.append(f"node_filesystem_size_bytes{labels} {_value(DISK_SIZE)}")
    header("node_filesystem_avail_bytes", "gauge", "Space left on the node's root filesystem.")
    for node in nodes:
        labels = _labels([("node", node.name), ("mountpoint", "/"), ("device", "/dev/root")])
        avail = DISK_SIZE * (1 - node.used_at(world.now))
        lines.append(f"node_filesystem_avail_bytes{labels} {_value(avail)}")
    header("homeostat_sim_node_failure_risk", "gauge", "Predicted failure risk of the node (0 to 1).")
    for node in nodes:
        if node.failure_risk is not None:
            risk = "NaN" if math.isnan(node.failure_risk) else _value(node.failure_risk)
            lines.append(f"homeostat_sim_node_failure_risk{_labels([('node', node.name)])} {risk}")
    return "\n".join(lines) + "\n"


# --- history for backfilling -------------------------------------------------------------------


def demand_history(
    pattern: Pattern,
    namespace: str,
    service: str,
    *,
    start: float,
    end: float,
    step: float,
    extra_labels: Mapping[str, str] | None = None,
) -> str:
    """OpenMetrics text of ``homeostat_sim_demand_rps`` from ``start`` to ``end`` (unix seconds),
    one sample per ``step``, for ``promtool tsdb create-blocks-from openmetrics``. Pass the
    scrape's ``job`` and ``instance`` as ``extra_labels`` to continue the live series."""
    labels = _labels([("namespace", namespace), ("service", service), *sorted((extra_labels or {}).items())])
    lines = [
        "# HELP homeostat_sim_demand_rps Requests per second offered to the service.",
        "# TYPE homeostat_sim_demand_rps gauge",
    ]
    t = start
    while t <= end:
        lines.append(f"homeostat_sim_demand_rps{labels} {_value(pattern.demand(t))} {t:.3f}")
        t += step
    lines.append("# EOF")
    return "\n".join(lines) + "\n"
