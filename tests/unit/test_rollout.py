"""Table-driven tests of the rollout state machine: state and observations in, state and actions out.

Single transitions are tested directly against ``step``. Longer stories run against ``World``, a
tiny simulation of the cluster that applies the actions the way the handler and the Deployment
controller would (scaling is immediate, readiness arrives only when a test says so), so each
story reads as a list of things that happen and what the rollout must then look like.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

import pytest

from homeostat.core import analysis as an
from homeostat.core import fields
from homeostat.core import rollout as ro
from homeostat.core.spec import SpecError, Strategy

STABLE, CANARY = ro.Track.STABLE, ro.Track.CANARY
Phase = ro.RolloutPhase

METRICS = [{"name": "error-rate", "query": "rate(errors{revision='{{revision}}'}[1m])", "max": 0.05}]
# What each kind of analysis answer looks like as a measurement of error-rate.
ANSWERS: dict[str, tuple[float | None, str | None]] = {
    "pass": (0.01, None),
    "fail": (0.12, None),
    "inconclusive": (None, None),
    "nan": (math.nan, None),
    "error": (None, "connection refused"),
}


def canary_spec(**overrides: Any) -> ro.RolloutSpec:
    raw: dict[str, Any] = {
        "strategy": "Canary",
        "canary": {
            "steps": [
                {"weight": 10, "pause": "1m"},
                {"weight": 50, "pause": "1m"},
                {"weight": 80, "pause": "1m"},
            ]
        },
        "analysis": {
            "interval": "30s",
            "failureLimit": 2,
            "inconclusiveLimit": 2,
            "consecutiveErrorLimit": 1,
            "metrics": METRICS,
        },
    }
    raw.update(overrides)
    return ro.parse_rollout_spec(raw)


def blue_green_spec(**blue_green: Any) -> ro.RolloutSpec:
    return ro.parse_rollout_spec(
        {
            "strategy": "BlueGreen",
            "blueGreen": {"scaleDownDelay": "1m", "previewReplicas": 2, **blue_green},
            "analysis": {"failureLimit": 1, "metrics": METRICS},
        }
    )


PROMOTED_R0 = ro.RolloutState(phase=Phase.PROMOTED, stable_revision="r0", revision="r0")


@dataclasses.dataclass(frozen=True)
class World:
    """The cluster as the rollout sees it, and how it reacts to the rollout's actions."""

    now: float = 1000.0
    desired: str = "r1"
    total: int = 4
    stable: ro.TrackView = dataclasses.field(default_factory=lambda: ro.TrackView("r0", 4, 4))
    canary: ro.TrackView = dataclasses.field(default_factory=ro.TrackView)
    route_weight: int | None = None
    active: str | None = None
    measurement: tuple[str, float, str] | None = None  # answer, when, revision
    pending_answer: str | None = None  # how the next RunAnalysis will come out
    commands: tuple[ro.Command, ...] = ()
    available: bool = True

    def observe(self) -> ro.Observations:
        measurements: tuple[an.Measurement, ...] = ()
        if self.measurement is not None:
            value, error = ANSWERS[self.measurement[0]]
            measurements = (an.Measurement("error-rate", value, error, self.measurement[1]),)
        return ro.Observations(
            desired_revision=self.desired,
            total=self.total,
            stable=self.stable,
            canary=self.canary,
            route_weight=self.route_weight,
            active_revision=self.active,
            analysis_available=self.available,
            measurements=measurements,
            measured_at=None if self.measurement is None else self.measurement[1],
            measured_revision=None if self.measurement is None else self.measurement[2],
            commands=self.commands,
        )

    def track(self, track: ro.Track) -> ro.TrackView:
        return self.stable if track is STABLE else self.canary

    def with_track(self, track: ro.Track, view: ro.TrackView) -> World:
        if track is STABLE:
            return dataclasses.replace(self, stable=view)
        return dataclasses.replace(self, canary=view)

    def apply(self, actions: Iterable[ro.Action]) -> World:
        world = self
        for action in actions:
            if isinstance(action, ro.ScaleTrack):
                old = world.track(action.track)
                # A Deployment that changes revision has no ready pods of the new one yet.
                ready = min(old.ready, action.replicas) if old.revision == action.revision else 0
                view = ro.TrackView(action.revision, action.replicas, ready)
                world = world.with_track(action.track, view)
            elif isinstance(action, ro.DeleteTrack):
                world = world.with_track(action.track, ro.TrackView())
            elif isinstance(action, ro.SetTrafficWeight):
                world = dataclasses.replace(world, route_weight=action.canary_weight)
            elif isinstance(action, ro.SwitchActiveService):
                world = dataclasses.replace(world, active=action.revision)
            elif isinstance(action, ro.RunAnalysis) and world.pending_answer is not None:
                measured = (world.pending_answer, world.now, action.revision)
                world = dataclasses.replace(world, measurement=measured, pending_answer=None)
        return world

    def happen(self, event: str) -> World:
        """One thing happening in the cluster, by the names the stories and the model use."""
        if event in ("stable-ready", "canary-ready"):
            track = STABLE if event == "stable-ready" else CANARY
            view = self.track(track)
            return self.with_track(track, dataclasses.replace(view, ready=view.replicas))
        if event == "time":
            return dataclasses.replace(self, now=self.now + 60)
        if event == "missing":
            return dataclasses.replace(self, now=self.now + 30, available=False)
        if event in ANSWERS:
            return dataclasses.replace(self, now=self.now + 30, pending_answer=event, available=True)
        kind = ro.CommandKind(event)
        command = ro.Command(f"cmd-{len(self.commands)}", kind)
        return dataclasses.replace(self, commands=(*self.commands, command))


