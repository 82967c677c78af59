"""Bounded exhaustive model check of the rollout state machine.

A breadth-first search runs every sequence of up to ``DEPTH`` events against the real ``step``
function and a simulated cluster (``World`` from test_rollout): Canary with Service routing,
Canary with GatewayAPI routing and BlueGreen, each from a service stable at r0 whose template
just changed to r1, with a three-step canary (10 % for 1m, 50 % until promoted, 80 % for 1m).

Events: an analysis run that passes, fails, has no data or errors, or a metrics backend that is
missing (each 30 s later); a pause's worth of time (1 m); stable or canary pods becoming ready;
the commands pause, resume, promote-step and abort; a new template. The world scales at once but
pods become ready only by event, and analysis is answered only when ``RunAnalysis`` asks. After
every event the operator reconciles until nothing changes, as its own writes would trigger it.

States are merged when ``step`` cannot tell them apart: timestamps become ages, capped at the
longest duration they are compared with (plus the one comparison between two timestamps), spent
measurements and applied command ids are dropped. That is what makes depth 7 affordable.

Invariants, each named in the failure message with the event sequence that broke it:
inv_canary_weight_within_step, inv_failed_never_promoted, inv_only_a_pass_advances,
inv_no_dead_state, inv_rollback_reachable, inv_terminal_states,
inv_stable_full_before_traffic_returns, inv_switch_only_to_a_full_track,
inv_rollback_switches_back, inv_failure_notified_once, inv_idempotent_step,
inv_idempotent_state, inv_no_repeated_actions, inv_storage_round_trip, inv_quiescence,
inv_no_initializing_after_adoption.
Run with ``-s`` to see how many distinct states each search explored.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

import pytest
from test_rollout import METRICS, World

from homeostat.core import analysis as an
from homeostat.core import rollout as ro
from homeostat.core.spec import Strategy

Phase = ro.RolloutPhase
STABLE, CANARY = ro.Track.STABLE, ro.Track.CANARY

AUTOMATIC = ("pass", "fail", "inconclusive", "error", "missing", "time", "stable-ready", "canary-ready")
HUMAN = ("pause", "resume", "promote-step", "abort")
ALPHABET = (*AUTOMATIC, *HUMAN, "template")
DEPTH = {"canary-service": 7, "canary-gateway": 7, "blue-green": 7}
LIVENESS_HORIZON = 3  # automatic events within which a non-terminal state must visibly progress

ANALYSIS = {"interval": "30s", "failureLimit": 1, "inconclusiveLimit": 1, "consecutiveErrorLimit": 1}
STEPS = [{"weight": 10, "pause": "1m"}, {"weight": 50}, {"weight": 80, "pause": "1m"}]
SPECS = {
    "canary-service": {"strategy": "Canary", "canary": {"steps": STEPS}},
    "canary-gateway": {
        "strategy": "Canary",
        "canary": {"steps": STEPS},
        "trafficRouting": {"type": "GatewayAPI", "gatewayAPI": {"httpRoute": "web"}},
    },
    "blue-green": {"strategy": "BlueGreen", "blueGreen": {"previewReplicas": 2, "scaleDownDelay": "1m"}},
}


class Violation(AssertionError):
    pass


@dataclasses.dataclass(frozen=True)
class Node:
    state: ro.RolloutState
    world: World
    failed: frozenset[str] = frozenset()  # revisions whose analysis failed on this path
    notified: frozenset[str] = frozenset()  # revisions a failure notification was sent for
    path: tuple[str, ...] = ()


def check(condition: bool, invariant: str, node: Node, *detail: object) -> None:
    """Raise a ``Violation`` naming the invariant and the path; ``detail`` is only printed then."""
    if not condition:
        text = " ".join(map(str, detail))
        raise Violation(f"{invariant} violated after {' > '.join(node.path) or 'start'}: {text}")


def key(node: Node, spec: ro.RolloutSpec) -> str:
    """The node up to what ``step`` cannot tell apart: a shift of the clock, ages beyond the
    longest duration they are compared with, spent measurements and applied command ids.

    Every timestamp is only ever compared with ``now`` minus a fixed duration or with another
    timestamp; so each becomes its age, capped where the comparison can no longer change, plus
    the one comparison between two timestamps that ``step`` makes (last run after step reached).
    """
    now, s, world = node.world.now, node.state, node.world
    stored = s.as_in_storage()
    analysis = stored.pop("analysis")
    for field in ("startedAt", "appliedCommands"):
        del stored[field]
    del analysis["runs"]
    last_run, reached, switched = s.analysis.last_run_at, s.step_reached_at, s.switched_at
    pause = max((p.pause or 0.0 for p in spec.steps), default=0.0)
    analysis["lastRunAt"] = _age(now, last_run, spec.checks.interval)
    stored["stepReachedAt"] = _age(now, reached, pause)
    stored["switchedAt"] = _age(now, switched, spec.blue_green.scale_down_delay)
    stored["gate"] = None if last_run is None or reached is None else last_run >= reached
    stored["emitted"] = sorted(stored["emitted"])
    measurement = None
    if world.measurement is not None:
        answer, at, revision = world.measurement
        fresh = revision == s.revision and (last_run is None or at > last_run)
        fresh = fresh and s.started_at is not None and at >= s.started_at
        measurement = [answer, now - at] if fresh else None
    pending = [c.kind.value for c in world.commands if c.id not in s.applied_commands]
    views = [[v.revision, v.replicas, v.ready] for v in (world.stable, world.canary)]
    facts = [world.desired, world.route_weight, world.active, measurement, pending, views]
    facts += [sorted(node.failed), sorted(node.notified)]
    return json.dumps([stored, analysis, facts], sort_keys=True)


def _age(now: float, at: float | None, cap: float) -> float | None:
    return None if at is None else min(now - at, cap)


def projection(state: ro.RolloutState) -> tuple[Any, ...]:
    """What counts as visible progress for the liveness invariants."""
    return (
        state.phase,
        state.step,
        state.revision,
        state.stable_revision,
        state.pause_reason,
        state.step_reached_at is None,
        state.switched_at is None,
    )


def inv_actions(
    node: Node, spec: ro.RolloutSpec, new: ro.RolloutState, world: World, action: ro.Action
) -> None:
    """Checked against the world just before each action takes effect."""
    total = world.total
    # Where traffic goes home to: the new revision once it is being promoted, else stable.
    home = new.revision if new.phase in (Phase.PROMOTING, Phase.PROMOTED) else new.stable_revision
    if action == ro.DeleteTrack(CANARY) or action == ro.SetTrafficWeight(0, 0):
        check(
            world.stable.revision == home and world.stable.ready >= total,
            "inv_stable_full_before_traffic_returns",
            node,
            action,
            "while stable is",
            world.stable,
            "in phase",
            new.phase,
        )
    if isinstance(action, ro.SwitchActiveService):
        if new.phase in (Phase.ROLLING_BACK, Phase.ROLLED_BACK, Phase.ABORTED):
            check(action.revision == new.stable_revision, "inv_rollback_switches_back", node, action)
        serving = [v for v in (world.stable, world.canary) if v.revision == action.revision]
        check(
            any(v.ready >= total for v in serving),
            "inv_switch_only_to_a_full_track",
            node,
            action,
            "while stable is",
            world.stable,
            "and the preview",
            world.canary,
        )
    if spec.strategy is Strategy.CANARY and new.phase in (Phase.PROGRESSING, Phase.PAUSED):
        step_weight = spec.steps[new.step].weight
        if isinstance(action, ro.ScaleTrack) and action.track is CANARY:
            check(
                action.replicas <= ro.canary_replicas(total, step_weight),
                "inv_canary_weight_within_step",
                node,
                action,
                "at step weight",
                step_weight,
            )
        if isinstance(action, ro.SetTrafficWeight):
            check(action.canary_weight <= step_weight, "inv_canary_weight_within_step", node, action)


def react(node: Node, spec: ro.RolloutSpec) -> Node:
    """Reconcile until quiet, checking every action as it is applied."""
    state, world = node.state, node.world
    for _ in range(20):
        new, actions = ro.step(state, spec, world.observe(), world.now)
        # inv_idempotent_step: a second call with the same inputs changes and repeats nothing.
        again, repeated = ro.step(new, spec, world.observe(), world.now)
        check(again == new, "inv_idempotent_step", node, new, "then", again)
        check(not any(isinstance(a, ro.ONE_SHOT) for a in repeated), "inv_idempotent_step", node, repeated)
        after = world
        for action in actions:
            inv_actions(node, spec, new, after, action)
            if isinstance(action, ro.Notify) and action.kind is ro.NotifyKind.FAILED:
                # inv_failure_notified_once: per revision, whatever the path.
                check(new.revision not in node.notified, "inv_failure_notified_once", node, action)
                node = dataclasses.replace(node, notified=node.notified | {str(new.revision)})
            after = after.apply([action])
        if new == state and after == world:
            return dataclasses.replace(node, state=new, world=dataclasses.replace(world, available=True))
        state, world = new, after
    raise Violation(f"inv_quiescence violated after {' > '.join(node.path)}: the operator never settles")


def inv_state(node: Node, spec: ro.RolloutSpec) -> None:
    s, world = node.state, node.world
    if spec.strategy is Strategy.CANARY and s.phase in (Phase.PROGRESSING, Phase.PAUSED):
        step_weight = spec.steps[s.step].weight
        check(s.weight <= step_weight, "inv_canary_weight_within_step", node, s.weight, ">", step_weight)
        if world.canary.revision == s.revision:
            check(
                world.canary.replicas <= ro.canary_replicas(world.total, step_weight),
                "inv_canary_weight_within_step",
                node,
                world.canary,
            )
        if world.route_weight is not None and world.canary.revision == s.revision:
            check(
                world.route_weight <= step_weight, "inv_canary_weight_within_step", node, world.route_weight
            )
    if s.phase is Phase.PROMOTED:
        check(s.stable_revision not in node.failed, "inv_failed_never_promoted", node, s.stable_revision)
    check(s.phase is not Phase.INITIALIZING, "inv_no_initializing_after_adoption", node)
    stored = json.loads(json.dumps(s.as_in_storage(), allow_nan=False))
    check(ro.RolloutState.from_storage(stored) == s, "inv_storage_round_trip", node)
    # Idempotence: asking again changes nothing and repeats nothing.
    again, actions = ro.step(s, spec, world.observe(), world.now)
    check(again == s, "inv_idempotent_state", node)
    repeated = [a for a in actions if not isinstance(a, ro.RunAnalysis | ro.SetCondition)]
    check(not repeated, "inv_no_repeated_actions", node, repeated)


def next_revision(world: World) -> str:
    return f"r{int(world.desired[1:]) + 1}"


def transition(node: Node, letter: str, spec: ro.RolloutSpec) -> Node:
    world = node.world
    world = (
        dataclasses.replace(world, desired=next_revision(world))
        if letter == "template"
        else world.happen(letter)
    )
    child = react(dataclasses.replace(node, world=world, path=(*node.path, letter)), spec)
    before, after = node.state, child.state
    advanced = after.step > before.step or (
        after.phase is Phase.PROMOTING and before.phase is not Phase.PROMOTING
    )
    if letter in AUTOMATIC and after.revision == before.revision and advanced:
        # inv_only_a_pass_advances: no data, errors and failures never move a rollout forward.
        passed = after.analysis.last_verdict is an.AnalysisVerdict.PASS
        check(passed, "inv_only_a_pass_advances", child, after.analysis)
    if child.state.cause is ro.Cause.ANALYSIS_FAILED and child.state.revision is not None:
        child = dataclasses.replace(child, failed=child.failed | {child.state.revision})
        check(child.state.revision in child.notified, "inv_failure_notified_once", child, "never notified")
    return child


def explore(name: str) -> tuple[dict[str, Node], dict[str, int], dict[str, list[tuple[str, str]]]]:
    spec = ro.parse_rollout_spec({**SPECS[name], "analysis": {**ANALYSIS, "metrics": METRICS}})
    blue_green = spec.strategy is Strategy.BLUE_GREEN
    promoted = ro.RolloutState(phase=Phase.PROMOTED, stable_revision="r0", revision="r0")
    start = react(Node(promoted, World(active="r0" if blue_green else None)), spec)
    inv_state(start, spec)
    seen = {key(start, spec): start}
    depth = {key(start, spec): 0}
    graph: dict[str, list[tuple[str, str]]] = {}
    frontier = deque([key(start, spec)])
    while frontier:
        k = frontier.popleft()
        if depth[k] == DEPTH[name]:
            continue
        edges = []
        for letter in ALPHABET:
            child = transition(seen[k], letter, spec)
            ck = key(child, spec)
            edges.append((letter, ck))
            if ck not in seen:
                inv_state(child, spec)
                seen[ck], depth[ck] = child, depth[k] + 1
                frontier.append(ck)
        graph[k] = edges
    return seen, depth, graph


def _reachable(
    graph: dict[str, list[tuple[str, str]]], start: str, letters: Iterable[str], hops: int
) -> set[str]:
    allowed = set(letters)
    found, layer = {start}, {start}
    for _ in range(hops):
        layer = {to for k in layer for letter, to in graph.get(k, ()) if letter in allowed} - found
        found |= layer
    return found


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(SPECS))
def test_model(name: str) -> None:
    started = time.monotonic()
    seen, depth, graph = explore(name)
    print(f"\n{name}: {len(seen)} distinct states, {len(graph)} expanded to depth {DEPTH[name]}")
    phases = {n.state.phase for n in seen.values()}
    # The search must actually reach every kind of outcome, or the invariants prove little.
    assert {Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTING, Phase.ROLLING_BACK} <= phases
    assert {Phase.PROMOTED, Phase.ROLLED_BACK, Phase.ABORTED} <= phases

    for k, edges in graph.items():
        node = seen[k]
        here = projection(node.state)
        moves = {letter: projection(seen[to].state) for letter, to in edges}
        absorbing = all(p == here for letter, p in moves.items() if letter != "template")
        # inv_terminal_states: the only states nothing but a new template can leave are the
        # three terminal phases, and those are never left by anything else.
        check(absorbing == (node.state.phase in ro.TERMINAL), "inv_terminal_states", node, here)
        if node.state.phase in ro.LIVE:
            # inv_rollback_reachable: from every live state one abort starts a rollback.
            after_abort = moves["abort"][0]
            check(
                after_abort in (Phase.ROLLING_BACK, Phase.ABORTED),
                "inv_rollback_reachable",
                node,
                after_abort,
            )
        if node.state.phase not in ro.TERMINAL and depth[k] <= DEPTH[name] - LIVENESS_HORIZON:
            # inv_no_dead_state: without any human, a live state progresses within a few
            # events (analysis results, readiness, time); a paused one by a resume or promote.
            ahead = _reachable(graph, k, AUTOMATIC, LIVENESS_HORIZON)
            progresses = any(projection(seen[a].state) != here for a in ahead)
            if not progresses and node.state.phase is Phase.PAUSED:
                progresses = moves["resume"] != here or moves["promote-step"] != here
            check(progresses, "inv_no_dead_state", node, here)
    print(f"{name}: checked in {time.monotonic() - started:.1f}s")
