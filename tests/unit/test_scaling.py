"""Scaling policy tables: HPA semantics, capacity ahead of a forecast, fallbacks and holds."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from homeostat.core import forecast as fc
from homeostat.core import scaling as sc
from homeostat.core.spec import Replicas, SpecError

NOW = 1_000_000.0
STEP = 300.0
BIN = NOW // STEP * STEP  # start of the bin holding NOW, the newest observed one
TARGET = 100.0
BOUNDS = Replicas(1, 50)
QUICK = sc.Behavior(  # no stabilisation and no rate limits unless a test adds them
    sc.ScalingRules(0.0, (sc.RatePolicy(sc.PolicyType.PERCENT, 1000, 15.0),)),
    sc.ScalingRules(0.0, (sc.RatePolicy(sc.PolicyType.PERCENT, 100, 15.0),)),
)


def spec(mode: sc.ScalingMode = sc.ScalingMode.PREDICTIVE, **overrides: Any) -> sc.AutoscalingSpec:
    values: dict[str, Any] = {
        "mode": mode,
        "query": "sum(rate(http_requests_total[1m]))",
        "target_per_replica": TARGET,
        "startup_delay": 60.0,
        "interval": 30.0,
        "behavior": QUICK,
    }
    values.update(overrides)
    return sc.AutoscalingSpec(**values)


def forecast(upper: float, **overrides: Any) -> fc.Forecast:
    """A forecast whose next bin (reached by NOW + startup + interval) peaks at ``upper``."""
    values: dict[str, Any] = {
        "method": fc.Method.HOLT_WINTERS,
        "step": STEP,
        "start": BIN + STEP,
        "point": (upper * 0.9, upper * 0.5),
        "upper": (upper, upper * 0.6),
        "mase": 0.5,
        "smape": 8.0,
        "fitted_at": NOW - 3600,
        "period": fc.DAY,
    }
    values.update(overrides)
    return fc.Forecast(**values)


def decide(
    auto: sc.AutoscalingSpec,
    *,
    current: int,
    metric: float | None,
    predicted: fc.Forecast | None = None,
    state: sc.ScalingState | None = None,
    bounds: Replicas = BOUNDS,
    now: float = BIN + STEP - 60,  # late in the bin, so the horizon reaches the next one
) -> tuple[sc.ScalingDecision, sc.ScalingState]:
    return sc.decide(
        auto,
        current=current,
        bounds=bounds,
        metric=metric,
        forecast=predicted,
        state=state or sc.ScalingState(),
        now=now,
    )


# --- the HPA rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "metric", "tolerance", "expected"),
    [
        (4, 400.0, 0.1, 4),  # exactly on target
        (4, 430.0, 0.1, 4),  # ratio 1.075: inside the tolerance
        (4, 370.0, 0.1, 4),  # ratio 0.925: inside the tolerance
        (4, 450.0, 0.1, 5),  # ratio 1.125: ceil(4.5)
        (4, 430.0, 0.0, 5),  # no tolerance
        (4, 200.0, 0.1, 2),
        (4, 0.0, 0.1, 0),
        (0, 250.0, 0.1, 3),  # scaled to zero: the total load decides
        (10, 1001.0, 0.0, 11),
    ],
)
def test_reactive_replicas(current: int, metric: float, tolerance: float, expected: int) -> None:
    assert sc.reactive_replicas(current, metric, TARGET, tolerance) == expected


@pytest.mark.parametrize(
    ("current", "metric", "desired"),
    [(4, 430.0, 4), (4, 450.0, 5), (8, 200.0, 2), (3, 3000.0, 30)],
)
def test_reactive_mode_follows_the_metric_within_tolerance(current: int, metric: float, desired: int) -> None:
    decision, _ = decide(
        spec(sc.ScalingMode.REACTIVE), current=current, metric=metric, predicted=forecast(9999)
    )
    assert (decision.desired, decision.reason, decision.mode) == (
        desired,
        sc.ScalingReason.REACTIVE,
        sc.ScalingMode.REACTIVE,
    )
    assert decision.predictive is None and decision.forecast is None  # Reactive ignores the forecast


# --- stabilisation -------------------------------------------------------------------------------------


def test_scale_down_waits_for_the_stabilisation_window() -> None:
    auto = spec(sc.ScalingMode.REACTIVE, behavior=sc.Behavior())  # HPA defaults: 300s down window
    state = sc.ScalingState(recommendations=((NOW - 200, 8),))
    decision, state = decide(auto, current=8, metric=200.0, state=state, now=NOW)
    assert decision.desired == 8 and decision.limit is sc.Limit.SCALE_DOWN_STABILIZED
    assert decision.recommendation == 2
    # 150s later the 8 is still inside the window...
    decision, state = decide(auto, current=8, metric=200.0, state=state, now=NOW + 99)
    assert decision.desired == 8
    # ...and once it has left it, the highest recommendation in the window is 2.
    decision, _ = decide(auto, current=8, metric=200.0, state=state, now=NOW + 101)
    assert decision.desired == 2 and decision.limit is None


def test_stabilisation_takes_the_highest_recent_recommendation() -> None:
    auto = spec(sc.ScalingMode.REACTIVE, behavior=sc.Behavior())
    state = sc.ScalingState(recommendations=((NOW - 250, 9), (NOW - 100, 6), (NOW - 50, 5)))
    decision, new_state = decide(auto, current=10, metric=300.0, state=state, now=NOW)
    assert decision.desired == 9
    assert new_state.recommendations[-1] == (NOW, 3)


def test_scale_up_window_takes_the_lowest_recent_recommendation() -> None:
    rules = sc.ScalingRules(120.0, QUICK.scale_up.policies)
    auto = spec(sc.ScalingMode.REACTIVE, behavior=dataclasses.replace(QUICK, scale_up=rules))
    state = sc.ScalingState(recommendations=((NOW - 60, 6),))
    decision, _ = decide(auto, current=4, metric=1000.0, state=state, now=NOW)
    assert decision.desired == 6 and decision.limit is sc.Limit.SCALE_UP_STABILIZED


def test_old_recommendations_and_events_are_pruned() -> None:
    auto = spec(sc.ScalingMode.REACTIVE, behavior=sc.Behavior())
    state = sc.ScalingState(recommendations=((NOW - 1000, 9),), events=((NOW - 1000, 3),))
    _, new_state = decide(auto, current=4, metric=400.0, state=state, now=NOW)
    assert new_state.recommendations == ((NOW, 4),)
    assert new_state.events == ()


# --- rate policies --------------------------------------------------------------------------------------


def _rules(select: sc.SelectPolicy, *policies: tuple[sc.PolicyType, int, float]) -> sc.ScalingRules:
    return sc.ScalingRules(0.0, tuple(sc.RatePolicy(*p) for p in policies), select)


PODS4 = (sc.PolicyType.PODS, 4, 60.0)
HALF = (sc.PolicyType.PERCENT, 50, 60.0)


@pytest.mark.parametrize(
    ("up", "events", "expected", "limit"),
    [
        (_rules(sc.SelectPolicy.MAX, PODS4, HALF), (), 15, sc.Limit.SCALE_UP_LIMIT),  # 10+4 vs ceil(10*1.5)
        (_rules(sc.SelectPolicy.MIN, PODS4, HALF), (), 14, sc.Limit.SCALE_UP_LIMIT),
        (_rules(sc.SelectPolicy.DISABLED, PODS4, HALF), (), 10, sc.Limit.SCALE_UP_LIMIT),
        # 3 pods were added 30s ago: the period started at 7, so 7+4 = 11 is the most now.
        (_rules(sc.SelectPolicy.MAX, PODS4), ((NOW - 30, 3),), 11, sc.Limit.SCALE_UP_LIMIT),
        # An addition older than the period no longer counts.
        (_rules(sc.SelectPolicy.MAX, PODS4), ((NOW - 61, 3),), 14, sc.Limit.SCALE_UP_LIMIT),
        # Budget already spent in this period: hold rather than go below current.
        (_rules(sc.SelectPolicy.MAX, PODS4), ((NOW - 10, 8),), 10, sc.Limit.SCALE_UP_LIMIT),
        (_rules(sc.SelectPolicy.MAX, (sc.PolicyType.PODS, 100, 60.0)), (), 30, None),
    ],
)
def test_scale_up_rate_policies(
    up: sc.ScalingRules, events: tuple[tuple[float, int], ...], expected: int, limit: sc.Limit | None
) -> None:
    auto = spec(sc.ScalingMode.REACTIVE, behavior=dataclasses.replace(QUICK, scale_up=up))
    state = sc.ScalingState(events=events)
    decision, new_state = decide(auto, current=10, metric=3000.0, state=state, now=NOW)
    assert (decision.desired, decision.limit) == (expected, limit)
    if expected != 10:
        assert new_state.events[-1] == (NOW, expected - 10)


@pytest.mark.parametrize(
    ("down", "events", "expected"),
    [
        (_rules(sc.SelectPolicy.MAX, (sc.PolicyType.PODS, 1, 60.0)), (), 9),
        (_rules(sc.SelectPolicy.MAX, (sc.PolicyType.PERCENT, 30, 60.0)), (), 7),
        (
            _rules(sc.SelectPolicy.MAX, (sc.PolicyType.PODS, 1, 60.0), (sc.PolicyType.PERCENT, 30, 60.0)),
            (),
            7,
        ),
        (
            _rules(sc.SelectPolicy.MIN, (sc.PolicyType.PODS, 1, 60.0), (sc.PolicyType.PERCENT, 30, 60.0)),
            (),
            9,
        ),
        (_rules(sc.SelectPolicy.DISABLED, (sc.PolicyType.PODS, 1, 60.0)), (), 10),
        # One pod removed 30s ago used up the Pods=1 budget of this period.
        (_rules(sc.SelectPolicy.MAX, (sc.PolicyType.PODS, 1, 60.0)), ((NOW - 30, -1),), 10),
    ],
)
def test_scale_down_rate_policies(
    down: sc.ScalingRules, events: tuple[tuple[float, int], ...], expected: int
) -> None:
    auto = spec(sc.ScalingMode.REACTIVE, behavior=dataclasses.replace(QUICK, scale_down=down))
    decision, _ = decide(auto, current=10, metric=200.0, state=sc.ScalingState(events=events), now=NOW)
    assert decision.desired == expected
    assert decision.limit is sc.Limit.SCALE_DOWN_LIMIT


@pytest.mark.parametrize(
    ("current", "metric", "bounds", "desired", "reason", "limit"),
    [
        (5, 5000.0, Replicas(1, 10), 10, sc.ScalingReason.REACTIVE, sc.Limit.TOO_MANY_REPLICAS),
        (5, 0.0, Replicas(2, 10), 2, sc.ScalingReason.REACTIVE, sc.Limit.TOO_FEW_REPLICAS),
        (12, 400.0, Replicas(1, 10), 10, sc.ScalingReason.OUT_OF_BOUNDS, None),
        (1, 400.0, Replicas(3, 10), 3, sc.ScalingReason.OUT_OF_BOUNDS, None),
    ],
)
def test_bounds(
    *,
    current: int,
    metric: float,
    bounds: Replicas,
    desired: int,
    reason: sc.ScalingReason,
    limit: sc.Limit | None,
) -> None:
    decision, _ = decide(
        spec(sc.ScalingMode.REACTIVE), current=current, metric=metric, bounds=bounds, now=NOW
    )
    assert (decision.desired, decision.reason, decision.limit) == (desired, reason, limit)


# --- the forecast ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "metric", "upper", "allow", "desired", "reason"),
    [
        # The forecast sees 900 coming while load is 500: scale out ahead of it.
        (5, 500.0, 900.0, False, 9, sc.ScalingReason.PREDICTIVE),
        (5, 500.0, 900.0, True, 9, sc.ScalingReason.PREDICTIVE),
        # The forecast sees load falling: without allowForecastScaleIn it cannot remove pods.
        (5, 500.0, 200.0, False, 5, sc.ScalingReason.REACTIVE),
        (5, 500.0, 200.0, True, 2, sc.ScalingReason.PREDICTIVE),
        # Reactive already wants more than the forecast: reactive wins either way.
        (5, 1200.0, 900.0, False, 12, sc.ScalingReason.REACTIVE),
        # An upper band of 901 needs a tenth replica.
        (5, 500.0, 901.0, False, 10, sc.ScalingReason.PREDICTIVE),
    ],
)
def test_predictive_adds_capacity_and_scales_in_only_when_allowed(
    *, current: int, metric: float, upper: float, allow: bool, desired: int, reason: sc.ScalingReason
) -> None:
    auto = spec(allow_forecast_scale_in=allow)
    decision, _ = decide(auto, current=current, metric=metric, predicted=forecast(upper))
    assert (decision.desired, decision.reason, decision.mode) == (desired, reason, sc.ScalingMode.PREDICTIVE)
    assert decision.predictive == -(-upper // TARGET)
    assert decision.reactive == sc.reactive_replicas(current, metric, TARGET, 0.1)


def test_forecast_never_removes_capacity_over_a_falling_day() -> None:
    """Load steady, forecast collapsing: without allowForecastScaleIn nothing is removed."""
    auto = spec()
    state = sc.ScalingState()
    for upper in (600.0, 400.0, 100.0, 0.0):
        decision, state = decide(auto, current=6, metric=600.0, predicted=forecast(upper), state=state)
        assert decision.desired == 6


@pytest.mark.parametrize(
    ("predicted", "reason"),
    [
        (None, sc.ScalingReason.FORECAST_MISSING),
        (
            fc.Forecast(fc.Method.NONE, step=STEP, fallback=fc.Fallback.NO_DATA),
            sc.ScalingReason.FORECAST_MISSING,
        ),
        (
            forecast(900.0, method=fc.Method.NAIVE, fallback=fc.Fallback.TOO_SHORT, mase=None),
            sc.ScalingReason.HISTORY_TOO_SHORT,
        ),
        (
            forecast(900.0, method=fc.Method.NAIVE, fallback=fc.Fallback.CONSTANT),
            sc.ScalingReason.FORECAST_UNRELIABLE,
        ),
        (forecast(900.0, mase=1.4), sc.ScalingReason.FORECAST_UNRELIABLE),
        (forecast(900.0, mase=None), sc.ScalingReason.FORECAST_UNRELIABLE),
    ],
)
def test_unusable_forecasts_fall_back_to_reactive(
    predicted: fc.Forecast | None, reason: sc.ScalingReason
) -> None:
    decision, _ = decide(spec(), current=5, metric=500.0, predicted=predicted)
    assert (decision.desired, decision.reason, decision.mode) == (5, reason, sc.ScalingMode.REACTIVE)
    assert decision.predictive is None
    assert decision.forecast is not None and decision.forecast.fallback is not None
    assert decision.forecast.mode is sc.ScalingMode.REACTIVE


@pytest.mark.parametrize(
    ("mase", "smape", "trusted"),
    [
        (0.5, 8.0, True),  # beats seasonal naive
        (58.0, 2.1, True),  # loses to it on a near-perfect season, but misses by 2%
        (58.0, 5.0, True),
        (1.4, 5.1, False),
        (None, 2.0, True),  # seasonal-naive error exactly zero: MASE undefined, sMAPE decides
        (None, None, False),
        (3.0, None, False),
    ],
)
def test_a_forecast_is_trusted_on_relative_or_absolute_accuracy(
    mase: float | None, smape: float | None, trusted: bool
) -> None:
    decision, _ = decide(spec(), current=5, metric=500.0, predicted=forecast(900.0, mase=mase, smape=smape))
    assert (decision.desired, decision.reason) == (
        (9, sc.ScalingReason.PREDICTIVE) if trusted else (5, sc.ScalingReason.FORECAST_UNRELIABLE)
    )


def test_mase_bound_is_configurable() -> None:
    decision, _ = decide(spec(max_mase=1.5), current=5, metric=500.0, predicted=forecast(900.0, mase=1.4))
    assert decision.desired == 9


def test_horizon_inside_the_observed_bin_adds_nothing() -> None:
    # Early in the bin the startup delay plus one interval does not reach the forecast bin.
    decision, _ = decide(spec(), current=5, metric=500.0, predicted=forecast(900.0), now=BIN + 10)
    assert decision.desired == 5 and decision.predictive is None
    assert decision.mode is sc.ScalingMode.PREDICTIVE and "within the observed data" in decision.message


def test_forecast_summary_reports_the_peak() -> None:
    decision, _ = decide(spec(), current=5, metric=500.0, predicted=forecast(900.0))
    summary = decision.forecast
    assert summary == sc.ForecastSummary(
        method="HoltWinters",
        horizon=90.0,
        mode=sc.ScalingMode.PREDICTIVE,
        predicted_peak=900.0,
        predicted_peak_at=BIN + STEP,
        mase=0.5,
        smape=8.0,
        last_fit_time=NOW - 3600,
    )


# --- modes and holds ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(sc.ScalingMode))
def test_metric_unavailable_holds_replicas(mode: sc.ScalingMode) -> None:
    state = sc.ScalingState(recommendations=((NOW - 10, 7),))
    for metric in (None, float("nan"), -1.0):
        decision, new_state = decide(
            spec(mode), current=7, metric=metric, predicted=forecast(100.0), state=state
        )
        assert decision.desired == 7 and not decision.changed
        assert new_state == state
        if mode is not sc.ScalingMode.OFF:
            assert decision.reason is sc.ScalingReason.METRIC_UNAVAILABLE


def test_off_changes_nothing() -> None:
    state = sc.ScalingState(recommendations=((NOW - 10, 3),))
    decision, new_state = decide(
        spec(sc.ScalingMode.OFF), current=4, metric=5000.0, predicted=forecast(9000), state=state
    )
    assert (decision.desired, decision.reason, decision.mode) == (4, sc.ScalingReason.OFF, sc.ScalingMode.OFF)
    assert new_state is state


@pytest.mark.parametrize(
    "row",
    [
        ("forecast above load", 5, 500.0, forecast(900.0), BOUNDS, 9, sc.ScalingReason.PREVIEW),
        ("load above forecast", 5, 1000.0, forecast(900.0), BOUNDS, 10, sc.ScalingReason.PREVIEW),
        ("load falls", 8, 100.0, forecast(100.0), BOUNDS, 1, sc.ScalingReason.PREVIEW),
        (
            "unreliable forecast",
            5,
            1000.0,
            forecast(900.0, mase=3.0),
            BOUNDS,
            10,
            sc.ScalingReason.FORECAST_UNRELIABLE,
        ),
        ("no forecast", 5, 1000.0, None, BOUNDS, 10, sc.ScalingReason.FORECAST_MISSING),
        ("above max", 60, 500.0, forecast(900.0), BOUNDS, 50, sc.ScalingReason.OUT_OF_BOUNDS),
        ("capped by max", 5, 9000.0, forecast(900.0), Replicas(1, 7), 7, sc.ScalingReason.PREVIEW),
    ],
)
def test_preview_reports_what_predictive_would_apply_and_applies_nothing(
    row: tuple[str, int, float, fc.Forecast | None, Replicas, int, sc.ScalingReason],
) -> None:
    case, current, metric, predicted, bounds, preview, reason = row
    state = sc.ScalingState(events=((BIN + STEP - 65, 2),))  # 5 s before the decision
    decision, new_state = decide(
        spec(sc.ScalingMode.PREVIEW),
        current=current,
        metric=metric,
        predicted=predicted,
        state=state,
        bounds=bounds,
    )
    assert decision.desired == current and not decision.changed, case
    assert decision.preview == preview, case
    assert (decision.reason, decision.mode) == (reason, sc.ScalingMode.PREVIEW), case
    assert new_state.events == state.events, case  # nothing was scaled, so no scale event
    assert "nothing applied" in decision.message, case
    if predicted is not None and reason is sc.ScalingReason.PREVIEW:
        # the same numbers Predictive would have applied
        acted, _ = decide(
            spec(sc.ScalingMode.PREDICTIVE),
            current=current,
            metric=metric,
            predicted=predicted,
            state=state,
            bounds=bounds,
        )
        assert acted.desired == preview, case
        assert decision.forecast is not None and decision.forecast.predicted_peak == predicted.upper[0]


def test_preview_holds_when_the_metric_is_missing() -> None:
    decision, new_state = decide(
        spec(sc.ScalingMode.PREVIEW), current=5, metric=None, predicted=forecast(900.0)
    )
    assert (decision.desired, decision.reason, decision.preview) == (
        5,
        sc.ScalingReason.METRIC_UNAVAILABLE,
        None,
    )
    assert new_state == sc.ScalingState()


# --- parsing ---------------------------------------------------------------------------------------


def test_parse_defaults() -> None:
    assert sc.parse(None) == sc.AutoscalingSpec()
    auto = sc.parse({"mode": "Reactive", "metric": {"query": "q", "targetPerReplica": 50}})
    assert auto.mode is sc.ScalingMode.REACTIVE and auto.target_per_replica == 50.0
    assert auto.behavior == sc.Behavior()
    assert (auto.startup_delay, auto.interval, auto.tolerance, auto.horizon) == (60.0, 30.0, 0.1, 90.0)
    assert auto.forecast == fc.ForecastConfig()


def test_parse_full_spec() -> None:
    auto = sc.parse(
        {
            "mode": "Predictive",
            "metric": {"query": "q", "targetPerReplica": 12.5},
            "forecast": {
                "method": "SeasonalNaive",
                "seasonality": "Weekly",
                "history": "336h",
                "quantile": 0.95,
                "refitInterval": "6h",
            },
            "startupDelay": "2m",
            "interval": "15s",
            "tolerance": 0.05,
            "allowForecastScaleIn": True,
            "behavior": {
                "scaleUp": {"stabilizationWindow": "30s", "selectPolicy": "Min"},
                "scaleDown": {
                    "stabilizationWindow": "10m",
                    "policies": [{"type": "Pods", "value": 2, "period": "1m"}],
                    "selectPolicy": "Disabled",
                },
            },
        }
    )
    assert (
        auto.forecast.method is fc.Method.SEASONAL_NAIVE
        and auto.forecast.seasonality is fc.Seasonality.WEEKLY
    )
    assert (auto.forecast.history, auto.forecast.quantile, auto.forecast.refit_interval) == (
        336 * 3600,
        0.95,
        6 * 3600,
    )
    assert (auto.startup_delay, auto.interval, auto.tolerance, auto.allow_forecast_scale_in) == (
        120,
        15,
        0.05,
        True,
    )
    assert auto.behavior.scale_up == sc.ScalingRules(30.0, sc.DEFAULT_SCALE_UP.policies, sc.SelectPolicy.MIN)
    assert auto.behavior.scale_down == sc.ScalingRules(
        600.0, (sc.RatePolicy(sc.PolicyType.PODS, 2, 60.0),), sc.SelectPolicy.DISABLED
    )


METRIC = {"query": "q", "targetPerReplica": 10}


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"mode": "Sometimes"}, "spec.autoscaling.mode"),
        ({"mode": "Reactive"}, "spec.autoscaling.metric.query"),
        (
            {"mode": "Reactive", "metric": {"query": "q", "targetPerReplica": 0}},
            "spec.autoscaling.metric.targetPerReplica",
        ),
        (
            {"mode": "Reactive", "metric": {"query": "q", "targetPerReplica": "5"}},
            "spec.autoscaling.metric.targetPerReplica",
        ),
        (
            {"mode": "Predictive", "metric": METRIC, "forecast": {"quantile": 0.2}},
            "spec.autoscaling.forecast.quantile",
        ),
        (
            {"mode": "Predictive", "metric": METRIC, "forecast": {"method": "Naive"}},
            "spec.autoscaling.forecast.method",
        ),
        (
            {"mode": "Predictive", "metric": METRIC, "forecast": {"history": "0s"}},
            "spec.autoscaling.forecast.history",
        ),
        (
            {"mode": "Predictive", "metric": METRIC, "forecast": {"seasonality": "Hourly"}},
            "spec.autoscaling.forecast.seasonality",
        ),
        ({"mode": "Reactive", "metric": METRIC, "interval": "soon"}, "spec.autoscaling.interval"),
        ({"mode": "Reactive", "metric": METRIC, "tolerance": 2}, "spec.autoscaling.tolerance"),
        (
            {"mode": "Reactive", "metric": METRIC, "allowForecastScaleIn": "yes"},
            "spec.autoscaling.allowForecastScaleIn",
        ),
        (
            {
                "mode": "Reactive",
                "metric": METRIC,
                "behavior": {"scaleUp": {"policies": [{"type": "Nodes", "value": 1, "period": "1m"}]}},
            },
            "spec.autoscaling.behavior.scaleUp.policies[0].type",
        ),
        (
            {
                "mode": "Reactive",
                "metric": METRIC,
                "behavior": {"scaleDown": {"policies": [{"type": "Pods", "value": 0, "period": "1m"}]}},
            },
            "spec.autoscaling.behavior.scaleDown.policies[0].value",
        ),
        (
            {
                "mode": "Reactive",
                "metric": METRIC,
                "behavior": {"scaleDown": {"policies": [{"type": "Pods", "value": 1}]}},
            },
            "spec.autoscaling.behavior.scaleDown.policies[0].period",
        ),
        (
            {"mode": "Reactive", "metric": METRIC, "behavior": {"scaleDown": {"selectPolicy": "Any"}}},
            "spec.autoscaling.behavior.scaleDown.selectPolicy",
        ),
        ({"mode": "Reactive", "metric": METRIC, "behavior": "fast"}, "spec.autoscaling.behavior"),
        (
            {"mode": "Predictive", "metric": METRIC, "forecast": {"seasonality": "Daily", "period": "5m"}},
            "spec.autoscaling.forecast.period",
        ),
        (
            {"mode": "Predictive", "metric": METRIC, "forecast": {"step": "1m", "period": "90s"}},
            "spec.autoscaling.forecast.period",
        ),
        (
            {"mode": "Predictive", "metric": METRIC, "forecast": {"step": "0s"}},
            "spec.autoscaling.forecast.step",
        ),
    ],
)
def test_parse_rejects_bad_specs(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as info:
        sc.parse(raw)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("forecast", "step", "candidates", "max_gap"),
    [
        ({}, 300.0, (fc.DAY, fc.WEEK), 1800.0),
        ({"step": "10s"}, 10.0, (fc.DAY, fc.WEEK), 60.0),
        ({"step": "5s", "period": "5m"}, 5.0, (300.0,), 30.0),
        ({"period": "1h"}, 300.0, (3600.0,), 1800.0),
    ],
)
def test_parse_step_and_custom_period(
    forecast: dict[str, Any], step: float, candidates: tuple[float, ...], max_gap: float
) -> None:
    auto = sc.parse({"mode": "Predictive", "metric": METRIC, "forecast": forecast})
    assert (auto.forecast.step, auto.forecast.candidate_periods, auto.forecast.max_gap) == (
        step,
        candidates,
        max_gap,
    )


def test_summary_status_leaves_absent_values_out() -> None:
    bare = sc.summary_status(
        sc.ForecastSummary("None", 90.0, sc.ScalingMode.PREVIEW, fallback="ForecastMissing: x")
    )
    assert bare == {"method": "None", "horizon": "1m30s", "mode": "Preview", "fallback": "ForecastMissing: x"}
    full = sc.summary_status(
        sc.ForecastSummary("HoltWinters", 90.0, sc.ScalingMode.PREDICTIVE, 12.5, 60.0, 0.5, 3.0, 0.0)
    )
    assert full["predictedPeakAt"] == "1970-01-01T00:01:00Z" and full["lastFitTime"] == "1970-01-01T00:00:00Z"
    assert (full["predictedPeak"], full["mase"]) == (12.5, 0.5)


def test_scaling_state_round_trips() -> None:
    # What it does with garbage is the stored-state rule: tests/unit/test_stored_state.py.
    state = sc.ScalingState(recommendations=((1.0, 3), (2.0, 4)), events=((2.0, -1),))
    assert sc.ScalingState.from_dict(state.to_dict()) == state
