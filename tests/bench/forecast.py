"""Benchmark: what forecasting costs per series and per cycle, and whether it pays on real load.

1. Median cost per series of an optimised Holt-Winters fit and of a fixed-parameter update
   (what the operator runs between refits), through ``homeostat.core.forecast`` itself.
2. Wall time to forecast 1000 series in one cycle (updates, serial and with a 2-process pool),
   and the daily refit cost spread over cycles.
3. ``homeostat simulate`` on a real measured load trace that ships inside a PyPI package:
   half-hourly electricity demand of England and Wales, 5 June - 27 August 2000 (Taylor 2003,
   ``pmdarima.datasets.load_taylor``), scaled to requests per second. Predictive and hybrid are
   compared with reactive at matched replica-hours (interpolated along a target-utilisation
   sweep), with a 180 s startup delay, scored after a 14-day warm-up.

Usage: python tests/bench/forecast.py [--series 1000] [--repeat 15] [--quick]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "operator"))

from homeostat import simulate  # noqa: E402
from homeostat.core import forecast as fc  # noqa: E402

DAY = 86400.0
STARTUP_DELAY = 180.0
CAPACITY = 20.0  # rps one pod serves
HORIZON = STARTUP_DELAY + 60  # what the operator looks ahead: startup delay + one interval
RPS_PER_MW = 0.01  # 18.6-38.8 GW -> 186-388 rps: 10-20 pods


def taylor() -> np.ndarray:
    from pmdarima.datasets import load_taylor  # a real trace, shipped inside the wheel

    return np.asarray(load_taylor(), dtype=np.float64)


def series_at(
    step: float, raw: np.ndarray, days: float, scale: float = 1.0
) -> tuple[list[float], list[float]]:
    """The last ``days`` of the half-hourly trace on a ``step`` grid (linear between readings)."""
    t_raw = np.arange(raw.size) * 1800.0
    t = np.arange(t_raw[-1] - days * DAY + step, t_raw[-1] + step / 2, step)
    return t.tolist(), (np.interp(t, t_raw, raw) * scale).tolist()


def timed(call: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        out.append(time.perf_counter() - started)
    return out


def per_series_costs(raw: np.ndarray, repeat: int) -> dict[str, tuple[float, float]]:
    """(median fit, median update) seconds per configuration."""
    results = {}
    for label, step in (
        ("30 min step, m=48, 7 d (n=336)", 1800.0),
        ("5 min step, m=288, 7 d (n=2016)", 300.0),
    ):
        config = fc.ForecastConfig(step=step, seasonality=fc.Seasonality.DAILY)
        t, v = series_at(step, raw, 7)
        now = t[-1] + 1

        def fit(
            t: list[float] = t, v: list[float] = v, now: float = now, config: fc.ForecastConfig = config
        ) -> None:
            result, _ = fc.forecast(t, v, now=now, horizon=HORIZON, config=config)
            assert result.refitted and result.fallback is None, result.message

        _, state = fc.forecast(t, v, now=now, horizon=HORIZON, config=config)

        def update(
            t: list[float] = t,
            v: list[float] = v,
            now: float = now,
            config: fc.ForecastConfig = config,
            state: fc.ModelState | None = state,
        ) -> None:
            result, _ = fc.forecast(t, v, now=now, horizon=HORIZON, config=config, state=state)
            assert not result.refitted and result.fallback is None, result.message

        results[label] = (statistics.median(timed(fit, repeat)), statistics.median(timed(update, repeat)))
    return results


# Per-process input of the fleet workers (set by the pool initializer, not passed per task).
_WORK: list[tuple[list[float], list[float], float, fc.ModelState | None]] = []


def _update_one(index: int) -> float:
    """One series of the fleet: the shared shape, scaled per series so no two are equal."""
    t, v, now, state = _WORK[0]
    config = fc.ForecastConfig(step=300.0, seasonality=fc.Seasonality.DAILY)
    scale = 0.5 + (index % 97) / 97
    result, _ = fc.forecast(t, [x * scale for x in v], now=now, horizon=240, config=config, state=state)
    return result.point[0] if result.point else float("nan")


def _init(work: tuple[list[float], list[float], float, fc.ModelState | None]) -> None:
    _WORK[:] = [work]


def fleet_cycle(raw: np.ndarray, series: int) -> tuple[float, float, int]:
    """Seconds to update ``series`` forecasts: serially, and over a pool like the operator's."""
    config = fc.ForecastConfig(step=300.0, seasonality=fc.Seasonality.DAILY)
    t, v = series_at(300.0, raw, 7)
    now = t[-1] + 1
    _, state = fc.forecast(t, v, now=now, horizon=240, config=config)
    work = (t, v, now, state)
    _init(work)
    started = time.perf_counter()
    for i in range(series):
        _update_one(i)
    serial = time.perf_counter() - started
    workers = min(2, os.cpu_count() or 1)
    # As the operator's pool is (handlers/autoscaling.py): spawned workers with one BLAS thread
    # each (with a thread per core in every worker, two workers were no faster than one), kept
    # alive between cycles, so their start-up is not part of a cycle.
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=spawn, initializer=_init, initargs=(work,)
    ) as pool:
        list(pool.map(_update_one, range(4 * workers)))  # start every worker
        started = time.perf_counter()
        list(pool.map(_update_one, range(series), chunksize=25))
        pooled = time.perf_counter() - started
    return serial, pooled, workers


