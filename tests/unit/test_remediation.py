"""Table-driven tests of the healing core: detection, ladders, verification and escalation.

Observations are built from pod and node bodies shaped like the API server's, so ``PodView.of``
and ``NodeView.of`` are exercised too. Time is an argument everywhere; no clock is read.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterator
from typing import Any

import pytest

from homeostat.core import fields
from homeostat.core import policy as pol
from homeostat.core import remediation as rem

NOW = 1_000_000.0
A, S = pol.Action, rem.Symptom
NS, SVC = "ns", "web"
SERVICE = f"ReplicatedService/{NS}/{SVC}"


def iso(seconds_ago: float) -> str:
    return datetime.datetime.fromtimestamp(NOW - seconds_ago, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(
    name: str,
    *,
    node: str = "n1",
    revision: str = "r1",
    phase: str = "Running",
    ready: bool = True,
    not_ready_for: float = 0,
    restarts: int = 0,
    last_reason: str = "",
    last_finished_ago: float | None = None,
    waiting: str = "",
    exit_code: int | None = None,
) -> rem.PodView:
    container: dict[str, Any] = {"name": "app", "restartCount": restarts, "state": {}}
    if waiting:
        container["state"] = {"waiting": {"reason": waiting}}
    if exit_code is not None:
        container["state"] = {"terminated": {"exitCode": exit_code, "reason": "Error", "finishedAt": iso(1)}}
    if last_reason:
        container["lastState"] = {
            "terminated": {"reason": last_reason, "finishedAt": iso(last_finished_ago or 0)}
        }
    elif last_finished_ago is not None:
        container["lastState"] = {"terminated": {"reason": "Error", "finishedAt": iso(last_finished_ago)}}
    body = {
        "metadata": {"name": name, "labels": {rem.LABEL_REVISION: revision}},
        "spec": {"nodeName": node},
        "status": {
            "phase": phase,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "lastTransitionTime": iso(not_ready_for),
                }
            ],
            "containerStatuses": [container],
        },
    }
    return rem.PodView.of(body)


def node(
    name: str,
    *,
    ready: bool = True,
    down_for: float = 0,
    unschedulable: bool = False,
    pressure_for: float | None = None,
) -> rem.NodeView:
    conditions = [
        {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": iso(down_for)}
    ]
    if pressure_for is not None:
        conditions.append(
            {"type": "MemoryPressure", "status": "True", "lastTransitionTime": iso(pressure_for)}
        )
    body = {
        "metadata": {"name": name},
        "spec": {"unschedulable": unschedulable},
        "status": {"conditions": conditions},
    }
    return rem.NodeView.of(body)


ALL_ON = rem.parse_healing(
    {
        "crashLoop": {"restartThreshold": 3, "window": "10m"},
        "oom": {"increasePercent": 50, "maxMemory": "1Gi"},
        "nodeFailure": {"gracePeriod": "30s", "cordonAfter": "5m"},
        "predictiveMaintenance": {"query": "risk"},
    }
)


def view(*pods: rem.PodView, nodes: tuple[rem.NodeView, ...] = (), **extra: Any) -> rem.ServiceView:
    fields: dict[str, Any] = {
        "namespace": NS,
        "name": SVC,
        "healing": ALL_ON,
        "stable_revision": "r1",
        "current_revision": "r1",
        "pods": pods,
        "nodes": {n.name: n for n in (nodes or (node("n1"), node("n2")))},
        "memory_limits": {"app": 256 * 2**20},
        "replicas": 3,
        "max_replicas": 5,
    }
    fields.update(extra)
    return rem.ServiceView(**fields)


DETECT = [
    ("healthy", view(pod("a"), pod("b")), []),
    (
        "failed pod of a new revision",
        view(pod("a", revision="r2", phase="Failed", exit_code=1), current_revision="r2"),
        [S.CRASH_LOOP_NEW_REVISION],
    ),
    ("failed pod of the stable revision", view(pod("a", phase="Failed", exit_code=1)), [S.POD_FAILED]),
    ("restarts within the window", view(pod("a", restarts=5, last_finished_ago=30)), [S.CRASH_LOOP]),
    ("restarts long ago", view(pod("a", restarts=5, last_finished_ago=3600)), []),
    ("below the threshold", view(pod("a", restarts=2, last_finished_ago=30)), []),
    ("back-off", view(pod("a", waiting="CrashLoopBackOff")), [S.CRASH_LOOP]),
    (
        "back-off in a new revision",
        view(pod("a", revision="r2", waiting="CrashLoopBackOff"), current_revision="r2"),
        [S.CRASH_LOOP_NEW_REVISION],
    ),
    (
        "no stable revision yet: nothing to roll back to",
        view(pod("a", revision="r2", waiting="CrashLoopBackOff"), stable_revision=""),
        [S.CRASH_LOOP],
    ),
    ("OOM kill", view(pod("a", last_reason="OOMKilled", last_finished_ago=60)), [S.OOM_KILLED]),
    (
        "failed pod of an older revision is not a new-revision crash",
        view(pod("a", revision="r0", phase="Failed", exit_code=1), current_revision="r2"),
        [S.POD_FAILED],
    ),
    (
        "a pod killed for memory is an OOM, not a crash loop",
        view(
            pod("a", revision="r2", restarts=5, last_reason="OOMKilled", last_finished_ago=5),
            current_revision="r2",
        ),
        [S.OOM_KILLED],
    ),
    (
        "OOM kill of an older revision",
        view(pod("a", revision="r0", last_reason="OOMKilled", last_finished_ago=60)),
        [],
    ),
    ("readiness failing", view(pod("a", ready=False, not_ready_for=900)), [S.READINESS_FAILING]),
    ("readiness failing briefly", view(pod("a", ready=False, not_ready_for=60)), []),
    (
        "node down past grace",
        view(pod("a", node="n1"), nodes=(node("n1", ready=False, down_for=40), node("n2"))),
        [S.NODE_NOT_READY],
    ),
    (
        "node down within grace",
        view(pod("a", node="n1"), nodes=(node("n1", ready=False, down_for=10), node("n2"))),
        [],
    ),
    (
        "node down, none of our pods",
        view(pod("a", node="n2"), nodes=(node("n1", ready=False, down_for=40), node("n2"))),
        [],
    ),
    (
        "node down for long",
        view(pod("a", node="n1"), nodes=(node("n1", ready=False, down_for=400), node("n2"))),
        [S.NODE_NOT_READY, S.NODE_DOWN_LONG],
    ),
    (
        "node down for long, already cordoned",
        view(nodes=(node("n1", ready=False, down_for=400, unschedulable=True), node("n2"))),
        [],
    ),
    (
        "pressure past grace",
        view(pod("a"), nodes=(node("n1", pressure_for=60), node("n2"))),
        [S.NODE_PRESSURE],
    ),
    ("pressure within grace", view(pod("a"), nodes=(node("n1", pressure_for=5), node("n2"))), []),
    (
        "predicted exhaustion",
        view(
            pod("a"),
            maintenance=(rem.MaintenanceRequest("a/PredictedExhaustion", "a", A.RESTART_POD, "leak"),),
        ),
        [S.PREDICTED_EXHAUSTION],
    ),
    (
        "remnants of a rolled-back revision",
        view(pod("a", revision="r2", phase="Failed", exit_code=1), rolled_back="r2"),
        [],
    ),
    ("healing off", view(pod("a", phase="Failed", exit_code=1), healing=rem.parse_healing({})), []),
]


@pytest.mark.parametrize(("service", "expected"), [d[1:] for d in DETECT], ids=[d[0] for d in DETECT])
def test_detect(service: rem.ServiceView, expected: list[rem.Symptom]) -> None:
    assert sorted(f.symptom for f in rem.detect(service, NOW)) == sorted(expected)


class Scanned(tuple[rem.PodView, ...]):
    """A service's pods that count how often they are looked through."""

    scans = 0

    def __iter__(self) -> Iterator[rem.PodView]:
        self.scans += 1
        return super().__iter__()


