"""The one rule for bad stored state (``core/fields.py``), loader by loader.

Absent or empty is the fresh state; present but unreadable is a ``StorageError`` naming the
field, never a fresh start, because the stored state is the operator's memory of what it did.
The one kind of stored data exempt is a cache the operator recomputes without acting (the
forecast model), which reads as None and is refitted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from homeostat.adapters import approvals as approval_adapter
from homeostat.core import analysis as an
from homeostat.core import approval as ap
from homeostat.core import fields
from homeostat.core import forecast as fc
from homeostat.core import maintenance as mt
from homeostat.core import policy as pol
from homeostat.core import rollout as ro
from homeostat.core import scaling as sc

DECISION = {"user": "U1", "channel": "slack", "verdict": "approve", "at": "2030-01-01T00:00:00Z"}
REQUEST = {"key": "web-1/PredictedExhaustion", "pod": "web-1", "requestedAt": "1970-01-01T00:01:40Z"}

Loader = Callable[[Any], Any]

LOADERS: dict[str, tuple[Loader, Any]] = {
    # name: (loader, its fresh state)
    "rollout": (ro.RolloutState.from_storage, ro.RolloutState()),
    "analysis": (an.AnalysisState.from_storage, an.AnalysisState()),
    "scaling": (sc.ScalingState.from_dict, sc.ScalingState()),
    "approval": (ap.State.from_storage, ap.State()),
    "maintenance": (mt.recorded, {}),
    "trends": (lambda raw: mt.recorded(raw, "restarts"), {}),
}


@pytest.mark.parametrize("name", LOADERS)
def test_absent_state_is_the_fresh_state(name: str) -> None:
    load, fresh = LOADERS[name]
    assert load(None) == fresh


@pytest.mark.parametrize(
    ("name", "raw", "names"),
    [
        ("rollout", "Progressing", "status.rollout"),
        ("rollout", {"schema": ro.SCHEMA, "step": -1}, "step"),
        ("rollout", {"schema": ro.SCHEMA, "phase": "Exploded"}, "phase"),
        ("analysis", {"runs": "3"}, "runs"),
        ("scaling", [1, 2], "autoscaling.scaling"),
        ("scaling", {"recommendations": [["x", 1]]}, "autoscaling.scaling.recommendations[0][0]"),
        ("scaling", {"recommendations": [[1.0, 1.5]]}, "autoscaling.scaling.recommendations[0][1]"),
        ("scaling", {"events": 5}, "autoscaling.scaling.events"),
        ("scaling", {"events": [[1.0]]}, "autoscaling.scaling.events[0]"),
        ("approval", "Approved", "status"),
        ("approval", {"phase": "Maybe"}, "status.phase"),
        ("approval", {"phase": "Denied", "decidedAt": "yesterday"}, "status.decidedAt"),
        ("approval", {"phase": "Denied", "decisions": {"0": DECISION}}, "status.decisions"),
        (
            "approval",
            {"phase": "Denied", "decisions": [{**DECISION, "channel": "fax"}]},
            "status.decisions[0].channel",
        ),
        ("approval", {"phase": "Denied", "decisions": [{**DECISION, "at": 5}]}, "status.decisions[0].at"),
        ("approval", {"decisions": [DECISION, {"channel": "slack"}]}, "status.decisions[1].user"),
        ("approval", {"decisions": ["approve"]}, "status.decisions[0]"),
        ("maintenance", {"key": "x"}, "maintenance.requests"),
        ("maintenance", [{**REQUEST, "requestedAt": 100}], "maintenance.requests[0].requestedAt"),
        ("maintenance", [{"pod": "web-1", "requestedAt": "1970-01-01T00:01:40Z"}], "maintenance.requests[0]"),
        ("trends", [{**REQUEST, "resource": "restarts", "key": 7}], "maintenance.requests[0].key"),
        ("trends", [None], "maintenance.requests[0]"),
    ],
)
def test_unreadable_state_raises_naming_the_field(name: str, raw: Any, names: str) -> None:
    load, _ = LOADERS[name]
    with pytest.raises(fields.StorageError) as caught:
        load(raw)
    assert str(caught.value).startswith(names)


def test_a_denied_approval_with_a_broken_decision_is_not_pending_again() -> None:
    # The case the rule exists for: read as fresh, this request could be approved after all.
    denied = ap.State(ap.ApprovalPhase.DENIED, (), 100.0, "denied by U1").as_in_storage()
    denied["decisions"] = [{**DECISION, "verdict": "veto"}]
    with pytest.raises(fields.StorageError, match=r"status\.decisions\[0\]\.verdict"):
        ap.State.from_storage(denied)


def test_the_approval_gate_holds_on_an_unreadable_status() -> None:
    # The adapter's ticket reads an unreadable status as it reads an invalid spec: Denied, saying
    # why. The status is read first, so the reason names it and not the (also empty) spec.
    body = {"metadata": {"namespace": "ns", "name": "a1"}, "spec": {}, "status": {"phase": "Maybe"}}
    ticket = approval_adapter.ticket(body, 1_900_000_000.0)
    assert ticket.phase is ap.ApprovalPhase.DENIED and "status.phase" in ticket.reason


def test_scaling_state_keeps_signed_events_and_integral_floats() -> None:
    raw = {"recommendations": [[1, 3.0]], "events": [[2.5, -2]]}
    assert sc.ScalingState.from_dict(raw) == sc.ScalingState(((1.0, 3),), ((2.5, -2),))
    assert sc.ScalingState.from_dict({}) == sc.ScalingState()


def test_recorded_requests_are_read_per_check() -> None:
    stored = [
        REQUEST,
        {"key": "web-2/RestartTrend", "resource": "restarts", "requestedAt": "1970-01-01T00:03:20Z"},
    ]
    assert mt.recorded(stored) == {"web-1/PredictedExhaustion": 100.0}
    assert mt.recorded(stored, "restarts") == {"web-2/RestartTrend": 200.0}
    request = mt.MemoryRequest("web-1", 100.0, 400.0, "m")
    assert mt.recorded([request.to_dict(fields.rfc3339)]) == {request.key: 100.0}


@pytest.mark.parametrize("garbage", [[1, 2], {"method": "Magic"}, {"method": "HoltWinters", "step": "x"}])
def test_the_forecast_model_is_a_cache_and_is_refitted(garbage: Any) -> None:
    # The one exemption: an unreadable model repeats no action, it is fitted again.
    assert fc.ModelState.from_dict(garbage) is None


def test_an_unreadable_action_record_is_not_forgotten() -> None:
    with pytest.raises(fields.StorageError):
        pol.Record.from_storage({"action": "RestartPod", "at": "soon"})
