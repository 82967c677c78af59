"""kopf wiring for ReplicatedService: every event, child change and resync runs one reconcile.

The reconcile is level-based: it reads the service from the event (or the index, for child
events), asks the core what to apply, applies it, and reports status. No progress is stored in
annotations, so any operator process can pick up where another stopped.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import datetime
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import kopf

from homeostat import ports
from homeostat.core import children as kids
from homeostat.core import reconcile as rec
from homeostat.core import spec as specs

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
        credentials: Callable[[], ports.Credentials],
        resync_seconds: float = 60.0,
        metrics: ports.MetricsProvider | None = None,
        notifier: ports.Notifier | None = None,
    ) -> None:
        self.workloads = workloads
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
        patch = {k: v for k, v in status.items() if previous.get(k) != v}
        if not patch:
            return False
        await runtime.workloads.patch_status(owner, patch)
        runtime.reported[owner.uid] = status
        return True


def _runtime(memo: Any) -> Runtime:
    runtime = memo.get("runtime")
    if not isinstance(runtime, Runtime):
        raise kopf.PermanentError("homeostat runtime missing from memo; start with `homeostat run`")
    return runtime


@kopf.on.login()
def login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
    """kopf's client uses exactly the credentials the CLI checked (flag, in-cluster or env)."""
    creds = _runtime(memo).credentials()
    return kopf.ConnectionInfo(
        server=creds.server,
        ca_path=creds.ca_path,
        insecure=creds.insecure,
        scheme="Bearer" if creds.token else None,
        token=creds.token,
        certificate_path=creds.certificate_path,
        private_key_path=creds.private_key_path,
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


@kopf.index(*RSVC)  # type: ignore[arg-type]
def services(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    return {(namespace, name): _slim(body)}


def _child_index(
    *, namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str | None, str, str], Any]:
    return {(namespace, name, body["kind"]): _slim(body)}


for _group, _version, _plural in CHILD_KINDS:
    kopf.index(_group, _version, _plural, labels=MANAGED, id=f"children_{_plural}")(_child_index)


def _latest(store: Any) -> Any:
    values = list(store) if store is not None else []
    return values[-1] if values else None


def _observed(owner: kids.Owner, indexes: Mapping[str, Any]) -> dict[kids.ChildRef, Mapping[str, Any] | None]:
    observed: dict[kids.ChildRef, Mapping[str, Any] | None] = {}
    for (_group, _version, plural), (api_version, kind) in CHILD_KINDS.items():
        index = indexes[f"children_{plural}"]
        body = _latest(index.get((owner.namespace, owner.name, kind)))
        observed[kids.ChildRef(api_version, kind, owner.namespace, owner.name)] = kids.owned_by(owner, body)
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
    async with runtime.locks[(owner.namespace, owner.name)]:
        await _reconcile_locked(owner, body, runtime, indexes, logger, verify=verify)


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
    applies: tuple[rec.Apply, ...] = ()
    applied: dict[kids.ChildRef, Mapping[str, Any]] = {}
    errors: dict[kids.ChildRef, str] = {}
    rejected: dict[kids.ChildRef, str] = {}
    deployment_ref = kids.ChildRef("apps/v1", "Deployment", owner.namespace, owner.name)
    spec: specs.ServiceSpec | specs.SpecError
    try:
        spec = specs.parse(body.get("spec") or {})
    except specs.SpecError as exc:
        spec = exc
    if isinstance(spec, specs.ServiceSpec):
        applies = rec.plan(owner, spec, observed)
        for apply in applies:
            try:
                applied[apply.ref] = await runtime.workloads.apply(apply.manifest)
                logger.info(f"{apply.reason.value.lower()} {apply.ref}")
            except ports.Rejected as exc:
                rejected[apply.ref] = str(exc)
            except ports.Unavailable as exc:
                errors[apply.ref] = str(exc)
        for ref in rec.stale_children(owner, spec, observed):
            try:
                await runtime.workloads.delete(ref)
                logger.info(f"deleted {ref}: no longer wanted")
            except ports.Unavailable as exc:
                errors[ref] = str(exc)
    deployment = applied.get(deployment_ref) or observed.get(deployment_ref)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    outcome = rec.Outcome(applied, errors, rejected)
    result = rec.report(
        owner=owner,
        generation=generation,
        spec=spec,
        applies=applies,
        outcome=outcome,
        deployment=deployment,
        previous=previous,
        now=now,
    )
    # Event bodies often predate our own last status write; comparing with them would rewrite
    # the same status over and over. The periodic resync (verify) checks the stored status.
    written = runtime.reported.get(owner.uid)
    baseline = body.get("status") or {} if verify or written is None else written
    patch = rec.status_changed(baseline, result.status)
    if patch:
        await runtime.workloads.patch_status(owner, result.status)
    outcome_text = "patched" if patch else "unchanged"
    logger.debug(f"reconciled {owner.namespace}/{owner.name}: {len(applies)} applied, status {outcome_text}")
    runtime.reported[owner.uid] = result.status
    target = _event_target(body)
    for event in result.events:
        kopf.event(
            kopf.Body(cast(kopf.RawBody, target)), type=event.type, reason=event.reason, message=event.message
        )
        log = logger.warning if event.type == "Warning" else logger.info
        log(f"{event.reason}: {event.message}")
    if errors:
        # Transient API trouble: let kopf back off and retry instead of waiting for a resync.
        raise kopf.TemporaryError("; ".join(errors.values()), delay=5)


@kopf.on.event(*RSVC)  # type: ignore[arg-type]
async def service_changed(
    type: str | None, body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **kwargs: Any
) -> None:
    if type == "DELETED":
        _runtime(memo).reported.pop(body["metadata"]["uid"], None)
        return
    await reconcile(body, memo, kwargs, logger)


@kopf.on.startup()
async def start_resync(*, memo: Any, logger: Any, **kwargs: Any) -> None:
    """A level-based safety net: reconcile every known service once per interval.

    Not a kopf timer: kopf puts a finalizer on every object with a timer, and a finalizer would
    block deleting a service whenever the operator is down.
    """
    runtime = _runtime(memo)
    if "services" not in kwargs:
        raise kopf.PermanentError("the services index is not available to startup handlers")
    runtime.resync_task = asyncio.create_task(_resync_forever(memo, kwargs, logger))


@kopf.on.cleanup()
async def stop_resync(*, memo: Any, **_: Any) -> None:
    task = _runtime(memo).resync_task
    if task is not None:
        task.cancel()


async def _resync_forever(memo: Any, indexes: Mapping[str, Any], logger: Any) -> None:
    while True:
        await asyncio.sleep(_runtime(memo).resync_seconds)
        for store in list(indexes["services"].values()):
            body = _latest(store)
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
    body = _latest(kwargs["services"].get((namespace, name)))
    if body is not None:
        await reconcile(body, memo, kwargs, logger)


for _group, _version, _plural in CHILD_KINDS:
    kopf.on.event(_group, _version, _plural, labels=MANAGED, id=f"child_{_plural}")(_child_changed)
