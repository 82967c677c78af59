"""Self-healing as a pure state machine: symptoms in, remediation actions out.

Detection, the choice of action, verification and escalation are what go wrong in self-healing
systems (restart storms, a rollback of the wrong revision, a node drained while half the cluster
is down), so all of it is here, over frozen values and an explicit clock, where it is
table-tested and model-checked. The handler (``handlers/healing.py``) builds the views from its
watch caches, calls ``step``, executes the effects through ports and persists ``HealingState``
in ``status.healing``.

Each incident (a symptom on a subject) climbs a ladder: the first action, then, when the symptom
has not cleared within the policy's verify window, the next one, and finally a human. Every
action passes through ``policy.decide`` first; a denial, an expired approval or an open circuit
hands the incident to a human and nothing more is done about it automatically.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

from homeostat.core import children as kids
from homeostat.core import fields
from homeostat.core import policy as pol
from homeostat.core import scaling as sc
from homeostat.core import spec as specs

LABEL_REVISION = "homeostat.dev/revision"
HISTORY_LIMIT = 100  # records kept per service; enough for any sensible rate-limit window
INCIDENT_LIMIT = 50


# --- the service's healing settings (spec.healing) ---------------------------------------------


class CrashLoopAction(enum.StrEnum):
    ROLLBACK = "Rollback"
    NOTIFY = "Notify"


class OomAction(enum.StrEnum):
    RAISE_LIMIT = "RaiseLimit"
    NOTIFY = "Notify"


class NodeRemedy(enum.StrEnum):
    RESCHEDULE = "Reschedule"
    NOTIFY = "Notify"


class SloAction(enum.StrEnum):
    AUTO = "Auto"  # roll a new revision back, scale a stable one up
    NOTIFY = "Notify"


@dataclasses.dataclass(frozen=True)
class SloObjective:
    """One bound of ``spec.healing.slo``: a PromQL query answering one number, and its maximum."""

    name: str  # "errorRate" or "latency", as in the spec
    query: str
    max: float


@dataclasses.dataclass(frozen=True)
class HealingSpec:
    crash_loop: bool = False
    restart_threshold: int = 3
    crash_window: float = 600.0
    crash_action: CrashLoopAction = CrashLoopAction.ROLLBACK
    oom: bool = False
    oom_action: OomAction = OomAction.RAISE_LIMIT
    increase_percent: int = 25
    max_memory: float | None = None
    node_failure: bool = False
    grace: float = 300.0
    cordon_after: float = 900.0
    node_action: NodeRemedy = NodeRemedy.RESCHEDULE
    maintenance: bool = False
    slo: bool = False
    objectives: tuple[SloObjective, ...] = ()
    slo_for: float = 60.0  # how long a bound must stay breached before it is a symptom
    slo_interval: float = 15.0  # how often the handler queries Prometheus
    slo_action: SloAction = SloAction.AUTO
    scale_up_percent: int = 25
    max_scale_ups: int = 3

    @property
    def enabled(self) -> bool:
        return self.crash_loop or self.oom or self.node_failure or self.maintenance or self.slo


def _block(raw: Mapping[str, Any], key: str) -> tuple[bool, Mapping[str, Any]]:
    body = raw.get(key)
    if body is None:
        return False, {}
    if not isinstance(body, Mapping):
        raise specs.SpecError(f"spec.healing.{key}", "must be an object")
    return bool(body.get("enabled", True)), body


def _dur(body: Mapping[str, Any], key: str, default: str, field: str) -> float:
    value = body.get(key, default)
    if not isinstance(value, str):
        raise specs.SpecError(field, f"must be a duration, got {value!r}")
    return fields.parse_duration(value, field)


def parse_healing(raw: Mapping[str, Any] | None) -> HealingSpec:
    """``spec.healing`` as a ``HealingSpec``; an absent block turns its remediation off."""
    raw = raw or {}
    crash, crash_body = _block(raw, "crashLoop")
    oom, oom_body = _block(raw, "oom")
    node, node_body = _block(raw, "nodeFailure")
    maint, _ = _block(raw, "predictiveMaintenance")
    try:
        max_memory = specs.quantity(oom_body["maxMemory"]) if "maxMemory" in oom_body else None
        return HealingSpec(
            crash_loop=crash,
            restart_threshold=int(crash_body.get("restartThreshold", 3)),
            crash_window=_dur(crash_body, "window", "10m", "spec.healing.crashLoop.window"),
            crash_action=CrashLoopAction(crash_body.get("action", "Rollback")),
            oom=oom,
            oom_action=OomAction(oom_body.get("action", "RaiseLimit")),
            increase_percent=int(oom_body.get("increasePercent", 25)),
            max_memory=max_memory,
            node_failure=node,
            grace=_dur(node_body, "gracePeriod", "5m", "spec.healing.nodeFailure.gracePeriod"),
            cordon_after=_dur(node_body, "cordonAfter", "15m", "spec.healing.nodeFailure.cordonAfter"),
            node_action=NodeRemedy(node_body.get("action", "Reschedule")),
            maintenance=maint,
            **_slo(raw),
        )
    except ValueError as exc:
        if isinstance(exc, specs.SpecError):
            raise
        raise specs.SpecError("spec.healing", str(exc)) from None


def _slo(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The ``spec.healing.slo`` fields of ``HealingSpec``; the queries are required (the API
    server's schema says so too): there is no metric name every workload exports."""
    enabled, body = _block(raw, "slo")
    if raw.get("slo") is None:
        return {}
    objectives = []
    for name in ("errorRate", "latency"):
        bound = body.get(name)
        if bound is None:
            continue
        field = f"spec.healing.slo.{name}"
        if not isinstance(bound, Mapping):
            raise specs.SpecError(field, "must be an object")
        query, limit = bound.get("query"), bound.get("max")
        if not isinstance(query, str) or not query.strip():
            raise specs.SpecError(f"{field}.query", "is required")
        if isinstance(limit, bool) or not isinstance(limit, int | float):
            raise specs.SpecError(f"{field}.max", f"must be a number, got {limit!r}")
        if not math.isfinite(limit) or limit < 0:
            raise specs.SpecError(f"{field}.max", f"must be a number of at least 0, got {limit!r}")
        objectives.append(SloObjective(name, query, float(limit)))
    if enabled and not objectives:
        raise specs.SpecError("spec.healing.slo", "needs errorRate or latency when enabled")
    interval = _dur(body, "interval", "15s", "spec.healing.slo.interval")
    if interval <= 0:
        raise specs.SpecError("spec.healing.slo.interval", "must be a positive duration")
    return {
        "slo": enabled,
        "objectives": tuple(objectives),
        "slo_for": _dur(body, "for", "1m", "spec.healing.slo.for"),
        "slo_interval": interval,
        "slo_action": SloAction(body.get("action", "Auto")),
        "scale_up_percent": int(body.get("scaleUpPercent", 25)),
        "max_scale_ups": int(body.get("maxScaleUps", 3)),
    }


