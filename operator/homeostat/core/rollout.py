"""Progressive delivery (canary and blue-green) as one pure state machine.

Rollouts are where an operator does the most damage when it is wrong, and their bugs hide in
orderings (traffic moved before capacity exists, a notification sent twice after a restart).
So every decision is made by ``step(state, spec, observations, now)``: the persisted
``RolloutState``, the parsed ``spec.rollout`` and a snapshot of the world go in; the next state
and a list of actions come out. The handler executes the actions through ports and writes the
state to ``status.rollout``. The function can then be tested table-driven and model-checked
(``tests/unit/test_rollout_model.py``) without a cluster.

Actions come in two kinds (ADR 0005):

- Level actions (``ScaleTrack``, ``SetTrafficWeight``, ``SwitchActiveService``, ``DeleteTrack``,
  ``RunAnalysis``, ``SetCondition``) say what must be true now. They are emitted only when the
  observations show it is not yet true, are safe to execute twice, and are re-emitted after a
  crash, which is how the machine recovers.
- One-shot actions (``Notify``, ``PostEvent``) are emitted once per key; the keys are kept in the
  state, so calling ``step`` again with the same inputs never repeats them.

Tracks are fixed slots: ``stable`` is the Deployment named after the service and ``canary`` a
second one. Both strategies end a promotion by rolling the stable track to the new revision and
deleting the canary track, so child names and selectors never change.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any, TypeAlias

from homeostat.core import analysis as an
from homeostat.core import fields
from homeostat.core.spec import SpecError, Strategy

SCHEMA = 1
SLO_METRIC = "slo-burn-rate"
_KEEP_COMMANDS = 32  # command ids remembered; commands arrive one at a time, so a few suffice
_MAX_PASSES = 8  # transitions one call may chain; the machine settles in three or four


# --- spec ------------------------------------------------------------------------------------


class Routing(enum.StrEnum):
    SERVICE = "Service"
    GATEWAY_API = "GatewayAPI"


@dataclasses.dataclass(frozen=True)
class CanaryStep:
    weight: int
    pause: float | None = None  # seconds; None holds the step until someone promotes it


@dataclasses.dataclass(frozen=True)
class BlueGreenSpec:
    auto_promote: bool = True
    scale_down_delay: float = 30.0
    preview_replicas: int | None = None


@dataclasses.dataclass(frozen=True)
class TrafficRouting:
    type: Routing = Routing.SERVICE
    http_route: str | None = None


@dataclasses.dataclass(frozen=True)
class SloSpec:
    error_ratio_query: str
    objective: float
    window: float = 720 * 3600.0
    max_burn_rate: float = 14.4

    def metric(self) -> an.MetricSpec:
        """The SLO as one more analysis metric: the burn rate of the error budget."""
        budget = 1.0 - self.objective
        query = f"({self.error_ratio_query}) / {budget:.12g}"
        return an.MetricSpec(SLO_METRIC, query, None, self.max_burn_rate)


@dataclasses.dataclass(frozen=True)
class RolloutSpec:
    strategy: Strategy = Strategy.ROLLING_UPDATE
    paused: bool = False
    steps: tuple[CanaryStep, ...] = ()
    blue_green: BlueGreenSpec = BlueGreenSpec()
    traffic: TrafficRouting = TrafficRouting()
    analysis: an.AnalysisSpec = dataclasses.field(default_factory=an.AnalysisSpec)
    slo: SloSpec | None = None

    @property
    def checks(self) -> an.AnalysisSpec:
        """The analysis actually run: the configured metrics plus the SLO burn rate."""
        if self.slo is None:
            return self.analysis
        return dataclasses.replace(self.analysis, metrics=(*self.analysis.metrics, self.slo.metric()))


def _parse_steps(raw: Any, field: str) -> tuple[CanaryStep, ...]:
    canary = fields.mapping(raw, field)
    raw_steps = canary.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise SpecError(f"{field}.steps", "at least one step is required")
    steps: list[CanaryStep] = []
    for i, raw_step in enumerate(raw_steps):
        item = fields.mapping(raw_step, f"{field}.steps[{i}]")
        weight = fields.integer(item.get("weight"), f"{field}.steps[{i}].weight", 1, 100)
        if steps and weight <= steps[-1].weight:
            raise SpecError(f"{field}.steps[{i}].weight", "weights must be strictly increasing")
        pause = item.get("pause")
        steps.append(
            CanaryStep(weight, None if pause is None else fields.duration(pause, f"{field}.steps[{i}].pause"))
        )
    return tuple(steps)


def _parse_blue_green(raw: Any, field: str) -> BlueGreenSpec:
    if raw is None:
        return BlueGreenSpec()
    item = fields.mapping(raw, field)
    preview = item.get("previewReplicas")
    return BlueGreenSpec(
        auto_promote=fields.boolean(item.get("autoPromote", True), f"{field}.autoPromote"),
        scale_down_delay=fields.duration(item.get("scaleDownDelay", "30s"), f"{field}.scaleDownDelay"),
        preview_replicas=None
        if preview is None
        else fields.integer(preview, f"{field}.previewReplicas", 1, 10000),
    )


def _parse_traffic(raw: Any, field: str) -> TrafficRouting:
    if raw is None:
        return TrafficRouting()
    item = fields.mapping(raw, field)
    kind = item.get("type", Routing.SERVICE.value)
    try:
        routing = Routing(kind)
    except ValueError:
        raise SpecError(f"{field}.type", f"unknown traffic routing {kind!r}") from None
    if routing is Routing.SERVICE:
        return TrafficRouting()
    gateway = fields.mapping(item.get("gatewayAPI"), f"{field}.gatewayAPI")
    return TrafficRouting(routing, fields.text(gateway.get("httpRoute"), f"{field}.gatewayAPI.httpRoute"))


def _parse_analysis(raw: Any, field: str) -> an.AnalysisSpec:
    if raw is None:
        return an.AnalysisSpec()
    item = fields.mapping(raw, field)
    metrics: list[an.MetricSpec] = []
    raw_metrics = item.get("metrics") or []
    if not isinstance(raw_metrics, list):
        raise SpecError(f"{field}.metrics", "must be a list")
    for i, raw_metric in enumerate(raw_metrics):
        path = f"{field}.metrics[{i}]"
        metric = fields.mapping(raw_metric, path)
        low, high = metric.get("min"), metric.get("max")
        parsed = an.MetricSpec(
            name=fields.text(metric.get("name"), f"{path}.name"),
            query=fields.text(metric.get("query"), f"{path}.query"),
            min=None if low is None else fields.number(low, f"{path}.min"),
            max=None if high is None else fields.number(high, f"{path}.max"),
        )
        if parsed.min is not None and parsed.max is not None and parsed.min > parsed.max:
            raise SpecError(path, f"min ({parsed.min:g}) must not exceed max ({parsed.max:g})")
        if any(m.name == parsed.name for m in metrics):
            raise SpecError(f"{path}.name", f"metric {parsed.name!r} is listed twice")
        metrics.append(parsed)
    return an.AnalysisSpec(
        interval=fields.duration(item.get("interval", "30s"), f"{field}.interval", positive=True),
        failure_limit=fields.integer(item.get("failureLimit", 2), f"{field}.failureLimit", 0, 1000),
        inconclusive_limit=fields.integer(
            item.get("inconclusiveLimit", 3), f"{field}.inconclusiveLimit", 0, 1000
        ),
        consecutive_error_limit=fields.integer(
            item.get("consecutiveErrorLimit", 4), f"{field}.consecutiveErrorLimit", 0, 1000
        ),
        metrics=tuple(metrics),
    )


def _parse_slo(raw: Any, field: str) -> SloSpec | None:
    if raw is None:
        return None
    item = fields.mapping(raw, field)
    objective = fields.number(item.get("objective"), f"{field}.objective")
    if not 0 < objective < 1:
        raise SpecError(f"{field}.objective", f"must lie strictly between 0 and 1, got {objective:g}")
    burn = fields.number(item.get("maxBurnRate", 14.4), f"{field}.maxBurnRate")
    if burn <= 0:
        raise SpecError(f"{field}.maxBurnRate", "must be positive")
    return SloSpec(
        error_ratio_query=fields.text(item.get("errorRatioQuery"), f"{field}.errorRatioQuery"),
        objective=objective,
        window=fields.duration(item.get("window", "720h"), f"{field}.window", positive=True),
        max_burn_rate=burn,
    )


def parse_rollout_spec(raw: Mapping[str, Any] | None) -> RolloutSpec:
    """Turn ``spec.rollout`` into a ``RolloutSpec`` or raise ``SpecError`` naming the field."""
    field = "spec.rollout"
    item = fields.mapping({} if raw is None else raw, field)
    name = item.get("strategy", Strategy.ROLLING_UPDATE.value)
    try:
        strategy = Strategy(name)
    except ValueError:
        raise SpecError(f"{field}.strategy", f"unknown strategy {name!r}") from None
    steps: tuple[CanaryStep, ...] = ()
    if strategy is Strategy.CANARY:
        if item.get("canary") is None:
            raise SpecError(f"{field}.canary", "is required when strategy is Canary")
        steps = _parse_steps(item["canary"], f"{field}.canary")
    spec = RolloutSpec(
        strategy=strategy,
        paused=fields.boolean(item.get("paused", False), f"{field}.paused"),
        steps=steps,
        blue_green=_parse_blue_green(item.get("blueGreen"), f"{field}.blueGreen"),
        traffic=_parse_traffic(item.get("trafficRouting"), f"{field}.trafficRouting"),
        analysis=_parse_analysis(item.get("analysis"), f"{field}.analysis"),
        slo=_parse_slo(item.get("slo"), f"{field}.slo"),
    )
    if spec.slo is not None and any(m.name == SLO_METRIC for m in spec.analysis.metrics):
        raise SpecError(
            f"{field}.analysis.metrics", f"the name {SLO_METRIC!r} is reserved for spec.rollout.slo"
        )
    return spec


# --- state -----------------------------------------------------------------------------------


class RolloutPhase(enum.StrEnum):
    INITIALIZING = "Initializing"  # first deployment: no stable revision yet, nothing to compare
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    PROMOTING = "Promoting"
    PROMOTED = "Promoted"
    ROLLING_BACK = "RollingBack"
    ROLLED_BACK = "RolledBack"
    ABORTED = "Aborted"


LIVE = frozenset({RolloutPhase.PROGRESSING, RolloutPhase.PAUSED, RolloutPhase.PROMOTING})
TERMINAL = frozenset({RolloutPhase.PROMOTED, RolloutPhase.ROLLED_BACK, RolloutPhase.ABORTED})


class PauseReason(enum.StrEnum):
    COMMAND = "PausedByCommand"
    INCONCLUSIVE = "InconclusiveAnalysis"
    AWAITING_PROMOTION = "AwaitingPromotion"


class Cause(enum.StrEnum):
    """Why a rollout is being rolled back."""

    ANALYSIS_FAILED = "AnalysisFailed"
    ABORTED = "Aborted"
    REVERTED = "TemplateReverted"


@dataclasses.dataclass(frozen=True)
class RolloutState:
    """Everything the machine remembers between calls; persisted as ``status.rollout``."""

    phase: RolloutPhase = RolloutPhase.INITIALIZING
    stable_revision: str | None = None
    revision: str | None = None  # the revision being (or last) rolled out
    started_at: float | None = None
    step: int = 0
    weight: int = 0  # canary weight asked for
    achieved_weight: int = 0  # share of traffic the canary actually gets, as observed
    step_reached_at: float | None = None  # when the current step's weight was in place
    pause_reason: PauseReason | None = None
    held: bool = False  # spec.rollout.paused froze the machine
    cause: Cause | None = None
    failure: an.Failure | None = None
    switched_at: float | None = None  # blue-green: when the active Service moved to the new revision
    analysis: an.AnalysisState = dataclasses.field(default_factory=an.AnalysisState)
    applied_commands: tuple[str, ...] = ()
    emitted: tuple[str, ...] = ()  # keys of one-shot actions already emitted for this revision
    schema: int = SCHEMA

    def as_in_storage(self) -> dict[str, Any]:
        """A JSON-safe dict. Unset fields are null rather than absent so a merge patch clears them."""
        failure = self.failure
        return {
            "schema": self.schema,
            "phase": self.phase.value,
            "stableRevision": self.stable_revision,
            "revision": self.revision,
            "startedAt": self.started_at,
            "step": self.step,
            "weight": self.weight,
            "achievedWeight": self.achieved_weight,
            "stepReachedAt": self.step_reached_at,
            "pauseReason": None if self.pause_reason is None else self.pause_reason.value,
            "held": self.held,
            "cause": None if self.cause is None else self.cause.value,
            "failure": None
            if failure is None
            else {
                "metric": failure.metric,
                "value": fields.encode_float(failure.value),
                "message": failure.message,
            },
            "switchedAt": self.switched_at,
            "analysis": self.analysis.as_in_storage(),
            "appliedCommands": list(self.applied_commands),
            "emitted": list(self.emitted),
        }

    @classmethod
    def from_storage(cls, raw: Mapping[str, Any] | None) -> RolloutState:
        """Read ``status.rollout``; ``None`` or ``{}`` is a fresh state, garbage a ``StorageError``."""
        if not raw:
            return cls()
        if not isinstance(raw, Mapping):
            raise fields.StorageError("status.rollout must be an object")
        schema = raw.get("schema")
        if schema != SCHEMA:
            raise fields.StorageError(
                f"status.rollout schema {schema!r} is not {SCHEMA}: written by another operator version"
            )
        failure_raw = raw.get("failure")
        failure = None
        if failure_raw is not None:
            if not isinstance(failure_raw, Mapping):
                raise fields.StorageError("failure must be an object")
            failure = an.Failure(
                fields.stored_str(failure_raw, "metric") or "",
                fields.decode_float(failure_raw.get("value")),
                fields.stored_str(failure_raw, "message") or "",
            )
        held = raw.get("held", False)
        if not isinstance(held, bool):
            raise fields.StorageError("held must be a boolean")
        return cls(
            phase=fields.stored_enum(RolloutPhase, raw, "phase") or RolloutPhase.INITIALIZING,
            stable_revision=fields.stored_str(raw, "stableRevision"),
            revision=fields.stored_str(raw, "revision"),
            started_at=fields.stored_time(raw, "startedAt"),
            step=fields.stored_int(raw, "step"),
            weight=fields.stored_int(raw, "weight"),
            achieved_weight=fields.stored_int(raw, "achievedWeight"),
            step_reached_at=fields.stored_time(raw, "stepReachedAt"),
            pause_reason=fields.stored_enum(PauseReason, raw, "pauseReason"),
            held=held,
            cause=fields.stored_enum(Cause, raw, "cause"),
            failure=failure,
            switched_at=fields.stored_time(raw, "switchedAt"),
            analysis=an.AnalysisState.from_storage(raw.get("analysis")),
            applied_commands=fields.stored_strings(raw, "appliedCommands"),
            emitted=fields.stored_strings(raw, "emitted"),
        )


# --- observations ----------------------------------------------------------------------------


class Track(enum.StrEnum):
    STABLE = "stable"
    CANARY = "canary"


class CommandKind(enum.StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    PROMOTE_STEP = "promote-step"
    PROMOTE_FULL = "promote-full"
    ABORT = "abort"


@dataclasses.dataclass(frozen=True)
class Command:
    """A human's instruction; ``id`` makes it apply exactly once however often it is seen."""

    id: str
    kind: CommandKind