def settle(
    state: ro.RolloutState, world: World, spec: ro.RolloutSpec
) -> tuple[ro.RolloutState, World, list[ro.Action]]:
    """Reconcile until nothing changes, as the operator does when its own writes trigger it."""
    emitted: list[ro.Action] = []
    for _ in range(20):
        new, actions = ro.step(state, spec, world.observe(), world.now)
        emitted.extend(actions)
        after = world.apply(actions)
        if new == state and after == world:
            return new, dataclasses.replace(world, available=True), emitted
        state, world = new, after
    raise AssertionError(f"the rollout does not settle: {state}")


def one_shots(actions: Iterable[ro.Action]) -> list[ro.Action]:
    return [a for a in actions if isinstance(a, ro.ONE_SHOT)]


def world_actions(actions: Iterable[ro.Action]) -> list[ro.Action]:
    kinds = (ro.ScaleTrack, ro.DeleteTrack, ro.SetTrafficWeight, ro.SwitchActiveService)
    return [a for a in actions if isinstance(a, kinds)]


def reasons(actions: Iterable[ro.Action]) -> list[str]:
    return [a.reason for a in actions if isinstance(a, ro.PostEvent)]


def notifications(actions: Iterable[ro.Action]) -> list[ro.NotifyKind]:
    return [a.kind for a in actions if isinstance(a, ro.Notify)]


Beat = tuple[str, dict[str, Any]]


def play(
    spec: ro.RolloutSpec,
    beats: Sequence[Beat],
    state: ro.RolloutState = PROMOTED_R0,
    world: World | None = None,
) -> tuple[ro.RolloutState, World, list[ro.Action]]:
    """Run a story: after each event, the state must have the listed attribute values."""
    world = world or World(active="r0" if spec.strategy is Strategy.BLUE_GREEN else None)
    state, world, log = settle(state, world, spec)
    for i, (event, expected) in enumerate(beats):
        if event != "-":
            world = world.happen(event)
        state, world, actions = settle(state, world, spec)
        log.extend(actions)
        got = {key: getattr(state, key) for key in expected}
        assert got == expected, f"after beat {i} ({event})"
        _assert_idempotent(state, world, spec)
    return state, world, log


def _assert_idempotent(state: ro.RolloutState, world: World, spec: ro.RolloutSpec) -> None:
    again, actions = ro.step(state, spec, world.observe(), world.now)
    assert again == state
    assert one_shots(actions) == []
    assert world_actions(actions) == []


# --- parsing ---------------------------------------------------------------------------------


def test_parse_full_spec() -> None:
    spec = ro.parse_rollout_spec(
        {
            "strategy": "Canary",
            "paused": True,
            "canary": {"steps": [{"weight": 5, "pause": "30s"}, {"weight": 100}]},
            "trafficRouting": {"type": "GatewayAPI", "gatewayAPI": {"httpRoute": "web"}},
            "analysis": {
                "interval": "1m",
                "failureLimit": 0,
                "metrics": [{"name": "p99", "query": "q", "min": 0}],
            },
            "slo": {"errorRatioQuery": "errors/total", "objective": 0.999, "window": "24h"},
        }
    )
    assert spec.strategy is Strategy.CANARY and spec.paused
    assert spec.steps == (ro.CanaryStep(5, 30.0), ro.CanaryStep(100, None))
    assert spec.traffic == ro.TrafficRouting(ro.Routing.GATEWAY_API, "web")
    assert spec.analysis == an.AnalysisSpec(60.0, 0, 3, 4, (an.MetricSpec("p99", "q", 0.0, None),))
    slo = an.MetricSpec(ro.SLO_METRIC, "(errors/total) / 0.001", None, 14.4)
    assert spec.checks.metrics == (*spec.analysis.metrics, slo)


