"""Predictive maintenance beyond memory: pods whose restart counter climbs, nodes whose disk
fills, nodes a failure-risk metric says will fail.

Both are slow failures that announce themselves. A pod that restarts every few minutes is
heading for CrashLoopBackOff and its back-off delays (and, at a count the operator sets, for
being called failed); replacing it resets the counter and may land it on a healthier node. A
node whose root filesystem fills will hit the kubelet's eviction threshold and start evicting
pods on its own terms; cordoning or draining it first moves them on ours.

The same robust trend as the memory check (Theil-Sen, ``maintenance.theil_sen``) is
extrapolated to the configured limit. What differs is the shape of the series: a restart
counter only rises, in integer steps, so a drop is a reset (the pod was replaced under the same
name, or the exporter restarted) and a sample that rises and falls straight back is a glitch,
not a restart; a counter that moved fewer than twice in the window has no rate to speak of.
Disk usage is a gauge between 0 and 1 whose steep drop means a cleanup, after which only the
newer samples count. The node risk query (``predictiveMaintenance.query``) needs no trend:
someone else's model already answers "how likely is this node to fail", and a reading at or
above the threshold is the request; a reading that is missing, NaN or outside 0..1 is no
reading, never a reason to act. Everything here is pure: the caller passes the series (or the
samples), the spec and ``now``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from homeostat.core import fields
from homeostat.core import maintenance as mt
from homeostat.core.spec import SpecError

CAUSE = mt.CAUSE
DEFAULT_RESTARTS_QUERY = (
    'sum by (pod) (kube_pod_container_status_restarts_total{namespace="{{namespace}}", '
    'pod=~"{{service}}-.*"})'
)
# node-exporter has no `node` label of its own: the scrape must add one by relabelling
# (e.g. from __meta_kubernetes_pod_node_name), or the query must join node_uname_info.
DEFAULT_DISK_QUERY = (
    'max by (node) (1 - node_filesystem_avail_bytes{mountpoint="/"} '
    '/ node_filesystem_size_bytes{mountpoint="/"})'
)
# Cleanups free space in one go: usage falling this far (a fraction of the disk) below the
# recent median starts a new segment.
_DISK_CLEANUP = 0.05
# Share of sample pairs that must rise for a gauge's slope to count as growth, not noise.
_MIN_AGREEMENT = 0.65
# A counter must have risen at least this many times in its segment: one restart is no trend.
_MIN_INCREMENTS = 2
_MAX_FINDINGS = 20


class Resource(enum.StrEnum):
    MEMORY = "memory"
    RESTARTS = "restarts"
    DISK = "disk"
    RISK = "risk"  # the block's own query: a failure risk per node, no trend


# Resources whose subject is a node, not a pod.
NODE_RESOURCES = frozenset({Resource.DISK, Resource.RISK})


class PredictedNodeAction(enum.StrEnum):
    """``spec.healing.predictiveMaintenance.action``: what a predicted node failure asks for."""

    CORDON = "Cordon"
    DRAIN = "Drain"
    NOTIFY = "Notify"


# The remediation request's action (a ``policy.Action`` value; Notify has none and only reports).
NODE_REQUEST_ACTIONS = {
    PredictedNodeAction.CORDON: "CordonNode",
    PredictedNodeAction.DRAIN: "DrainNode",
    PredictedNodeAction.NOTIFY: "Notify",
}
RESTART_ACTION = mt.ACTION


@dataclasses.dataclass(frozen=True)
class TrendSpec:
    """One trend check: restart counts per pod (``limit`` restarts) or disk usage per node
    (``limit`` a used fraction)."""

    resource: Resource
    enabled: bool = False
    query: str = ""
    limit: float = 0.0
    lead_time: float = 1800.0
    window: float = 3600.0
    interval: float = 60.0
    min_points: int = 6
    node_action: PredictedNodeAction = PredictedNodeAction.NOTIFY

    @property
    def field(self) -> str:
        return f"spec.healing.predictiveMaintenance.{self.resource.value}"

    @property
    def step(self) -> float:
        """Query resolution: about 60 samples per window, at least one a second."""
        return max(1.0, self.window / 60)


RESTARTS_DEFAULTS = TrendSpec(
    Resource.RESTARTS, query=DEFAULT_RESTARTS_QUERY, limit=10, lead_time=1800.0, window=3600.0, interval=60.0
)
DISK_DEFAULTS = TrendSpec(
    Resource.DISK,
    query=DEFAULT_DISK_QUERY,
    limit=0.9,
    lead_time=6 * 3600.0,
    window=6 * 3600.0,
    interval=300.0,
)
# ``limit`` is the risk threshold; window and lead time do not apply to a reading.
RISK_DEFAULTS = TrendSpec(Resource.RISK, limit=0.8, interval=60.0)
RISK_FIELD = "spec.healing.predictiveMaintenance"


def _parse(healing: Mapping[str, Any] | None, defaults: TrendSpec) -> TrendSpec:
    block = (healing or {}).get("predictiveMaintenance")
    if not isinstance(block, Mapping) or block.get("enabled", True) is False:
        return dataclasses.replace(defaults, enabled=False)
    field = defaults.field
    raw = block.get(defaults.resource.value)
    if raw is None:
        return dataclasses.replace(defaults, enabled=False)
    if not isinstance(raw, Mapping):
        raise SpecError(field, "must be an object")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise SpecError(f"{field}.enabled", "must be a boolean")
    query = raw.get("query", defaults.query)
    if not isinstance(query, str) or not query:
        raise SpecError(f"{field}.query", "must be a non-empty PromQL query")
    limit_key = "limit" if defaults.resource is Resource.RESTARTS else "threshold"
    limit = fields.number(raw.get(limit_key, defaults.limit), f"{field}.{limit_key}")
    if defaults.resource is Resource.RESTARTS and (limit < 1 or limit != int(limit)):
        raise SpecError(f"{field}.limit", "must be a whole number of restarts, at least 1")
    if defaults.resource is Resource.DISK and not 0 < limit <= 1:
        raise SpecError(f"{field}.threshold", "must be a used fraction above 0 and at most 1")
    node_action = _node_action(block)
    return TrendSpec(
        resource=defaults.resource,
        enabled=enabled,
        query=query,
        limit=limit,
        lead_time=mt.positive_duration(raw, "leadTime", defaults.lead_time, field),
        window=mt.positive_duration(raw, "window", defaults.window, field),
        interval=mt.positive_duration(raw, "interval", defaults.interval, field),
        node_action=node_action,
    )


def _node_action(block: Mapping[str, Any]) -> PredictedNodeAction:
    action = block.get("action", PredictedNodeAction.NOTIFY.value)
    try:
        return PredictedNodeAction(action)
    except ValueError:
        choices = ", ".join(a.value for a in PredictedNodeAction)
        raise SpecError(f"{RISK_FIELD}.action", f"must be one of {choices}") from None


def parse_restarts(healing: Mapping[str, Any] | None) -> TrendSpec:
    """``spec.healing.predictiveMaintenance.restarts``; disabled when absent or switched off."""
    return _parse(healing, RESTARTS_DEFAULTS)


def parse_disk(healing: Mapping[str, Any] | None) -> TrendSpec:
    """``spec.healing.predictiveMaintenance.disk``, with the block's node ``action``."""
    return _parse(healing, DISK_DEFAULTS)


