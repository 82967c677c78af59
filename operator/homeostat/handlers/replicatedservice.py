"""kopf wiring for ReplicatedService: every event, child change and resync runs one reconcile.

The reconcile is level-based: it reads the service from the event (or the index, for child
events), asks the core what to apply, applies it, and reports status. No progress is stored in
annotations, so any operator process can pick up where another stopped.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

import kopf

from homeostat import ports
from homeostat.core import analysis as an
from homeostat.core import children as kids
from homeostat.core import delivery as dl
from homeostat.core import fields, validation
from homeostat.core import reconcile as rec
from homeostat.core import rollout as ro
from homeostat.core import spec as specs
from homeostat.handlers import runtime as rt

RSVC = rt.RSVC
CHILD_KINDS = {
    ("apps", "v1", "deployments"): ("apps/v1", "Deployment"),
    ("", "v1", "services"): ("v1", "Service"),
    ("policy", "v1", "poddisruptionbudgets"): ("policy/v1", "PodDisruptionBudget"),
}
MANAGED = {kids.LABEL_MANAGED_BY: kids.MANAGER}

Key = tuple[str, str]


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


_PLURALS = {kind: plural for (_group, _version, plural), (_api, kind) in CHILD_KINDS.items()}


def _child(owner: kids.Owner, indexes: Mapping[str, Any], kind: str, name: str) -> Mapping[str, Any] | None:
    """A child of ``owner`` from the watch cache, None when absent or owned by someone else."""
    body = rt.latest(indexes[f"children_{_PLURALS[kind]}"].get((owner.namespace, name, kind)))
    return kids.owned_by(owner, body)


def _observed(owner: kids.Owner, indexes: Mapping[str, Any]) -> dict[kids.ChildRef, Mapping[str, Any] | None]:
    observed: dict[kids.ChildRef, Mapping[str, Any] | None] = {}
    for api_version, kind in CHILD_KINDS.values():
        observed[kids.ChildRef(api_version, kind, owner.namespace, owner.name)] = _child(
            owner, indexes, kind, owner.name
        )
    return observed


async def reconcile(
    body: Mapping[str, Any],
    runtime: rt.Runtime,
    indexes: Mapping[str, Any],
    logger: Any,
    *,
    verify: bool = False,
) -> None:
    meta = body["metadata"]
    if meta.get("deletionTimestamp"):
        return  # children go with their owner through garbage collection
    owner = kids.Owner(meta["name"], meta["namespace"], meta["uid"])
    await _default_desired(owner, body, runtime, logger)
    started = time.monotonic()
    outcome = "error"
    try:
        async with runtime.reconcile.locks[(owner.namespace, owner.name)]:
            await _reconcile_locked(owner, body, runtime, indexes, logger, verify=verify)
        phase = (runtime.reported.get(owner.uid) or {}).get("phase")
        outcome = "invalid" if phase == rec.ServicePhase.INVALID_SPEC.value else "ok"
    finally:
        runtime.telemetry.reconciled(owner.namespace, owner.name, time.monotonic() - started, outcome)
        runtime.telemetry.pending("rollout_wakeups", len(runtime.reconcile.wakeups))
        runtime.telemetry.pending(
            "rollout_analyses", sum(not t.done() for t in runtime.reconcile.analyses.values())
        )


async def _default_desired(
    owner: kids.Owner, body: Mapping[str, Any], runtime: rt.Runtime, logger: Any
) -> None:
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
    runtime: rt.Runtime,
    indexes: Mapping[str, Any],
    logger: Any,
    *,
    verify: bool,
) -> None:
    previous = runtime.status_of(body)
    observed = _observed(owner, indexes)
    planned = await _plan(owner, body, previous=previous, observed=observed, runtime=runtime, indexes=indexes)
    delivery, rolling = planned.delivery, planned.rolling
    outcome = await _execute(runtime, planned.applies, planned.deletes, logger)
    if delivery is not None and delivery.plan.route is not None and not outcome.errors:
        await _patch_route(runtime, owner, delivery.plan.route, outcome, logger)
    result, status = _report(runtime, owner, body, planned, outcome, observed=observed, previous=previous)
    # Event bodies often predate our own last status write; comparing with them would rewrite
    # the same status over and over. The periodic resync (verify) checks the stored status.
    written = runtime.reported.get(owner.uid)
    baseline = body.get("status") or {} if verify or written is None else written
    patch = rec.status_changed(baseline, status)
    if patch:
        await runtime.workloads.patch_status(owner, status)
    outcome_text = "patched" if patch else "unchanged"
    logger.debug(
        f"reconciled {owner.namespace}/{owner.name}: {len(planned.applies)} applied, status {outcome_text}"
    )
    runtime.reported[owner.uid] = status
    events = [(e.type, e.reason, e.message) for e in result.events]
    if rolling is not None and rolling.event is not None:
        events.append((rolling.event.type, rolling.event.reason, rolling.event.message))
    if delivery is not None:
        # One-shot actions go out only after the state that records them is stored: a crash
        # in between loses a message rather than sending it twice after the restart.
        events.extend((e.type, e.reason, e.message) for e in delivery.plan.events)
        await _notify(runtime, body, delivery.plan, logger)
        state = delivery.plan.state
        runtime.telemetry.rollout(owner.namespace, owner.name, state.phase.value, state.achieved_weight)
        if delivery.analysed is not None:
            runtime.telemetry.analysis(owner.namespace, owner.name, delivery.analysed.value)
        _follow_up(runtime, owner, delivery, indexes=indexes, logger=logger)
    for type_, reason, message in events:
        runtime.event(body, type_, reason, message)
    if outcome.errors:
        # Transient API trouble: let kopf back off and retry instead of waiting for a resync.
        raise kopf.TemporaryError("; ".join(outcome.errors.values()), delay=5)


def _report(
    runtime: rt.Runtime,
    owner: kids.Owner,
    body: Mapping[str, Any],
    planned: _Planned,
    outcome: rec.ApplyOutcome,
    *,
    observed: Mapping[kids.ChildRef, Mapping[str, Any] | None],
    previous: Mapping[str, Any],
) -> tuple[rec.Report, dict[str, Any]]:
    """The core's report of this reconcile, and the whole status it leaves."""
    delivery, rolling = planned.delivery, planned.rolling
    deployment_ref = kids.ChildRef("apps/v1", "Deployment", owner.namespace, owner.name)
    now = fields.rfc3339(runtime.clock())
    degraded_by = delivery.degraded_by if delivery is not None else rolling.degraded_by if rolling else None
    result = rec.report(
        owner=owner,
        generation=int(body["metadata"].get("generation", 0)),
        spec=planned.spec,
        applies=planned.applies,
        outcome=outcome,
        deployment=outcome.applied.get(deployment_ref) or observed.get(deployment_ref),
        previous=previous,
        now=now,
        view=None if delivery is None else delivery.plan.view,
        degraded_by=degraded_by,
    )
    status = dict(result.status)
    if delivery is not None:
        status = delivery.status(status, now)
    elif rolling is not None:
        status["rollback"] = rolling.rollback
    return result, status


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
    runtime: rt.Runtime,
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
        applies = (*applies, rec.Apply(rolling.keep_revision, rec.ApplyReason.CREATED))
    return _Planned(rolling.spec, applies, rec.stale_children(owner, rolling.spec, observed), rolling=rolling)