SCANS = [
    ("crash loops only", rem.parse_healing({"crashLoop": {}})),
    ("node failures only", rem.parse_healing({"nodeFailure": {"gracePeriod": "30s"}})),
    ("everything", ALL_ON),
]


@pytest.mark.parametrize("healing", [s[1] for s in SCANS], ids=[s[0] for s in SCANS])
def test_a_pass_looks_through_the_pods_once(healing: rem.HealingSpec) -> None:
    """Detection is the costly part of a pass, which runs every second for every service: the
    open node incidents (judged with the grace periods left out) come from the same look."""
    pods = Scanned((pod("a", node="n1"), pod("b", node="n2", phase="Failed", exit_code=1)))
    nodes = (node("n1", ready=False, down_for=10), node("n2", pressure_for=60))
    _, effects = run(rem.HealingState(), view(pods=pods, nodes=nodes, healing=healing), NOW)
    assert effects and pods.scans == 1


def test_node_not_ready_since_is_the_later_of_condition_and_first_sight() -> None:
    body = {
        "metadata": {"name": "n"},
        "status": {"conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": iso(3600)}]},
    }
    # Simulated nodes report their creation time as the transition: first sight wins.
    assert rem.NodeView.of(body, first_seen_not_ready=NOW - 5).not_ready_since == NOW - 5
    assert rem.NodeView.of(body).not_ready_since == NOW - 3600