def parse_risk(healing: Mapping[str, Any] | None) -> TrendSpec:
    """The block's own ``query``, ``threshold``, ``interval`` and node ``action``; disabled
    when the block is absent or switched off, or has no query (the sub-blocks need none)."""
    block = (healing or {}).get("predictiveMaintenance")
    if not isinstance(block, Mapping) or block.get("enabled", True) is False or block.get("query") is None:
        return RISK_DEFAULTS
    query = block["query"]
    if not isinstance(query, str) or not query.strip():
        raise SpecError(f"{RISK_FIELD}.query", "must be a non-empty PromQL query")
    threshold = fields.number(block.get("threshold", RISK_DEFAULTS.limit), f"{RISK_FIELD}.threshold")
    if not 0 <= threshold <= 1:
        raise SpecError(f"{RISK_FIELD}.threshold", "must be a risk between 0 and 1")
    return dataclasses.replace(
        RISK_DEFAULTS,
        enabled=True,
        query=query,
        limit=threshold,
        interval=mt.positive_duration(block, "interval", RISK_DEFAULTS.interval, RISK_FIELD),
        node_action=_node_action(block),
    )


# --- assessment ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrendFinding:
    resource: Resource
    subject: str  # the pod (restarts) or the node (disk)
    verdict: mt.MemoryVerdict
    limit: float
    value: float | None = None  # the trend's level now
    slope: float | None = None  # per second
    seconds_to_limit: float | None = None
    exhausted_at: float | None = None
    resets: int = 0  # counter resets (restarts) or cleanups (disk) seen in the window
    points: int = 0

    @property
    def urgent(self) -> bool:
        return self.verdict is mt.MemoryVerdict.EXHAUSTION_PREDICTED

    def to_dict(self) -> dict[str, Any]:
        subject = "pod" if self.resource is Resource.RESTARTS else "node"
        out: dict[str, Any] = {
            subject: self.subject,
            "verdict": self.verdict.value,
            "limit": round(self.limit, 6),
            "resets": self.resets,
        }
        for key, value in (
            ("value", self.value),
            ("perSecond", self.slope),
            ("secondsToLimit", self.seconds_to_limit),
        ):
            if value is not None:
                out[key] = round(value, 6 if key == "perSecond" else 3)
        return out


