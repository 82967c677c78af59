"""Restart-count and disk trends: degenerate series, resets and glitches, requests, parsing."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from homeostat.core import maintenance as mt
from homeostat.core import policy as pol
from homeostat.core import remediation as rem
from homeostat.core import trends as tr
from homeostat.core.spec import SpecError

NOW = 1_000_000.0
RESTARTS = dataclasses.replace(tr.RESTARTS_DEFAULTS, enabled=True, limit=10, lead_time=1800.0)
DISK = dataclasses.replace(
    tr.DISK_DEFAULTS, enabled=True, limit=0.9, lead_time=1800.0, window=3600.0, interval=60.0
)


def series(values: list[float], *, every: float = 60.0, end: float = NOW) -> list[tuple[float, float]]:
    """Samples ``every`` seconds apart, the last one at ``end``."""
    return [(end - every * (len(values) - 1 - i), v) for i, v in enumerate(values)]


def staircase(per_restart: int, n: int = 60, start: int = 0) -> list[float]:
    """A restart counter sampled every minute that rises by one every ``per_restart`` samples."""
    return [float(start + i // per_restart) for i in range(n)]


# One restart every 10 min over the hour: 5 at NOW, 0.1/min, so 50 min to the limit of 10.
SLOW = staircase(10)
# One every 2 min over 20 samples: 9 at NOW, 0.5/min -> about 2 min left.
FAST = staircase(2, n=20)


@pytest.mark.parametrize(
    ("case", "points", "verdict", "seconds"),
    [
        ("no samples", [], mt.MemoryVerdict.INSUFFICIENT_DATA, None),
        ("too few samples", series([0.0, 1.0, 2.0]), mt.MemoryVerdict.INSUFFICIENT_DATA, None),
        ("constant", series([3.0] * 60), mt.MemoryVerdict.STABLE, None),
        ("zero", series([0.0] * 60), mt.MemoryVerdict.STABLE, None),
        ("one restart is no trend", series([0.0] * 30 + [1.0] * 30), mt.MemoryVerdict.STABLE, None),
        ("slow restarts beyond the lead time", series(SLOW), mt.MemoryVerdict.GROWING, 2940.0),
        ("fast restarts", series(FAST), mt.MemoryVerdict.EXHAUSTION_PREDICTED, 120.0),
        (
            "past the limit and still restarting",
            series(staircase(2, start=20)),
            mt.MemoryVerdict.EXHAUSTION_PREDICTED,
            0.0,
        ),
        ("past the limit but settled", series([12.0] * 60), mt.MemoryVerdict.STABLE, None),
        (
            "gaps are fine",
            [p for i, p in enumerate(series(FAST)) if not 5 <= i < 12],
            mt.MemoryVerdict.EXHAUSTION_PREDICTED,
            120.0,
        ),
        (
            "a spike up is a glitch, not restarts",
            series([v + (50 if i == 30 else 0) for i, v in enumerate(SLOW)]),
            mt.MemoryVerdict.GROWING,
            3000.0,
        ),
        (
            "a drop to zero for one sample is a glitch, not a reset",
            series([0.0 if i == 30 else v for i, v in enumerate(SLOW)]),
            mt.MemoryVerdict.GROWING,
            3000.0,
        ),
        (
            "a reset starts afresh: only the new pod's restarts count",
            series([40.0 + i for i in range(40)] + [0.0] * 20),
            mt.MemoryVerdict.STABLE,
            None,
        ),
        (
            "a reset, then restarts again",
            series([40.0 + i for i in range(30)] + staircase(2, n=30)),
            mt.MemoryVerdict.EXHAUSTION_PREDICTED,
            None,
        ),
        (
            "stale: the pod stopped reporting",
            series(FAST, end=NOW - 600),
            mt.MemoryVerdict.INSUFFICIENT_DATA,
            None,
        ),
        (
            "NaN samples are ignored",
            series([float("nan")] * 5 + FAST),
            mt.MemoryVerdict.EXHAUSTION_PREDICTED,
            120.0,
        ),
    ],
)
def test_restart_trend(
    case: str, points: list[tuple[float, float]], verdict: mt.MemoryVerdict, seconds: float | None
) -> None:
    found = tr.assess("web-1", points, RESTARTS, now=NOW)
    assert found.verdict is verdict, case
    if seconds is not None:
        # A staircase has no exact slope: within two minutes of the straight-line answer.
        assert found.seconds_to_limit == pytest.approx(seconds, abs=120), case
    if verdict is mt.MemoryVerdict.EXHAUSTION_PREDICTED:
        assert found.exhausted_at == pytest.approx(NOW + (found.seconds_to_limit or 0))


@pytest.mark.parametrize(
    ("values", "kept", "resets"),
    [
        ([], [], 0),
        ([0, 0, 0], [0, 1, 2], 0),
        ([1, 2, 3], [0, 1, 2], 0),
        ([3, 3, 9, 3, 4], [0, 1, 3, 4], 0),  # spike up
        ([3, 3, 0, 3, 4], [0, 1, 3, 4], 0),  # spike down
        ([5, 6, 0, 0, 1], [2, 3, 4], 1),  # reset
        ([5, 6, 0, 1, 2, 0, 0, 1], [5, 6, 7], 2),  # two resets
        ([5, 6, 0], [2], 1),  # a drop at the end cannot be told from a reset yet
    ],
)
def test_counter_segment(values: list[float], kept: list[int], resets: int) -> None:
    assert tr.counter_segment(values) == (kept, resets)


def ramp(start: float, per_minute: float, n: int = 60) -> list[float]:
    return [start + per_minute * i for i in range(n)]


@pytest.mark.parametrize(
    ("case", "points", "verdict", "seconds"),
    [
        ("no samples", [], mt.MemoryVerdict.INSUFFICIENT_DATA, None),
        ("constant", series([0.5] * 60), mt.MemoryVerdict.STABLE, None),
        ("empty disk", series([0.0] * 60), mt.MemoryVerdict.STABLE, None),
        ("shrinking", series(ramp(0.8, -0.002)), mt.MemoryVerdict.STABLE, None),
        (
            "noise without a trend",
            series([0.5 + (7 * i % 5) * 0.002 for i in range(60)]),
            mt.MemoryVerdict.STABLE,
            None,
        ),
        # 0.3 + 0.01 * 59 = 0.89 at the last sample, 0.9 a minute later.
        ("filling fast", series(ramp(0.3, 0.01)), mt.MemoryVerdict.EXHAUSTION_PREDICTED, 60.0),
        # 0.2 + 0.001 * 59 = 0.259: 0.641 to go at 0.001/min.
        ("filling slowly", series(ramp(0.2, 0.001)), mt.MemoryVerdict.GROWING, 641 * 60.0),
        (
            "spikes do not move the trend",
            series([v + (0.3 if i % 17 == 5 else 0) for i, v in enumerate(ramp(0.3, 0.01))]),
            mt.MemoryVerdict.EXHAUSTION_PREDICTED,
            60.0,
        ),
        (
            "a cleanup starts afresh",
            series(ramp(0.5, 0.01, 30) + [0.3] * 30),
            mt.MemoryVerdict.STABLE,
            None,
        ),
        ("full and still filling", series(ramp(0.5, 0.01)), mt.MemoryVerdict.EXHAUSTION_PREDICTED, 0.0),
    ],
)
def test_disk_trend(
    case: str, points: list[tuple[float, float]], verdict: mt.MemoryVerdict, seconds: float | None
) -> None:
    found = tr.assess("node-a", points, DISK, now=NOW)
    assert found.verdict is verdict, case
    if seconds is not None:
        assert found.seconds_to_limit == pytest.approx(seconds, rel=0.05, abs=5), case


def test_assess_all_orders_the_most_urgent_first_and_reports_what_is_not_stable() -> None:
    findings = tr.assess_all(
        [("calm", series([1.0] * 60)), ("slow", series(SLOW)), ("fast", series(FAST)), ("", series(FAST))],
        RESTARTS,
        now=NOW,
    )
    assert [f.subject for f in findings] == ["fast", "slow", "calm"]
    report = tr.report(findings)
    assert [r["pod"] for r in report] == ["fast", "slow"]
    assert report[0]["verdict"] == "ExhaustionPredicted" and report[0]["limit"] == 10
    disk = tr.report(tr.assess_all([("node-a", series(ramp(0.3, 0.01)))], DISK, now=NOW))
    assert disk[0]["node"] == "node-a" and 0.885 < disk[0]["value"] < 0.895


def test_requests_keep_the_first_request_time_and_announce_only_new_ones() -> None:
    findings = tr.assess_all([("fast", series(FAST)), ("slow", series(SLOW))], RESTARTS, now=NOW)
    wanted, new = tr.requests(findings, {}, RESTARTS, now=NOW)
    assert [(r.subject, r.action) for r in wanted] == [("fast", "RestartPod")] and new == wanted
    (request,) = wanted
    assert request.key == "fast/PredictedExhaustion/restarts"
    assert "restart limit 10" in request.message and "pod fast" in request.message
    again, new_again = tr.requests(findings, {request.key: NOW - 30}, RESTARTS, now=NOW)
    assert again[0].requested_at == NOW - 30 and new_again == ()
    stored = request.to_dict(lambda t: f"t{t:.0f}")
    assert stored["pod"] == "fast" and stored["resource"] == "restarts" and "node" not in stored


@pytest.mark.parametrize(
    ("action", "requested"),
    [
        (tr.PredictedNodeAction.CORDON, "CordonNode"),
        (tr.PredictedNodeAction.DRAIN, "DrainNode"),
        (tr.PredictedNodeAction.NOTIFY, "Notify"),
    ],
)
def test_disk_requests_ask_for_the_node_action(action: tr.PredictedNodeAction, requested: str) -> None:
    spec = dataclasses.replace(DISK, node_action=action)
    findings = tr.assess_all([("node-a", series(ramp(0.3, 0.01)))], spec, now=NOW)
    (request,), _ = tr.requests(findings, {}, spec, now=NOW)
    stored = request.to_dict(str)
    assert (stored["node"], stored["action"], stored["resource"]) == ("node-a", requested, "disk")
    assert "node node-a" in stored["message"] and "threshold 90%" in stored["message"]


# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("healing", "restarts", "disk"),
    [
        (
            None,
            RESTARTS_OFF := dataclasses.replace(tr.RESTARTS_DEFAULTS),
            dataclasses.replace(tr.DISK_DEFAULTS),
        ),
        ({"predictiveMaintenance": {"query": "risk"}}, RESTARTS_OFF, tr.DISK_DEFAULTS),
        (
            {"predictiveMaintenance": {"enabled": False, "restarts": {}, "disk": {}}},
            RESTARTS_OFF,
            tr.DISK_DEFAULTS,
        ),
        (
            {"predictiveMaintenance": {"restarts": {}, "disk": {}}},
            dataclasses.replace(tr.RESTARTS_DEFAULTS, enabled=True),
            dataclasses.replace(tr.DISK_DEFAULTS, enabled=True),
        ),
        (
            {
                "predictiveMaintenance": {
                    "action": "Cordon",
                    "restarts": {
                        "query": "q",
                        "limit": 3,
                        "leadTime": "5m",
                        "window": "10m",
                        "interval": "5s",
                    },
                    "disk": {"enabled": False, "threshold": 0.5},
                }
            },
            tr.TrendSpec(
                tr.Resource.RESTARTS, True, "q", 3, 300, 600, 5, node_action=tr.PredictedNodeAction.CORDON
            ),
            dataclasses.replace(tr.DISK_DEFAULTS, limit=0.5, node_action=tr.PredictedNodeAction.CORDON),
        ),
    ],
)
def test_parse(healing: dict[str, Any] | None, restarts: tr.TrendSpec, disk: tr.TrendSpec) -> None:
    assert tr.parse_restarts(healing) == restarts
    assert tr.parse_disk(healing) == disk


@pytest.mark.parametrize(
    ("block", "raw", "field"),
    [
        ("restarts", "yes", "spec.healing.predictiveMaintenance.restarts"),
        ("restarts", {"enabled": "yes"}, "spec.healing.predictiveMaintenance.restarts.enabled"),
        ("restarts", {"query": ""}, "spec.healing.predictiveMaintenance.restarts.query"),
        ("restarts", {"limit": 0}, "spec.healing.predictiveMaintenance.restarts.limit"),
        ("restarts", {"limit": 2.5}, "spec.healing.predictiveMaintenance.restarts.limit"),
        ("restarts", {"limit": "ten"}, "spec.healing.predictiveMaintenance.restarts.limit"),
        ("restarts", {"leadTime": 30}, "spec.healing.predictiveMaintenance.restarts.leadTime"),
        ("disk", {"threshold": 0}, "spec.healing.predictiveMaintenance.disk.threshold"),
        ("disk", {"threshold": 1.5}, "spec.healing.predictiveMaintenance.disk.threshold"),
        ("disk", {"window": "0s"}, "spec.healing.predictiveMaintenance.disk.window"),
        ("disk", {"interval": "soon"}, "spec.healing.predictiveMaintenance.disk.interval"),
    ],
)
def test_parse_errors_name_the_field(block: str, raw: Any, field: str) -> None:
    parse = tr.parse_restarts if block == "restarts" else tr.parse_disk
    with pytest.raises(SpecError) as caught:
        parse({"predictiveMaintenance": {block: raw}})
    assert caught.value.field == field


def test_a_bad_node_action_names_the_field() -> None:
    with pytest.raises(SpecError) as caught:
        tr.parse_disk({"predictiveMaintenance": {"action": "Reboot", "disk": {}}})
    assert caught.value.field == "spec.healing.predictiveMaintenance.action"


# --- the healing loop's side -----------------------------------------------------------------


def _view(requests: list[dict[str, Any]], *, unschedulable: bool = False) -> rem.ServiceView:
    return rem.ServiceView(
        namespace="ns",
        name="web",
        healing=rem.HealingSpec(maintenance=True),
        pods=(
            rem.PodView("web-a", node="n1", phase="Running", ready=True),
            rem.PodView("web-b", node="n2", phase="Running", ready=True),
        ),
        nodes={
            "n1": rem.NodeView("n1", ready=True, unschedulable=unschedulable),
            "n2": rem.NodeView("n2", ready=True),
            "n3": rem.NodeView("n3", ready=True),
        },
        maintenance=rem.maintenance_requests({"maintenance": {"requests": requests}}),
    )


def _disk_request(node: str, action: str) -> dict[str, Any]:
    return {"key": f"{node}/PredictedExhaustion/disk", "node": node, "resource": "disk", "action": action}


POLICY = pol.parse(
    "t",
    {
        "actions": {
            "RestartPod": {"risk": "low", "mode": "auto"},
            "CordonNode": {"risk": "medium", "mode": "auto"},
            "DrainNode": {"risk": "high", "mode": "approve", "approvers": {"kubernetes": {"users": ["a"]}}},
        },
        "blastRadius": {"minHealthyNodes": "50%", "maxConcurrentActions": 5},
    },
)


def _step(view: rem.ServiceView) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """What one pass of the healing loop does about predicted exhaustion: (effect, action,
    target, pods)."""
    _, effects = rem.step(
        rem.HealingState(), rem.PassContext(view, POLICY, (), pol.ClusterView(3, 3), {}, NOW)
    )
    out = []
    for e in effects:
        if isinstance(e, rem.Execute):
            out.append(("Execute", e.action.value, e.target, e.pods or (e.node,)))
        elif isinstance(e, rem.AskApproval):
            out.append(("AskApproval", e.request.action.value, e.request.target, ()))
    return out


@pytest.mark.parametrize(
    ("requests", "unschedulable", "expected"),
    [
        ([_disk_request("n1", "CordonNode")], False, [("Execute", "CordonNode", "Node/n1", ("n1",))]),
        ([_disk_request("n1", "CordonNode")], True, []),  # cordoned already: done
        ([_disk_request("n1", "DrainNode")], True, [("AskApproval", "DrainNode", "Node/n1", ())]),
        ([_disk_request("n3", "CordonNode")], False, []),  # none of the service's pods there
        ([_disk_request("gone", "CordonNode")], False, []),
        ([_disk_request("n1", "Notify")], False, []),  # Notify: reported by the trend check only
        (
            [{"key": "web-b/PredictedExhaustion/restarts", "pod": "web-b", "action": "RestartPod"}],
            False,
            [("Execute", "RestartPod", "Pod/ns/web-b", ("web-b",))],
        ),
    ],
)
def test_maintenance_requests_are_acted_on_under_the_policy(
    requests: list[dict[str, Any]], unschedulable: bool, expected: list[tuple[str, str, str, tuple[str, ...]]]
) -> None:
    assert _step(_view(requests, unschedulable=unschedulable)) == expected


def test_a_cordoned_node_clears_the_incident() -> None:
    requests = [_disk_request("n1", "CordonNode")]
    state, effects = rem.step(
        rem.HealingState(), rem.PassContext(_view(requests), POLICY, (), pol.ClusterView(3, 3), {}, NOW)
    )
    assert [type(e).__name__ for e in effects] == ["Execute"]
    after = rem.PassContext(
        _view(requests, unschedulable=True), POLICY, (), pol.ClusterView(3, 3), {}, NOW + 5
    )
    state, effects = rem.step(state, after)
    assert [(type(e).__name__, getattr(e, "succeeded", None)) for e in effects] == [("Resolved", True)]
    assert state.incidents == ()