POLICY = pol.parse(
    "t",
    {
        "actions": {
            "RestartPod": {"risk": "low", "mode": "auto"},
            "ReschedulePods": {"risk": "low", "mode": "auto"},
            "Rollback": {"risk": "low", "mode": "auto"},
            "CordonNode": {"risk": "medium", "mode": "auto"},
            "DrainNode": {
                "risk": "high",
                "mode": "approve",
                "approvers": {"kubernetes": {"users": ["alice"]}},
            },
            "RaiseMemoryLimit": {"risk": "medium", "mode": "auto"},
        },
        "rateLimits": {"perService": {"maxActions": 2, "window": "10m"}},
        "cooldown": "1m",
        "verifyWindow": "1m",
        "circuitBreaker": {"failures": 2, "window": "30m"},
        "blastRadius": {"minHealthyNodes": "50%", "maxConcurrentActions": 5},
    },
)
CLUSTER = pol.ClusterView(2, 2)


def run(
    state: rem.HealingState,
    service: rem.ServiceView,
    at: float,
    approvals: dict[str, pol.ApprovalState] | None = None,
) -> tuple[rem.HealingState, tuple[rem.Effect, ...]]:
    return rem.step(state, rem.PassContext(service, POLICY, (), CLUSTER, approvals or {}, at))


def kinds(effects: tuple[rem.Effect, ...]) -> list[str]:
    return [type(e).__name__ for e in effects]


def test_restart_then_verified() -> None:
    state, effects = run(rem.HealingState(), view(pod("a", phase="Failed", exit_code=1)), NOW)
    (execute,) = effects
    assert isinstance(execute, rem.Execute)
    assert (execute.action, execute.pods) == (A.RESTART_POD, ("a",))
    assert [r.outcome for r in state.history] == [pol.ActionOutcome.IN_PROGRESS]
    state, effects = run(state, view(pod("b")), NOW + 5)
    assert kinds(effects) == ["Resolved"]
    assert [r.outcome for r in state.history] == [pol.ActionOutcome.SUCCEEDED]
    assert state.incidents == ()