def _clean(points: Sequence[tuple[float, float]], spec: TrendSpec, now: float) -> tuple[Any, Any]:
    arr = np.asarray([p for p in points if len(p) == 2], dtype=np.float64).reshape(-1, 2)
    arr = arr[np.isfinite(arr).all(axis=1) & (arr[:, 0] <= now) & (arr[:, 0] >= now - spec.window)]
    arr = arr[np.argsort(arr[:, 0], kind="stable")]
    return arr[:, 0], arr[:, 1]


def counter_segment(v: Sequence[float] | Any) -> tuple[list[int], int]:
    """Indices of a counter's samples since its last reset, glitches left out, and the resets.

    A drop is a reset unless it is a glitch: the sample before it stood above its own
    predecessor and the drop returns to that level (a spike up), or the next sample is back at
    or above the level before the drop (a spike down).
    """
    values = [float(x) for x in v]
    kept: list[int] = []
    resets = 0
    for i, x in enumerate(values):
        if not kept or x >= values[kept[-1]]:
            kept.append(i)
            continue
        if len(kept) >= 2 and x >= values[kept[-2]]:
            kept[-1] = i  # the previous sample was a spike up
            continue
        if i + 1 < len(values) and values[i + 1] >= values[kept[-1]]:
            continue  # this sample is a spike down
        kept, resets = [i], resets + 1
    return kept, resets


def _gauge_segment(v: Any, drop: float) -> tuple[int, int]:
    start, cleanups = 0, 0
    for i in range(1, len(v)):
        recent = float(np.median(v[max(start, i - 3) : i]))
        if v[i] < recent - drop:
            start, cleanups = i, cleanups + 1
    return start, cleanups


def _stale(t: Any, spec: TrendSpec, now: float) -> bool:
    spacing = float(np.median(np.diff(t))) if t.size > 1 else math.inf
    return bool(now - t[-1] > max(3 * spacing, spec.interval * 2))


def _extrapolate(
    base: TrendFinding, t: Any, v: Any, spec: TrendSpec, now: float, *, gauge: bool
) -> TrendFinding:
    fitted = mt.theil_sen(t, v)
    if fitted is None:
        return base
    slope, level, rising = fitted
    level += slope * (now - t[-1])
    found = dataclasses.replace(base, value=level, slope=slope)
    if slope <= 0 or (gauge and rising < _MIN_AGREEMENT):
        return dataclasses.replace(found, verdict=mt.MemoryVerdict.STABLE)
    seconds = max(0.0, (spec.limit - level) / slope)
    verdict = mt.MemoryVerdict.EXHAUSTION_PREDICTED if seconds <= spec.lead_time else mt.MemoryVerdict.GROWING
    return dataclasses.replace(found, verdict=verdict, seconds_to_limit=seconds, exhausted_at=now + seconds)