# --- quantities and times ----------------------------------------------------------------------


def mebibytes(value: float) -> str:
    """Bytes as a whole number of Mi, rounded up, so a raised limit is never below the target."""
    return f"{math.ceil(value / 2**20)}Mi"


def timestamp(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


# --- observations ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ContainerView:
    name: str
    restarts: int = 0
    waiting_reason: str = ""
    terminated_reason: str = ""  # current state.terminated
    terminated_exit: int = 0
    last_reason: str = ""  # lastState.terminated
    last_finished: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class PodView:
    name: str
    node: str = ""
    revision: str = ""
    phase: str = "Pending"
    ready: bool = False
    not_ready_since: float | None = None
    deleting: bool = False
    containers: tuple[ContainerView, ...] = ()

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> PodView:
        meta = body.get("metadata") or {}
        status = body.get("status") or {}
        ready_cond: Mapping[str, Any] = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {}
        )
        containers = []
        for raw in status.get("containerStatuses") or []:
            state = raw.get("state") or {}
            last = (raw.get("lastState") or {}).get("terminated") or {}
            terminated = state.get("terminated") or {}
            containers.append(
                ContainerView(
                    name=str(raw.get("name", "")),
                    restarts=int(raw.get("restartCount") or 0),
                    waiting_reason=str((state.get("waiting") or {}).get("reason") or ""),
                    terminated_reason=str(terminated.get("reason") or ""),
                    terminated_exit=int(terminated.get("exitCode") or 0),
                    last_reason=str(last.get("reason") or ""),
                    last_finished=timestamp(last.get("finishedAt"))
                    or timestamp(terminated.get("finishedAt")),
                )
            )
        ready = ready_cond.get("status") == "True"
        return cls(
            name=str(meta.get("name", "")),
            node=str((body.get("spec") or {}).get("nodeName") or ""),
            revision=str((meta.get("labels") or {}).get(LABEL_REVISION) or ""),
            phase=str(status.get("phase") or "Pending"),
            ready=ready,
            not_ready_since=None if ready else timestamp(ready_cond.get("lastTransitionTime")),
            deleting=bool(meta.get("deletionTimestamp")),
            containers=tuple(containers),
        )


PRESSURE_CONDITIONS = ("MemoryPressure", "DiskPressure", "PIDPressure")


@dataclasses.dataclass(frozen=True)
class NodeView:
    name: str
    ready: bool
    not_ready_since: float | None = None
    unschedulable: bool = False
    pressure: tuple[str, ...] = ()  # pressure conditions that are True
    pressure_since: float | None = None

    @classmethod
    def of(
        cls,
        body: Mapping[str, Any],
        first_seen_not_ready: float | None = None,
        first_seen_pressure: float | None = None,
    ) -> NodeView:
        """``first_seen_not_ready`` is when the watcher first saw the node not Ready: a
        condition's lastTransitionTime can be stale or wrong (simulated nodes report their
        creation time), so the later of the two is trusted, which only ever delays action."""
        status = body.get("status") or {}
        cond: Mapping[str, Any] = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {}
        )
        ready = cond.get("status") == "True"
        since = None
        if not ready:
            candidates = [t for t in (timestamp(cond.get("lastTransitionTime")), first_seen_not_ready) if t]
            since = max(candidates) if candidates else first_seen_not_ready
        conditions = status.get("conditions") or []
        pressure = tuple(
            sorted(
                c["type"]
                for c in conditions
                if c.get("type") in PRESSURE_CONDITIONS and c.get("status") == "True"
            )
        )
        pressure_since = None
        if pressure:
            times = [timestamp(c.get("lastTransitionTime")) for c in conditions if c.get("type") in pressure]
            known = [t for t in (*times, first_seen_pressure) if t]
            pressure_since = max(known) if known else None
        return cls(
            name=str((body.get("metadata") or {}).get("name", "")),
            ready=ready,
            not_ready_since=since,
            unschedulable=bool((body.get("spec") or {}).get("unschedulable")),
            pressure=pressure,
            pressure_since=pressure_since,
        )


@dataclasses.dataclass(frozen=True)
class MaintenanceRequest:
    """A request written by predictive maintenance to status.maintenance.requests."""

    key: str
    pod: str
    action: pol.Action
    message: str
    node: str = ""  # a node request (disk trend) names a node instead of a pod


def maintenance_requests(status: Mapping[str, Any]) -> tuple[MaintenanceRequest, ...]:
    """Requests with an action the healing loop can run; a node request whose action is not
    one (Notify) was only meant to be reported, which the trend check has done."""
    found = []
    for raw in ((status.get("maintenance") or {}).get("requests")) or []:
        if not isinstance(raw, Mapping) or not (raw.get("pod") or raw.get("node")):
            continue
        try:
            action = pol.Action(raw.get("action") or pol.Action.RESTART_POD.value)
        except ValueError:
            continue
        pod, node = str(raw.get("pod") or ""), str(raw.get("node") or "")
        found.append(
            MaintenanceRequest(
                str(raw.get("key") or pod or node), pod, action, str(raw.get("message") or ""), node=node
            )
        )
    return tuple(found)


class SloVerdict(enum.StrEnum):
    MET = "Met"
    BREACHED = "Breached"
    UNKNOWN = "Unknown"  # Prometheus is down, or answered nothing (or NaN): never a breach


@dataclasses.dataclass(frozen=True)
class SloReading:
    """The latest answer for one objective; ``since`` is when the bound was first seen breached
    in the current run of breaches (None unless breached)."""

    name: str
    verdict: SloVerdict
    value: float | None = None
    bound: float = 0.0
    since: float | None = None
    message: str = ""

    def as_in_storage(self) -> dict[str, Any]:
        stored: dict[str, Any] = {"name": self.name, "verdict": self.verdict.value, "max": self.bound}
        if self.value is not None:
            stored["value"] = self.value
        if self.since is not None:
            stored["breachedSince"] = self.since
        if self.message:
            stored["message"] = self.message[:256]
        return stored


