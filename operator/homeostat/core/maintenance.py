"""Predictive maintenance: find pods whose memory grows towards their limit, before the OOM kill.

A leaking revision is a slow failure: every pod of it climbs until the kernel kills it, and the
restart hides the leak until the next kill. Extrapolating each pod's working set tells us how
long it has left, so a pod can be restarted at a moment of our choosing (and a human told)
instead of dying under load.

The trend is Theil-Sen (the median of pairwise slopes), not least squares: it ignores a few
spikes and gaps, needs no model fit, and costs nothing at the window sizes involved. Only the
samples since the pod's last restart count (a restart frees the memory, so a steep drop starts
a new segment), and a slope counts as a trend only when most pairs of samples agree on its sign.
Everything here is pure: the caller passes the series, the limit and ``now``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from homeostat.core import fields
from homeostat.core import spec as specs
from homeostat.core.spec import SpecError

FIELD = "spec.healing.predictiveMaintenance.memory"
CAUSE = "PredictedExhaustion"
ACTION = "RestartPod"
DEFAULT_QUERY = (
    'sum by (pod) (container_memory_working_set_bytes{namespace="{{namespace}}", '
    'pod=~"{{service}}-.*", container!="", container!="POD"})'
)
# At most this many samples enter the pairwise slopes (O(n^2)); evenly thinned beyond it.
_MAX_POINTS = 150
# A sample below this fraction of the recent median means the container restarted.
_RESTART_DROP = 0.5
# Share of sample pairs that must rise for the slope to count as growth, not noise.
_MIN_AGREEMENT = 0.65
_MAX_FINDINGS = 20

FloatArray = npt.NDArray[np.float64]


class MemoryVerdict(enum.StrEnum):
    """What a pod's memory series says; CamelCase so it can be a reason."""

    EXHAUSTION_PREDICTED = "ExhaustionPredicted"  # reaches the limit within the lead time
    GROWING = "Growing"  # reaches it, but later than the lead time
    STABLE = "Stable"
    NO_LIMIT = "NoLimit"  # growing, but there is no limit to run into
    INSUFFICIENT_DATA = "InsufficientData"


@dataclasses.dataclass(frozen=True)
class MemorySpec:
    enabled: bool = False
    query: str = DEFAULT_QUERY
    lead_time: float = 1800.0
    window: float = 3600.0
    interval: float = 60.0
    min_points: int = 6
    limit: float | None = None  # bytes per pod, from the pod template

    @property
    def step(self) -> float:
        """Query resolution: about 60 samples per window, at least one a second."""
        return max(1.0, self.window / 60)


def memory_limit(template: Mapping[str, Any]) -> float | None:
    """The pod's memory limit: the sum over its containers, or None when any has none (an
    unlimited container can grow without an OOM kill at the pod's sum)."""
    containers = ((template.get("spec") or {}).get("containers")) or []
    total = 0.0
    for container in containers:
        limits = ((container or {}).get("resources") or {}).get("limits") or {}
        value = specs.quantity(limits.get("memory"))
        if value is None or value <= 0:
            return None
        total += value
    return total if containers else None


def positive_duration(raw: Mapping[str, Any], key: str, default: float, field: str = FIELD) -> float:
    """``raw[key]`` as seconds, ``default`` when absent: every predictive-maintenance duration
    is positive, and its messages have always shown a minutes example."""
    return fields.duration(raw.get(key), f"{field}.{key}", default=default, positive=True, example="like 30m")


def parse(healing: Mapping[str, Any] | None, template: Mapping[str, Any] | None) -> MemorySpec:
    """``spec.healing.predictiveMaintenance.memory`` with the template's limit; disabled when
    the block (or predictive maintenance) is absent or switched off."""
    block = (healing or {}).get("predictiveMaintenance")
    if not isinstance(block, Mapping) or block.get("enabled", True) is False:
        return MemorySpec()
    raw = block.get("memory")
    if raw is None:
        return MemorySpec()
    if not isinstance(raw, Mapping):
        raise SpecError(FIELD, "must be an object")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise SpecError(f"{FIELD}.enabled", "must be a boolean")
    query = raw.get("query", DEFAULT_QUERY)
    if not isinstance(query, str) or not query:
        raise SpecError(f"{FIELD}.query", "must be a non-empty PromQL query")
    spec = MemorySpec(
        enabled=enabled,
        query=query,
        lead_time=positive_duration(raw, "leadTime", MemorySpec.lead_time),
        window=positive_duration(raw, "window", MemorySpec.window),
        interval=positive_duration(raw, "interval", MemorySpec.interval),
        limit=memory_limit(template or {}),
    )
    return spec


