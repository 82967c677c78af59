"""Replica decisions: HorizontalPodAutoscaler semantics, plus capacity ahead of a forecast.

The reactive part is the HPA algorithm (ratio to target with a tolerance, stabilisation windows
over past recommendations, Pods/Percent rate policies), so people who know the HPA can predict
it. The predictive part provisions for the highest upper-quantile forecast over the time a new
pod needs to become useful (startup delay plus one interval) and, as Crane and AWS do, only
ever adds capacity on top of the reactive answer unless ``allowForecastScaleIn`` says
otherwise. Whenever the forecast is missing, too young or scores worse than the bound on its
backtest, the decision is the reactive one and says why; when the metric itself is missing,
replicas are held: dropping to the minimum because Prometheus is down would turn a monitoring
outage into a service outage. Preview computes what Predictive would apply and applies nothing.

Everything the decision depends on over time (past recommendations and scale events) is in the
frozen ``ScalingState`` that the caller persists and passes back.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from typing import Any, TypeVar

from homeostat.core import fields
from homeostat.core import forecast as fc
from homeostat.core.spec import Replicas, SpecError

FIELD = "spec.autoscaling"
_E = TypeVar("_E", bound=enum.StrEnum)


class ScalingMode(enum.StrEnum):
    OFF = "Off"
    REACTIVE = "Reactive"
    PREDICTIVE = "Predictive"
    PREVIEW = "Preview"


class PolicyType(enum.StrEnum):
    PODS = "Pods"
    PERCENT = "Percent"


class SelectPolicy(enum.StrEnum):
    MAX = "Max"
    MIN = "Min"
    DISABLED = "Disabled"


class ScalingReason(enum.StrEnum):
    """Why the decision is what it is; CamelCase so it can be a condition reason."""

    OFF = "AutoscalingOff"
    METRIC_UNAVAILABLE = "MetricUnavailable"
    OUT_OF_BOUNDS = "OutOfBounds"
    REACTIVE = "Reactive"
    PREDICTIVE = "Predictive"
    PREVIEW = "Preview"
    FORECAST_MISSING = "ForecastMissing"
    HISTORY_TOO_SHORT = "HistoryTooShort"
    FORECAST_UNRELIABLE = "ForecastUnreliable"


class Limit(enum.StrEnum):
    """What held the replica count back from the recommendation (the HPA's ScalingLimited)."""

    SCALE_UP_STABILIZED = "ScaleUpStabilized"
    SCALE_DOWN_STABILIZED = "ScaleDownStabilized"
    SCALE_UP_LIMIT = "ScaleUpLimit"
    SCALE_DOWN_LIMIT = "ScaleDownLimit"
    TOO_MANY_REPLICAS = "TooManyReplicas"
    TOO_FEW_REPLICAS = "TooFewReplicas"


@dataclasses.dataclass(frozen=True)
class RatePolicy:
    type: PolicyType
    value: int
    period: float


@dataclasses.dataclass(frozen=True)
class ScalingRules:
    stabilization_window: float
    policies: tuple[RatePolicy, ...]
    select: SelectPolicy = SelectPolicy.MAX


# The HorizontalPodAutoscaler's defaults, so an unset behavior block means what it means there.
DEFAULT_SCALE_UP = ScalingRules(
    0.0, (RatePolicy(PolicyType.PERCENT, 100, 15.0), RatePolicy(PolicyType.PODS, 4, 15.0))
)
DEFAULT_SCALE_DOWN = ScalingRules(300.0, (RatePolicy(PolicyType.PERCENT, 100, 15.0),))


@dataclasses.dataclass(frozen=True)
class Behavior:
    scale_up: ScalingRules = DEFAULT_SCALE_UP
    scale_down: ScalingRules = DEFAULT_SCALE_DOWN


@dataclasses.dataclass(frozen=True)
class AutoscalingSpec:
    mode: ScalingMode = ScalingMode.OFF
    query: str = ""
    target_per_replica: float = 1.0
    forecast: fc.ForecastConfig = dataclasses.field(default_factory=fc.ForecastConfig)
    startup_delay: float = 60.0
    interval: float = 30.0
    tolerance: float = 0.1
    allow_forecast_scale_in: bool = False
    behavior: Behavior = Behavior()
    # Backtest MASE above this and the forecast is not trusted. It is scaled by the in-sample
    # seasonal-naive error, so 1 means "no better than copying yesterday".
    max_mase: float = 1.0
    # ...unless the backtest error is small in absolute terms: on a nearly perfectly seasonal
    # load the seasonal-naive error MASE divides by is close to zero, and any model "loses" to
    # it by a large factor while missing by a percent or two.
    max_smape: float = 5.0

    @property
    def horizon(self) -> float:
        """How far ahead capacity matters: a pod asked for now serves from startup delay on,
        and the next chance to correct it is one interval away."""
        return self.startup_delay + self.interval


# --- parsing -----------------------------------------------------------------------------------


def _enum(kind: type[_E], value: Any, field: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise SpecError(field, f"must be one of {allowed}, got {value!r}") from None


def _rules(raw: Any, field: str, default: ScalingRules) -> ScalingRules:
    rules = fields.mapping(raw, field, optional=True)
    window = fields.duration(
        rules.get("stabilizationWindow"), f"{field}.stabilizationWindow", default=default.stabilization_window
    )
    select = _enum(SelectPolicy, rules.get("selectPolicy", "Max"), f"{field}.selectPolicy")
    raw_policies = rules.get("policies")
    if raw_policies is None or raw_policies == []:
        return ScalingRules(window, default.policies, select)
    if not isinstance(raw_policies, list):
        raise SpecError(f"{field}.policies", "must be a list")
    policies = []
    for i, item in enumerate(raw_policies):
        where = f"{field}.policies[{i}]"
        policy = fields.mapping(item, where, optional=True)
        value = policy.get("value")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SpecError(f"{where}.value", f"must be an integer of at least 1, got {value!r}")
        if "period" not in policy:
            raise SpecError(f"{where}.period", "is required")
        policies.append(
            RatePolicy(
                _enum(PolicyType, policy.get("type"), f"{where}.type"),
                value,
                fields.duration(policy.get("period"), f"{where}.period", default=0.0, positive=True),
            )
        )
    return ScalingRules(window, tuple(policies), select)


def parse(raw: Mapping[str, Any] | None) -> AutoscalingSpec:
    """Turn ``spec.autoscaling`` into an ``AutoscalingSpec`` or raise ``SpecError``."""
    auto = fields.mapping(raw, FIELD, optional=True)
    mode = _enum(ScalingMode, auto.get("mode", "Off"), f"{FIELD}.mode")
    metric = fields.mapping(auto.get("metric"), f"{FIELD}.metric", optional=True)
    query, target = "", 1.0
    if mode is not ScalingMode.OFF or metric:
        query = metric.get("query", "")
        if not isinstance(query, str) or not query:
            raise SpecError(f"{FIELD}.metric.query", f"is required when mode is {mode.value}")
        target = fields.number(metric.get("targetPerReplica"), f"{FIELD}.metric.targetPerReplica", low=0.0)
        if target <= 0:
            raise SpecError(f"{FIELD}.metric.targetPerReplica", "must be greater than 0")
    fraw = fields.mapping(auto.get("forecast"), f"{FIELD}.forecast", optional=True)
    defaults = fc.ForecastConfig()
    seasonality = _enum(fc.Seasonality, fraw.get("seasonality", "Auto"), f"{FIELD}.forecast.seasonality")
    step = fields.duration(fraw.get("step"), f"{FIELD}.forecast.step", default=defaults.step, positive=True)
    candidates = defaults.candidate_periods
    if fraw.get("period") is not None:
        # A load with a season other than a day or a week (a batch cycle, a shift pattern, a
        # compressed-time test) names it; Auto then checks that one candidate instead.
        if seasonality is not fc.Seasonality.AUTO:
            raise SpecError(f"{FIELD}.forecast.period", "may only be set when seasonality is Auto")
        period = fields.duration(fraw.get("period"), f"{FIELD}.forecast.period", default=0.0, positive=True)
        if period < 2 * step:
            raise SpecError(f"{FIELD}.forecast.period", f"must be at least two steps ({2 * step:g}s)")
        candidates = (period,)
    forecast = fc.ForecastConfig(
        method=_enum(fc.Method, fraw.get("method", "HoltWinters"), f"{FIELD}.forecast.method"),
        seasonality=seasonality,
        step=step,
        history=fields.duration(
            fraw.get("history"), f"{FIELD}.forecast.history", default=defaults.history, positive=True
        ),
        quantile=fields.number(fraw.get("quantile", 0.9), f"{FIELD}.forecast.quantile", 0.5, 0.999),
        refit_interval=fields.duration(
            fraw.get("refitInterval"),
            f"{FIELD}.forecast.refitInterval",
            default=defaults.refit_interval,
            positive=True,
        ),
        candidate_periods=candidates,
        # Gaps are judged in bins, so the tolerated gap scales with the step (6 bins at 5m).
        max_gap=6 * step,
    )
    if forecast.method in (fc.Method.NAIVE, fc.Method.NONE):
        raise SpecError(f"{FIELD}.forecast.method", "must be one of HoltWinters, SeasonalNaive")
    allow = auto.get("allowForecastScaleIn", False)
    if not isinstance(allow, bool):
        raise SpecError(f"{FIELD}.allowForecastScaleIn", "must be a boolean")
    behavior = fields.mapping(auto.get("behavior"), f"{FIELD}.behavior", optional=True)
    return AutoscalingSpec(
        mode=mode,
        query=query,
        target_per_replica=target,
        forecast=forecast,
        startup_delay=fields.duration(auto.get("startupDelay"), f"{FIELD}.startupDelay", default=60.0),
        interval=fields.duration(auto.get("interval"), f"{FIELD}.interval", default=30.0, positive=True),
        tolerance=fields.number(auto.get("tolerance", 0.1), f"{FIELD}.tolerance", 0.0, 1.0),
        allow_forecast_scale_in=allow,
        behavior=Behavior(
            _rules(behavior.get("scaleUp"), f"{FIELD}.behavior.scaleUp", DEFAULT_SCALE_UP),
            _rules(behavior.get("scaleDown"), f"{FIELD}.behavior.scaleDown", DEFAULT_SCALE_DOWN),
        ),
    )


# --- state and decision ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ScalingState:
    """Unstabilised recommendations and applied changes, each with its time (seconds)."""

    recommendations: tuple[tuple[float, int], ...] = ()
    events: tuple[tuple[float, int], ...] = ()  # +n scaled up by n, -n scaled down by n

    def to_dict(self) -> dict[str, Any]:
        return {
            "recommendations": [list(r) for r in self.recommendations],
            "events": [list(e) for e in self.events],
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> ScalingState:
        """The persisted state: absent or empty is a fresh start, anything unreadable a
        ``StorageError`` (the rule in ``core/fields.py``). Starting afresh instead would forget
        the stabilisation window and the rate-limit events, and could scale in at once."""
        if not raw:
            return cls()
        if not isinstance(raw, Mapping):
            raise fields.StorageError("autoscaling.scaling must be an object")
        return cls(_pairs(raw, "recommendations"), _pairs(raw, "events"))


def _pairs(raw: Mapping[str, Any], key: str) -> tuple[tuple[float, int], ...]:
    """``[[seconds, count], ...]``; counts are signed (an event of -2 scaled down by two)."""
    value = raw.get(key) or []
    if not isinstance(value, list):
        raise fields.StorageError(f"autoscaling.scaling.{key} must be a list")
    pairs = []
    for i, item in enumerate(value):
        if not (isinstance(item, list) and len(item) == 2):
            raise fields.StorageError(f"autoscaling.scaling.{key}[{i}] must be a [seconds, count] pair")
        at, count = item
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            raise fields.StorageError(f"autoscaling.scaling.{key}[{i}][0] must be a number of seconds")
        if (
            isinstance(count, bool)
            or not isinstance(count, int | float)
            or not math.isfinite(count)
            or count != int(count)
        ):
            raise fields.StorageError(f"autoscaling.scaling.{key}[{i}][1] must be an integer")
        pairs.append((float(at), int(count)))
    return tuple(pairs)


@dataclasses.dataclass(frozen=True)
class ForecastSummary:
    """What ``status.forecast`` reports."""

    method: str
    horizon: float
    mode: ScalingMode
    predicted_peak: float | None = None
    predicted_peak_at: float | None = None
    mase: float | None = None
    smape: float | None = None
    last_fit_time: float | None = None
    fallback: str | None = None


@dataclasses.dataclass(frozen=True)
class ScalingDecision:
    desired: int  # the replica count to apply
    current: int
    mode: ScalingMode  # in effect: Reactive when a Predictive or Preview forecast was not used
    reason: ScalingReason
    message: str = ""
    reactive: int | None = None
    predictive: int | None = None
    recommendation: int | None = None  # before stabilisation, rate limits and bounds
    limit: Limit | None = None
    preview: int | None = None  # what Predictive would have applied, in Preview mode (which applies nothing)
    forecast: ForecastSummary | None = None

    @property
    def changed(self) -> bool:
        return self.desired != self.current


def reactive_replicas(current: int, metric: float, target: float, tolerance: float) -> int:
    """The HPA rule on a total-load metric: ceil(current * (metric / current) / target), held
    at ``current`` while the usage ratio is within the tolerance of 1."""
    if current <= 0:
        return math.ceil(metric / target)
    ratio = metric / (current * target)
    if abs(ratio - 1.0) <= tolerance:
        return current
    return math.ceil(ratio * current)


def decide(
    spec: AutoscalingSpec,
    *,
    current: int,
    bounds: Replicas,
    metric: float | None,
    forecast: fc.Forecast | None,
    state: ScalingState,
    now: float,
) -> tuple[ScalingDecision, ScalingState]:
    """The replica count to apply now and the state to persist for the next call."""
    low, high = bounds.min, bounds.max
    if spec.mode is ScalingMode.OFF:
        return ScalingDecision(current, current, ScalingMode.OFF, ScalingReason.OFF), state
    if current > high or current < low:
        desired = min(high, max(low, current))
        message = f"{current} replicas outside [{low}, {high}]"
        if spec.mode is ScalingMode.PREVIEW:
            message = f"{message}; Preview would set {desired}, nothing applied"
            return ScalingDecision(
                current, current, spec.mode, ScalingReason.OUT_OF_BOUNDS, message, preview=desired
            ), state
        return ScalingDecision(
            desired, current, spec.mode, ScalingReason.OUT_OF_BOUNDS, message
        ), _record_event(state, now, desired - current, spec.behavior)
    if metric is None or not math.isfinite(metric) or metric < 0:
        message = f"holding {current} replicas: the load metric is unavailable ({metric!r})"
        return ScalingDecision(current, current, spec.mode, ScalingReason.METRIC_UNAVAILABLE, message), state

    reactive = reactive_replicas(current, metric, spec.target_per_replica, spec.tolerance)
    predictive: int | None = None
    fallback: ScalingReason | None = None
    detail = ""
    peak: tuple[float, float] | None = None
    wants_forecast = spec.mode in (ScalingMode.PREDICTIVE, ScalingMode.PREVIEW)
    if wants_forecast:
        fallback, detail = _untrusted(spec, forecast)
        if fallback is None and forecast is not None:
            peak = forecast.peak(now, now + spec.horizon)
            if peak is not None:
                predictive = math.ceil(peak[0] / spec.target_per_replica)
            else:
                detail = "the horizon lies within the observed data"
    combined = reactive
    if predictive is not None:
        combined = predictive if spec.allow_forecast_scale_in else max(reactive, predictive)

    # Preview computes exactly what Predictive would apply (falling back to reactive the same
    # way) and applies nothing: people switch it on to watch a forecast before trusting it.
    acting = reactive if spec.mode is ScalingMode.REACTIVE else combined
    desired, limit = _normalize(
        spec.behavior, state, current=current, wanted=acting, low=low, high=high, now=now
    )
    preview = None
    if spec.mode is ScalingMode.PREVIEW:
        preview, desired = desired, current

    if spec.mode is ScalingMode.PREVIEW:
        mode, reason = ScalingMode.PREVIEW, fallback or ScalingReason.PREVIEW
    elif fallback is not None:
        mode, reason = ScalingMode.REACTIVE, fallback
    elif spec.mode is ScalingMode.PREDICTIVE:
        mode = ScalingMode.PREDICTIVE
        reason = (
            ScalingReason.PREDICTIVE
            if predictive is not None and combined != reactive
            else ScalingReason.REACTIVE
        )
    else:
        mode, reason = ScalingMode.REACTIVE, ScalingReason.REACTIVE
    message = _message(
        metric,
        spec,
        reactive=reactive,
        predictive=predictive,
        desired=desired if preview is None else preview,
        current=current,
        detail=detail,
    )
    if preview is not None:
        message = f"{message}; Preview: nothing applied"
    summary = None
    if wants_forecast:
        summary = _summary(spec, forecast, mode=mode, peak=peak, fallback=fallback, detail=detail)
    # In Preview the recommendations are kept (so the stabilisation windows of the preview are
    # those Predictive would have), and no scale event is recorded since none happened.
    new_state = _record_recommendation(state, now, acting, spec.behavior)
    new_state = _record_event(new_state, now, desired - current, spec.behavior)
    decision = ScalingDecision(
        desired=desired,
        current=current,
        mode=mode,
        reason=reason,
        message=message,
        reactive=reactive,
        predictive=predictive,
        recommendation=acting,
        limit=limit,
        preview=preview,
        forecast=summary,
    )
    return decision, new_state


def _untrusted(spec: AutoscalingSpec, forecast: fc.Forecast | None) -> tuple[ScalingReason | None, str]:
    if forecast is None or not forecast.available:
        why = "no forecast" if forecast is None else f"{forecast.fallback}: {forecast.message}"
        return ScalingReason.FORECAST_MISSING, why
    if forecast.fallback is fc.Fallback.TOO_SHORT:
        return ScalingReason.HISTORY_TOO_SHORT, forecast.message
    if forecast.method is fc.Method.NAIVE:
        # A naive forecast repeats the current load, which the reactive part already follows.
        return ScalingReason.FORECAST_UNRELIABLE, f"{forecast.fallback}: {forecast.message}"
    accurate = forecast.smape is not None and forecast.smape <= spec.max_smape
    if accurate:
        return None, ""
    if forecast.mase is None:
        return ScalingReason.FORECAST_UNRELIABLE, "no backtest yet"
    if forecast.mase > spec.max_mase:
        smape = (
            "" if forecast.smape is None else f" and sMAPE {forecast.smape:.1f}% above {spec.max_smape:g}%"
        )
        return (
            ScalingReason.FORECAST_UNRELIABLE,
            f"backtest MASE {forecast.mase:.2f} above {spec.max_mase:g}{smape}",
        )
    return None, ""


def _normalize(
    behavior: Behavior, state: ScalingState, *, current: int, wanted: int, low: int, high: int, now: float
) -> tuple[int, Limit | None]:
    """Stabilise ``wanted`` over the windows, then apply the rate policies and the bounds."""
    up_cutoff = now - behavior.scale_up.stabilization_window
    down_cutoff = now - behavior.scale_down.stabilization_window
    up_floor, down_ceiling = wanted, wanted
    for when, value in state.recommendations:
        if when > up_cutoff:
            up_floor = min(up_floor, value)
        if when > down_cutoff:
            down_ceiling = max(down_ceiling, value)
    stabilized = min(max(current, up_floor), down_ceiling)
    limit: Limit | None = None
    if wanted > current and stabilized < wanted:
        limit = Limit.SCALE_UP_STABILIZED
    elif wanted < current and stabilized > wanted:
        limit = Limit.SCALE_DOWN_STABILIZED

    desired = stabilized
    if stabilized > current:
        ceiling = max(current, _scale_up_limit(current, state, behavior.scale_up, now))
        if stabilized > min(high, ceiling):
            desired = min(high, ceiling)
            limit = Limit.TOO_MANY_REPLICAS if high <= ceiling else Limit.SCALE_UP_LIMIT
    elif stabilized < current:
        floor = min(current, _scale_down_limit(current, state, behavior.scale_down, now))
        if stabilized < max(low, floor):
            desired = max(low, floor)
            limit = Limit.TOO_FEW_REPLICAS if low >= floor else Limit.SCALE_DOWN_LIMIT
    return min(high, max(low, desired)), limit


def _changed_in(state: ScalingState, period: float, now: float) -> tuple[int, int]:
    added = sum(c for t, c in state.events if c > 0 and t > now - period)
    removed = -sum(c for t, c in state.events if c < 0 and t > now - period)
    return added, removed


def _scale_up_limit(current: int, state: ScalingState, rules: ScalingRules, now: float) -> int:
    if rules.select is SelectPolicy.DISABLED or not rules.policies:
        return current
    proposals = []
    for policy in rules.policies:
        added, removed = _changed_in(state, policy.period, now)
        start = current - added + removed
        if policy.type is PolicyType.PODS:
            proposals.append(start + policy.value)
        else:
            # Rounded up, or a small deployment could never grow by a percentage.
            proposals.append(math.ceil(start * (1 + policy.value / 100)))
    return min(proposals) if rules.select is SelectPolicy.MIN else max(proposals)


def _scale_down_limit(current: int, state: ScalingState, rules: ScalingRules, now: float) -> int:
    if rules.select is SelectPolicy.DISABLED or not rules.policies:
        return current
    proposals = []
    for policy in rules.policies:
        added, removed = _changed_in(state, policy.period, now)
        start = current - added + removed
        if policy.type is PolicyType.PODS:
            proposals.append(start - policy.value)
        else:
            proposals.append(math.floor(start * (1 - policy.value / 100)))
    # For scaling down the largest change is the lowest count, so Max picks the minimum.
    return max(proposals) if rules.select is SelectPolicy.MIN else min(proposals)


def _record_recommendation(state: ScalingState, now: float, value: int, behavior: Behavior) -> ScalingState:
    keep = max(behavior.scale_up.stabilization_window, behavior.scale_down.stabilization_window)
    kept = tuple(r for r in state.recommendations if r[0] > now - keep and r[0] <= now)
    return dataclasses.replace(state, recommendations=(*kept, (now, value)))


def _record_event(state: ScalingState, now: float, change: int, behavior: Behavior) -> ScalingState:
    periods = [p.period for p in (*behavior.scale_up.policies, *behavior.scale_down.policies)]
    keep = max(periods, default=0.0)
    kept = tuple(e for e in state.events if e[0] > now - keep and e[0] <= now)
    if change:
        kept = (*kept, (now, change))
    return dataclasses.replace(state, events=kept)


def _message(
    metric: float,
    spec: AutoscalingSpec,
    *,
    reactive: int,
    predictive: int | None,
    desired: int,
    current: int,
    detail: str,
) -> str:
    parts = [f"load {metric:.6g} at {spec.target_per_replica:g} per replica: reactive {reactive}"]
    if predictive is not None:
        parts.append(f"predictive {predictive}")
    parts.append(f"{current} -> {desired}")
    if detail:
        parts.append(detail)
    return "; ".join(parts)


def _summary(
    spec: AutoscalingSpec,
    forecast: fc.Forecast | None,
    *,
    mode: ScalingMode,
    peak: tuple[float, float] | None,
    fallback: ScalingReason | None,
    detail: str,
) -> ForecastSummary:
    fell_back = f"{fallback.value}: {detail}" if fallback is not None else None
    if forecast is None:
        return ForecastSummary("None", spec.horizon, mode, fallback=fell_back)
    return ForecastSummary(
        method=forecast.method.value,
        horizon=spec.horizon,
        mode=mode,
        predicted_peak=None if peak is None else peak[0],
        predicted_peak_at=None if peak is None else peak[1],
        mase=forecast.mase,
        smape=forecast.smape,
        last_fit_time=forecast.fitted_at,
        fallback=fell_back,
    )


# --- reporting -----------------------------------------------------------------------------------


def summary_status(summary: ForecastSummary) -> dict[str, Any]:
    """``status.forecast`` in the CRD's shape; absent values are left out, not written as null."""
    status: dict[str, Any] = {
        "method": summary.method,
        "horizon": fields.duration_text(summary.horizon),
        "mode": summary.mode.value,
    }
    if summary.predicted_peak is not None:
        status["predictedPeak"] = round(summary.predicted_peak, 6)
    if summary.predicted_peak_at is not None:
        status["predictedPeakAt"] = fields.rfc3339(summary.predicted_peak_at)
    if summary.mase is not None:
        status["mase"] = round(summary.mase, 4)
    if summary.smape is not None:
        status["smape"] = round(summary.smape, 4)
    if summary.last_fit_time is not None:
        status["lastFitTime"] = fields.rfc3339(summary.last_fit_time)
    if summary.fallback is not None:
        status["fallback"] = summary.fallback[:1024]
    return status


def evaluation_status(
    decision: ScalingDecision,
    state: ScalingState,
    *,
    current: int,
    metric: float | None,
    model: fc.ModelState | None,
    now: float,
) -> dict[str, Any]:
    """What one evaluation leaves in the service's status: ``status.autoscaling`` (the decision,
    the rate-policy state and the fitted model) and ``status.forecast`` (None removes it)."""
    return {
        "autoscaling": {
            "lastEvaluated": fields.rfc3339(now),
            "mode": decision.mode.value,
            "reason": decision.reason.value,
            "current": current,
            "desired": decision.desired,
            "reactive": decision.reactive,
            "predictive": decision.predictive,
            "preview": decision.preview,
            "metric": None if metric is None else round(metric, 6),
            "scaling": state.to_dict(),
            "model": None if model is None else model.to_dict(),
        },
        "forecast": None if decision.forecast is None else summary_status(decision.forecast),
    }