def read_slo(
    objective: SloObjective, value: float | None, previous: SloReading | None, now: float, why: str = ""
) -> SloReading:
    """Judge one answer against its bound, carrying the start of a breach over from
    ``previous``. ``value`` None (or NaN) is Unknown, and an Unknown neither starts nor ends
    a breach: a Prometheus outage in the middle of one must not reset the ``for`` clock."""
    if value is None or not math.isfinite(value):
        since = previous.since if previous is not None else None
        text = why or ("no data" if value is None else f"the query answered {value}")
        return SloReading(objective.name, SloVerdict.UNKNOWN, None, objective.max, since, text)
    if value > objective.max:
        since = previous.since if previous is not None and previous.since is not None else now
        return SloReading(objective.name, SloVerdict.BREACHED, value, objective.max, since)
    return SloReading(objective.name, SloVerdict.MET, value, objective.max)


@dataclasses.dataclass(frozen=True)
class ServiceView:
    namespace: str
    name: str
    healing: HealingSpec
    stable_revision: str = ""
    current_revision: str = ""
    pods: tuple[PodView, ...] = ()
    nodes: Mapping[str, NodeView] = dataclasses.field(default_factory=dict)  # by node name
    memory_limits: Mapping[str, float | None] = dataclasses.field(default_factory=dict)
    replicas: int = 1
    max_replicas: int = 1
    maintenance: tuple[MaintenanceRequest, ...] = ()
    rolled_back: str = ""  # a revision the rollout machinery holds back (status.rollback.revision)
    slo: tuple[SloReading, ...] = ()  # the latest Prometheus answers for spec.healing.slo
    autoscaled: bool = False  # an autoscaler (spec.autoscaling) owns the replica count

    @property
    def ref(self) -> str:
        return f"ReplicatedService/{self.namespace}/{self.name}"


# --- symptoms ----------------------------------------------------------------------------------


class Symptom(enum.StrEnum):
    CRASH_LOOP_NEW_REVISION = "CrashLoopNewRevision"
    CRASH_LOOP = "CrashLoop"
    OOM_KILLED = "OOMKilled"
    POD_FAILED = "PodFailed"
    READINESS_FAILING = "ReadinessFailing"
    NODE_NOT_READY = "NodeNotReady"
    NODE_DOWN_LONG = "NodeNotReadyLong"
    NODE_PRESSURE = "NodePressure"
    PREDICTED_EXHAUSTION = "PredictedExhaustion"
    ERROR_RATE_BREACH = "ErrorRateBreach"
    LATENCY_BREACH = "LatencyBreach"


@dataclasses.dataclass(frozen=True)
class SymptomFinding:
    """A symptom on a subject; ``target`` is what the first action would touch."""

    symptom: Symptom
    subject: str
    target: str
    detail: str
    container: str = ""
    pods: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.symptom.value}:{self.target}"


def _crashing(pod: PodView, spec: HealingSpec, now: float) -> str:
    """Why the pod counts as crash-looping, or '' when it does not."""
    for c in pod.containers:
        if c.waiting_reason == "CrashLoopBackOff":
            return f"container {c.name} is in CrashLoopBackOff"
        recent = c.last_finished is not None and now - c.last_finished <= spec.crash_window
        if c.restarts >= spec.restart_threshold and recent:
            return f"container {c.name} restarted {c.restarts} times"
    if pod.phase == "Failed" and any(c.terminated_exit != 0 for c in pod.containers):
        # Simulated clusters (and restartPolicy Never) report the crash as a failed pod.
        return "pod failed with a non-zero exit code"
    return ""


def _oom(view: ServiceView, pod: PodView, now: float) -> list[SymptomFinding]:
    """OOM kills of the current revision within the crash window (older revisions are being
    replaced already, by the raised limit or otherwise)."""
    if not view.healing.oom or pod.revision not in ("", view.current_revision):
        return []
    found = []
    for c in pod.containers:
        recent = c.last_finished is not None and now - c.last_finished <= view.healing.crash_window
        if "OOMKilled" in (c.last_reason, c.terminated_reason) and recent:
            target = f"Container/{view.namespace}/{view.name}/{c.name}"
            detail = f"container {c.name} of pod {pod.name} was OOM-killed"
            found.append(SymptomFinding(Symptom.OOM_KILLED, view.ref, target, detail, container=c.name))
    return found


def _live(view: ServiceView) -> list[PodView]:
    # Pods of a revision that was rolled back are remnants (a ReplicaSet scaled to zero leaves
    # its failed pods behind): the rollback already answered them.
    return [
        p for p in view.pods if not p.deleting and not (view.rolled_back and p.revision == view.rolled_back)
    ]


def detect(view: ServiceView, now: float) -> tuple[SymptomFinding, ...]:
    """Every symptom the service shows now. Level-based: a cleared symptom simply disappears."""
    return tuple(s.finding for s in _sightings(view, now) if s.due)


@dataclasses.dataclass(frozen=True)
class _Sighting:
    """A symptom seen, and whether it is a finding yet: a node condition is seen as soon as it
    holds, and due once it has held for the grace period (for a cordon, cordonAfter too)."""

    finding: SymptomFinding
    due: bool = True


def _sightings(view: ServiceView, now: float) -> list[_Sighting]:
    """What ``detect`` and the open node incidents (``_unsettled``) both need, from one look
    through the pods: a pass runs every second for every service, and this is its costly part."""
    spec, live = view.healing, _live(view)
    seen = [_Sighting(f) for f in _pod_findings(view, live, now)]
    if spec.node_failure:
        seen.extend(_down(view, live, now))
        seen.extend(_pressure(view, live, now))
    if spec.slo:
        seen.extend(_Sighting(f) for f in _slo_breaches(view, now))
    if spec.maintenance:
        seen.extend(_Sighting(f) for f in _maintenance(view, live))
    return seen


def _pod_findings(view: ServiceView, live: Sequence[PodView], now: float) -> list[SymptomFinding]:
    """Symptoms of single pods; the crash of a new revision is one symptom of the service,
    since one rollback answers all of its pods."""
    spec = view.healing
    findings: list[SymptomFinding] = []
    new_revision_crash = ""
    for pod in live:
        pod_ref = f"Pod/{view.namespace}/{pod.name}"
        ooms = _oom(view, pod, now)
        if ooms:
            # An OOM kill is a crash with a known cause: raise the limit, do not roll back.
            findings.extend(f for f in ooms if f.key not in {g.key for g in findings})
            continue
        why = _crashing(pod, spec, now) if spec.crash_loop else ""
        # New: the revision the spec asks for, not yet proven stable. Pods of older revisions
        # (still draining away) are neither new nor a reason to roll back.
        is_new = bool(view.stable_revision) and pod.revision == view.current_revision != view.stable_revision
        if why and is_new and spec.crash_action is CrashLoopAction.ROLLBACK:
            new_revision_crash = new_revision_crash or f"pod {pod.name} of new revision {pod.revision}: {why}"
        elif why:
            symptom = Symptom.POD_FAILED if pod.phase == "Failed" else Symptom.CRASH_LOOP
            findings.append(
                SymptomFinding(symptom, view.ref, pod_ref, f"pod {pod.name}: {why}", pods=(pod.name,))
            )
        elif _unready(view, pod, now):
            detail = f"pod {pod.name} not ready"
            findings.append(
                SymptomFinding(Symptom.READINESS_FAILING, view.ref, pod_ref, detail, pods=(pod.name,))
            )
    if new_revision_crash:
        findings.append(
            SymptomFinding(Symptom.CRASH_LOOP_NEW_REVISION, view.ref, view.ref, new_revision_crash)
        )
    return findings


