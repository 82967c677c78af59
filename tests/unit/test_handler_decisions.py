"""Decisions that used to be made inside handlers, now pure core functions (issue 15): the
healing view of a service, the approval request for an action, an autoscaling evaluation's
status and the merge of one maintenance check's part. Tables of input -> output."""

from __future__ import annotations

from typing import Any

import pytest

from homeostat.core import approval as appr
from homeostat.core import fields
from homeostat.core import policy as pol
from homeostat.core import remediation as rem
from homeostat.core import scaling as sc
from homeostat.core import spec as specs
from homeostat.core import trends as tr

NOW = 1_700_000_000.0
TEMPLATE = {
    "metadata": {"labels": {"app": "web"}},
    "spec": {"containers": [{"name": "app", "image": "x", "resources": {"limits": {"memory": "128Mi"}}}]},
}


def _body(
    replicas: dict[str, Any] | None, status: dict[str, Any] | None = None, **spec: Any
) -> dict[str, Any]:
    raw: dict[str, Any] = {"template": TEMPLATE, **spec}
    if replicas is not None:
        raw["replicas"] = replicas
    return {
        "metadata": {"name": "web", "namespace": "prod", "uid": "u1"},
        "spec": raw,
        "status": status or {},
    }


# --- the healing view ---------------------------------------------------------------------------

VIEW_REPLICAS = [
    # (spec.replicas, status, expected replicas, expected max)
    ({"min": 2, "max": 6}, {}, 2, 6),  # desired unset: min
    ({"min": 0, "max": 6, "desired": 0}, {}, 0, 6),  # desired 0 is 0, not 1 (the old `or` chain)
    ({"min": 1, "max": 4, "desired": 9}, {}, 4, 4),  # kept inside the bounds
    ({"min": 1, "max": 30, "desired": 12}, {"desiredReplicas": 3}, 12, 30),  # the spec, not a stale status
    (None, {}, 1, 10),  # the defaults of the schema
]


@pytest.mark.parametrize(("replicas", "status", "count", "top"), VIEW_REPLICAS)
def test_the_view_counts_replicas_as_the_workload_runs_them(
    replicas: dict[str, Any] | None, status: dict[str, Any], count: int, top: int
) -> None:
    view = rem.view_of(_body(replicas, status), rem.parse_healing({}), pods=(), nodes={}, slo=())
    assert (view.replicas, view.max_replicas) == (count, top)


def test_the_view_reads_revisions_limits_and_autoscaling_from_the_body() -> None:
    status = {"stableRevision": "abc", "rollback": {"revision": "def"}}
    body = _body(
        {"min": 1, "max": 3},
        status,
        autoscaling={"mode": "Reactive", "metric": {"query": "q", "targetPerReplica": 1}},
    )
    view = rem.view_of(body, rem.parse_healing({}), pods=(), nodes={}, slo=())
    assert view.stable_revision == "abc" and view.rolled_back == "def"
    assert view.memory_limits == {"app": 128 * 2**20}
    assert view.autoscaled is True
    assert view.ref == "ReplicatedService/prod/web"


def test_replicas_that_do_not_parse_build_no_view() -> None:
    with pytest.raises(specs.SpecError):
        rem.view_of(_body({"min": "two"}), rem.parse_healing({}), pods=(), nodes={}, slo=())


# --- the approval request -----------------------------------------------------------------------

RULE = pol.ActionRule(
    pol.Action.DRAIN_NODE,
    appr.Risk.HIGH,
    pol.ActionMode.APPROVE,
    approvers=appr.Approvers(
        slack=frozenset({"U1", "U2"}), slack_groups=frozenset({"S1"}), users=frozenset({"alice"})
    ),
    quorum=2,
    timeout_seconds=3600,
)
DRAIN = pol.ActionRequest(pol.Action.DRAIN_NODE, "Node/n1", "Node/n1", "prod", "web", "NodePressure")

REQUESTS = [
    # (spec.approvals, expected slack users, expected slack groups, expected expiry, channel)
    (None, {"U1", "U2"}, {"S1"}, NOW + 3600, ""),
    # Slack groups cannot be matched against the user IDs a service lists: they are dropped.
    ({"approvers": {"slack": ["U2", "U9"]}}, {"U2"}, set(), NOW + 3600, ""),
    ({"timeout": "10m", "slack": {"channel": "#ops"}}, {"U1", "U2"}, {"S1"}, NOW + 600, "#ops"),
    ({"timeout": "2h"}, {"U1", "U2"}, {"S1"}, NOW + 3600, ""),  # the policy's shorter one wins
]