async def _execute(
    runtime: rt.Runtime, applies: Sequence[rec.Apply], deletes: Sequence[kids.ChildRef], logger: Any
) -> rec.ApplyOutcome:
    applied: dict[kids.ChildRef, Mapping[str, Any]] = {}
    errors: dict[kids.ChildRef, str] = {}
    rejected: dict[kids.ChildRef, str] = {}
    for apply in applies:
        try:
            applied[apply.ref] = await runtime.workloads.apply(apply.manifest)
            logger.info(f"{apply.reason.value.lower()} {apply.ref}")
        except ports.Rejected as exc:
            rejected[apply.ref] = str(exc)
            break
        except ports.Unavailable as exc:
            errors[apply.ref] = str(exc)
            break
    if errors or rejected:
        # Actions are ordered (capacity before traffic, traffic before deletion): after a
        # failure the rest waits for the next reconcile, which re-plans from what exists.
        return rec.ApplyOutcome(applied, errors, rejected)
    for ref in deletes:
        try:
            await runtime.workloads.delete(ref)
            logger.info(f"deleted {ref}: no longer wanted")
        except ports.Unavailable as exc:
            errors[ref] = str(exc)
    return rec.ApplyOutcome(applied, errors, rejected)


# --- progressive delivery --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Delivery:
    plan: dl.Plan
    degraded_by: tuple[str, str] | None
    analysed: an.AnalysisVerdict | None = None  # the verdict of an analysis run this step recorded

    def status(self, status: Mapping[str, Any], now: str) -> dict[str, Any]:
        state = self.plan.state
        merged = {**status, **self.plan.status}
        if state.stable_revision:
            merged["stableRevision"] = state.stable_revision
        phase = dl.status_phase(state)
        if phase is not None and status.get("phase") != rec.ServicePhase.INVALID_SPEC.value:
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
    runtime: rt.Runtime,
    indexes: Mapping[str, Any],
) -> _Delivery:
    rollout_spec = ro.parse_rollout_spec((body.get("spec") or {}).get("rollout"))
    try:
        state = ro.RolloutState.from_storage(previous.get("rollout"))
    except fields.StorageError as exc:
        raise specs.SpecError("status.rollout", f"cannot be read ({exc}); fix or clear it") from None
    command = dl.parse_command((body.get("metadata") or {}).get("annotations"))
    world = await _world(owner, rollout_spec, runtime, indexes)
    measured = runtime.reconcile.measured.get(owner.uid)
    obs = dl.observe(
        owner,
        spec,
        world,
        recorded_active=previous.get("activeRevision"),
        measured=measured,
        analysis_available=ports.configured(runtime.metrics),
        command=command,
    )
    plan = dl.plan(owner, spec, rollout_spec, state=state, world=world, obs=obs, now=runtime.clock())
    degraded_by: tuple[str, str] | None = None
    if plan.problems:
        degraded_by = (rec.ApplyReason.APPLY_FAILED.value, "; ".join(plan.problems))
    elif plan.state.phase is ro.RolloutPhase.ROLLED_BACK:
        failure = plan.state.failure
        detail = failure.message if failure is not None else "analysis failed"
        degraded_by = (
            rec.ApplyReason.ROLLED_BACK.value,
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
    runtime: rt.Runtime,
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
        now=runtime.clock(),
    )


