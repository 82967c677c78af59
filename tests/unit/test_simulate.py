"""``homeostat simulate``: one-line errors on bad input, and an honest comparison on a trace."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from homeostat import simulate

STEP = 1800
EPOCH = 1_700_000_000 // 86400 * 86400


def seasonal_trace(days: int, seed: int = 7) -> list[tuple[int, float]]:
    """Two daily harmonics and noise: a morning ramp steeper than one bin's worth of pods."""
    n = days * 86400 // STEP
    phase = 2 * np.pi * np.arange(n) * STEP / 86400
    values = 300 + 200 * np.sin(phase - np.pi / 2) + 60 * np.sin(2 * phase)
    values = np.maximum(values + np.random.default_rng(seed).normal(0, 15, n), 5.0)
    return [(EPOCH + i * STEP, round(float(v), 2)) for i, v in enumerate(values)]


def write(tmp_path: Path, rows: list[tuple[object, object]], header: str = "timestamp,value") -> str:
    path = tmp_path / "trace.csv"
    path.write_text("\n".join([header, *(f"{t},{v}" for t, v in rows)]) + "\n")
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = simulate.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


GOOD = [(EPOCH + i * 300, 10.0 + i % 5) for i in range(40)]

BAD_TRACES: dict[str, tuple[str, list[tuple[object, object]], str]] = {
    "missing value column": ("timestamp,load", GOOD, "missing value"),
    "missing both columns": ("a,b", GOOD, "missing timestamp, value"),
    "not increasing": ("timestamp,value", [*GOOD[:5], GOOD[3], *GOOD[6:]], "not increasing"),
    "irregular": ("timestamp,value", [*GOOD[:5], *GOOD[6:]], "irregular interval 600s, expected 300s"),
    "negative value": ("timestamp,value", [*GOOD[:3], (GOOD[3][0], -1.0), *GOOD[4:]], "is negative"),
    "not a number": ("timestamp,value", [*GOOD[:3], (GOOD[3][0], "lots"), *GOOD[4:]], "is not a number"),
    "infinite value": ("timestamp,value", [*GOOD[:3], (GOOD[3][0], "inf"), *GOOD[4:]], "is not finite"),
    "bad timestamp": ("timestamp,value", [*GOOD[:3], ("yesterday", 1.0), *GOOD[4:]], "neither ISO 8601"),
    "empty value": ("timestamp,value", [*GOOD[:3], (GOOD[3][0], ""), *GOOD[4:]], "are required"),
    "one row": ("timestamp,value", GOOD[:1], "at least 2"),
    "too short for warm-up": ("timestamp,value", GOOD, "too short for a 3d warm-up"),
}


@pytest.mark.parametrize("case", list(BAD_TRACES), ids=list(BAD_TRACES))
def test_bad_traces_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    header, rows, fragment = BAD_TRACES[case]
    code, out, err = run(capsys, write(tmp_path, rows, header), "--capacity", "10")
    assert code == 2 and out == ""
    assert err.startswith("homeostat simulate: error: ") and err.count("\n") == 1
    assert fragment in err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--capacity", "0"], "--capacity must be positive"),
        (["--capacity", "ten"], "invalid float value"),
        (["--target-utilization", "1.5"], "--target-utilization must be in (0, 1]"),
        (["--interval", "0s"], "--interval must be positive"),
        (["--warmup", "soon"], "not a duration"),
        (["--min", "5", "--max", "2"], "--min <= --max"),
        (["--policy", "psychic"], "invalid choice"),
        (["--quantile", "0.2"], "--quantile must be in"),
        ([], "--capacity"),
    ],
)
def test_bad_options_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    if "--capacity" not in args and args:
        args = [*args, "--capacity", "10"]
    code, out, err = run(capsys, write(tmp_path, GOOD), "--warmup", "1h", *args)
    assert code == 2 and out == ""
    assert err.startswith("homeostat simulate: error: ") and err.count("\n") == 1
    assert fragment in err


def test_unreadable_file_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, str(tmp_path / "nope.csv"), "--capacity", "10")
    assert code == 2 and err.count("\n") == 1 and "cannot read trace" in err


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is not None, reason="matplotlib is installed")
def test_plot_without_matplotlib_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys, write(tmp_path, GOOD), "--capacity", "10", "--warmup", "1h", "--plot", "x.png"
    )
    assert code == 1 and out == ""
    assert err.startswith("homeostat simulate: error: --plot needs matplotlib") and err.count("\n") == 1


def test_iso_timestamps_and_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [(f"2026-03-01T{h:02d}:{m:02d}:00Z", 40.0 + 30 * (h % 3)) for h in range(6) for m in (0, 30)]
    path = write(tmp_path, rows)
    code, out, err = run(
        capsys,
        path,
        "--capacity",
        "10",
        "--warmup",
        "1h",
        "--policy",
        "reactive",
        "--startup-delay",
        "5m",
        "--json",
    )
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["trace"]["points"] == 12 and report["trace"]["step"] == 1800
    assert report["trace"]["start"] == "2026-03-01T00:00:00+00:00"
    [reactive] = report["policies"]
    assert reactive["policy"] == "reactive" and reactive["forecastMase"] is None
    assert 0 < reactive["underprovisionedTimeFraction"] < 1
    assert reactive["replicaHoursVsOracle"] > 1


