"""Remediation policies: which healing actions may run by themselves, which need a human, how often.

A wrong automatic action during an incident (draining the last healthy node, restarting every
pod of a service at once) turns a failure into an outage. So every action the healing core
proposes passes through ``decide``, a pure function of the policy, the request, the history of
past actions, the cluster's health and the clock. Being pure, it is table-tested and
model-checked (tests/unit/test_policy*.py, test_remediation_model.py).

The API server's schema and CEL rules reject malformed policies; ``parse`` checks again, since
the CRD may be older than the operator, and reports the field at fault.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from homeostat.core import approval as appr
from homeostat.core import fields
from homeostat.core import spec as specs

DEFAULT_POLICY = "default"
REQUESTER = "homeostat"  # the identity the operator opens approval requests as


class Action(enum.StrEnum):
    RESTART_POD = "RestartPod"
    ROLLBACK = "Rollback"
    RESCHEDULE_PODS = "ReschedulePods"
    CORDON_NODE = "CordonNode"
    DRAIN_NODE = "DrainNode"
    SCALE_UP = "ScaleUp"
    RAISE_MEMORY_LIMIT = "RaiseMemoryLimit"


# Actions that touch a whole node, or move pods off one: the blast-radius guard applies to them.
NODE_ACTIONS = frozenset({Action.RESCHEDULE_PODS, Action.CORDON_NODE, Action.DRAIN_NODE})


class ActionMode(enum.StrEnum):
    AUTO = "auto"
    APPROVE = "approve"
    DENY = "deny"


class OnTimeout(enum.StrEnum):
    DENY = "Deny"
    APPROVE = "Approve"


class PolicyError(fields.FieldError):
    """A policy the operator cannot apply. Not a ``SpecError``: a bad RemediationPolicy is
    reported as the policy's fault (no healing action is taken), not as an invalid service."""


@dataclasses.dataclass(frozen=True)
class ActionRule:
    action: Action
    risk: appr.Risk
    mode: ActionMode
    approvers: appr.Approvers = dataclasses.field(default_factory=appr.Approvers)
    quorum: int = 1
    timeout_seconds: float = 3600.0
    on_timeout: OnTimeout = OnTimeout.DENY


@dataclasses.dataclass(frozen=True)
class RateLimit:
    max_actions: int
    window_seconds: float


@dataclasses.dataclass(frozen=True)
class Policy:
    name: str
    actions: Mapping[Action, ActionRule]
    per_service: RateLimit | None = None
    per_namespace: RateLimit | None = None
    per_cluster: RateLimit | None = None
    min_healthy_nodes: int | str = "51%"
    max_concurrent: int = 3
    cooldown_seconds: float = 300.0
    verify_seconds: float = 120.0
    circuit_failures: int = 3
    circuit_window_seconds: float = 1800.0

    @property
    def history_horizon(self) -> float:
        """How far back any rule looks; older records can be forgotten."""
        windows = [self.cooldown_seconds, self.circuit_window_seconds, self.verify_seconds]
        windows += [
            lim.window_seconds for lim in (self.per_service, self.per_namespace, self.per_cluster) if lim
        ]
        return max(windows)


# --- parsing -----------------------------------------------------------------------------------


# Every policy duration is positive, and its messages have always shown a minutes example.
_EXAMPLE = "such as 5m"


def _required_duration(value: Any, field: str) -> float:
    # An absent one is parsed as "", so the message is parse_duration's ("'' is not a duration").
    return fields.duration("" if value is None else value, field, positive=True, example=_EXAMPLE)


def _enum(kind: type[enum.StrEnum], value: Any, field: str, default: str | None = None) -> Any:
    raw = str(default if value is None else value)
    try:
        return kind(raw)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise PolicyError(field, f"must be one of {allowed}, got {raw!r}") from None