async def _world(
    owner: kids.Owner, rollout_spec: ro.RolloutSpec, runtime: rt.Runtime, indexes: Mapping[str, Any]
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
        settled=runtime.reconcile.settled.get((owner.namespace, owner.name), {}),
    )
    runtime.reconcile.settled[(owner.namespace, owner.name)] = dl.settled_views(owner, world)
    return world


async def _patch_route(
    runtime: rt.Runtime, owner: kids.Owner, route: dl.RoutePatch, outcome: rec.ApplyOutcome, logger: Any
) -> None:
    ref = kids.ChildRef("gateway.networking.k8s.io/v1", "HTTPRoute", owner.namespace, route.name)
    try:
        await runtime.workloads.json_patch(ref, route.operations)
        logger.info(f"set the backend weights of {ref}")
    except ports.Rejected as exc:
        cast(dict[kids.ChildRef, str], outcome.rejected)[ref] = str(exc)
    except ports.Unavailable as exc:
        cast(dict[kids.ChildRef, str], outcome.errors)[ref] = str(exc)


_SEVERITY = {
    ro.NotifyKind.FAILED: "critical",
    ro.NotifyKind.NEEDS_DECISION: "warning",
    ro.NotifyKind.PROMOTED: "info",
}


async def _notify(runtime: rt.Runtime, body: Mapping[str, Any], plan: dl.Plan, logger: Any) -> None:
    for notify in plan.notifications:
        kind = notify.kind.value
        logger.info(f"notification {kind}: {notify.message}")
        await runtime.notify(
            body,
            kind=kind,
            severity=_SEVERITY[notify.kind],
            title=kind,
            message=notify.message,
            key=f"{plan.state.revision}/{kind}",
        )


def _follow_up(
    runtime: rt.Runtime,
    owner: kids.Owner,
    delivery: _Delivery,
    *,
    indexes: Mapping[str, Any],
    logger: Any,
) -> None:
    """Start a requested analysis, and come back when the rollout next has something to do."""
    plan = delivery.plan
    request = plan.analysis
    running = runtime.reconcile.analyses.get(owner.uid)
    if request is not None and (running is None or running.done()) and ports.configured(runtime.metrics):
        runtime.reconcile.analyses[owner.uid] = asyncio.create_task(
            _analyse(runtime, owner, request, indexes=indexes, logger=logger)
        )
    live = plan.state.phase in (*ro.LIVE, ro.RolloutPhase.ROLLING_BACK, ro.RolloutPhase.INITIALIZING)
    if live and not plan.state.held:
        # Pauses and analysis intervals are counted in seconds; a short poll while a rollout
        # is live is simpler and as cheap as tracking each deadline.
        _wake_later(runtime, (owner.namespace, owner.name), 1.0, indexes, logger)