def test_a_symptom_that_stays_fails_verification_and_escalates() -> None:
    failing = view(pod("a", ready=False, not_ready_for=900))
    state, _ = run(rem.HealingState(), failing, NOW)
    state, effects = run(state, failing, NOW + 30)
    # Still within the verify window, and the very pod is still there: the restart is asked
    # for again (a resume), which is no new action.
    assert [(type(e).__name__, getattr(e, "resume", None)) for e in effects] == [("Execute", True)]
    assert len(state.history) == 1
    state, effects = run(state, failing, NOW + 61)
    assert kinds(effects) == ["Escalate"]
    assert effects[0].reason == "LadderExhausted"  # type: ignore[union-attr]
    assert [r.outcome for r in state.history] == [pol.ActionOutcome.FAILED]
    state, effects = run(state, failing, NOW + 3600)
    assert effects == ()  # escalated: a human owns it now


RESUMES = [
    ("restart of a failed pod", view(pod("a", phase="Failed", exit_code=1)), A.RESTART_POD, True),
    (
        "rollback of a crashing new revision",
        view(pod("a", revision="r2", phase="Failed", exit_code=1), current_revision="r2"),
        A.ROLLBACK,
        True,
    ),
    (
        "pods off a failed node",
        view(
            pod("a", node="n1"), pod("b", node="n2"), nodes=(node("n1", ready=False, down_for=45), node("n2"))
        ),
        A.RESCHEDULE_PODS,
        True,
    ),
    (
        "memory limit after an OOM kill",
        view(pod("a", last_reason="OOMKilled", last_finished_ago=10)),
        A.RAISE_MEMORY_LIMIT,
        False,
    ),
]


@pytest.mark.parametrize(
    ("service", "action", "resumable"), [r[1:] for r in RESUMES], ids=[r[0] for r in RESUMES]
)
def test_an_action_recorded_but_perhaps_not_carried_out_is_asked_again_the_same_way(
    service: rem.ServiceView, action: pol.Action, resumable: bool
) -> None:
    """After a crash between the write-ahead record and the action, the symptom is still there
    during the verify window: repeatable actions are asked for again, identically (same pods,
    same rollback command id), without a new record; the others wait for verification."""
    state, (first,) = run(rem.HealingState(), service, NOW)
    assert isinstance(first, rem.Execute) and first.action is action and not first.resume
    restored = rem.HealingState.from_storage(state.as_in_storage())  # as read back after a restart
    again, effects = run(restored, service, NOW + 10)
    assert len(again.history) == 1
    if resumable:
        (resumed,) = effects
        assert resumed == dataclasses.replace(first, resume=True, message=resumed.message)
    else:
        assert effects == ()


def test_a_restarted_pod_whose_replacement_fails_counts_as_a_failure() -> None:
    state, _ = run(rem.HealingState(), view(pod("a", phase="Failed", exit_code=1)), NOW)
    # "a" is gone, but its replacement "b" failed too: the service did not recover.
    state, effects = run(state, view(pod("b", phase="Failed", exit_code=1)), NOW + 61)
    assert [r.outcome for r in state.history if r.target.endswith("/a")] == [pol.ActionOutcome.FAILED]
    resolved = [e for e in effects if isinstance(e, rem.Resolved)]
    assert [(e.target, e.succeeded) for e in resolved] == [(f"Pod/{NS}/a", False)]


def test_rate_limit_holds_then_circuit_opens() -> None:
    storm = view(*(pod(f"p{i}", phase="Failed", exit_code=1) for i in range(4)))
    state, effects = run(rem.HealingState(), storm, NOW)
    assert kinds(effects).count("Execute") == 2
    assert kinds(effects).count("Held") == 2
    remaining = view(*(pod(f"p{i}", phase="Failed", exit_code=1) for i in range(2, 4)))
    state, effects = run(state, remaining, NOW + 61)
    assert kinds(effects) == ["Resolved", "Resolved", "Escalate", "Escalate"]
    assert not any(e.succeeded for e in effects if isinstance(e, rem.Resolved))
    assert {e.reason for e in effects if isinstance(e, rem.Escalate)} == {"CircuitOpen"}
    assert [r.action for r in state.history] == [A.RESTART_POD, A.RESTART_POD]


