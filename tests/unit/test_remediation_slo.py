"""Table-driven tests of SLO-breach healing in the core: reading answers, detection, the ladder
(roll back a new revision, scale a stable one up), verification, and blindness when Prometheus
cannot answer. Time is an argument everywhere; no clock is read, nothing is mocked.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import random
from typing import Any

import pytest

from homeostat.core import policy as pol
from homeostat.core import remediation as rem

NOW = 1_000_000.0
A, S, V = pol.Action, rem.Symptom, rem.SloVerdict
NS, SVC = "ns", "web"
SERVICE = f"ReplicatedService/{NS}/{SVC}"

SLO = rem.parse_healing(
    {
        "slo": {
            "errorRate": {"query": "errors{service='{{service}}'}", "max": 0.05},
            "latency": {"query": "p99{service='{{service}}'}", "max": 0.3},
            "for": "30s",
            "interval": "5s",
        }
    }
)
ERRORS, LATENCY = SLO.objectives
POLICY = pol.parse(
    "t",
    {
        "actions": {"Rollback": {"risk": "low", "mode": "auto"}, "ScaleUp": {"risk": "low", "mode": "auto"}},
        "rateLimits": {"perService": {"maxActions": 10, "window": "10m"}},
        "cooldown": "30s",
        "verifyWindow": "1m",
        "circuitBreaker": {"failures": 5, "window": "30m"},
    },
)
CLUSTER = pol.ClusterView(2, 2)


def reading(objective: rem.SloObjective, value: float | None, breached_for: float = 0) -> rem.SloReading:
    """What the handler would hold after answers above the bound for ``breached_for`` seconds."""
    first = rem.read_slo(objective, value, None, NOW - breached_for)
    return rem.read_slo(objective, value, first, NOW)


def view(*readings: rem.SloReading, **extra: Any) -> rem.ServiceView:
    fields: dict[str, Any] = {
        "namespace": NS,
        "name": SVC,
        "healing": SLO,
        "stable_revision": "r1",
        "current_revision": "r1",
        "replicas": 3,
        "max_replicas": 5,
        "slo": readings,
    }
    fields.update(extra)
    return rem.ServiceView(**fields)


def run(
    state: rem.HealingState, service: rem.ServiceView, at: float
) -> tuple[rem.HealingState, tuple[rem.Effect, ...]]:
    return rem.step(state, rem.PassContext(service, POLICY, (), CLUSTER, {}, at))


def kinds(effects: tuple[rem.Effect, ...]) -> list[str]:
    return [type(e).__name__ for e in effects]


# --- reading answers -----------------------------------------------------------------------------

BREACHED_EARLIER = rem.SloReading("errorRate", V.BREACHED, 0.5, 0.05, since=NOW - 100)
READ = [
    ("met", 0.01, None, V.MET, None),
    ("at the bound is met", 0.05, None, V.MET, None),
    ("breach starts now", 0.2, None, V.BREACHED, NOW),
    ("breach carries its start", 0.2, BREACHED_EARLIER, V.BREACHED, NOW - 100),
    ("met ends the breach", 0.01, BREACHED_EARLIER, V.MET, None),
    ("no data is unknown", None, None, V.UNKNOWN, None),
    ("NaN is unknown", math.nan, None, V.UNKNOWN, None),
    ("+Inf is unknown", math.inf, None, V.UNKNOWN, None),
    ("unknown keeps the breach clock", None, BREACHED_EARLIER, V.UNKNOWN, NOW - 100),
]


@pytest.mark.parametrize(
    ("value", "previous", "verdict", "since"), [r[1:] for r in READ], ids=[r[0] for r in READ]
)
def test_read_slo(
    value: float | None, previous: rem.SloReading | None, verdict: rem.SloVerdict, since: float | None
) -> None:
    got = rem.read_slo(ERRORS, value, previous, NOW)
    assert (got.verdict, got.since, got.bound) == (verdict, since, 0.05)
    assert (got.value is None) == (verdict is V.UNKNOWN)


# --- detection -------------------------------------------------------------------------------------

DETECT = [
    ("error rate breached past for", view(reading(ERRORS, 0.5, 30)), [S.ERROR_RATE_BREACH]),
    ("latency breached past for", view(reading(LATENCY, 0.9, 45)), [S.LATENCY_BREACH]),
    (
        "both",
        view(reading(ERRORS, 0.5, 31), reading(LATENCY, 0.9, 31)),
        [S.ERROR_RATE_BREACH, S.LATENCY_BREACH],
    ),
    ("breach shorter than for", view(reading(ERRORS, 0.5, 29)), []),
    ("met", view(reading(ERRORS, 0.01, 300), reading(LATENCY, 0.1, 300)), []),
    ("Prometheus unknown", view(reading(ERRORS, None, 300), reading(LATENCY, None, 300)), []),
    (
        "disabled",
        view(reading(ERRORS, 0.5, 300), healing=dataclasses.replace(SLO, slo=False)),
        [],
    ),
]


@pytest.mark.parametrize(("service", "expected"), [d[1:] for d in DETECT], ids=[d[0] for d in DETECT])
def test_detect(service: rem.ServiceView, expected: list[rem.Symptom]) -> None:
    found = rem.detect(service, NOW)
    assert [f.symptom for f in found] == expected
    assert all(f.target == SERVICE for f in found)


# --- the ladder ------------------------------------------------------------------------------------

UP3 = (A.SCALE_UP,) * 3
LADDER = [
    ("stable revision scales up", {}, UP3),
    ("new revision is rolled back first", {"current_revision": "r2"}, (A.ROLLBACK, *UP3)),
    ("a rolled-back revision is not new", {"current_revision": "r2", "rolled_back": "r2"}, UP3),
    ("no stable revision yet", {"stable_revision": "", "current_revision": "r2"}, UP3),
    ("autoscaler owns replicas", {"autoscaled": True}, ()),
    ("autoscaler, new revision", {"autoscaled": True, "current_revision": "r2"}, (A.ROLLBACK,)),
    ("notify only", {"healing": dataclasses.replace(SLO, slo_action=rem.SloAction.NOTIFY)}, ()),
    ("fewer steps", {"healing": dataclasses.replace(SLO, max_scale_ups=1)}, (A.SCALE_UP,)),
]


@pytest.mark.parametrize(("extra", "expected"), [c[1:] for c in LADDER], ids=[c[0] for c in LADDER])
def test_ladder(extra: dict[str, Any], expected: tuple[pol.Action, ...]) -> None:
    service = view(reading(LATENCY, 0.9, 60), **extra)
    (finding,) = rem.detect(service, NOW)
    assert rem.ladder(finding, service) == expected


# --- acting, verifying, escalating -----------------------------------------------------------------


def test_a_stable_revision_is_scaled_up_and_verified() -> None:
    state, effects = run(rem.HealingState(), view(reading(LATENCY, 0.9, 30)), NOW)
    (execute,) = effects
    assert isinstance(execute, rem.Execute)
    assert (execute.action, execute.target, execute.cause, execute.value) == (
        A.SCALE_UP,
        SERVICE,
        S.LATENCY_BREACH,
        "4",  # 3 + 25 % rounded up
    )
    assert "latency of web is 0.9s, above 0.3s" in execute.message
    # Latency back under the bound within the verify window: verified.
    state, effects = run(state, view(rem.read_slo(LATENCY, 0.2, None, NOW + 20), replicas=4), NOW + 20)
    assert kinds(effects) == ["Resolved"]
    assert effects[0].succeeded  # type: ignore[union-attr]
    assert [(r.action, r.outcome) for r in state.history] == [(A.SCALE_UP, pol.ActionOutcome.SUCCEEDED)]
    assert state.incidents == ()


def test_scale_up_step_percent_and_clamp_to_max() -> None:
    big = view(
        reading(ERRORS, 0.5, 30),
        replicas=8,
        max_replicas=20,
        healing=dataclasses.replace(SLO, scale_up_percent=50),
    )
    _, (execute,) = run(rem.HealingState(), big, NOW)
    assert isinstance(execute, rem.Execute) and execute.value == "12"
    near = view(
        reading(ERRORS, 0.5, 30),
        replicas=4,
        max_replicas=5,
        healing=dataclasses.replace(SLO, scale_up_percent=100),
    )
    _, (execute,) = run(rem.HealingState(), near, NOW)
    assert isinstance(execute, rem.Execute) and execute.value == "5"


def test_at_max_replicas_a_human_is_asked() -> None:
    state, effects = run(rem.HealingState(), view(reading(LATENCY, 0.9, 30), replicas=5), NOW)
    (escalate,) = effects
    assert isinstance(escalate, rem.Escalate)
    assert escalate.reason == "CannotAct" and "already at spec.replicas.max (5)" in escalate.message
    assert state.history == ()  # nothing was done
    _, effects = run(state, view(reading(LATENCY, 0.9, 300), replicas=5), NOW + 300)
    assert effects == ()  # escalated once; a human owns it now


def test_a_breach_that_stays_climbs_the_ladder_then_escalates() -> None:
    one = dataclasses.replace(SLO, max_scale_ups=2)
    breached = reading(LATENCY, 0.9, 30)
    state, effects = run(rem.HealingState(), view(breached, healing=one), NOW)
    assert [e.value for e in effects] == ["4"]  # type: ignore[union-attr]
    state, effects = run(state, view(breached, healing=one, replicas=4), NOW + 30)
    assert effects == ()  # verifying
    state, effects = run(state, view(breached, healing=one, replicas=4), NOW + 61)
    assert [(type(e).__name__, getattr(e, "value", "")) for e in effects] == [("Execute", "5")]
    state, effects = run(state, view(breached, healing=one, replicas=5), NOW + 122)
    assert kinds(effects) == ["Escalate"]
    assert effects[0].reason == "LadderExhausted"  # type: ignore[union-attr]
    assert [r.outcome for r in state.history] == [pol.ActionOutcome.FAILED, pol.ActionOutcome.FAILED]


def test_a_new_revision_with_errors_is_rolled_back_then_verified() -> None:
    bad = view(reading(ERRORS, 0.6, 30), current_revision="r2")
    state, effects = run(rem.HealingState(), bad, NOW)
    (execute,) = effects
    assert isinstance(execute, rem.Execute)
    assert (execute.action, execute.cause) == (A.ROLLBACK, S.ERROR_RATE_BREACH) and execute.value
    healed = view(rem.read_slo(ERRORS, 0.0, None, NOW + 10), current_revision="r2", rolled_back="r2")
    state, effects = run(state, healed, NOW + 10)
    assert kinds(effects) == ["Resolved"] and effects[0].succeeded  # type: ignore[union-attr]
    assert [(r.action, r.outcome) for r in state.history] == [(A.ROLLBACK, pol.ActionOutcome.SUCCEEDED)]


def test_prometheus_unknown_never_acts_and_never_verifies() -> None:
    # Blind from the start: no incident, no action.
    state, effects = run(rem.HealingState(), view(reading(ERRORS, None, 600)), NOW)
    assert (state.incidents, effects) == ((), ())
    # Blind while verifying: not cleared, not failed, even past the verify window.
    state, _ = run(rem.HealingState(), view(reading(ERRORS, 0.5, 30)), NOW)
    (incident,) = state.incidents
    blind = view(rem.read_slo(ERRORS, None, None, NOW + 200, "prometheus unreachable"))
    state, effects = run(state, blind, NOW + 200)
    assert effects == () and state.incidents == (incident,)
    assert [r.outcome for r in state.history] == [pol.ActionOutcome.IN_PROGRESS]
    # The answer comes back under the bound: verified.
    state, effects = run(state, view(rem.read_slo(ERRORS, 0.0, None, NOW + 210)), NOW + 210)
    assert kinds(effects) == ["Resolved"] and effects[0].succeeded  # type: ignore[union-attr]


def test_readings_are_stored_for_status() -> None:
    got = reading(LATENCY, 0.9, 30).as_in_storage()
    assert got == {
        "name": "latency",
        "verdict": "Breached",
        "max": 0.3,
        "value": 0.9,
        "breachedSince": NOW - 30,
    }
    unknown = rem.read_slo(LATENCY, None, None, NOW, "connection refused").as_in_storage()
    assert unknown == {"name": "latency", "verdict": "Unknown", "max": 0.3, "message": "connection refused"}


# --- parsing ---------------------------------------------------------------------------------------


def test_defaults() -> None:
    spec = rem.parse_healing({"slo": {"latency": {"query": "q", "max": 0.5}}})
    assert spec.enabled and spec.slo
    assert spec.objectives == (rem.SloObjective("latency", "q", 0.5),)
    assert (spec.slo_for, spec.slo_interval, spec.slo_action) == (60.0, 15.0, rem.SloAction.AUTO)
    assert (spec.scale_up_percent, spec.max_scale_ups) == (25, 3)
    off = rem.parse_healing({"slo": {"enabled": False}})
    assert not off.enabled and not off.slo


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"slo": {}}, "spec.healing.slo"),
        ({"slo": {"errorRate": {"max": 0.1}}}, "spec.healing.slo.errorRate.query"),
        ({"slo": {"errorRate": {"query": "q", "max": "high"}}}, "spec.healing.slo.errorRate.max"),
        ({"slo": {"latency": {"query": "q", "max": -1}}}, "spec.healing.slo.latency.max"),
        ({"slo": {"latency": "fast"}}, "spec.healing.slo.latency"),
        ({"slo": {"latency": {"query": "q", "max": 1}, "for": "soon"}}, "spec.healing.slo.for"),
        ({"slo": {"latency": {"query": "q", "max": 1}, "interval": "0s"}}, "spec.healing.slo.interval"),
        ({"slo": {"latency": {"query": "q", "max": 1}, "action": "Panic"}}, "spec.healing"),
        ({"slo": "on"}, "spec.healing.slo"),
    ],
)
def test_bad_slo_specs_name_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(rem.specs.SpecError) as info:
        rem.parse_healing(raw)
    assert info.value.field == field


# --- bounded model check ---------------------------------------------------------------------------
#
# A small world around the real ``step``: the latency reading turns bad, good or unknown, a new
# revision is deployed or becomes stable, time passes; executed effects change the world the way
# the handler and the cluster would (a scale-up raises the replica count, a rollback marks the
# revision rolled back). Every sequence up to MODEL_DEPTH events is explored, with and without an
# autoscaler owning the replica count, and after every event:
# - no action unless the reading is Breached and has been for ``for`` (never act blind);
# - a scale-up goes up, never beyond max, and never on an autoscaled service;
# - a rollback only of an unproven revision;
# - an SLO incident is never resolved as succeeded while its reading is Unknown;
# - the state survives a round trip through storage.

MODEL_EVENTS = ("bad", "good", "blind", "deploy", "promote", "tick-3s", "tick-40s", "tick-5m")
MODEL_DEPTH = 4
MODEL_SAMPLES, MODEL_SAMPLE_LENGTH = 400, 25
ONE = dataclasses.replace(SLO, objectives=(LATENCY,), slo_for=30.0)


@dataclasses.dataclass(frozen=True)
class World:
    now: float = NOW
    value: float | None = 0.1
    reading: rem.SloReading | None = None
    replicas: int = 2
    current: str = "r1"
    stable: str = "r1"
    rolled_back: str = ""
    revisions: int = 1
    autoscaled: bool = False

    def view(self) -> rem.ServiceView:
        return view(
            *((self.reading,) if self.reading is not None else ()),
            healing=ONE,
            replicas=self.replicas,
            max_replicas=4,
            current_revision=self.current,
            stable_revision=self.stable,
            rolled_back=self.rolled_back,
            autoscaled=self.autoscaled,
        )


def _event(world: World, event: str) -> World:
    if event in ("bad", "good", "blind"):
        world = dataclasses.replace(world, value={"bad": 0.9, "good": 0.1, "blind": None}[event])
    elif event == "deploy":
        n = world.revisions + 1
        world = dataclasses.replace(world, current=f"r{n}", revisions=n)
    elif event == "promote":
        world = dataclasses.replace(world, stable=world.current)
    else:
        seconds = {"tick-3s": 3, "tick-40s": 40, "tick-5m": 300}[event]
        world = dataclasses.replace(world, now=world.now + seconds)
    # The handler's probe answers on every event (an interval shorter than any tick).
    return dataclasses.replace(world, reading=rem.read_slo(LATENCY, world.value, world.reading, world.now))


def _pass(
    state: rem.HealingState, world: World, seen: collections.Counter[str]
) -> tuple[rem.HealingState, World, list[str]]:
    before = world.view()
    state, effects = run(state, before, world.now)
    problems = []
    reading = world.reading
    for effect in effects:
        seen[
            type(effect).__name__ + (f":{effect.action.value}" if isinstance(effect, rem.Execute) else "")
        ] += 1
        if isinstance(effect, rem.Execute):
            breached = reading is not None and reading.verdict is V.BREACHED and reading.since is not None
            if not breached or world.now - reading.since < ONE.slo_for:  # type: ignore[union-attr, operator]
                problems.append(f"acted on {reading}")
            if effect.action is A.SCALE_UP:
                wanted = int(effect.value)
                if not world.replicas < wanted <= 4 or world.autoscaled:
                    problems.append(f"scale-up {world.replicas} -> {wanted} (autoscaled {world.autoscaled})")
                world = dataclasses.replace(world, replicas=wanted)
            elif effect.action is A.ROLLBACK:
                if not rem.unproven(before):
                    problems.append(f"rolled back a proven revision {world.current}")
                world = dataclasses.replace(world, rolled_back=world.current)
            else:
                problems.append(f"unexpected {effect.action}")
        blind = reading is not None and reading.verdict is V.UNKNOWN
        if isinstance(effect, rem.Resolved) and effect.succeeded and blind:
            problems.append("resolved while blind")
    if rem.HealingState.from_storage(state.as_in_storage()) != dataclasses.replace(state, policy_error=""):
        problems.append("storage round trip")
    return state, world, problems


@pytest.mark.parametrize("autoscaled", [False, True], ids=["replicas-free", "autoscaled"])
def test_model_slo_healing_never_acts_blind_or_beyond_its_bounds(autoscaled: bool) -> None:
    start = World(autoscaled=autoscaled)
    seen: collections.Counter[str] = collections.Counter()
    rng = random.Random(6)
    exhaustive = itertools.product(MODEL_EVENTS, repeat=MODEL_DEPTH)
    samples = (tuple(rng.choices(MODEL_EVENTS, k=MODEL_SAMPLE_LENGTH)) for _ in range(MODEL_SAMPLES))
    for trace in itertools.chain(exhaustive, samples):
        state, world = rem.HealingState(), start
        for i, event in enumerate(trace):
            world = _event(world, event)
            state, world, problems = _pass(state, world, seen)
            assert not problems, (trace[: i + 1], problems)
    # The model reaches what it checks: actions, verification both ways, and escalation.
    assert seen["Execute:Rollback"] and seen["Resolved"] and seen["Escalate"]
    assert bool(seen["Execute:ScaleUp"]) is not autoscaled