def test_parse_defaults() -> None:
    assert ro.parse_rollout_spec(None) == ro.RolloutSpec()
    spec = ro.parse_rollout_spec({"strategy": "BlueGreen"})
    assert spec.blue_green == ro.BlueGreenSpec(
        auto_promote=True, scale_down_delay=30.0, preview_replicas=None
    )
    assert spec.analysis == an.AnalysisSpec() and spec.checks.metrics == ()


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"strategy": "Chaos"}, "spec.rollout.strategy"),
        ({"strategy": "Canary"}, "spec.rollout.canary"),
        ({"strategy": "Canary", "canary": {"steps": []}}, "spec.rollout.canary.steps"),
        ({"strategy": "Canary", "canary": {"steps": [{"weight": 0}]}}, "spec.rollout.canary.steps[0].weight"),
        (
            {"strategy": "Canary", "canary": {"steps": [{"weight": 50}, {"weight": 50}]}},
            "spec.rollout.canary.steps[1].weight",
        ),
        (
            {"strategy": "Canary", "canary": {"steps": [{"weight": 5, "pause": "soon"}]}},
            "spec.rollout.canary.steps[0].pause",
        ),
        ({"paused": "yes"}, "spec.rollout.paused"),
        ({"blueGreen": {"previewReplicas": 0}}, "spec.rollout.blueGreen.previewReplicas"),
        ({"blueGreen": {"autoPromote": 1}}, "spec.rollout.blueGreen.autoPromote"),
        ({"trafficRouting": {"type": "Mesh"}}, "spec.rollout.trafficRouting.type"),
        ({"trafficRouting": {"type": "GatewayAPI"}}, "spec.rollout.trafficRouting.gatewayAPI"),
        ({"analysis": {"interval": "0s"}}, "spec.rollout.analysis.interval"),
        ({"analysis": {"failureLimit": -1}}, "spec.rollout.analysis.failureLimit"),
        ({"analysis": {"metrics": [{"name": "m"}]}}, "spec.rollout.analysis.metrics[0].query"),
        (
            {"analysis": {"metrics": [{"name": "m", "query": "q", "max": "1"}]}},
            "spec.rollout.analysis.metrics[0].max",
        ),
        (
            {"analysis": {"metrics": [{"name": "m", "query": "q", "min": 2, "max": 1}]}},
            "spec.rollout.analysis.metrics[0]",
        ),
        (
            {"analysis": {"metrics": [{"name": "m", "query": "q"}, {"name": "m", "query": "q"}]}},
            "spec.rollout.analysis.metrics[1].name",
        ),
        ({"slo": {"errorRatioQuery": "q", "objective": 1}}, "spec.rollout.slo.objective"),
        (
            {"slo": {"errorRatioQuery": "q", "objective": 0.9, "maxBurnRate": 0}},
            "spec.rollout.slo.maxBurnRate",
        ),
        (
            {
                "slo": {"errorRatioQuery": "q", "objective": 0.9},
                "analysis": {"metrics": [{"name": ro.SLO_METRIC, "query": "q"}]},
            },
            "spec.rollout.analysis.metrics",
        ),
    ],
)
def test_unusable_rollout_specs_name_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as info:
        ro.parse_rollout_spec(raw)
    assert info.value.field == field


def test_rolling_update_is_not_this_machines_business() -> None:
    with pytest.raises(ValueError, match="RollingUpdate"):
        ro.step(ro.RolloutState(), ro.RolloutSpec(), World().observe(), 0.0)


@pytest.mark.parametrize(
    ("total", "weight", "canary", "stable"),
    [
        (10, 10, 1, 9),
        (10, 25, 3, 7),  # rounded up: the canary gets at least its share
        (4, 10, 1, 3),
        (4, 80, 4, 1),  # one stable pod stays until the canary takes everything
        (1, 10, 1, 1),
        (4, 100, 4, 0),
        (0, 50, 0, 0),
    ],
)
def test_replica_split(total: int, weight: int, canary: int, stable: int) -> None:
    assert (ro.canary_replicas(total, weight), ro.stable_replicas(total, weight)) == (canary, stable)


# --- single transitions ----------------------------------------------------------------------


def _obs(**kw: Any) -> ro.Observations:
    base: dict[str, Any] = {"desired_revision": "r1", "total": 4, "stable": ro.TrackView("r0", 4, 4)}
    return ro.Observations(**{**base, **kw})


PROGRESSING = ro.RolloutState(
    phase=Phase.PROGRESSING,
    stable_revision="r0",
    revision="r1",
    started_at=900.0,
    step=1,
    weight=50,
    step_reached_at=950.0,
    analysis=an.AnalysisState(runs=3, failures=2, last_run_at=980.0, last_verdict=an.AnalysisVerdict.FAIL),
)
AT_STEP_1 = {"stable": ro.TrackView("r0", 2, 2), "canary": ro.TrackView("r1", 2, 2)}
FAILED_RUN = {
    "measurements": (an.Measurement("error-rate", 0.12, None, 1000.0),),
    "measured_at": 1000.0,
    "measured_revision": "r1",
}