@dataclasses.dataclass(frozen=True)
class TrackView:
    """One track's Deployment as the watch cache shows it.

    ``revision`` is None when the track does not exist; ``ready`` counts ready pods running
    ``revision`` (pods of an older revision do not count while the Deployment rolls).
    """

    revision: str | None = None
    replicas: int = 0
    ready: int = 0


@dataclasses.dataclass(frozen=True)
class Observations:
    desired_revision: str  # hash of the current spec.template
    total: int  # replicas the service should run (spec.replicas.effective)
    stable: TrackView = TrackView()
    canary: TrackView = TrackView()
    route_weight: int | None = None  # canary weight on the HTTPRoute (GatewayAPI routing)
    active_revision: str | None = None  # revision the Service selects (BlueGreen)
    analysis_available: bool = True  # False when no metrics backend is configured or reachable
    measurements: tuple[an.Measurement, ...] = ()  # the latest RunAnalysis results
    measured_at: float | None = None
    measured_revision: str | None = None
    commands: tuple[Command, ...] = ()


# --- actions ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ScaleTrack:
    """Run ``replicas`` pods of ``revision`` on ``track`` (create or update its Deployment)."""

    track: Track
    revision: str
    replicas: int


@dataclasses.dataclass(frozen=True)
class SetTrafficWeight:
    """Set the canary's share on the HTTPRoute; only emitted with GatewayAPI routing."""

    canary_weight: int
    achieved_weight: int