def _unready(view: ServiceView, pod: PodView, now: float) -> bool:
    """Running but not Ready for the crash window; on a node that is not Ready itself, that
    node is the symptom (``nodes`` is keyed by node name)."""
    node = view.nodes.get(pod.node)
    return (
        view.healing.crash_loop
        and pod.phase == "Running"
        and not pod.ready
        and not (node is not None and not node.ready)
        and pod.not_ready_since is not None
        and now - pod.not_ready_since >= view.healing.crash_window
    )


def _down(view: ServiceView, live: Sequence[PodView], now: float) -> list[_Sighting]:
    """Nodes not Ready with pods of the service on them, due after the grace period (move the
    pods), and nodes not Ready for cordonAfter that are still schedulable (cordon them)."""
    spec, seen = view.healing, []
    for node in sorted(view.nodes.values(), key=lambda n: n.name):
        lasted = None if node.ready or node.not_ready_since is None else now - node.not_ready_since
        if lasted is None or lasted < 0:  # Ready, or not Ready since a time that is yet to come
            continue
        ref, failed = f"Node/{node.name}", lasted >= spec.grace
        stuck = tuple(sorted(p.name for p in live if p.node == node.name))
        if stuck:
            detail = f"node {node.name} not Ready for {lasted:.0f}s; {len(stuck)} pod(s) of {view.name} on it"
            seen.append(
                _Sighting(SymptomFinding(Symptom.NODE_NOT_READY, ref, ref, detail, pods=stuck), failed)
            )
        if not node.unschedulable:
            long_down = SymptomFinding(
                Symptom.NODE_DOWN_LONG, ref, ref, f"node {node.name} not Ready for {lasted:.0f}s"
            )
            seen.append(_Sighting(long_down, failed and lasted >= spec.cordon_after))
    return seen


_SLO_SYMPTOMS = {"errorRate": Symptom.ERROR_RATE_BREACH, "latency": Symptom.LATENCY_BREACH}
_SLO_UNITS = {"errorRate": "", "latency": "s"}


def _slo_breaches(view: ServiceView, now: float) -> list[SymptomFinding]:
    """Bounds breached for at least ``for``. The whole service is the subject and the target:
    its revision or its replica count is what an action changes."""
    found = []
    for reading in view.slo:
        symptom = _SLO_SYMPTOMS.get(reading.name)
        if symptom is None or reading.verdict is not SloVerdict.BREACHED or reading.since is None:
            continue
        lasted = now - reading.since
        if lasted < view.healing.slo_for:
            continue
        unit = _SLO_UNITS[reading.name]
        detail = (
            f"{reading.name} of {view.name} is {reading.value:.4g}{unit}, above {reading.bound:g}{unit} "
            f"for {lasted:.0f}s"
        )
        found.append(SymptomFinding(symptom, view.ref, view.ref, detail))
    return found


def _blind(view: ServiceView) -> frozenset[str]:
    """Keys of SLO incidents that cannot be judged now (Prometheus did not answer): such an
    incident is neither verified, nor cleared, nor acted on until an answer comes."""
    return frozenset(
        f"{_SLO_SYMPTOMS[r.name].value}:{view.ref}"
        for r in view.slo
        if r.verdict is SloVerdict.UNKNOWN and r.name in _SLO_SYMPTOMS
    )


# Node symptoms that become findings only after their condition has held for a while.
_TIMED = frozenset({Symptom.NODE_NOT_READY, Symptom.NODE_DOWN_LONG, Symptom.NODE_PRESSURE})


def _unsettled(seen: Sequence[_Sighting]) -> dict[str, SymptomFinding]:
    """Node symptoms whose condition holds, whether or not it has held long enough to be a
    finding. That time is counted from when this process first saw the condition (NodeView
    trusts the later of that and lastTransitionTime), so it starts again after a restart. The
    incidents such a symptom opened in an earlier process go on with it: a drain being verified
    is not taken as done (and then, when the finding shows again, run a second time under a new
    incident), it is resumed; a pending one is not dropped. New incidents still wait."""
    return {s.finding.key: s.finding for s in seen if s.finding.symptom in _TIMED}


def unproven(view: ServiceView) -> bool:
    """The spec asks for a revision that has not become the stable one (and was not already
    rolled back): the change is the likeliest cause of a new problem."""
    current = view.current_revision
    return bool(view.stable_revision) and current not in (view.stable_revision, view.rolled_back)


def _maintenance(view: ServiceView, live: Sequence[PodView]) -> list[SymptomFinding]:
    """What predictive maintenance asked for about a pod of the service, or about a node one
    runs on."""
    names = {p.name for p in live}
    found = []
    for req in view.maintenance:
        if req.node:
            found.extend(_node_maintenance(view, live, req))
        elif req.pod in names:
            detail = req.message or f"pod {req.pod} predicted to run out of memory"
            target = f"Pod/{view.namespace}/{req.pod}"
            found.append(
                SymptomFinding(Symptom.PREDICTED_EXHAUSTION, view.ref, target, detail, pods=(req.pod,))
            )
    return found


def _node_maintenance(
    view: ServiceView, live: Sequence[PodView], req: MaintenanceRequest
) -> list[SymptomFinding]:
    """A node predicted to fail (its disk fills) while pods of the service run on it. Done once
    the action's effect shows: a cordoned node for Cordon, no pods of the service left for Drain."""
    node = view.nodes.get(req.node)
    stuck = tuple(sorted(p.name for p in live if p.node == req.node))
    if node is None or not stuck:
        return []
    if req.action is pol.Action.CORDON_NODE and node.unschedulable:
        return []
    detail = req.message or f"node {req.node} predicted to fail"
    target = f"Node/{req.node}"
    return [SymptomFinding(Symptom.PREDICTED_EXHAUSTION, target, target, detail, pods=stuck)]


