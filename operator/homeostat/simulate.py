"""``homeostat simulate``: replay a demand trace through the autoscaler's own decision code.

Predictive scaling is easy to oversell, so the simulator answers one question honestly: on
this trace, how often is each policy short of capacity, and what does it cost? It drives the
same ``core.forecast`` and ``core.scaling`` functions the operator runs, with a deliberately
simple world: demand is constant within a trace bin, a decision is taken every interval, a pod
is paid for from the moment it is requested and serves only after the startup delay, and a
scale-down removes the newest pods first (as the Deployment controller does). Metrics count
only after the warm-up, which is there to fit the model and never scored.

Headroom (the target utilisation) dominates every result, so compare policies at similar
replica-hours: ``--target-utilization`` takes several values and every policy runs at each.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import importlib.util
import io
import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from homeostat.core import fields, scaling
from homeostat.core import forecast as fc
from homeostat.core.spec import Replicas

PROG = "homeostat simulate"
POLICIES = ("reactive", "predictive", "hybrid")
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class InputError(ValueError):
    """Bad trace or options: reported as one line, exit code 2."""


@dataclasses.dataclass(frozen=True)
class Trace:
    start: float  # Unix seconds of the first bin
    step: float
    values: tuple[float, ...]

    @property
    def duration(self) -> float:
        return self.step * len(self.values)


@dataclasses.dataclass(frozen=True)
class SimulationSettings:
    capacity: float
    startup_delay: float = 60.0
    interval: float = 30.0
    target_utilization: tuple[float, ...] = (0.7,)
    warmup: float = 3 * fc.DAY
    min_replicas: int = 1
    max_replicas: int = 100
    tolerance: float = 0.1
    quantile: float = 0.9
    seasonality: fc.Seasonality = fc.Seasonality.AUTO
    method: fc.Method = fc.Method.HOLT_WINTERS
    history: float = fc.WEEK
    period: float | None = None  # a seasonal period other than a day or a week, in seconds


@dataclasses.dataclass(frozen=True)
class PolicyResult:
    policy: str
    target_utilization: float
    underprovisioned_time_fraction: float
    unserved_demand_fraction: float
    replica_hours: float
    oracle_replica_hours: float
    scaling_actions: int
    forecast_mase: float | None = None
    forecast_smape: float | None = None
    forecast_fallback_fraction: float | None = None
    timeline: tuple[tuple[float, int], ...] = dataclasses.field(default=(), repr=False)

    @property
    def replica_hours_vs_oracle(self) -> float | None:
        if self.oracle_replica_hours <= 0:
            return None
        return self.replica_hours / self.oracle_replica_hours

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "targetUtilization": self.target_utilization,
            "underprovisionedTimeFraction": self.underprovisioned_time_fraction,
            "unservedDemandFraction": self.unserved_demand_fraction,
            "replicaHours": self.replica_hours,
            "oracleReplicaHours": self.oracle_replica_hours,
            "replicaHoursVsOracle": self.replica_hours_vs_oracle,
            "scalingActions": self.scaling_actions,
            "forecastMase": self.forecast_mase,
            "forecastSmape": self.forecast_smape,
            "forecastFallbackFraction": self.forecast_fallback_fraction,
        }


# --- input -------------------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``5m``, ``1h30m``, ``3d`` or a bare number of seconds."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pos, value = 0, 0.0
        for match in _DURATION.finditer(text):
            if match.start() != pos:
                break
            value += float(match.group(1)) * _SECONDS[match.group(2)]
            pos = match.end()
        if pos != len(text) or not text:
            raise InputError(f"{text!r} is not a duration like 30s, 5m, 1h30m or 3d") from None
    if not math.isfinite(value) or value < 0:
        raise InputError(f"{text!r} is not a non-negative duration")
    return value


def _timestamp(text: str, line: int) -> float:
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        try:
            return fields.parse_rfc3339(text, f"line {line}")
        except fields.SpecError:
            raise InputError(
                f"line {line}: timestamp {text!r} is neither ISO 8601 nor Unix seconds"
            ) from None
    if not math.isfinite(value):
        raise InputError(f"line {line}: timestamp {text!r} is not finite")
    return value


def read_trace(text: str) -> Trace:
    """Parse a CSV with ``timestamp`` and ``value`` columns at a regular interval."""
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip().lower() for name in (reader.fieldnames or [])]
    missing = [name for name in ("timestamp", "value") if name not in header]
    if missing:
        found = ", ".join(header) if header else "no header"
        raise InputError(
            f"trace needs columns timestamp and value; missing {', '.join(missing)} (found {found})"
        )
    reader.fieldnames = header
    times: list[float] = []
    values: list[float] = []
    for row in reader:
        line = reader.line_num
        raw_time, raw_value = row.get("timestamp"), row.get("value")
        if raw_time is None or raw_value is None or not raw_time.strip() or not raw_value.strip():
            raise InputError(f"line {line}: timestamp and value are required")
        when = _timestamp(raw_time, line)
        try:
            value = float(raw_value)
        except ValueError:
            raise InputError(f"line {line}: value {raw_value.strip()!r} is not a number") from None
        if not math.isfinite(value):
            raise InputError(f"line {line}: value {raw_value.strip()!r} is not finite")
        if value < 0:
            raise InputError(f"line {line}: value {value:g} is negative")
        if times:
            gap = when - times[-1]
            if gap <= 0:
                raise InputError(f"line {line}: timestamps are not increasing ({gap:g}s after the previous)")
            if len(times) > 1:
                step = times[1] - times[0]
                if abs(gap - step) > 1e-6 * step:
                    raise InputError(f"line {line}: irregular interval {gap:g}s, expected {step:g}s")
        times.append(when)
        values.append(value)
    if len(times) < 2:
        raise InputError(f"trace has {len(times)} data row(s); at least 2 are needed")
    return Trace(times[0], times[1] - times[0], tuple(values))


# --- simulation --------------------------------------------------------------------------------


def _autoscaling(
    policy: str, utilization: float, settings: SimulationSettings, trace: Trace
) -> scaling.AutoscalingSpec:
    mode = scaling.ScalingMode.REACTIVE if policy == "reactive" else scaling.ScalingMode.PREDICTIVE
    return scaling.AutoscalingSpec(
        mode=mode,
        query="trace",
        target_per_replica=settings.capacity * utilization,
        forecast=fc.ForecastConfig(
            method=settings.method,
            seasonality=settings.seasonality,
            step=trace.step,
            history=settings.history,
            quantile=settings.quantile,
            candidate_periods=(settings.period,) if settings.period else fc.ForecastConfig.candidate_periods,
            # At most one optimised fit per simulated day keeps a replay affordable; in
            # between, updates rerun the model with the stored parameters.
            refit_interval=fc.DAY,
        ),
        startup_delay=settings.startup_delay,
        interval=settings.interval,
        tolerance=settings.tolerance,
        # "predictive" follows the forecast both ways; "hybrid" only lets it add capacity.
        allow_forecast_scale_in=policy == "predictive",
    )


@dataclasses.dataclass
class _Pod:
    requested: float
    removed: float | None = None


@dataclasses.dataclass
class _Run:
    policy: str
    utilization: float
    spec: scaling.AutoscalingSpec
    active: list[_Pod]  # in request order
    state: scaling.ScalingState = dataclasses.field(default_factory=scaling.ScalingState)
    retired: list[_Pod] = dataclasses.field(default_factory=list)
    actions: int = 0
    decisions: int = 0
    fallbacks: int = 0
    timeline: list[tuple[float, int]] = dataclasses.field(default_factory=list)


class _Forecaster:
    """One forecast per trace bin, shared by every forecasting policy (their inputs are the
    same demand history), with the model state carried from bin to bin."""

    def __init__(self, trace: Trace, config: fc.ForecastConfig, horizon: float) -> None:
        self.trace = trace
        self.config = config
        self.horizon = horizon
        self.state: fc.ModelState | None = None
        self.index = -1
        self.result = fc.Forecast(fc.Method.NONE, step=trace.step)

    def at(self, index: int, now: float) -> fc.Forecast:
        if index != self.index:
            keep = max(1, math.ceil(self.config.history / self.trace.step))
            first = max(0, index + 1 - keep)
            times = [k * self.trace.step for k in range(first, index + 1)]
            values = self.trace.values[first : index + 1]
            # Later decisions in this bin look up to one bin further ahead.
            self.result, self.state = fc.forecast(
                times,
                values,
                now=now,
                horizon=self.horizon + self.trace.step,
                config=self.config,
                state=self.state,
            )
            self.index = index
        return self.result


def simulate(trace: Trace, settings: SimulationSettings, policies: Sequence[str]) -> list[PolicyResult]:
    """Replay ``trace`` under each policy at each target utilisation, policies varying fastest.

    Times inside are relative to the first bin.
    """
    step, demand = trace.step, np.asarray(trace.values, dtype=np.float64)
    end = trace.duration
    bounds = Replicas(settings.min_replicas, settings.max_replicas)
    runs = []
    for utilization in settings.target_utilization:
        for policy in policies:
            spec = _autoscaling(policy, utilization, settings, trace)
            initial = min(bounds.max, max(bounds.min, math.ceil(demand[0] / spec.target_per_replica)))
            # The trace starts in a steady state: the first pods are already serving.
            pods = [_Pod(-settings.startup_delay) for _ in range(initial)]
            runs.append(_Run(policy, utilization, spec, pods))
    forecaster = None
    if any(p != "reactive" for p in policies):
        forecaster = _Forecaster(trace, runs[-1].spec.forecast, runs[-1].spec.horizon)
    first_forecast_bin = max(0, math.floor(settings.warmup / step) - 1)
    predictions: list[tuple[float, float]] = []
    last_forecast: fc.Forecast | None = None
    period = 1

    decisions = math.ceil(end / settings.interval)
    for j in range(decisions):
        now = j * settings.interval
        index = min(len(demand) - 1, math.floor(now / step))
        forecast = None
        if forecaster is not None and index >= first_forecast_bin:
            forecast = forecaster.at(index, now)
            if forecast is not last_forecast:
                scored = last_forecast is not None and now >= settings.warmup
                if scored and last_forecast is not None and last_forecast.available:
                    times = last_forecast.times
                    if times and times[0] == index * step:
                        predictions.append((float(demand[index]), last_forecast.point[0]))
                if forecast.period:
                    period = round(forecast.period / step)
                last_forecast = forecast
        for run in runs:
            decision, run.state = scaling.decide(
                run.spec,
                current=len(run.active),
                bounds=bounds,
                metric=float(demand[index]),
                forecast=forecast if run.spec.mode is scaling.ScalingMode.PREDICTIVE else None,
                state=run.state,
                now=now,
            )
            _apply(run, decision.desired, now)
            if now >= settings.warmup:
                run.decisions += 1
                run.actions += int(decision.changed)
                run.fallbacks += int(decision.mode is scaling.ScalingMode.REACTIVE)
                run.timeline.append((now, len(run.active)))

    warm_bins = max(1, math.floor(settings.warmup / step))
    mase = smape = None
    if predictions:
        actual, predicted = (np.array(column) for column in zip(*predictions, strict=True))
        mase = fc.mase(actual, predicted, demand[:warm_bins], period)
        smape = fc.smape(actual, predicted)
    return [_score(run, trace, settings, mase, smape) for run in runs]


def _apply(run: _Run, desired: int, now: float) -> None:
    if desired > len(run.active):
        run.active.extend(_Pod(now) for _ in range(desired - len(run.active)))
    elif desired < len(run.active):
        # The Deployment controller deletes the youngest (least ready) pods first.
        for pod in run.active[desired:]:
            pod.removed = now
        run.retired.extend(run.active[desired:])
        del run.active[desired:]


def _score(
    run: _Run, trace: Trace, settings: SimulationSettings, mase: float | None, smape: float | None
) -> PolicyResult:
    step, end, start = trace.step, trace.duration, settings.warmup
    demand = np.asarray(trace.values, dtype=np.float64)
    times: list[float] = []
    ready_delta: list[int] = []
    paid_delta: list[int] = []
    for pod in (*run.retired, *run.active):
        removed = end if pod.removed is None else pod.removed
        times += [pod.requested, removed]
        paid_delta += [1, -1]
        ready_delta += [0, 0]
        ready_at = pod.requested + settings.startup_delay
        if ready_at < removed:
            times += [ready_at, removed]
            ready_delta += [1, -1]
            paid_delta += [0, 0]
    ev_t = np.asarray(times, dtype=np.float64)
    order = np.argsort(ev_t, kind="stable")
    ev_t = ev_t[order]
    ready_cum = np.cumsum(np.asarray(ready_delta)[order])
    paid_cum = np.cumsum(np.asarray(paid_delta)[order])
    bin_edges = np.arange(math.floor(start / step), len(demand) + 1) * step
    cuts = np.unique(np.concatenate((ev_t, bin_edges, [start, end])))
    cuts = cuts[(cuts >= start) & (cuts <= end)]
    seg_start, seg_len = cuts[:-1], np.diff(cuts)
    at = np.searchsorted(ev_t, seg_start, side="right") - 1
    ready = np.where(at >= 0, ready_cum[np.maximum(at, 0)], 0)
    paid = np.where(at >= 0, paid_cum[np.maximum(at, 0)], 0)
    load = demand[np.minimum(len(demand) - 1, np.floor(seg_start / step).astype(np.int64))]
    served = settings.capacity * ready
    short = load > served * (1 + 1e-12)
    total_time = float(seg_len.sum())
    total_demand = float((load * seg_len).sum())
    unserved = float((np.maximum(0.0, load - served) * seg_len).sum())
    oracle = float((np.ceil(load / settings.capacity - 1e-9) * seg_len).sum()) / 3600
    forecasting = run.policy != "reactive"
    return PolicyResult(
        policy=run.policy,
        target_utilization=run.utilization,
        underprovisioned_time_fraction=float((short * seg_len).sum()) / total_time if total_time else 0.0,
        unserved_demand_fraction=unserved / total_demand if total_demand else 0.0,
        replica_hours=float((paid * seg_len).sum()) / 3600,
        oracle_replica_hours=oracle,
        scaling_actions=run.actions,
        forecast_mase=mase if forecasting else None,
        forecast_smape=smape if forecasting else None,
        forecast_fallback_fraction=(run.fallbacks / run.decisions if run.decisions else None)
        if forecasting
        else None,
        timeline=tuple(run.timeline),
    )


# --- command line ------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors as the same single line as every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message}\n")


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "trace", help="CSV with columns timestamp (ISO 8601 or Unix seconds) and value (req/s)"
    )
    parser.add_argument("--capacity", type=float, required=True, help="requests/s one ready pod serves")
    parser.add_argument("--startup-delay", type=_duration_arg, default=60.0, help="request to ready (60s)")
    parser.add_argument("--interval", type=_duration_arg, default=30.0, help="time between decisions (30s)")
    parser.add_argument(
        "--target-utilization",
        type=float,
        nargs="+",
        default=[0.7],
        help="share of capacity to aim for, in (0, 1]; several values sweep it (0.7)",
    )
    parser.add_argument(
        "--warmup", type=_duration_arg, default=3 * fc.DAY, help="unscored model warm-up (3d)"
    )
    parser.add_argument("--min", type=int, default=1, dest="min_replicas", help="fewest replicas (1)")
    parser.add_argument("--max", type=int, default=100, dest="max_replicas", help="most replicas (100)")
    parser.add_argument(
        "--policy",
        nargs="+",
        choices=POLICIES,
        default=list(POLICIES),
        help="reactive (HPA), predictive (forecast both ways) and/or hybrid (forecast only adds)",
    )
    parser.add_argument("--tolerance", type=float, default=0.1, help="HPA tolerance (0.1)")
    parser.add_argument(
        "--quantile", type=float, default=0.9, help="forecast quantile to provision for (0.9)"
    )
    parser.add_argument("--seasonality", choices=[s.value for s in fc.Seasonality], default="Auto")
    parser.add_argument("--method", choices=["HoltWinters", "SeasonalNaive"], default="HoltWinters")
    parser.add_argument("--history", type=_duration_arg, default=fc.WEEK, help="history fitted on (7d)")
    parser.add_argument(
        "--period",
        type=_duration_arg,
        default=None,
        help="seasonal period to look for instead of a day and a week, e.g. 2m for a compressed trace",
    )
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="plot demand and capacity (needs matplotlib)")


def _settings(args: argparse.Namespace) -> SimulationSettings:
    if not args.capacity > 0 or not math.isfinite(args.capacity):
        raise InputError(f"--capacity must be positive, got {args.capacity:g}")
    for utilization in args.target_utilization:
        if not 0 < utilization <= 1:
            raise InputError(f"--target-utilization must be in (0, 1], got {utilization:g}")
    if args.interval <= 0:
        raise InputError("--interval must be positive")
    if args.min_replicas < 0 or args.max_replicas < 1 or args.min_replicas > args.max_replicas:
        raise InputError(
            f"need 0 <= --min <= --max and --max >= 1, got {args.min_replicas} and {args.max_replicas}"
        )
    if not 0 <= args.tolerance <= 1:
        raise InputError(f"--tolerance must be in [0, 1], got {args.tolerance:g}")
    if not 0.5 <= args.quantile <= 0.999:
        raise InputError(f"--quantile must be in [0.5, 0.999], got {args.quantile:g}")
    if args.history <= 0:
        raise InputError("--history must be positive")
    return SimulationSettings(
        capacity=args.capacity,
        startup_delay=args.startup_delay,
        interval=args.interval,
        target_utilization=tuple(dict.fromkeys(args.target_utilization)),
        warmup=args.warmup,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        tolerance=args.tolerance,
        quantile=args.quantile,
        seasonality=fc.Seasonality(args.seasonality),
        method=fc.Method(args.method),
        history=args.history,
        period=args.period,
    )


def _load(path: str) -> Trace:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read trace {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return read_trace(text)


def run(args: argparse.Namespace) -> int:
    """Run ``homeostat simulate`` with parsed arguments; return the exit code."""
    try:
        settings = _settings(args)
        trace = _load(args.trace)
        if settings.warmup + trace.step > trace.duration:
            raise InputError(
                f"trace covers {_human(trace.duration)}, too short for a {_human(settings.warmup)} warm-up "
                f"plus one {_human(trace.step)} bin"
            )
    except InputError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 2
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        sys.stderr.write(
            f"{PROG}: error: --plot needs matplotlib, which is not installed (pip install matplotlib)\n"
        )
        return 1
    policies = list(dict.fromkeys(args.policy))
    results = simulate(trace, settings, policies)
    if args.json:
        sys.stdout.write(json.dumps(_report(trace, settings, results), indent=2) + "\n")
    else:
        sys.stdout.write(_table(trace, settings, results) + "\n")
    if args.plot:
        _plot(args.plot, trace, settings, results)
    return 0


def main(argv: Sequence[str]) -> int:
    parser = _Parser(prog=PROG, description=__doc__.splitlines()[0] if __doc__ else None)
    add_arguments(parser)
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else 2
    return run(args)


# --- output ------------------------------------------------------------------------------------


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _report(trace: Trace, settings: SimulationSettings, results: Sequence[PolicyResult]) -> dict[str, Any]:
    return {
        "trace": {
            "points": len(trace.values),
            "step": trace.step,
            "start": dt.datetime.fromtimestamp(trace.start, dt.UTC).isoformat(),
            "scoredFrom": dt.datetime.fromtimestamp(trace.start + settings.warmup, dt.UTC).isoformat(),
        },
        "settings": {
            "capacity": settings.capacity,
            "startupDelay": settings.startup_delay,
            "interval": settings.interval,
            "targetUtilization": list(settings.target_utilization),
            "warmup": settings.warmup,
            "min": settings.min_replicas,
            "max": settings.max_replicas,
            "tolerance": settings.tolerance,
            "quantile": settings.quantile,
            "seasonality": settings.seasonality.value,
            "method": settings.method.value,
            "history": settings.history,
            "period": settings.period,
        },
        "policies": [r.to_dict() for r in results],
    }


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def _table(trace: Trace, settings: SimulationSettings, results: Sequence[PolicyResult]) -> str:
    scored = trace.duration - settings.warmup
    lines = [
        f"{len(trace.values)} bins of {_human(trace.step)}; scored {_human(scored)} after a "
        f"{_human(settings.warmup)} warm-up; capacity {settings.capacity:g}/s per ready pod",
        f"{'policy':<11} {'target':>6} {'under-prov':>10} {'unserved':>9} {'replica-h':>10} {'vs oracle':>9} "
        f"{'actions':>7} {'MASE':>6} {'sMAPE':>7} {'fallback':>8}",
    ]
    for r in results:
        lines.append(
            f"{r.policy:<11} {r.target_utilization:>6.0%} {r.underprovisioned_time_fraction:>10.2%} "
            f"{r.unserved_demand_fraction:>9.3%} "
            f"{r.replica_hours:>10.1f} {_fmt(r.replica_hours_vs_oracle, '.3f'):>9} {r.scaling_actions:>7} "
            f"{_fmt(r.forecast_mase, '.3f'):>6} {_fmt(r.forecast_smape, '.2f'):>7} "
            f"{_fmt(r.forecast_fallback_fraction, '.1%'):>8}"
        )
    if results:
        lines.append(f"oracle ceil(demand/capacity): {results[0].oracle_replica_hours:.1f} replica-hours")
    return "\n".join(lines)


def _plot(path: str, trace: Trace, settings: SimulationSettings, results: Sequence[PolicyResult]) -> None:
    # An optional dependency (checked before simulating), loaded by name as it ships no types.
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")

    hours = np.arange(len(trace.values)) * trace.step / 3600
    first = math.floor(settings.warmup / trace.step)
    fig, ax = plt.subplots(figsize=(12, 4))
    ax.step(hours[first:], np.asarray(trace.values)[first:], where="post", label="demand", color="black")
    for r in results:
        if r.timeline:
            t = np.array([p[0] for p in r.timeline]) / 3600
            ax.step(
                t,
                np.array([p[1] for p in r.timeline]) * settings.capacity,
                where="post",
                label=f"{r.policy} at {r.target_utilization:.0%}",
            )
    ax.set_xlabel("hours since trace start")
    ax.set_ylabel("requests/s (capacity = replicas x --capacity)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