@dataclasses.dataclass(frozen=True)
class SwitchActiveService:
    """Point the service's Service at ``revision`` (blue-green)."""

    revision: str


@dataclasses.dataclass(frozen=True)
class DeleteTrack:
    track: Track


@dataclasses.dataclass(frozen=True)
class RunAnalysis:
    """Query ``metrics`` for ``revision`` and call ``step`` again with the measurements."""

    revision: str
    metrics: tuple[an.MetricSpec, ...]


class NotifyKind(enum.StrEnum):
    FAILED = "RolloutFailed"
    NEEDS_DECISION = "RolloutNeedsDecision"
    PROMOTED = "RolloutPromoted"


@dataclasses.dataclass(frozen=True)
class Notify:
    kind: NotifyKind
    message: str


@dataclasses.dataclass(frozen=True)
class PostEvent:
    type: str  # "Normal" or "Warning", as Kubernetes spells them
    reason: str
    message: str


CONDITION = "RolloutProgressing"


@dataclasses.dataclass(frozen=True)
class SetCondition:
    type: str
    status: str
    reason: str
    message: str


Action: TypeAlias = (
    ScaleTrack
    | SetTrafficWeight
    | SwitchActiveService
    | DeleteTrack
    | RunAnalysis
    | Notify
    | PostEvent
    | SetCondition
)
ONE_SHOT = (Notify, PostEvent)