def _pressure(view: ServiceView, live: Sequence[PodView], now: float) -> list[_Sighting]:
    """Ready nodes under memory, disk or PID pressure with pods of the service on them, due after
    the grace period: the kubelet will start evicting on its own terms, so move the pods first,
    through the Eviction API and the disruption budget."""
    seen = []
    for node in sorted(view.nodes.values(), key=lambda n: n.name):
        if not node.ready or not node.pressure or node.pressure_since is None:
            continue
        lasted = now - node.pressure_since
        stuck = tuple(sorted(p.name for p in live if p.node == node.name))
        if lasted >= 0 and stuck:
            detail = (
                f"node {node.name} under {', '.join(node.pressure)}; {len(stuck)} pod(s) of {view.name} on it"
            )
            ref = f"Node/{node.name}"
            pressed = SymptomFinding(Symptom.NODE_PRESSURE, ref, ref, detail, pods=stuck)
            seen.append(_Sighting(pressed, lasted >= view.healing.grace))
    return seen


def ladder(
    finding: SymptomFinding, view: ServiceView, maintenance_action: pol.Action | None = None
) -> tuple[pol.Action, ...]:
    """The actions tried in turn for a symptom; past the end, a human takes over."""
    spec = view.healing
    if finding.symptom is Symptom.CRASH_LOOP_NEW_REVISION:
        return (pol.Action.ROLLBACK,)
    if finding.symptom is Symptom.CRASH_LOOP:
        return ()  # the kubelet already restarts it; a stable revision crashing needs a person
    if finding.symptom in (Symptom.POD_FAILED, Symptom.READINESS_FAILING):
        return (pol.Action.RESTART_POD,)
    if finding.symptom is Symptom.OOM_KILLED:
        return (pol.Action.RAISE_MEMORY_LIMIT,) if spec.oom_action is OomAction.RAISE_LIMIT else ()
    if finding.symptom is Symptom.NODE_NOT_READY:
        return (pol.Action.RESCHEDULE_PODS,) if spec.node_action is NodeRemedy.RESCHEDULE else ()
    if finding.symptom is Symptom.NODE_DOWN_LONG:
        return (pol.Action.CORDON_NODE,)
    if finding.symptom is Symptom.NODE_PRESSURE:
        return (pol.Action.DRAIN_NODE,)
    if finding.symptom in (Symptom.ERROR_RATE_BREACH, Symptom.LATENCY_BREACH):
        if spec.slo_action is SloAction.NOTIFY:
            return ()
        # A new revision is rolled back first; if that does not help (or the revision is the
        # stable one), capacity is added step by step. An autoscaler owns the replica count of
        # its service: scaling past it would be undone, so a human decides instead.
        first = (pol.Action.ROLLBACK,) if unproven(view) else ()
        return first + (() if view.autoscaled else (pol.Action.SCALE_UP,) * spec.max_scale_ups)
    if finding.symptom is Symptom.PREDICTED_EXHAUSTION:
        return (maintenance_action or pol.Action.RESTART_POD,)
    return ()


def _ladder_for(finding: SymptomFinding, view: ServiceView) -> tuple[pol.Action, ...]:
    """``ladder`` with the action predictive maintenance asked for on the finding's target."""
    maint = {
        f"Node/{r.node}" if r.node else f"Pod/{view.namespace}/{r.pod}": r.action for r in view.maintenance
    }
    return ladder(finding, view, maint.get(finding.target))


# --- persisted state ---------------------------------------------------------------------------


class IncidentPhase(enum.StrEnum):
    PENDING = "Pending"  # wants to act; waiting for a guard (rate limit, cooldown, ...)
    AWAITING_APPROVAL = "AwaitingApproval"
    VERIFYING = "Verifying"
    ESCALATED = "Escalated"  # a human must act; nothing more is done automatically


class Reason(enum.StrEnum):
    """Why an incident stands where it does when it is not the policy's decision (``pol.Reason``)."""

    LADDER_EXHAUSTED = "LadderExhausted"
    CANNOT_ACT = "CannotAct"  # the action has nothing to work with (no stable revision, no limit)
    ACTION_FAILED = "ActionFailed"  # the executor could not carry it out


Why: TypeAlias = pol.PolicyReason | Reason  # the two share no value, so a stored one reads back as itself


@dataclasses.dataclass(frozen=True)
class Incident:
    key: str
    symptom: Symptom
    subject: str
    target: str
    since: float
    step: int = 0
    phase: IncidentPhase = IncidentPhase.PENDING
    action: pol.Action | None = None  # the action being tried, or last tried
    acted_at: float | None = None
    reason: Why | None = None
    message: str = ""

    @property
    def occurrence(self) -> str:
        """This occurrence of the problem at this step of its ladder: what an approval is about.
        Stable across restarts (both parts are stored); a new occurrence of the same symptom, or
        the next step, is a different one, so one answer never authorises two actions."""
        return f"{self.since:.3f}/{self.step}"

    def as_in_storage(self) -> dict[str, Any]:
        stored: dict[str, Any] = {
            "key": self.key,
            "symptom": self.symptom.value,
            "subject": self.subject,
            "target": self.target,
            "since": self.since,
            "step": self.step,
            "phase": self.phase.value,
            "action": "" if self.action is None else self.action.value,
            "reason": "" if self.reason is None else self.reason.value,
            "message": self.message[:512],
        }
        if self.acted_at is not None:
            stored["actedAt"] = self.acted_at
        return stored

    @classmethod
    def from_storage(cls, raw: Mapping[str, Any]) -> Incident | None:
        """None when unreadable. An action and a reason are stored as their values, ``""`` for
        none: the shape from before they were typed, which operators on either side of an upgrade
        read. An unknown action makes the incident unreadable, like an unknown symptom or phase
        (what was done could not be verified or resumed); an unknown reason is only forgotten (it
        explains the message, and keeps a Held from being told twice)."""
        try:
            acted = raw.get("actedAt")
            return cls(
                key=str(raw["key"]),
                symptom=Symptom(raw["symptom"]),
                subject=str(raw["subject"]),
                target=str(raw["target"]),
                since=float(raw["since"]),
                step=int(raw.get("step", 0)),
                phase=IncidentPhase(raw.get("phase", IncidentPhase.PENDING.value)),
                action=pol.Action(raw["action"]) if raw.get("action") else None,
                acted_at=None if acted is None else float(acted),
                reason=_reason(raw.get("reason")),
                message=str(raw.get("message", "")),
            )
        except (KeyError, TypeError, ValueError):
            return None


def _reason(raw: Any) -> Why | None:
    for kind in (pol.PolicyReason, Reason):
        try:
            return kind(raw)
        except ValueError:
            continue
    return None


