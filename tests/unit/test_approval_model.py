"""Bounded exhaustive model check of the approval decision core.

A breadth-first search runs every sequence of up to ``DEPTH`` events against the real
``decide`` and ``expire`` functions, for several request shapes (quorum 1, quorum 2, critical
with a quorum of 1 that must still need two people, a list of approvers that is empty).

Events: an approve or deny click by each of nine identities (two allowed Slack users, a Slack
user not on the list, the requester who is also listed as an approver, a Slack user allowed
through an approver user group and one in a group that is not, a kubectl user allowed by name
and one allowed through a group, plus one whose groups do not match); half the timeout
passing; and the expiry loop running. States are merged when everything ``decide`` reads is
equal (phase, decisions, clock), so the search stays small while covering all orderings.

Invariants, each named in the failure message with the event sequence that broke it:
inv_quorum (never Approved without ``required`` distinct allowed non-requester approvals made
before expiry), inv_terminal_is_final (no transition after Approved, Denied or Expired),
inv_expired_never_approved, inv_rejection_changes_nothing, inv_one_decision_per_click,
inv_deny_decides, inv_nothing_accepted_after_expiry, inv_storage_round_trip.
Run with ``-s`` to see how many distinct states each search explored.
"""

from __future__ import annotations

import dataclasses
import json
from collections import deque

import pytest

from homeostat.core import approval as ap

NOW = 1_800_000_000.0
TIMEOUT = 600.0
DEPTH = 7

U1, U2 = ap.Identity(ap.Channel.SLACK, "U1"), ap.Identity(ap.Channel.SLACK, "U2")
STRANGER = ap.Identity(ap.Channel.SLACK, "U9")
REQUESTER = ap.Identity(ap.Channel.SLACK, "UREQ")
ALICE = ap.Identity(ap.Channel.KUBECTL, "alice", ("dev",))
CAROL = ap.Identity(ap.Channel.KUBECTL, "carol", ("sre",))
MALLORY = ap.Identity(ap.Channel.KUBECTL, "mallory", ("dev",))
# Slack user groups: SOPS approves, SDEV does not; "sre" is a Kubernetes group, never a Slack one.
OPS = ap.Identity(ap.Channel.SLACK, "U7", ("SOPS",))
DEV = ap.Identity(ap.Channel.SLACK, "U8", ("SDEV", "sre"))
IDENTITIES = (U1, U2, STRANGER, REQUESTER, OPS, DEV, ALICE, CAROL, MALLORY)
# The requester is deliberately on the list: the requester rule must hold on its own.
APPROVERS = ap.Approvers(
    frozenset({"U1", "U2", "UREQ"}), frozenset({"alice"}), frozenset({"sre"}), frozenset({"SOPS"})
)
ALLOWED = {U1, U2, OPS, ALICE, CAROL}

BASE = ap.ApprovalRequest(
    action="DrainNode",
    target=ap.Target("Node", "", "kwok-node-1"),
    cause="NotReady",
    service="web",
    requester="UREQ",
    risk=ap.Risk.HIGH,
    quorum=1,
    approvers=APPROVERS,
    expires_at=NOW + TIMEOUT,
)
REQUESTS = {
    "quorum-1": BASE,
    "quorum-2": dataclasses.replace(BASE, quorum=2),
    "critical-quorum-1": dataclasses.replace(BASE, risk=ap.Risk.CRITICAL),
    "no-approvers": dataclasses.replace(BASE, approvers=ap.Approvers()),
}
EVENTS: tuple[tuple[str, ap.Identity | None, ap.Vote | None], ...] = (
    *((f"{v.value}:{i}", i, v) for i in IDENTITIES for v in ap.Vote),
    ("time", None, None),
    ("expire", None, None),
)


class Violation(AssertionError):
    pass


@dataclasses.dataclass(frozen=True)
class Node:
    state: ap.State
    now: float
    ever_expired: bool = False
    path: tuple[str, ...] = ()


def check(condition: bool, invariant: str, node: Node, *detail: object) -> None:
    if not condition:
        raise Violation(
            f"{invariant} violated after {' > '.join(node.path) or 'start'}: {' '.join(map(str, detail))}"
        )


def key(node: Node) -> str:
    # Past the expiry every later time is the same to decide/expire.
    now = min(node.now, BASE.expires_at)
    return json.dumps([node.state.as_in_storage(), now, node.ever_expired], sort_keys=True)


