"""The healing loop (handlers.healing.heal_all) over fake ports: a failed pod of a service whose
policy says RestartPod needs approval, from the policy lookup through the approval gate to the
action and the outcome recorded on the gate (issue 15)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import fakes
import pytest

from homeostat import ports
from homeostat.core import approval as appr
from homeostat.core import remediation as rem
from homeostat.handlers import healing
from homeostat.handlers import runtime as rt

APPROVE_RESTART = {
    "actions": {
        "RestartPod": {"risk": "medium", "mode": "approve", "approvers": {"kubernetes": {"users": ["alice"]}}}
    }
}
FAILED_POD = rem.PodView(
    "web-1", node="n1", phase="Failed", containers=(rem.ContainerView("app", terminated_exit=1),)
)
APPROVED_BY_ALICE = {
    "status": {
        "phase": "Approved",
        "decisions": [
            {"user": "alice", "channel": "kubectl", "verdict": "approve", "at": "2023-11-14T22:00:00Z"}
        ],
    }
}
GATE_NAME = "restartpod-web-1"


def _body(**spec: Any) -> dict[str, Any]:
    spec.setdefault("healing", {"crashLoop": {"enabled": True}})
    return fakes.service(**spec)


def _indexes(body: Mapping[str, Any], policies: Mapping[str, Any] | None = None) -> dict[str, Any]:
    stores = {name: [spec] for name, spec in (policies or {}).items()}
    return fakes.indexes(body, healing_pods={("prod", "web"): [FAILED_POD]}, healing_policies=stores)


def _passes(runtime: rt.Runtime, idx: Mapping[str, Any], count: int) -> list[fakes.PostedEvent]:
    return _story(runtime, (idx, count))


Step = tuple[Mapping[str, Any], int] | Callable[[], None]


def _story(runtime: rt.Runtime, *steps: Step) -> list[fakes.PostedEvent]:
    """Healing passes over indexes ``(idx, count)``, with plain calls between them (to change a
    fake or check what happened so far), all on one event loop: the runtime's Event queue
    belongs to the loop it was first used on."""

    async def scenario() -> list[fakes.PostedEvent]:
        for step in steps:
            if callable(step):
                await fakes.posted(runtime)
                step()
                continue
            idx, count = step
            for _ in range(count):
                await healing.heal_all(runtime, idx)
        return await fakes.posted(runtime)

    return fakes.run(scenario())


def _healing_status(runtime: rt.Runtime) -> Mapping[str, Any]:
    return runtime.reported["uid-web"]["healing"]


POLICY_ERRORS = [
    # (spec.approvals, the RemediationPolicies there are, the error reported)
    ({}, {}, "RemediationPolicy default not found; no healing action is taken"),
    ({"policy": "strict"}, {"default": APPROVE_RESTART}, "RemediationPolicy strict not found"),
    (
        {},
        {"default": {"actions": {"DrainNode": {"risk": "high", "mode": "auto"}}}},
        "RemediationPolicy default is invalid (spec.actions.DrainNode.mode:",
    ),
]


@pytest.mark.parametrize(("approvals", "policies", "error"), POLICY_ERRORS)
def test_a_missing_or_invalid_policy_is_reported_once_and_nothing_is_done(
    approvals: Mapping[str, Any], policies: Mapping[str, Any], error: str
) -> None:
    workloads, actions, gate = fakes.FakeWorkloads(), fakes.FakeHealing(), fakes.FakeGate()
    runtime = fakes.runtime_of(workloads, healing_actions=actions, gate=gate)
    body = _body(approvals=approvals) if approvals else _body()
    events = _passes(runtime, _indexes(body, policies), 3)

    assert [(e.type, e.reason) for e in events] == [("Warning", "RemediationPolicyMissing")]
    assert events[0].message.startswith(error)
    assert _healing_status(runtime)["policyError"].startswith(error)
    assert len(workloads.patched) == 1
    assert (actions.calls, gate.requests) == ([], [])


def test_a_policy_error_is_cleared_when_the_policy_appears_and_told_again_when_it_goes() -> None:
    runtime = fakes.runtime_of(gate=fakes.FakeGate())
    body = _body()
    seen: list[Any] = []
    events = _story(
        runtime,
        (_indexes(body), 1),
        lambda: seen.append(_healing_status(runtime)["policyError"]),
        (_indexes(body, {"default": APPROVE_RESTART}), 1),
        lambda: seen.append(_healing_status(runtime)["policyError"]),
        (_indexes(body), 1),
    )
    assert seen[0].startswith("RemediationPolicy default not found") and seen[1] is None
    assert [e.reason for e in events].count("RemediationPolicyMissing") == 2


@pytest.mark.parametrize(
    "gate",
    [
        pytest.param(ports.NoApprovalGate(), id="no-gate-configured"),
        pytest.param(fakes.FakeGate(error=ports.Unavailable("API server down")), id="gate-down"),
    ],
)
def test_an_unavailable_gate_is_told_once_per_incident_and_the_action_never_runs(gate: Any) -> None:
    actions = fakes.FakeHealing()
    runtime = fakes.runtime_of(healing_actions=actions, gate=gate)
    events = _passes(runtime, _indexes(_body(), {"default": APPROVE_RESTART}), 4)

    assert [(e.type, e.reason) for e in events] == [("Warning", "ApprovalUnavailable")]
    assert "web-1" in events[0].message
    assert actions.calls == []
    [incident] = _healing_status(runtime)["incidents"]
    assert (incident["phase"], incident["action"]) == ("AwaitingApproval", "RestartPod")
    assert "lastRemediation" not in runtime.reported["uid-web"]


def test_a_gate_back_after_an_outage_is_asked_again_and_a_later_outage_told_again() -> None:
    gate = fakes.FakeGate(error=ports.Unavailable("down"))
    runtime = fakes.runtime_of(gate=gate)
    idx = _indexes(_body(), {"default": APPROVE_RESTART})

    def back() -> None:
        gate.error = None

    def down_again() -> None:
        gate.error = ports.Unavailable("down again")

    events = _story(runtime, (idx, 2), back, (idx, 1), down_again, (idx, 2))
    assert [e.reason for e in events] == ["ApprovalUnavailable", "ApprovalRequested", "ApprovalUnavailable"]


class OrderedHealing(fakes.FakeHealing):
    """Records, with each action, the healing status this process had stored by then."""

    def __init__(self, runtime_box: list[rt.Runtime], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.runtime_box = runtime_box
        self.stored_before: list[Mapping[str, Any]] = []

    async def delete_pod(self, namespace: str, name: str, *, force: bool) -> bool:
        self.stored_before.append(self.runtime_box[0].reported["uid-web"]["healing"])
        return await super().delete_pod(namespace, name, force=force)


def test_an_approved_action_runs_through_healing_actions_and_its_outcome_is_recorded() -> None:
    box: list[rt.Runtime] = []
    actions = OrderedHealing(box, approvals={("prod", GATE_NAME): APPROVED_BY_ALICE})
    gate = fakes.FakeGate(phase=appr.ApprovalPhase.APPROVED, name=GATE_NAME)
    runtime = fakes.runtime_of(healing_actions=actions, gate=gate)
    box.append(runtime)
    idx = _indexes(_body(), {"default": APPROVE_RESTART})

    first: list[str] = []

    def asked() -> None:
        events = runtime.events
        assert isinstance(events, fakes.FakeEvents)
        first.extend(events.reasons())
        assert actions.calls == []  # the answer is read on this pass and acted on at the next

    events = _story(runtime, (idx, 1), asked, (idx, 1))
    assert first == ["ApprovalRequested"]
    [(namespace, request)] = gate.requests[:1]
    assert (namespace, request.action, str(request.target)) == ("prod", "RestartPod", "Pod/prod/web-1")
    assert request.approvers.users == frozenset({"alice"})
    assert actions.calls == [("delete_pod", "prod", "web-1", False)]
    # Write-ahead: the incident is stored as acted on before the pod is deleted.
    assert actions.stored_before[0]["incidents"][0]["phase"] == "Verifying"
    [(ticket, result, message)] = gate.outcomes
    assert (ticket.name, result, message) == (
        GATE_NAME,
        appr.ActionResult.SUCCEEDED,
        "deleted 1 pod(s): web-1",
    )
    assert [e.reason for e in events] == ["ApprovalRequested", "Remediation"]
    last = runtime.reported["uid-web"]["lastRemediation"]
    assert (last["action"], last["target"], last["outcome"]) == ("RestartPod", "Pod/prod/web-1", "Executed")
    assert _healing_status(runtime)["history"][0]["outcome"] == "InProgress"


def test_an_approval_without_recorded_deciders_runs_nothing() -> None:
    # The gate says Approved, but the Approval's status names nobody: the policy's own check of
    # the quorum holds the action back.
    actions = fakes.FakeHealing(approvals={("prod", GATE_NAME): {"status": {"phase": "Approved"}}})
    gate = fakes.FakeGate(phase=appr.ApprovalPhase.APPROVED, name=GATE_NAME)
    runtime = fakes.runtime_of(healing_actions=actions, gate=gate)
    _passes(runtime, _indexes(_body(), {"default": APPROVE_RESTART}), 3)
    assert actions.calls == [] and gate.outcomes == []
    assert _healing_status(runtime)["incidents"][0]["reason"] == "QuorumNotMet"


def test_an_approved_action_that_fails_is_reported_and_recorded_as_failed() -> None:
    actions = fakes.FakeHealing(
        error=ports.Unavailable("pods is forbidden"), approvals={("prod", GATE_NAME): APPROVED_BY_ALICE}
    )
    gate = fakes.FakeGate(phase=appr.ApprovalPhase.APPROVED, name=GATE_NAME)
    runtime = fakes.runtime_of(healing_actions=actions, gate=gate)
    events = _passes(runtime, _indexes(_body(), {"default": APPROVE_RESTART}), 2)

    assert actions.calls == [("delete_pod", "prod", "web-1", False)]
    [(_, result, message)] = gate.outcomes
    assert result is appr.ActionResult.FAILED and "pods is forbidden" in message
    assert [(e.type, e.reason) for e in events][-1] == ("Warning", "RemediationFailed")
    assert runtime.reported["uid-web"]["lastRemediation"]["outcome"] == "Failed"


def test_a_denied_approval_escalates_to_a_human_and_runs_nothing() -> None:
    actions, notifier = fakes.FakeHealing(), fakes.FakeNotifier()
    gate = fakes.FakeGate(phase=appr.ApprovalPhase.DENIED, name=GATE_NAME)
    runtime = fakes.runtime_of(healing_actions=actions, gate=gate, notifier=notifier)
    events = _passes(runtime, _indexes(_body(), {"default": APPROVE_RESTART}), 3)

    assert actions.calls == [] and gate.outcomes == []
    assert [e.reason for e in events] == ["ApprovalRequested", "RemediationEscalated"]
    assert [n.kind for n in notifier.sent] == ["RemediationEscalated"]
    assert _healing_status(runtime)["incidents"][0]["phase"] == "Escalated"


def test_an_automatic_action_runs_without_asking() -> None:
    actions, gate = fakes.FakeHealing(), fakes.FakeGate()
    runtime = fakes.runtime_of(healing_actions=actions, gate=gate)
    auto = {"actions": {"RestartPod": {"risk": "low", "mode": "auto"}}}
    events = _passes(runtime, _indexes(_body(), {"default": auto}), 1)
    assert actions.calls == [("delete_pod", "prod", "web-1", False)]
    assert gate.requests == [] and gate.outcomes == []  # no ticket, so nothing to record
    assert [e.reason for e in events] == ["Remediation"]


def test_a_service_without_healing_is_left_alone() -> None:
    workloads, actions = fakes.FakeWorkloads(), fakes.FakeHealing()
    runtime = fakes.runtime_of(workloads, healing_actions=actions)
    events = _passes(runtime, _indexes(_body(healing={})), 2)
    assert (workloads.patched, actions.calls, events) == ([], [], [])


class ApprovalUnreadable(fakes.FakeHealing):
    """Carries out actions, but cannot read an Approval back (the API server blinked)."""

    async def approval(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        raise ports.Unavailable("the API server is unavailable")


def test_an_approval_that_cannot_be_read_does_not_undo_what_the_pass_already_did() -> None:
    policy = {
        "actions": {
            "RaiseMemoryLimit": {"risk": "low", "mode": "auto"},
            **APPROVE_RESTART["actions"],
        }
    }
    oom_killed = rem.PodView(
        "web-2",
        node="n1",
        phase="Running",
        ready=True,
        containers=(
            rem.ContainerView("app", restarts=1, last_reason="OOMKilled", last_finished=fakes.NOW - 30),
        ),
    )
    actions = ApprovalUnreadable()
    runtime = fakes.runtime_of(
        healing_actions=actions, gate=fakes.FakeGate(phase=appr.ApprovalPhase.APPROVED, name=GATE_NAME)
    )
    body = _body(healing={"crashLoop": {"enabled": True}, "oom": {"enabled": True}})
    idx = _indexes(body, {"default": policy})
    idx["healing_pods"][("prod", "web")] = [rem.PodView("web-1", node="n1", phase="Running", ready=True)]

    async def scenario() -> None:
        await healing.heal_all(runtime, idx)  # all well: this process now remembers the service
        # web-2 is OOM-killed (RaiseMemoryLimit runs at once) and web-1 failed (RestartPod was
        # approved, but the Approval cannot be read back on this pass).
        idx["healing_pods"][("prod", "web")] = [FAILED_POD, oom_killed]
        for _ in range(3):
            await healing.heal_all(runtime, idx)
            body["status"] = dict(runtime.reported.get("uid-web") or {})  # the watch catches up

    fakes.run(scenario())
    raised = [call for call in actions.calls if call[0] == "set_memory_limit"]
    assert raised == [("set_memory_limit", "prod", "web", "app", "160Mi")]


def test_a_stored_healing_state_that_cannot_be_read_heals_nothing_and_says_so_once() -> None:
    """The stored-state rule (core/fields.py): read as fresh, the history behind rate limits and
    cooldowns would be forgotten and an incident being verified acted on again."""
    workloads, actions, gate = fakes.FakeWorkloads(), fakes.FakeHealing(), fakes.FakeGate()
    runtime = fakes.runtime_of(workloads, healing_actions=actions, gate=gate)
    broken = {"incidents": [], "history": [{"action": "RestartPod", "at": "soon"}]}
    body = fakes.service(healing={"crashLoop": {"enabled": True}}, status={"healing": broken})
    events = _passes(runtime, _indexes(body, {"default": APPROVE_RESTART}), 3)
    assert [(e.type, e.reason) for e in events] == [("Warning", "RemediationStateUnreadable")]
    assert "status.healing.history[0]" in events[0].message
    healing_status = _healing_status(runtime)
    assert healing_status["history"] == broken["history"]  # kept for a human to fix or clear
    assert "history[0]" in healing_status["statusError"]
    assert (actions.calls, gate.requests) == ([], [])
    assert len(workloads.patched) == 1
