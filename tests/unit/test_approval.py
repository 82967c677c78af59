"""Table-driven tests of the approval decision core (``homeostat.core.approval``).

Each row is one click or vote against a request in a given state; the expected outcome is the
phase afterwards, and for refusals the reason, with the state otherwise untouched.
"""

from __future__ import annotations

import dataclasses

import pytest

from homeostat.core import approval as ap
from homeostat.core.spec import SpecError

NOW = 1_800_000_000.0
EXPIRES = NOW + 3600
SLACK, KUBECTL = ap.Channel.SLACK, ap.Channel.KUBECTL
APPROVE, DENY = ap.Vote.APPROVE, ap.Vote.DENY
P, A, D, E = (
    ap.ApprovalPhase.PENDING,
    ap.ApprovalPhase.APPROVED,
    ap.ApprovalPhase.DENIED,
    ap.ApprovalPhase.EXPIRED,
)
R = ap.Rejection

APPROVERS = ap.Approvers(
    slack=frozenset({"U1", "U2", "UREQ"}),
    users=frozenset({"alice", "bob"}),
    groups=frozenset({"sre"}),
    slack_groups=frozenset({"SOPS"}),
)
ONLY_GROUPS = ap.Approvers(slack_groups=frozenset({"SOPS", "SDBA"}))