def _wake_later(runtime: rt.Runtime, key: Key, delay: float, indexes: Mapping[str, Any], logger: Any) -> None:
    if key in runtime.reconcile.wakeups:
        return
    loop = asyncio.get_running_loop()

    def fire() -> None:
        runtime.reconcile.wakeups.pop(key, None)
        body = rt.latest(indexes["services"].get(key))
        if body is not None:
            task = asyncio.create_task(_reconcile_quietly(body, runtime, indexes, logger))
            runtime.background.add(task)
            task.add_done_callback(runtime.background.discard)

    runtime.reconcile.wakeups[key] = loop.call_later(delay, fire)


async def _reconcile_quietly(
    body: Mapping[str, Any], runtime: rt.Runtime, indexes: Mapping[str, Any], logger: Any
) -> None:
    try:
        await reconcile(body, runtime, indexes, logger)
    except kopf.TemporaryError as exc:
        logger.warning(f"{body['metadata']['namespace']}/{body['metadata']['name']}: {exc}")
        _wake_later(runtime, (body["metadata"]["namespace"], body["metadata"]["name"]), 5.0, indexes, logger)
    except Exception:  # a wake-up must never take the event loop's other work down with it
        logger.exception("rollout wake-up failed")


async def _analyse(
    runtime: rt.Runtime,
    owner: kids.Owner,
    request: ro.RunAnalysis,
    *,
    indexes: Mapping[str, Any],
    logger: Any,
) -> None:
    """Query every metric of ``request`` and hand the results to the next reconcile."""
    started = runtime.clock()
    values = {"service": owner.name, "namespace": owner.namespace, "revision": request.revision}
    results = await asyncio.gather(*(_measure(runtime.metrics, m, values, started) for m in request.metrics))
    runtime.reconcile.measured[owner.uid] = dl.Measured(request.revision, started, tuple(results))
    logger.debug(f"analysis of {request.revision}: {[(m.metric, m.value, m.error) for m in results]}")
    body = rt.latest(indexes["services"].get((owner.namespace, owner.name)))
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
    value, why = rt.one_value(samples)
    if value is None:
        return an.Measurement(metric.name, error=why, at=at)
    return an.Measurement(metric.name, value=None if math.isnan(value) else value, at=at)


@kopf.on.event(*RSVC)  # type: ignore[arg-type]
async def service_changed(
    type: str | None, body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **kwargs: Any
) -> None:
    runtime = rt.of(memo)
    if runtime.reconcile.resync_task is None:
        # Started from the first event, not at startup: a replica paused by kopf peering gets
        # none, and must not reconcile.
        runtime.reconcile.resync_task = asyncio.create_task(_resync_forever(runtime, kwargs, logger))
    if type == "DELETED":
        runtime.reported.pop(body["metadata"]["uid"], None)
        runtime.reconcile.measured.pop(body["metadata"]["uid"], None)
        runtime.reconcile.settled.pop((body["metadata"]["namespace"], body["metadata"]["name"]), None)
        runtime.telemetry.forget(body["metadata"]["namespace"], body["metadata"]["name"])
        return
    await reconcile(body, runtime, kwargs, logger)


@kopf.on.startup()
async def check_indexes(*, memo: Any, **kwargs: Any) -> None:
    """The resync reads the services index; fail at once if kopf does not provide it."""
    rt.of(memo)
    if "services" not in kwargs:
        raise kopf.PermanentError("the services index is not available to handlers")


async def _resync_forever(runtime: rt.Runtime, indexes: Mapping[str, Any], logger: Any) -> None:
    """A level-based safety net: reconcile every known service once per interval.

    Not a kopf timer: kopf puts a finalizer on every object with a timer, and a finalizer would
    block deleting a service whenever the operator is down.
    """
    while True:
        await asyncio.sleep(runtime.settings.resync_seconds)
        for store in list(indexes["services"].values()):
            body = rt.latest(store)
            if body is None:
                continue
            try:
                await reconcile(body, runtime, indexes, logger, verify=True)
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
    body = rt.latest(kwargs["services"].get((namespace, name)))
    if body is not None:
        await reconcile(body, rt.of(memo), kwargs, logger)


for _group, _version, _plural in CHILD_KINDS:
    kopf.on.event(_group, _version, _plural, labels=MANAGED, id=f"child_{_plural}")(_child_changed)