@dataclasses.dataclass(frozen=True)
class HealingState:
    incidents: tuple[Incident, ...] = ()
    history: tuple[pol.Record, ...] = ()
    policy_error: str = ""

    def as_in_storage(self) -> dict[str, Any]:
        stored: dict[str, Any] = {
            "incidents": [i.as_in_storage() for i in self.incidents],
            "history": [r.as_in_storage() for r in self.history],
        }
        if self.policy_error:
            stored["policyError"] = self.policy_error
        return stored

    @classmethod
    def from_storage(cls, raw: Any) -> HealingState:
        """The stored state: absent or empty is a fresh start; anything unreadable a
        ``StorageError`` naming the field (the rule in ``core/fields.py``). Acting as if fresh
        would forget actions already taken (rate limits, cooldowns, the circuit breaker) and
        incidents being verified, and could repeat a risky action."""
        if not raw:
            return cls()
        if not isinstance(raw, Mapping):
            raise fields.StorageError("healing must be an object")
        incidents, history = raw.get("incidents") or [], raw.get("history") or []
        for key, value in (("incidents", incidents), ("history", history)):
            if not isinstance(value, list):
                raise fields.StorageError(f"healing.{key} must be a list")
        read = []
        for i, item in enumerate(incidents):
            incident = Incident.from_storage(item) if isinstance(item, Mapping) else None
            if incident is None:
                raise fields.StorageError(f"healing.incidents[{i}] cannot be read")
            read.append(incident)
        records = tuple(pol.Record.from_storage(r, f"healing.history[{i}]") for i, r in enumerate(history))
        return cls(incidents=tuple(read), history=records)


# --- effects -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Execute:
    """Run ``action``; ``pods``/``node``/``container``/``value`` are its parameters."""

    incident: str
    action: pol.Action
    target: str
    cause: Symptom
    message: str
    pods: tuple[str, ...] = ()
    node: str = ""
    container: str = ""
    value: str = ""  # the new memory limit, the new replica count, or the rollback's unique id
    # The incident's action issued again on a later pass while the verify window lasts and its
    # target still shows the symptom: evictions a disruption budget refused, or an action the
    # operator recorded (write-ahead) but was killed before carrying out. Only for actions whose
    # repetition is the same request (_RESUMABLE). Not a new action: no record, no rate-limit cost.
    resume: bool = False
    occurrence: str = ""  # Incident.occurrence: names the approval the action ran under, if any


# Repeating these asks for the same end state: the same pods deleted (a gone pod is a no-op),
# the same node drained, the same rollback command (its id derives from when it was decided).
# ScaleUp and RaiseMemoryLimit are left out: recomputed from a spec they already changed, they
# would go one step further.
_RESUMABLE = frozenset(
    {pol.Action.RESTART_POD, pol.Action.RESCHEDULE_PODS, pol.Action.DRAIN_NODE, pol.Action.ROLLBACK}
)


@dataclasses.dataclass(frozen=True)
class AskApproval:
    incident: str
    request: pol.ActionRequest
    rule: pol.ActionRule
    message: str
    occurrence: str = ""  # Incident.occurrence: part of the approval's identity


@dataclasses.dataclass(frozen=True)
class Escalate:
    """Tell a human: the ladder is exhausted, the action was denied, or the circuit is open."""

    incident: str
    target: str
    cause: Symptom
    reason: Why
    message: str


@dataclasses.dataclass(frozen=True)
class Resolved:
    incident: str
    target: str
    cause: Symptom
    succeeded: bool
    message: str


@dataclasses.dataclass(frozen=True)
class Held:
    """A guard held an action back (rate limit, cooldown, blast radius, concurrency)."""

    incident: str
    target: str
    action: pol.Action
    reason: pol.PolicyReason
    message: str


Effect = Execute | AskApproval | Escalate | Resolved | Held


def request_for(incident: Incident, action: pol.Action, view: ServiceView) -> pol.ActionRequest:
    return pol.ActionRequest(
        action=action,
        target=incident.target,
        subject=incident.subject,
        namespace=view.namespace,
        service=view.name,
        cause=incident.symptom.value,
    )


def _parameters(
    incident: Incident, finding: SymptomFinding, action: pol.Action, view: ServiceView, now: float
) -> Execute | str:
    """The Execute effect for ``action``, or why it cannot be done (which escalates)."""
    base = Execute(incident.key, action, incident.target, incident.symptom, finding.detail)
    base = dataclasses.replace(base, occurrence=incident.occurrence)
    if action in (pol.Action.RESTART_POD, pol.Action.RESCHEDULE_PODS):
        return dataclasses.replace(
            base,
            pods=finding.pods,
            node=finding.target.removeprefix("Node/") if finding.target.startswith("Node/") else "",
        )
    if action in (pol.Action.CORDON_NODE, pol.Action.DRAIN_NODE):
        return dataclasses.replace(base, node=finding.target.removeprefix("Node/"))
    if action is pol.Action.ROLLBACK:
        if not view.stable_revision:
            return "no stable revision to roll back to"
        unique = hashlib.sha256(f"{incident.key}@{now}".encode()).hexdigest()[:12]
        return dataclasses.replace(base, value=unique)
    if action is pol.Action.SCALE_UP:
        step = max(1, math.ceil(view.replicas * view.healing.scale_up_percent / 100))
        wanted = min(view.max_replicas, view.replicas + step)
        if wanted <= view.replicas:
            return f"already at spec.replicas.max ({view.max_replicas})"
        return dataclasses.replace(base, value=str(wanted))
    if action is pol.Action.RAISE_MEMORY_LIMIT:
        limit = view.memory_limits.get(finding.container)
        if limit is None:
            return f"container {finding.container} has no memory limit to raise"
        raised = limit * (100 + view.healing.increase_percent) / 100
        ceiling = view.healing.max_memory
        if ceiling is not None:
            if limit >= ceiling:
                return f"container {finding.container} is already at maxMemory"
            raised = min(raised, ceiling)
        return dataclasses.replace(base, container=finding.container, value=mebibytes(raised))
    return f"{action.value} is not supported"  # pragma: no cover — every action is handled above


@dataclasses.dataclass(frozen=True)
class PassContext:
    """What one pass of the loop knows besides the service's own state."""

    view: ServiceView
    policy: pol.Policy
    others: Sequence[pol.Record]  # every other service's history (cluster and namespace limits)
    cluster: pol.ClusterView
    approvals: Mapping[str, pol.ApprovalState]  # incident key -> what the approval gate says
    now: float