def assess(
    subject: str, points: Sequence[tuple[float, float]], spec: TrendSpec, *, now: float
) -> TrendFinding:
    """One pod's (restarts) or node's (disk) verdict from its ``(unix seconds, value)`` samples.
    Never raises on bad data."""
    t, v = _clean(points, spec, now)
    base = TrendFinding(
        spec.resource, subject, mt.MemoryVerdict.INSUFFICIENT_DATA, spec.limit, points=int(t.size)
    )
    if t.size == 0:
        return base
    if spec.resource is Resource.RESTARTS:
        kept, resets = counter_segment(v)
        t, v = t[kept], v[kept]
        increments = int(np.count_nonzero(np.diff(v) > 0))
    else:
        start, resets = _gauge_segment(v, _DISK_CLEANUP)
        t, v = t[start:], v[start:]
        increments = _MIN_INCREMENTS
    base = dataclasses.replace(base, resets=resets, points=int(t.size), value=float(v[-1]))
    if t.size < spec.min_points or _stale(t, spec, now):
        return base
    if increments < _MIN_INCREMENTS:
        # A flat counter, or one restart: nothing to extrapolate.
        return dataclasses.replace(base, verdict=mt.MemoryVerdict.STABLE, slope=0.0)
    return _extrapolate(base, t, v, spec, now, gauge=spec.resource is Resource.DISK)


_ORDER = {
    mt.MemoryVerdict.EXHAUSTION_PREDICTED: 0,
    mt.MemoryVerdict.GROWING: 1,
    mt.MemoryVerdict.NO_LIMIT: 2,
    mt.MemoryVerdict.INSUFFICIENT_DATA: 3,
    mt.MemoryVerdict.STABLE: 4,
}


def assess_all(
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]], spec: TrendSpec, *, now: float
) -> tuple[TrendFinding, ...]:
    """Every subject's finding, the most urgent first (soonest limit, then growth, then name)."""
    findings = [assess(subject, points, spec, now=now) for subject, points in series if subject]
    findings.sort(key=lambda f: (_ORDER[f.verdict], f.seconds_to_limit or math.inf, f.subject))
    return tuple(findings)


def report(findings: Sequence[TrendFinding]) -> list[dict[str, Any]]:
    """The findings worth a line in status: anything not stable, most urgent first, bounded."""
    return [f.to_dict() for f in findings if f.verdict is not mt.MemoryVerdict.STABLE][:_MAX_FINDINGS]


# --- remediation requests --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrendRequest:
    """A remediation request for the healing loop; ``key`` is stable per subject and resource."""

    resource: Resource
    subject: str
    action: str
    requested_at: float
    exhausted_at: float | None  # None for a risk reading, which predicts no time
    message: str
    cause: str = CAUSE

    @property
    def key(self) -> str:
        return f"{self.subject}/{self.cause}/{self.resource.value}"

    def to_dict(self, rfc3339: Callable[[float], str]) -> dict[str, Any]:
        out = {
            "key": self.key,
            "node" if self.resource in NODE_RESOURCES else "pod": self.subject,
            "resource": self.resource.value,
            "cause": self.cause,
            "action": self.action,
            "requestedAt": rfc3339(self.requested_at),
        }
        if self.exhausted_at is not None:
            out["predictedExhaustionAt"] = rfc3339(self.exhausted_at)
        out["message"] = self.message
        return out


def action_for(spec: TrendSpec) -> str:
    if spec.resource in NODE_RESOURCES:
        return NODE_REQUEST_ACTIONS[spec.node_action]
    return RESTART_ACTION


