"""What `make demo` prints must not contradict itself, and its reset must catch what it changed.

A run once printed canary weights `0% -> 50% -> 25% -> 20%` for a first step of 25%, and
`backtest MASE 4.3797` (worse than naive) right after predictive scale-ups. Both figures were
right; the narration did not say what they meant. These check the lines a reader now sees, and
which nodes a second run recreates.
"""

from __future__ import annotations

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
    assert "repeats exactly" in text
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
