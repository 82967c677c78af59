"""Judging the metrics of a new revision, the way Argo Rollouts' analysis runs do.

A rollout must never promote on missing evidence, so a measurement gets one of four verdicts
instead of a bool, and each kind of bad news (failed checks, no data, query errors) has its own
counter and limit. The counters are persisted in the rollout's status so that an operator
restart neither forgets a failure nor counts one twice. Nothing here queries Prometheus: the
handler runs the queries and hands the ``Measurement``s in.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping, Sequence
from typing import Any

from homeostat.core import fields


class AnalysisVerdict(enum.StrEnum):
    PASS = "Pass"
    FAIL = "Fail"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"


class AnalysisOutcome(enum.StrEnum):
    """What the analysis so far says about the revision."""

    PENDING = "Pending"  # no limit exceeded, but the latest run was not a pass: hold
    PASSING = "Passing"  # the latest run passed and no limit is exceeded
    FAILED = "Failed"  # more failed runs than failureLimit: roll back
    INCONCLUSIVE = "Inconclusive"  # more runs without an answer than inconclusiveLimit: ask a human


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    name: str
    query: str
    min: float | None = None
    max: float | None = None


@dataclasses.dataclass(frozen=True)
class AnalysisSpec:
    """``spec.rollout.analysis``, with the defaults of the CRD."""

    interval: float = 30.0
    failure_limit: int = 2
    inconclusive_limit: int = 3
    consecutive_error_limit: int = 4
    metrics: tuple[MetricSpec, ...] = ()


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One query result; ``at`` is when it was taken, in seconds on the caller's clock."""

    metric: str
    value: float | None = None
    error: str | None = None
    at: float = 0.0


@dataclasses.dataclass(frozen=True)
class MetricResult:
    measurement: Measurement
    verdict: AnalysisVerdict


@dataclasses.dataclass(frozen=True)
class Failure:
    """The measurement that failed a run, kept for status and the notification."""

    metric: str
    value: float | None
    message: str


def evaluate(metric: MetricSpec, measurement: Measurement) -> AnalysisVerdict:
    # An errored query carries no value, so the error is the more specific verdict.
    if measurement.error is not None:
        return AnalysisVerdict.ERROR
    value = measurement.value
    if value is None or math.isnan(value):
        return AnalysisVerdict.INCONCLUSIVE
    if metric.min is not None and value < metric.min:
        return AnalysisVerdict.FAIL
    if metric.max is not None and value > metric.max:
        return AnalysisVerdict.FAIL
    return AnalysisVerdict.PASS


def assess(spec: AnalysisSpec, measurements: Sequence[Measurement], at: float) -> tuple[MetricResult, ...]:
    """A verdict for every configured metric; a metric nobody measured is inconclusive, not a pass."""
    latest = {m.metric: m for m in measurements}
    results = []
    for metric in spec.metrics:
        measurement = latest.get(metric.name) or Measurement(metric.name, at=at)
        results.append(MetricResult(measurement, evaluate(metric, measurement)))
    return tuple(results)


# The worst verdict decides a run: one failing metric fails the revision whatever the others say.
_SEVERITY = (AnalysisVerdict.FAIL, AnalysisVerdict.ERROR, AnalysisVerdict.INCONCLUSIVE, AnalysisVerdict.PASS)


def run_verdict(results: Sequence[MetricResult]) -> AnalysisVerdict:
    if not results:
        return AnalysisVerdict.INCONCLUSIVE  # no evidence is never a pass
    return min((r.verdict for r in results), key=_SEVERITY.index)


def describe(metric: MetricSpec | None, measurement: Measurement) -> str:
    if measurement.error is not None:
        return f"{measurement.metric}: query failed: {measurement.error}"
    if measurement.value is None or math.isnan(measurement.value):
        return f"{measurement.metric}: no data"
    bounds = ""
    if metric is not None:
        low = "-inf" if metric.min is None else f"{metric.min:g}"
        high = "+inf" if metric.max is None else f"{metric.max:g}"
        bounds = f", allowed [{low}, {high}]"
    return f"{measurement.metric} = {measurement.value:g}{bounds}"


