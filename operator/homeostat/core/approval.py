"""Human approval of a risky action, as a pure state machine.

An approval gate is only worth having if it cannot be talked round: a click is not an
authenticated session, two people click at once, buttons get clicked twice, requests outlive
their usefulness, and whoever asked must not be the one who answers. Every one of those rules
lives here, in ``decide`` and ``expire``, so it can be tested table-driven and model-checked
(``tests/unit/test_approval_model.py``) without Slack or a cluster. The handlers only read the
``Approval`` object, call these functions and write the result back with an optimistic
concurrency check, so concurrent clicks also produce exactly one decision across processes.

Rules (ADR 0009):

- An empty approver list means nobody may approve: the gate fails closed.
- The requester never approves (or denies) its own request.
- ``quorum`` distinct allowed identities must approve; a critical action needs at least two
  (the two-person rule), whatever the request says.
- One allowed deny decides: the request is Denied.
- The first decision wins; anything after a terminal phase is rejected with the reason.
- At ``expiresAt`` a pending request becomes Expired, which counts as a denial; it never turns
  into Approved afterwards.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from homeostat.core import fields
from homeostat.core.spec import SpecError

GROUP = "homeostat.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Approval"
PLURAL = "approvals"
LABEL_SERVICE = f"{GROUP}/service"
LABEL_ACTION = f"{GROUP}/action"
MAX_DECISIONS = 20  # the CRD's maxItems; quorum is at most 10, so a decided request fits
MAX_REJECTIONS = 10  # kubectl votes refused, newest kept, so `kubectl homeostat` can say why


class ApprovalPhase(enum.StrEnum):
    PENDING = "Pending"
    APPROVED = "Approved"
    DENIED = "Denied"
    EXPIRED = "Expired"

    @property
    def terminal(self) -> bool:
        return self is not ApprovalPhase.PENDING


class Vote(enum.StrEnum):
    APPROVE = "approve"
    DENY = "deny"


class Channel(enum.StrEnum):
    SLACK = "slack"
    KUBECTL = "kubectl"


class Risk(enum.StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def destructive(self) -> bool:
        """High and critical actions get a confirmation dialog before the click counts."""
        return self in (Risk.HIGH, Risk.CRITICAL)


class Rejection(enum.StrEnum):
    """Why a decision was refused. The request's state is unchanged by every one of these."""

    NO_APPROVERS = "NoApprovers"
    NOT_ALLOWED = "NotAllowed"
    REQUESTER = "Requester"
    ALREADY_VOTED = "AlreadyVoted"
    ALREADY_DECIDED = "AlreadyDecided"
    EXPIRED = "Expired"


class DecisionOutcome(enum.StrEnum):
    ACCEPTED = "Accepted"
    REJECTED = "Rejected"


class ActionResult(enum.StrEnum):
    """How the approved action went, recorded by whoever executed it."""

    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclasses.dataclass(frozen=True)
