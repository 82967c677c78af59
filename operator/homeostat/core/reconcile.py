"""Level-based reconciliation of a ReplicatedService: what to apply, and what status to report.

Two pure steps bracket the only I/O (applying children): ``plan`` compares desired children
with what the watch cache holds, and ``report`` turns the outcome into status and Events. The
handler runs ``plan``, applies, then ``report``. Running it again with the same inputs yields
no applies and the same status, which is what makes restarts and repeated events harmless.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping, Sequence
from typing import Any

from homeostat.core import children as kids
from homeostat.core import spec as specs


class ServicePhase(enum.StrEnum):
    PENDING = "Pending"
    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    INVALID_SPEC = "InvalidSpec"


class ApplyReason(enum.StrEnum):
    CREATED = "Created"
    UPDATED = "Updated"
    INVALID_SPEC = "InvalidSpec"
    APPLY_FAILED = "ApplyFailed"
    AVAILABLE = "Available"
    SCALING = "Scaling"
    ROLLING_OUT = "RollingOut"
    UPDATING = "Updating"
    WAITING = "WaitingForPods"
    DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    HEALTHY = "Healthy"
    STABLE = "Stable"
    ROLLED_BACK = "RolledBack"


class ConditionType(enum.StrEnum):
    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"


@dataclasses.dataclass(frozen=True)
class Apply:
    """Server-side apply ``manifest``; ``reason`` says whether it creates or corrects it."""

    manifest: Mapping[str, Any]
    reason: ApplyReason

    @property
    def ref(self) -> kids.ChildRef:
        return kids.ChildRef.of(self.manifest)


@dataclasses.dataclass(frozen=True)
class Event:
    type: str  # "Normal" or "Warning", as Kubernetes spells them
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class ApplyOutcome:
    """What happened when the handler executed a plan's applies."""

    applied: Mapping[kids.ChildRef, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    errors: Mapping[kids.ChildRef, str] = dataclasses.field(default_factory=dict)
    rejected: Mapping[kids.ChildRef, str] = dataclasses.field(default_factory=dict)


def plan(
    owner: kids.Owner,
    spec: specs.ServiceSpec,
    observed: Mapping[kids.ChildRef, Mapping[str, Any] | None],
) -> tuple[Apply, ...]:
    """Children that are missing or differ from what we want, in dependency order."""
    return plan_manifests(kids.desired(owner, spec), observed)


def plan_manifests(
    manifests: Sequence[Mapping[str, Any]], observed: Mapping[kids.ChildRef, Mapping[str, Any] | None]
) -> tuple[Apply, ...]:
    """Applies for the ``manifests`` that are missing from ``observed`` or differ from it."""
    applies = []
    for manifest in manifests:
        current = observed.get(kids.ChildRef.of(manifest))
        if current is None:
            applies.append(Apply(manifest, ApplyReason.CREATED))
        elif not _owned_fields_match(manifest, current):
            applies.append(Apply(manifest, ApplyReason.UPDATED))
    return tuple(applies)


def _owned_fields_match(manifest: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    meta = manifest["metadata"]
    current_meta = current.get("metadata") or {}
    wanted = {k: meta[k] for k in ("labels", "annotations") if meta.get(k)}
    return kids.is_subset(wanted, current_meta) and kids.is_subset(manifest.get("spec"), current.get("spec"))


def stale_children(
    owner: kids.Owner,
    spec: specs.ServiceSpec,
    observed: Mapping[kids.ChildRef, Mapping[str, Any] | None],
) -> tuple[kids.ChildRef, ...]:
    """Owned children the spec no longer asks for (e.g. the Service after all ports went)."""
    wanted = {kids.ChildRef.of(m) for m in kids.desired(owner, spec)}
    return tuple(ref for ref, body in observed.items() if body is not None and ref not in wanted)


@dataclasses.dataclass(frozen=True)
class DeploymentView:
    """The facts about a Deployment that decide Ready and Progressing."""

    replicas: int = 0
    ready: int = 0
    updated: int = 0
    revision: str | None = None
    serving: bool = False
    deadline_exceeded: bool = False

    @classmethod
    def of(cls, deployment: Mapping[str, Any] | None, rev: str, desired: int) -> DeploymentView:
        if deployment is None:
            return cls()
        status = deployment.get("status") or {}
        meta = deployment.get("metadata") or {}
        replicas = int(status.get("replicas", 0))
        ready = int(status.get("readyReplicas", 0))
        updated = int(status.get("updatedReplicas", 0))
        available = int(status.get("availableReplicas", 0))
        deployed = (meta.get("annotations") or {}).get(kids.ANNOTATION_REVISION)
        # The Deployment controller must have seen our latest write, or its counts describe
        # an older spec.
        caught_up = int(status.get("observedGeneration", 0)) >= int(meta.get("generation", 0))
        rolled_out = caught_up and deployed == rev and updated == desired and replicas == desired
        return cls(
            replicas=replicas,
            ready=ready,
            updated=updated,
            revision=deployed,
            serving=rolled_out and min(available, ready) >= desired,
            deadline_exceeded=any(
                c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
                for c in status.get("conditions") or []
            ),
        )


@dataclasses.dataclass(frozen=True)
class Report:
    status: Mapping[str, Any]
    events: tuple[Event, ...]


def report(
    *,
    owner: kids.Owner,
    generation: int,
    spec: specs.ServiceSpec | specs.SpecError,
    applies: Sequence[Apply],
    outcome: ApplyOutcome,
    deployment: Mapping[str, Any] | None,
    previous: Mapping[str, Any],
    now: str,
    view: DeploymentView | None = None,
    degraded_by: tuple[str, str] | None = None,
) -> Report:
    """Status and Events after a reconcile; ``now`` is an RFC 3339 timestamp from the caller.

    ``view`` replaces the Deployment's view when a rollout spreads the service over several
    Deployments; ``degraded_by`` (reason, message) reports a problem found outside the apply,
    such as a rolled-back revision.
    """
    events: list[Event] = []
    base: dict[str, Any] = {
        "observedGeneration": generation,
        "selector": kids.selector_string(owner),
    }
    if isinstance(spec, specs.SpecError):
        message = f"{spec.field}: {spec.message}"
        conditions = _conditions(
            previous,
            generation=generation,
            now=now,
            ready=("False", ApplyReason.INVALID_SPEC, message),
            progressing=("False", ApplyReason.INVALID_SPEC, "the spec cannot be acted on"),
            degraded=("True", ApplyReason.INVALID_SPEC, message),
        )
        status = {
            **_carry(previous),
            **base,
            "phase": ServicePhase.INVALID_SPEC.value,
            "conditions": conditions,
        }
        return Report(status, tuple(_transitions(previous, conditions)))

    # One Event per kind of change, naming every child, keeps the feed readable and the API
    # server's event load at one write per reconcile rather than one per child.
    for reason, verb in (
        (ApplyReason.CREATED, "created"),
        (ApplyReason.UPDATED, "updated to the desired state"),
    ):
        refs = [str(a.ref) for a in applies if a.reason is reason and a.ref in outcome.applied]
        if refs:
            events.append(Event("Normal", reason.value, f"{', '.join(refs)} {verb}"))
    problems = [
        *(in_service_terms(ref, msg) for ref, msg in outcome.rejected.items()),
        *(f"{ref}: {msg}" for ref, msg in outcome.errors.items()),
    ]

    rev = kids.revision(spec.template)
    desired_count = spec.replicas.effective
    if view is None:
        view = DeploymentView.of(deployment, rev, desired_count)

    if outcome.rejected:
        degraded = ("True", ApplyReason.INVALID_SPEC, "; ".join(problems))
        phase = ServicePhase.INVALID_SPEC
    elif outcome.errors:
        degraded = ("True", ApplyReason.APPLY_FAILED, "; ".join(problems))
        phase = ServicePhase.DEGRADED
    elif degraded_by is not None:
        degraded = ("True", ApplyReason(degraded_by[0]), degraded_by[1])
        phase = ServicePhase.DEGRADED
    elif view.deadline_exceeded:
        degraded = ("True", ApplyReason.DEADLINE_EXCEEDED, f"revision {rev} is not becoming available")
        phase = ServicePhase.DEGRADED
    else:
        degraded = ("False", ApplyReason.HEALTHY, "no problems observed")
        phase = (
            ServicePhase.READY
            if view.serving
            else ServicePhase.PROGRESSING
            if deployment
            else ServicePhase.PENDING
        )

    # A rollout may serve another revision than the spec's (a rolled-back one stays in the spec).
    serving = view.revision or rev
    if view.serving:
        ready_c = (
            "True",
            ApplyReason.AVAILABLE,
            f"{view.ready}/{desired_count} replicas ready at revision {serving}",
        )
        progressing = ("False", ApplyReason.STABLE, f"revision {serving} is rolled out")
    else:
        waiting = f"{view.ready}/{desired_count} replicas ready, {view.updated} at revision {serving}"
        ready_c = ("False", ApplyReason.WAITING, waiting)
        rolling = view.revision not in (None, rev) or view.updated < view.replicas
        reason = ApplyReason.ROLLING_OUT if rolling else ApplyReason.SCALING
        progressing = ("True", reason, waiting)
    if phase is ServicePhase.INVALID_SPEC:
        ready_c = ("False", ApplyReason.INVALID_SPEC, degraded[2])
        progressing = ("False", ApplyReason.INVALID_SPEC, "the spec cannot be acted on")

    conditions = _conditions(
        previous, generation=generation, now=now, ready=ready_c, progressing=progressing, degraded=degraded
    )
    stable = rev if view.serving else previous.get("stableRevision")
    status = {
        **_carry(previous),
        **base,
        "phase": phase.value,
        "conditions": conditions,
        "replicas": view.replicas,
        "readyReplicas": view.ready,
        "updatedReplicas": view.updated,
        "desiredReplicas": desired_count,
        "currentRevision": rev,
    }
    if stable:
        status["stableRevision"] = stable
    events.extend(_transitions(previous, conditions))
    return Report(status, tuple(events))


_TYPED_PATCH = re.compile(
    r"failed to create typed patch object \([^)]*\): \.(?P<path>\S+): (?P<why>.*)", re.S
)
_INVALID = re.compile(r'^[A-Za-z.]+ "[^"]*" is invalid: ')
# Where the API server's name for a field of the Deployment's pod template differs from the
# ReplicatedService's (its metadata checks report ``spec.template.labels``).
_TEMPLATE_PATHS = (
    ("spec.template.labels", "spec.template.metadata.labels"),
    ("spec.template.annotations", "spec.template.metadata.annotations"),
)


def in_service_terms(ref: kids.ChildRef, message: str) -> str:
    """An API server's refusal of a child, with the field named as the user wrote it: a
    Deployment's ``spec.template`` is the service's ``spec.template``, so its paths are the
    service's, once the apply's own wording is taken off."""
    if ref.kind not in ("Deployment", "ControllerRevision"):
        return f"{ref}: {message}"
    typed = _TYPED_PATCH.search(message)
    text = f"{typed['path']}: {typed['why']}" if typed else _INVALID.sub("", message)
    for theirs, ours in _TEMPLATE_PATHS:
        text = re.sub(rf"\b{re.escape(theirs)}\b", ours, text)
    return f"{text} (refused in {ref})"


# Status fields owned by other parts of the operator (rollouts, forecasts, remediation) pass
# through the basic reconcile untouched.
_CARRIED = (
    "canary",
    "rollout",
    "forecast",
    "autoscaling",
    "maintenance",
    "healing",
    "lastRemediation",
    "pendingApprovals",
    "stableRevision",
    "activeRevision",
    "rollback",
)
# Condition types the basic reconcile writes; any other type belongs to another writer and is
# passed through as it was, so one writer's status patch never erases another's condition.
OWN_CONDITIONS = ("Ready", "Progressing", "Degraded")


def _carry(previous: Mapping[str, Any]) -> dict[str, Any]:
    return {k: previous[k] for k in _CARRIED if k in previous}


def _conditions(
    previous: Mapping[str, Any],
    *,
    generation: int,
    now: str,
    ready: tuple[str, ApplyReason, str],
    progressing: tuple[str, ApplyReason, str],
    degraded: tuple[str, ApplyReason, str],
) -> list[dict[str, Any]]:
    before = {c.get("type"): c for c in previous.get("conditions") or []}
    result: list[dict[str, Any]] = []
    for ctype, (status, reason, message) in (
        (ConditionType.READY, ready),
        (ConditionType.PROGRESSING, progressing),
        (ConditionType.DEGRADED, degraded),
    ):
        old = before.get(ctype.value) or {}
        # The transition time moves only when the status flips, as Kubernetes conventions ask.
        since = old.get("lastTransitionTime") if old.get("status") == status else None
        result.append(
            {
                "type": ctype.value,
                "status": status,
                "reason": reason.value,
                "message": message,
                "lastTransitionTime": since or now,
                "observedGeneration": generation,
            }
        )
    result.extend(dict(c) for c in previous.get("conditions") or [] if c.get("type") not in OWN_CONDITIONS)
    return result


def merge_conditions(
    previous: Sequence[Mapping[str, Any]], updates: Sequence[Mapping[str, Any]], now: str
) -> list[dict[str, Any]]:
    """``previous`` with each condition in ``updates`` replaced or added by type.

    The transition time moves only when a condition's status flips; writers other than the
    basic reconcile use this for the condition types they own.
    """
    merged = [dict(c) for c in previous]
    index = {c.get("type"): i for i, c in enumerate(merged)}
    for update in updates:
        old = merged[index[update["type"]]] if update["type"] in index else {}
        since = old.get("lastTransitionTime") if old.get("status") == update.get("status") else None
        new = {**update, "lastTransitionTime": since or now}
        if update["type"] in index:
            merged[index[update["type"]]] = new
        else:
            index[update["type"]] = len(merged)
            merged.append(new)
    return merged


def _transitions(previous: Mapping[str, Any], conditions: Sequence[Mapping[str, Any]]) -> list[Event]:
    """Events for conditions whose status or reason changed: what a human wants in the feed."""
    before = {c.get("type"): c for c in previous.get("conditions") or []}
    events = []
    for cond in conditions:
        old = before.get(cond["type"]) or {}
        if (old.get("status"), old.get("reason")) == (cond["status"], cond["reason"]):
            continue
        if cond["type"] == ConditionType.DEGRADED and cond["status"] == "True":
            events.append(Event("Warning", cond["reason"], cond["message"]))
        elif cond["type"] == ConditionType.READY and cond["status"] == "True":
            events.append(Event("Normal", "Ready", cond["message"]))
    return events


def status_changed(previous: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    return any(previous.get(k) != v for k, v in status.items())