def test_rollback_of_a_new_revision() -> None:
    crashing = view(pod("a", revision="r2", phase="Failed", exit_code=1), current_revision="r2")
    state, effects = run(rem.HealingState(), crashing, NOW)
    (execute,) = effects
    assert isinstance(execute, rem.Execute) and execute.action is A.ROLLBACK
    assert execute.value  # a unique command id
    _, again = run(rem.HealingState(), crashing, NOW + 1)
    assert again[0].value != execute.value  # type: ignore[union-attr]
    rolled = dataclasses.replace(crashing, rolled_back="r2", pods=(*crashing.pods, pod("b")))
    state, effects = run(state, rolled, NOW + 5)
    assert kinds(effects) == ["Resolved"]


def test_raise_memory_limit_up_to_the_ceiling() -> None:
    oom = view(pod("a", last_reason="OOMKilled", last_finished_ago=10))
    _, (execute,) = run(rem.HealingState(), oom, NOW)
    assert isinstance(execute, rem.Execute)
    assert (execute.action, execute.container, execute.value) == (A.RAISE_MEMORY_LIMIT, "app", "384Mi")
    near = dataclasses.replace(oom, memory_limits={"app": 900 * 2**20})
    _, (execute,) = run(rem.HealingState(), near, NOW)
    assert execute.value == "1024Mi"  # type: ignore[union-attr]
    at_ceiling = dataclasses.replace(oom, memory_limits={"app": 2**30})
    _, (escalate,) = run(rem.HealingState(), at_ceiling, NOW)
    assert isinstance(escalate, rem.Escalate) and escalate.reason == "CannotAct"
    unlimited = dataclasses.replace(oom, memory_limits={"app": None})
    _, (escalate,) = run(rem.HealingState(), unlimited, NOW)
    assert isinstance(escalate, rem.Escalate)


def test_reschedule_pods_off_a_failed_node() -> None:
    down = view(
        pod("a", node="n1"), pod("b", node="n2"), nodes=(node("n1", ready=False, down_for=45), node("n2"))
    )
    _, (execute,) = run(rem.HealingState(), down, NOW)
    assert isinstance(execute, rem.Execute)
    assert (execute.action, execute.pods, execute.node) == (A.RESCHEDULE_PODS, ("a",), "n1")


def test_drain_waits_for_approval_and_is_resumed_while_verifying() -> None:
    pressured = view(pod("a"), nodes=(node("n1", pressure_for=60), node("n2")))
    state, (ask,) = run(rem.HealingState(), pressured, NOW)
    assert isinstance(ask, rem.AskApproval) and ask.request.action is A.DRAIN_NODE
    state, (ask,) = run(
        state, pressured, NOW + 1, {ask.incident: pol.ApprovalState(pol.ApprovalVerdict.PENDING)}
    )
    assert isinstance(ask, rem.AskApproval)
    approved = pol.ApprovalState(pol.ApprovalVerdict.APPROVED, frozenset({"kubectl:alice"}), "homeostat")
    state, (execute,) = run(state, pressured, NOW + 2, {ask.incident: approved})
    assert isinstance(execute, rem.Execute) and not execute.resume
    state, (resume,) = run(state, pressured, NOW + 3, {ask.incident: approved})
    assert isinstance(resume, rem.Execute) and resume.resume and resume.node == "n1"
    assert len(state.history) == 1  # a resume is not a new action
    state, effects = run(state, view(pod("b", node="n2")), NOW + 4)
    assert kinds(effects) == ["Resolved"]


