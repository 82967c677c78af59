"""Fake ports for handler unit tests: each records what a handler asked of it and answers from
what the test put in. Nothing here talks to a network; an answer a test did not set up is
``ports.Unavailable`` (or an empty result), so an unexpected call shows up as a visible outcome
rather than a hang.

Build a ``Runtime`` over these with ``runtime_of(...)``: a fixed clock and a pool that runs the
function inline (no worker processes).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from homeostat import ports
from homeostat.core import approval as appr
from homeostat.core import children as kids
from homeostat.handlers import runtime as rt

NOW = 1_700_000_000.0
_T = TypeVar("_T")


def run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run one test's coroutine on a fresh event loop."""
    return asyncio.run(coroutine)


# --- Workloads ---------------------------------------------------------------------------------


@dataclasses.dataclass
class FakeWorkloads:
    """``ports.Workloads``: applies return the manifest as stored; ``fail`` maps a kind (or
    ``"status"``, ``"json_patch"``, ``"delete"``) to the exception that call raises."""

    applied: list[Mapping[str, Any]] = dataclasses.field(default_factory=list)
    deleted: list[kids.ChildRef] = dataclasses.field(default_factory=list)
    patched: list[tuple[kids.Owner, Mapping[str, Any]]] = dataclasses.field(default_factory=list)
    json_patched: list[tuple[kids.ChildRef, Sequence[Mapping[str, Any]]]] = dataclasses.field(
        default_factory=list
    )
    objects: dict[kids.ChildRef, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    fail: dict[str, Exception] = dataclasses.field(default_factory=dict)

    async def apply(self, manifest: Mapping[str, Any]) -> Mapping[str, Any]:
        if manifest["kind"] in self.fail:
            raise self.fail[manifest["kind"]]
        self.applied.append(manifest)
        return manifest

    async def delete(self, ref: kids.ChildRef) -> None:
        if "delete" in self.fail:
            raise self.fail["delete"]
        self.deleted.append(ref)

    async def get(self, ref: kids.ChildRef) -> Mapping[str, Any] | None:
        return self.objects.get(ref)

    async def json_patch(self, ref: kids.ChildRef, operations: Sequence[Mapping[str, Any]]) -> None:
        if "json_patch" in self.fail:
            raise self.fail["json_patch"]
        self.json_patched.append((ref, list(operations)))

    async def patch_status(self, owner: kids.Owner, status: Mapping[str, Any]) -> None:
        if "status" in self.fail:
            raise self.fail["status"]
        self.patched.append((owner, dict(status)))

    def kinds(self) -> list[str]:
        return [m["kind"] for m in self.applied]


# --- metrics -----------------------------------------------------------------------------------


@dataclasses.dataclass
class FakeMetrics:
    """``ports.MetricsProvider`` with canned answers. ``instant_answer``/``range_answer`` is a
    tuple of samples/series, or an exception to raise; every query is recorded."""

    instant_answer: tuple[ports.Sample, ...] | Exception = ()
    range_answer: tuple[ports.Series, ...] | Exception = ()
    instant_queries: list[str] = dataclasses.field(default_factory=list)
    range_queries: list[tuple[str, float, float, float]] = dataclasses.field(default_factory=list)

    async def instant(self, query: str) -> tuple[ports.Sample, ...]:
        self.instant_queries.append(query)
        if isinstance(self.instant_answer, Exception):
            raise self.instant_answer
        return self.instant_answer

    async def range(self, query: str, start: float, end: float, step: float) -> tuple[ports.Series, ...]:
        self.range_queries.append((query, start, end, step))
        if isinstance(self.range_answer, Exception):
            raise self.range_answer
        return self.range_answer


def samples(*values: float, **labels: str) -> tuple[ports.Sample, ...]:
    return tuple(ports.Sample(dict(labels), v) for v in values)


# --- scaler, notifier, events ------------------------------------------------------------------


@dataclasses.dataclass
class FakeScaler:
    """``ports.Scaler``: records (owner, replicas); raises ``error`` when set."""

    calls: list[tuple[kids.Owner, int]] = dataclasses.field(default_factory=list)
    error: Exception | None = None

    async def scale(self, owner: kids.Owner, replicas: int) -> None:
        self.calls.append((owner, replicas))
        if self.error is not None:
            raise self.error


@dataclasses.dataclass
class FakeNotifier:
    sent: list[ports.Notification] = dataclasses.field(default_factory=list)

    async def notify(self, notification: ports.Notification) -> None:
        self.sent.append(notification)


@dataclasses.dataclass(frozen=True)
class PostedEvent:
    involved: Mapping[str, Any]
    type: str
    reason: str
    message: str


@dataclasses.dataclass
class FakeEvents:
    """``ports.EventRecorder`` recording every Event posted (the runtime posts them from a
    task of its own: ``await runtime.drain_events(1)`` before reading ``posted``)."""

    posted: list[PostedEvent] = dataclasses.field(default_factory=list)

    async def post_event(self, involved: Mapping[str, Any], type: str, reason: str, message: str) -> None:
        self.posted.append(PostedEvent(dict(involved), type, reason, message))

    def reasons(self) -> list[str]:
        return [e.reason for e in self.posted]

    def of(self, reason: str) -> list[PostedEvent]:
        return [e for e in self.posted if e.reason == reason]


# --- healing -----------------------------------------------------------------------------------


@dataclasses.dataclass
class FakeHealing:
    """``ports.HealingActions``: records each action as a tuple; ``error`` makes every action
    raise; ``approvals`` are the Approval objects ``approval`` returns, by (namespace, name)."""

    calls: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    error: Exception | None = None
    approvals: dict[tuple[str, str], Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    def _do(self, *call: Any) -> None:
        self.calls.append(call)
        if self.error is not None:
            raise self.error

    async def delete_pod(self, namespace: str, name: str, *, force: bool) -> bool:
        self._do("delete_pod", namespace, name, force)
        return True

    async def cordon(self, node: str) -> None:
        self._do("cordon", node)

    async def drain(self, node: str) -> ports.Drained:
        self._do("drain", node)
        return ports.Drained(evicted=1)

    async def scale(self, namespace: str, service: str, replicas: int) -> None:
        self._do("scale", namespace, service, replicas)

    async def set_memory_limit(self, namespace: str, service: str, container: str, limit: str) -> None:
        self._do("set_memory_limit", namespace, service, container, limit)

    async def rollback(self, namespace: str, service: str, command_id: str) -> None:
        self._do("rollback", namespace, service, command_id)

    async def approval(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self.approvals.get((namespace, name))


@dataclasses.dataclass
class FakeGate:
    """``ports.ApprovalGate``: ``request`` answers ``phase`` (or raises ``error``); every request
    and recorded outcome is kept."""

    phase: appr.ApprovalPhase = appr.ApprovalPhase.PENDING
    error: Exception | None = None
    name: str = "restartpod-web-1"
    requests: list[tuple[str, appr.ApprovalRequest]] = dataclasses.field(default_factory=list)
    outcomes: list[tuple[ports.ApprovalTicket, appr.ActionResult, str]] = dataclasses.field(
        default_factory=list
    )

    async def request(self, namespace: str, request: appr.ApprovalRequest) -> ports.ApprovalTicket:
        self.requests.append((namespace, request))
        if self.error is not None:
            raise self.error
        return ports.ApprovalTicket(namespace, self.name, self.phase, "")

    async def find(
        self, namespace: str, action: str, target: appr.Target, cause: str, incident: str
    ) -> ports.ApprovalTicket | None:
        return None

    async def record_outcome(
        self, ticket: ports.ApprovalTicket, result: appr.ActionResult, message: str
    ) -> None:
        self.outcomes.append((ticket, result, message))


# --- the runtime -------------------------------------------------------------------------------


class InlinePool:
    """Stands in for ``rt.ProcessPool``: runs the function in this process, at once."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def compute(self, func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        self.calls.append(getattr(func, "__name__", repr(func)))
        return func(*args, **kwargs)

    def shutdown(self) -> None:
        pass


async def _no_credentials() -> ports.Credentials:
    raise ports.Unavailable("no credentials in a unit test")


def runtime_of(workloads: FakeWorkloads | None = None, **ports_: Any) -> rt.Runtime:
    """A ``Runtime`` over fakes: a fixed clock (``NOW``), an inline pool, recorded Events; any
    port or field can be passed by its name."""
    ports_.setdefault("events", FakeEvents())
    ports_.setdefault("clock", lambda: NOW)
    ports_.setdefault("pool", InlinePool())
    ports_.setdefault("credentials", _no_credentials)
    return rt.Runtime(workloads=workloads or FakeWorkloads(), **ports_)


async def posted(runtime: rt.Runtime) -> list[PostedEvent]:
    """The Events the runtime posted so far, once its queue is drained."""
    await runtime.drain_events(1.0)
    events = runtime.events
    assert isinstance(events, FakeEvents)
    return list(events.posted)


def indexes(*bodies: Mapping[str, Any], **more: Any) -> dict[str, Any]:
    """kopf's indexes as plain dicts: ``services`` by (namespace, name) -> [body], and empty
    stores for the others unless given."""
    result: dict[str, Any] = {
        "services": {(b["metadata"]["namespace"], b["metadata"]["name"]): [b] for b in bodies},
        "healing_pods": {},
        "healing_nodes": {},
        "healing_policies": {},
        "children_deployments": {},
        "children_services": {},
        "children_poddisruptionbudgets": {},
        "revisions": {},
    }
    result.update(more)
    return result


TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"app": "web"}},
    "spec": {
        "containers": [
            {"name": "app", "image": "registry.example/web:1", "resources": {"limits": {"memory": "128Mi"}}}
        ]
    },
}


def service(
    *,
    name: str = "web",
    namespace: str = "prod",
    uid: str = "uid-web",
    generation: int = 1,
    status: Mapping[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A ReplicatedService body; ``spec`` keys are merged over a one-container template."""
    return {
        "apiVersion": kids.API_VERSION,
        "kind": kids.KIND,
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "generation": generation},
        "spec": {"template": TEMPLATE, **spec},
        "status": dict(status or {}),
    }


# --- approvals ---------------------------------------------------------------------------------


def _merge(old: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch: None removes a key, objects merge key by key."""
    merged = dict(old)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclasses.dataclass
class FakeStore:
    """``ports.ApprovalStore`` over a dict of Approval bodies by (namespace, name): status writes
    merge, move the resourceVersion on, and check the one they were given; ``conflicts`` makes
    that many writes fail with ``ports.Conflict`` first, ``error`` makes every write raise."""

    bodies: dict[tuple[str, str], dict[str, Any]] = dataclasses.field(default_factory=dict)
    writes: list[tuple[str, Mapping[str, Any], str | None]] = dataclasses.field(default_factory=list)
    conflicts: int = 0
    error: Exception | None = None

    async def get(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        body = self.bodies.get((namespace, name))
        return copy.deepcopy(body) if body is not None else None

    async def create(self, manifest: Mapping[str, Any]) -> Mapping[str, Any]:
        raise ports.Unavailable("creating is not part of these tests")

    async def patch_status(
        self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None
    ) -> Mapping[str, Any]:
        self.writes.append((name, copy.deepcopy(dict(status)), resource_version))
        if self.error is not None:
            raise self.error
        body = self.bodies[(namespace, name)]
        if self.conflicts > 0:
            self.conflicts -= 1
            body["metadata"]["resourceVersion"] = str(int(body["metadata"]["resourceVersion"]) + 1)
            raise ports.Conflict("the object has been modified")
        if resource_version is not None and resource_version != body["metadata"]["resourceVersion"]:
            raise ports.Conflict("resourceVersion moved on")
        body["status"] = _merge(body.get("status") or {}, status)
        body["metadata"]["resourceVersion"] = str(int(body["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(body)

    async def post_event(self, involved: Mapping[str, Any], type: str, reason: str, message: str) -> None:
        raise AssertionError("the runtime posts Events through its events port")

    def status(self, name: str, namespace: str = "prod") -> Mapping[str, Any]:
        return self.bodies[(namespace, name)].get("status") or {}


def approval(
    name: str = "restartpod-web-1",
    *,
    users: frozenset[str] = frozenset({"alice"}),
    slack_users: frozenset[str] = frozenset(),
    expires_at: float = NOW + 600,
    status: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An Approval body about the ``web`` service, owned by it."""
    request = appr.ApprovalRequest(
        action="RestartPod",
        target=appr.Target("Pod", "prod", "web-1"),
        cause="PodFailed",
        service="web",
        requester="homeostat",
        risk=appr.Risk.MEDIUM,
        quorum=1,
        approvers=appr.Approvers(users=users, slack=slack_users),
        expires_at=expires_at,
    )
    return {
        "apiVersion": appr.API_VERSION,
        "kind": appr.KIND,
        "metadata": {
            "name": name,
            "namespace": "prod",
            "uid": f"uid-{name}",
            "resourceVersion": "1",
            "ownerReferences": [{"kind": kids.KIND, "name": "web", "uid": "uid-web"}],
        },
        "spec": request.as_spec(),
        "status": dict(status or {}),
    }


@dataclasses.dataclass
class FakeMessenger:
    """``ports.ApprovalMessenger`` (configured): ``verdict`` is what ``verify`` says, ``click``
    what ``parse_click`` finds; posts, updates and replies are recorded."""

    verdict: ports.Verification = ports.Verification.VALID
    click: ports.Click | None = None
    channel: str = ""
    posts: list[appr.Ref] = dataclasses.field(default_factory=list)
    updates: list[tuple[appr.Ref, appr.ApprovalPhase]] = dataclasses.field(default_factory=list)
    replies: list[str] = dataclasses.field(default_factory=list)

    async def post(self, ref: appr.Ref, request: appr.ApprovalRequest, state: appr.State) -> ports.MessageRef:
        self.posts.append(ref)
        return ports.MessageRef("C1", "1.0")

    async def find(
        self, ref: appr.Ref, request: appr.ApprovalRequest, since: float
    ) -> ports.MessageRef | None:
        return None

    async def update(
        self, message: ports.MessageRef, ref: appr.Ref, request: appr.ApprovalRequest, state: appr.State
    ) -> None:
        self.updates.append((ref, state.phase))

    async def reply(self, response_url: str, text: str) -> None:
        self.replies.append(text)

    def verify(self, body: bytes, headers: Mapping[str, str]) -> ports.Verification:
        return self.verdict

    def parse_click(self, body: bytes) -> ports.Click | None:
        return self.click

    async def member_groups(self, user: str, groups: frozenset[str]) -> frozenset[str]:
        return frozenset()
