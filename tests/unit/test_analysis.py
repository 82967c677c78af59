"""Table-driven tests of analysis verdicts and the counters that turn them into outcomes."""

from __future__ import annotations

import json
import math

import pytest

from homeostat.core import analysis as an
from homeostat.core import fields

RATE = an.MetricSpec("error-rate", "q", None, 0.05)
LATENCY = an.MetricSpec("latency", "q", 0.0, 0.3)
LIMITS = an.AnalysisSpec(failure_limit=1, inconclusive_limit=2, consecutive_error_limit=2, metrics=(RATE,))


@pytest.mark.parametrize(
    ("metric", "value", "error", "verdict"),
    [
        (RATE, 0.01, None, an.AnalysisVerdict.PASS),
        (RATE, 0.05, None, an.AnalysisVerdict.PASS),  # bounds are inclusive
        (RATE, 0.051, None, an.AnalysisVerdict.FAIL),
        (LATENCY, -0.1, None, an.AnalysisVerdict.FAIL),
        (LATENCY, 0.0, None, an.AnalysisVerdict.PASS),
        (RATE, None, None, an.AnalysisVerdict.INCONCLUSIVE),  # no sample
        (RATE, math.nan, None, an.AnalysisVerdict.INCONCLUSIVE),  # 0/0 in PromQL
        (RATE, math.inf, None, an.AnalysisVerdict.FAIL),
        (an.MetricSpec("any", "q"), math.inf, None, an.AnalysisVerdict.PASS),  # no bounds, no failure
        (RATE, None, "connection refused", an.AnalysisVerdict.ERROR),
        (RATE, 0.01, "partial response", an.AnalysisVerdict.ERROR),  # an error wins over a value
    ],
)
def test_evaluate(
    metric: an.MetricSpec, value: float | None, error: str | None, verdict: an.AnalysisVerdict
) -> None:
    assert an.evaluate(metric, an.Measurement(metric.name, value, error, 1.0)) is verdict


def test_a_metric_nobody_measured_is_inconclusive_never_a_pass() -> None:
    spec = an.AnalysisSpec(metrics=(RATE, LATENCY))
    results = an.assess(spec, [an.Measurement("error-rate", 0.0, None, 5.0)], at=5.0)
    assert [r.verdict for r in results] == [an.AnalysisVerdict.PASS, an.AnalysisVerdict.INCONCLUSIVE]
    assert an.run_verdict(results) is an.AnalysisVerdict.INCONCLUSIVE


def test_assess_ignores_unknown_metrics_and_keeps_the_latest_sample() -> None:
    samples = [an.Measurement("error-rate", 0.9, at=1.0), an.Measurement("error-rate", 0.0, at=2.0)]
    samples.append(an.Measurement("other", 9.0, at=2.0))
    (result,) = an.assess(an.AnalysisSpec(metrics=(RATE,)), samples, at=2.0)
    assert result.verdict is an.AnalysisVerdict.PASS


@pytest.mark.parametrize(
    ("verdicts", "worst"),
    [
        ([], an.AnalysisVerdict.INCONCLUSIVE),
        (["Pass", "Pass"], an.AnalysisVerdict.PASS),
        (["Pass", "Inconclusive"], an.AnalysisVerdict.INCONCLUSIVE),
        (["Inconclusive", "Error"], an.AnalysisVerdict.ERROR),
        (["Error", "Fail", "Pass"], an.AnalysisVerdict.FAIL),
    ],
)
def test_the_worst_verdict_decides_a_run(verdicts: list[str], worst: an.AnalysisVerdict) -> None:
    results = [an.MetricResult(an.Measurement("m"), an.AnalysisVerdict(v)) for v in verdicts]
    assert an.run_verdict(results) is worst


def _run(verdict: an.AnalysisVerdict, value: float | None = 0.5) -> tuple[an.MetricResult, ...]:
    error = "timeout" if verdict is an.AnalysisVerdict.ERROR else None
    return (an.MetricResult(an.Measurement("error-rate", value, error), verdict),)


P, F, N, E = (
    an.AnalysisVerdict.PASS,
    an.AnalysisVerdict.FAIL,
    an.AnalysisVerdict.INCONCLUSIVE,
    an.AnalysisVerdict.ERROR,
)  # N: no data