def test_a_denied_drain_escalates_and_never_runs() -> None:
    pressured = view(pod("a"), nodes=(node("n1", pressure_for=60), node("n2")))
    state, (ask,) = run(rem.HealingState(), pressured, NOW)
    denied = {ask.incident: pol.ApprovalState(pol.ApprovalVerdict.DENIED)}  # type: ignore[union-attr]
    state, effects = run(state, pressured, NOW + 1, denied)
    assert kinds(effects) == ["Escalate"]
    for later in (2, 60, 600):
        _, effects = run(state, pressured, NOW + later, denied)
        assert effects == ()


def test_an_action_the_executor_could_not_do_moves_up_the_ladder() -> None:
    state, (execute,) = run(rem.HealingState(), view(pod("a", phase="Failed", exit_code=1)), NOW)
    state = rem.action_failed(state, execute.incident, "409 conflict", NOW)  # type: ignore[union-attr]
    assert [r.outcome for r in state.history] == [pol.ActionOutcome.FAILED]
    _, effects = run(state, view(pod("a", phase="Failed", exit_code=1)), NOW + 1)
    assert kinds(effects) == ["Escalate"]


def test_state_round_trips_through_storage() -> None:
    storm = view(*(pod(f"p{i}", phase="Failed", exit_code=1) for i in range(4)))
    state, _ = run(rem.HealingState(), storm, NOW)
    assert rem.HealingState.from_storage(state.as_in_storage()) == state
    assert rem.HealingState.from_storage(None) == rem.HealingState() == rem.HealingState.from_storage({})
    # The stored-state rule (core/fields.py): unreadable is refused by field, never a fresh start.
    for broken, field in (
        ({"incidents": [{"key": 1}]}, r"healing\.incidents\[0\]"),
        ({"history": "x"}, r"healing\.history must be a list"),
        ({"history": [{"action": "RestartPod"}]}, r"healing\.history\[0\]"),
        ("garbage", r"healing must be an object"),
    ):
        with pytest.raises(fields.StorageError, match=field):
            rem.HealingState.from_storage(broken)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"crashLoop": {"window": "soon"}}, "spec.healing.crashLoop.window"),
        ({"nodeFailure": {"gracePeriod": 5}}, "spec.healing.nodeFailure.gracePeriod"),
        ({"oom": {"action": "Explode"}}, "spec.healing"),
        ({"oom": "yes"}, "spec.healing.oom"),
    ],
)
def test_bad_healing_specs_name_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(rem.specs.SpecError) as info:
        rem.parse_healing(raw)
    assert info.value.field == field


APPROVED = pol.ApprovalState(pol.ApprovalVerdict.APPROVED, frozenset({"kubectl:alice"}), "homeostat")


def _restarted(service: rem.ServiceView, first_seen: float) -> rem.ServiceView:
    """The view of a process started anew: it times every node condition from its first sight."""
    nodes = {
        name: dataclasses.replace(
            n,
            not_ready_since=None if n.not_ready_since is None else max(n.not_ready_since, first_seen),
            pressure_since=None if n.pressure_since is None else max(n.pressure_since, first_seen),
        )
        for name, n in service.nodes.items()
    }
    return dataclasses.replace(service, nodes=nodes)


def test_a_drain_being_verified_survives_a_restart_that_times_the_pressure_again() -> None:
    """The defect the chaos suite found: after a restart the pressure was younger than the grace
    period, so no finding; the verifying drain read that as cleared, and when the pressure showed
    again a second incident drained the node a second time."""
    pressured = view(pod("a"), nodes=(node("n1", pressure_for=60), node("n2")))
    state, (ask,) = run(rem.HealingState(), pressured, NOW)
    state, (execute,) = run(state, pressured, NOW + 1, {ask.incident: APPROVED})  # type: ignore[union-attr]
    assert isinstance(execute, rem.Execute) and not execute.resume
    restored = rem.HealingState.from_storage(state.as_in_storage())
    restarted = _restarted(pressured, NOW + 5)  # grace is 30 s: for this process, no finding yet
    state, (resumed,) = run(restored, restarted, NOW + 6)
    assert isinstance(resumed, rem.Execute) and resumed.resume and resumed.occurrence == execute.occurrence
    assert [(i.phase, i.action) for i in state.incidents] == [(rem.IncidentPhase.VERIFYING, "DrainNode")]
    drained = _restarted(view(pod("b", node="n2"), nodes=(node("n1", pressure_for=60), node("n2"))), NOW + 5)
    state, effects = run(state, drained, NOW + 40)
    assert kinds(effects) == ["Resolved"] and [r.action for r in state.history] == [A.DRAIN_NODE]