def test_read_trace_accepts_unix_seconds_and_iso() -> None:
    unix = simulate.read_trace("timestamp,value\n100,1\n160,2\n220,3\n")
    iso = simulate.read_trace("Timestamp, Value\n1970-01-01T00:01:40,1\n1970-01-01T00:02:40+00:00,2\n")
    assert (unix.start, unix.step, unix.values) == (100.0, 60.0, (1.0, 2.0, 3.0))
    assert (iso.start, iso.step, iso.values) == (100.0, 60.0, (1.0, 2.0))


def test_steady_demand_is_served_by_every_policy() -> None:
    trace = simulate.Trace(0.0, 600.0, (100.0,) * (6 * 24 * 3))
    settings = simulate.SimulationSettings(capacity=10.0, warmup=86400.0, startup_delay=60.0, interval=60.0)
    results = simulate.simulate(trace, settings, simulate.POLICIES)
    for result in results:
        assert result.underprovisioned_time_fraction == 0.0 and result.unserved_demand_fraction == 0.0
        assert result.scaling_actions == 0
        # ceil(100 / (10 * 0.7)) = 15 pods against an oracle of 10 for two scored days.
        assert result.replica_hours == pytest.approx(
            15 * 48
        ) and result.oracle_replica_hours == pytest.approx(10 * 48)


def test_predictive_beats_reactive_at_similar_cost() -> None:
    """On a daily trace, forecasting avoids the startup-delay shortfall of every morning ramp.

    Policies are compared at similar replica-hours: reactive at 80% target utilisation against
    predictive at whichever of several utilisations costs no more than 2% extra.
    """
    rows = seasonal_trace(days=6)
    trace = simulate.Trace(float(rows[0][0]), float(STEP), tuple(v for _, v in rows))
    settings = simulate.SimulationSettings(
        capacity=10.0,
        startup_delay=600.0,
        interval=300.0,
        warmup=3 * 86400.0,
        target_utilization=(0.8, 0.85, 0.9),
    )
    results = simulate.simulate(trace, settings, ["reactive", "predictive"])
    by_key = {(r.policy, r.target_utilization): r for r in results}
    reactive = by_key["reactive", 0.8]
    affordable = [
        r for r in results if r.policy == "predictive" and r.replica_hours <= 1.02 * reactive.replica_hours
    ]
    assert affordable, [(r.target_utilization, r.replica_hours) for r in results]
    best = min(affordable, key=lambda r: r.underprovisioned_time_fraction)
    assert reactive.underprovisioned_time_fraction > 0.01  # the trace does make reactive scaling late
    assert best.underprovisioned_time_fraction < reactive.underprovisioned_time_fraction / 2
    assert best.unserved_demand_fraction < reactive.unserved_demand_fraction
    # The forecast was used, and it was a good one on held-out data.
    assert best.forecast_fallback_fraction is not None and best.forecast_fallback_fraction < 0.1
    assert best.forecast_mase is not None and best.forecast_mase < 1.0
    assert best.forecast_smape is not None and best.forecast_smape < 20.0
    # Headroom buys safety for both: at a lower utilisation target reactive is short less often.
    assert by_key["reactive", 0.9].underprovisioned_time_fraction > reactive.underprovisioned_time_fraction


def test_text_report_lists_every_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = seasonal_trace(days=4)
    code, out, err = run(
        capsys,
        write(tmp_path, rows),
        "--capacity",
        "10",
        "--warmup",
        "3d",
        "--method",
        "SeasonalNaive",
        "--interval",
        "5m",
    )
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[1].split()[:3] == ["policy", "target", "under-prov"]
    assert [line.split()[0] for line in lines[2:5]] == ["reactive", "predictive", "hybrid"]
    assert lines[-1].startswith("oracle ceil(demand/capacity):")


def test_a_compressed_period_is_found_only_when_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A "day" of two minutes (as in make demo) is seasonal only to a replay told its period."""
    step, period = 2, 120
    rows = [
        (EPOCH + i * step, round(40 + 30 * float(np.sin(2 * np.pi * i * step / period)), 3))
        for i in range(600)
    ]
    trace = write(tmp_path, rows)
    common = ("--capacity", "20", "--startup-delay", "10s", "--interval", "2s", "--warmup", "6m", "--json")

    def predictive(*extra: str) -> dict[str, object]:
        code, out, _ = run(capsys, trace, *common, "--policy", "predictive", *extra)
        assert code == 0
        return dict(json.loads(out)["policies"][0])

    told, untold = predictive("--period", "2m"), predictive()
    assert told["forecastFallbackFraction"] == 0.0 and untold["forecastFallbackFraction"] == 1.0
    assert float(told["forecastSmape"]) < 1.0 < float(untold["forecastSmape"])  # type: ignore[arg-type]
    code, _, err = run(capsys, trace, *common, "--period", "-5s")
    assert code == 2 and "--period" in err