def _ids(value: Any, field: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(field, "must be a list of non-empty strings")
    return frozenset(value)


def _rule(action: Action, raw: Mapping[str, Any], field: str) -> ActionRule:
    risk = _enum(appr.Risk, raw.get("risk"), f"{field}.risk")
    mode = _enum(ActionMode, raw.get("mode"), f"{field}.mode")
    approvers_raw = fields.mapping(raw.get("approvers"), f"{field}.approvers", optional=True)
    slack = fields.mapping(approvers_raw.get("slack"), f"{field}.approvers.slack", optional=True)
    kube = fields.mapping(approvers_raw.get("kubernetes"), f"{field}.approvers.kubernetes", optional=True)
    approvers = appr.Approvers(
        slack=_ids(slack.get("users"), f"{field}.approvers.slack.users"),
        slack_groups=_ids(slack.get("groups"), f"{field}.approvers.slack.groups"),
        users=_ids(kube.get("users"), f"{field}.approvers.kubernetes.users"),
        groups=_ids(kube.get("groups"), f"{field}.approvers.kubernetes.groups"),
    )
    quorum = fields.integer(raw.get("quorum", 1), f"{field}.quorum", 1, 10)
    on_timeout = _enum(OnTimeout, raw.get("onTimeout"), f"{field}.onTimeout", OnTimeout.DENY.value)
    if risk is appr.Risk.CRITICAL and quorum < 2:
        raise PolicyError(
            f"{field}.quorum", "a critical action needs a quorum of at least 2 (two-person rule)"
        )
    if risk in (appr.Risk.HIGH, appr.Risk.CRITICAL) and mode is ActionMode.AUTO:
        raise PolicyError(f"{field}.mode", "a high or critical risk action cannot run automatically")
    if mode is ActionMode.APPROVE and approvers.empty:
        raise PolicyError(f"{field}.approvers", "mode approve needs at least one approver")
    if on_timeout is OnTimeout.APPROVE and risk not in (appr.Risk.LOW, appr.Risk.MEDIUM):
        raise PolicyError(f"{field}.onTimeout", "Approve on timeout is allowed only for low or medium risk")
    if REQUESTER in approvers.slack | approvers.users:
        # Every Approval would be refused: nobody approves their own request (issue 14.4).
        raise PolicyError(
            f"{field}.approvers", f"may not include {REQUESTER}, the identity that requests approvals"
        )
    listed = len(approvers.slack) + len(approvers.users)
    if mode is ActionMode.APPROVE and not (approvers.slack_groups or approvers.groups) and quorum > listed:
        raise PolicyError(f"{field}.quorum", f"{quorum} can never be met by the {listed} approvers listed")
    return ActionRule(
        action=action,
        risk=risk,
        mode=mode,
        approvers=approvers,
        quorum=quorum,
        timeout_seconds=fields.duration(
            raw.get("timeout"), f"{field}.timeout", default=3600.0, positive=True, example=_EXAMPLE
        ),
        on_timeout=on_timeout,
    )


def _limit(raw: Any, field: str) -> RateLimit | None:
    if raw is None:
        return None
    body = fields.mapping(raw, field, optional=True)
    return RateLimit(
        max_actions=fields.integer(body.get("maxActions"), f"{field}.maxActions", 0, 10000),
        window_seconds=_required_duration(body.get("window"), f"{field}.window"),
    )


_PERCENT = re.compile(r"^(100|[1-9]?[0-9])%$")


def parse(name: str, raw_spec: Mapping[str, Any]) -> Policy:
    """A RemediationPolicy's ``spec`` as a ``Policy``, or ``PolicyError`` naming the field."""
    try:
        return _parse(name, raw_spec)
    except specs.SpecError as exc:
        # The field parsers speak SpecError; a policy's callers expect PolicyError, same field.
        raise PolicyError(exc.field, exc.message) from None


def _parse(name: str, raw_spec: Mapping[str, Any]) -> Policy:
    spec = fields.mapping(raw_spec, "spec", optional=True)
    raw_actions = fields.mapping(spec.get("actions"), "spec.actions", optional=True)
    actions: dict[Action, ActionRule] = {}
    for key, body in raw_actions.items():
        action = _enum(Action, key, "spec.actions")
        actions[action] = _rule(
            action, fields.mapping(body, f"spec.actions.{key}", optional=True), f"spec.actions.{key}"
        )
    limits = fields.mapping(spec.get("rateLimits"), "spec.rateLimits", optional=True)
    blast = fields.mapping(spec.get("blastRadius"), "spec.blastRadius", optional=True)
    min_healthy = blast.get("minHealthyNodes", "51%")
    if isinstance(min_healthy, str):
        if not _PERCENT.match(min_healthy):
            raise PolicyError(
                "spec.blastRadius.minHealthyNodes", f"{min_healthy!r} is not a percentage 0%-100%"
            )
    else:
        min_healthy = fields.integer(min_healthy, "spec.blastRadius.minHealthyNodes", 0, 100000)
    breaker = fields.mapping(spec.get("circuitBreaker"), "spec.circuitBreaker", optional=True)
    return Policy(
        name=name,
        actions=actions,
        per_service=_limit(limits.get("perService"), "spec.rateLimits.perService"),
        per_namespace=_limit(limits.get("perNamespace"), "spec.rateLimits.perNamespace"),
        per_cluster=_limit(limits.get("perCluster"), "spec.rateLimits.perCluster"),
        min_healthy_nodes=min_healthy,
        max_concurrent=fields.integer(
            blast.get("maxConcurrentActions", 3), "spec.blastRadius.maxConcurrentActions", 1, 1000
        ),
        cooldown_seconds=fields.duration(
            spec.get("cooldown"), "spec.cooldown", default=300.0, positive=True, example=_EXAMPLE
        ),
        verify_seconds=fields.duration(
            spec.get("verifyWindow"), "spec.verifyWindow", default=120.0, positive=True, example=_EXAMPLE
        ),
        circuit_failures=fields.integer(breaker.get("failures", 3), "spec.circuitBreaker.failures", 1, 100),
        circuit_window_seconds=fields.duration(
            breaker.get("window"),
            "spec.circuitBreaker.window",
            default=1800.0,
            positive=True,
            example=_EXAMPLE,
        ),
    )


# --- requests, history, decisions ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ActionRequest:
    """An action the healing core wants to take.

    ``target`` is what the action touches (``Pod/ns/name``, ``Node/name``, ``ReplicatedService/ns/name``);
    ``subject`` is what is being healed (the service, or the node for node-level incidents): the
    circuit breaker counts failures per subject, so a storm of fresh pods of one failing service
    still trips it.
    """

    action: Action
    target: str
    subject: str
    namespace: str
    service: str
    cause: str


class ApprovalVerdict(enum.StrEnum):
    PENDING = "Pending"
    APPROVED = "Approved"
    DENIED = "Denied"
    EXPIRED = "Expired"


@dataclasses.dataclass(frozen=True)
class ApprovalState:
    """What the approval gate recorded for a request: its verdict and who decided."""

    verdict: ApprovalVerdict
    deciders: frozenset[str] = frozenset()
    requester: str = ""
    occurrence: str = ""  # the incident occurrence it answers (remediation.Incident.occurrence)


class ActionOutcome(enum.StrEnum):
    IN_PROGRESS = "InProgress"  # executed, being verified
    SUCCEEDED = "Succeeded"  # the symptom cleared within the verify window
    FAILED = "Failed"  # the symptom stayed, or the action itself failed


@dataclasses.dataclass(frozen=True)
class Record:
    """One executed action, as persisted in status.healing.history."""

    action: Action
    target: str
    subject: str
    namespace: str
    service: str
    at: float
    outcome: ActionOutcome

    def as_in_storage(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "target": self.target,
            "subject": self.subject,
            "namespace": self.namespace,
            "service": self.service,
            "at": self.at,
            "outcome": self.outcome.value,
        }

    @classmethod
    def from_storage(cls, raw: Any, where: str = "history[0]") -> Record:
        """A record as stored; unreadable is a ``StorageError`` naming ``where`` (the rule in
        ``core/fields.py``): a forgotten record would let rate limits and cooldowns undercount."""
        if not isinstance(raw, Mapping):
            raise fields.StorageError(f"{where} must be an object")
        try:
            return cls(
                action=Action(raw["action"]),
                target=str(raw["target"]),
                subject=str(raw["subject"]),
                namespace=str(raw["namespace"]),
                service=str(raw["service"]),
                at=float(raw["at"]),
                outcome=ActionOutcome(raw["outcome"]),
            )
        except KeyError as exc:
            raise fields.StorageError(f"{where}.{exc.args[0]} is missing") from None
        except (TypeError, ValueError) as exc:
            raise fields.StorageError(f"{where}: {exc}") from None


@dataclasses.dataclass(frozen=True)
class ClusterView:
    nodes_total: int
    nodes_ready: int


class PolicyVerdict(enum.StrEnum):
    EXECUTE = "Execute"
    NEEDS_APPROVAL = "NeedsApproval"
    DENIED = "Denied"
    THROTTLED = "Throttled"


class PolicyReason(enum.StrEnum):
    ALLOWED = "Allowed"
    APPROVED = "Approved"
    APPROVED_ON_TIMEOUT = "ApprovedOnTimeout"
    AWAITING_APPROVAL = "AwaitingApproval"
    QUORUM_NOT_MET = "QuorumNotMet"
    NOT_IN_POLICY = "NotInPolicy"
    POLICY_DENIES = "PolicyDenies"
    APPROVAL_DENIED = "ApprovalDenied"
    APPROVAL_EXPIRED = "ApprovalExpired"
    RATE_LIMIT = "RateLimit"
    COOLDOWN = "Cooldown"
    BLAST_RADIUS = "BlastRadius"
    CONCURRENCY = "Concurrency"
    CIRCUIT_OPEN = "CircuitOpen"


@dataclasses.dataclass(frozen=True)
class PolicyDecision:
    verdict: PolicyVerdict
    reason: PolicyReason
    message: str
    rule: ActionRule | None = None


def _key(scope: str, record: Record) -> str:
    if scope == "service":
        return f"{record.namespace}/{record.service}"
    if scope == "namespace":
        return record.namespace
    return ""


def _recent(history: Iterable[Record], now: float, window: float) -> list[Record]:
    return [r for r in history if now - window < r.at <= now]


def circuit_open(policy: Policy, subject: str, history: Iterable[Record], now: float) -> bool:
    failures = [
        r
        for r in _recent(history, now, policy.circuit_window_seconds)
        if r.subject == subject and r.outcome is ActionOutcome.FAILED
    ]
    return len(failures) >= policy.circuit_failures


def _min_healthy(policy: Policy, total: int) -> int:
    value = policy.min_healthy_nodes
    if isinstance(value, int):
        return value
    percent = int(value.rstrip("%"))
    return -(-percent * total // 100)  # ceiling: 51% of 3 nodes is 2, never 1


def _throttle(
    policy: Policy, request: ActionRequest, history: Sequence[Record], view: ClusterView, now: float
) -> PolicyDecision | None:
    if circuit_open(policy, request.subject, history, now):
        return PolicyDecision(
            PolicyVerdict.THROTTLED,
            PolicyReason.CIRCUIT_OPEN,
            f"{policy.circuit_failures} failed remediations of {request.subject} within "
            f"{policy.circuit_window_seconds:.0f}s: not acting automatically, a human must look",
        )
    last = [r.at for r in history if r.target == request.target and r.at <= now]
    if last and now - max(last) < policy.cooldown_seconds:
        wait = policy.cooldown_seconds - (now - max(last))
        return PolicyDecision(
            PolicyVerdict.THROTTLED,
            PolicyReason.COOLDOWN,
            f"{request.target} was acted on recently; {wait:.0f}s of cooldown left",
        )
    scopes = (
        ("service", policy.per_service, f"{request.namespace}/{request.service}"),
        ("namespace", policy.per_namespace, request.namespace),
        ("cluster", policy.per_cluster, ""),
    )
    for scope, limit, key in scopes:
        if limit is None:
            continue
        used = [r for r in _recent(history, now, limit.window_seconds) if _key(scope, r) == key]
        if len(used) >= limit.max_actions:
            return PolicyDecision(
                PolicyVerdict.THROTTLED,
                PolicyReason.RATE_LIMIT,
                f"{len(used)} actions per {scope} within {limit.window_seconds:.0f}s "
                f"(limit {limit.max_actions})",
            )
    in_flight = [r for r in history if r.outcome is ActionOutcome.IN_PROGRESS and r.at <= now]
    if len(in_flight) >= policy.max_concurrent:
        return PolicyDecision(
            PolicyVerdict.THROTTLED,
            PolicyReason.CONCURRENCY,
            f"{len(in_flight)} actions are still being verified (at most {policy.max_concurrent} at once)",
        )
    if request.action in NODE_ACTIONS:
        needed = _min_healthy(policy, view.nodes_total)
        if view.nodes_ready < needed:
            return PolicyDecision(
                PolicyVerdict.THROTTLED,
                PolicyReason.BLAST_RADIUS,
                f"only {view.nodes_ready}/{view.nodes_total} nodes are Ready; a node action needs {needed}",
            )
    return None


def decide(
    policy: Policy,
    request: ActionRequest,
    history: Sequence[Record],
    view: ClusterView,
    now: float,
    *,
    approval: ApprovalState | None = None,
) -> PolicyDecision:
    """Whether ``request`` may run now.

    Order matters: a denied action never asks anyone; a throttled one does not open an approval
    request it could not act on; an approval is honoured only if it meets the quorum with
    deciders other than the requester. Guards are checked again when an approved action is
    about to run, so an approval never bypasses a rate limit or the circuit breaker.
    """
    rule = policy.actions.get(request.action)
    if rule is None:
        return PolicyDecision(
            PolicyVerdict.DENIED,
            PolicyReason.NOT_IN_POLICY,
            f"policy {policy.name} does not list {request.action.value}",
        )
    if rule.mode is ActionMode.DENY:
        return PolicyDecision(
            PolicyVerdict.DENIED,
            PolicyReason.POLICY_DENIES,
            f"policy {policy.name} denies {request.action.value}",
            rule,
        )
    if approval is not None and approval.verdict is ApprovalVerdict.DENIED:
        return PolicyDecision(
            PolicyVerdict.DENIED,
            PolicyReason.APPROVAL_DENIED,
            f"{request.action.value} on {request.target} was denied",
            rule,
        )
    expired_approved = False
    if approval is not None and approval.verdict is ApprovalVerdict.EXPIRED:
        if rule.on_timeout is not OnTimeout.APPROVE or rule.mode is not ActionMode.APPROVE:
            return PolicyDecision(
                PolicyVerdict.DENIED,
                PolicyReason.APPROVAL_EXPIRED,
                f"nobody answered the request for {request.action.value} on {request.target} in time",
                rule,
            )
        expired_approved = True
    throttled = _throttle(policy, request, history, view, now)
    if throttled is not None:
        return dataclasses.replace(throttled, rule=rule)
    if rule.mode is ActionMode.AUTO:
        return PolicyDecision(
            PolicyVerdict.EXECUTE,
            PolicyReason.ALLOWED,
            f"policy {policy.name} allows {request.action.value}",
            rule,
        )
    if expired_approved:
        return PolicyDecision(
            PolicyVerdict.EXECUTE,
            PolicyReason.APPROVED_ON_TIMEOUT,
            "unanswered in time; the policy approves on timeout",
            rule,
        )
    if approval is None or approval.verdict is ApprovalVerdict.PENDING:
        return PolicyDecision(
            PolicyVerdict.NEEDS_APPROVAL,
            PolicyReason.AWAITING_APPROVAL,
            f"{request.action.value} on {request.target} needs {rule.quorum} approval(s)",
            rule,
        )
    valid = approval.deciders - {approval.requester} if approval.requester else approval.deciders
    if len(valid) < rule.quorum:
        return PolicyDecision(
            PolicyVerdict.NEEDS_APPROVAL,
            PolicyReason.QUORUM_NOT_MET,
            f"{len(valid)} of {rule.quorum} approvals for {request.action.value} on {request.target}",
            rule,
        )
    return PolicyDecision(
        PolicyVerdict.EXECUTE, PolicyReason.APPROVED, f"approved by {', '.join(sorted(valid))}", rule
    )


def narrowed(approvers: appr.Approvers, service_approvals: Mapping[str, Any] | None) -> appr.Approvers:
    """The policy's approvers, narrowed by a service's ``spec.approvals.approvers``.

    A service may restrict who approves its actions, never widen it: each kind of identity the
    service lists is intersected with the policy's, and kinds it leaves out keep the policy's.
    Slack user groups cannot be matched against user IDs, so listing Slack users drops them.
    """
    listed = (service_approvals or {}).get("approvers") or {}
    slack = frozenset(listed.get("slack") or ())
    kube = listed.get("kubernetes") or {}
    users, groups = frozenset(kube.get("users") or ()), frozenset(kube.get("groups") or ())
    return appr.Approvers(
        slack=approvers.slack & slack if slack else approvers.slack,
        slack_groups=frozenset() if slack else approvers.slack_groups,
        users=approvers.users & users if users else approvers.users,
        groups=approvers.groups & groups if groups else approvers.groups,
    )


def approval_timeout(rule: ActionRule, service_approvals: Mapping[str, Any] | None) -> float:
    """Seconds a request waits: the shorter of the policy's and the service's timeout."""
    raw = (service_approvals or {}).get("timeout")
    if not isinstance(raw, str):
        return rule.timeout_seconds
    try:
        seconds = fields.parse_duration(raw, "spec.approvals.timeout")
    except specs.SpecError:
        return rule.timeout_seconds
    return min(rule.timeout_seconds, seconds) if seconds > 0 else rule.timeout_seconds


def approval_target(text: str) -> appr.Target:
    """The Approval's target from a request's ``Kind/namespace/name`` (``Node/name`` for nodes)."""
    kind, _, rest = text.partition("/")
    if kind == "Node":
        return appr.Target(kind, "", rest)
    namespace, _, name = rest.partition("/")
    return appr.Target(kind, namespace, name)


def approval_request(
    request: ActionRequest,
    rule: ActionRule,
    service_approvals: Mapping[str, Any] | None,
    *,
    symptom: str,
    occurrence: str,
    now: float,
) -> appr.ApprovalRequest:
    """The Approval to open for an action the rule says needs one: the policy's approvers
    narrowed by the service's, the shorter of the two timeouts, the service's Slack channel,
    and the occurrence it answers (an answer never authorises a later occurrence)."""
    settings = service_approvals or {}
    approvers = narrowed(rule.approvers, settings)
    return appr.ApprovalRequest(
        action=request.action.value,
        target=approval_target(request.target),
        cause=request.cause,
        service=request.service,
        requester=REQUESTER,
        risk=rule.risk,
        quorum=rule.quorum,
        approvers=approvers,
        expires_at=now + approval_timeout(rule, settings),
        channel=str((settings.get("slack") or {}).get("channel") or ""),
        evidence={"symptom": symptom[:500]},
        incident=occurrence,
    )