# --- assessment ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MemoryFinding:
    pod: str
    verdict: MemoryVerdict
    working_set: float | None = None  # bytes, the trend's level now
    limit: float | None = None
    slope: float | None = None  # bytes per second
    seconds_to_limit: float | None = None
    exhausted_at: float | None = None
    restarts: int = 0  # restarts seen in the window (steep drops)
    points: int = 0

    @property
    def urgent(self) -> bool:
        return self.verdict is MemoryVerdict.EXHAUSTION_PREDICTED

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pod": self.pod, "verdict": self.verdict.value, "restarts": self.restarts}
        for key, value in (
            ("workingSetBytes", self.working_set),
            ("limitBytes", self.limit),
            ("bytesPerSecond", self.slope),
            ("secondsToLimit", self.seconds_to_limit),
        ):
            if value is not None:
                out[key] = round(value, 3)
        return out


def _segment(v: FloatArray) -> tuple[int, int]:
    """Start index of the samples since the last restart, and how many restarts were seen."""
    start, restarts = 0, 0
    for i in range(1, v.size):
        recent = float(np.median(v[max(start, i - 3) : i]))
        if recent > 0 and v[i] < _RESTART_DROP * recent:
            start, restarts = i, restarts + 1
    return start, restarts


def theil_sen(
    t: Sequence[float] | FloatArray, v: Sequence[float] | FloatArray
) -> tuple[float, float, float] | None:
    """Median pairwise slope, the level at the last time, and the share of rising pairs.

    None when fewer than two distinct times exist. The level is the median of the samples
    moved along the slope to the last time, as robust as the slope itself.
    """
    tt, vv = np.asarray(t, dtype=np.float64), np.asarray(v, dtype=np.float64)
    if tt.size > _MAX_POINTS:
        keep = np.unique(np.linspace(0, tt.size - 1, _MAX_POINTS).round().astype(np.int64))
        tt, vv = tt[keep], vv[keep]
    i, j = np.triu_indices(tt.size, k=1)
    dt = tt[j] - tt[i]
    ok = dt > 0
    if not ok.any():
        return None
    slopes = (vv[j] - vv[i])[ok] / dt[ok]
    slope = float(np.median(slopes))
    level = float(np.median(vv + slope * (tt[-1] - tt)))
    rising = float(np.mean(slopes > 0))
    return slope, level, rising


def assess(pod: str, points: Sequence[tuple[float, float]], spec: MemorySpec, *, now: float) -> MemoryFinding:
    """One pod's verdict from its ``(unix seconds, bytes)`` samples. Never raises on bad data."""
    arr = np.asarray([p for p in points if len(p) == 2], dtype=np.float64).reshape(-1, 2)
    arr = arr[np.isfinite(arr).all(axis=1) & (arr[:, 0] <= now) & (arr[:, 0] >= now - spec.window)]
    arr = arr[np.argsort(arr[:, 0], kind="stable")]
    t, v = arr[:, 0], arr[:, 1]
    base = MemoryFinding(pod, MemoryVerdict.INSUFFICIENT_DATA, limit=spec.limit, points=int(t.size))
    if t.size == 0:
        return base
    start, restarts = _segment(v)
    t, v = t[start:], v[start:]
    base = dataclasses.replace(base, restarts=restarts, points=int(t.size), working_set=float(v[-1]))
    # Stale data (the pod is gone, or the metric stopped) says nothing about now.
    spacing = float(np.median(np.diff(t))) if t.size > 1 else math.inf
    if t.size < spec.min_points or now - t[-1] > max(3 * spacing, spec.interval * 2):
        return base
    fitted = theil_sen(t, v)
    if fitted is None:
        return base
    slope, level, rising = fitted
    level += slope * (now - t[-1])
    found = dataclasses.replace(base, working_set=level, slope=slope)
    if slope <= 0 or rising < _MIN_AGREEMENT:
        return dataclasses.replace(found, verdict=MemoryVerdict.STABLE)
    if spec.limit is None:
        return dataclasses.replace(found, verdict=MemoryVerdict.NO_LIMIT)
    seconds = max(0.0, (spec.limit - level) / slope)
    verdict = MemoryVerdict.EXHAUSTION_PREDICTED if seconds <= spec.lead_time else MemoryVerdict.GROWING
    return dataclasses.replace(found, verdict=verdict, seconds_to_limit=seconds, exhausted_at=now + seconds)


