"""kopf wiring for predictive maintenance: memory, restart, disk and failure-risk checks.

Memory and restart-count trends of the service's pods, and disk trends and the failure-risk
query of the nodes they run on, are each checked on their own interval (``handlers.periodic``
runs them): the history comes through the metrics port, ``core.maintenance`` and
``core.trends`` assess it in the runtime's process pool, and each check writes its own part of
``status.maintenance`` (merged by ``core.trends.merge_maintenance``) and the requests the
healing loop acts on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from homeostat import ports
from homeostat.core import fields
from homeostat.core import maintenance as mt
from homeostat.core import spec as specs
from homeostat.core import trends as tr
from homeostat.handlers import runtime as rt

log = logging.getLogger("homeostat.maintenance")


def _memory_wants(body: Mapping[str, Any]) -> float | None:
    spec, status = body.get("spec") or {}, body.get("status") or {}
    try:
        memory = mt.parse(spec.get("healing"), spec.get("template"))
    except specs.SpecError:
        return rt.INVALID_RETRY
    if memory.enabled:
        return memory.interval
    return rt.INVALID_RETRY if status.get("maintenance") else None


def _trend_wants(
    resource: tr.Resource, parse: Callable[[Any], Any]
) -> Callable[[Mapping[str, Any]], float | None]:
    def wants(body: Mapping[str, Any]) -> float | None:
        spec, status = body.get("spec") or {}, body.get("status") or {}
        try:
            trend = parse(spec.get("healing"))
        except specs.SpecError:
            return rt.INVALID_RETRY
        if trend.enabled:
            return float(trend.interval)
        return rt.INVALID_RETRY if (status.get("maintenance") or {}).get(resource.value) else None

    return wants


def _basis(resource: tr.Resource) -> Callable[[Mapping[str, Any]], bool]:
    def basis(status: Mapping[str, Any]) -> bool:
        maintenance = status.get("maintenance") or {}
        return bool(maintenance if resource is tr.Resource.MEMORY else maintenance.get(resource.value))

    return basis


async def _write(
    runtime: rt.Runtime,
    body: Mapping[str, Any],
    resource: tr.Resource,
    part: Mapping[str, Any] | None,
    requests: Sequence[Mapping[str, Any]] | None = None,
) -> None:
    """Replace one check's part of status.maintenance (None removes it) and, unless
    ``requests`` is None, its requests; serialised per service, since the checks run apart."""
    uid = body["metadata"]["uid"]
    async with runtime.periodic.maintenance_locks.setdefault(uid, asyncio.Lock()):
        previous = runtime.status_of(body).get("maintenance") or {}
        merged = tr.merge_maintenance(previous, resource, part, requests)
        await runtime.write_status(body, {"maintenance": merged})


async def _known(
    runtime: rt.Runtime, body: Mapping[str, Any], resource: tr.Resource
) -> dict[str, float] | None:
    """The check's recorded requests with when each was made; None after saying in its part of
    the status that they cannot be read (the check then holds: read as new, a request would be
    announced again with a fresh time)."""
    previous = runtime.status_of(body).get("maintenance") or {}
    try:
        return mt.recorded(previous.get("requests"), resource.value)
    except fields.StorageError as exc:
        message = f"status.{exc} — fix or clear status.maintenance; nothing is requested meanwhile"
        await _write(runtime, body, resource, {"reason": "InvalidStatus", "message": message[:1024]})
        return None


def _own_part(runtime: rt.Runtime, body: Mapping[str, Any], resource: tr.Resource) -> dict[str, Any]:
    return tr.own_part(runtime.status_of(body).get("maintenance") or {}, resource)


async def _tell(runtime: rt.Runtime, body: Mapping[str, Any], message: str, title: str, key: str) -> None:
    runtime.event(body, "Warning", mt.CAUSE, message)
    await runtime.notify(body, kind=mt.CAUSE, severity="warning", title=title, message=message, key=key)


@rt.periodic("maintenance", wants=_memory_wants, basis=_basis(tr.Resource.MEMORY))
async def check_memory(runtime: rt.Runtime, indexes: Mapping[str, Any], body: Mapping[str, Any]) -> None:
    memory = tr.Resource.MEMORY
    # Memory requests outlive a spec error: a bad edit does not make a leak go away.
    spec = await _check_spec(
        runtime,
        body,
        memory,
        lambda raw: mt.parse(raw.get("healing"), raw.get("template")),
        keep_requests=True,
    )
    if spec is None:
        return
    now = runtime.clock()
    per_pod = await _trend_history(runtime, body, memory, spec, label="pod", now=now)
    if per_pod is None:
        return
    findings = await runtime.pool.compute(mt.assess_all, sorted(per_pod.items()), spec, now=now)
    known = await _known(runtime, body, memory)
    if known is None:
        return
    wanted, new = mt.requests(findings, known, now=now)
    maintenance = {
        "lastEvaluated": fields.rfc3339(now),
        "reason": "Evaluated",
        "message": f"{len(findings)} pod(s) checked, {len(wanted)} predicted to run out within the lead time",
        "pods": len(findings),
        "findings": mt.report(findings),
    }
    await _write(runtime, body, memory, maintenance, [r.to_dict(fields.rfc3339) for r in wanted])
    for request in new:
        await _tell(runtime, body, request.message, "pod predicted to run out of memory", request.key)


class _Switchable(Protocol):
    @property
    def enabled(self) -> bool: ...


_S = TypeVar("_S", bound=_Switchable)


async def _check_spec(
    runtime: rt.Runtime,
    body: Mapping[str, Any],
    resource: tr.Resource,
    parse: Callable[[Mapping[str, Any]], _S],
    *,
    keep_requests: bool = False,
) -> _S | None:
    """The check's settings from the service's spec, or None after recording in status why the
    check does not run (an invalid block, or one switched off)."""
    try:
        spec = parse(body.get("spec") or {})
    except specs.SpecError as exc:
        invalid = {"reason": "InvalidSpec", "message": str(exc)}
        await _write(runtime, body, resource, invalid, None if keep_requests else [])
        return None
    if not spec.enabled:
        await _write(runtime, body, resource, None)
        return None
    return spec


async def _trend_history(
    runtime: rt.Runtime, body: Mapping[str, Any], resource: tr.Resource, spec: Any, *, label: str, now: float
) -> dict[str, list[tuple[float, float]]] | None:
    """The trend query's history over ``spec.window``, per subject (the ``label`` of each series),
    or None after recording in status why there is none. Requests already recorded stay when
    Prometheus is unavailable: losing it does not make a leak or a filling disk go away."""
    meta = body["metadata"]
    previous = _own_part(runtime, body, resource)
    query = fields.render_query(spec.query, namespace=meta["namespace"], service=meta["name"])
    try:
        series = await runtime.metrics.range(query, now - spec.window, now, spec.step)
    except ports.Unavailable as exc:
        changes = {**previous, "reason": "MetricUnavailable", "message": str(exc)[:1024]}
        await _write(runtime, body, resource, changes)
        return None
    per_subject: dict[str, list[tuple[float, float]]] = {}
    for one in series:
        per_subject.setdefault(one.labels.get(label, ""), []).extend(one.points)
    return per_subject


def _hosting_nodes(indexes: Mapping[str, Any], body: Mapping[str, Any]) -> set[str]:
    """Nodes the service's pods run on, from the healing loop's pod cache."""
    meta = body["metadata"]
    pods = indexes.get("healing_pods")
    store = pods.get((meta["namespace"], meta["name"])) if pods is not None else None
    return {p.node for p in (store or []) if p.node}


@rt.periodic(
    "restarts",
    wants=_trend_wants(tr.Resource.RESTARTS, tr.parse_restarts),
    basis=_basis(tr.Resource.RESTARTS),
)
async def check_restarts(runtime: rt.Runtime, indexes: Mapping[str, Any], body: Mapping[str, Any]) -> None:
    await _check_trend(runtime, indexes, body, tr.Resource.RESTARTS)


@rt.periodic("disk", wants=_trend_wants(tr.Resource.DISK, tr.parse_disk), basis=_basis(tr.Resource.DISK))
async def check_disk(runtime: rt.Runtime, indexes: Mapping[str, Any], body: Mapping[str, Any]) -> None:
    await _check_trend(runtime, indexes, body, tr.Resource.DISK)


async def _check_trend(
    runtime: rt.Runtime, indexes: Mapping[str, Any], body: Mapping[str, Any], resource: tr.Resource
) -> None:
    """The restart-count trend of the service's pods, or the disk trend of the nodes they run
    on: findings in status.maintenance.<resource>, requests for the healing loop, Events."""
    parse = tr.parse_restarts if resource is tr.Resource.RESTARTS else tr.parse_disk
    spec = await _check_spec(runtime, body, resource, lambda raw: parse(raw.get("healing")))
    if spec is None:
        return
    now = runtime.clock()
    label = "pod" if resource is tr.Resource.RESTARTS else "node"
    per_subject = await _trend_history(runtime, body, resource, spec, label=label, now=now)
    if per_subject is None:
        return
    if resource is tr.Resource.DISK:
        hosting = _hosting_nodes(indexes, body)
        per_subject = {node: points for node, points in per_subject.items() if node in hosting}
    findings = await runtime.pool.compute(tr.assess_all, sorted(per_subject.items()), spec, now=now)
    known = await _known(runtime, body, resource)
    if known is None:
        return
    wanted, new = tr.requests(findings, known, spec, now=now)
    what = "pod(s)" if resource is tr.Resource.RESTARTS else "node(s) hosting its pods"
    limit = "restart limit" if resource is tr.Resource.RESTARTS else "disk threshold"
    part = {
        "lastEvaluated": fields.rfc3339(now),
        "reason": "Evaluated",
        "message": f"{len(findings)} {what} checked, {len(wanted)} predicted to reach the {limit} "
        "within the lead time",
        "checked": len(findings),
        "findings": tr.report(findings),
    }
    await _write(runtime, body, resource, part, [r.to_dict(fields.rfc3339) for r in wanted])
    for request in new:
        if resource is tr.Resource.RESTARTS:
            title = "pod predicted to reach its restart limit"
        else:
            title = f"node predicted to fill its disk ({request.action})"
        await _tell(runtime, body, request.message, title, request.key)


@rt.periodic("risk", wants=_trend_wants(tr.Resource.RISK, tr.parse_risk), basis=_basis(tr.Resource.RISK))
async def check_risk(runtime: rt.Runtime, indexes: Mapping[str, Any], body: Mapping[str, Any]) -> None:
    """The block's failure-risk query for the nodes the service's pods run on: readings in
    status.maintenance.risk, a request for the node action per node at or above the threshold.
    Unlike a trend, a reading is only as good as it is fresh: when Prometheus does not answer,
    or answers NaN or nothing for a node, that node gets no request (recorded ones are cleared)
    and the service's status says why; the log says it once, when it starts."""
    meta = body["metadata"]
    resource = tr.Resource.RISK
    spec = await _check_spec(runtime, body, resource, lambda raw: tr.parse_risk(raw.get("healing")))
    if spec is None:
        return
    now = runtime.clock()
    previous = _own_part(runtime, body, resource)
    query = fields.render_query(spec.query, namespace=meta["namespace"], service=meta["name"])
    hosting = _hosting_nodes(indexes, body)
    try:
        samples = await runtime.metrics.instant(query) if hosting else ()
    except ports.Unavailable as exc:
        message = f"failure risk unknown, no node acted on: {exc}"[:1024]
        if previous.get("reason") != "MetricUnavailable":
            log.warning("%s/%s: %s", meta["namespace"], meta["name"], message)
        blind = {"lastEvaluated": fields.rfc3339(now), "reason": "MetricUnavailable", "message": message}
        await _write(runtime, body, resource, blind, [])
        return
    pairs = [(s.labels.get("node", ""), s.value) for s in samples]
    readings = tr.assess_risk(pairs, hosting, spec)
    known = await _known(runtime, body, resource)
    if known is None:
        return
    wanted, new = tr.risk_requests(readings, known, spec, query, now=now)
    reason, message = tr.risk_summary(readings, spec)
    if reason != "Evaluated" and previous.get("reason") != reason:
        log.warning("%s/%s: %s", meta["namespace"], meta["name"], message)
    part = {
        "lastEvaluated": fields.rfc3339(now),
        "reason": reason,
        "message": message,
        "checked": len(readings),
        "findings": [r.to_dict() for r in readings][:20],
    }
    await _write(runtime, body, resource, part, [r.to_dict(fields.rfc3339) for r in wanted])
    for request in new:
        title = f"node failure risk at or above {spec.limit:g} ({request.action})"
        await _tell(runtime, body, request.message, title, request.key)
