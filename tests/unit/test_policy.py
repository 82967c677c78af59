"""Table-driven tests of RemediationPolicy parsing and of ``policy.decide``.

Each row of a table is one situation and the verdict (and reason) the policy must give; the
order of the guards (deny before asking, throttle before asking, approval before acting) is
what these rows pin down.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from homeostat.core import approval as appr
from homeostat.core import fields
from homeostat.core import policy as pol

ROOT = Path(__file__).resolve().parents[2]
A = pol.Action
NOW = 10_000.0

RULES: dict[str, Any] = {
    "RestartPod": {"risk": "low", "mode": "auto"},
    "ReschedulePods": {"risk": "low", "mode": "auto"},
    "CordonNode": {"risk": "medium", "mode": "auto"},
    "DrainNode": {
        "risk": "high",
        "mode": "approve",
        "approvers": {"kubernetes": {"users": ["alice", "bob"]}},
        "quorum": 1,
        "timeout": "1h",
    },
    "RaiseMemoryLimit": {
        "risk": "critical",
        "mode": "approve",
        "approvers": {"slack": {"users": ["U1", "U2"]}},
        "quorum": 2,
    },
    "ScaleUp": {
        "risk": "medium",
        "mode": "approve",
        "approvers": {"kubernetes": {"groups": ["ops"]}},
        "onTimeout": "Approve",
    },
    "Rollback": {"risk": "low", "mode": "deny"},
}
SPEC: dict[str, Any] = {
    "actions": RULES,
    "rateLimits": {
        "perService": {"maxActions": 2, "window": "10m"},
        "perNamespace": {"maxActions": 3, "window": "10m"},
        "perCluster": {"maxActions": 4, "window": "10m"},
    },
    "blastRadius": {"minHealthyNodes": "60%", "maxConcurrentActions": 2},
    "cooldown": "5m",
    "verifyWindow": "2m",
    "circuitBreaker": {"failures": 2, "window": "30m"},
}
POLICY = pol.parse("test", SPEC)
HEALTHY = pol.ClusterView(nodes_total=5, nodes_ready=5)


def request(
    action: pol.Action, target: str = "Pod/ns/p1", service: str = "web", namespace: str = "ns"
) -> pol.ActionRequest:
    subject = target if target.startswith("Node/") else f"ReplicatedService/{namespace}/{service}"
    return pol.ActionRequest(action, target, subject, namespace, service, "Test")


def record(
    at: float,
    target: str = "Pod/ns/other",
    outcome: pol.ActionOutcome = pol.ActionOutcome.SUCCEEDED,
    *,
    service: str = "web",
    namespace: str = "ns",
    subject: str | None = None,
) -> pol.Record:
    return pol.Record(
        A.RESTART_POD,
        target,
        subject or f"ReplicatedService/{namespace}/{service}",
        namespace,
        service,
        at,
        outcome,
    )


APPROVED = pol.ApprovalState(pol.ApprovalVerdict.APPROVED, frozenset({"kubectl:alice"}), "homeostat")

DECIDE_CASES = [
    # (id, request, history, view, approval, verdict, reason)
    (
        "auto low",
        request(A.RESTART_POD),
        [],
        HEALTHY,
        None,
        pol.PolicyVerdict.EXECUTE,
        pol.PolicyReason.ALLOWED,
    ),
    (
        "deny mode",
        request(A.ROLLBACK),
        [],
        HEALTHY,
        None,
        pol.PolicyVerdict.DENIED,
        pol.PolicyReason.POLICY_DENIES,
    ),
    (
        "high asks",
        request(A.DRAIN_NODE, "Node/n1"),
        [],
        HEALTHY,
        None,
        pol.PolicyVerdict.NEEDS_APPROVAL,
        pol.PolicyReason.AWAITING_APPROVAL,
    ),
    (
        "pending stays",
        request(A.DRAIN_NODE, "Node/n1"),
        [],
        HEALTHY,
        pol.ApprovalState(pol.ApprovalVerdict.PENDING),
        pol.PolicyVerdict.NEEDS_APPROVAL,
        pol.PolicyReason.AWAITING_APPROVAL,
    ),
    (
        "approved runs",
        request(A.DRAIN_NODE, "Node/n1"),
        [],
        HEALTHY,
        APPROVED,
        pol.PolicyVerdict.EXECUTE,
        pol.PolicyReason.APPROVED,
    ),
    (
        "denied is final",
        request(A.DRAIN_NODE, "Node/n1"),
        [],
        HEALTHY,
        pol.ApprovalState(pol.ApprovalVerdict.DENIED),
        pol.PolicyVerdict.DENIED,
        pol.PolicyReason.APPROVAL_DENIED,
    ),
    (
        "expired denies by default",
        request(A.DRAIN_NODE, "Node/n1"),
        [],
        HEALTHY,
        pol.ApprovalState(pol.ApprovalVerdict.EXPIRED),
        pol.PolicyVerdict.DENIED,
        pol.PolicyReason.APPROVAL_EXPIRED,
    ),
    (
        "expired approves when the policy says so",
        request(A.SCALE_UP, "ReplicatedService/ns/web"),
        [],
        HEALTHY,
        pol.ApprovalState(pol.ApprovalVerdict.EXPIRED),
        pol.PolicyVerdict.EXECUTE,
        pol.PolicyReason.APPROVED_ON_TIMEOUT,
    ),
    (
        "requester cannot approve",
        request(A.DRAIN_NODE, "Node/n1"),
        [],
        HEALTHY,
        pol.ApprovalState(pol.ApprovalVerdict.APPROVED, frozenset({"homeostat"}), "homeostat"),
        pol.PolicyVerdict.NEEDS_APPROVAL,
        pol.PolicyReason.QUORUM_NOT_MET,
    ),
    (
        "critical needs two",
        request(A.RAISE_MEMORY_LIMIT, "Container/ns/web/app"),
        [],
        HEALTHY,
        pol.ApprovalState(pol.ApprovalVerdict.APPROVED, frozenset({"slack:U1"}), "homeostat"),
        pol.PolicyVerdict.NEEDS_APPROVAL,
        pol.PolicyReason.QUORUM_NOT_MET,
    ),
    (
        "critical with two",
        request(A.RAISE_MEMORY_LIMIT, "Container/ns/web/app"),
        [],
        HEALTHY,
        pol.ApprovalState(pol.ApprovalVerdict.APPROVED, frozenset({"slack:U1", "slack:U2"}), "homeostat"),
        pol.PolicyVerdict.EXECUTE,
        pol.PolicyReason.APPROVED,
    ),
    (
        "cooldown",
        request(A.RESTART_POD),
        [record(NOW - 60, "Pod/ns/p1")],
        HEALTHY,
        None,
        pol.PolicyVerdict.THROTTLED,
        pol.PolicyReason.COOLDOWN,
    ),
    (
        "cooldown over",
        request(A.RESTART_POD),
        [record(NOW - 301, "Pod/ns/p1")],
        HEALTHY,
        None,
        pol.PolicyVerdict.EXECUTE,
        pol.PolicyReason.ALLOWED,
    ),
    (
        "service limit",
        request(A.RESTART_POD),
        [record(NOW - 10), record(NOW - 20)],
        HEALTHY,
        None,
        pol.PolicyVerdict.THROTTLED,
        pol.PolicyReason.RATE_LIMIT,
    ),
    (
        "service limit window slides",
        request(A.RESTART_POD),
        [record(NOW - 10), record(NOW - 601)],
        HEALTHY,
        None,
        pol.PolicyVerdict.EXECUTE,
        pol.PolicyReason.ALLOWED,
    ),
    (
        "namespace limit",
        request(A.RESTART_POD),
        [record(NOW - 10), record(NOW - 20, service="a"), record(NOW - 30, service="b")],
        HEALTHY,
        None,
        pol.PolicyVerdict.THROTTLED,
        pol.PolicyReason.RATE_LIMIT,
    ),
    (
        "cluster limit",
        request(A.RESTART_POD),
        [record(NOW - i, service=f"s{i}", namespace=f"n{i}") for i in range(1, 5)],
        HEALTHY,
        None,
        pol.PolicyVerdict.THROTTLED,
        pol.PolicyReason.RATE_LIMIT,
    ),
    (
        "concurrency",
        request(A.RESTART_POD),
        [
            record(NOW - 700, service="a", namespace="x", outcome=pol.ActionOutcome.IN_PROGRESS),
            record(NOW - 700, service="b", namespace="y", outcome=pol.ActionOutcome.IN_PROGRESS),
        ],
        HEALTHY,
        None,
        pol.PolicyVerdict.THROTTLED,
        pol.PolicyReason.CONCURRENCY,
    ),
    (
        "blast radius: 3 of 5 is 60 %",
        request(A.CORDON_NODE, "Node/n1"),
        [],
        pol.ClusterView(5, 3),
        None,
        pol.PolicyVerdict.EXECUTE,
        pol.PolicyReason.ALLOWED,
    ),
    (
        "blast radius: 2 of 5 is too few",
        request(A.RESCHEDULE_PODS, "Node/n1"),
        [],
        pol.ClusterView(5, 2),
        None,
        pol.PolicyVerdict.THROTTLED,
        pol.PolicyReason.BLAST_RADIUS,
    ),
    (
        "blast radius spares pod actions",
        request(A.RESTART_POD),
        [],
        pol.ClusterView(5, 0),
        None,
        pol.PolicyVerdict.EXECUTE,
        pol.PolicyReason.ALLOWED,
    ),
    (
        "circuit open",
        request(A.RESTART_POD, "Pod/ns/new"),
        [
            record(NOW - 900, outcome=pol.ActionOutcome.FAILED),
            record(NOW - 800, outcome=pol.ActionOutcome.FAILED),
        ],
        HEALTHY,
        None,
        pol.PolicyVerdict.THROTTLED,
        pol.PolicyReason.CIRCUIT_OPEN,
    ),
    (
        "circuit closes when failures age out",
        request(A.RESTART_POD, "Pod/ns/new"),
        [
            record(NOW - 1801, outcome=pol.ActionOutcome.FAILED),
            record(NOW - 800, outcome=pol.ActionOutcome.FAILED),
        ],
        HEALTHY,
        None,
        pol.PolicyVerdict.EXECUTE,
        pol.PolicyReason.ALLOWED,
    ),
    (
        "circuit open even when approved",
        request(A.DRAIN_NODE, "Node/n1"),
        [
            record(NOW - 900, "Node/n1", pol.ActionOutcome.FAILED, subject="Node/n1"),
            record(NOW - 800, "Node/n1", pol.ActionOutcome.FAILED, subject="Node/n1"),
        ],
        HEALTHY,
        APPROVED,
        pol.PolicyVerdict.THROTTLED,
        pol.PolicyReason.CIRCUIT_OPEN,
    ),
    (
        "approved but rate limited",
        request(A.DRAIN_NODE, "Node/n1"),
        [record(NOW - 10), record(NOW - 20)],
        HEALTHY,
        APPROVED,
        pol.PolicyVerdict.THROTTLED,
        pol.PolicyReason.RATE_LIMIT,
    ),
]


@pytest.mark.parametrize("case", DECIDE_CASES, ids=[case[0] for case in DECIDE_CASES])
def test_decide(case: tuple[Any, ...]) -> None:
    _, req, history, view, approval, verdict, reason = case
    decision = pol.decide(POLICY, req, history, view, NOW, approval=approval)
    assert (decision.verdict, decision.reason) == (verdict, reason), decision.message
    assert decision.message


def test_an_action_left_out_is_denied() -> None:
    policy = pol.parse("sparse", {"actions": {"RestartPod": {"risk": "low", "mode": "auto"}}})
    decision = pol.decide(policy, request(A.DRAIN_NODE, "Node/n1"), [], HEALTHY, NOW)
    assert (decision.verdict, decision.reason) == (pol.PolicyVerdict.DENIED, pol.PolicyReason.NOT_IN_POLICY)


def _with(path: str, value: Any) -> dict[str, Any]:
    spec = yaml.safe_load(yaml.safe_dump(SPEC))
    node = spec
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return spec


BAD = [
    ("actions.DrainNode.mode", "auto", "spec.actions.DrainNode.mode", "cannot run automatically"),
    ("actions.RaiseMemoryLimit.quorum", 1, "spec.actions.RaiseMemoryLimit.quorum", "two-person rule"),
    ("actions.DrainNode.approvers", {}, "spec.actions.DrainNode.approvers", "at least one approver"),
    ("actions.DrainNode.onTimeout", "Approve", "spec.actions.DrainNode.onTimeout", "low or medium"),
    ("actions.DrainNode.risk", "extreme", "spec.actions.DrainNode.risk", "must be one of"),
    ("actions.Reboot", {"risk": "low", "mode": "auto"}, "spec.actions", "must be one of"),
    ("cooldown", "soon", "spec.cooldown", "duration"),
    ("cooldown", "0s", "spec.cooldown", "positive"),
    ("blastRadius.minHealthyNodes", "150%", "spec.blastRadius.minHealthyNodes", "percentage"),
    (
        "rateLimits.perService",
        {"maxActions": -1, "window": "1m"},
        "spec.rateLimits.perService.maxActions",
        "between",
    ),
    ("circuitBreaker.failures", 0, "spec.circuitBreaker.failures", "between"),
    ("actions.DrainNode.quorum", True, "spec.actions.DrainNode.quorum", "integer"),
    # Issue 14.4 and 14.5, for a policy stored under an older CRD: reported, never a 422 loop.
    (
        "actions.ScaleUp",
        {"risk": "medium", "mode": "approve", "approvers": {"kubernetes": {"users": ["alice", "homeostat"]}}},
        "spec.actions.ScaleUp.approvers",
        "may not include homeostat",
    ),
    (
        "actions.ScaleUp",
        {"risk": "medium", "mode": "approve", "quorum": 3, "approvers": {"slack": {"users": ["U1", "U2"]}}},
        "spec.actions.ScaleUp.quorum",
        "can never be met",
    ),
]


@pytest.mark.parametrize(("path", "value", "field", "words"), BAD, ids=[f"{b[0]}={b[1]}" for b in BAD])
def test_bad_policies_name_the_field(path: str, value: Any, field: str, words: str) -> None:
    with pytest.raises(pol.PolicyError) as info:
        pol.parse("bad", _with(path, value))
    assert info.value.field == field
    assert words in info.value.message


def test_the_shipped_default_policy_parses_and_is_conservative() -> None:
    doc = yaml.safe_load((ROOT / "policies" / "default.yaml").read_text())
    assert doc["metadata"]["name"] == pol.DEFAULT_POLICY
    policy = pol.parse(doc["metadata"]["name"], doc["spec"])
    assert set(policy.actions) == set(pol.Action)
    for action in (A.RESTART_POD, A.ROLLBACK, A.RESCHEDULE_PODS):
        assert (policy.actions[action].risk, policy.actions[action].mode) == (
            appr.Risk.LOW,
            pol.ActionMode.AUTO,
        )
    assert policy.actions[A.DRAIN_NODE].mode is pol.ActionMode.APPROVE
    assert policy.actions[A.RAISE_MEMORY_LIMIT].mode is pol.ActionMode.APPROVE
    assert all(rule.on_timeout is pol.OnTimeout.DENY for rule in policy.actions.values())


def test_records_round_trip_and_bad_ones_are_refused_by_field() -> None:
    original = record(NOW, outcome=pol.ActionOutcome.FAILED)
    assert pol.Record.from_storage(original.as_in_storage()) == original
    with pytest.raises(fields.StorageError, match=r"history\[3\]"):
        pol.Record.from_storage({"action": "Explode"}, "history[3]")


def test_min_healthy_as_a_count() -> None:
    policy = pol.parse("count", _with("blastRadius.minHealthyNodes", 4))
    cordon = request(A.CORDON_NODE, "Node/n1")
    assert pol.decide(policy, cordon, [], pol.ClusterView(5, 3), NOW).reason is pol.PolicyReason.BLAST_RADIUS
    assert pol.decide(policy, cordon, [], pol.ClusterView(5, 4), NOW).verdict is pol.PolicyVerdict.EXECUTE


def _schema_nodes(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, child in (node.get("properties") or {}).items():
        found += _schema_nodes(child, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        found += [(p, n) for p, n in _schema_nodes(node["items"], path + "[]")[1:]]
    return found


def test_every_policy_field_is_described_and_bounded() -> None:
    crd = yaml.safe_load((ROOT / "crds" / "remediationpolicies.homeostat.dev.yaml").read_text())
    assert crd["spec"]["scope"] == "Cluster"
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    nodes = [(p, n) for p, n in _schema_nodes(schema) if p and p != "metadata"]
    assert [p for p, n in nodes if not str(n.get("description", "")).strip()] == []
    # CEL needs bounded strings and lists to prove a rule's cost.
    assert [p for p, n in nodes if n.get("type") == "array" and "maxItems" not in n] == []
    assert {p for p, _ in nodes} >= {f"spec.actions.{a.value}.quorum" for a in pol.Action}
    chart = ROOT / "charts" / "homeostat" / "crds" / "remediationpolicies.homeostat.dev.yaml"
    assert chart.read_text() == (ROOT / "crds" / "remediationpolicies.homeostat.dev.yaml").read_text()


WIDE = appr.Approvers(
    slack=frozenset({"U1", "U2"}),
    slack_groups=frozenset({"S1"}),
    users=frozenset({"alice", "bob"}),
    groups=frozenset({"ops", "sre"}),
)
NARROW = [
    ("service lists nothing", None, WIDE),
    ("empty block", {"approvers": {}}, WIDE),
    (
        "slack users narrowed, groups dropped",
        {"approvers": {"slack": ["U2", "U9"]}},
        dataclasses.replace(WIDE, slack=frozenset({"U2"}), slack_groups=frozenset()),
    ),
    (
        "kubernetes narrowed, never widened",
        {"approvers": {"kubernetes": {"users": ["mallory"], "groups": ["sre"]}}},
        dataclasses.replace(WIDE, users=frozenset(), groups=frozenset({"sre"})),
    ),
]


@pytest.mark.parametrize(("service", "expected"), [n[1:] for n in NARROW], ids=[n[0] for n in NARROW])
def test_a_service_can_only_narrow_the_approvers(
    service: dict[str, Any] | None, expected: appr.Approvers
) -> None:
    assert pol.narrowed(WIDE, service) == expected


@pytest.mark.parametrize(
    ("service", "seconds"),
    [(None, 3600.0), ({"timeout": "10m"}, 600.0), ({"timeout": "2h"}, 3600.0), ({"timeout": "soon"}, 3600.0)],
)
def test_the_shorter_timeout_wins(service: dict[str, Any] | None, seconds: float) -> None:
    assert pol.approval_timeout(POLICY.actions[A.DRAIN_NODE], service) == seconds