def request(**changes: object) -> ap.ApprovalRequest:
    base = ap.ApprovalRequest(
        action="DrainNode",
        target=ap.Target("Node", "", "kwok-node-1"),
        cause="node NotReady for 5m",
        service="web",
        requester="UREQ",
        risk=ap.Risk.HIGH,
        quorum=1,
        approvers=APPROVERS,
        expires_at=EXPIRES,
        channel="#ops",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def slack(user: str, *groups: str) -> ap.Identity:
    """A Slack clicker, with the user groups the adapter found them in."""
    return ap.Identity(SLACK, user, groups)


def kube(user: str, *groups: str) -> ap.Identity:
    return ap.Identity(KUBECTL, user, groups)


def approved_by(*users: str) -> ap.State:
    decisions = tuple(ap.RecordedDecision(slack(u), APPROVE, NOW) for u in users)
    return ap.State(P, decisions, None, "partial")


DECIDED = ap.State(A, (ap.RecordedDecision(slack("U1"), APPROVE, NOW),), NOW, "approved by slack:U1")
DENIED = ap.State(D, (ap.RecordedDecision(slack("U2"), DENY, NOW),), NOW, "denied by slack:U2")
EXPIRED = ap.State(E, (), EXPIRES, "timed out")

# id, request changes, state before, identity, verdict, seconds after NOW, phase after, rejection
CASES = [
    ("allowed slack user approves", {}, ap.State(), slack("U1"), APPROVE, 0, A, None),
    ("allowed slack user denies", {}, ap.State(), slack("U1"), DENY, 0, D, None),
    ("kubectl user in users", {}, ap.State(), kube("alice"), APPROVE, 0, A, None),
    ("kubectl user through a group", {}, ap.State(), kube("carol", "sre"), APPROVE, 0, A, None),
    (
        "kubectl user outside users and groups",
        {},
        ap.State(),
        kube("mallory", "dev"),
        APPROVE,
        0,
        P,
        R.NOT_ALLOWED,
    ),
    ("slack user not in list", {}, ap.State(), slack("U9"), APPROVE, 0, P, R.NOT_ALLOWED),
    ("slack id is not a kubectl user", {}, ap.State(), kube("U1"), APPROVE, 0, P, R.NOT_ALLOWED),
    ("kubectl user is not a slack id", {}, ap.State(), slack("alice"), APPROVE, 0, P, R.NOT_ALLOWED),
    ("disallowed user cannot deny either", {}, ap.State(), slack("U9"), DENY, 0, P, R.NOT_ALLOWED),
    ("slack user in an approver group", {}, ap.State(), slack("U7", "SOPS"), APPROVE, 0, A, None),
    ("slack group member denies", {}, ap.State(), slack("U7", "SOPS"), DENY, 0, D, None),
    ("slack user in another group", {}, ap.State(), slack("U8", "SDEV"), APPROVE, 0, P, R.NOT_ALLOWED),
    ("slack user whose groups are unknown", {}, ap.State(), slack("U7"), APPROVE, 0, P, R.NOT_ALLOWED),
    (
        "kube group named like a slack group",
        {},
        ap.State(),
        kube("eve", "SOPS"),
        APPROVE,
        0,
        P,
        R.NOT_ALLOWED,
    ),
    ("slack group named like a kube group", {}, ap.State(), slack("U8", "sre"), APPROVE, 0, P, R.NOT_ALLOWED),
    (
        "only slack groups: a member",
        {"approvers": ONLY_GROUPS},
        ap.State(),
        slack("U7", "SDBA"),
        APPROVE,
        0,
        A,
        None,
    ),
    (
        "only slack groups: not empty, a non-member is refused",
        {"approvers": ONLY_GROUPS},
        ap.State(),
        slack("U7", "SDEV"),
        APPROVE,
        0,
        P,
        R.NOT_ALLOWED,
    ),
    (
        "only slack groups: a listed user id is not enough",
        {"approvers": ONLY_GROUPS},
        ap.State(),
        slack("U1"),
        APPROVE,
        0,
        P,
        R.NOT_ALLOWED,
    ),
    (
        "requester in an approver group",
        {"requester": "U7"},
        ap.State(),
        slack("U7", "SOPS"),
        APPROVE,
        0,
        P,
        R.REQUESTER,
    ),
    (
        "quorum 2: two members of one group",
        {"quorum": 2},
        ap.State(P, (ap.RecordedDecision(slack("U7", "SOPS"), APPROVE, NOW),), None, "1 of 2"),
        slack("U8", "SOPS"),
        APPROVE,
        0,
        A,
        None,
    ),
    (
        "quorum 2: a group member twice",
        {"quorum": 2},
        ap.State(P, (ap.RecordedDecision(slack("U7", "SOPS"), APPROVE, NOW),), None, "1 of 2"),
        slack("U7", "SOPS"),
        APPROVE,
        0,
        P,
        R.ALREADY_VOTED,
    ),
    (
        "empty approvers: fail closed",
        {"approvers": ap.Approvers()},
        ap.State(),
        slack("U1"),
        APPROVE,
        0,
        P,
        R.NO_APPROVERS,
    ),
    (
        "empty approvers: deny refused too",
        {"approvers": ap.Approvers()},
        ap.State(),
        kube("alice"),
        DENY,
        0,
        P,
        R.NO_APPROVERS,
    ),
    ("requester may not approve, even if listed", {}, ap.State(), slack("UREQ"), APPROVE, 0, P, R.REQUESTER),
    ("requester may not deny", {}, ap.State(), slack("UREQ"), DENY, 0, P, R.REQUESTER),
    ("kubectl requester", {"requester": "alice"}, ap.State(), kube("alice"), APPROVE, 0, P, R.REQUESTER),
    (
        "quorum 2: first approval keeps it pending",
        {"quorum": 2},
        ap.State(),
        slack("U1"),
        APPROVE,
        0,
        P,
        None,
    ),
    (
        "quorum 2: second distinct approval",
        {"quorum": 2},
        approved_by("U1"),
        slack("U2"),
        APPROVE,
        0,
        A,
        None,
    ),
    (
        "quorum 2: same user twice",
        {"quorum": 2},
        approved_by("U1"),
        slack("U1"),
        APPROVE,
        0,
        P,
        R.ALREADY_VOTED,
    ),
    ("quorum 2: deny after one approval", {"quorum": 2}, approved_by("U1"), slack("U2"), DENY, 0, D, None),
    (
        "critical with quorum 1 still needs two",
        {"risk": ap.Risk.CRITICAL},
        ap.State(),
        slack("U1"),
        APPROVE,
        0,
        P,
        None,
    ),
    (
        "critical: second person approves",
        {"risk": ap.Risk.CRITICAL},
        approved_by("U1"),
        kube("bob"),
        APPROVE,
        0,
        A,
        None,
    ),
    ("second click after approval", {}, DECIDED, slack("U2"), APPROVE, 0, A, R.ALREADY_DECIDED),
    ("deny after approval loses the race", {}, DECIDED, slack("U2"), DENY, 0, A, R.ALREADY_DECIDED),
    ("double click of the decider", {}, DECIDED, slack("U1"), APPROVE, 0, A, R.ALREADY_DECIDED),
    ("approve after denial", {}, DENIED, slack("U1"), APPROVE, 0, D, R.ALREADY_DECIDED),
    ("click after expiry tick", {}, EXPIRED, slack("U1"), APPROVE, 0, E, R.EXPIRED),
    ("click at expiry time expires it", {}, ap.State(), slack("U1"), APPROVE, 3600, E, R.EXPIRED),
    ("click one second before expiry", {}, ap.State(), slack("U1"), APPROVE, 3599, A, None),
    (
        "late quorum approval expires instead",
        {"quorum": 2},
        approved_by("U1"),
        slack("U2"),
        APPROVE,
        4000,
        E,
        R.EXPIRED,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_decide(case: tuple[object, ...]) -> None:
    _, changes, before, identity, verdict, after, phase, rejection = case
    assert isinstance(changes, dict) and isinstance(before, ap.State) and isinstance(after, int)
    assert isinstance(identity, ap.Identity) and isinstance(verdict, ap.Vote)
    req = request(**changes)
    result = ap.decide(req, before, identity, verdict, NOW + after)
    assert result.state.phase is phase, result.message
    assert result.rejection is rejection, result.message
    if rejection is None:
        assert result.outcome is ap.DecisionOutcome.ACCEPTED
        assert result.state.decisions[-1] == ap.RecordedDecision(identity, verdict, NOW + after)
        assert len(result.state.decisions) == len(before.decisions) + 1
    else:
        assert result.outcome is ap.DecisionOutcome.REJECTED
        assert result.message
        # Refused: nothing recorded, except that a due expiry is.
        assert result.state.decisions == before.decisions
        if rejection is not ap.Rejection.EXPIRED:
            assert result.state == before


def test_rejection_messages_say_why() -> None:
    assert "already approved by slack:U1" in ap.decide(request(), DECIDED, slack("U2"), APPROVE, NOW).message
    assert "expired" in ap.decide(request(), EXPIRED, slack("U1"), APPROVE, NOW).message
    assert (
        "nobody may approve"
        in ap.decide(request(approvers=ap.Approvers()), ap.State(), slack("U1"), APPROVE, NOW).message
    )
    assert "requested this action" in ap.decide(request(), ap.State(), slack("UREQ"), APPROVE, NOW).message


EXPIRE_CASES = [
    ("pending before expiry stays", ap.State(), -1, P),
    ("pending at expiry expires", ap.State(), 0, E),
    ("partially approved expires", approved_by("U1"), 10, E),
    ("approved is never expired", DECIDED, 10, A),
    ("denied stays denied", DENIED, 10, D),
]


@pytest.mark.parametrize(
    ("before", "offset", "phase"), [c[1:] for c in EXPIRE_CASES], ids=[c[0] for c in EXPIRE_CASES]
)
def test_expire(before: ap.State, offset: float, phase: ap.ApprovalPhase) -> None:
    state = ap.expire(request(quorum=2), before, EXPIRES + offset)
    assert state.phase is phase
    if phase is E and before.phase is P:
        assert state.decided_at == EXPIRES
        assert "denied" in state.reason
        assert state.decisions == before.decisions
    elif before.phase is not P or offset < 0:
        assert state == before


def test_storage_round_trip() -> None:
    state = ap.State(
        A,
        (
            ap.RecordedDecision(kube("carol", "sre", "dev"), APPROVE, NOW, vote="v1"),
            ap.RecordedDecision(slack("U1"), APPROVE, NOW + 1),
            ap.RecordedDecision(slack("U7", "SOPS"), APPROVE, NOW + 2),
        ),
        NOW + 1,
        "approved",
    )
    assert ap.State.from_storage(state.as_in_storage()) == state
    assert ap.State.from_storage(None) == ap.State()
    assert ap.State.from_storage({}) == ap.State()


def test_request_round_trip_through_the_spec() -> None:
    req = request(evidence={"restarts": "12", "forecast": "peak 340 rps in 20m"})
    assert ap.parse_request(req.as_spec()) == req


@pytest.mark.parametrize(
    ("field", "value", "culprit"),
    [
        ("quorum", 0, "spec.quorum"),
        ("quorum", True, "spec.quorum"),
        ("risk", "huge", "spec.risk"),
        ("expiresAt", "tomorrow", "spec.expiresAt"),
        ("action", "", "spec.action"),
        ("target", "node-1", "spec.target"),
    ],
)
def test_parse_request_rejects_bad_specs(field: str, value: object, culprit: str) -> None:
    spec = request().as_spec()
    spec[field] = value
    with pytest.raises(SpecError) as info:
        ap.parse_request(spec)
    assert info.value.field == culprit


def test_object_name_is_a_function_of_the_incident() -> None:
    target = ap.Target("Node", "", "kwok-node-1")
    name = ap.object_name("DrainNode", target, "NotReady")
    assert name == ap.object_name("DrainNode", target, "NotReady")
    assert name.startswith("drainnode-") and len(name) <= 63
    others = {
        ap.object_name("CordonNode", target, "NotReady"),
        ap.object_name("DrainNode", ap.Target("Node", "", "kwok-node-2"), "NotReady"),
        ap.object_name("DrainNode", target, "OOMKilled"),
        ap.object_name("DrainNode", ap.Target("Node", "x", "kwok-node-1"), "NotReady"),
    }
    assert name not in others and len(others) == 4
    # Fields are separated, so shifting text between them cannot collide.
    assert ap.object_name("A", ap.Target("B", "", "c d"), "e") != ap.object_name(
        "A", ap.Target("B", "", "c"), "d e"
    )


def test_each_occurrence_of_an_incident_is_a_request_of_its_own() -> None:
    target = ap.Target("Node", "", "kwok-node-1")
    first = ap.object_name("DrainNode", target, "NodePressure", "1000.000/0")
    assert first == ap.object_name("DrainNode", target, "NodePressure", "1000.000/0")
    assert first != ap.object_name("DrainNode", target, "NodePressure", "1000.000/1")  # next step
    assert first != ap.object_name("DrainNode", target, "NodePressure", "2000.000/0")  # it came back
    # Requests made before the field existed keep their names.
    assert ap.object_name("DrainNode", target, "NodePressure", "") == ap.object_name(
        "DrainNode", target, "NodePressure"
    )
    req = request(incident="1000.000/0")
    assert req.as_spec()["incident"] == "1000.000/0" and "incident" not in request().as_spec()
    assert ap.parse_request(req.as_spec()) == req
    assert req.key() != request().key()


def test_vote_id_is_attached_only_to_accepted_decisions() -> None:
    accepted = ap.with_vote(ap.decide(request(), ap.State(), kube("alice"), APPROVE, NOW), "v7")
    assert accepted.state.decisions[-1].vote == "v7"
    refused = ap.with_vote(ap.decide(request(), ap.State(), kube("eve"), APPROVE, NOW), "v8")
    assert refused.state.decisions == ()


def test_destructive_risks() -> None:
    assert [r for r in ap.Risk if r.destructive] == [ap.Risk.HIGH, ap.Risk.CRITICAL]