class _IncidentStep:
    """The working state of one ``step`` call; it never outlives the call.

    Incidents are advanced one at a time, oldest first: ``i`` is the one at hand and ``finding``
    what it shows now (None once it is gone), between ``begin`` and ``end``. ``history`` and
    ``effects`` gather what every incident so far did, so a guard sees the actions taken earlier
    in the same pass.
    """

    i: Incident
    finding: SymptomFinding | None
    over: bool  # resolved or dropped: not kept

    def __init__(self, state: HealingState, ctx: PassContext, ongoing: Mapping[str, SymptomFinding]) -> None:
        self.ctx = ctx
        self.now = ctx.now
        self.ongoing = ongoing
        self.history = list(state.history)
        self.effects: list[Effect] = []
        self.kept: list[Incident] = []

    def begin(self, incident: Incident) -> None:
        self.i = incident
        self.finding = self.ongoing.get(incident.key)
        self.over = False

    def end(self) -> None:
        if not self.over:
            self.kept.append(self.i)

    def set(self, **changes: Any) -> None:
        self.i = dataclasses.replace(self.i, **changes)

    def decided(
        self, phase: IncidentPhase, action: pol.Action, decision: pol.PolicyDecision, **changes: Any
    ) -> None:
        """The incident stands where the policy's decision about ``action`` puts it."""
        self.set(phase=phase, action=action, reason=decision.reason, message=decision.message, **changes)

    def emit(self, effect: Effect) -> None:
        self.effects.append(effect)

    def resolve(self, message: str, *, succeeded: bool = True) -> None:
        self.emit(Resolved(self.i.key, self.i.target, self.i.symptom, succeeded, message))
        self.drop()

    def drop(self) -> None:
        self.over = True

    def escalate(
        self, reason: Why, finding: SymptomFinding, why: str, action: pol.Action | None = None
    ) -> None:
        """Hand the incident to a human; ``action`` is the one it was about, if not the last."""
        self.emit(Escalate(self.i.key, self.i.target, self.i.symptom, reason, f"{finding.detail}: {why}"))
        self.set(phase=IncidentPhase.ESCALATED, action=action or self.i.action, reason=reason, message=why)

    def record(self, action: pol.Action) -> None:
        """The history entry of an action, written before the action runs (write-ahead)."""
        i, view = self.i, self.ctx.view
        at, outcome = self.now, pol.ActionOutcome.IN_PROGRESS
        self.history.append(pol.Record(action, i.target, i.subject, view.namespace, view.name, at, outcome))

    def settle(self, outcome: pol.ActionOutcome) -> None:
        self.history = _settle(self.history, self.i, outcome)

    def state(self) -> HealingState:
        # In the order advanced, oldest first (since and key never change): the limit drops the oldest.
        return HealingState(
            tuple(self.kept[-INCIDENT_LIMIT:]), _prune(self.history, self.ctx.policy, self.now)
        )


def step(state: HealingState, ctx: PassContext) -> tuple[HealingState, tuple[Effect, ...]]:
    """One pass of the healing loop for one service: detect, advance every incident, act."""
    seen = _sightings(ctx.view, ctx.now)
    findings = {s.finding.key: s.finding for s in seen if s.due}
    blind = _blind(ctx.view)
    b = _IncidentStep(state, ctx, {**_unsettled(seen), **findings})  # incidents already open go on with these
    for incident in _open(state, findings, ctx.now):
        b.begin(incident)
        # An unknown is neither cleared nor failed: the incident waits for an answer.
        if incident.key not in blind or incident.key in findings:
            _advance(b)
        b.end()
    return b.state(), tuple(b.effects)


def _open(state: HealingState, findings: Mapping[str, SymptomFinding], now: float) -> list[Incident]:
    """The stored incidents and a new one for each finding that has none, oldest first."""
    known = {i.key: i for i in state.incidents}
    for key, finding in findings.items():
        if key not in known:
            known[key] = Incident(key, finding.symptom, finding.subject, finding.target, since=now)
    return sorted(known.values(), key=lambda i: (i.since, i.key))


def _answer_for(incident: Incident, ctx: PassContext) -> pol.ApprovalState | None:
    """The gate's answer for this occurrence of the incident; one about an earlier occurrence or
    ladder step does not count, and the request is made again."""
    approval = ctx.approvals.get(incident.key)
    if approval is not None and approval.occurrence and approval.occurrence != incident.occurrence:
        return None
    return approval


def _advance(b: _IncidentStep) -> None:
    """The incident at hand through one pass: verify what was done, or take the next step."""
    if b.i.phase is IncidentPhase.VERIFYING:
        _verify(b)
    elif b.finding is None:
        _cleared_by_itself(b)
    elif b.i.phase is not IncidentPhase.ESCALATED:
        _climb(b, b.finding)


def _verify(b: _IncidentStep) -> None:
    """After an action: cleared, still within the verify window, or failed (the next step)."""
    i, finding = b.i, b.finding
    if _cleared(i, b.ongoing):
        b.settle(pol.ActionOutcome.SUCCEEDED)
        b.resolve(f"{i.action} cleared {i.symptom.value} on {i.target}")
    elif b.now < (i.acted_at or b.now) + b.ctx.policy.verify_seconds:
        _resume(b)
    elif finding is None:
        # Its own target is gone, but the subject still shows the symptom: not effective.
        b.settle(pol.ActionOutcome.FAILED)
        b.resolve(f"{i.action} did not clear {i.symptom.value} on {i.subject}", succeeded=False)
    else:
        b.settle(pol.ActionOutcome.FAILED)
        b.set(step=i.step + 1, phase=IncidentPhase.PENDING, acted_at=None)
        _climb(b, finding)


def _resume(b: _IncidentStep) -> None:
    """Ask for the action again while it is verified (``Execute.resume``), but only while the
    symptom still calls for it: a revision proven stable meanwhile is not rolled back because
    a rollback was once decided."""
    i, finding, action = b.i, b.finding, b.i.action
    if finding is None or action is None or action not in _RESUMABLE:
        return
    if action in _ladder_for(finding, b.ctx.view):
        resumed = _parameters(i, finding, action, b.ctx.view, i.acted_at or b.now)
        if isinstance(resumed, Execute):
            b.emit(dataclasses.replace(resumed, resume=True))


def _cleared_by_itself(b: _IncidentStep) -> None:
    """Cleared without (further) action; an approval still awaited is simply never used."""
    if b.i.phase is IncidentPhase.ESCALATED:
        b.drop()
    else:
        b.resolve(f"{b.i.symptom.value} on {b.i.target} cleared")