def matched(results: Sequence[simulate.PolicyResult], policy: str, hours: float) -> dict[str, float] | None:
    """A policy's scores interpolated to ``hours`` replica-hours along its utilisation sweep."""
    runs = sorted((r for r in results if r.policy == policy), key=lambda r: r.replica_hours)
    for low, high in itertools.pairwise(runs):
        if low.replica_hours <= hours <= high.replica_hours:
            w = (
                0.0
                if high.replica_hours == low.replica_hours
                else (hours - low.replica_hours) / (high.replica_hours - low.replica_hours)
            )
            return {
                "target": low.target_utilization + w * (high.target_utilization - low.target_utilization),
                "under": low.underprovisioned_time_fraction
                + w * (high.underprovisioned_time_fraction - low.underprovisioned_time_fraction),
                "unserved": low.unserved_demand_fraction
                + w * (high.unserved_demand_fraction - low.unserved_demand_fraction),
                "actions": low.scaling_actions + w * (high.scaling_actions - low.scaling_actions),
            }
    return None


def ratio(a: float, b: float) -> str:
    if b == 0:
        return "n/a (reactive is 0)" if a else "1.00 (both 0)"
    return f"{a / b:.2f}"


def replay(raw: np.ndarray, quick: bool) -> None:
    values = tuple(float(x) * RPS_PER_MW for x in raw)
    days = 28 if quick else len(values) * 1800 / DAY
    values = values[: int(days * DAY / 1800)]
    trace = simulate.Trace(start=0.0, step=1800.0, values=values)
    targets = (0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0)
    settings = simulate.SimulationSettings(
        capacity=CAPACITY,
        startup_delay=STARTUP_DELAY,
        interval=60.0,
        target_utilization=targets,
        warmup=14 * DAY,
        max_replicas=60,
        # A week of history: the daily season is found (two weeks would pick a weekly one
        # with no backtest yet, and every forecast would be ignored).
        history=7 * DAY,
    )
    started = time.perf_counter()
    results = simulate.simulate(trace, settings, simulate.POLICIES)
    elapsed = time.perf_counter() - started
    print(
        f"\n3. homeostat simulate on Taylor (2003) electricity demand x {RPS_PER_MW} rps/MW: "
        f"{len(values)} half-hour bins ({len(values) * 1800 / DAY:.0f} d), {CAPACITY:g} rps/pod, "
        f"startup {STARTUP_DELAY:.0f} s, decision every 60 s, 14 d warm-up, replay took {elapsed:.0f} s"
    )
    print(
        f"{'policy':<11}{'target':>7}{'under-prov':>11}{'unserved':>10}{'replica-h':>10}{'vs oracle':>10}"
        f"{'actions':>8}{'MASE':>7}"
    )
    for r in results:
        mase = "-" if r.forecast_mase is None else f"{r.forecast_mase:.3f}"
        vs = r.replica_hours_vs_oracle or float("nan")
        print(
            f"{r.policy:<11}{r.target_utilization:>7.0%}{r.underprovisioned_time_fraction:>11.2%}"
            f"{r.unserved_demand_fraction:>10.3%}{r.replica_hours:>10.0f}{vs:>10.3f}{r.scaling_actions:>8}{mase:>7}"
        )
    for anchor in (0.8, 0.9, 0.95):
        base = next(r for r in results if r.policy == "reactive" and r.target_utilization == anchor)
        print(
            f"\nAt reactive-{anchor:.0%}'s cost ({base.replica_hours:.0f} replica-hours): reactive "
            f"under-provisioned {base.underprovisioned_time_fraction:.2%} of the time, "
            f"{base.unserved_demand_fraction:.3%} of demand unserved"
        )
        for policy in ("predictive", "hybrid"):
            m = matched(results, policy, base.replica_hours)
            if m is None:
                print(f"  {policy}: its sweep does not reach {base.replica_hours:.0f} replica-hours")
                continue
            print(
                f"  {policy:<10} (target {m['target']:.0%}): under-provisioned {m['under']:.2%} "
                f"(ratio to reactive {ratio(m['under'], base.underprovisioned_time_fraction)}), "
                f"unserved {m['unserved']:.3%} "
                f"(ratio {ratio(m['unserved'], base.unserved_demand_fraction)}), "
                f"actions {m['actions']:.0f} vs {base.scaling_actions}"
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="28 days of the trace instead of 84")
    args = parser.parse_args(argv)
    try:
        raw = taylor()
    except ImportError:
        print("needs pmdarima for its bundled trace: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")

    costs = per_series_costs(raw, args.repeat)
    print(f"\n1. Holt-Winters (add/add, damped trend, daily season) per series, median of {args.repeat}:")
    for label, (fit, update) in costs.items():
        print(
            f"  {label}: optimised fit {fit * 1000:.0f} ms, fixed-parameter update {update * 1000:.0f} ms "
            f"(fit/update {fit / update:.1f}x)"
        )

    serial, pooled, workers = fleet_cycle(raw, args.series)
    fit_5m = costs["5 min step, m=288, 7 d (n=2016)"][0]
    print(f"\n2. One cycle of {args.series} series (5 min step, fixed-parameter updates):")
    print(
        f"  serial {serial:.1f} s ({serial / args.series * 1000:.0f} ms/series); "
        f"{workers}-process pool {pooled:.1f} s (speed-up {serial / pooled:.2f}x)"
    )
    refits = args.series * fit_5m
    print(
        f"  daily refits of {args.series} series: {refits:.0f} s of CPU per day "
        f"({refits / (DAY / 300):.1f} s per 5-minute cycle if spread evenly)"
    )

    replay(raw, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