@pytest.mark.parametrize(("settings", "slack", "groups", "expires", "channel"), REQUESTS)
def test_the_approval_request_narrows_and_shortens_never_widens(
    settings: dict[str, Any] | None, slack: set[str], groups: set[str], expires: float, channel: str
) -> None:
    made = pol.approval_request(DRAIN, RULE, settings, symptom="x" * 900, occurrence="o1", now=NOW)
    assert made.approvers.slack == frozenset(slack)
    assert made.approvers.slack_groups == frozenset(groups)
    assert made.approvers.users == frozenset({"alice"})
    assert (made.expires_at, made.channel) == (expires, channel)
    assert (made.action, made.requester, made.risk, made.quorum) == (
        "DrainNode",
        pol.REQUESTER,
        appr.Risk.HIGH,
        2,
    )
    assert made.target == appr.Target("Node", "", "n1") and made.incident == "o1"
    assert len(made.evidence["symptom"]) == 500


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("Node/n1", appr.Target("Node", "", "n1")),
        ("Pod/prod/web-1", appr.Target("Pod", "prod", "web-1")),
        ("ReplicatedService/prod/web", appr.Target("ReplicatedService", "prod", "web")),
    ],
)
def test_approval_targets(text: str, target: appr.Target) -> None:
    assert pol.approval_target(text) == target
    assert str(target) == text


# --- the autoscaling status ---------------------------------------------------------------------


def test_an_evaluation_status_records_the_decision_and_drops_an_absent_forecast() -> None:
    decision = sc.ScalingDecision(
        desired=4, current=2, mode=sc.ScalingMode.REACTIVE, reason=sc.ScalingReason.REACTIVE, reactive=4
    )
    status = sc.evaluation_status(
        decision, sc.ScalingState(), current=2, metric=41.1234567, model=None, now=NOW
    )
    auto = status["autoscaling"]
    assert (auto["current"], auto["desired"], auto["reactive"], auto["mode"]) == (2, 4, 4, "Reactive")
    assert auto["metric"] == 41.123457 and auto["model"] is None
    assert auto["lastEvaluated"] == fields.rfc3339(NOW)
    assert status["forecast"] is None  # merge-patched as null: a stale forecast is removed


# --- the maintenance merge ----------------------------------------------------------------------

PREVIOUS = {
    "lastEvaluated": "t0",
    "reason": "Evaluated",
    "pods": 3,
    "disk": {"reason": "Evaluated", "checked": 2},
    "requests": [
        {"key": "m1", "requestedAt": "2023-11-14T22:13:20Z"},  # memory's (no resource: written before others)
        {"key": "d1", "resource": "disk", "requestedAt": "2023-11-14T22:13:20Z"},
    ],
}

MERGES = [
    # (resource, part, requests, expected keys of each part, expected request keys)
    (
        tr.Resource.DISK,
        {"reason": "Evaluated", "checked": 5},
        [{"key": "d2", "resource": "disk"}],
        ["m1", "d2"],
    ),
    (tr.Resource.DISK, {"reason": "MetricUnavailable"}, None, ["m1", "d1"]),  # requests kept
    (tr.Resource.DISK, None, None, ["m1"]),  # switched off: its requests go too
    (tr.Resource.MEMORY, {"reason": "Evaluated", "pods": 1}, [], ["d1"]),
    (tr.Resource.RISK, {"reason": "Evaluated"}, [{"key": "r1", "resource": "risk"}], ["m1", "d1", "r1"]),
]


@pytest.mark.parametrize(("resource", "part", "requests", "keys"), MERGES)
def test_a_check_replaces_only_its_own_part(
    resource: tr.Resource, part: dict[str, Any] | None, requests: list[dict[str, Any]] | None, keys: list[str]
) -> None:
    merged = tr.merge_maintenance(PREVIOUS, resource, part, requests)
    assert merged is not None
    assert [r["key"] for r in merged["requests"]] == keys
    if resource is not tr.Resource.DISK:
        assert merged["disk"] == PREVIOUS["disk"]
    if resource is not tr.Resource.MEMORY:
        assert merged["pods"] == 3
    else:
        assert merged["pods"] == 1 and merged["lastEvaluated"] is None  # null, so the patch drops it


def test_nothing_left_removes_the_block_and_the_list_is_bounded() -> None:
    only_disk = {"disk": {"reason": "Evaluated"}, "requests": [{"key": "d1", "resource": "disk"}]}
    assert tr.merge_maintenance(only_disk, tr.Resource.DISK, None) is None
    many = [{"key": f"r{i}", "resource": "risk"} for i in range(100)]
    merged = tr.merge_maintenance({}, tr.Resource.RISK, {"reason": "Evaluated"}, many)
    assert merged is not None and len(merged["requests"]) == tr.MAX_REQUESTS


def test_own_parts() -> None:
    assert tr.own_part(PREVIOUS, tr.Resource.MEMORY) == {
        "lastEvaluated": "t0",
        "reason": "Evaluated",
        "pods": 3,
    }
    assert tr.own_part(PREVIOUS, tr.Resource.DISK) == {"reason": "Evaluated", "checked": 2}