@pytest.mark.parametrize(
    ("runs", "outcome", "counters"),
    [
        # counters: (failures, inconclusives, consecutive errors)
        ([P], an.AnalysisOutcome.PASSING, (0, 0, 0)),
        ([F], an.AnalysisOutcome.PENDING, (1, 0, 0)),  # within failureLimit, but not a pass
        ([F, P], an.AnalysisOutcome.PASSING, (1, 0, 0)),
        ([F, P, F], an.AnalysisOutcome.FAILED, (2, 0, 0)),  # failures are counted, not consecutive
        ([N, N], an.AnalysisOutcome.PENDING, (0, 2, 0)),
        ([N, P, N, N], an.AnalysisOutcome.INCONCLUSIVE, (0, 3, 0)),
        ([E, E], an.AnalysisOutcome.PENDING, (0, 0, 2)),
        ([E, E, E], an.AnalysisOutcome.PENDING, (0, 1, 3)),  # beyond the error limit: counts as no data
        ([E, E, P, E, E], an.AnalysisOutcome.PENDING, (0, 0, 2)),  # a good run resets the error streak
        ([E, E, E, E, E], an.AnalysisOutcome.INCONCLUSIVE, (0, 3, 5)),
        ([F, N, N, N, F], an.AnalysisOutcome.FAILED, (2, 3, 0)),  # failure outranks inconclusive
    ],
)
def test_record(
    runs: list[an.AnalysisVerdict], outcome: an.AnalysisOutcome, counters: tuple[int, int, int]
) -> None:
    state, result = an.AnalysisState(), an.AnalysisOutcome.PENDING
    for i, verdict in enumerate(runs):
        state, result = an.record(state, LIMITS, _run(verdict), now=30.0 * i)
    assert result is outcome
    assert (state.failures, state.inconclusives, state.consecutive_errors) == counters
    assert state.runs == len(runs)
    assert state.last_run_at == 30.0 * (len(runs) - 1)
    assert an.outcome(state, LIMITS) is outcome


def test_a_failure_names_the_metric_and_value() -> None:
    state, _ = an.record(an.AnalysisState(), LIMITS, _run(F, 0.12), now=1.0)
    assert state.last_failure == an.Failure("error-rate", 0.12, "error-rate = 0.12, allowed [-inf, 0.05]")
    state, _ = an.record(state, LIMITS, _run(P, 0.0), now=2.0)
    assert state.last_failure is not None  # kept for the record after a later pass


def test_resuming_resets_only_the_no_data_counters() -> None:
    state = an.AnalysisState(runs=9, failures=1, inconclusives=4, consecutive_errors=3, last_run_at=5.0)
    assert an.reset_inconclusive(state) == an.AnalysisState(runs=9, failures=1, last_run_at=5.0)


@pytest.mark.parametrize(
    ("last_run_at", "now", "expected"), [(None, 0.0, True), (100.0, 129.9, False), (100.0, 130.0, True)]
)
def test_due(last_run_at: float | None, now: float, expected: bool) -> None:
    assert an.due(an.AnalysisState(last_run_at=last_run_at), an.AnalysisSpec(interval=30.0), now) is expected


@pytest.mark.parametrize(
    "state",
    [
        an.AnalysisState(),
        an.AnalysisState(3, 1, 1, 0, 1234.5, an.AnalysisVerdict.PASS, an.Failure("m", 0.2, "m = 0.2")),
        an.AnalysisState(1, 1, 0, 0, 1.0, an.AnalysisVerdict.FAIL, an.Failure("m", math.inf, "m = inf")),
        an.AnalysisState(1, 0, 0, 1, 1.0, an.AnalysisVerdict.ERROR, an.Failure("m", None, "m: query failed")),
    ],
)
def test_storage_round_trip(state: an.AnalysisState) -> None:
    stored = json.loads(json.dumps(state.as_in_storage(), allow_nan=False))
    assert an.AnalysisState.from_storage(stored) == state


def test_storage_accepts_ints_for_times_and_absent_keys() -> None:
    assert an.AnalysisState.from_storage({"lastRunAt": 12, "runs": 2}) == an.AnalysisState(
        runs=2, last_run_at=12.0
    )
    assert an.AnalysisState.from_storage(None) == an.AnalysisState()


@pytest.mark.parametrize(
    "raw",
    [
        {"runs": -1},
        {"runs": "3"},
        {"failures": True},
        {"lastRunAt": "yesterday"},
        {"lastVerdict": "Maybe"},
        {"lastFailure": "m"},
        {"lastFailure": {"metric": "m", "value": "lots"}},
    ],
)
def test_storage_rejects_garbage(raw: dict[str, object]) -> None:
    with pytest.raises(fields.StorageError):
        an.AnalysisState.from_storage(raw)