class Ref:
    """An Approval object's identity; the only thing a Slack button carries."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def valid(self) -> bool:
        """Names the API server could hold: a namespace is a DNS-1123 label, an Approval's name a
        DNS-1123 subdomain. Anything else (``x?y=1``, ``x#``) would change the meaning of the
        request path it goes into, so it is refused before any call is made."""
        return bool(_DNS_LABEL.fullmatch(self.namespace)) and (
            len(self.name) <= 253 and all(_DNS_LABEL.fullmatch(part) for part in self.name.split("."))
        )


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclasses.dataclass(frozen=True)
class Target:
    """What the action acts on; ``namespace`` is empty for cluster-scoped objects (nodes)."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}" if self.namespace else f"{self.kind}/{self.name}"


@dataclasses.dataclass(frozen=True)
class Approvers:
    """Who may decide: Slack user IDs and user-group IDs for clicks, Kubernetes users and groups
    for kubectl. The two channels never vouch for each other: a Slack group grants nothing to a
    kubectl caller and a Kubernetes group nothing to a click, even if the names coincide."""

    slack: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    slack_groups: frozenset[str] = frozenset()

    @property
    def empty(self) -> bool:
        return not (self.slack or self.users or self.groups or self.slack_groups)

    def allow(self, identity: Identity) -> bool:
        mine = frozenset(identity.groups)
        if identity.channel is Channel.SLACK:
            return identity.user in self.slack or bool(self.slack_groups & mine)
        return identity.user in self.users or bool(self.groups & mine)


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who clicked or ran kubectl. Slack identities are user IDs, with the Slack user groups the
    adapter found the clicker in when the click arrived (only groups the request names); kubectl
    ones come from a SelfSubjectReview, with the groups the API server authenticated."""

    channel: Channel
    user: str
    groups: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.channel.value}:{self.user}"


@dataclasses.dataclass(frozen=True)
class ApprovalRequest:
    """An Approval's spec: immutable once created (the CRD enforces it)."""

    action: str
    target: Target
    cause: str
    service: str
    requester: str
    risk: Risk
    quorum: int
    approvers: Approvers
    expires_at: float
    channel: str = ""  # Slack channel; empty means no Slack message (kubectl only)
    evidence: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # Which occurrence of the problem this is (the requester's incident id). Part of the key:
    # retries and restarts within one occurrence find the first request, but a problem that
    # comes back after it cleared, or the next step of a ladder, asks again. An answer is about
    # one occurrence; it never authorises a later one.
    incident: str = ""

    @property
    def required(self) -> int:
        """Distinct approvals needed: the two-person rule holds for critical actions even if a
        request (or a hand-written object) asks for fewer."""
        return max(self.quorum, 2) if self.risk is Risk.CRITICAL else max(self.quorum, 1)

    def key(self) -> str:
        return incident_key(self.action, self.target, self.cause, self.incident)

    def as_spec(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "target": {
                "kind": self.target.kind,
                "namespace": self.target.namespace,
                "name": self.target.name,
            },
            "cause": self.cause,
            "evidence": dict(self.evidence),
            "service": self.service,
            "requester": self.requester,
            "risk": self.risk.value,
            "quorum": self.quorum,
            "approvers": {
                "slack": sorted(self.approvers.slack),
                "users": sorted(self.approvers.users),
                "groups": sorted(self.approvers.groups),
                "slackGroups": sorted(self.approvers.slack_groups),
            },
            "channel": self.channel,
            "expiresAt": fields.rfc3339(self.expires_at),
            **({"incident": self.incident} if self.incident else {}),
        }


@dataclasses.dataclass(frozen=True)
class RecordedDecision:
    identity: Identity
    verdict: Vote
    at: float
    vote: str = ""  # the kubectl vote id it came from, so the plugin can find its answer

    def as_in_storage(self) -> dict[str, Any]:
        stored: dict[str, Any] = {
            "user": self.identity.user,
            "channel": self.identity.channel.value,
            "verdict": self.verdict.value,
            "at": fields.rfc3339(self.at),
        }
        if self.identity.groups:
            stored["groups"] = list(self.identity.groups)
        if self.vote:
            stored["vote"] = self.vote
        return stored

    @classmethod
    def from_storage(cls, raw: Any, where: str = "decisions[0]") -> RecordedDecision:
        """One recorded decision; unreadable is a ``StorageError`` naming ``where``."""
        if not isinstance(raw, Mapping):
            raise fields.StorageError(f"{where} must be an object")
        try:
            channel = _required(fields.stored_enum(Channel, raw, "channel"), "channel")
            user = _required(fields.stored_str(raw, "user"), "user")
            verdict = _required(fields.stored_enum(Vote, raw, "verdict"), "verdict")
            at = _required(fields.stored_rfc3339(raw, "at"), "at")
            groups = fields.stored_strings(raw, "groups")
            vote = fields.stored_str(raw, "vote") or ""
        except fields.StorageError as exc:
            raise fields.StorageError(f"{where}.{exc}") from None
        return cls(Identity(channel, user, groups), verdict, at, vote)


_T = TypeVar("_T")


def _required(value: _T | None, key: str) -> _T:
    if value is None:
        raise fields.StorageError(f"{key} is missing")
    return value


@dataclasses.dataclass(frozen=True)
class State:
    """The decision part of an Approval's status (the Slack bookkeeping is the handler's)."""

    phase: ApprovalPhase = ApprovalPhase.PENDING
    decisions: tuple[RecordedDecision, ...] = ()
    decided_at: float | None = None
    reason: str = "waiting for approval"

    def as_in_storage(self) -> dict[str, Any]:
        return {
            "phase": self.phase.value,
            "decisions": [d.as_in_storage() for d in self.decisions],
            "decidedAt": None if self.decided_at is None else fields.rfc3339(self.decided_at),
            "reason": self.reason,
        }

    @classmethod
    def from_storage(cls, raw: Mapping[str, Any] | None) -> State:
        """An Approval's status: absent or empty is Pending, anything unreadable a
        ``StorageError`` (the rule in ``core/fields.py``). Reading a broken status as Pending
        would let a request that was Denied or Expired be approved after all."""
        if not raw:
            return cls()
        if not isinstance(raw, Mapping):
            raise fields.StorageError("status must be an object")
        decisions = raw.get("decisions") or []
        if not isinstance(decisions, list):
            raise fields.StorageError("status.decisions must be a list")
        try:
            phase = fields.stored_enum(ApprovalPhase, raw, "phase") or ApprovalPhase.PENDING
            decided_at = fields.stored_rfc3339(raw, "decidedAt")
            reason = fields.stored_str(raw, "reason") or State.reason
        except fields.StorageError as exc:
            raise fields.StorageError(f"status.{exc}") from None
        return cls(
            phase=phase,
            decisions=tuple(
                RecordedDecision.from_storage(d, f"status.decisions[{i}]") for i, d in enumerate(decisions)
            ),
            decided_at=decided_at,
            reason=reason,
        )


@dataclasses.dataclass(frozen=True)
class DecisionResult:
    """What ``decide`` made of one click or vote: the new state (the same object when rejected,
    except that a due expiry is recorded) and, when rejected, why."""

    state: State
    outcome: DecisionOutcome
    rejection: Rejection | None
    message: str


# --- identity of an incident -----------------------------------------------------------------

_NAME_CHARS = re.compile(r"[^a-z0-9]+")


def incident_key(action: str, target: Target, cause: str, incident: str = "") -> str:
    parts = (action, target.kind, target.namespace, target.name, cause)
    # Without an incident id the key is what it was before the field existed.
    return "\x1f".join((*parts, incident) if incident else parts)


def object_name(action: str, target: Target, cause: str, incident: str = "") -> str:
    """The Approval's name is a function of action + target + cause (+ the occurrence), so
    asking twice about the same incident (a retry, a restart, a second operator) finds the
    first request."""
    digest = hashlib.sha256(incident_key(action, target, cause, incident).encode()).hexdigest()[:16]
    prefix = _NAME_CHARS.sub("-", action.lower()).strip("-")[:40] or "approval"
    return f"{prefix}-{digest}"


# --- transitions -----------------------------------------------------------------------------


def expire(request: ApprovalRequest, state: State, now: float) -> State:
    """Record the timeout of a pending request that is due; anything else is returned as is."""
    if state.phase is not ApprovalPhase.PENDING or now < request.expires_at:
        return state
    approvals = len(_approvers(state))
    return dataclasses.replace(
        state,
        phase=ApprovalPhase.EXPIRED,
        decided_at=request.expires_at,
        reason=(
            f"timed out at {fields.rfc3339(request.expires_at)} with {approvals} of "
            f"{request.required} approvals: denied"
        ),
    )


def decide(
    request: ApprovalRequest, state: State, identity: Identity, verdict: Vote, now: float
) -> DecisionResult:
    """Apply one click or kubectl vote. Authorization happens here, on every decision."""
    state = expire(request, state, now)
    if state.phase is ApprovalPhase.EXPIRED:
        return _reject(
            state, Rejection.EXPIRED, f"this request expired at {fields.rfc3339(request.expires_at)}"
        )
    if state.phase.terminal:
        who = ", ".join(str(d.identity) for d in state.decisions) or "nobody"
        text = f"this request was already {state.phase.value.lower()} by {who}"
        return _reject(state, Rejection.ALREADY_DECIDED, text)
    if request.approvers.empty:
        text = "no approvers are configured for this request, so nobody may approve it"
        return _reject(state, Rejection.NO_APPROVERS, text)
    if identity.user == request.requester:
        return _reject(
            state, Rejection.REQUESTER, f"{identity.user} requested this action and may not decide it"
        )
    if not request.approvers.allow(identity):
        return _reject(state, Rejection.NOT_ALLOWED, f"{identity} is not an approver of this request")
    if any(
        d.identity.channel is identity.channel and d.identity.user == identity.user for d in state.decisions
    ):
        return _reject(state, Rejection.ALREADY_VOTED, f"{identity} has already approved this request")
    decision = RecordedDecision(identity, verdict, now)
    decisions = (*state.decisions, decision)
    if verdict is Vote.DENY:
        new = State(ApprovalPhase.DENIED, decisions, now, f"denied by {identity}")
        return DecisionResult(new, DecisionOutcome.ACCEPTED, None, new.reason)
    count = len(_approvers(dataclasses.replace(state, decisions=decisions)))
    if count >= request.required:
        names = ", ".join(str(d.identity) for d in decisions)
        new = State(ApprovalPhase.APPROVED, decisions, now, f"approved by {names}")
    else:
        new = State(ApprovalPhase.PENDING, decisions, None, f"{count} of {request.required} approvals")
    return DecisionResult(new, DecisionOutcome.ACCEPTED, None, new.reason)


def with_vote(result: DecisionResult, vote: str) -> DecisionResult:
    """Tag the decision a kubectl vote produced with the vote's id."""
    if result.outcome is not DecisionOutcome.ACCEPTED or not vote:
        return result
    *before, last = result.state.decisions
    tagged = dataclasses.replace(last, vote=vote)
    return dataclasses.replace(result, state=dataclasses.replace(result.state, decisions=(*before, tagged)))


def _approvers(state: State) -> set[tuple[Channel, str]]:
    return {(d.identity.channel, d.identity.user) for d in state.decisions if d.verdict is Vote.APPROVE}


def _reject(state: State, rejection: Rejection, message: str) -> DecisionResult:
    return DecisionResult(state, DecisionOutcome.REJECTED, rejection, message)


# --- parsing ---------------------------------------------------------------------------------


def parse_request(spec: Mapping[str, Any]) -> ApprovalRequest:
    """An Approval's spec as a ``Request``; the CRD validates the shape, this the meaning."""
    target = fields.mapping(spec.get("target"), "spec.target")
    approvers = spec.get("approvers") or {}
    try:
        risk = Risk(spec.get("risk", Risk.HIGH.value))
    except ValueError:
        raise SpecError("spec.risk", f"unknown risk {spec.get('risk')!r}") from None
    quorum = spec.get("quorum", 1)
    if isinstance(quorum, bool) or not isinstance(quorum, int) or quorum < 1:
        raise SpecError("spec.quorum", f"must be a positive integer, got {quorum!r}")
    evidence = spec.get("evidence") or {}
    return ApprovalRequest(
        action=fields.text(spec.get("action"), "spec.action"),
        target=Target(
            fields.text(target.get("kind"), "spec.target.kind"),
            str(target.get("namespace") or ""),
            fields.text(target.get("name"), "spec.target.name"),
        ),
        cause=fields.text(spec.get("cause"), "spec.cause"),
        service=str(spec.get("service") or ""),
        requester=fields.text(spec.get("requester"), "spec.requester"),
        risk=risk,
        quorum=quorum,
        approvers=Approvers(
            frozenset(approvers.get("slack") or ()),
            frozenset(approvers.get("users") or ()),
            frozenset(approvers.get("groups") or ()),
            frozenset(approvers.get("slackGroups") or ()),
        ),
        expires_at=fields.parse_rfc3339(spec.get("expiresAt"), "spec.expiresAt"),
        channel=str(spec.get("channel") or ""),
        evidence={str(k): str(v) for k, v in fields.mapping(evidence, "spec.evidence").items()},
        incident=str(spec.get("incident") or ""),
    )