PRESSURED = view(pod("a"), nodes=(node("n1", pressure_for=60), node("n2")))
DOWN = view(pod("a"), nodes=(node("n1", ready=False, down_for=60), node("n2")))
UNSETTLED = [
    ("pressure on a node with pods", PRESSURED, PRESSURED, True),
    ("a failed node with pods", DOWN, DOWN, True),
    ("the pressure is gone", PRESSURED, view(pod("a")), False),
    ("the node is back", DOWN, view(pod("a")), False),
    ("the pods left the node", PRESSURED, dataclasses.replace(PRESSURED, pods=(pod("a", node="n2"),)), False),
]


@pytest.mark.parametrize(
    ("before", "after", "kept"), [u[1:] for u in UNSETTLED], ids=[u[0] for u in UNSETTLED]
)
def test_an_open_node_incident_goes_on_while_a_new_process_times_its_condition(
    before: rem.ServiceView, after: rem.ServiceView, kept: bool
) -> None:
    """Kept while the condition holds, even if younger than the grace period (as a restarted
    process sees it); cleared once the condition or the pods are gone. Never a new incident."""
    policy = dataclasses.replace(POLICY, actions={})  # every action denied: the incidents stay open
    state, _ = rem.step(rem.HealingState(), rem.PassContext(before, policy, (), CLUSTER, {}, NOW))
    assert state.incidents
    later = _restarted(after, NOW + 5)
    state, effects = rem.step(state, rem.PassContext(later, policy, (), CLUSTER, {}, NOW + 6))
    assert bool(state.incidents) is kept, (state.incidents, effects)
    assert not [e for e in effects if isinstance(e, rem.Execute | rem.AskApproval)]
    fresh, _ = rem.step(rem.HealingState(), rem.PassContext(later, policy, (), CLUSTER, {}, NOW + 6))
    assert fresh.incidents == ()  # the same sight opens no incident of its own


def test_an_approval_answers_one_occurrence_and_one_step() -> None:
    pressured = view(pod("a"), nodes=(node("n1", pressure_for=60), node("n2")))
    state, (ask,) = run(rem.HealingState(), pressured, NOW)
    assert isinstance(ask, rem.AskApproval) and ask.occurrence == f"{NOW:.3f}/0"
    # A restart finds the same occurrence (both parts are stored): the same request.
    _, (again,) = run(rem.HealingState.from_storage(state.as_in_storage()), pressured, NOW + 1)
    assert again == dataclasses.replace(ask, message=again.message)  # type: ignore[union-attr]
    answer = dataclasses.replace(APPROVED, occurrence=ask.occurrence)
    state, (execute,) = run(state, pressured, NOW + 2, {ask.incident: answer})
    assert isinstance(execute, rem.Execute) and execute.occurrence == ask.occurrence
    state, (resolved,) = run(state, view(pod("b", node="n2")), NOW + 3)
    assert isinstance(resolved, rem.Resolved) and state.incidents == ()
    # The pods and the pressure come back: a new occurrence. The old answer does not cover it.
    state, (fresh,) = run(state, pressured, NOW + 100, {ask.incident: answer})
    assert isinstance(fresh, rem.AskApproval) and fresh.occurrence == f"{NOW + 100:.3f}/0"
    assert [r.action for r in state.history] == [A.DRAIN_NODE]