@pytest.mark.parametrize(
    ("case", "state", "obs", "expected", "actions"),
    [
        (
            "first deployment scales stable to the first revision",
            ro.RolloutState(),
            _obs(stable=ro.TrackView()),
            {"phase": Phase.INITIALIZING, "revision": "r1", "stable_revision": None},
            [ro.ScaleTrack(STABLE, "r1", 4)],
        ),
        (
            "first deployment is promoted when ready, without steps",
            ro.RolloutState(revision="r1"),
            _obs(stable=ro.TrackView("r1", 4, 4)),
            {"phase": Phase.PROMOTED, "stable_revision": "r1"},
            [],
        ),
        (
            "a first deployment follows a template change before it is ready",
            ro.RolloutState(revision="r0"),
            _obs(stable=ro.TrackView("r0", 4, 2)),
            {"phase": Phase.INITIALIZING, "revision": "r1", "stable_revision": None},
            [ro.ScaleTrack(STABLE, "r1", 4)],
        ),
        (
            "an existing service is adopted and its template change rolled out",
            ro.RolloutState(),
            _obs(),
            {"phase": Phase.PROGRESSING, "stable_revision": "r0", "revision": "r1", "step": 0, "weight": 10},
            [ro.ScaleTrack(CANARY, "r1", 1)],
        ),
        (
            "the third failure exceeds failureLimit 2: stable is scaled up first",
            PROGRESSING,
            _obs(**AT_STEP_1, **FAILED_RUN),
            {"phase": Phase.ROLLING_BACK, "cause": ro.Cause.ANALYSIS_FAILED, "weight": 50},
            [ro.ScaleTrack(STABLE, "r0", 4)],
        ),
        (
            "rolling back: traffic stays until stable is ready",
            dataclasses.replace(PROGRESSING, phase=Phase.ROLLING_BACK, cause=ro.Cause.ANALYSIS_FAILED),
            _obs(stable=ro.TrackView("r0", 4, 3), canary=ro.TrackView("r1", 2, 2)),
            {"phase": Phase.ROLLING_BACK},
            [],
        ),
        (
            "rolling back: stable ready, so the canary goes",
            dataclasses.replace(PROGRESSING, phase=Phase.ROLLING_BACK, cause=ro.Cause.ANALYSIS_FAILED),
            _obs(stable=ro.TrackView("r0", 4, 4), canary=ro.TrackView("r1", 2, 2)),
            {"phase": Phase.ROLLED_BACK, "weight": 0},
            [ro.DeleteTrack(CANARY)],
        ),
    ],
)
def test_transition(
    case: str,
    state: ro.RolloutState,
    obs: ro.Observations,
    expected: dict[str, Any],
    actions: list[ro.Action],
) -> None:
    new, emitted = ro.step(state, canary_spec(), obs, 1000.0)
    assert {k: getattr(new, k) for k in expected} == expected, case
    assert world_actions(emitted) == actions, case


def test_failure_notifies_once_with_the_metric_and_value() -> None:
    spec = canary_spec()
    state, actions = ro.step(PROGRESSING, spec, _obs(**AT_STEP_1, **FAILED_RUN), 1000.0)
    assert isinstance(actions[0], ro.ScaleTrack) and actions[0] == ro.ScaleTrack(STABLE, "r0", 4)
    (notify,) = [a for a in actions if isinstance(a, ro.Notify)]
    assert notify.kind is ro.NotifyKind.FAILED
    assert "error-rate = 0.12" in notify.message and "0.05" in notify.message
    assert state.failure == an.Failure("error-rate", 0.12, "error-rate = 0.12, allowed [-inf, 0.05]")
    condition = actions[-1]
    assert isinstance(condition, ro.SetCondition) and "error-rate = 0.12" in condition.message
    for _ in range(3):  # however often the handler calls again, the notification is not repeated
        state, actions = ro.step(state, spec, _obs(**AT_STEP_1, **FAILED_RUN), 1000.0)
        assert one_shots(actions) == []


def test_gateway_rollback_moves_the_route_before_deleting_the_canary() -> None:
    spec = canary_spec(trafficRouting={"type": "GatewayAPI", "gatewayAPI": {"httpRoute": "web"}})
    state = dataclasses.replace(PROGRESSING, phase=Phase.ROLLING_BACK, cause=ro.Cause.ABORTED)
    canary = ro.TrackView("r1", 2, 2)
    new, actions = ro.step(state, spec, _obs(canary=canary, route_weight=50), 1000.0)
    assert world_actions(actions) == [ro.SetTrafficWeight(0, 0)] and new.phase is Phase.ROLLING_BACK
    new, actions = ro.step(new, spec, _obs(canary=canary, route_weight=0), 1001.0)
    assert world_actions(actions) == [ro.DeleteTrack(CANARY)] and new.phase is Phase.ABORTED


# --- stories ---------------------------------------------------------------------------------


