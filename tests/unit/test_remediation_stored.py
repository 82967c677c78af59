"""``status.healing`` as operators before issue 15 wrote it, read back and written again.

An operator upgraded in the middle of an incident reads what the old version stored, and a
rollback of the upgrade reads what the new one stored; so the stored shape is a contract, not
an implementation detail. ``WRITTEN`` is ``status.healing`` as commit 7fc3d32 wrote it, copied
from its output; the table has an incident in that shape (actions, reasons and phases as plain
strings, ``""`` for none) for every place an incident can stand. Each must come back field for
field, key for key, and go on from where it was; and every state the model check reaches must
store only strings the old version could have written (inv_old_shape).
"""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

import pytest
import test_remediation as t
import test_remediation_model as model

from homeostat.core import policy as pol
from homeostat.core import remediation as rem

SERVICE = t.SERVICE
HISTORY = {
    "action": "DrainNode",
    "target": "Node/n1",
    "subject": "Node/n1",
    "namespace": "ns",
    "service": "web",
    "at": t.NOW + 1,
    "outcome": "InProgress",
}


WRITTEN = {
    "incidents": [
        {
            "key": "PodFailed:Pod/ns/p0",
            "symptom": "PodFailed",
            "subject": "ReplicatedService/ns/web",
            "target": "Pod/ns/p0",
            "since": 1000000.0,
            "step": 0,
            "phase": "Verifying",
            "action": "RestartPod",
            "reason": "Allowed",
            "message": "policy t allows RestartPod",
            "actedAt": 1000000.0,
        },
        {
            "key": "PodFailed:Pod/ns/p2",
            "symptom": "PodFailed",
            "subject": "ReplicatedService/ns/web",
            "target": "Pod/ns/p2",
            "since": 1000000.0,
            "step": 0,
            "phase": "Pending",
            "action": "RestartPod",
            "reason": "RateLimit",
            "message": "2 actions per service within 600s (limit 2)",
        },
    ],
    "history": [
        {
            "action": "RestartPod",
            "target": "Pod/ns/p0",
            "subject": "ReplicatedService/ns/web",
            "namespace": "ns",
            "service": "web",
            "at": 1000000.0,
            "outcome": "InProgress",
        }
    ],
}


def test_status_healing_written_by_the_old_version_is_written_back_byte_for_byte() -> None:
    state = rem.HealingState.from_storage(WRITTEN)
    assert len(state.incidents) == 2
    assert json.dumps(state.as_in_storage()) == json.dumps(WRITTEN)


def stored(key: str, symptom: str, target: str, subject: str = SERVICE, **fields: Any) -> dict[str, Any]:
    """An incident in the old shape, keys in the order the old version wrote them."""
    acted = fields.pop("actedAt", None)
    raw = {"key": key, "symptom": symptom, "subject": subject, "target": target, "since": t.NOW}
    raw.update({"step": 0, "phase": "Pending", "action": "", "reason": "", "message": ""})
    raw.update(fields)
    if acted is not None:
        raw["actedAt"] = acted
    return raw


