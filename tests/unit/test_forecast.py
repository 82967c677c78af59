"""Forecasting core: synthetic seasonal series (seeded), degenerate series, detection, metrics."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from homeostat.core import forecast as fc
from homeostat.core.spec import SpecError

STEP = 1800.0  # 48 bins a day keeps every fit well under a second
DAY_BINS = 48
EPOCH = 1_700_000_000 // 86400 * 86400  # a midnight, so bins and days line up


def truth(k: np.ndarray, step: float = STEP, base: float = 100.0, amp: float = 50.0) -> np.ndarray:
    return base + amp * np.sin(2 * np.pi * k * step / fc.DAY)


def daily(
    days: float, *, seed: int = 1, noise: float = 5.0, step: float = STEP
) -> tuple[np.ndarray, np.ndarray]:
    n = round(days * fc.DAY / step)
    k = np.arange(n)
    values = truth(k, step) + np.random.default_rng(seed).normal(0, noise, n)
    return EPOCH + k * step, values


def config(**overrides: Any) -> fc.ForecastConfig:
    return fc.ForecastConfig(**{"step": STEP, **overrides})


def run(t: Any, v: Any, *, horizon: float = 2 * STEP, state: fc.ModelState | None = None, **overrides: Any):
    t = np.asarray(t, dtype=float)
    now = float(t[-1]) + 60 if t.size else float(EPOCH)
    return fc.forecast(t, v, now=now, horizon=horizon, config=config(**overrides), state=state)


# --- models on seasonal series -----------------------------------------------------------------


@pytest.mark.parametrize("method", [fc.Method.HOLT_WINTERS, fc.Method.SEASONAL_NAIVE])
@pytest.mark.parametrize("seed", [1, 2])
def test_seasonal_series_is_forecast_within_the_noise(method: fc.Method, seed: int) -> None:
    t, v = daily(7, seed=seed)
    result, state = run(t, v, method=method, horizon=3 * STEP)
    assert result.method is method and result.fallback is None
    assert result.period == fc.DAY
    k = (np.asarray(result.times) - EPOCH) / STEP
    assert len(result.point) == 3  # the bins overlapping (now, now + 3 steps]
    assert np.all(np.abs(np.asarray(result.point) - truth(k)) < 4 * 5.0)
    assert all(u >= p for p, u in zip(result.point, result.upper, strict=True))
    assert result.mase is not None and result.smape is not None
    assert state is not None and state.method is method and state.period == DAY_BINS


def test_holt_winters_beats_seasonal_naive_on_its_backtest() -> None:
    t, v = daily(7, seed=3)
    hw, _ = run(t, v)
    naive, _ = run(t, v, method=fc.Method.SEASONAL_NAIVE)
    assert hw.mase is not None and naive.mase is not None
    assert hw.mase < naive.mase
    assert naive.mase == pytest.approx(1.0, abs=0.25)  # a seasonal copy scores about 1 by construction


def test_upper_band_widens_with_the_quantile() -> None:
    t, v = daily(7, seed=4)
    offsets = []
    for q in (0.6, 0.9, 0.99):
        result, _ = run(t, v, quantile=q)
        offsets.append(result.upper[0] - result.point[0])
    assert offsets == sorted(offsets) and offsets[0] >= 0
    # One-step residuals here are the 5.0 noise: the 90% band is about 1.28 sigma.
    assert 0.5 * 5.0 < offsets[1] < 3 * 5.0


def test_forecast_starts_after_the_last_observed_bin_and_reaches_the_horizon() -> None:
    t, v = daily(5)
    now = float(t[-1]) + 60
    result, _ = fc.forecast(t, v, now=now, horizon=3 * STEP, config=config())
    assert result.start == t[-1] + STEP
    assert result.times[-1] <= now + 3 * STEP < result.times[-1] + STEP


def test_update_reuses_parameters_until_the_refit_interval() -> None:
    t, v = daily(6)
    first, state = run(t[:-4], v[:-4])
    assert first.refitted and state is not None
    now = float(t[-1]) + 60
    second, same = fc.forecast(t, v, now=now, horizon=STEP, config=config(), state=state)
    assert not second.refitted and same is state
    assert second.fitted_at == state.fitted_at
    later = state.fitted_at + fc.DAY
    third, refreshed = fc.forecast(
        t, v, now=later, horizon=STEP, config=config(max_gap=2 * fc.DAY), state=state
    )
    assert third.refitted and refreshed is not None and refreshed.fitted_at == later


@pytest.mark.parametrize(
    "change",
    [
        {"step": 900.0},
        {"seasonality": fc.Seasonality.NONE},
        {"damped_trend": False},
        {"method": fc.Method.SEASONAL_NAIVE},
    ],
)
def test_state_fitted_for_another_configuration_is_refitted(change: dict[str, Any]) -> None:
    t, v = daily(6)
    _, state = run(t, v)
    result, new_state = run(t, v, state=state, **change)
    assert result.refitted and new_state is not state


def test_model_state_round_trips_and_garbage_means_refit() -> None:
    t, v = daily(6)
    _, state = run(t, v)
    assert state is not None
    assert fc.ModelState.from_dict(state.to_dict()) == state
    for garbage in (None, {}, {"method": "Bogus"}, {**state.to_dict(), "period": "x"}, []):
        assert fc.ModelState.from_dict(garbage) is None  # type: ignore[arg-type]


def test_seasonality_none_fits_a_trend_without_a_season() -> None:
    n = 200
    t = EPOCH + np.arange(n) * STEP
    v = 50 + 0.5 * np.arange(n) + np.random.default_rng(5).normal(0, 1, n)
    result, state = run(t, v, seasonality=fc.Seasonality.NONE, damped_trend=False)
    assert result.method is fc.Method.HOLT_WINTERS and result.period is None and result.fallback is None
    assert result.point[0] == pytest.approx(50 + 0.5 * n, abs=5)
    assert state is not None and state.period == 0


# --- degenerate series ---------------------------------------------------------------------------


def _spiky() -> tuple[np.ndarray, np.ndarray]:
    t, v = daily(7, seed=6)
    v = v.copy()
    v[[40, 150, 290]] = 50_000.0
    return t, v


def _gappy(drop: slice) -> tuple[np.ndarray, np.ndarray]:
    t, v = daily(7, seed=7)
    keep = np.ones(t.size, dtype=bool)
    keep[drop] = False
    return t[keep], v[keep]


DEGENERATE = {
    "empty": ([], [], fc.Method.NONE, fc.Fallback.NO_DATA),
    "nan only": (EPOCH + np.arange(100) * STEP, np.full(100, np.nan), fc.Method.NONE, fc.Fallback.NO_DATA),
    "single point": ([EPOCH], [5.0], fc.Method.NAIVE, fc.Fallback.TOO_SHORT),
    "constant": (EPOCH + np.arange(400) * STEP, np.full(400, 7.5), fc.Method.NAIVE, fc.Fallback.CONSTANT),
    "all zero": (EPOCH + np.arange(400) * STEP, np.zeros(400), fc.Method.NAIVE, fc.Fallback.CONSTANT),
    "too short for auto": (*daily(0.5), fc.Method.NAIVE, fc.Fallback.TOO_SHORT),
    "long gaps": (*_gappy(slice(40, 140)), fc.Method.NAIVE, fc.Fallback.GAPS),
    "spikes": (*_spiky(), fc.Method.HOLT_WINTERS, None),
    "infinities": (*daily(4), fc.Method.HOLT_WINTERS, None),
}


@pytest.mark.parametrize("case", list(DEGENERATE), ids=list(DEGENERATE))
def test_degenerate_series_fall_back_with_a_reason(case: str) -> None:
    t, v, method, fallback = DEGENERATE[case]
    v = np.asarray(v, dtype=float).copy()
    if case == "infinities":
        v[[3, 30]] = [np.inf, -np.inf]
    result, _ = run(t, v)
    assert result.method is method
    assert result.fallback is fallback
    if fallback is not None:
        assert result.message
    if method is fc.Method.NONE:
        assert not result.available and result.peak(0, math.inf) is None
    else:
        assert result.available
        assert all(math.isfinite(x) for x in (*result.point, *result.upper))


def test_failed_fit_falls_back_to_a_seasonal_copy_until_the_next_refit() -> None:
    t, v = daily(6)
    broken = fc.ModelState(fc.Method.HOLT_WINTERS, STEP, DAY_BINS, float(t[-1]), smoothing_level=float("nan"))
    result, state = run(t, v, state=broken, trend=False, damped_trend=False)
    assert result.method is fc.Method.SEASONAL_NAIVE and result.fallback is fc.Fallback.FIT_FAILED
    assert state is not None and state.method is fc.Method.SEASONAL_NAIVE
    assert state.fallback_for is fc.Method.HOLT_WINTERS
    assert fc.ModelState.from_dict(state.to_dict()) == state
    # Not retried on every update (an optimised fit is the expensive part)...
    again, same = run(t, v, state=state)
    assert again.fallback is fc.Fallback.FIT_FAILED and same is state and not again.refitted
    # ...but at the next refit.
    later, refitted = fc.forecast(
        t, v, now=state.fitted_at + fc.DAY, horizon=60, config=config(max_gap=2 * fc.DAY), state=state
    )
    assert later.method is fc.Method.HOLT_WINTERS and later.fallback is None
    assert refitted is not None and refitted.method is fc.Method.HOLT_WINTERS


def test_absurd_magnitudes_do_not_raise() -> None:
    t, v = daily(4)
    result, _ = run(t, v * 1e300)
    assert result.available and all(math.isfinite(x) for x in result.point)


def test_too_short_for_a_configured_season() -> None:
    t, v = daily(1.5)
    result, state = run(t, v, seasonality=fc.Seasonality.DAILY)
    assert result.fallback is fc.Fallback.TOO_SHORT and "two seasons" in result.message
    assert state is None  # nothing worth keeping: the next call tries again


def test_stale_history_gives_no_forecast() -> None:
    t, v = daily(4)
    result, _ = fc.forecast(t, v, now=float(t[-1]) + 3 * 3600, horizon=60, config=config())
    assert result.fallback is fc.Fallback.STALE and not result.available


def test_spikes_are_clipped_and_do_not_move_the_forecast() -> None:
    t, v = _spiky()
    clean_v = daily(7, seed=6)[1]
    spiky, _ = run(t, v)
    clean, _ = run(t, clean_v)
    assert any("clipped" in note for note in spiky.notes)
    assert spiky.point[0] == pytest.approx(clean.point[0], abs=5.0)
    assert spiky.upper[0] < 2 * clean.upper[0]


def test_short_gaps_are_interpolated_and_the_model_still_fits() -> None:
    t, v = _gappy(slice(100, 102))
    result, _ = run(t, v, max_gap=3 * STEP)
    assert result.fallback is None and result.method is fc.Method.HOLT_WINTERS
    assert any("interpolated 2" in note for note in result.notes)


def test_counter_resets_become_rates() -> None:
    t, rate = daily(6, noise=1.0)
    counter = np.cumsum(rate * STEP)
    counter[150:] -= counter[149]  # the process restarted: the counter starts again from zero
    counter[250:] -= counter[249]
    result, _ = run(t, counter, counter=True)
    assert any("2 counter reset" in note for note in result.notes)
    k = (np.asarray(result.times) - EPOCH) / STEP
    assert result.point[0] == pytest.approx(float(truth(k)[0]), abs=10)


# --- preparation -------------------------------------------------------------------------------------


def test_prepare_bins_by_mean_and_marks_long_gaps() -> None:
    t = [0.0, 10.0, 60.0, 70.0, 400.0]  # two samples in each of the first two 60s bins, then a gap
    v = [1.0, 3.0, 10.0, 20.0, 5.0]
    prepared = fc.prepare(
        t, v, fc.ForecastConfig(step=60.0, max_gap=120.0, clip_percentiles=(0, 100)), now=400
    )
    assert prepared.first_bin == 0
    assert list(prepared.values[:2]) == [2.0, 15.0]
    assert prepared.values.size == 7
    assert list(prepared.long_gap) == [False, False, True, True, True, True, False]
    assert prepared.last_sample == 400.0


def test_prepare_drops_future_and_old_samples() -> None:
    t = np.arange(0, 1000, 60.0)
    prepared = fc.prepare(t, np.ones(t.size), fc.ForecastConfig(step=60.0, history=300.0), now=600.0)
    assert prepared.first_bin == 5 and prepared.last_bin == 10


# --- seasonality detection ---------------------------------------------------------------------------


def _weekly() -> tuple[np.ndarray, float]:
    k = np.arange(24 * 21)
    weekend = ((k // 24) % 7) >= 5
    values = (
        100 + 40 * np.sin(2 * np.pi * k / 24) - 60 * weekend + np.random.default_rng(8).normal(0, 3, k.size)
    )
    return values, 3600.0


DETECTION = {
    "daily": (daily(7)[1], STEP, DAY_BINS),
    "daily with trend": (daily(7)[1] + np.arange(336) * 0.2, STEP, DAY_BINS),
    "weekly": (*_weekly(), 168),
    "white noise": (np.random.default_rng(9).normal(100, 5, 336), STEP, None),
    "constant": (np.full(336, 3.0), STEP, None),
    "pure trend": (np.arange(336, dtype=float), STEP, None),
    "one day only": (daily(1.5)[1], STEP, None),
}


@pytest.mark.parametrize("case", list(DETECTION), ids=list(DETECTION))
def test_detect_period(case: str) -> None:
    values, step, expected = DETECTION[case]
    assert fc.detect_period(values, step) == expected


def test_auto_seasonality_uses_the_detected_period() -> None:
    t, v = daily(7)
    result, _ = run(t, v, seasonality=fc.Seasonality.AUTO)
    assert result.period == fc.DAY
    noise_t = EPOCH + np.arange(336) * STEP
    flat, state = run(noise_t, np.random.default_rng(10).normal(100, 5, 336))
    assert flat.period is None and state is not None and state.period == 0


# --- error measures ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("actual", "predicted", "training", "period", "expected"),
    [
        ([1, 2, 3], [1, 2, 4], [1, 3, 5, 7], 1, (1 / 3) / 2),
        ([10, 10], [12, 8], [0, 10, 0, 10, 0, 10], 2, None),  # seasonal-naive error is 0: undefined
        ([10, 10], [12, 8], [0, 10, 4, 10, 0, 10], 2, 2 / (8 / 4)),
        ([5, 5], [5, 5], [1, 2, 3], 1, 0.0),
        ([], [], [1, 2, 3], 1, None),
        ([1], [1], [1], 1, None),  # training no longer than the period
    ],
)
def test_mase(
    actual: list[float], predicted: list[float], training: list[float], period: int, expected: Any
) -> None:
    result = fc.mase(actual, predicted, training, period)
    assert result == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("actual", "predicted", "expected"),
    [
        ([1, 2, 3], [1, 2, 4], 100 * (2 * 1 / 7) / 3),
        ([0, 0], [0, 0], 0.0),
        ([0], [5], 200.0),
        ([100, 200], [110, 180], 100 * (20 / 210 + 40 / 380) / 2),
        ([], [], None),
    ],
)
def test_smape(actual: list[float], predicted: list[float], expected: float | None) -> None:
    result = fc.smape(actual, predicted)
    assert result == (None if expected is None else pytest.approx(expected))


# --- small pieces -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, 100, None),  # before the first forecast bin
        (250, 350, (12.0, 300.0)),
        (250, 650, (30.0, 600.0)),
        (650, 700, (30.0, 600.0)),
        (900, 1000, None),  # after the last bin
    ],
)
def test_peak_over_a_window(start: float, end: float, expected: tuple[float, float] | None) -> None:
    forecast = fc.Forecast(fc.Method.HOLT_WINTERS, step=300.0, start=300.0, point=(10, 20), upper=(12, 30))
    assert forecast.peak(start, end) == expected


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"quantile": 0.3}, "spec.autoscaling.forecast.quantile"),
        ({"quantile": 1.0}, "spec.autoscaling.forecast.quantile"),
        ({"refit_interval": 0.0}, "spec.autoscaling.forecast.refitInterval"),
        ({"history": -1.0}, "spec.autoscaling.forecast.history"),
        ({"clip_percentiles": (50.0, 10.0)}, "spec.autoscaling.forecast.clipPercentiles"),
    ],
)
def test_config_rejects_bad_values(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as info:
        fc.ForecastConfig(**overrides)
    assert info.value.field == field
