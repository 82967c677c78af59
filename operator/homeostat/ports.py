"""The small interfaces through which handlers act on the world.

Handlers depend on these protocols, never on a client library, so an adapter can be swapped
(or run against canned responses) without touching decision logic. One module per
implementation lives in ``homeostat.adapters``.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from homeostat.core import approval as appr
from homeostat.core import children as kids


@dataclasses.dataclass(frozen=True, repr=False)
class Credentials:
    """How kopf reaches and authenticates to the API server, as data (nothing on disk); the
    token and key are never printed. ``expiration``: when to ask for them again."""

    server: str
    ca_data: str | None = None
    insecure: bool = False
    token: str | None = None
    certificate_data: bytes | None = None
    private_key_data: bytes | None = None
    proxy_url: str | None = None
    namespace: str | None = None
    expiration: datetime.datetime | None = None

    def __repr__(self) -> str:
        return f"Credentials(server={self.server!r})"


class Rejected(Exception):
    """The API server refused an object as invalid: retrying the same object cannot help."""


class Unavailable(Exception):
    """The API server could not be reached or failed; the same call may succeed later."""


class Workloads(Protocol):
    """Applies and removes the children of a service, and writes its status."""

    async def apply(self, manifest: Mapping[str, Any]) -> Mapping[str, Any]:
        """Server-side apply ``manifest``; return the object as stored."""
        ...

    async def delete(self, ref: kids.ChildRef) -> None: ...

    async def get(self, ref: kids.ChildRef) -> Mapping[str, Any] | None:
        """The object as stored, or None when it does not exist."""
        ...

    async def json_patch(self, ref: kids.ChildRef, operations: Sequence[Mapping[str, Any]]) -> None:
        """Apply a JSON patch to an object we do not own (e.g. a user's HTTPRoute)."""
        ...

    async def patch_status(self, owner: kids.Owner, status: Mapping[str, Any]) -> None: ...


# --- metrics ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sample:
    """One series of an instant query: its labels and value (NaN is kept, never dropped)."""

    labels: Mapping[str, str]
    value: float


@dataclasses.dataclass(frozen=True)
class Series:
    """One series of a range query: its labels and ``(unix seconds, value)`` points in time order."""

    labels: Mapping[str, str]
    points: tuple[tuple[float, float], ...]


class MetricsProvider(Protocol):
    """A metrics backend (Prometheus). Raises ``Unavailable`` when it cannot answer.

    An empty tuple means the backend answered with no data: callers treat that as
    inconclusive, never as a pass or as zero load.
    """

    async def instant(self, query: str) -> tuple[Sample, ...]: ...

    async def range(self, query: str, start: float, end: float, step: float) -> tuple[Series, ...]: ...


# --- notifications ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Notification:
    """Something a human should hear about. ``key`` is stable per occurrence, so a notifier
    can drop a repeat sent after an operator restart."""

    namespace: str
    service: str
    kind: str  # e.g. RolloutPromoted, RolloutRolledBack, PredictedExhaustion
    severity: str  # "info", "warning" or "critical"
    title: str
    message: str
    key: str


class Notifier(Protocol):
    """Delivers notifications (Slack, a webhook, or nothing). Raises ``Unavailable`` on failure."""

    async def notify(self, notification: Notification) -> None: ...


# --- approvals (ADR 0009) --------------------------------------------------------------------


class Conflict(Exception):
    """The object changed since it was read (resourceVersion mismatch): read again and retry."""


@dataclasses.dataclass(frozen=True)
class ApprovalTicket:
    """Where an incident's approval stands. Execute the action only when ``phase`` is
    ``Phase.APPROVED``; ``Pending`` means ask again later; ``Denied`` and ``Expired`` are final
    for this occurrence of the incident (``Request.incident``); a later one opens a new request."""

    namespace: str
    name: str
    phase: appr.ApprovalPhase
    reason: str


class ApprovalGate(Protocol):
    """The gate remediation calls before a risky action (implemented over the Kubernetes API).

    ``request`` creates the Approval for ``request``'s action + target + cause + incident in
    ``namespace`` (the service's namespace) or finds the one that exists, and returns its phase:
    calling it again on every reconcile is cheap and never opens a second request or a second
    Slack post. Raises ``Unavailable`` when the API server cannot be reached (treat as not
    approved).
    """

    async def request(self, namespace: str, request: appr.ApprovalRequest) -> ApprovalTicket: ...

    async def find(
        self, namespace: str, action: str, target: appr.Target, cause: str, incident: str
    ) -> ApprovalTicket | None:
        """The request ``request`` would find, or None; never creates one. For an action resumed
        after a restart, whose ticket was in the memory of the process that was killed."""
        ...

    async def record_outcome(self, ticket: ApprovalTicket, result: appr.ActionResult, message: str) -> None:
        """After executing an approved action, record how it went in the Approval's status."""
        ...


class EventRecorder(Protocol):
    """Records core/v1 Events. Raises ``Unavailable`` or ``Rejected`` when one is not recorded."""

    async def post_event(self, involved: Mapping[str, Any], type: str, reason: str, message: str) -> None:
        """Record an Event about ``involved`` (apiVersion, kind, namespace, name, uid)."""
        ...


class ApprovalStore(Protocol):
    """Reads and writes Approval objects for the approval handlers and the interactivity server."""

    async def get(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...

    async def create(self, manifest: Mapping[str, Any]) -> Mapping[str, Any]:
        """Create; raises ``Conflict`` when an object of that name exists."""
        ...

    async def patch_status(
        self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None
    ) -> Mapping[str, Any]:
        """Merge-patch the status; with ``resource_version``, raise ``Conflict`` if it moved on."""
        ...

    async def post_event(self, involved: Mapping[str, Any], type: str, reason: str, message: str) -> None:
        """Record a core/v1 Event about ``involved`` (apiVersion, kind, namespace, name, uid)."""
        ...


@dataclasses.dataclass(frozen=True)
class MessageRef:
    channel: str
    ts: str


class Verification(enum.StrEnum):
    VALID = "valid"
    BAD_SIGNATURE = "bad-signature"
    STALE = "stale-timestamp"
    MISSING = "missing-headers"


@dataclasses.dataclass(frozen=True)
class Click:
    """A verified button click: which approval, which button, who (a Slack user id)."""

    ref: appr.Ref
    verdict: appr.Vote
    user: str
    response_url: str = ""


class ApprovalMessenger(Protocol):
    """Asks humans in a chat (Slack) and verifies their answers came from it.

    ``post`` and ``update`` raise ``Unavailable`` when the chat cannot be reached (after the
    adapter's own retries); the request then simply stays pending.
    """

    async def post(self, ref: appr.Ref, request: appr.ApprovalRequest, state: appr.State) -> MessageRef: ...

    async def find(self, ref: appr.Ref, request: appr.ApprovalRequest, since: float) -> MessageRef | None:
        """The request's message if one was posted since ``since`` (unix seconds): after a crash
        between posting and recording the message, this finds it instead of posting again."""
        ...

    async def update(
        self, message: MessageRef, ref: appr.Ref, request: appr.ApprovalRequest, state: appr.State
    ) -> None: ...

    async def reply(self, response_url: str, text: str) -> None:
        """Tell the one person who clicked why their click did not count (best effort)."""
        ...

    def verify(self, body: bytes, headers: Mapping[str, str]) -> Verification:
        """Check an interactivity request's signature and age over its raw body."""
        ...

    def parse_click(self, body: bytes) -> Click | None:
        """The click in a verified request body, or None if it is not one of our buttons."""
        ...

    async def member_groups(self, user: str, groups: frozenset[str]) -> frozenset[str]:
        """Which of ``groups`` (chat user-group IDs a request names as approvers) ``user`` is in
        right now. Never raises: a group whose members cannot be read counts as one the user is
        not in, so an outage can only refuse a click, never let one through."""
        ...


# --- scaling ---------------------------------------------------------------------------------


class Scaler(Protocol):
    """Writes a service's replica count through its scale subresource.

    The scale subresource touches ``spec.replicas.desired`` only, so the autoscaler never
    overwrites (or conflicts with) a spec edit made for a rollout. Raises ``Rejected`` when the
    API server refuses the count (outside the validated bounds) and ``Unavailable`` otherwise.
    """

    async def scale(self, owner: kids.Owner, replicas: int) -> None: ...


# --- healing (ADR 0010) ----------------------------------------------------------------------


class EvictionRefused(Exception):
    """The API server refused an eviction (HTTP 429: a PodDisruptionBudget would be violated).
    A drain stops at the first refusal and reports it; it never forces the pod out."""


@dataclasses.dataclass(frozen=True)
class Drained:
    """What a drain did. ``namespaces`` is empty when pods of every namespace were evicted;
    otherwise only pods of those namespaces were (an operator confined to its namespaces), and
    pods of any other namespace were left on the cordoned node."""

    evicted: int
    namespaces: tuple[str, ...] = ()
    # Pods no controller owns ("namespace/name"): evicted, nothing would bring them back, so
    # they stay, as ``kubectl drain`` leaves them without --force.
    unmanaged: tuple[str, ...] = ()

    def describe(self, node: str) -> str:
        if not self.namespaces:
            text = f"node {node} drained, {self.evicted} pod(s) evicted"
        else:
            text = (
                f"node {node} cordoned and drained of the pods in namespace(s) {', '.join(self.namespaces)}, "
                f"{self.evicted} pod(s) evicted; pods of other namespaces were left in place"
            )
        if self.unmanaged:
            names = ", ".join(self.unmanaged[:5]) + (" and more" if len(self.unmanaged) > 5 else "")
            text += f"; {len(self.unmanaged)} pod(s) no controller owns were left in place: {names}"
        return text


class HealingActions(Protocol):
    """Carries out healing actions. Each is idempotent: repeating it after a crash is harmless.

    Raises ``Unavailable`` when the API server cannot be reached and ``Rejected`` when it
    refuses the change as invalid.
    """

    async def delete_pod(self, namespace: str, name: str, *, force: bool) -> bool:
        """Delete a pod (``force``: grace period 0, for pods on a node that stopped answering).
        Returns False when it was already gone."""
        ...

    async def cordon(self, node: str) -> None: ...

    async def drain(self, node: str) -> Drained:
        """Cordon, then evict every pod on ``node`` through the Eviction API (DaemonSet and mirror
        pods stay), or only the pods of the operator's own namespaces when it is confined to them.
        Says what it evicted; raises ``EvictionRefused`` on a 429."""
        ...

    async def scale(self, namespace: str, service: str, replicas: int) -> None: ...

    async def set_memory_limit(self, namespace: str, service: str, container: str, limit: str) -> None:
        """Raise a container's memory limit (and its request in proportion) in the service's
        template, which rolls out a new revision."""
        ...

    async def rollback(self, namespace: str, service: str, command_id: str) -> None:
        """Ask the rollout machinery to return to the stable revision (an abort command)."""
        ...

    async def approval(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The Approval object named ``name``, to check its recorded deciders before acting."""
        ...


# --- telemetry -------------------------------------------------------------------------------


class Telemetry(Protocol):
    """The operator's own metrics: what it did, how long it took, what it predicts.

    Calls never fail and never block; an implementation that cannot record simply drops.
    """

    def reconciled(self, namespace: str, service: str, seconds: float, outcome: str) -> None: ...

    def rollout(self, namespace: str, service: str, phase: str | None, weight: int) -> None: ...

    def analysis(self, namespace: str, service: str, verdict: str) -> None: ...

    def forecast(
        self, namespace: str, service: str, *, mase: float | None, smape: float | None, peak: float | None
    ) -> None: ...

    def scaled(
        self, namespace: str, service: str, replicas: int, reason: str, *, load: float | None, capacity: float
    ) -> None: ...

    def remediation(self, action: str, outcome: str) -> None: ...

    def approval(self, outcome: str) -> None: ...

    def pending(self, queue: str, depth: int) -> None: ...

    def forget(self, namespace: str, service: str) -> None:
        """Drop every per-service series of a deleted service."""
        ...

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, and its content type."""
        ...


class NopTelemetry:
    """Telemetry switched off, and the default where none is configured: every call is dropped."""

    def reconciled(self, namespace: str, service: str, seconds: float, outcome: str) -> None:
        pass

    def rollout(self, namespace: str, service: str, phase: str | None, weight: int) -> None:
        pass

    def analysis(self, namespace: str, service: str, verdict: str) -> None:
        pass

    def forecast(
        self, namespace: str, service: str, *, mase: float | None, smape: float | None, peak: float | None
    ) -> None:
        pass

    def scaled(
        self, namespace: str, service: str, replicas: int, reason: str, *, load: float | None, capacity: float
    ) -> None:
        pass

    def remediation(self, action: str, outcome: str) -> None:
        pass

    def approval(self, outcome: str) -> None:
        pass

    def pending(self, queue: str, depth: int) -> None:
        pass

    def forget(self, namespace: str, service: str) -> None:
        pass

    def exposition(self) -> tuple[bytes, str]:
        return b"", "text/plain; version=0.0.4; charset=utf-8"


# --- unconfigured ports ----------------------------------------------------------------------
# The defaults of handlers' runtime, so no handler checks for None: each one refuses or drops
# as a missing integration should, and says which setting would configure it.


class Unconfigured:
    """Marks a port that stands in for an integration nobody configured (see ``configured``)."""


def configured(port: object) -> bool:
    """False for the stand-ins below: where behaviour differs (the rollout reports "no
    analysis", the Slack endpoint answers 503), that is a capability, not a missing object."""
    return not isinstance(port, Unconfigured)


class NopNotifier(Unconfigured):
    """``Notifier`` that drops everything: no chat is configured."""

    async def notify(self, notification: Notification) -> None:
        return None


class NoMetrics(Unconfigured):
    """``MetricsProvider`` without a backend: every query is unavailable, which every feature
    already treats as "no answer" (hold, inconclusive, unknown), never as a reading."""

    REASON = "no metrics provider is configured (--prometheus-url)"

    async def instant(self, query: str) -> tuple[Sample, ...]:
        raise Unavailable(self.REASON)

    async def range(self, query: str, start: float, end: float, step: float) -> tuple[Series, ...]:
        raise Unavailable(self.REASON)


class NoScaler(Unconfigured):
    """``Scaler`` that cannot scale: the autoscaler reports ScaleFailed instead of acting."""

    async def scale(self, owner: kids.Owner, replicas: int) -> None:
        raise Unavailable("no scaler is configured")


class NoEvents(Unconfigured):
    """``EventRecorder`` that drops Events (the log line of each is still written)."""

    async def post_event(self, involved: Mapping[str, Any], type: str, reason: str, message: str) -> None:
        return None


class NoApprovalGate(Unconfigured):
    """``ApprovalGate`` that can never answer: a risky action stays pending, never runs."""

    REASON = "no approval gate is configured"

    async def request(self, namespace: str, request: appr.ApprovalRequest) -> ApprovalTicket:
        raise Unavailable(self.REASON)

    async def find(
        self, namespace: str, action: str, target: appr.Target, cause: str, incident: str
    ) -> ApprovalTicket | None:
        return None

    async def record_outcome(self, ticket: ApprovalTicket, result: appr.ActionResult, message: str) -> None:
        raise Unavailable(self.REASON)


class NoHealing(Unconfigured):
    """``HealingActions`` that carry nothing out: each action fails as unavailable, visibly."""

    REASON = "no healing executor is configured"

    async def delete_pod(self, namespace: str, name: str, *, force: bool) -> bool:
        raise Unavailable(self.REASON)

    async def cordon(self, node: str) -> None:
        raise Unavailable(self.REASON)

    async def drain(self, node: str) -> Drained:
        raise Unavailable(self.REASON)

    async def scale(self, namespace: str, service: str, replicas: int) -> None:
        raise Unavailable(self.REASON)

    async def set_memory_limit(self, namespace: str, service: str, container: str, limit: str) -> None:
        raise Unavailable(self.REASON)

    async def rollback(self, namespace: str, service: str, command_id: str) -> None:
        raise Unavailable(self.REASON)

    async def approval(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        raise Unavailable(self.REASON)


class NoApprovalStore(Unconfigured):
    """``ApprovalStore`` without an API server: nothing is found, nothing can be written."""

    REASON = "no approval store is configured"

    async def get(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return None

    async def create(self, manifest: Mapping[str, Any]) -> Mapping[str, Any]:
        raise Unavailable(self.REASON)

    async def patch_status(
        self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None
    ) -> Mapping[str, Any]:
        raise Unavailable(self.REASON)

    async def post_event(self, involved: Mapping[str, Any], type: str, reason: str, message: str) -> None:
        return None


class NoMessenger(Unconfigured):
    """``ApprovalMessenger`` when Slack is not configured: requests are decided by kubectl only,
    and the interactivity endpoint answers 503."""

    channel = ""
    REASON = "Slack is not configured"

    async def post(self, ref: appr.Ref, request: appr.ApprovalRequest, state: appr.State) -> MessageRef:
        raise Rejected(self.REASON)

    async def find(self, ref: appr.Ref, request: appr.ApprovalRequest, since: float) -> MessageRef | None:
        return None

    async def update(
        self, message: MessageRef, ref: appr.Ref, request: appr.ApprovalRequest, state: appr.State
    ) -> None:
        raise Rejected(self.REASON)

    async def reply(self, response_url: str, text: str) -> None:
        return None

    def verify(self, body: bytes, headers: Mapping[str, str]) -> Verification:
        return Verification.MISSING

    def parse_click(self, body: bytes) -> Click | None:
        return None

    async def member_groups(self, user: str, groups: frozenset[str]) -> frozenset[str]:
        return frozenset()