@dataclasses.dataclass(frozen=True)
class AnalysisState:
    """Counters of one rollout's analysis; they start from zero with every new revision."""

    runs: int = 0
    failures: int = 0
    inconclusives: int = 0
    consecutive_errors: int = 0
    last_run_at: float | None = None
    last_verdict: AnalysisVerdict | None = None
    last_failure: Failure | None = None

    def as_in_storage(self) -> dict[str, Any]:
        failure = self.last_failure
        return {
            "runs": self.runs,
            "failures": self.failures,
            "inconclusives": self.inconclusives,
            "consecutiveErrors": self.consecutive_errors,
            "lastRunAt": self.last_run_at,
            "lastVerdict": None if self.last_verdict is None else self.last_verdict.value,
            "lastFailure": None
            if failure is None
            else {
                "metric": failure.metric,
                "value": fields.encode_float(failure.value),
                "message": failure.message,
            },
        }

    @classmethod
    def from_storage(cls, raw: Mapping[str, Any] | None) -> AnalysisState:
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise fields.StorageError("analysis must be an object")
        failure_raw = raw.get("lastFailure")
        failure = None
        if failure_raw is not None:
            if not isinstance(failure_raw, Mapping):
                raise fields.StorageError("analysis.lastFailure must be an object")
            failure = Failure(
                fields.stored_str(failure_raw, "metric") or "",
                fields.decode_float(failure_raw.get("value")),
                fields.stored_str(failure_raw, "message") or "",
            )
        verdict = fields.stored_str(raw, "lastVerdict")
        try:
            last_verdict = None if verdict is None else AnalysisVerdict(verdict)
        except ValueError:
            raise fields.StorageError(f"analysis.lastVerdict: unknown verdict {verdict!r}") from None
        return cls(
            runs=fields.stored_int(raw, "runs"),
            failures=fields.stored_int(raw, "failures"),
            inconclusives=fields.stored_int(raw, "inconclusives"),
            consecutive_errors=fields.stored_int(raw, "consecutiveErrors"),
            last_run_at=fields.stored_time(raw, "lastRunAt"),
            last_verdict=last_verdict,
            last_failure=failure,
        )


def outcome(state: AnalysisState, spec: AnalysisSpec) -> AnalysisOutcome:
    if state.failures > spec.failure_limit:
        return AnalysisOutcome.FAILED
    if state.inconclusives > spec.inconclusive_limit:
        return AnalysisOutcome.INCONCLUSIVE
    return AnalysisOutcome.PASSING if state.last_verdict is AnalysisVerdict.PASS else AnalysisOutcome.PENDING


def due(state: AnalysisState, spec: AnalysisSpec, now: float) -> bool:
    return state.last_run_at is None or now >= state.last_run_at + spec.interval


def record(
    state: AnalysisState, spec: AnalysisSpec, results: Sequence[MetricResult], now: float
) -> tuple[AnalysisState, AnalysisOutcome]:
    """Count one analysis run taken at ``now``, and say what the analysis now concludes."""
    verdict = run_verdict(results)
    failures, inconclusives, errors = state.failures, state.inconclusives, 0
    last_failure = state.last_failure
    if verdict is AnalysisVerdict.FAIL:
        failures += 1
        culprit = next(r for r in results if r.verdict is AnalysisVerdict.FAIL)
        metric = next((m for m in spec.metrics if m.name == culprit.measurement.metric), None)
        last_failure = Failure(
            culprit.measurement.metric, culprit.measurement.value, describe(metric, culprit.measurement)
        )
    elif verdict is AnalysisVerdict.INCONCLUSIVE:
        inconclusives += 1
    elif verdict is AnalysisVerdict.ERROR:
        errors = state.consecutive_errors + 1
        # As the CRD documents: a backend that stays unreachable is no answer, and no answer
        # for long enough asks a human; a brief outage is tolerated.
        if errors > spec.consecutive_error_limit:
            inconclusives += 1
    new = AnalysisState(
        runs=state.runs + 1,
        failures=failures,
        inconclusives=inconclusives,
        consecutive_errors=errors,
        last_run_at=now,
        last_verdict=verdict,
        last_failure=last_failure,
    )
    return new, outcome(new, spec)


def reset_inconclusive(state: AnalysisState) -> AnalysisState:
    """After a human resumes a held rollout, its no-data tolerance starts again."""
    return dataclasses.replace(state, inconclusives=0, consecutive_errors=0)