# --- the machine -----------------------------------------------------------------------------


def canary_replicas(total: int, weight: int) -> int:
    return -(-total * weight // 100)


def stable_replicas(total: int, weight: int) -> int:
    """Stable pods left beside the canary when traffic follows the replica ratio.

    One stable pod stays while the weight is below 100, or rounding up would hand a small
    service's whole traffic to the canary at its first step.
    """
    rest = total - canary_replicas(total, weight)
    return max(rest, 1) if total > 0 and weight < 100 else max(rest, 0)


class _RolloutStep:
    """The working state of one ``step`` call; it never outlives the call."""

    def __init__(self, state: RolloutState, spec: RolloutSpec, obs: Observations, now: float) -> None:
        self.s = state
        self.spec = spec
        self.obs = obs
        self.now = now
        self.level: list[Action] = []
        self.once: list[Action] = []

    def set(self, **changes: Any) -> None:
        # Most calls restate what is already true; skipping those keeps ``step`` cheap enough
        # for the exhaustive model check.
        if any(getattr(self.s, k) != v for k, v in changes.items()):
            self.s = dataclasses.replace(self.s, **changes)

    def emit_once(self, key: str, action: Action) -> None:
        if key not in self.s.emitted:
            self.once.append(action)
            self.set(emitted=(*self.s.emitted, key))

    def event(self, key: str, kind: str, reason: str, message: str) -> None:
        self.emit_once(key, PostEvent(kind, reason, message))

    def forget(self, prefix: str) -> None:
        self.set(emitted=tuple(k for k in self.s.emitted if not k.startswith(prefix)))

    def view(self, track: Track) -> TrackView:
        return self.obs.stable if track is Track.STABLE else self.obs.canary

    def ensure(self, track: Track, revision: str, replicas: int) -> None:
        view = self.view(track)
        if (view.revision, view.replicas) != (revision, replicas):
            self.level.append(ScaleTrack(track, revision, replicas))

    def ready(self, track: Track, revision: str | None, replicas: int) -> bool:
        view = self.view(track)
        return view.revision == revision and view.ready >= replicas

    def delete(self, track: Track) -> None:
        if self.view(track).revision is not None:
            self.level.append(DeleteTrack(track))

    @property
    def rev(self) -> str:
        assert self.s.revision is not None  # every phase past Initializing has one
        return self.s.revision

    @property
    def stable(self) -> str:
        assert self.s.stable_revision is not None
        return self.s.stable_revision


def step(
    state: RolloutState, spec: RolloutSpec, obs: Observations, now: float
) -> tuple[RolloutState, tuple[Action, ...]]:
    """The next state and the actions that move the world towards it.

    ``now`` is seconds on any monotonic-enough clock; only differences matter. Calling ``step``
    again with the returned state and the same observations returns the same state, the level
    actions not yet visible in the observations, and no one-shot actions.
    """
    if spec.strategy is Strategy.ROLLING_UPDATE:
        raise ValueError("RollingUpdate rollouts are left to the Deployment controller")
    b = _RolloutStep(state, spec, obs, now)
    if not spec.paused:
        if b.s.held:
            b.set(held=False)
            b.forget("held")
            b.event("resumed-by-spec", "Normal", "RolloutResumed", "spec.rollout.paused is false again")
        _commands(b)
    for _ in range(_MAX_PASSES):
        before = b.s
        b.level.clear()
        if spec.paused and b.s.phase is not RolloutPhase.INITIALIZING:
            _hold(b)
            break
        _follow_template(b)
        _dispatch(b)
        if b.s == before:
            break
    if not b.s.held:
        _request_analysis(b)
    _report(b)
    return b.s, (*b.level, *b.once, _condition(b.s))


def _dispatch(b: _RolloutStep) -> None:
    phase = b.s.phase
    if phase is RolloutPhase.INITIALIZING:
        _initialize(b)
    elif phase in (RolloutPhase.PROGRESSING, RolloutPhase.PAUSED, RolloutPhase.PROMOTING):
        _analyse(b)
        if b.s.phase is RolloutPhase.ROLLING_BACK:
            _roll_back(b)
        elif b.s.phase is RolloutPhase.PROMOTING:
            _promote(b)
        elif b.spec.strategy is Strategy.CANARY:
            _canary_step(b)
        else:
            _preview(b)
    elif phase is RolloutPhase.ROLLING_BACK:
        _roll_back(b)
    else:
        _settle(b, b.stable)


def _hold(b: _RolloutStep) -> None:
    b.set(held=True)
    b.forget("resumed-by-spec")
    b.event("held", "Normal", "RolloutPaused", "spec.rollout.paused is true; the rollout holds where it is")


def _initialize(b: _RolloutStep) -> None:
    """First contact: adopt what runs, or deploy the first revision without ceremony."""
    desired, running = b.obs.desired_revision, b.obs.stable.revision
    if b.s.revision is None and running is not None and running != desired:
        # An existing service: what runs is stable, and the template change is a rollout.
        # (A first deployment whose template changes before it is ready just follows it.)
        b.set(phase=RolloutPhase.PROMOTED, stable_revision=running, revision=running)
        return
    b.set(revision=desired)
    b.ensure(Track.STABLE, desired, b.obs.total)
    if b.ready(Track.STABLE, desired, b.obs.total):
        b.set(phase=RolloutPhase.PROMOTED, stable_revision=desired)
        b.event(f"deployed:{desired}", "Normal", "Deployed", f"revision {desired} is running")


def _follow_template(b: _RolloutStep) -> None:
    s, desired = b.s, b.obs.desired_revision
    if s.phase in TERMINAL:
        settled = desired == s.stable_revision or (desired == s.revision and s.cause is not Cause.REVERTED)
        if not settled:
            _start(b, desired, restart=False)
    elif s.phase in LIVE and desired != s.revision:
        if desired == s.stable_revision:
            _begin_rollback(b, Cause.REVERTED, f"the template was set back to revision {desired}")
        else:
            _start(b, desired, restart=True)
    # While rolling back the template is not followed: stable is restored first, and the
    # terminal state then starts whatever revision is desired by then.


def _start(b: _RolloutStep, revision: str, *, restart: bool) -> None:
    previous = b.s.revision
    first_weight = b.spec.steps[0].weight if b.spec.strategy is Strategy.CANARY else 0
    b.set(
        phase=RolloutPhase.PROGRESSING,
        revision=revision,
        started_at=b.now,
        step=0,
        weight=first_weight,
        step_reached_at=None,
        pause_reason=None,
        cause=None,
        failure=None,
        switched_at=None,
        analysis=an.AnalysisState(),
        emitted=(),
    )
    if restart:
        message = f"template changed during the rollout of {previous}; rolling out {revision} instead"
        b.event(f"start:{revision}", "Normal", "RolloutRestarted", message)
    else:
        message = f"rolling out revision {revision} ({b.spec.strategy.value}); stable is {b.stable}"
        b.event(f"start:{revision}", "Normal", "RolloutStarted", message)


# --- commands --------------------------------------------------------------------------------


def _commands(b: _RolloutStep) -> None:
    for command in b.obs.commands:
        if command.id in b.s.applied_commands:
            continue
        refusal = _apply(b, command)
        b.set(applied_commands=(*b.s.applied_commands, command.id)[-_KEEP_COMMANDS:])
        if refusal is None:
            message = f"{command.kind.value} ({command.id}) applied; phase is now {b.s.phase.value}"
            b.once.append(PostEvent("Normal", "CommandApplied", message))
        else:
            message = f"{command.kind.value} ({command.id}) ignored: {refusal}"
            b.once.append(PostEvent("Warning", "CommandIgnored", message))


def _apply(b: _RolloutStep, command: Command) -> str | None:
    """Apply one command; return why it was refused, or None."""
    phase, kind = b.s.phase, command.kind
    if phase is RolloutPhase.ROLLING_BACK:
        return "the rollout is already rolling back"
    if phase not in LIVE:
        return f"no rollout is under way (phase {phase.value})"
    if kind is CommandKind.ABORT:
        _begin_rollback(b, Cause.ABORTED, f"aborted by command {command.id}")
    elif phase is RolloutPhase.PROMOTING:
        return "the revision is already being promoted"
    elif kind is CommandKind.PAUSE:
        if phase is RolloutPhase.PAUSED:
            return "the rollout is already paused"
        b.set(phase=RolloutPhase.PAUSED, pause_reason=PauseReason.COMMAND)
    elif kind is CommandKind.RESUME and phase is not RolloutPhase.PAUSED:
        return "the rollout is not paused"
    else:
        # A human has looked: the no-data tolerance starts again, or the next step would
        # pause on the very counts that were just overruled.
        b.set(analysis=an.reset_inconclusive(b.s.analysis))
        if kind is CommandKind.RESUME:
            _resume(b)
        elif kind is CommandKind.PROMOTE_STEP:
            _advance(b)
        else:
            _begin_promotion(b)
    return None


def _resume(b: _RolloutStep) -> None:
    reason = b.s.pause_reason
    b.forget("pause:")
    if reason is PauseReason.AWAITING_PROMOTION:
        _advance(b)  # resuming a step that waits for a human is that human's promotion
    else:
        b.set(phase=RolloutPhase.PROGRESSING, pause_reason=None)


def _advance(b: _RolloutStep) -> None:
    nxt = b.s.step + 1
    if b.spec.strategy is Strategy.BLUE_GREEN or nxt >= len(b.spec.steps):
        _begin_promotion(b)
        return
    weight = b.spec.steps[nxt].weight
    b.forget("pause:")
    b.set(phase=RolloutPhase.PROGRESSING, pause_reason=None, step=nxt, weight=weight, step_reached_at=None)
    message = f"revision {b.rev}: step {nxt + 1}/{len(b.spec.steps)}, canary weight {weight}%"
    b.event(f"step:{nxt}", "Normal", "CanaryStepStarted", message)


def _begin_promotion(b: _RolloutStep) -> None:
    b.forget("pause:")
    b.set(phase=RolloutPhase.PROMOTING, pause_reason=None)
    b.event("promoting", "Normal", "Promoting", f"promoting revision {b.rev} to stable")


def _begin_rollback(b: _RolloutStep, cause: Cause, message: str) -> None:
    b.set(phase=RolloutPhase.ROLLING_BACK, cause=cause, pause_reason=None)
    if cause is Cause.ANALYSIS_FAILED:
        failure = b.s.analysis.last_failure
        b.set(failure=failure)
        detail = failure.message if failure is not None else "analysis failed"
        text = f"revision {b.rev} failed analysis ({detail}); rolling back to {b.stable}"
        b.emit_once("notify:failed", Notify(NotifyKind.FAILED, text))
        b.event("rollback", "Warning", "AnalysisFailed", text)
    else:
        b.event("rollback", "Warning", "RollingBack", f"{message}; rolling back to {b.stable}")


# --- analysis --------------------------------------------------------------------------------


def _analysing(s: RolloutState) -> bool:
    # Measuring before the first step's weight is in place would only measure the absence of
    # the canary; after that, analysis runs continuously until the rollout ends.
    return s.phase in LIVE and (
        s.step_reached_at is not None or s.step > 0 or s.phase is RolloutPhase.PROMOTING
    )


def _analyse(b: _RolloutStep) -> None:
    checks, s, obs = b.spec.checks, b.s, b.obs
    if not checks.metrics or not _analysing(s):
        return
    fresh = (
        obs.analysis_available
        and obs.measured_revision == s.revision
        and obs.measured_at is not None
        and s.started_at is not None
        and obs.measured_at >= s.started_at
        and (s.analysis.last_run_at is None or obs.measured_at > s.analysis.last_run_at)
    )
    if fresh and obs.measured_at is not None:
        results = an.assess(checks, obs.measurements, obs.measured_at)
        state, result = an.record(s.analysis, checks, results, obs.measured_at)
    elif not obs.analysis_available and an.due(s.analysis, checks, b.now):
        # No backend to ask is an error of every metric, so an outage ends in a human's hands
        # through the same limits as failed queries, and never in a promotion.
        unavailable = tuple(
            an.MetricResult(
                an.Measurement(m.name, error="metrics backend unavailable", at=b.now),
                an.AnalysisVerdict.ERROR,
            )
            for m in checks.metrics
        )
        state, result = an.record(s.analysis, checks, unavailable, b.now)
    else:
        state, result = s.analysis, an.outcome(s.analysis, checks)
    b.set(analysis=state)
    if result is an.AnalysisOutcome.FAILED:
        _begin_rollback(b, Cause.ANALYSIS_FAILED, "analysis failed")
    elif result is an.AnalysisOutcome.INCONCLUSIVE and b.s.phase is RolloutPhase.PROGRESSING:
        b.set(phase=RolloutPhase.PAUSED, pause_reason=PauseReason.INCONCLUSIVE)
        text = (
            f"revision {b.rev}: analysis has no answer after {state.inconclusives} runs without data; "
            "resume to keep measuring, promote to accept or abort to roll back"
        )
        b.emit_once("pause:inconclusive", Notify(NotifyKind.NEEDS_DECISION, text))
        b.event("pause:inconclusive-event", "Warning", "AnalysisInconclusive", text)


def _gate_open(b: _RolloutStep) -> bool:
    """Whether analysis lets the current step move on: a pass measured at this step.

    The pass must also be the freshest evidence: when a run is due, its result is awaited
    rather than promoting on the previous one.
    """
    checks = b.spec.checks
    if not checks.metrics:
        return True
    a, reached = b.s.analysis, b.s.step_reached_at
    return (
        an.outcome(a, checks) is an.AnalysisOutcome.PASSING
        and reached is not None
        and a.last_run_at is not None
        and a.last_run_at >= reached
        and not an.due(a, checks, b.now)
    )


def _request_analysis(b: _RolloutStep) -> None:
    checks = b.spec.checks
    if (
        checks.metrics
        and _analysing(b.s)
        and b.obs.analysis_available
        and an.due(b.s.analysis, checks, b.now)
    ):
        b.level.append(RunAnalysis(b.rev, checks.metrics))


# --- strategies ------------------------------------------------------------------------------


def _reach(b: _RolloutStep, reached: bool, message: str) -> None:
    if reached and b.s.step_reached_at is None:
        b.set(step_reached_at=b.now)
        b.event(f"reached:{b.s.step}", "Normal", "StepReached", message)


def _await_promotion(b: _RolloutStep, message: str) -> None:
    b.set(phase=RolloutPhase.PAUSED, pause_reason=PauseReason.AWAITING_PROMOTION)
    b.emit_once("pause:awaiting", Notify(NotifyKind.NEEDS_DECISION, message))
    b.event("pause:awaiting-event", "Normal", "AwaitingPromotion", message)


def _canary_step(b: _RolloutStep) -> None:
    """Hold the current step's weight in place, and move on when its pause and analysis allow."""
    if not _canary_track_free(b):
        return
    steps, total = b.spec.steps, b.obs.total
    current = steps[b.s.step]
    wanted = canary_replicas(total, current.weight)
    canary_ready = min(b.obs.canary.ready, wanted) if b.obs.canary.revision == b.rev else 0
    b.ensure(Track.CANARY, b.rev, wanted)
    if b.spec.traffic.type is Routing.SERVICE:
        # Traffic follows the replica ratio; stable shrinks only as canary capacity arrives,
        # so the service never runs below its total.
        final = stable_replicas(total, current.weight)
        b.ensure(Track.STABLE, b.stable, max(final, total - canary_ready))
        reached = (
            canary_ready >= wanted and b.obs.stable.revision == b.stable and b.obs.stable.replicas <= final
        )
    else:
        # With exact weights stable keeps its full size. The route rises to the step's weight
        # only once the canary has the pods for it, and drops at once to what the ready pods
        # can carry (after a restart, the new revision has none).
        b.ensure(Track.STABLE, b.stable, total)
        route = b.obs.route_weight or 0
        target = current.weight if canary_ready >= wanted else min(route, _carried(b, canary_ready))
        if route != target:
            b.level.append(SetTrafficWeight(target, target))
        reached = canary_ready >= wanted and route == current.weight
    b.set(weight=current.weight)
    where = f"step {b.s.step + 1}/{len(steps)}"
    _reach(b, reached, f"revision {b.rev}: {where} at weight {current.weight}% ({wanted}/{total} replicas)")
    if b.s.phase is not RolloutPhase.PROGRESSING or b.s.step_reached_at is None:
        return
    if current.pause is None:
        _await_promotion(b, f"revision {b.rev} holds at {where} ({current.weight}%) until promoted")
    elif b.now >= b.s.step_reached_at + current.pause and _gate_open(b):
        _advance(b)


def _canary_track_free(b: _RolloutStep) -> bool:
    """Whether the canary track may take the current revision.

    After a restart it still runs the abandoned revision, possibly with its share of traffic;
    as in a rollback, stable is brought to full size and traffic home before it is reused.
    """
    if b.obs.canary.revision in (None, b.rev):
        return True
    total = b.obs.total
    b.ensure(Track.STABLE, b.stable, total)
    if not b.ready(Track.STABLE, b.stable, total):
        return False
    if b.spec.traffic.type is Routing.GATEWAY_API and (b.obs.route_weight or 0) > 0:
        b.level.append(SetTrafficWeight(0, 0))
        return False
    return True


def _carried(b: _RolloutStep, ready: int) -> int:
    """The largest weight up to the current step that ``ready`` canary pods were sized for."""
    steps = b.spec.steps[: b.s.step + 1]
    fits = [s.weight for s in steps if 0 < canary_replicas(b.obs.total, s.weight) <= ready]
    return max(fits, default=0)


def _preview(b: _RolloutStep) -> None:
    """Blue-green before promotion: stable serves, the preview comes up and is analysed."""
    total = b.obs.total
    b.ensure(Track.STABLE, b.stable, total)
    if b.obs.active_revision != b.stable:
        # After a restart the active Service may still select a revision on the canary
        # track; it must be back on a full stable before the preview track is reused.
        if b.ready(Track.STABLE, b.stable, total):
            b.level.append(SwitchActiveService(b.stable))
        return
    size = b.spec.blue_green.preview_replicas or total
    b.ensure(Track.CANARY, b.rev, size)
    _reach(b, b.ready(Track.CANARY, b.rev, size), f"preview of revision {b.rev} is ready ({size} replicas)")
    if b.s.phase is not RolloutPhase.PROGRESSING or b.s.step_reached_at is None or not _gate_open(b):
        return
    if b.spec.blue_green.auto_promote:
        _begin_promotion(b)
    else:
        _await_promotion(b, f"preview of revision {b.rev} passed analysis and awaits promotion")


def _promote(b: _RolloutStep) -> None:
    if b.spec.strategy is Strategy.BLUE_GREEN:
        total, delay = b.obs.total, b.spec.blue_green.scale_down_delay
        if b.s.switched_at is None:
            b.ensure(Track.STABLE, b.stable, total)
            b.ensure(Track.CANARY, b.rev, total)
            if b.obs.active_revision == b.rev:
                b.set(switched_at=b.now, weight=100)
                b.event("switched", "Normal", "ActiveSwitched", f"the Service now selects revision {b.rev}")
            elif b.ready(Track.CANARY, b.rev, total):
                b.level.append(SwitchActiveService(b.rev))
            return
        if b.now < b.s.switched_at + delay:
            # The old revision keeps running at full size: rolling back is one selector away.
            b.ensure(Track.STABLE, b.stable, total)
            b.ensure(Track.CANARY, b.rev, total)
            return
        if not b.ready(Track.STABLE, b.rev, total):
            b.ensure(Track.CANARY, b.rev, total)
    if _settle(b, b.rev):
        _promoted(b)


def _promoted(b: _RolloutStep) -> None:
    revision = b.rev
    b.forget("pause:")
    b.set(
        phase=RolloutPhase.PROMOTED,
        stable_revision=revision,
        weight=0,
        step_reached_at=None,
        switched_at=None,
        pause_reason=None,
    )
    text = f"revision {revision} is promoted to stable"
    b.event("promoted", "Normal", "Promoted", text)
    b.emit_once("notify:promoted", Notify(NotifyKind.PROMOTED, text))


def _roll_back(b: _RolloutStep) -> None:
    if not _settle(b, b.stable):
        return
    failed = b.s.cause is Cause.ANALYSIS_FAILED
    b.set(phase=RolloutPhase.ROLLED_BACK if failed else RolloutPhase.ABORTED, weight=0, step_reached_at=None)
    reason = "RolledBack" if failed else "Aborted"
    b.event(
        "rolled-back", "Warning" if failed else "Normal", reason, f"revision {b.stable} serves all traffic"
    )


def _settle(b: _RolloutStep, revision: str) -> bool:
    """Move all traffic onto ``revision`` on the stable track, in the only safe order.

    Stable is scaled to carry the full load first; only once it is ready does traffic leave
    the canary track, and only once traffic has left is the canary track deleted. Returns
    whether the last of these has been issued.
    """
    total = b.obs.total
    b.ensure(Track.STABLE, revision, total)
    if not b.ready(Track.STABLE, revision, total):
        return False
    if b.spec.strategy is Strategy.BLUE_GREEN and b.obs.active_revision != revision:
        b.level.append(SwitchActiveService(revision))
        return False
    if (
        b.spec.traffic.type is Routing.GATEWAY_API
        and b.spec.strategy is Strategy.CANARY
        and b.obs.canary.revision is not None
        and b.obs.route_weight not in (None, 0)
    ):
        b.level.append(SetTrafficWeight(0, 0))
        return False
    b.delete(Track.CANARY)
    return True


# --- reporting -------------------------------------------------------------------------------


def _achieved(b: _RolloutStep) -> int:
    obs = b.obs
    if b.spec.strategy is Strategy.BLUE_GREEN:
        on_new = b.s.revision not in (None, b.s.stable_revision) and obs.active_revision == b.s.revision
        return 100 if on_new else 0
    if obs.canary.revision is None:
        return 0
    if b.spec.traffic.type is Routing.GATEWAY_API:
        return obs.route_weight or 0
    serving = obs.canary.ready + obs.stable.ready
    return round(100 * obs.canary.ready / serving) if serving else 0


def _report(b: _RolloutStep) -> None:
    b.set(achieved_weight=_achieved(b))


def _condition(s: RolloutState) -> SetCondition:
    if s.held and s.phase not in TERMINAL:
        return SetCondition(CONDITION, "True", "PausedBySpec", "spec.rollout.paused is true")
    if s.phase in TERMINAL:
        message = {
            RolloutPhase.PROMOTED: f"revision {s.stable_revision} is stable",
            RolloutPhase.ROLLED_BACK: f"revision {s.revision} was rolled back: "
            + (s.failure.message if s.failure else "analysis failed"),
            RolloutPhase.ABORTED: f"revision {s.revision} was aborted; {s.stable_revision} serves",
        }[s.phase]
        return SetCondition(CONDITION, "False", s.phase.value, message)
    if s.phase is RolloutPhase.PAUSED and s.pause_reason is not None:
        return SetCondition(CONDITION, "True", s.pause_reason.value, f"revision {s.revision} is paused")
    if s.phase is RolloutPhase.ROLLING_BACK:
        detail = s.failure.message if s.failure else (s.cause.value if s.cause else "")
        return SetCondition(CONDITION, "True", "RollingBack", f"rolling back {s.revision}: {detail}")
    weight = f", canary weight {s.achieved_weight}%" if s.weight else ""
    return SetCondition(CONDITION, "True", s.phase.value, f"rolling out revision {s.revision}{weight}")


def status_phase(state: RolloutState) -> str | None:
    """The ``status.phase`` a rollout implies, or None to let the basic reconcile decide."""
    if state.phase in TERMINAL or state.phase is RolloutPhase.INITIALIZING:
        return None
    if state.held or state.phase is RolloutPhase.PAUSED:
        return "Paused"
    return "RollingBack" if state.phase is RolloutPhase.ROLLING_BACK else "Progressing"


def canary_status(state: RolloutState, spec: RolloutSpec) -> dict[str, Any] | None:
    """``status.canary`` while a canary rollout is under way, else None."""
    if spec.strategy is not Strategy.CANARY or state.phase not in (*LIVE, RolloutPhase.ROLLING_BACK):
        return None
    phase = state.pause_reason.value if state.pause_reason else state.phase.value
    return {"weight": state.achieved_weight, "step": state.step, "phase": phase}
