"""kopf wiring for ReplicatedService: every event, child change and resync runs one reconcile.

The reconcile is level-based: it reads the service from the event (or the index, for child
events), asks the core what to apply, applies it, and reports status. No progress is stored in
annotations, so any operator process can pick up where another stopped.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import dataclasses
import datetime
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import kopf

from homeostat import ports
from homeostat.core import analysis as an
from homeostat.core import children as kids
from homeostat.core import delivery as dl
from homeostat.core import reconcile as rec
from homeostat.core import rollout as ro
from homeostat.core import spec as specs
from homeostat.core import validation

RSVC = (kids.GROUP, kids.VERSION, "replicatedservices")
CHILD_KINDS = {
    ("apps", "v1", "deployments"): ("apps/v1", "Deployment"),
    ("", "v1", "services"): ("v1", "Service"),
    ("policy", "v1", "poddisruptionbudgets"): ("policy/v1", "PodDisruptionBudget"),
}
MANAGED = {kids.LABEL_MANAGED_BY: kids.MANAGER}

Key = tuple[str, str]


class Runtime:
    """Per-process collaborators, put into kopf's memo by the CLI at startup."""

    def __init__(
        self,
        workloads: ports.Workloads,
        credentials: Callable[[], Awaitable[ports.Credentials]],
        *,
        resync_seconds: float = 60.0,
        metrics: ports.MetricsProvider | None = None,
        notifier: ports.Notifier | None = None,
        telemetry: ports.Telemetry | None = None,
    ) -> None:
        self.workloads = workloads
        self.telemetry: ports.Telemetry = telemetry or ports.NopTelemetry()
        # None means "not configured": metric-driven features report that instead of guessing.
        self.metrics = metrics
        self.notifier = notifier
        self.resync_seconds = resync_seconds
        self.credentials = credentials
        self.locks: collections.defaultdict[Key, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        # The status we last wrote, per object uid: an event may carry a body older than our
        # own last patch, and judging transitions against it would repeat Events.
        self.reported: dict[str, Mapping[str, Any]] = {}
        self.resync_task: asyncio.Task[None] | None = None
        # Rollout analysis runs apart from reconciles (a slow query never holds the lock); the
        # latest result waits here, per object uid, for the next reconcile to consume it.
        self.measured: dict[str, dl.Measured] = {}
        self.analyses: dict[str, asyncio.Task[None]] = {}
        self.wakeups: dict[Key, asyncio.TimerHandle] = {}
        self.settled: dict[Key, dict[str, ro.TrackView]] = {}  # per service, see delivery.track_view
        self.background: set[asyncio.Task[None]] = set()  # referenced, or the loop may drop them


def owner_of(body: Mapping[str, Any]) -> kids.Owner:
    meta = body["metadata"]
    return kids.Owner(meta["name"], meta["namespace"], meta["uid"])


async def write_status(
    runtime: Runtime,
    body: Mapping[str, Any],
    changes: Mapping[str, Any],
    conditions: Sequence[Mapping[str, Any]] = (),
) -> bool:
    """Merge one writer's own status keys and condition types into the service's status.

    For writers other than the reconcile (autoscaler, healing, approvals). Under the service's
    lock and starting from what this process last wrote, so two writers never erase each
    other's keys or conditions. Returns whether anything was patched.
    """
    owner = owner_of(body)
    async with runtime.locks[(owner.namespace, owner.name)]:
        previous = runtime.reported.get(owner.uid) or body.get("status") or {}
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        status = {**previous, **changes}
        if conditions:
            status["conditions"] = rec.merge_conditions(previous.get("conditions") or [], conditions, now)
        patch = {k: _replacing(previous.get(k), v) for k, v in status.items() if previous.get(k) != v}
        if not patch:
            return False
        await runtime.workloads.patch_status(owner, patch)
        runtime.reported[owner.uid] = status
        return True


def _replacing(old: Any, new: Any) -> Any:
    """The merge-patch value that leaves exactly ``new`` on the server where ``old`` was. A
    merge patch merges objects key by key, so a key that ``new`` dropped is sent as null: else
    a stale ``status.forecast.fallback`` outlived the untrusted forecast it was about."""
    if not (isinstance(old, Mapping) and isinstance(new, Mapping)):
        return new
    dropped = {key: None for key in old if key not in new}
    return {**dropped, **{key: _replacing(old.get(key), value) for key, value in new.items()}}


def _runtime(memo: Any) -> Runtime:
    runtime = memo.get("runtime")
    if not isinstance(runtime, Runtime):
        raise kopf.PermanentError("homeostat runtime missing from memo; start with `homeostat run`")
    return runtime


@kopf.on.login()
async def login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
    """kopf's client uses exactly the configuration the CLI loaded and checked (flag, in-cluster
    or env), as data; kopf logs in again after a 401 and when ``expiration`` passes."""
    try:
        creds = await _runtime(memo).credentials()
    except ports.Unavailable as exc:
        raise kopf.TemporaryError(str(exc), delay=10) from None  # e.g. a failing plugin
    return kopf.ConnectionInfo(
        server=creds.server,
        ca_data=creds.ca_data,
        insecure=creds.insecure,
        scheme="Bearer" if creds.token else None,
        token=creds.token,
        certificate_data=creds.certificate_data,
        private_key_data=creds.private_key_data,
        proxy_url=creds.proxy_url,
        trust_env=True,  # HTTPS_PROXY/NO_PROXY, as the operator's own calls read them
        default_namespace=creds.namespace,
        expiration=creds.expiration,
    )


_KEPT_METADATA = ("name", "namespace", "uid", "generation", "resourceVersion", "labels", "annotations")


def _slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """What reconcile reads of an object; managedFields alone can be most of a body's size."""
    meta = body.get("metadata") or {}
    slim = {k: copy.deepcopy(body[k]) for k in ("apiVersion", "kind", "spec", "status") if k in body}
    slim["metadata"] = {k: copy.deepcopy(meta[k]) for k in _KEPT_METADATA if k in meta}
    if meta.get("deletionTimestamp"):
        slim["metadata"]["deletionTimestamp"] = meta["deletionTimestamp"]
    refs = meta.get("ownerReferences") or []
    slim["metadata"]["ownerReferences"] = [{"uid": ref.get("uid")} for ref in refs]
    return slim


# Index functions are async, cheap and never wait: kopf runs sync handlers in worker threads, and
# each thread that allocates grows its own malloc arena (ADR 0016).
@kopf.index(*RSVC)  # type: ignore[arg-type]
async def services(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    return {(namespace, name): _slim(body)}


async def _child_index(
    *, namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str | None, str, str], Any]:
    return {(namespace, name, body["kind"]): _slim(body)}


for _group, _version, _plural in CHILD_KINDS:
    kopf.index(_group, _version, _plural, labels=MANAGED, id=f"children_{_plural}")(_child_index)


@kopf.index("apps", "v1", "controllerrevisions", labels=MANAGED)
async def revisions(namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> Any:
    """Pod templates of past revisions, so a rollout can bring the stable one back."""
    service = labels.get(kids.LABEL_SERVICE)
    if not service:
        return None
    meta = body.get("metadata") or {}
    slim = {
        "metadata": {
            "name": meta.get("name"),
            "labels": dict(meta.get("labels") or {}),
            "ownerReferences": [{"uid": ref.get("uid")} for ref in meta.get("ownerReferences") or []],
        },
        "data": copy.deepcopy(body.get("data")),
        "revision": body.get("revision"),
    }
    return {(namespace, service): slim}


def latest(store: Any) -> Any:
    """The newest body a kopf index holds under one key, or None."""
    values = list(store) if store is not None else []
    return values[-1] if values else None


_PLURALS = {kind: plural for (_group, _version, plural), (_api, kind) in CHILD_KINDS.items()}


def _child(owner: kids.Owner, indexes: Mapping[str, Any], kind: str, name: str) -> Mapping[str, Any] | None:
    """A child of ``owner`` from the watch cache, None when absent or owned by someone else."""
    body = latest(indexes[f"children_{_PLURALS[kind]}"].get((owner.namespace, name, kind)))
    return kids.owned_by(owner, body)


def _observed(owner: kids.Owner, indexes: Mapping[str, Any]) -> dict[kids.ChildRef, Mapping[str, Any] | None]:
    observed: dict[kids.ChildRef, Mapping[str, Any] | None] = {}
    for api_version, kind in CHILD_KINDS.values():
        observed[kids.ChildRef(api_version, kind, owner.namespace, owner.name)] = _child(
            owner, indexes, kind, owner.name
        )
    return observed


def _event_target(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {
        "apiVersion": kids.API_VERSION,
        "kind": kids.KIND,
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
    }


async def reconcile(
    body: Mapping[str, Any], memo: Any, indexes: Mapping[str, Any], logger: Any, *, verify: bool = False
) -> None:
    meta = body["metadata"]
    if meta.get("deletionTimestamp"):
        return  # children go with their owner through garbage collection
    owner = kids.Owner(meta["name"], meta["namespace"], meta["uid"])
    runtime = _runtime(memo)
    await _default_desired(owner, body, runtime, logger)
    started = time.monotonic()
    outcome = "error"
    try:
        async with runtime.locks[(owner.namespace, owner.name)]:
            await _reconcile_locked(owner, body, runtime, indexes, logger, verify=verify)
        phase = (runtime.reported.get(owner.uid) or {}).get("phase")
        outcome = "invalid" if phase == rec.Phase.INVALID_SPEC.value else "ok"
    finally:
        runtime.telemetry.reconciled(owner.namespace, owner.name, time.monotonic() - started, outcome)
        runtime.telemetry.pending("rollout_wakeups", len(runtime.wakeups))
        runtime.telemetry.pending("rollout_analyses", sum(not t.done() for t in runtime.analyses.values()))


async def _default_desired(owner: kids.Owner, body: Mapping[str, Any], runtime: Runtime, logger: Any) -> None:
    """Give an unset ``spec.replicas.desired`` its meaning (``min``), so the scale subresource
    (an HPA, ``kubectl get --subresource=scale``) works on every service."""
    operations = specs.default_desired(body.get("spec") or {}, body["metadata"].get("resourceVersion"))
    if operations is None:
        return
    ref = kids.ChildRef(kids.API_VERSION, kids.KIND, owner.namespace, owner.name)
    try:
        await runtime.workloads.json_patch(ref, operations)
        logger.info(f"spec.replicas.desired defaulted to spec.replicas.min ({operations[-1]['value']})")
    except (ports.Rejected, ports.Unavailable) as exc:
        # Changed meanwhile (the test failed) or gone: the event of that change comes next.
        logger.debug(f"spec.replicas.desired not defaulted: {exc}")


async def _reconcile_locked(
    owner: kids.Owner,
    body: Mapping[str, Any],
    runtime: Runtime,
    indexes: Mapping[str, Any],
    logger: Any,
    *,
    verify: bool,
) -> None:
    generation = int(body["metadata"].get("generation", 0))
    previous = runtime.reported.get(owner.uid) or body.get("status") or {}
    observed = _observed(owner, indexes)
    deployment_ref = kids.ChildRef("apps/v1", "Deployment", owner.namespace, owner.name)
    planned = await _plan(owner, body, previous=previous, observed=observed, runtime=runtime, indexes=indexes)
    spec, applies, deletes = planned.spec, planned.applies, planned.deletes
    delivery, rolling = planned.delivery, planned.rolling
    outcome = await _execute(runtime, applies, deletes, logger)
    if delivery is not None and delivery.plan.route is not None and not outcome.errors:
        await _patch_route(runtime, owner, delivery.plan.route, outcome, logger)
    deployment = outcome.applied.get(deployment_ref) or observed.get(deployment_ref)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    result = rec.report(
        owner=owner,
        generation=generation,
        spec=spec,
        applies=applies,
        outcome=outcome,
        deployment=deployment,
        previous=previous,
        now=now,
        view=None if delivery is None else delivery.plan.view,
        degraded_by=delivery.degraded_by
        if delivery is not None
        else rolling.degraded_by
        if rolling
        else None,
    )
    status = dict(result.status)
    if delivery is not None:
        status = delivery.status(status, now)
    elif rolling is not None:
        status["rollback"] = rolling.rollback
    # Event bodies often predate our own last status write; comparing with them would rewrite
    # the same status over and over. The periodic resync (verify) checks the stored status.
    written = runtime.reported.get(owner.uid)
    baseline = body.get("status") or {} if verify or written is None else written
    patch = rec.status_changed(baseline, status)
    if patch:
        await runtime.workloads.patch_status(owner, status)
    outcome_text = "patched" if patch else "unchanged"
    logger.debug(f"reconciled {owner.namespace}/{owner.name}: {len(applies)} applied, status {outcome_text}")
    runtime.reported[owner.uid] = status
    events = [(e.type, e.reason, e.message) for e in result.events]
    if rolling is not None and rolling.event is not None:
        events.append((rolling.event.type, rolling.event.reason, rolling.event.message))
    if delivery is not None:
        # One-shot actions go out only after the state that records them is stored: a crash
        # in between loses a message rather than sending it twice after the restart.
        events.extend((e.type, e.reason, e.message) for e in delivery.plan.events)
        await _notify(runtime, owner, delivery.plan, logger)
        state = delivery.plan.state
        runtime.telemetry.rollout(owner.namespace, owner.name, state.phase.value, state.achieved_weight)
        if delivery.analysed is not None:
            runtime.telemetry.analysis(owner.namespace, owner.name, delivery.analysed.value)
        _follow_up(runtime, owner, delivery, indexes=indexes, logger=logger)
    target = _event_target(body)
    for type_, reason, message in events:
        kopf.event(kopf.Body(cast(kopf.RawBody, target)), type=type_, reason=reason, message=message)
        log = logger.warning if type_ == "Warning" else logger.info
        log(f"{reason}: {message}")
    if outcome.errors:
        # Transient API trouble: let kopf back off and retry instead of waiting for a resync.
        raise kopf.TemporaryError("; ".join(outcome.errors.values()), delay=5)


@dataclasses.dataclass(frozen=True)
class _Planned:
    spec: specs.ServiceSpec | specs.SpecError  # the spec children were built from
    applies: tuple[rec.Apply, ...] = ()
    deletes: tuple[kids.ChildRef, ...] = ()
    delivery: _Delivery | None = None  # Canary and BlueGreen
    rolling: dl.RollingPlan | None = None  # RollingUpdate


async def _plan(
    owner: kids.Owner,
    body: Mapping[str, Any],
    *,
    previous: Mapping[str, Any],
    observed: Mapping[kids.ChildRef, Mapping[str, Any] | None],
    runtime: Runtime,
    indexes: Mapping[str, Any],
) -> _Planned:
    try:
        # Every block, not only the ones this reconcile uses: an invalid block must show on
        # Degraded and in the phase, not only on its own loop's condition (issue 14.8).
        spec = validation.parse(body.get("spec") or {})
        if spec.strategy is not specs.Strategy.ROLLING_UPDATE:
            delivery = await _plan_delivery(
                owner, body, spec, previous=previous, runtime=runtime, indexes=indexes
            )
            return _Planned(spec, delivery.plan.applies, delivery.plan.deletes, delivery=delivery)
        rolling = await _plan_rolling(owner, body, spec, previous=previous, runtime=runtime, indexes=indexes)
    except specs.SpecError as exc:
        return _Planned(exc)
    applies = rec.plan(owner, rolling.spec, observed)
    if rolling.keep_revision is not None:
        applies = (*applies, rec.Apply(rolling.keep_revision, rec.Reason.CREATED))
    return _Planned(rolling.spec, applies, rec.stale_children(owner, rolling.spec, observed), rolling=rolling)


async def _execute(
    runtime: Runtime, applies: Sequence[rec.Apply], deletes: Sequence[kids.ChildRef], logger: Any
) -> rec.Outcome:
    applied: dict[kids.ChildRef, Mapping[str, Any]] = {}
    errors: dict[kids.ChildRef, str] = {}
    rejected: dict[kids.ChildRef, str] = {}
    for apply in applies:
        try:
            applied[apply.ref] = await runtime.workloads.apply(apply.manifest)
            logger.info(f"{apply.reason.value.lower()} {apply.ref}")
        except ports.Rejected as exc:
            rejected[apply.ref] = str(exc)
        except ports.Unavailable as exc:
            errors[apply.ref] = str(exc)
    if errors or rejected:
        # Actions are ordered (capacity before traffic, traffic before deletion): after a
        # failure the rest waits for the next reconcile, which re-plans from what exists.
        return rec.Outcome(applied, errors, rejected)
    for ref in deletes:
        try:
            await runtime.workloads.delete(ref)
            logger.info(f"deleted {ref}: no longer wanted")
        except ports.Unavailable as exc:
            errors[ref] = str(exc)
    return rec.Outcome(applied, errors, rejected)


# --- progressive delivery --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Delivery:
    plan: dl.Plan
    degraded_by: tuple[str, str] | None
    analysed: an.Verdict | None = None  # the verdict of an analysis run this step recorded

    def status(self, status: Mapping[str, Any], now: str) -> dict[str, Any]:
        state = self.plan.state
        merged = {**status, **self.plan.status}
        if state.stable_revision:
            merged["stableRevision"] = state.stable_revision
        phase = dl.status_phase(state)
        if phase is not None and status.get("phase") != rec.Phase.INVALID_SPEC.value:
            merged["phase"] = phase
        condition = self.plan.condition
        merged["conditions"] = rec.merge_conditions(
            status.get("conditions") or [],
            [
                {
                    "type": condition.type,
                    "status": condition.status,
                    "reason": condition.reason,
                    "message": condition.message,
                }
            ],
            now,
        )
        return merged


async def _plan_delivery(
    owner: kids.Owner,
    body: Mapping[str, Any],
    spec: specs.ServiceSpec,
    *,
    previous: Mapping[str, Any],
    runtime: Runtime,
    indexes: Mapping[str, Any],
) -> _Delivery:
    rollout_spec = ro.parse_rollout_spec((body.get("spec") or {}).get("rollout"))
    try:
        state = ro.RolloutState.from_storage(previous.get("rollout"))
    except an.StorageError as exc:
        raise specs.SpecError("status.rollout", f"cannot be read ({exc}); fix or clear it") from None
    command = dl.parse_command((body.get("metadata") or {}).get("annotations"))
    world = await _world(owner, rollout_spec, runtime, indexes)
    measured = runtime.measured.get(owner.uid)
    obs = dl.observe(
        owner,
        spec,
        world,
        recorded_active=previous.get("activeRevision"),
        measured=measured,
        analysis_available=runtime.metrics is not None,
        command=command,
    )
    plan = dl.plan(owner, spec, rollout_spec, state=state, world=world, obs=obs, now=time.time())
    degraded_by: tuple[str, str] | None = None
    if plan.problems:
        degraded_by = (rec.Reason.APPLY_FAILED.value, "; ".join(plan.problems))
    elif plan.state.phase is ro.Phase.ROLLED_BACK:
        failure = plan.state.failure
        detail = failure.message if failure is not None else "analysis failed"
        degraded_by = (
            rec.Reason.ROLLED_BACK.value,
            f"revision {plan.state.revision} was rolled back: {detail}",
        )
    recorded = plan.state.analysis.runs > state.analysis.runs
    return _Delivery(plan, degraded_by, plan.state.analysis.last_verdict if recorded else None)


async def _plan_rolling(
    owner: kids.Owner,
    body: Mapping[str, Any],
    spec: specs.ServiceSpec,
    *,
    previous: Mapping[str, Any],
    runtime: Runtime,
    indexes: Mapping[str, Any],
) -> dl.RollingPlan:
    command = dl.parse_command((body.get("metadata") or {}).get("annotations"))
    world = await _world(owner, ro.RolloutSpec(), runtime, indexes)
    return dl.rolling_update(
        spec,
        stable_revision=previous.get("stableRevision"),
        rollback=previous.get("rollback"),
        command=command,
        world=world,
        owner=owner,
        now=time.time(),
    )


async def _world(
    owner: kids.Owner, rollout_spec: ro.RolloutSpec, runtime: Runtime, indexes: Mapping[str, Any]
) -> dl.World:
    def child(kind: str, name: str) -> Mapping[str, Any] | None:
        return _child(owner, indexes, kind, name)

    names = [
        owner.name,
        owner.name + dl.PREVIEW_SUFFIX,
        f"{owner.name}-stable",
        f"{owner.name}-{dl.TRACK_CANARY}",
    ]
    route = None
    if rollout_spec.traffic.type is ro.Routing.GATEWAY_API and rollout_spec.traffic.http_route:
        ref = kids.ChildRef(
            "gateway.networking.k8s.io/v1", "HTTPRoute", owner.namespace, rollout_spec.traffic.http_route
        )
        route = await runtime.workloads.get(ref)
    kept = [
        b for b in indexes["revisions"].get((owner.namespace, owner.name)) or [] if kids.owned_by(owner, b)
    ]
    world = dl.World(
        stable=child("Deployment", owner.name),
        canary=child("Deployment", kids.track_name(owner, dl.TRACK_CANARY)),
        services={name: child("Service", name) for name in names},
        pdb=child("PodDisruptionBudget", owner.name),
        route=route,
        revisions=dl.revisions_by_name(kept),
        settled=runtime.settled.get((owner.namespace, owner.name), {}),
    )
    runtime.settled[(owner.namespace, owner.name)] = dl.settled_views(owner, world)
    return world


async def _patch_route(
    runtime: Runtime, owner: kids.Owner, route: dl.RoutePatch, outcome: rec.Outcome, logger: Any
) -> None:
    ref = kids.ChildRef("gateway.networking.k8s.io/v1", "HTTPRoute", owner.namespace, route.name)
    try:
        await runtime.workloads.json_patch(ref, route.operations)
        logger.info(f"set the backend weights of {ref}")
    except ports.Rejected as exc:
        cast(dict[kids.ChildRef, str], outcome.rejected)[ref] = str(exc)
    except ports.Unavailable as exc:
        cast(dict[kids.ChildRef, str], outcome.errors)[ref] = str(exc)


async def _notify(runtime: Runtime, owner: kids.Owner, plan: dl.Plan, logger: Any) -> None:
    for notify in plan.notifications:
        severity = {
            ro.NotifyKind.FAILED: "critical",
            ro.NotifyKind.NEEDS_DECISION: "warning",
            ro.NotifyKind.PROMOTED: "info",
        }[notify.kind]
        note = ports.Notification(
            namespace=owner.namespace,
            service=owner.name,
            kind=notify.kind.value,
            severity=severity,
            title=f"{owner.namespace}/{owner.name}: {notify.kind.value}",
            message=notify.message,
            key=f"{owner.uid}/{plan.state.revision}/{notify.kind.value}",
        )
        logger.info(f"notification {note.kind}: {note.message}")
        if runtime.notifier is None:
            continue
        try:
            await runtime.notifier.notify(note)
        except ports.Unavailable as exc:
            logger.warning(f"notification {note.kind} not delivered: {exc}")


def _follow_up(
    runtime: Runtime,
    owner: kids.Owner,
    delivery: _Delivery,
    *,
    indexes: Mapping[str, Any],
    logger: Any,
) -> None:
    """Start a requested analysis, and come back when the rollout next has something to do."""
    plan = delivery.plan
    request = plan.analysis
    running = runtime.analyses.get(owner.uid)
    if request is not None and (running is None or running.done()) and runtime.metrics is not None:
        runtime.analyses[owner.uid] = asyncio.create_task(
            _analyse(runtime, owner, request, runtime.metrics, indexes=indexes, logger=logger)
        )
    live = plan.state.phase in (*ro.LIVE, ro.Phase.ROLLING_BACK, ro.Phase.INITIALIZING)
    if live and not plan.state.held:
        # Pauses and analysis intervals are counted in seconds; a short poll while a rollout
        # is live is simpler and as cheap as tracking each deadline.
        _wake_later(runtime, (owner.namespace, owner.name), 1.0, indexes, logger)


def _wake_later(runtime: Runtime, key: Key, delay: float, indexes: Mapping[str, Any], logger: Any) -> None:
    if key in runtime.wakeups:
        return
    loop = asyncio.get_running_loop()

    def fire() -> None:
        runtime.wakeups.pop(key, None)
        body = latest(indexes["services"].get(key))
        if body is not None:
            task = asyncio.create_task(_reconcile_quietly(body, runtime, indexes, logger))
            runtime.background.add(task)
            task.add_done_callback(runtime.background.discard)

    runtime.wakeups[key] = loop.call_later(delay, fire)


async def _reconcile_quietly(
    body: Mapping[str, Any], runtime: Runtime, indexes: Mapping[str, Any], logger: Any
) -> None:
    try:
        await reconcile(body, {"runtime": runtime}, indexes, logger)
    except kopf.TemporaryError as exc:
        logger.warning(f"{body['metadata']['namespace']}/{body['metadata']['name']}: {exc}")
        _wake_later(runtime, (body["metadata"]["namespace"], body["metadata"]["name"]), 5.0, indexes, logger)
    except Exception:  # a wake-up must never take the event loop's other work down with it
        logger.exception("rollout wake-up failed")


async def _analyse(
    runtime: Runtime,
    owner: kids.Owner,
    request: ro.RunAnalysis,
    metrics: ports.MetricsProvider,
    *,
    indexes: Mapping[str, Any],
    logger: Any,
) -> None:
    """Query every metric of ``request`` and hand the results to the next reconcile."""
    started = time.time()
    values = {"service": owner.name, "namespace": owner.namespace, "revision": request.revision}
    results = await asyncio.gather(*(_measure(metrics, m, values, started) for m in request.metrics))
    runtime.measured[owner.uid] = dl.Measured(request.revision, started, tuple(results))
    logger.debug(f"analysis of {request.revision}: {[(m.metric, m.value, m.error) for m in results]}")
    body = latest(indexes["services"].get((owner.namespace, owner.name)))
    if body is not None:
        await _reconcile_quietly(body, runtime, indexes, logger)


async def _measure(
    metrics: ports.MetricsProvider, metric: an.MetricSpec, values: Mapping[str, str], at: float
) -> an.Measurement:
    query = metric.query
    for key, text in values.items():
        query = query.replace("{{" + key + "}}", text)
    try:
        samples = await metrics.instant(query)
    except ports.Unavailable as exc:
        return an.Measurement(metric.name, error=str(exc), at=at)
    if not samples:
        return an.Measurement(metric.name, at=at)  # no data: inconclusive, never a pass
    if len(samples) > 1:
        return an.Measurement(
            metric.name, error=f"the query returned {len(samples)} series; aggregate it to one", at=at
        )
    value = samples[0].value
    return an.Measurement(metric.name, value=None if math.isnan(value) else value, at=at)


@kopf.on.event(*RSVC)  # type: ignore[arg-type]
async def service_changed(
    type: str | None, body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **kwargs: Any
) -> None:
    runtime = _runtime(memo)
    if runtime.resync_task is None:
        # Started here, not at startup: a task inherits its creator's context, and only a
        # handler's context lets kopf.event post. Wake-ups scheduled by resyncs inherit it too.
        runtime.resync_task = asyncio.create_task(_resync_forever(memo, kwargs, logger))
    if type == "DELETED":
        runtime.reported.pop(body["metadata"]["uid"], None)
        runtime.measured.pop(body["metadata"]["uid"], None)
        runtime.settled.pop((body["metadata"]["namespace"], body["metadata"]["name"]), None)
        runtime.telemetry.forget(body["metadata"]["namespace"], body["metadata"]["name"])
        return
    await reconcile(body, memo, kwargs, logger)


@kopf.on.startup()
async def check_indexes(*, memo: Any, **kwargs: Any) -> None:
    """The resync reads the services index; fail at once if kopf does not provide it."""
    _runtime(memo)
    if "services" not in kwargs:
        raise kopf.PermanentError("the services index is not available to handlers")


@kopf.on.cleanup()
async def stop_resync(*, memo: Any, **_: Any) -> None:
    task = _runtime(memo).resync_task
    if task is not None:
        task.cancel()


async def _resync_forever(memo: Any, indexes: Mapping[str, Any], logger: Any) -> None:
    """A level-based safety net: reconcile every known service once per interval.

    Not a kopf timer: kopf puts a finalizer on every object with a timer, and a finalizer would
    block deleting a service whenever the operator is down.
    """
    while True:
        await asyncio.sleep(_runtime(memo).resync_seconds)
        for store in list(indexes["services"].values()):
            body = latest(store)
            if body is None:
                continue
            try:
                await reconcile(body, memo, indexes, logger, verify=True)
            except kopf.TemporaryError as exc:
                logger.warning(f"resync of {body['metadata']['namespace']}/{body['metadata']['name']}: {exc}")
            except Exception:  # one broken object must not stop the resync of all others
                logger.exception("resync failed")


async def _child_changed(
    *, namespace: str | None, labels: Mapping[str, str], memo: Any, logger: Any, **kwargs: Any
) -> None:
    name = labels.get(kids.LABEL_SERVICE)
    if not name or namespace is None:
        return
    body = latest(kwargs["services"].get((namespace, name)))
    if body is not None:
        await reconcile(body, memo, kwargs, logger)


for _group, _version, _plural in CHILD_KINDS:
    kopf.on.event(_group, _version, _plural, labels=MANAGED, id=f"child_{_plural}")(_child_changed)