def describe(finding: TrendFinding) -> str:
    """One line for an Event and a request: the subject, the level, the rate and the time left."""
    left = "" if finding.seconds_to_limit is None else _seconds(finding.seconds_to_limit)
    if finding.resource is Resource.RESTARTS:
        count = "" if finding.value is None else f"{finding.value:.1f} restarts"
        rate = "" if finding.slope is None else f", rising {_rate(finding.slope, '{:.1f}')}"
        when = f"; predicted to reach the restart limit in {left}" if left else ""
        return f"pod {finding.subject}: {count}{rate}, restart limit {finding.limit:g}{when}"
    used = "" if finding.value is None else f"disk {finding.value:.1%} used"
    rate = "" if finding.slope is None else f", rising {_rate(finding.slope, '{:.1%}')}"
    when = f"; predicted to fill to the threshold in {left}" if left else ""
    return f"node {finding.subject}: {used}{rate}, threshold {finding.limit:.0%}{when}"


def requests(
    findings: Sequence[TrendFinding], previous: Mapping[str, float], spec: TrendSpec, *, now: float
) -> tuple[tuple[TrendRequest, ...], tuple[TrendRequest, ...]]:
    """The requests to record (one per subject predicted to reach the limit within the lead
    time) and the ones that are new, which deserve an Event. ``previous`` maps recorded keys to
    the time they were first requested, which is kept. Level-based, like the memory check."""
    wanted = []
    for f in findings:
        if not f.urgent:
            continue
        exhausted = f.exhausted_at if f.exhausted_at is not None else now
        request = TrendRequest(f.resource, f.subject, action_for(spec), now, exhausted, describe(f))
        wanted.append(dataclasses.replace(request, requested_at=previous.get(request.key, now)))
    return tuple(wanted), tuple(r for r in wanted if r.key not in previous)


# --- node failure risk -----------------------------------------------------------------------


class RiskVerdict(enum.StrEnum):
    AT_RISK = "AtRisk"  # at or above the threshold
    BELOW_THRESHOLD = "BelowThreshold"
    NO_DATA = "NoData"  # no series for the node, or only NaN or values outside 0..1: never acted on


_RISK_ORDER = {RiskVerdict.AT_RISK: 0, RiskVerdict.NO_DATA: 1, RiskVerdict.BELOW_THRESHOLD: 2}
# The query in a request's message is for a human to recognise, not to copy: long ones are cut.
_QUERY_IN_MESSAGE = 200


@dataclasses.dataclass(frozen=True)
class RiskReading:
    """One node's failure risk as the query answered it."""

    node: str
    verdict: RiskVerdict
    threshold: float
    risk: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node": self.node, "verdict": self.verdict.value, "limit": self.threshold}
        if self.risk is not None:
            out["value"] = round(self.risk, 6)
        return out


def assess_risk(
    samples: Iterable[tuple[str, float]], hosting: Collection[str], spec: TrendSpec
) -> tuple[RiskReading, ...]:
    """The risk of each node that hosts the service's pods, from ``(node label, value)``
    samples of an instant query; other nodes are not this service's business. A node with
    several series takes the highest usable one; one with none is ``NO_DATA``. The riskiest
    first, then the unknown, then the rest, by name."""
    usable: dict[str, list[float]] = {}
    for node, value in samples:
        if node in hosting and math.isfinite(value) and 0 <= value <= 1:
            usable.setdefault(node, []).append(value)
    readings = []
    for node in set(hosting) - {""}:
        values = usable.get(node)
        if not values:
            readings.append(RiskReading(node, RiskVerdict.NO_DATA, spec.limit))
            continue
        risk = max(values)
        verdict = RiskVerdict.AT_RISK if risk >= spec.limit else RiskVerdict.BELOW_THRESHOLD
        readings.append(RiskReading(node, verdict, spec.limit, risk))
    readings.sort(key=lambda r: (_RISK_ORDER[r.verdict], -(r.risk or 0.0), r.node))
    return tuple(readings)


def describe_risk(reading: RiskReading, query: str) -> str:
    shown = query if len(query) <= _QUERY_IN_MESSAGE else query[: _QUERY_IN_MESSAGE - 3] + "..."
    if reading.risk is None:
        return f"node {reading.node}: no usable failure risk from {shown}"
    sign = ">=" if reading.verdict is RiskVerdict.AT_RISK else "<"
    return f"node {reading.node} failure risk {reading.risk:.2f} {sign} {reading.threshold:g} from {shown}"