def assess_all(
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]], spec: MemorySpec, *, now: float
) -> tuple[MemoryFinding, ...]:
    """Every pod's finding, the most urgent first (soonest exhaustion, then growth, then name)."""
    findings = [assess(pod, points, spec, now=now) for pod, points in series if pod]
    order = {
        MemoryVerdict.EXHAUSTION_PREDICTED: 0,
        MemoryVerdict.GROWING: 1,
        MemoryVerdict.NO_LIMIT: 2,
        MemoryVerdict.INSUFFICIENT_DATA: 3,
        MemoryVerdict.STABLE: 4,
    }
    findings.sort(key=lambda f: (order[f.verdict], f.seconds_to_limit or math.inf, f.pod))
    return tuple(findings)


# --- remediation requests --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MemoryRequest:
    """A remediation request for the healing loop; ``key`` is stable per pod and cause."""

    pod: str
    requested_at: float
    exhausted_at: float
    message: str
    cause: str = CAUSE
    action: str = ACTION

    @property
    def key(self) -> str:
        return f"{self.pod}/{self.cause}"

    def to_dict(self, rfc3339: Any) -> dict[str, Any]:
        return {
            "key": self.key,
            "pod": self.pod,
            "cause": self.cause,
            "action": self.action,
            "requestedAt": rfc3339(self.requested_at),
            "predictedExhaustionAt": rfc3339(self.exhausted_at),
            "message": self.message,
        }


def describe(finding: MemoryFinding) -> str:
    """One line for an Event and a request: the pod, the time left and the limit."""
    limit = "no limit" if finding.limit is None else f"limit {_bytes(finding.limit)}"
    left = (
        "" if finding.seconds_to_limit is None else f"; predicted OOM in {_seconds(finding.seconds_to_limit)}"
    )
    rate = "" if finding.slope is None else f", growing {_bytes(finding.slope * 60)}/min"
    working = "" if finding.working_set is None else f"working set {_bytes(finding.working_set)}"
    return f"pod {finding.pod}: {working}{rate}, {limit}{left}"


def requests(
    findings: Sequence[MemoryFinding], previous: Mapping[str, float], *, now: float
) -> tuple[tuple[MemoryRequest, ...], tuple[MemoryRequest, ...]]:
    """The requests to record (one per pod predicted to run out within the lead time) and the
    ones that are new, which deserve an Event. ``previous`` maps recorded keys to the time they
    were first requested, which is kept.

    Level-based: a request lasts as long as its finding does, so a restarted (renamed) pod's
    request disappears by itself.
    """
    wanted = []
    for f in findings:
        if not f.urgent:
            continue
        exhausted = f.exhausted_at if f.exhausted_at is not None else now
        request = MemoryRequest(f.pod, now, exhausted, describe(f))
        wanted.append(dataclasses.replace(request, requested_at=previous.get(request.key, now)))
    return tuple(wanted), tuple(r for r in wanted if r.key not in previous)


def recorded(stored: Any, resource: str = "memory") -> dict[str, float]:
    """The ``previous`` of ``requests`` (and of ``trends.requests``): one check's requests in
    ``status.maintenance.requests`` by key, with when each was first made. Absent is none;
    anything unreadable is a ``StorageError`` (the rule in ``core/fields.py``): read as new,
    a request would be announced again with a fresh time."""
    if stored is None:
        return {}
    if not isinstance(stored, list):
        raise fields.StorageError("maintenance.requests must be a list")
    known: dict[str, float] = {}
    for i, item in enumerate(stored):
        where = f"maintenance.requests[{i}]"
        if not isinstance(item, Mapping):
            raise fields.StorageError(f"{where} must be an object")
        try:
            if (fields.stored_str(item, "resource") or "memory") != resource:
                continue
            key, at = fields.stored_str(item, "key"), fields.stored_rfc3339(item, "requestedAt")
        except fields.StorageError as exc:
            raise fields.StorageError(f"{where}.{exc}") from None
        if key is None or at is None:
            raise fields.StorageError(f"{where} needs a key and a requestedAt")
        known[key] = at
    return known


def report(findings: Sequence[MemoryFinding]) -> list[dict[str, Any]]:
    """The findings worth a line in status: anything not stable, most urgent first, bounded."""
    return [f.to_dict() for f in findings if f.verdict is not MemoryVerdict.STABLE][:_MAX_FINDINGS]


def _bytes(value: float) -> str:
    for unit, size in (("Gi", 2.0**30), ("Mi", 2.0**20), ("Ki", 2.0**10)):
        if abs(value) >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}B"


def _seconds(value: float) -> str:
    if value >= 3600:
        return f"{value / 3600:.1f}h"
    if value >= 60:
        return f"{value / 60:.1f}m"
    return f"{value:.0f}s"