POD = ("PodFailed:Pod/ns/a", "PodFailed", "Pod/ns/a")
NODE = ("NodePressure:Node/n1", "NodePressure", "Node/n1", "Node/n1")
DRAINING = stored(
    *NODE, phase="Verifying", action="DrainNode", reason="Approved", message="m", actedAt=t.NOW + 1
)
CRASHING = ("CrashLoop:Pod/ns/a", "CrashLoop", "Pod/ns/a")
OLD_SHAPE = [
    ("pending, nothing decided yet", stored(*POD)),
    (
        "held by the rate limit",
        stored(*POD, action="RestartPod", reason="RateLimit", message="2 actions per service within 600s"),
    ),
    (
        "awaiting approval",
        stored(*NODE, phase="AwaitingApproval", action="DrainNode", reason="AwaitingApproval", message="m"),
    ),
    ("verifying an approved drain", DRAINING),
    (
        "escalated with no action on its ladder",
        stored(*CRASHING, phase="Escalated", reason="LadderExhausted", message="no automatic remedy"),
    ),
    (
        "escalated after its action failed to clear it",
        stored(*POD, step=1, phase="Escalated", action="RestartPod", reason="LadderExhausted", message="m"),
    ),
    (
        "escalated: the action cannot be done",
        stored(
            "OOMKilled:Container/ns/web/app",
            "OOMKilled",
            "Container/ns/web/app",
            phase="Escalated",
            action="RaiseMemoryLimit",
            reason="CannotAct",
            message="container app is already at maxMemory",
        ),
    ),
    (
        "escalated: the circuit is open",
        stored(*POD, phase="Escalated", action="RestartPod", reason="CircuitOpen", message="m"),
    ),
    (
        "the executor could not do it",
        stored(*POD, step=1, action="RestartPod", reason="ActionFailed", message="409 conflict"),
    ),
]


@pytest.mark.parametrize("raw", [o[1] for o in OLD_SHAPE], ids=[o[0] for o in OLD_SHAPE])
def test_an_incident_in_the_old_shape_is_read_and_written_back_unchanged(raw: dict[str, Any]) -> None:
    state = rem.HealingState.from_storage({"incidents": [raw], "history": [HISTORY]})
    assert len(state.incidents) == 1, "the old shape must be readable"
    written = state.as_in_storage()
    assert json.dumps(written) == json.dumps({"incidents": [raw], "history": [HISTORY]})


PRESSURED = t.view(t.pod("a"), nodes=(t.node("n1", pressure_for=60), t.node("n2")))


def test_a_drain_stored_by_the_old_version_is_resumed_not_run_again() -> None:
    """Upgraded between the drain's write-ahead record and its verification: the new version
    asks for the same drain again (a resume, under the same approval), with no new record."""
    state = rem.HealingState.from_storage({"incidents": [DRAINING], "history": [HISTORY]})
    state, effects = t.run(state, PRESSURED, t.NOW + 10)
    assert [(type(e).__name__, getattr(e, "resume", None)) for e in effects] == [("Execute", True)]
    (resumed,) = effects
    assert isinstance(resumed, rem.Execute)
    assert (resumed.action, resumed.node) == (pol.Action.DRAIN_NODE, "n1")
    assert resumed.occurrence == f"{t.NOW:.3f}/0"
    assert state.as_in_storage() == {"incidents": [DRAINING], "history": [HISTORY]}


def test_a_hold_stored_by_the_old_version_is_not_announced_again() -> None:
    """A Held effect is told once per reason and action: the stored ones, read back, count."""
    raw = stored(*POD, action="RestartPod", reason="RateLimit", message="m")
    done = pol.ActionOutcome.SUCCEEDED
    busy = [
        pol.Record(pol.Action.RESTART_POD, f"Pod/ns/p{i}", SERVICE, "ns", "web", t.NOW - 5, done)
        for i in (1, 2)
    ]
    state = rem.HealingState(rem.HealingState.from_storage({"incidents": [raw]}).incidents, tuple(busy))
    state, effects = t.run(state, t.view(t.pod("a", phase="Failed", exit_code=1)), t.NOW + 1)
    assert effects == ()
    (incident,) = state.incidents
    assert (incident.phase, incident.action, incident.reason) == ("Pending", "RestartPod", "RateLimit")


def test_an_incident_escalated_by_the_old_version_stays_quiet() -> None:
    raw = stored(*CRASHING, phase="Escalated", reason="LadderExhausted", message="m")
    state = rem.HealingState.from_storage({"incidents": [raw]})
    state, effects = t.run(state, t.view(t.pod("a", waiting="CrashLoopBackOff")), t.NOW + 600)
    assert effects == ()
    assert [i.as_in_storage() for i in state.incidents] == [raw]