def risk_requests(
    readings: Sequence[RiskReading], previous: Mapping[str, float], spec: TrendSpec, query: str, *, now: float
) -> tuple[tuple[TrendRequest, ...], tuple[TrendRequest, ...]]:
    """One request per node at or above the threshold, and the new ones (for an Event);
    ``previous`` as in ``requests``. A node whose risk fell, or is unknown, has none: the
    request is cleared rather than kept on an old reading. ``query`` is the rendered query."""
    wanted = []
    for r in readings:
        if r.verdict is not RiskVerdict.AT_RISK:
            continue
        request = TrendRequest(Resource.RISK, r.node, action_for(spec), now, None, describe_risk(r, query))
        wanted.append(dataclasses.replace(request, requested_at=previous.get(request.key, now)))
    return tuple(wanted), tuple(r for r in wanted if r.key not in previous)


def risk_summary(readings: Sequence[RiskReading], spec: TrendSpec) -> tuple[str, str]:
    """The status part's ``reason`` and ``message``: NoData when a hosting node's risk is
    unknown (so it cannot be acted on), Evaluated otherwise."""
    at_risk = sum(r.verdict is RiskVerdict.AT_RISK for r in readings)
    unknown = sorted(r.node for r in readings if r.verdict is RiskVerdict.NO_DATA)
    message = (
        f"{len(readings)} node(s) hosting its pods checked, {at_risk} at or above the failure-risk "
        f"threshold {spec.limit:g}"
    )
    if not unknown:
        return "Evaluated", message
    names = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
    return "NoData", f"{message}; no usable risk (no series, NaN or outside 0..1) for {names}: not acted on"


def _rate(per_second: float, form: str) -> str:
    """Per hour, or per minute when that reads better (fast failures, compressed tests)."""
    if abs(per_second) * 3600 >= 100 or (form.endswith("%}") and abs(per_second) * 3600 >= 1):
        return form.format(per_second * 60) + "/min"
    return form.format(per_second * 3600) + "/h"


def _seconds(value: float) -> str:
    if value >= 3600:
        return f"{value / 3600:.1f}h"
    if value >= 60:
        return f"{value / 60:.1f}m"
    return f"{value:.0f}s"


# --- status.maintenance: each check's own part -------------------------------------------------

# The memory check owns these top-level keys of status.maintenance; the restart, disk and risk
# checks own status.maintenance.<resource>; each owns its entries of the shared requests list
# (by their ``resource``; entries without one are memory's, as written before there were others).
MEMORY_KEYS = ("lastEvaluated", "reason", "message", "pods", "findings")
MAX_REQUESTS = 64  # status.maintenance.requests maxItems


def _owns(request: Any, resource: Resource) -> bool:
    return isinstance(request, Mapping) and request.get("resource", Resource.MEMORY.value) == resource.value


def merge_maintenance(
    previous: Mapping[str, Any],
    resource: Resource,
    part: Mapping[str, Any] | None,
    requests: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """status.maintenance with one check's part replaced (None removes it) and, unless
    ``requests`` is None, that check's requests; the other checks' parts are kept. None when
    nothing is left, so the whole block goes."""
    merged = dict(previous)
    if resource is Resource.MEMORY:
        # Set to None, not dropped: status is merge-patched, and a missing key would stay.
        merged.update(dict.fromkeys(MEMORY_KEYS))
        merged.update(part or {})
    else:
        merged[resource.value] = None if part is None else dict(part)
    if requests is not None or part is None:
        kept = [
            r for r in previous.get("requests") or [] if isinstance(r, Mapping) and not _owns(r, resource)
        ]
        # The CRD bounds the list; past it the API server would refuse the whole patch.
        merged["requests"] = [*kept, *(requests or [])][:MAX_REQUESTS]
    live = any(v not in (None, [], {}) for v in merged.values())
    return merged if live else None


def own_part(previous: Mapping[str, Any], resource: Resource) -> dict[str, Any]:
    """One check's part of status.maintenance, as the check wrote it."""
    if resource is Resource.MEMORY:
        return {k: previous[k] for k in MEMORY_KEYS if previous.get(k) is not None}
    return dict(previous.get(resource.value) or {})