def test_good_canary_is_promoted_through_every_step() -> None:
    _, world, log = play(
        canary_spec(),
        [
            ("-", {"phase": Phase.PROGRESSING, "step": 0, "weight": 10, "step_reached_at": None}),
            ("canary-ready", {"step": 0, "achieved_weight": 25, "step_reached_at": 1000.0}),
            ("time", {"step": 0}),  # the pause is over, but no analysis has passed yet
            ("pass", {"step": 1, "weight": 50, "step_reached_at": None}),
            ("canary-ready", {"step": 1, "achieved_weight": 50}),
            ("pass", {"step": 1}),  # analysis passed, the pause has not
            ("time", {"step": 1}),  # the pause has, but a run is due: its result is awaited
            ("pass", {"step": 2, "weight": 80}),
            ("canary-ready", {"step": 2, "achieved_weight": 80}),
            ("time", {"step": 2}),
            ("inconclusive", {"step": 2}),  # no data never promotes
            ("pass", {"phase": Phase.PROMOTING}),
            ("canary-ready", {"phase": Phase.PROMOTING}),
            ("stable-ready", {"phase": Phase.PROMOTED, "stable_revision": "r1", "weight": 0}),
        ],
    )
    assert world.stable == ro.TrackView("r1", 4, 4) and world.canary == ro.TrackView()
    scales = [(a.track, a.replicas) for a in log if isinstance(a, ro.ScaleTrack)]
    canary_sizes = [n for t, n in scales if t is CANARY]
    assert canary_sizes == sorted(canary_sizes) and max(canary_sizes) == 4
    assert reasons(one_shots(log)).count("CanaryStepStarted") == 2
    assert notifications(log) == [ro.NotifyKind.PROMOTED]


@pytest.mark.parametrize("failure_limit", [0, 1, 2])
def test_bad_canary_is_rolled_back_within_failure_limit_intervals(failure_limit: int) -> None:
    spec = canary_spec(analysis={"failureLimit": failure_limit, "metrics": METRICS})
    beats: list[Beat] = [("canary-ready", {"phase": Phase.PROGRESSING})]
    beats += [("fail", {"phase": Phase.PROGRESSING})] * failure_limit
    beats += [("fail", {"phase": Phase.ROLLING_BACK, "cause": ro.Cause.ANALYSIS_FAILED})]
    state, world, log = play(spec, beats)
    assert world.now - 1000.0 == 30.0 * (failure_limit + 1)
    assert world.stable == ro.TrackView("r0", 4, 3)  # scaled up, the new pod not ready yet
    assert world.canary.revision == "r1"  # canary still serves until stable can take it all
    state, world, log2 = play(
        spec, [("stable-ready", {"phase": Phase.ROLLED_BACK, "weight": 0})], state=state, world=world
    )
    assert world.canary == ro.TrackView() and world.stable == ro.TrackView("r0", 4, 4)
    assert notifications(log + log2) == [ro.NotifyKind.FAILED]
    assert state.failure is not None and state.failure.metric == "error-rate" and state.failure.value == 0.12


def test_inconclusive_holds_and_then_asks_a_human() -> None:
    state, _, log = play(
        canary_spec(),
        [
            ("canary-ready", {"step": 0}),
            ("time", {"step": 0}),
            ("inconclusive", {"phase": Phase.PROGRESSING, "step": 0}),
            ("nan", {"phase": Phase.PROGRESSING, "step": 0}),
            ("inconclusive", {"phase": Phase.PAUSED, "pause_reason": ro.PauseReason.INCONCLUSIVE}),
            ("time", {"phase": Phase.PAUSED, "step": 0}),
            ("pass", {"phase": Phase.PAUSED, "step": 0}),  # a pass alone does not un-pause
            ("resume", {"phase": Phase.PROGRESSING, "step": 1}),  # the pass at this step counts
        ],
    )
    assert notifications(log) == [ro.NotifyKind.NEEDS_DECISION]
    assert state.analysis.inconclusives == 0


def test_promoting_past_an_inconclusive_pause_does_not_pause_again_at_once() -> None:
    _, _, log = play(
        canary_spec(),
        [
            ("canary-ready", {}),
            ("inconclusive", {}),
            ("inconclusive", {}),
            ("inconclusive", {"phase": Phase.PAUSED, "pause_reason": ro.PauseReason.INCONCLUSIVE}),
            ("promote-step", {"phase": Phase.PROGRESSING, "step": 1}),
            ("canary-ready", {"phase": Phase.PROGRESSING, "step": 1}),
            ("inconclusive", {"phase": Phase.PROGRESSING, "step": 1}),
        ],
    )
    assert notifications(log) == [ro.NotifyKind.NEEDS_DECISION]