def step(
    request: ap.ApprovalRequest, node: Node, event: tuple[str, ap.Identity | None, ap.Vote | None]
) -> Node:
    name, identity, verdict = event
    before = node.state
    path = (*node.path, name)
    if name == "time":
        return dataclasses.replace(node, now=node.now + TIMEOUT / 2, path=path)
    if name == "expire":
        after = ap.expire(request, before, node.now)
        outcome = None
    else:
        assert identity is not None and verdict is not None
        result = ap.decide(request, before, identity, verdict, node.now)
        after, outcome = result.state, result
    new = Node(after, node.now, node.ever_expired or after.phase is ap.ApprovalPhase.EXPIRED, path)

    if before.phase.terminal:
        check(after == before, "inv_terminal_is_final", new, before, "->", after)
    check(
        not (node.ever_expired and after.phase is ap.ApprovalPhase.APPROVED),
        "inv_expired_never_approved",
        new,
    )
    if outcome is not None and outcome.outcome is ap.DecisionOutcome.REJECTED:
        check(outcome.rejection is not None and bool(outcome.message), "inv_rejection_changes_nothing", new)
        check(after.decisions == before.decisions, "inv_rejection_changes_nothing", new, after)
        if outcome.rejection is not ap.Rejection.EXPIRED:
            check(after == before, "inv_rejection_changes_nothing", new, after)
    if outcome is not None and outcome.outcome is ap.DecisionOutcome.ACCEPTED:
        check(len(after.decisions) == len(before.decisions) + 1, "inv_one_decision_per_click", new)
        check(node.now < request.expires_at, "inv_nothing_accepted_after_expiry", new)
        check(identity in ALLOWED and identity != REQUESTER, "inv_quorum", new, identity)
        if verdict is ap.Vote.DENY:
            check(after.phase is ap.ApprovalPhase.DENIED, "inv_deny_decides", new, after)
    if after.phase is ap.ApprovalPhase.APPROVED:
        approvers = {
            (d.identity.channel, d.identity.user) for d in after.decisions if d.verdict is ap.Vote.APPROVE
        }
        deciders = [d.identity for d in after.decisions]
        check(all(i in ALLOWED for i in deciders), "inv_quorum", new, deciders)
        check(
            len(approvers) >= max(request.quorum, 2 if request.risk is ap.Risk.CRITICAL else 1),
            "inv_quorum",
            new,
        )
        check(
            all(d.at < request.expires_at for d in after.decisions), "inv_quorum", new, "decided after expiry"
        )
        check(not any(d.verdict is ap.Vote.DENY for d in after.decisions), "inv_deny_decides", new)
    if after.phase is ap.ApprovalPhase.EXPIRED:
        check(after.decided_at == request.expires_at, "inv_expired_never_approved", new, after)
    check(ap.State.from_storage(after.as_in_storage()) == after, "inv_storage_round_trip", new, after)
    return new


def explore(request: ap.ApprovalRequest) -> tuple[int, int, set[ap.ApprovalPhase]]:
    start = Node(ap.State(), NOW)
    seen = {key(start)}
    frontier: deque[tuple[Node, int]] = deque([(start, 0)])
    phases: set[ap.ApprovalPhase] = set()
    transitions = 0
    while frontier:
        node, depth = frontier.popleft()
        phases.add(node.state.phase)
        if depth == DEPTH:
            continue
        for event in EVENTS:
            new = step(request, node, event)
            transitions += 1
            k = key(new)
            if k not in seen:
                seen.add(k)
                frontier.append((new, depth + 1))
    return len(seen), transitions, phases


@pytest.mark.parametrize("shape", sorted(REQUESTS))
def test_model(shape: str) -> None:
    states, transitions, phases = explore(REQUESTS[shape])
    print(f"\napproval model {shape}: {states} distinct states, {transitions} transitions, depth {DEPTH}")
    if shape == "no-approvers":
        # Fail closed: nothing but the timeout can ever decide.
        assert phases == {ap.ApprovalPhase.PENDING, ap.ApprovalPhase.EXPIRED}
    else:
        assert phases == set(ap.ApprovalPhase)
    assert states >= (4 if shape == "no-approvers" else 20)


def test_the_checker_catches_a_broken_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """A core that forgets the requester rule must be caught, or the search proves nothing."""

    def lenient(
        request: ap.ApprovalRequest, state: ap.State, identity: ap.Identity, verdict: ap.Vote, now: float
    ) -> ap.DecisionResult:
        lax = dataclasses.replace(request, requester="nobody")
        return original(lax, state, identity, verdict, now)

    original = ap.decide
    monkeypatch.setattr(ap, "decide", lenient)
    with pytest.raises(Violation, match="inv_quorum"):
        explore(REQUESTS["quorum-1"])


def test_the_checker_catches_groups_crossing_channels(monkeypatch: pytest.MonkeyPatch) -> None:
    """A core that lets a Kubernetes group vouch for a Slack clicker must be caught too."""

    def mixed(self: ap.Approvers, identity: ap.Identity) -> bool:
        names, groups = self.slack | self.users, self.groups | self.slack_groups
        return identity.user in names or bool(groups & frozenset(identity.groups))

    monkeypatch.setattr(ap.Approvers, "allow", mixed)
    with pytest.raises(Violation, match="inv_quorum"):
        explore(REQUESTS["quorum-1"])
