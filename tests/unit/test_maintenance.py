"""Predictive maintenance tables: memory trends, restarts, degenerate series, requests, parsing."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from homeostat.core import maintenance as mt
from homeostat.core.spec import SpecError

NOW = 1_000_000.0
MI = 2.0**20
LIMIT = 256 * MI
SPEC = mt.MemorySpec(enabled=True, lead_time=1800.0, window=3600.0, interval=60.0, limit=LIMIT)


def series(values: list[float], *, every: float = 60.0, end: float = NOW) -> list[tuple[float, float]]:
    """Samples ``every`` seconds apart, the last one at ``end``."""
    return [(end - every * (len(values) - 1 - i), v) for i, v in enumerate(values)]


def ramp(start: float, per_minute: float, n: int = 60) -> list[float]:
    return [start + per_minute * i for i in range(n)]


# Growth of 1 MiB/min from 100 MiB reaches 159 MiB at NOW: 97 MiB (97 min) to the limit.
SLOW = ramp(100 * MI, 1 * MI)
# 4 MiB/min from 10 MiB reaches 246 MiB at NOW: 10 MiB, 2.5 min to the limit.
FAST = ramp(10 * MI, 4 * MI)


@pytest.mark.parametrize(
    ("case", "points", "verdict", "seconds"),
    [
        ("no samples", [], mt.MemoryVerdict.INSUFFICIENT_DATA, None),
        ("too few samples", series([100 * MI, 110 * MI, 120 * MI]), mt.MemoryVerdict.INSUFFICIENT_DATA, None),
        ("constant", series([100 * MI] * 60), mt.MemoryVerdict.STABLE, None),
        ("zero", series([0.0] * 60), mt.MemoryVerdict.STABLE, None),
        ("falling", series(ramp(200 * MI, -1 * MI)), mt.MemoryVerdict.STABLE, None),
        (
            "noise without a trend",
            series([100 * MI + (7 * i % 5) * MI for i in range(60)]),
            mt.MemoryVerdict.STABLE,
            None,
        ),
        ("fast leak", series(FAST), mt.MemoryVerdict.EXHAUSTION_PREDICTED, 150.0),
        ("slow leak beyond the lead time", series(SLOW), mt.MemoryVerdict.GROWING, 97 * 60.0),
        (
            "spikes do not move the trend",
            series([v * (3 if i % 17 == 5 else 1) for i, v in enumerate(FAST)]),
            mt.MemoryVerdict.EXHAUSTION_PREDICTED,
            150.0,
        ),
        (
            "gaps are fine",
            [p for i, p in enumerate(series(FAST)) if not 10 <= i < 40],
            mt.MemoryVerdict.EXHAUSTION_PREDICTED,
            150.0,
        ),
        (
            "already over the limit",
            series(ramp(250 * MI, 1 * MI, 20)),
            mt.MemoryVerdict.EXHAUSTION_PREDICTED,
            0.0,
        ),
        ("stale: the pod is gone", series(FAST, end=NOW - 900), mt.MemoryVerdict.INSUFFICIENT_DATA, None),
        (
            "NaN and infinity are dropped",
            [*series(FAST), (NOW - 30, math.nan), (math.inf, 1.0), (NOW - 10, math.inf)],
            mt.MemoryVerdict.EXHAUSTION_PREDICTED,
            150.0,
        ),
        (
            "future samples are ignored",
            [*series(FAST), (NOW + 600, 0.0)],
            mt.MemoryVerdict.EXHAUSTION_PREDICTED,
            150.0,
        ),
    ],
)
def test_assess(
    case: str, points: list[tuple[float, float]], verdict: mt.MemoryVerdict, seconds: float | None
) -> None:
    finding = mt.assess("web-1", points, SPEC, now=NOW)
    assert finding.verdict is verdict, case
    if seconds is None:
        assert finding.seconds_to_limit is None, case
    else:
        assert finding.seconds_to_limit == pytest.approx(seconds, abs=1.0), case
        assert finding.exhausted_at == pytest.approx(NOW + seconds, abs=1.0), case
        assert finding.limit == LIMIT


def test_a_restart_starts_a_new_segment() -> None:
    # A leak killed once: after the restart it grows again, slowly, from a low level.
    before = ramp(100 * MI, 4 * MI, 30)
    after = ramp(20 * MI, 0.5 * MI, 30)
    finding = mt.assess("web-1", series(before + after), SPEC, now=NOW)
    assert finding.restarts == 1 and finding.points == 30
    assert finding.slope == pytest.approx(0.5 * MI / 60, rel=1e-6)
    assert finding.verdict is mt.MemoryVerdict.GROWING  # 221.5 MiB at 0.5 MiB/min is > 7 h away


def test_without_a_limit_growth_is_reported_but_never_urgent() -> None:
    finding = mt.assess("web-1", series(FAST), dataclasses.replace(SPEC, limit=None), now=NOW)
    assert finding.verdict is mt.MemoryVerdict.NO_LIMIT and finding.seconds_to_limit is None
    assert not finding.urgent


def test_assess_all_orders_the_most_urgent_first_and_report_drops_stable_pods() -> None:
    findings = mt.assess_all(
        [("calm", series([100 * MI] * 60)), ("slow", series(SLOW)), ("fast", series(FAST)), ("", [])],
        SPEC,
        now=NOW,
    )
    assert [f.pod for f in findings] == ["fast", "slow", "calm"]
    assert [row["pod"] for row in mt.report(findings)] == ["fast", "slow"]
    assert mt.report(findings)[0]["verdict"] == "ExhaustionPredicted"


def test_requests_are_level_based_with_stable_keys() -> None:
    fast = mt.assess("web-a", series(FAST), SPEC, now=NOW)
    slow = mt.assess("web-b", series(SLOW), SPEC, now=NOW)
    wanted, new = mt.requests([fast, slow], {}, now=NOW)
    assert [r.key for r in wanted] == ["web-a/PredictedExhaustion"] and new == wanted
    request = wanted[0]
    assert (request.cause, request.action, request.requested_at) == ("PredictedExhaustion", "RestartPod", NOW)
    assert "web-a" in request.message and "predicted OOM in 2.5m" in request.message
    assert "limit 256.0Mi" in request.message
    # The next evaluation keeps the first request time and announces nothing new.
    again, new_again = mt.requests([fast], {request.key: NOW - 60}, now=NOW + 60)
    assert again[0].requested_at == NOW - 60 and new_again == ()
    # Once the pod is gone (restarted under a new name), the request goes too.
    assert mt.requests([slow], {request.key: NOW - 60}, now=NOW + 120) == ((), ())
    as_status = request.to_dict(lambda t: f"t{t:.0f}")
    assert as_status["key"] == "web-a/PredictedExhaustion"
    assert as_status["predictedExhaustionAt"] == f"t{NOW + 150:.0f}"


@pytest.mark.parametrize(
    ("containers", "expected"),
    [
        ([{"name": "a", "resources": {"limits": {"memory": "128Mi"}}}], 128 * MI),
        (
            [
                {"name": "a", "resources": {"limits": {"memory": "128Mi"}}},
                {"name": "b", "resources": {"limits": {"memory": "64Mi", "cpu": "1"}}},
            ],
            192 * MI,
        ),
        ([{"name": "a", "resources": {"limits": {"memory": "128Mi"}}}, {"name": "b"}], None),
        ([{"name": "a", "resources": {"limits": {"memory": "0"}}}], None),
        ([], None),
    ],
)
def test_memory_limit_is_the_sum_when_every_container_has_one(
    containers: list[Any], expected: float | None
) -> None:
    assert mt.memory_limit({"spec": {"containers": containers}}) == expected


TEMPLATE = {"spec": {"containers": [{"name": "a", "resources": {"limits": {"memory": "128Mi"}}}]}}


@pytest.mark.parametrize(
    ("healing", "expected"),
    [
        (None, mt.MemorySpec()),
        ({"predictiveMaintenance": {"query": "risk"}}, mt.MemorySpec()),
        ({"predictiveMaintenance": {"enabled": False, "memory": {}}}, mt.MemorySpec()),
        ({"predictiveMaintenance": {"memory": {}}}, mt.MemorySpec(enabled=True, limit=128 * MI)),
        (
            {"predictiveMaintenance": {"memory": {"enabled": False}}},
            mt.MemorySpec(enabled=False, limit=128 * MI),
        ),
        (
            {
                "predictiveMaintenance": {
                    "memory": {"query": "q", "leadTime": "5m", "window": "10m", "interval": "5s"}
                }
            },
            mt.MemorySpec(
                enabled=True, query="q", lead_time=300.0, window=600.0, interval=5.0, limit=128 * MI
            ),
        ),
    ],
)
def test_parse(healing: Any, expected: mt.MemorySpec) -> None:
    assert mt.parse(healing, TEMPLATE) == expected


@pytest.mark.parametrize(
    ("memory", "field"),
    [
        ("yes", "spec.healing.predictiveMaintenance.memory"),
        ({"enabled": "yes"}, "spec.healing.predictiveMaintenance.memory.enabled"),
        ({"query": ""}, "spec.healing.predictiveMaintenance.memory.query"),
        ({"leadTime": 30}, "spec.healing.predictiveMaintenance.memory.leadTime"),
        ({"window": "0s"}, "spec.healing.predictiveMaintenance.memory.window"),
        ({"interval": "soon"}, "spec.healing.predictiveMaintenance.memory.interval"),
    ],
)
def test_parse_rejects(memory: Any, field: str) -> None:
    with pytest.raises(SpecError) as info:
        mt.parse({"predictiveMaintenance": {"memory": memory}}, TEMPLATE)
    assert info.value.field == field


def test_query_step_gives_about_sixty_samples_per_window() -> None:
    assert (mt.MemorySpec(window=3600.0).step, mt.MemorySpec(window=30.0).step) == (60.0, 1.0)