def test_missing_metrics_backend_never_promotes() -> None:
    spec = canary_spec()
    beats: list[Beat] = [("canary-ready", {"step": 0})]
    beats += [("missing", {"phase": Phase.PROGRESSING, "step": 0}), ("time", {"step": 0})]
    # consecutiveErrorLimit 1: from the second error on each run counts as no data.
    beats += [("missing", {"phase": Phase.PROGRESSING})] * 2
    beats += [("missing", {"phase": Phase.PAUSED, "pause_reason": ro.PauseReason.INCONCLUSIVE})]
    beats += [("time", {"phase": Phase.PAUSED, "step": 0})] * 3
    state, _, log = play(spec, beats)
    assert state.analysis.last_verdict is an.AnalysisVerdict.ERROR and state.analysis.consecutive_errors == 4
    assert "CanaryStepStarted" not in reasons(log)


def test_no_metrics_means_pauses_alone_decide() -> None:
    spec = canary_spec(analysis=None)
    play(
        spec,
        [
            ("canary-ready", {"step": 0}),
            ("time", {"step": 1}),
            ("canary-ready", {"step": 1}),
            ("time", {"step": 2}),
        ],
    )


def test_a_step_without_pause_waits_for_promotion() -> None:
    spec = canary_spec(canary={"steps": [{"weight": 20}, {"weight": 60, "pause": "0s"}]}, analysis=None)
    _, _, log = play(
        spec,
        [
            ("canary-ready", {"phase": Phase.PAUSED, "pause_reason": ro.PauseReason.AWAITING_PROMOTION}),
            ("time", {"phase": Phase.PAUSED, "step": 0}),
            ("resume", {"phase": Phase.PROGRESSING, "step": 1}),
            ("canary-ready", {"phase": Phase.PROMOTING}),
        ],
    )
    assert notifications(log) == [ro.NotifyKind.NEEDS_DECISION]


def test_commands_apply_exactly_once() -> None:
    spec = canary_spec(analysis=None)
    state, world, log = play(
        spec,
        [
            ("canary-ready", {"step": 0}),
            ("pause", {"phase": Phase.PAUSED, "pause_reason": ro.PauseReason.COMMAND}),
            ("time", {"phase": Phase.PAUSED, "step": 0}),
            ("pause", {"phase": Phase.PAUSED}),  # a second pause is refused, not stacked
            ("resume", {"phase": Phase.PROGRESSING, "step": 1}),
            ("resume", {"phase": Phase.PROGRESSING, "step": 1}),  # refused: not paused
            ("promote-step", {"step": 2, "weight": 80}),
            ("canary-ready", {"step": 2}),
            ("promote-full", {"phase": Phase.PROMOTING}),
            ("abort", {"phase": Phase.ROLLING_BACK, "cause": ro.Cause.ABORTED}),
            ("stable-ready", {"phase": Phase.ABORTED}),
            ("promote-full", {"phase": Phase.ABORTED}),  # refused: nothing to promote
        ],
    )
    assert len(world.commands) == 8 and state.applied_commands == tuple(c.id for c in world.commands)
    applied = [a.reason for a in log if isinstance(a, ro.PostEvent) and a.reason.startswith("Command")]
    ok, no = "CommandApplied", "CommandIgnored"
    assert applied == [ok, no, ok, no, ok, ok, ok, no]


def test_promote_full_from_the_first_step() -> None:
    _, world, _ = play(
        canary_spec(analysis=None),
        [
            ("promote-full", {"phase": Phase.PROMOTING}),
            ("stable-ready", {"phase": Phase.PROMOTED, "stable_revision": "r1"}),
        ],
    )
    assert world.canary == ro.TrackView()


def test_spec_paused_freezes_everything_until_unpaused() -> None:
    spec = canary_spec(analysis=None)
    state, world, _ = play(spec, [("canary-ready", {"step": 0})])
    frozen = dataclasses.replace(spec, paused=True)
    world = world.happen("time").happen("abort")
    held, actions = ro.step(state, frozen, world.observe(), world.now)
    assert held.held and held.phase is Phase.PROGRESSING and held.step == 0
    assert world_actions(actions) == [] and reasons(actions) == ["RolloutPaused"]
    assert held.applied_commands == ()  # the abort waits for the thaw
    again, actions = ro.step(held, frozen, world.observe(), world.now)
    assert again == held and one_shots(actions) == []
    assert ro.status_phase(held) == "Paused"
    thawed, actions = ro.step(held, spec, world.observe(), world.now)
    assert not thawed.held and thawed.phase is Phase.ROLLING_BACK
    assert reasons(actions)[:1] == ["RolloutResumed"]


def test_template_change_mid_rollout_restarts_from_the_new_revision() -> None:
    spec = canary_spec()
    state, world, _ = play(
        spec, [("canary-ready", {"step": 0}), ("fail", {"step": 0}), ("time", {}), ("pass", {"step": 1})]
    )
    assert state.analysis.failures == 1
    world = dataclasses.replace(world, desired="r2")
    state, world, log = play(
        spec,
        [
            ("-", {"phase": Phase.PROGRESSING, "revision": "r2", "step": 0}),
            # r1 pods keep their share until stable is back to full size.
            ("canary-ready", {"step": 0, "step_reached_at": None}),
            ("stable-ready", {"step": 0, "step_reached_at": None}),
            ("canary-ready", {"step": 0, "step_reached_at": world.now}),
        ],
        state=state,
        world=world,
    )
    assert state.analysis.failures == 0 and state.stable_revision == "r0"
    assert world.canary == ro.TrackView("r2", 1, 1) and world.stable == ro.TrackView("r0", 3, 3)
    assert "RolloutRestarted" in reasons(log)
    retarget = log.index(ro.ScaleTrack(CANARY, "r2", 1))
    assert log.index(ro.ScaleTrack(STABLE, "r0", 4)) < retarget


