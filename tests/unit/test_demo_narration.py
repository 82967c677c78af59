"""What `make demo` prints must not contradict itself, and its reset must catch what it changed.

A run once printed canary weights `0% -> 50% -> 25% -> 20%` for a first step of 25%, and
`backtest MASE 4.3797` (worse than naive) right after predictive scale-ups. Both figures were
right; the narration did not say what they meant. These check the lines a reader now sees,
which nodes a second run recreates, and that the load and its backfilled history follow the
daily pattern the narration names.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

import demo
from cluster import local

STEPS = [{"weight": 25, "pause": "5s"}, {"weight": 50, "pause": "5s"}]


def test_a_first_step_of_25_percent_with_two_pods_shows_why_the_canary_gets_half() -> None:
    line = demo._canary_line({"phase": "Progressing", "step": 0, "weight": 25}, STEPS, canary=1, stable=1)
    assert line == "Progressing, step 1/2 asks 25%; canary 1 + stable 1 ready pods: canary gets 50%"


def test_a_rollback_shows_stable_growing_before_the_canary_goes() -> None:
    rollout = {"phase": "RollingBack", "failure": {"message": "error-ratio 0.5 above 0.1"}}
    lines = [demo._canary_line(rollout, STEPS, canary=1, stable=n) for n in (3, 4)]
    assert lines == [
        "RollingBack (error-ratio 0.5 above 0.1): stable back to full size before the canary goes; "
        f"canary 1 + stable {n} ready pods: canary gets {share}"
        for n, share in ((3, "25%"), (4, "20%"))
    ]
    done = demo._canary_line({"phase": "RolledBack"}, STEPS, canary=0, stable=4)
    assert done == "RolledBack: the canary is gone; canary 0 + stable 4 ready pods: canary gets 0%"


def _forecast_lines(monkeypatch: pytest.MonkeyPatch, forecast: dict[str, Any]) -> list[str]:
    printed: list[str] = []
    monkeypatch.setattr(demo, "note", printed.append)
    body = {
        "status": {
            "forecast": {"method": "HoltWinters", "horizon": "12s", **forecast},
            "conditions": [{"type": "Autoscaling", "reason": "Predictive", "message": "load 40"}],
        }
    }
    demo.explain_forecast(body)
    return printed


def test_a_trusted_forecast_with_mase_above_one_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = _forecast_lines(monkeypatch, {"mase": 4.3797, "smape": 1.23})
    text = "\n".join(lines)
    assert "off by 1.2 % on average (sMAPE); MASE 4.38" in text
    assert "trusts it because it is at most 5 % off" in text
    assert "this load repeats its daily curve" in text
    assert lines[-1] == "Autoscaling condition: Predictive: load 40"


def test_an_untrusted_forecast_says_the_operator_fell_back(monkeypatch: pytest.MonkeyPatch) -> None:
    fallback = "ForecastUnreliable: backtest MASE 4.38 above 1 and sMAPE 9.0% above 5%"
    text = "\n".join(_forecast_lines(monkeypatch, {"mase": 4.38, "smape": 9.0, "fallback": fallback}))
    assert f"does not trust it now; replicas follow the current load: {fallback}" in text
    assert "trusts it because" not in text


def _node(ready: str = "True", **extra: Any) -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": ready}, {"type": "MemoryPressure", "status": "False"}]
    node: dict[str, Any] = {"metadata": {"name": "node-000000", "labels": {}}, "spec": {}}
    node["status"] = {"conditions": conditions}
    for key, value in extra.items():
        if key == "labels":
            node["metadata"]["labels"] = value
        elif key == "unschedulable":
            node["spec"]["unschedulable"] = value
        elif key == "pressure":
            conditions[1]["status"] = value
    return node


@pytest.mark.parametrize(
    ("node", "changed"),
    [
        (_node(), False),
        (_node(ready="False"), True),
        (_node(ready="Unknown"), True),
        (_node(labels={local.NODE_NOT_READY_LABEL: "true"}), True),
        (_node(unschedulable=True), True),
        (_node(pressure="True"), True),
    ],
    ids=["untouched", "not-ready", "unknown", "chaos-label", "cordoned", "memory-pressure"],
)
def test_a_second_run_recreates_exactly_the_nodes_the_first_changed(
    node: dict[str, Any], changed: bool
) -> None:
    assert demo._changed_by_demo(node) is changed


def test_the_load_sends_what_the_daily_pattern_says_and_no_more_than_its_bound() -> None:
    day = list(demo.send_times(demo.PATTERN, 0.0, demo.PERIOD, limit=10**6))
    mean = demo.BASE + demo.AMPLITUDE / 2  # the seasonal curve's average over a whole period
    assert abs(len(day) - mean * demo.PERIOD) < 0.01 * mean * demo.PERIOD
    trough = demo.PATTERN.phase  # the gaps are widest at the trough, narrowest at the peak
    gaps = {t: b - t for t, b in itertools.pairwise(day)}
    near = min(gaps, key=lambda t: abs(t - trough))
    assert gaps[near] == pytest.approx(1 / demo.BASE, rel=0.01)
    assert min(gaps.values()) == pytest.approx(1 / (demo.BASE + demo.AMPLITUDE), rel=0.01)
    assert len(list(demo.send_times(demo.PATTERN, 0.0, demo.PERIOD, limit=7))) == 7


def test_the_backfilled_counter_rises_at_the_rate_the_pattern_gives() -> None:
    text = demo.request_history(demo.PATTERN, demo.HISTORY_LABELS, start=1000.0, end=1240.0)
    lines = text.splitlines()
    assert lines[1] == "# TYPE http_requests counter" and lines[-1] == "# EOF"
    samples = []
    for line in lines[2:-1]:
        value, stamp = line.rsplit(" ", 2)[1:]
        samples.append((float(stamp), float(value)))
    assert samples[0] == (1000.0, 0.0) and samples[-1][0] == 1240.0
    assert 'service="shop"' in lines[2] and 'job="history"' in lines[2]
    for (t0, v0), (t1, v1) in itertools.pairwise(samples):
        assert (v1 - v0) / (t1 - t0) == pytest.approx(demo.PATTERN.demand((t0 + t1) / 2), abs=0.01)


def _sample(t: float, offered: float, desired: int, ready: int) -> dict[str, float]:
    return {"t": t, "offered": offered, "desired": desired, "ready": ready}


def test_a_scale_up_ready_before_the_load_needs_it_shows_its_lead() -> None:
    samples = [
        _sample(0, 15, 2, 2),
        _sample(2, 16, 3, 2),  # asked for while 2 x 10 rps still covered 16 rps
        _sample(4, 17, 3, 3),  # ready 2 s later
        _sample(6, 19, 3, 3),
        _sample(8, 21, 3, 3),  # the load needs the third replica 6 s after the raise
    ]
    (found,) = demo.scale_up_leads(samples, 10)
    assert found == demo.Raise(at=2, before=2, after=3, ready_after=2, needed_after=6)
    lines = demo.lead_lines([found], 10, t0=0)
    assert lines[0] == (
        "at 2 s, 2 -> 3 replicas, ready 2 s later; the load passed 20 rps 6 s after the raise: "
        "the pods were ready 4 s before it needed them"
    )
    assert lines[1] == (
        "1 of the 1 scale-ups the load needed had their pods ready before it, median lead 4 s "
        "(to the ~2 s between samples)"
    )


def test_a_late_scale_up_says_the_load_came_first() -> None:
    samples = [_sample(0, 18, 2, 2), _sample(2, 22, 2, 2), _sample(4, 25, 3, 2), _sample(6, 26, 3, 3)]
    (found,) = demo.scale_up_leads(samples, 10)
    assert (found.needed_after, found.ready_after) == (-2, 2)
    lines = demo.lead_lines([found], 10, t0=0)
    assert lines[0].endswith(
        "the load passed 20 rps 2 s before the raise: the pods were ready 4 s after it needed them"
    )
    assert lines[1].startswith("0 of the 1 scale-ups the load needed had their pods ready before it (")


def test_a_scale_up_the_load_never_needed_is_not_counted_as_a_lead() -> None:
    samples = [_sample(0, 10, 2, 2), _sample(2, 11, 3, 3), _sample(4, 9, 3, 3), _sample(6, 8, 2, 2)]
    (found,) = demo.scale_up_leads(samples, 10)
    assert found.needed_after is None
    assert demo.lead_lines([found], 10, t0=0) == [
        "at 2 s, 2 -> 3 replicas, ready within the same sample; the load never passed 20 rps in the act "
        "(the forecast's safety band asked for it)"
    ]


def test_the_figures_on_a_lead_line_add_up_after_rounding() -> None:
    # Needed 4.4 s before the raise, ready 2.4 s after it: 6.8 s late would print as 7 beside
    # "4 s before" and "2 s later"; the line says 6.
    late = demo.Raise(at=10.0, before=1, after=2, ready_after=2.4, needed_after=-4.4)
    (line,) = demo.lead_lines([late], 10, t0=0)[:1]
    assert "ready 2 s later" in line and "4 s before the raise" in line
    assert line.endswith("the pods were ready 6 s after it needed them")
