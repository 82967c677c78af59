"""The node failure-risk query (``predictiveMaintenance.query``): which nodes are judged, which
get a request, what an unusable answer does (nothing), parsing, and the healing loop's side."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from homeostat.core import policy as pol
from homeostat.core import remediation as rem
from homeostat.core import trends as tr
from homeostat.core.spec import SpecError

NOW = 1_000_000.0
SPEC = dataclasses.replace(tr.RISK_DEFAULTS, enabled=True, query="node_risk", limit=0.8)
QUERY = "max by (node) (node_risk)"
AT, BELOW, NO = tr.RiskVerdict.AT_RISK, tr.RiskVerdict.BELOW_THRESHOLD, tr.RiskVerdict.NO_DATA


@pytest.mark.parametrize(
    ("samples", "hosting", "expected"),
    [
        pytest.param([("n1", 0.93)], {"n1"}, [("n1", AT, 0.93)], id="above"),
        pytest.param([("n1", 0.8)], {"n1"}, [("n1", AT, 0.8)], id="at the threshold"),
        pytest.param([("n1", 0.79)], {"n1"}, [("n1", BELOW, 0.79)], id="below"),
        pytest.param([("n1", 0.95), ("n2", 0.99)], {"n1"}, [("n1", AT, 0.95)], id="other nodes ignored"),
        pytest.param([], {"n1"}, [("n1", NO, None)], id="no data"),
        pytest.param([("n1", math.nan)], {"n1"}, [("n1", NO, None)], id="NaN"),
        pytest.param([("n1", math.inf)], {"n1"}, [("n1", NO, None)], id="infinite"),
        pytest.param([("n1", 1.5)], {"n1"}, [("n1", NO, None)], id="not a risk"),
        pytest.param([("n1", -0.1)], {"n1"}, [("n1", NO, None)], id="negative"),
        pytest.param([("", 0.99)], {"n1"}, [("n1", NO, None)], id="no node label"),
        pytest.param([("n1", 0.2), ("n1", math.nan), ("n1", 0.85)], {"n1"}, [("n1", AT, 0.85)], id="worst"),
        pytest.param([("n1", 0.9)], set(), [], id="no pods, no nodes"),
        pytest.param(
            [("a", 0.1), ("b", 0.85), ("c", math.nan), ("d", 0.95)],
            {"a", "b", "c", "d"},
            [("d", AT, 0.95), ("b", AT, 0.85), ("c", NO, None), ("a", BELOW, 0.1)],
            id="riskiest first, then unknown",
        ),
    ],
)
def test_assess_risk(
    samples: list[tuple[str, float]],
    hosting: set[str],
    expected: list[tuple[str, tr.RiskVerdict, float | None]],
) -> None:
    readings = tr.assess_risk(samples, hosting, SPEC)
    assert [(r.node, r.verdict, r.risk) for r in readings] == expected
    assert all(r.threshold == 0.8 for r in readings)


@pytest.mark.parametrize(
    ("action", "requested"),
    [
        (tr.PredictedNodeAction.CORDON, "CordonNode"),
        (tr.PredictedNodeAction.DRAIN, "DrainNode"),
        (tr.PredictedNodeAction.NOTIFY, "Notify"),
    ],
)
def test_a_node_at_risk_gets_a_request_for_the_node_action(
    action: tr.PredictedNodeAction, requested: str
) -> None:
    spec = dataclasses.replace(SPEC, node_action=action)
    readings = tr.assess_risk([("n1", 0.93), ("n2", 0.5)], {"n1", "n2"}, spec)
    (request,), (new,) = tr.risk_requests(readings, {}, spec, QUERY, now=NOW)
    assert new == request
    stored = request.to_dict(str)
    assert stored == {
        "key": "n1/PredictedExhaustion/risk",
        "node": "n1",
        "resource": "risk",
        "cause": "PredictedExhaustion",
        "action": requested,
        "requestedAt": str(NOW),
        "message": f"node n1 failure risk 0.93 >= 0.8 from {QUERY}",
    }


@pytest.mark.parametrize(
    ("samples", "previous", "wanted", "new"),
    [
        pytest.param([("n1", 0.9)], {}, {"n1": NOW}, ["n1"], id="new"),
        pytest.param([("n1", 0.9)], {"n1/PredictedExhaustion/risk": 5.0}, {"n1": 5.0}, [], id="kept"),
        pytest.param([("n1", 0.3)], {"n1/PredictedExhaustion/risk": 5.0}, {}, [], id="cleared: fell"),
        pytest.param([("n1", math.nan)], {"n1/PredictedExhaustion/risk": 5.0}, {}, [], id="cleared: NaN"),
        pytest.param([], {"n1/PredictedExhaustion/risk": 5.0}, {}, [], id="cleared: no data"),
    ],
)
def test_requests_are_level_based_and_keep_their_first_time(
    samples: list[tuple[str, float]], previous: dict[str, float], wanted: dict[str, float], new: list[str]
) -> None:
    readings = tr.assess_risk(samples, {"n1"}, SPEC)
    got, fresh = tr.risk_requests(readings, previous, SPEC, QUERY, now=NOW)
    assert {r.subject: r.requested_at for r in got} == wanted
    assert [r.subject for r in fresh] == new


def test_a_long_query_is_cut_in_the_message() -> None:
    query = "x" * 500
    (reading,) = tr.assess_risk([("n1", 0.9)], {"n1"}, SPEC)
    message = tr.describe_risk(reading, query)
    assert message.startswith("node n1 failure risk 0.90 >= 0.8 from xxx") and message.endswith("...")
    assert len(message) < 300


@pytest.mark.parametrize(
    ("samples", "reason", "fragments"),
    [
        ([("n1", 0.9), ("n2", 0.1)], "Evaluated", ["2 node(s)", "1 at or above", "threshold 0.8"]),
        ([("n1", math.nan), ("n2", 0.1)], "NoData", ["0 at or above", "for n1: not acted on"]),
        ([], "NoData", ["for n1, n2"]),
    ],
)
def test_summary_says_which_nodes_could_not_be_judged(
    samples: list[tuple[str, float]], reason: str, fragments: list[str]
) -> None:
    got_reason, message = tr.risk_summary(tr.assess_risk(samples, {"n1", "n2"}, SPEC), SPEC)
    assert got_reason == reason
    for fragment in fragments:
        assert fragment in message


def test_readings_in_status() -> None:
    readings = tr.assess_risk([("n1", 0.9)], {"n1", "n2"}, SPEC)
    assert [r.to_dict() for r in readings] == [
        {"node": "n1", "verdict": "AtRisk", "limit": 0.8, "value": 0.9},
        {"node": "n2", "verdict": "NoData", "limit": 0.8},
    ]


# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("healing", "expected"),
    [
        (None, tr.RISK_DEFAULTS),
        ({"predictiveMaintenance": {"disk": {}}}, tr.RISK_DEFAULTS),  # no query: off
        ({"predictiveMaintenance": {"query": "q", "enabled": False}}, tr.RISK_DEFAULTS),
        (
            {"predictiveMaintenance": {"query": "q"}},
            dataclasses.replace(tr.RISK_DEFAULTS, enabled=True, query="q"),
        ),
        (
            {"predictiveMaintenance": {"query": "q", "threshold": 0.5, "interval": "5s", "action": "Drain"}},
            dataclasses.replace(
                tr.RISK_DEFAULTS,
                enabled=True,
                query="q",
                limit=0.5,
                interval=5.0,
                node_action=tr.PredictedNodeAction.DRAIN,
            ),
        ),
        (
            {"predictiveMaintenance": {"query": "q", "threshold": 1}},
            dataclasses.replace(tr.RISK_DEFAULTS, enabled=True, query="q", limit=1.0),
        ),
    ],
)
def test_parse_risk(healing: dict[str, Any] | None, expected: tr.TrendSpec) -> None:
    assert tr.parse_risk(healing) == expected


@pytest.mark.parametrize(
    ("block", "field"),
    [
        ({"query": ""}, "spec.healing.predictiveMaintenance.query"),
        ({"query": 3}, "spec.healing.predictiveMaintenance.query"),
        ({"query": "q", "threshold": 1.2}, "spec.healing.predictiveMaintenance.threshold"),
        ({"query": "q", "threshold": "high"}, "spec.healing.predictiveMaintenance.threshold"),
        ({"query": "q", "interval": "0s"}, "spec.healing.predictiveMaintenance.interval"),
        ({"query": "q", "interval": 5}, "spec.healing.predictiveMaintenance.interval"),
        ({"query": "q", "action": "Reboot"}, "spec.healing.predictiveMaintenance.action"),
    ],
)
def test_parse_risk_errors_name_the_field(block: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        tr.parse_risk({"predictiveMaintenance": block})
    assert caught.value.field == field


# --- the healing loop's side -----------------------------------------------------------------

POLICY = pol.parse(
    "t",
    {
        "actions": {
            "CordonNode": {"risk": "medium", "mode": "auto"},
            "DrainNode": {"risk": "high", "mode": "approve", "approvers": {"kubernetes": {"users": ["a"]}}},
        },
        "blastRadius": {"minHealthyNodes": "50%", "maxConcurrentActions": 5},
    },
)


@pytest.mark.parametrize(
    ("action", "unschedulable", "expected"),
    [
        (tr.PredictedNodeAction.CORDON, False, [("Execute", "CordonNode", "Node/n1")]),
        (tr.PredictedNodeAction.CORDON, True, []),  # cordoned already: done
        (tr.PredictedNodeAction.DRAIN, False, [("AskApproval", "DrainNode", "Node/n1")]),
        (tr.PredictedNodeAction.NOTIFY, False, []),  # reported by the risk check only
    ],
)
def test_a_risk_request_is_acted_on_under_the_policy(
    action: tr.PredictedNodeAction, unschedulable: bool, expected: list[tuple[str, str, str]]
) -> None:
    spec = dataclasses.replace(SPEC, node_action=action)
    readings = tr.assess_risk([("n1", 0.93), ("n2", 0.1)], {"n1", "n2"}, spec)
    wanted, _ = tr.risk_requests(readings, {}, spec, QUERY, now=NOW)
    status = {"maintenance": {"requests": [r.to_dict(str) for r in wanted]}}
    view = rem.ServiceView(
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
        maintenance=rem.maintenance_requests(status),
    )
    _, effects = rem.step(
        rem.HealingState(), rem.PassContext(view, POLICY, (), pol.ClusterView(3, 3), {}, NOW)
    )
    got = []
    for e in effects:
        if isinstance(e, rem.Execute):
            got.append(("Execute", e.action.value, e.target))
        elif isinstance(e, rem.AskApproval):
            got.append(("AskApproval", e.request.action.value, e.request.target))
    assert got == expected