def test_template_set_back_to_stable_rolls_back_and_ends_aborted() -> None:
    spec = canary_spec()
    state, world, _ = play(spec, [("canary-ready", {"step": 0})])
    world = dataclasses.replace(world, desired="r0")
    state, world, _ = play(
        spec,
        [
            ("-", {"phase": Phase.ROLLING_BACK, "cause": ro.Cause.REVERTED}),
            ("stable-ready", {"phase": Phase.ABORTED}),
        ],
        state=state,
        world=world,
    )
    world = dataclasses.replace(world, desired="r1")  # applying r1 again is a new attempt
    play(spec, [("-", {"phase": Phase.PROGRESSING, "revision": "r1"})], state=state, world=world)


def test_template_change_while_rolling_back_waits_for_stable() -> None:
    spec = canary_spec(analysis={"failureLimit": 0, "metrics": METRICS})
    state, world, _ = play(spec, [("canary-ready", {}), ("fail", {"phase": Phase.ROLLING_BACK})])
    world = dataclasses.replace(world, desired="r2")
    play(
        spec,
        [
            ("-", {"phase": Phase.ROLLING_BACK, "revision": "r1"}),
            ("stable-ready", {"phase": Phase.PROGRESSING, "revision": "r2", "stable_revision": "r0"}),
        ],
        state=state,
        world=world,
    )


def test_rolled_back_revision_is_not_retried_by_itself() -> None:
    spec = canary_spec(analysis={"failureLimit": 0, "metrics": METRICS})
    state, world, _ = play(
        spec, [("canary-ready", {}), ("fail", {}), ("stable-ready", {"phase": Phase.ROLLED_BACK})]
    )
    play(
        spec,
        [("time", {"phase": Phase.ROLLED_BACK}), ("promote-full", {"phase": Phase.ROLLED_BACK})],
        state,
        world,
    )


def test_gateway_canary_keeps_stable_full_and_moves_the_route_when_pods_are_ready() -> None:
    spec = canary_spec(
        trafficRouting={"type": "GatewayAPI", "gatewayAPI": {"httpRoute": "web"}}, analysis=None
    )
    state, world, log = play(spec, [("-", {"step": 0, "weight": 10})])
    assert world.route_weight is None and world.stable == ro.TrackView("r0", 4, 4)
    state, world, log = play(
        spec,
        [("canary-ready", {"step_reached_at": 1000.0, "achieved_weight": 10}), ("time", {"step": 1})],
        state,
        world,
    )
    assert world.route_weight == 10 and world.stable == ro.TrackView("r0", 4, 4)
    assert [a for a in log if isinstance(a, ro.SetTrafficWeight)] == [ro.SetTrafficWeight(10, 10)]


def test_blue_green_happy_path() -> None:
    _, world, log = play(
        blue_green_spec(),
        [
            ("-", {"phase": Phase.PROGRESSING, "step_reached_at": None}),
            ("canary-ready", {"phase": Phase.PROGRESSING, "step_reached_at": 1000.0}),
            ("pass", {"phase": Phase.PROMOTING, "switched_at": None}),  # preview scaled to full
            ("canary-ready", {"phase": Phase.PROMOTING, "switched_at": 1030.0, "achieved_weight": 100}),
            ("stable-ready", {"phase": Phase.PROMOTING}),  # the old revision stays for the delay
            ("time", {"phase": Phase.PROMOTING}),
            ("stable-ready", {"phase": Phase.PROMOTED, "stable_revision": "r1"}),
        ],
    )
    switches = [a for a in log if isinstance(a, ro.SwitchActiveService)]
    assert switches == [ro.SwitchActiveService("r1")]
    assert (
        world.active == "r1" and world.stable == ro.TrackView("r1", 4, 4) and world.canary == ro.TrackView()
    )
    deletes = [i for i, a in enumerate(log) if isinstance(a, ro.DeleteTrack)]
    stable_rolled = [i for i, a in enumerate(log) if a == ro.ScaleTrack(STABLE, "r1", 4)]
    assert stable_rolled and deletes and stable_rolled[0] < deletes[0]


def test_blue_green_preview_is_scaled_to_preview_replicas() -> None:
    _, world, _ = play(blue_green_spec(), [("-", {})])
    assert world.canary == ro.TrackView("r1", 2, 0) and world.active == "r0"


