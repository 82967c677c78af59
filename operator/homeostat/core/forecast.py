"""Load forecasting for predictive scaling: a metric history in, a forecast with a safety band out.

Predictive scaling is only worth having if it is never worse than reacting, so every step here
is defensive. Raw samples are binned onto a regular grid, gaps are filled (or, when long,
counted against the series), counter resets and outliers are neutralised, and a series that
cannot support a model (too short, constant, mostly gaps, stale) gets a naive forecast and a
reason instead of an exception. The scaler then falls back to reactive scaling on that reason.

Fitting is the expensive part (an optimised Holt-Winters fit costs a few hundred milliseconds;
re-running it with fixed parameters costs tens), so the optimised parameters are returned in a
``ModelState`` that the caller persists and passes back: between refits the model is re-run
with those parameters. Every forecast carries an honest backtest (MASE and sMAPE of one-step
predictions on the latest window, made with parameters that were not fitted on that window)
so the scaler can tell a useful model from a harmful one.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from homeostat.core.spec import SpecError

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

DAY = 86400.0
WEEK = 7 * DAY
FIELD = "spec.autoscaling.forecast"

# statsmodels' heuristic initialisation needs at least 10 points (and two seasons).
_MIN_POINTS = 10
# A longer run of 1.0 smoothing parameters or a flat scale is numerically meaningless.
_TINY = 1e-12


class Seasonality(enum.StrEnum):
    AUTO = "Auto"
    NONE = "None"
    DAILY = "Daily"
    WEEKLY = "Weekly"


class Method(enum.StrEnum):
    HOLT_WINTERS = "HoltWinters"
    SEASONAL_NAIVE = "SeasonalNaive"
    # The two below are never configured: they are what a forecast falls back to.
    NAIVE = "Naive"
    NONE = "None"


class Fallback(enum.StrEnum):
    """Why the configured model was not used; CamelCase so it can be a condition reason."""

    NO_DATA = "NoData"
    STALE = "StaleData"
    TOO_SHORT = "HistoryTooShort"
    CONSTANT = "ConstantSeries"
    GAPS = "TooManyGaps"
    FIT_FAILED = "FitFailed"


@dataclasses.dataclass(frozen=True)
class ForecastConfig:
    """How to prepare the history and which model to fit. Durations are seconds."""

    method: Method = Method.HOLT_WINTERS
    seasonality: Seasonality = Seasonality.AUTO
    step: float = 300.0
    history: float = WEEK
    quantile: float = 0.9
    refit_interval: float = DAY
    trend: bool = True
    # Damping keeps a trend fitted on a busy morning from being extrapolated into the evening.
    damped_trend: bool = True
    counter: bool = False
    max_gap: float = 1800.0
    max_gap_fraction: float = 0.2
    clip_percentiles: tuple[float, float] = (0.1, 99.9)
    candidate_periods: tuple[float, ...] = (DAY, WEEK)
    min_autocorrelation: float = 0.3
    backtest: float = DAY

    def __post_init__(self) -> None:
        if not 0.5 <= self.quantile <= 0.999:
            raise SpecError(f"{FIELD}.quantile", f"must be between 0.5 and 0.999, got {self.quantile}")
        for name in ("step", "history", "refit_interval", "backtest"):
            if not getattr(self, name) > 0:
                raise SpecError(f"{FIELD}.{_camel(name)}", f"must be positive, got {getattr(self, name)}")
        if self.max_gap < 0 or not 0 <= self.max_gap_fraction <= 1:
            raise SpecError(f"{FIELD}.maxGap", "gap limits must be non-negative (fraction at most 1)")
        low, high = self.clip_percentiles
        if not 0 <= low < high <= 100:
            raise SpecError(f"{FIELD}.clipPercentiles", f"need 0 <= low < high <= 100, got {low}, {high}")
        if any(p <= 0 for p in self.candidate_periods):
            raise SpecError(f"{FIELD}.candidatePeriods", "periods must be positive")

    def period_steps(self, seconds: float) -> int:
        return max(1, round(seconds / self.step))


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@dataclasses.dataclass(frozen=True)
class ModelState:
    """What a refit learned and an update reuses; small and JSON-serialisable for persistence."""

    method: Method
    step: float
    period: int  # seasonal period in steps, 0 when not seasonal
    fitted_at: float
    trend: bool = False
    damped_trend: bool = False
    smoothing_level: float | None = None
    smoothing_trend: float | None = None
    smoothing_seasonal: float | None = None
    damping_trend: float | None = None
    # The configured method when it differs from ``method``: a failed Holt-Winters fit.
    fallback_for: Method | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method.value,
            "fallbackFor": None if self.fallback_for is None else self.fallback_for.value,
            "step": self.step,
            "period": self.period,
            "fittedAt": self.fitted_at,
            "trend": self.trend,
            "dampedTrend": self.damped_trend,
            "smoothingLevel": self.smoothing_level,
            "smoothingTrend": self.smoothing_trend,
            "smoothingSeasonal": self.smoothing_seasonal,
            "dampingTrend": self.damping_trend,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> ModelState | None:
        """The persisted state, or None when it is missing or unreadable (the model is refitted).
        A cache, the one exemption from the stored-state rule in ``core/fields.py``: refitting
        repeats no action."""
        if not isinstance(raw, Mapping):
            return None
        try:
            optional = {
                key: None if raw.get(name) is None else float(raw[name])
                for key, name in (
                    ("smoothing_level", "smoothingLevel"),
                    ("smoothing_trend", "smoothingTrend"),
                    ("smoothing_seasonal", "smoothingSeasonal"),
                    ("damping_trend", "dampingTrend"),
                )
            }
            if any(v is not None and not math.isfinite(v) for v in optional.values()):
                return None
            return cls(
                method=Method(raw["method"]),
                step=float(raw["step"]),
                period=int(raw["period"]),
                fitted_at=float(raw["fittedAt"]),
                trend=bool(raw.get("trend", False)),
                damped_trend=bool(raw.get("dampedTrend", False)),
                fallback_for=None if raw.get("fallbackFor") is None else Method(raw["fallbackFor"]),
                **optional,
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclasses.dataclass(frozen=True)
class Forecast:
    """Mean load per future bin (``start + k * step``) and the provisioning band above it."""

    method: Method
    step: float
    start: float = 0.0
    point: tuple[float, ...] = ()
    upper: tuple[float, ...] = ()
    quantile: float = 0.9
    period: float | None = None  # seasonal period in seconds
    mase: float | None = None
    smape: float | None = None
    fitted_at: float | None = None
    refitted: bool = False
    history_points: int = 0
    fallback: Fallback | None = None
    message: str = ""
    notes: tuple[str, ...] = ()

    @property
    def available(self) -> bool:
        return bool(self.point)

    @property
    def times(self) -> tuple[float, ...]:
        return tuple(self.start + k * self.step for k in range(len(self.point)))

    def peak(self, start: float, end: float) -> tuple[float, float] | None:
        """Highest upper-band value among bins overlapping [start, end], and that bin's start.

        None when no forecast bin overlaps, e.g. when the window lies inside the last observed
        bin: then the current measurement already covers it.
        """
        best: tuple[float, float] | None = None
        for when, value in zip(self.times, self.upper, strict=True):
            if when < end and when + self.step > start and (best is None or value > best[0]):
                best = (value, when)
        return best


@dataclasses.dataclass(frozen=True, eq=False)
class Prepared:
    """A history on a regular grid: bin ``k`` starts at ``(first_bin + k) * step``."""

    first_bin: int
    step: float
    values: FloatArray
    long_gap: BoolArray  # bins inside gaps too long to interpolate (filled provisionally)
    last_sample: float
    notes: tuple[str, ...] = ()

    @property
    def last_bin(self) -> int:
        return self.first_bin + len(self.values) - 1

    @property
    def gap_fraction(self) -> float:
        return float(self.long_gap.mean()) if self.long_gap.size else 0.0


# --- preparation -----------------------------------------------------------------------------


def prepare(
    timestamps: Sequence[float], values: Sequence[float], config: ForecastConfig, *, now: float
) -> Prepared:
    """Bin samples (mean per bin), turn counters into rates, fill gaps, clip outliers."""
    t = np.asarray(timestamps, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if t.shape != v.shape or t.ndim != 1:
        raise ValueError("timestamps and values must be one-dimensional and of equal length")
    keep = np.isfinite(t) & np.isfinite(v) & (t <= now)
    t, v = t[keep], v[keep]
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    notes: list[str] = []
    if config.counter and t.size:
        t, v, resets = _counter_rates(t, v)
        if resets:
            notes.append(f"{resets} counter reset(s)")
    recent = t >= now - config.history
    t, v = t[recent], v[recent]
    empty = np.zeros(0, dtype=np.float64)
    if t.size == 0:
        return Prepared(0, config.step, empty, np.zeros(0, dtype=np.bool_), -math.inf, tuple(notes))

    bins = np.floor(t / config.step).astype(np.int64)
    first = int(bins[0])
    index = bins - first
    counts = np.bincount(index)
    sums = np.bincount(index, weights=v)
    with np.errstate(invalid="ignore", divide="ignore"):
        grid = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    missing = np.isnan(grid)
    long_gap = np.zeros(grid.size, dtype=np.bool_)
    if missing.any():
        limit = int(config.max_gap // config.step)
        for begin, end in _runs(missing):
            if end - begin > limit:
                long_gap[begin:end] = True
        observed = np.flatnonzero(~missing)
        grid[missing] = np.interp(np.flatnonzero(missing), observed, grid[observed])
        short = int(missing.sum() - long_gap.sum())
        if short:
            notes.append(f"interpolated {short} missing bin(s)")
        if long_gap.any():
            notes.append(f"{int(long_gap.sum())} bin(s) in gaps longer than {config.max_gap:g}s")

    observed_values = grid[~missing]
    low, high = np.percentile(observed_values, config.clip_percentiles)
    # With few points the extreme percentiles are the spikes themselves, so a fence three
    # interquartile ranges out (far beyond any daily swing) also bounds them; not when the
    # quartiles coincide, as in mostly idle traffic, where the fence would erase every burst.
    q1, q3 = np.percentile(observed_values, (25.0, 75.0))
    if q3 > q1:
        low, high = max(low, q1 - 3 * (q3 - q1)), min(high, q3 + 3 * (q3 - q1))
    clipped = int(np.count_nonzero((grid < low) | (grid > high)))
    if clipped:
        grid = np.clip(grid, low, high)
        notes.append(f"clipped {clipped} outlier(s) to [{low:.6g}, {high:.6g}]")
    return Prepared(first, config.step, grid, long_gap, float(t[-1]), tuple(notes))


def _counter_rates(t: FloatArray, v: FloatArray) -> tuple[FloatArray, FloatArray, int]:
    """Per-second rates between consecutive counter samples, Prometheus-style across resets."""
    dt = np.diff(t)
    dv = np.diff(v)
    reset = dv < 0
    # After a reset the counter restarted from zero, so the increase is the new value itself.
    increase = np.where(reset, v[1:], dv)
    ok = dt > 0
    return t[1:][ok], (increase[ok] / dt[ok]), int(np.count_nonzero(reset))


def _runs(mask: BoolArray) -> list[tuple[int, int]]:
    """[begin, end) index ranges where ``mask`` is True."""
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(b), int(e)) for b, e in zip(edges[::2], edges[1::2], strict=True)]


def _fill_long_gaps(prepared: Prepared, period: int) -> FloatArray:
    """Refill long gaps from one season earlier: a straight line through a missing evening
    would teach the model that evenings are flat."""
    y = prepared.values.copy()
    if period <= 0:
        return y
    for i in np.flatnonzero(prepared.long_gap):
        if i >= period:
            y[i] = y[i - period]
    return y


# --- seasonality ------------------------------------------------------------------------------


def detect_period(
    values: Sequence[float] | FloatArray,
    step: float,
    candidates: Sequence[float] = (DAY, WEEK),
    min_autocorrelation: float = 0.3,
) -> int | None:
    """Seasonal period in steps among ``candidates`` (seconds), or None.

    A candidate needs two full cycles, a top-3 periodogram peak on one of its harmonics (so the
    cycle dominates the spectrum) and a lag-period autocorrelation of at least the minimum. A
    longer period replaces a shorter one only if it correlates clearly better: a purely daily
    pattern also repeats weekly, and the shorter season needs less history.
    """
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n < 4 or not np.all(np.isfinite(x)):
        return None
    idx = np.arange(n, dtype=np.float64)
    slope, intercept = np.polyfit(idx, x, 1)
    x = x - (slope * idx + intercept)
    if float(np.std(x)) <= _TINY * max(1.0, float(np.max(np.abs(values)))):
        return None
    power = np.abs(np.fft.rfft(x)) ** 2
    power[0] = 0.0
    top = np.argsort(power)[-3:]
    best: tuple[int, float] | None = None
    for seconds in sorted(candidates):
        period = max(1, round(seconds / step))
        if period < 2 or n < 2 * period:
            continue
        fundamental = n / period
        harmonic = any(
            round(k / fundamental) >= 1 and abs(k - round(k / fundamental) * fundamental) <= 1.0
            for k in top
            if power[k] > 0
        )
        if not harmonic:
            continue
        r = _correlation(x[:-period], x[period:])
        if r < min_autocorrelation:
            continue
        if best is None or r >= best[1] + 0.1:
            best = (period, r)
    return None if best is None else best[0]


def _correlation(a: FloatArray, b: FloatArray) -> float:
    sa, sb = float(np.std(a)), float(np.std(b))
    if sa <= _TINY or sb <= _TINY:
        return 0.0
    return float(np.mean((a - a.mean()) * (b - b.mean())) / (sa * sb))


# --- error measures ---------------------------------------------------------------------------


def mase(
    actual: Sequence[float] | FloatArray,
    predicted: Sequence[float] | FloatArray,
    training: Sequence[float] | FloatArray,
    period: int = 1,
) -> float | None:
    """Mean absolute error scaled by the in-sample seasonal-naive error (below 1 beats it)."""
    a, p, tr = (np.asarray(s, dtype=np.float64) for s in (actual, predicted, training))
    m = max(1, period)
    if a.size == 0 or a.size != p.size or tr.size <= m:
        return None
    scale = float(np.mean(np.abs(tr[m:] - tr[:-m])))
    if not math.isfinite(scale) or scale <= _TINY:
        return None
    return float(np.mean(np.abs(a - p)) / scale)


def smape(actual: Sequence[float] | FloatArray, predicted: Sequence[float] | FloatArray) -> float | None:
    """Symmetric mean absolute percentage error in percent (0 to 200); 0/0 terms count as 0."""
    a, p = np.asarray(actual, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    if a.size == 0 or a.size != p.size:
        return None
    denom = np.abs(a) + np.abs(p)
    terms = np.divide(2 * np.abs(a - p), denom, out=np.zeros_like(denom), where=denom > 0)
    return float(100 * np.mean(terms))


# --- forecasting ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Fit:
    """One-step predictions of the history (NaN where none) and the forecast of the next bins."""

    fitted: FloatArray
    future: FloatArray
    state: ModelState
    growing_band: bool  # errors of a recursive model grow with the horizon; a seasonal copy's do not


def forecast(
    timestamps: Sequence[float],
    values: Sequence[float],
    *,
    now: float,
    horizon: float,
    config: ForecastConfig | None = None,
    state: ModelState | None = None,
) -> tuple[Forecast, ModelState | None]:
    """Forecast the bins from the last observed one up to ``now + horizon``.

    Returns the forecast and the model state to persist: refitted when ``state`` is missing,
    stale (older than the refit interval) or fitted for another configuration, otherwise the
    same state. Never raises on bad data; a degenerate series yields a fallback with a reason.
    """
    config = config or ForecastConfig()
    # Absurd magnitudes overflow somewhere; the finite-value checks below judge the outcome.
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return _forecast(
            timestamps, values, now=float(now), horizon=float(horizon), config=config, state=state
        )


def _forecast(
    timestamps: Sequence[float],
    values: Sequence[float],
    *,
    now: float,
    horizon: float,
    config: ForecastConfig,
    state: ModelState | None,
) -> tuple[Forecast, ModelState | None]:
    prepared = prepare(timestamps, values, config, now=now)
    empty = Forecast(Method.NONE, step=config.step, quantile=config.quantile, notes=prepared.notes)
    if prepared.values.size == 0:
        return dataclasses.replace(empty, fallback=Fallback.NO_DATA, message="no samples"), state
    if now - prepared.last_sample > max(config.max_gap, config.step):
        age = now - prepared.last_sample
        message = f"newest sample is {age:.0f}s old"
        return dataclasses.replace(empty, fallback=Fallback.STALE, message=message), state

    y_raw = prepared.values
    n = y_raw.size
    steps = max(1, min(10_000, math.floor((now + horizon) / config.step) - prepared.last_bin))
    template = dataclasses.replace(empty, start=(prepared.last_bin + 1) * config.step, history_points=n)

    def naive(reason: Fallback, message: str, y: FloatArray) -> tuple[Forecast, ModelState | None]:
        return _naive_forecast(y, steps, config, template, reason=reason, message=message), state

    refit = _needs_refit(state, config, now)
    if refit or state is None:
        period = _configured_period(config, y_raw)
        if period is None:
            shortest = config.period_steps(min(config.candidate_periods, default=DAY))
            return naive(
                Fallback.TOO_SHORT,
                f"{n} bins; detecting seasonality needs two cycles ({2 * shortest} bins)",
                y_raw,
            )
    else:
        period = state.period
    y = _fill_long_gaps(prepared, period)
    if prepared.gap_fraction > config.max_gap_fraction:
        return naive(Fallback.GAPS, f"{prepared.gap_fraction:.0%} of the history is in long gaps", y)
    if float(np.ptp(y)) <= _TINY * max(1.0, float(np.max(np.abs(y)))):
        return naive(Fallback.CONSTANT, f"the series is constant at {y[-1]:.6g}", y)
    needed = _min_points(period)
    if n < needed:
        what = f"two seasons of {period} bins" if period else "a minimum"
        return naive(Fallback.TOO_SHORT, f"{n} bins; {what} needs {needed}", y)

    backtest = _backtest_length(n, period, config)
    message = ""
    fallback: Fallback | None = None
    try:
        fit = _fit(y, period, backtest, steps, config, state=None if refit else state, now=now)
    except _FitError as exc:
        fallback, message = Fallback.FIT_FAILED, str(exc)
        if not period:
            return naive(Fallback.FIT_FAILED, message, y)
        fit = _seasonal_naive(y, period, steps, config, now)
        fit = dataclasses.replace(fit, state=dataclasses.replace(fit.state, fallback_for=config.method))

    if fit.state.fallback_for is not None and not fallback:
        fallback = Fallback.FIT_FAILED
        message = "Holt-Winters failed at the last refit; a seasonal copy is used until the next"
    future = fit.future
    residuals = _residuals(y, fit.fitted, backtest, period)
    offset = max(0.0, float(np.quantile(residuals, config.quantile))) if residuals.size else 0.0
    growth = np.sqrt(np.arange(1, steps + 1)) if fit.growing_band else np.ones(steps)
    upper = future + offset * growth
    if float(np.min(y)) >= 0:
        # A load cannot go negative; a trend extrapolated below zero is an artefact.
        future, upper = np.maximum(future, 0.0), np.maximum(upper, 0.0)
    mase_value, smape_value = _backtest_scores(y, fit.fitted, backtest, period)
    result = dataclasses.replace(
        template,
        method=fit.state.method,
        point=tuple(float(v) for v in future),
        upper=tuple(float(v) for v in upper),
        period=period * config.step if period else None,
        mase=mase_value,
        smape=smape_value,
        fitted_at=fit.state.fitted_at,
        refitted=fit.state is not state,
        fallback=fallback,
        message=message,
    )
    return result, fit.state


def _needs_refit(state: ModelState | None, config: ForecastConfig, now: float) -> bool:
    if state is None or state.step != config.step:
        return True
    if state.method is Method.NAIVE or state.method is Method.NONE:
        return True
    # A failed fit is retried at the next refit, not on every update.
    if (state.fallback_for or state.method) is not config.method:
        return True
    if state.method is Method.HOLT_WINTERS and (
        state.trend != config.trend or state.damped_trend != (config.trend and config.damped_trend)
    ):
        return True
    if config.seasonality in (Seasonality.DAILY, Seasonality.WEEKLY):
        if state.period != _fixed_period(config):
            return True
    elif config.seasonality is Seasonality.NONE and state.period:
        return True
    # A clock that went backwards (restored state, replayed trace) also forces a refit.
    return not 0 <= now - state.fitted_at < config.refit_interval


def _fixed_period(config: ForecastConfig) -> int:
    return config.period_steps(DAY if config.seasonality is Seasonality.DAILY else WEEK)


def _configured_period(config: ForecastConfig, y: FloatArray) -> int | None:
    """Period in steps (0 = no season), or None when Auto cannot decide for lack of history."""
    if config.seasonality is Seasonality.NONE:
        return 0
    if config.seasonality is not Seasonality.AUTO:
        return _fixed_period(config)
    shortest = config.period_steps(min(config.candidate_periods, default=DAY))
    if y.size < 2 * shortest:
        return None
    found = detect_period(y, config.step, config.candidate_periods, config.min_autocorrelation)
    return found or 0


def _min_points(period: int) -> int:
    if period:
        return max(2 * period, _MIN_POINTS + 2 * (period // 2))
    return _MIN_POINTS


def _backtest_length(n: int, period: int, config: ForecastConfig) -> int:
    """Bins held out for the backtest: up to one season (or ``config.backtest``), never eating
    into the minimum training history; 0 when too few remain to mean anything."""
    wanted = max(1, round(config.backtest / config.step))
    # Without a season, a quarter of the history: enough to score, most of it left to fit.
    wanted = min(wanted, period) if period else min(wanted, max(1, n // 4))
    available = n - _min_points(period)
    length = min(wanted, available)
    return length if length >= max(4, wanted // 4) else 0


class _FitError(Exception):
    pass


def _fit(
    y: FloatArray,
    period: int,
    backtest: int,
    steps: int,
    config: ForecastConfig,
    *,
    state: ModelState | None,
    now: float,
) -> _Fit:
    if config.method is Method.SEASONAL_NAIVE or (
        state is not None and state.method is Method.SEASONAL_NAIVE
    ):
        fit = _seasonal_naive(y, period, steps, config, now)
        return fit if state is None else dataclasses.replace(fit, state=state)
    return _holt_winters(y, period, backtest, steps, config, state=state, now=now)


def _holt_winters(
    y: FloatArray,
    period: int,
    backtest: int,
    steps: int,
    config: ForecastConfig,
    *,
    state: ModelState | None,
    now: float,
) -> _Fit:
    trend = config.trend
    damped = trend and config.damped_trend
    if state is None:
        # Optimise on the history before the backtest window, so the backtest scores
        # parameters that never saw it.
        train = y[: y.size - backtest] if backtest else y
        result = _run_holt_winters(train, period, trend, damped, None)
        params = result.params
        state = ModelState(
            method=Method.HOLT_WINTERS,
            step=config.step,
            period=period,
            fitted_at=now,
            trend=trend,
            damped_trend=damped,
            smoothing_level=_param(params, "smoothing_level"),
            smoothing_trend=_param(params, "smoothing_trend") if trend else None,
            smoothing_seasonal=_param(params, "smoothing_seasonal") if period else None,
            damping_trend=_param(params, "damping_trend") if damped else None,
        )
    result = _run_holt_winters(y, period, trend, damped, state)
    fitted = np.asarray(result.fittedvalues, dtype=np.float64)
    future = np.asarray(result.forecast(steps), dtype=np.float64)
    if not (np.all(np.isfinite(fitted)) and np.all(np.isfinite(future))):
        raise _FitError("Holt-Winters produced non-finite values")
    return _Fit(fitted, future, state, growing_band=True)


def _param(params: Mapping[str, Any], name: str) -> float:
    value = float(params[name])
    if not math.isfinite(value):
        raise _FitError(f"Holt-Winters {name} is {value}")
    return value


def _run_holt_winters(y: FloatArray, period: int, trend: bool, damped: bool, state: ModelState | None) -> Any:
    # statsmodels takes a second to import; reactive-only operators never need it.
    from statsmodels.tsa.holtwinters import ExponentialSmoothing  # noqa: PLC0415

    try:
        with warnings.catch_warnings():
            # Convergence and overflow warnings are judged by the finite-value checks instead.
            warnings.simplefilter("ignore")
            with np.errstate(all="ignore"):
                model = ExponentialSmoothing(
                    y,
                    trend="add" if trend else None,
                    damped_trend=damped,
                    seasonal="add" if period else None,
                    seasonal_periods=period or None,
                    initialization_method="heuristic",
                )
                if state is None:
                    return model.fit(optimized=True)
                return model.fit(
                    smoothing_level=state.smoothing_level,
                    smoothing_trend=state.smoothing_trend,
                    smoothing_seasonal=state.smoothing_seasonal,
                    damping_trend=state.damping_trend,
                    optimized=False,
                )
    except (ValueError, TypeError, np.linalg.LinAlgError, ZeroDivisionError, OverflowError) as exc:
        raise _FitError(f"Holt-Winters fit failed: {exc}") from exc


def _seasonal_naive(y: FloatArray, period: int, steps: int, config: ForecastConfig, now: float) -> _Fit:
    m = max(1, period)
    fitted = np.full(y.size, np.nan)
    fitted[m:] = y[:-m]
    future = np.array([y[y.size - m + (h % m)] for h in range(steps)], dtype=np.float64)
    state = ModelState(Method.SEASONAL_NAIVE if period else Method.NAIVE, config.step, period, now)
    return _Fit(fitted, future, state, growing_band=not period)


def _residuals(y: FloatArray, fitted: FloatArray, backtest: int, period: int) -> FloatArray:
    """Out-of-sample residuals of the backtest window, else the latest in-sample ones."""
    window = backtest or min(y.size, max(2 * period, 48))
    resid = (y - fitted)[-window:]
    return resid[np.isfinite(resid)]


def _backtest_scores(
    y: FloatArray, fitted: FloatArray, backtest: int, period: int
) -> tuple[float | None, float | None]:
    if not backtest:
        return None, None
    actual, predicted = y[-backtest:], fitted[-backtest:]
    ok = np.isfinite(predicted)
    if not ok.any():
        return None, None
    training = y[: y.size - backtest]
    return mase(actual[ok], predicted[ok], training, period), smape(actual[ok], predicted[ok])


def _naive_forecast(
    y: FloatArray, steps: int, config: ForecastConfig, template: Forecast, *, reason: Fallback, message: str
) -> Forecast:
    """Last value plus a band from recent step-to-step changes: what reactive scaling sees."""
    last = float(y[-1])
    changes = np.diff(y[-min(y.size, 97) :])
    offset = max(0.0, float(np.quantile(changes, config.quantile))) if changes.size else 0.0
    point = [last] * steps
    upper = [last + offset * math.sqrt(h) for h in range(1, steps + 1)]
    if float(np.min(y)) >= 0:
        point, upper = [max(0.0, v) for v in point], [max(0.0, v) for v in upper]
    return dataclasses.replace(
        template,
        method=Method.NAIVE,
        point=tuple(point),
        upper=tuple(upper),
        fallback=reason,
        message=message,
    )