TYPED = [
    ("nothing decided", {}, None, None),
    (
        "held",
        {"action": "RestartPod", "reason": "RateLimit"},
        pol.Action.RESTART_POD,
        pol.PolicyReason.RATE_LIMIT,
    ),
    (
        "approved",
        {"action": "DrainNode", "reason": "Approved"},
        pol.Action.DRAIN_NODE,
        pol.PolicyReason.APPROVED,
    ),
    ("no remedy", {"reason": "LadderExhausted"}, None, rem.Reason.LADDER_EXHAUSTED),
    ("cannot act", {"action": "Rollback", "reason": "CannotAct"}, pol.Action.ROLLBACK, rem.Reason.CANNOT_ACT),
    (
        "failed",
        {"action": "ScaleUp", "reason": "ActionFailed"},
        pol.Action.SCALE_UP,
        rem.Reason.ACTION_FAILED,
    ),
    ("a reason from elsewhere is forgotten", {"reason": "Whatever"}, None, None),
]


@pytest.mark.parametrize(("fields", "action", "reason"), [r[1:] for r in TYPED], ids=[r[0] for r in TYPED])
def test_stored_actions_and_reasons_are_read_as_their_types(
    fields: dict[str, str], action: pol.Action | None, reason: rem.Why | None
) -> None:
    incident = rem.Incident.from_storage(stored(*POD, **fields))
    assert incident is not None
    assert (incident.action, incident.reason) == (action, reason)
    assert type(incident.action) is type(action) and type(incident.reason) is type(reason)


def test_an_incident_with_an_action_this_version_does_not_know_is_unreadable() -> None:
    """Like an unknown symptom or phase: what was done cannot be verified or resumed."""
    assert rem.Incident.from_storage(stored(*POD, action="Reboot")) is None


def test_the_reasons_of_an_incident_and_of_the_policy_share_no_value() -> None:
    """A stored reason names its kind only by its value."""
    assert not {r.value for r in rem.Reason} & {r.value for r in pol.PolicyReason}


# The strings the old version could write: "" for none, a policy action, a policy reason or one
# of its own three reasons. Spelled out, so that renaming a value in the code fails here.
OLD_ACTIONS = {
    "",
    "RestartPod",
    "Rollback",
    "ReschedulePods",
    "CordonNode",
    "DrainNode",
    "ScaleUp",
    "RaiseMemoryLimit",
}
OLD_REASONS = {"", "LadderExhausted", "CannotAct", "ActionFailed", *(r.value for r in pol.PolicyReason)}


def test_every_state_the_model_reaches_is_stored_in_the_old_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """inv_old_shape, over the worlds of the model check (test_remediation_model): every state
    ``step`` returns stores its actions and reasons as plain strings the old version knew."""
    reached: list[rem.HealingState] = []
    real = rem.step

    def spy(state: rem.HealingState, ctx: rem.PassContext) -> tuple[rem.HealingState, tuple[rem.Effect, ...]]:
        after = real(state, ctx)
        reached.append(after[0])
        return after

    monkeypatch.setattr(rem, "step", spy)
    rng = random.Random(15)
    for events in [
        *itertools.product(model.EVENTS, repeat=2),
        *([rng.choice(model.EVENTS) for _ in range(30)] for _ in range(200)),
    ]:
        model.simulate(events)
    # As as_in_storage hands them to the status patch: plain str, not a str-enum that only
    # happens to serialise the same way.
    incidents = [i for state in reached for i in state.as_in_storage()["incidents"]]
    assert all(type(i["action"]) is str and type(i["reason"]) is str for i in incidents), "inv_old_shape"
    assert {i["action"] for i in incidents} <= OLD_ACTIONS, "inv_old_shape"
    assert {i["reason"] for i in incidents} <= OLD_REASONS, "inv_old_shape"
    assert {"DrainNode", "RestartPod"} <= {i["action"] for i in incidents}  # the search got somewhere