def test_blue_green_rollback_after_the_switch_switches_back() -> None:
    _, world, log = play(
        blue_green_spec(scaleDownDelay="5m"),
        [
            ("canary-ready", {}),
            ("pass", {"phase": Phase.PROMOTING}),
            ("canary-ready", {"switched_at": 1030.0}),
            ("fail", {"phase": Phase.PROMOTING}),
            ("fail", {"phase": Phase.ROLLED_BACK}),  # stable r0 still runs in full: instant
        ],
    )
    assert (
        world.active == "r0" and world.canary == ro.TrackView() and world.stable == ro.TrackView("r0", 4, 4)
    )
    assert [a for a in log if isinstance(a, ro.SwitchActiveService)] == [
        ro.SwitchActiveService("r1"),
        ro.SwitchActiveService("r0"),
    ]
    assert notifications(log) == [ro.NotifyKind.FAILED]


def test_blue_green_without_auto_promote_waits_for_a_human() -> None:
    _, _, log = play(
        blue_green_spec(autoPromote=False),
        [
            ("canary-ready", {}),
            ("pass", {"phase": Phase.PAUSED, "pause_reason": ro.PauseReason.AWAITING_PROMOTION}),
            ("time", {"phase": Phase.PAUSED}),
            ("promote-step", {"phase": Phase.PROMOTING}),
        ],
    )
    assert notifications(log) == [ro.NotifyKind.NEEDS_DECISION]


def test_blue_green_template_change_after_switch_brings_traffic_home_first() -> None:
    spec = blue_green_spec()
    state, world, _ = play(
        spec, [("canary-ready", {}), ("pass", {}), ("canary-ready", {"switched_at": 1030.0}), ("time", {})]
    )
    assert world.stable.revision == "r1"  # the delay is over and stable is rolling to r1
    world = dataclasses.replace(world, desired="r2")
    state, world, log = play(
        spec,
        [
            ("-", {"phase": Phase.PROGRESSING, "revision": "r2"}),
            ("stable-ready", {"phase": Phase.PROGRESSING}),
        ],
        state=state,
        world=world,
    )
    assert world.active == "r0" and world.canary.revision == "r2"
    first_r2 = next(i for i, a in enumerate(log) if a == ro.ScaleTrack(CANARY, "r2", 2))
    back = next(i for i, a in enumerate(log) if a == ro.SwitchActiveService("r0"))
    assert back < first_r2


# --- storage ---------------------------------------------------------------------------------


def _states() -> list[ro.RolloutState]:
    spec = canary_spec()
    state, _, _ = play(spec, [("canary-ready", {}), ("fail", {}), ("fail", {}), ("fail", {})])
    return [
        ro.RolloutState(),
        PROMOTED_R0,
        PROGRESSING,
        state,
        dataclasses.replace(
            state,
            held=True,
            pause_reason=ro.PauseReason.COMMAND,
            switched_at=12.5,
            failure=an.Failure("latency", math.inf, "latency = inf"),
            applied_commands=("a", "b"),
        ),
    ]


@pytest.mark.parametrize("state", _states())
def test_storage_round_trip(state: ro.RolloutState) -> None:
    stored = json.loads(json.dumps(state.as_in_storage(), allow_nan=False))
    assert stored["schema"] == ro.SCHEMA
    assert ro.RolloutState.from_storage(stored) == state


def test_storage_of_nothing_is_a_fresh_state() -> None:
    assert ro.RolloutState.from_storage(None) == ro.RolloutState.from_storage({}) == ro.RolloutState()


def test_storage_tolerates_cleared_fields() -> None:
    # A merge patch deletes keys set to null, so every key may come back absent.
    stored = {k: v for k, v in PROGRESSING.as_in_storage().items() if v is not None}
    assert ro.RolloutState.from_storage(stored) == PROGRESSING


@pytest.mark.parametrize(
    "raw",
    [
        {"schema": 2, "phase": "Progressing"},
        {"phase": "Progressing"},
        {"schema": 1, "phase": "Sideways"},
        {"schema": 1, "step": -1},
        {"schema": 1, "held": "no"},
        {"schema": 1, "emitted": "start"},
        {"schema": 1, "startedAt": "now"},
        {"schema": 1, "analysis": []},
        ["schema"],
    ],
)
def test_storage_rejects_what_it_cannot_read(raw: Any) -> None:
    with pytest.raises(fields.StorageError):
        ro.RolloutState.from_storage(raw)


def test_status_helpers() -> None:
    spec = canary_spec()
    assert ro.status_phase(PROGRESSING) == "Progressing"
    assert ro.status_phase(PROMOTED_R0) is None
    assert ro.canary_status(dataclasses.replace(PROGRESSING, achieved_weight=50), spec) == {
        "weight": 50,
        "step": 1,
        "phase": "Progressing",
    }
    assert ro.canary_status(PROMOTED_R0, spec) is None
    assert ro.canary_status(PROGRESSING, blue_green_spec()) is None