def _climb(b: _IncidentStep, finding: SymptomFinding) -> None:
    """The next action on the incident's ladder, as far as the policy lets it go now."""
    actions = _ladder_for(finding, b.ctx.view)
    if b.i.step >= len(actions):
        why = "no automatic remedy" if not actions else f"{b.i.step} action(s) did not clear it"
        b.escalate(Reason.LADDER_EXHAUSTED, finding, why)
        return
    action = actions[b.i.step]
    request = request_for(b.i, action, b.ctx.view)
    ctx, seen = b.ctx, [*b.ctx.others, *b.history]
    decision = pol.decide(ctx.policy, request, seen, ctx.cluster, b.now, approval=_answer_for(b.i, ctx))
    if decision.verdict is pol.PolicyVerdict.EXECUTE:
        _execute(b, finding, action, decision)
    elif decision.verdict is pol.PolicyVerdict.NEEDS_APPROVAL:
        _ask(b, finding, request, decision)
    elif decision.verdict is pol.PolicyVerdict.DENIED or decision.reason is pol.PolicyReason.CIRCUIT_OPEN:
        b.escalate(decision.reason, finding, decision.message, action)
    else:
        _hold(b, action, decision)


def _execute(
    b: _IncidentStep, finding: SymptomFinding, action: pol.Action, decision: pol.PolicyDecision
) -> None:
    effect = _parameters(b.i, finding, action, b.ctx.view, b.now)
    if isinstance(effect, str):
        b.escalate(Reason.CANNOT_ACT, finding, effect, action)
        return
    b.record(action)
    b.emit(dataclasses.replace(effect, message=f"{finding.detail}; {decision.message}"))
    b.decided(IncidentPhase.VERIFYING, action, decision, acted_at=b.now)


def _ask(
    b: _IncidentStep, finding: SymptomFinding, request: pol.ActionRequest, decision: pol.PolicyDecision
) -> None:
    assert decision.rule is not None  # decide always names the rule it asks approval under
    # Sent on every pass: the gate finds the existing request by action + target + cause +
    # occurrence.
    b.emit(AskApproval(b.i.key, request, decision.rule, finding.detail, b.i.occurrence))
    b.decided(IncidentPhase.AWAITING_APPROVAL, request.action, decision)


def _hold(b: _IncidentStep, action: pol.Action, decision: pol.PolicyDecision) -> None:
    """A guard holds the action back; told once per reason and action, not on every pass."""
    if (b.i.reason, b.i.action) != (decision.reason, action):
        b.emit(Held(b.i.key, b.i.target, action, decision.reason, decision.message))
    b.decided(IncidentPhase.PENDING, action, decision)


# Symptoms of single pods: their remedy is judged by the health of the whole service, so a
# restarted pod whose replacement fails as well counts as a failed remediation (and a storm of
# them opens the circuit) rather than as a success because the restarted pod is gone.
_POD_SYMPTOMS = frozenset({Symptom.POD_FAILED, Symptom.READINESS_FAILING, Symptom.PREDICTED_EXHAUSTION})


def _cleared(incident: Incident, findings: Mapping[str, SymptomFinding]) -> bool:
    if incident.symptom in _POD_SYMPTOMS:
        return not any(
            f.symptom is incident.symptom and f.subject == incident.subject for f in findings.values()
        )
    return incident.key not in findings


def action_failed(state: HealingState, incident_key: str, message: str, now: float) -> HealingState:
    """The executor could not carry out the incident's action (e.g. a PodDisruptionBudget
    refused an eviction): record a failure and let the next step of the ladder try."""
    incidents = []
    history = list(state.history)
    for incident in state.incidents:
        if incident.key == incident_key and incident.phase is IncidentPhase.VERIFYING:
            history = _settle(history, incident, pol.ActionOutcome.FAILED)
            failed = dataclasses.replace(
                incident,
                step=incident.step + 1,
                phase=IncidentPhase.PENDING,
                acted_at=None,
                reason=Reason.ACTION_FAILED,
                message=message,
            )
            incidents.append(failed)
        else:
            incidents.append(incident)
    return HealingState(tuple(incidents), tuple(history), state.policy_error)


def _settle(history: list[pol.Record], incident: Incident, outcome: pol.ActionOutcome) -> list[pol.Record]:
    return [
        dataclasses.replace(r, outcome=outcome)
        if r.outcome is pol.ActionOutcome.IN_PROGRESS
        and r.target == incident.target
        and r.at == incident.acted_at
        else r
        for r in history
    ]


def _prune(history: Sequence[pol.Record], policy: pol.Policy, now: float) -> tuple[pol.Record, ...]:
    horizon = policy.history_horizon
    kept = [r for r in history if r.outcome is pol.ActionOutcome.IN_PROGRESS or now - r.at < horizon]
    return tuple(kept[-HISTORY_LIMIT:])


# --- the view of a service, from its body ------------------------------------------------------


def memory_limits(template: Mapping[str, Any]) -> dict[str, float | None]:
    """Each container's memory limit in bytes (None where it has none), by container name."""
    limits: dict[str, float | None] = {}
    for container in ((template.get("spec") or {}).get("containers")) or []:
        memory = ((container.get("resources") or {}).get("limits") or {}).get("memory")
        limits[str(container.get("name"))] = specs.quantity(memory)
    return limits


def autoscaled(spec: Mapping[str, Any]) -> bool:
    """Whether an autoscaler (``spec.autoscaling`` Reactive or Predictive) owns the count."""
    try:
        return sc.parse(spec.get("autoscaling")).mode in (sc.ScalingMode.REACTIVE, sc.ScalingMode.PREDICTIVE)
    except specs.SpecError:
        return False  # the reconcile reports it; no autoscaler runs on an invalid spec


def view_of(
    body: Mapping[str, Any],
    healing: HealingSpec,
    *,
    pods: tuple[PodView, ...],
    nodes: Mapping[str, NodeView],
    slo: tuple[SloReading, ...],
) -> ServiceView:
    """The healing core's view of one service from its body and the watch caches. The replica
    count is the one the workload runs (``Replicas.effective``: ``desired`` inside the
    bounds, ``min`` when unset). Raises ``SpecError`` for replicas that do not parse (the
    reconcile reports them; nothing is healed on a guess)."""
    meta, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
    template = spec.get("template") or {}
    replicas = specs.parse_replicas(spec.get("replicas"))
    return ServiceView(
        namespace=meta["namespace"],
        name=meta["name"],
        healing=healing,
        stable_revision=str(status.get("stableRevision") or ""),
        current_revision=kids.revision(template),
        pods=pods,
        nodes=nodes,
        memory_limits=memory_limits(template),
        replicas=replicas.effective,
        max_replicas=replicas.max,
        maintenance=maintenance_requests(status),
        rolled_back=str((status.get("rollback") or {}).get("revision") or ""),
        slo=slo,
        autoscaled=autoscaled(spec),
    )
