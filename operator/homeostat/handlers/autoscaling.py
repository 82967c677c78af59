"""kopf wiring for autoscaling and predictive maintenance: one evaluation loop per service.

Every ``spec.autoscaling.interval`` the load metric and its history are read through the
metrics port, the forecast is fitted in a process pool (an optimised Holt-Winters fit takes
hundreds of milliseconds of CPU, which would stall every other handler on kopf's event loop),
``core.scaling`` decides, and the count is written through the scale subresource. Memory and
restart-count trends of the service's pods, and disk trends and the failure-risk query of the
nodes they run on, are checked on their own intervals the same way (``core.maintenance``,
``core.trends``).

This is not a kopf timer: kopf puts a finalizer on every object with a timer, and a finalizer
would block deleting a service whenever the operator is down. A startup task walks the
``services`` index instead, as the resync does. Status goes through
``replicatedservice.write_status`` so the reconcile's keys and conditions are never touched.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import datetime
import functools
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, cast

import kopf

from homeostat import ports
from homeostat.core import children as kids
from homeostat.core import forecast as fc
from homeostat.core import maintenance as mt
from homeostat.core import scaling as sc
from homeostat.core import spec as specs
from homeostat.core import trends as tr
from homeostat.handlers import replicatedservice as rs

CONDITION = "Autoscaling"
TICK = 1.0  # how often the loop looks for due work; intervals are per service
INVALID_RETRY = 30.0
SAMPLES_PER_BIN = 8
MAX_POINTS = 10_000
_T = TypeVar("_T")

log = logging.getLogger("homeostat.autoscaling")


_BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def default_workers() -> int:
    """Forecast worker processes: two where there are two cores (the 1000-series cycle then fits
    well inside a minute), never more than the machine has."""
    return max(1, min(2, os.cpu_count() or 1))


class Autoscaler:
    """Per-process state of the loop, kept in kopf's memo under ``autoscaler``."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, workers) if workers else default_workers()
        self.task: asyncio.Task[None] | None = None
        self.due: dict[tuple[str, str], float] = {}
        self.running: dict[tuple[str, str], asyncio.Task[None]] = {}
        # The memory, restart and disk checks each own a part of status.maintenance and run as
        # separate tasks: their read-modify-write of it is serialised per service.
        self.maintenance_locks: dict[str, asyncio.Lock] = {}
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None
        # The work each service wants, by uid, with what it was derived from: parsing every
        # service's spec on every tick kept a core busy at a thousand services.
        self.work: dict[str, tuple[tuple[Any, ...], dict[str, float]]] = {}
        # kopf posts Events through a queue it only puts into the context of its watch tasks;
        # the first watch event lends us that context.
        self.post_context: contextvars.Context | None = None

    def executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self.pool is None:
            if self.workers > 1:
                # One BLAS thread per worker. OpenBLAS otherwise starts a thread per core in every
                # process and two workers fight over the same cores: measured on 2 cores, two
                # workers were no faster than one; with a thread each, 1.7x. Read by a worker
                # when it loads numpy (spawned workers inherit the environment), never by this
                # process, whose numpy is loaded already; an explicit setting wins.
                for name in _BLAS_THREADS:
                    os.environ.setdefault(name, "1")
            # spawn, not fork: forking a process that runs an event loop and threads can copy
            # held locks into the child.
            self.pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn")
            )
        return self.pool

    async def compute(self, func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run CPU-heavy pure code in the pool; a crashed worker is replaced once."""
        loop = asyncio.get_running_loop()
        call = functools.partial(func, *args, **kwargs)
        try:
            return await loop.run_in_executor(self.executor(), call)
        except concurrent.futures.process.BrokenProcessPool:
            self.shutdown()
            return await loop.run_in_executor(self.executor(), call)

    def shutdown(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None


def _autoscaler(memo: Any) -> Autoscaler:
    state = memo.get("autoscaler")
    if not isinstance(state, Autoscaler):
        workers = memo.get("forecast_workers")
        state = Autoscaler(workers if isinstance(workers, int) else None)
        memo["autoscaler"] = state
    return state


def _runtime(memo: Any) -> rs.Runtime:
    runtime = memo.get("runtime")
    if not isinstance(runtime, rs.Runtime):
        raise kopf.PermanentError("homeostat runtime missing from memo; start with `homeostat run`")
    return runtime


def _scaler(memo: Any) -> ports.Scaler | None:
    return cast("ports.Scaler | None", memo.get("scaler"))


@kopf.on.startup()
async def start_autoscaling(*, memo: Any, logger: Any, **kwargs: Any) -> None:
    if "services" not in kwargs:
        raise kopf.PermanentError("the services index is not available to startup handlers")
    # Created here, in the operator's memo: kopf hands each object a shallow copy of it, so state
    # first made in an event handler would be one per service (and so would the loop).
    _autoscaler(memo)


@kopf.on.cleanup()
async def stop_autoscaling(*, memo: Any, **_: Any) -> None:
    state = _autoscaler(memo)
    for task in [state.task, *state.running.values()]:
        if task is not None:
            task.cancel()
    state.shutdown()


@kopf.on.event(*rs.RSVC, id="autoscaling_events")
async def lend_event_context(*, memo: Any, **kwargs: Any) -> None:
    """Start the loop from the first watch event: a replica paused by kopf peering gets none,
    so only the active replica scales, and the loop inherits a context kopf.event can post in."""
    state = _autoscaler(memo)
    if state.post_context is None:
        state.post_context = contextvars.copy_context()
    if state.task is None:
        state.task = asyncio.create_task(_loop(memo, kwargs))


def _post(memo: Any, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    (log.warning if type_ == "Warning" else log.info)(
        "%s/%s %s: %s", body["metadata"]["namespace"], body["metadata"]["name"], reason, message
    )
    context = _autoscaler(memo).post_context
    if context is None:
        return
    meta = body["metadata"]
    target = {
        "apiVersion": kids.API_VERSION,
        "kind": kids.KIND,
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
    }
    context.run(
        kopf.event,
        kopf.Body(cast(kopf.RawBody, target)),
        type=type_,
        reason=reason,
        message=message[:1024],
    )


def _intervals(body: Mapping[str, Any]) -> dict[str, float]:
    """The work a service wants and how often; a spec that does not parse is retried slowly
    (and reported by the evaluation itself)."""
    spec = body.get("spec") or {}
    work: dict[str, float] = {}
    raw_auto = spec.get("autoscaling") or {}
    status = body.get("status") or {}
    if (isinstance(raw_auto, Mapping) and raw_auto.get("mode", "Off") != "Off") or status.get("forecast"):
        try:
            work["autoscaling"] = sc.parse(raw_auto).interval
        except specs.SpecError:
            work["autoscaling"] = INVALID_RETRY
    if _has_autoscaling_condition(status) and "autoscaling" not in work:
        work["autoscaling"] = INVALID_RETRY  # to clear what an earlier mode left behind
    try:
        memory = mt.parse(spec.get("healing"), spec.get("template"))
        if memory.enabled or status.get("maintenance"):
            work["maintenance"] = memory.interval if memory.enabled else INVALID_RETRY
    except specs.SpecError:
        work["maintenance"] = INVALID_RETRY
    maintenance = status.get("maintenance") or {}
    for kind, parse in (("restarts", tr.parse_restarts), ("disk", tr.parse_disk), ("risk", tr.parse_risk)):
        try:
            trend = parse(spec.get("healing"))
            if trend.enabled or maintenance.get(kind):
                work[kind] = trend.interval if trend.enabled else INVALID_RETRY
        except specs.SpecError:
            work[kind] = INVALID_RETRY
    return work


def _work_of(state: Autoscaler, body: Mapping[str, Any]) -> dict[str, float]:
    """``_intervals`` of the service, recomputed only when what it reads has changed."""
    meta, status = body["metadata"], body.get("status") or {}
    basis = (
        meta.get("generation"),
        bool(status.get("forecast")),
        bool(status.get("maintenance")),
        tuple(kind for kind in ("restarts", "disk", "risk") if (status.get("maintenance") or {}).get(kind)),
        _has_autoscaling_condition(status),
    )
    cached = state.work.get(meta["uid"])
    if cached is None or cached[0] != basis:
        cached = (basis, _intervals(body))
        state.work[meta["uid"]] = cached
    return cached[1]


def _has_autoscaling_condition(status: Mapping[str, Any]) -> bool:
    return any(c.get("type") == CONDITION for c in status.get("conditions") or [])


async def _loop(memo: Any, indexes: Mapping[str, Any]) -> None:
    state = _autoscaler(memo)
    while True:
        wake = time.time() + TICK
        try:
            wake = min(wake, _schedule(memo, indexes, state, time.time()))
        except Exception:  # the loop must outlive any one bad object
            log.exception("autoscaling loop")
        # Woken at the next due time, not on a coarse tick: the forecast horizon covers one
        # interval between evaluations, and a late evaluation would eat into the startup delay.
        await asyncio.sleep(max(0.01, wake - time.time()))


def _schedule(memo: Any, indexes: Mapping[str, Any], state: Autoscaler, now: float) -> float:
    """Start the evaluations that are due; return when the next one falls due."""
    seen: set[tuple[str, str]] = set()
    uids: set[str] = set()
    wake = math.inf
    for store in list(indexes["services"].values()):
        body = rs.latest(store)
        if body is None or body["metadata"].get("deletionTimestamp"):
            continue
        uid = body["metadata"]["uid"]
        uids.add(uid)
        for kind, interval in _work_of(state, body).items():
            key = (uid, kind)
            seen.add(key)
            task = state.running.get(key)
            if task is not None and not task.done():
                continue
            due = state.due.get(key)
            if due is not None and due > now:
                wake = min(wake, due)
                continue
            # A fixed cadence (due + interval), so evaluations do not drift later and later.
            state.due[key] = due + interval if due is not None and due + interval > now else now + interval
            wake = min(wake, state.due[key])
            work = _WORKERS[kind]
            state.running[key] = asyncio.create_task(_guarded(work, memo, indexes, body))
    for uid in set(state.work) - uids:
        del state.work[uid]
        state.maintenance_locks.pop(uid, None)
    for key in set(state.due) - seen:
        state.due.pop(key, None)
        task = state.running.pop(key, None)
        if task is not None:
            task.cancel()
    return wake


async def _guarded(
    work: Callable[[Any, Mapping[str, Any], Mapping[str, Any]], Any],
    memo: Any,
    indexes: Mapping[str, Any],
    body: Mapping[str, Any],
) -> None:
    try:
        await work(memo, indexes, body)
    except asyncio.CancelledError:
        raise
    except ports.Unavailable as exc:
        log.warning("%s/%s: %s", body["metadata"]["namespace"], body["metadata"]["name"], exc)
    except Exception:
        log.exception("evaluating %s/%s", body["metadata"]["namespace"], body["metadata"]["name"])


def _fresh(indexes: Mapping[str, Any], body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The newest copy of the service (the loop's may be an interval old), None once deleted."""
    meta = body["metadata"]
    latest = rs.latest(indexes["services"].get((meta["namespace"], meta["name"])))
    if latest is None or latest["metadata"].get("uid") != meta["uid"]:
        return None
    return cast("Mapping[str, Any]", latest)


def _condition(status: str, reason: str, message: str, generation: int) -> dict[str, Any]:
    return {
        "type": CONDITION,
        "status": status,
        "reason": reason,
        "message": message[:4096],
        "observedGeneration": generation,
    }


def _previous_condition(body: Mapping[str, Any], runtime: rs.Runtime) -> Mapping[str, Any]:
    status = runtime.reported.get(body["metadata"]["uid"]) or body.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == CONDITION:
            return cast("Mapping[str, Any]", cond)
    return {}


def _total(samples: Sequence[ports.Sample]) -> float | None:
    """The service's load: the sum over the series the query returns; None without data."""
    if not samples:
        return None
    values = [s.value for s in samples]
    return math.fsum(values) if all(math.isfinite(v) for v in values) else None


def _history(series: Sequence[ports.Series]) -> tuple[list[float], list[float]]:
    """One series from several: values at the same timestamp are summed."""
    totals: dict[float, float] = {}
    for one in series:
        for t, v in one.points:
            totals[t] = totals.get(t, 0.0) + v
    times = sorted(totals)
    return times, [totals[t] for t in times]


# --- autoscaling -------------------------------------------------------------------------------


async def _autoscale(memo: Any, indexes: Mapping[str, Any], stale: Mapping[str, Any]) -> None:
    body = _fresh(indexes, stale)
    if body is None:
        return
    runtime = _runtime(memo)
    meta = body["metadata"]
    generation = int(meta.get("generation", 0))
    raw = body.get("spec") or {}
    status = runtime.reported.get(meta["uid"]) or body.get("status") or {}
    try:
        auto = sc.parse(raw.get("autoscaling"))
        service = specs.parse(raw)
    except specs.SpecError as exc:
        await rs.write_status(
            runtime, body, {}, [_condition("False", "InvalidSpec", f"{exc.field}: {exc}", generation)]
        )
        return
    if auto.mode is sc.Mode.OFF:
        await rs.write_status(
            runtime,
            body,
            {"forecast": None, "autoscaling": None},
            [_condition("False", sc.Reason.OFF.value, "spec.autoscaling.mode is Off", generation)],
        )
        return

    now = time.time()
    current = service.replicas.desired if service.replicas.desired is not None else service.replicas.effective
    saved = status.get("autoscaling") or {}
    previous_state = sc.ScalingState.from_dict(saved.get("scaling"))
    decision, new_state, model, metric, why = await _evaluate(
        memo, body, auto, service, current=current, saved=saved, state=previous_state, now=now
    )
    condition = _decision_condition(decision, why, generation)
    applied = False
    if decision.changed and auto.mode is not sc.Mode.PREVIEW:
        # Write-ahead, as in healing: the scaling record the rate policies and stabilisation
        # window read is stored before the count changes, so a crash in between can only make
        # the next change wait, never let it come early.
        await rs.write_status(runtime, body, {"autoscaling": {**saved, "scaling": new_state.to_dict()}})
        failure = await _apply(memo, body, decision)
        if failure is None:
            applied = True
        else:
            condition = _condition("False", failure[0], failure[1], generation)
            new_state = previous_state  # nothing happened, so nothing to remember

    changes: dict[str, Any] = {
        "autoscaling": {
            "lastEvaluated": sc.rfc3339(now),
            "mode": decision.mode.value,
            "reason": decision.reason.value,
            "current": current,
            "desired": decision.desired,
            "reactive": decision.reactive,
            "predictive": decision.predictive,
            "preview": decision.preview,
            "metric": None if metric is None else round(metric, 6),
            "scaling": new_state.to_dict(),
            "model": None if model is None else model.to_dict(),
        },
        "forecast": None if decision.forecast is None else sc.summary_status(decision.forecast),
    }
    before = _previous_condition(body, runtime)
    await rs.write_status(runtime, body, changes, [condition])
    _announce(memo, body, decision, condition, before=before, applied=applied, saved=saved)
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    runtime.telemetry.scaled(
        namespace,
        name,
        decision.desired,
        decision.reason.value,
        load=metric,
        capacity=decision.desired * auto.target_per_replica,
    )
    summary = decision.forecast
    if summary is not None:
        runtime.telemetry.forecast(
            namespace, name, mase=summary.mase, smape=summary.smape, peak=summary.predicted_peak
        )


async def _evaluate(
    memo: Any,
    body: Mapping[str, Any],
    auto: sc.AutoscalingSpec,
    service: specs.ServiceSpec,
    *,
    current: int,
    saved: Mapping[str, Any],
    state: sc.ScalingState,
    now: float,
) -> tuple[sc.Decision, sc.ScalingState, fc.ModelState | None, float | None, str]:
    """Read the metric (and, for a forecast, its history), then let the core decide."""
    runtime = _runtime(memo)
    meta = body["metadata"]
    query = sc.render_query(auto.query, namespace=meta["namespace"], service=meta["name"])
    metric, why = await _metric(runtime.metrics, query)
    model = fc.ModelState.from_dict(saved.get("model"))
    forecast: fc.Forecast | None = None
    if metric is not None and auto.mode in (sc.Mode.PREDICTIVE, sc.Mode.PREVIEW):
        forecast, model = await _forecast(
            _autoscaler(memo), runtime.metrics, query=query, auto=auto, model=model, now=now
        )
    decision, new_state = sc.decide(
        auto,
        current=current,
        bounds=service.replicas,
        metric=metric,
        forecast=forecast,
        state=state,
        now=now,
    )
    return decision, new_state, model, metric, why


async def _apply(memo: Any, body: Mapping[str, Any], decision: sc.Decision) -> tuple[str, str] | None:
    """Write the count through the scale subresource; the reason and message if that failed."""
    scaler = _scaler(memo)
    try:
        if scaler is None:
            raise ports.Unavailable("no scaler is configured")
        await scaler.scale(rs.owner_of(body), decision.desired)
    except (ports.Rejected, ports.Unavailable) as exc:
        reason = "ScaleRejected" if isinstance(exc, ports.Rejected) else "ScaleFailed"
        return reason, f"could not scale {decision.current} -> {decision.desired}: {exc}"
    return None


def _announce(
    memo: Any,
    body: Mapping[str, Any],
    decision: sc.Decision,
    condition: Mapping[str, Any],
    *,
    before: Mapping[str, Any],
    applied: bool,
    saved: Mapping[str, Any],
) -> None:
    """Events: every applied change, every new preview, and every change of the condition."""
    if applied:
        verb = "ScaledUp" if decision.desired > decision.current else "ScaledDown"
        _post(memo, body, "Normal", verb, f"{decision.reason.value}: {decision.message}")
    preview = decision.preview
    if preview is not None and preview != saved.get("preview") and preview != decision.current:
        _post(memo, body, "Normal", "PreviewScale", decision.message)
    if (before.get("status"), before.get("reason")) == (condition["status"], condition["reason"]):
        return
    if condition["status"] == "False":
        _post(memo, body, "Warning", condition["reason"], condition["message"])
    elif decision.reason in (
        sc.Reason.FORECAST_UNRELIABLE,
        sc.Reason.FORECAST_MISSING,
        sc.Reason.HISTORY_TOO_SHORT,
    ):
        _post(memo, body, "Normal", decision.reason.value, condition["message"])


async def _metric(metrics: ports.MetricsProvider | None, query: str) -> tuple[float | None, str]:
    if metrics is None:
        return None, "no metrics provider is configured"
    try:
        samples = await metrics.instant(query)
    except ports.Unavailable as exc:
        return None, f"the metrics backend is unavailable: {exc}"
    value = _total(samples)
    if value is None:
        return None, "the query returned no data" if not samples else "the query returned NaN"
    return value, ""


async def _forecast(
    state: Autoscaler,
    metrics: ports.MetricsProvider | None,
    *,
    query: str,
    auto: sc.AutoscalingSpec,
    model: fc.ModelState | None,
    now: float,
) -> tuple[fc.Forecast | None, fc.ModelState | None]:
    if metrics is None:
        return None, model
    config = auto.forecast
    # Several samples per forecast bin, so a bin holds the mean load over its whole width rather
    # than one instant of it (a single sample per bin can sit anywhere in the bin and shift the
    # predicted rise by most of a step); capped well below Prometheus' 11,000 points a series.
    resolution = max(config.step / SAMPLES_PER_BIN, config.history / MAX_POINTS)
    start = math.floor((now - config.history) / resolution) * resolution
    try:
        series = await metrics.range(query, start, now, resolution)
    except ports.Unavailable as exc:
        log.warning("history of %r unavailable: %s", query, exc)
        return None, model
    times, values = _history(series)
    try:
        return await state.compute(
            fc.forecast, times, values, now=now, horizon=auto.horizon, config=config, state=model
        )
    except Exception:  # a broken pool or a bug in a fit must not stop reactive scaling
        log.exception("forecast failed")
        return None, model


def _decision_condition(decision: sc.Decision, why: str, generation: int) -> dict[str, Any]:
    if decision.reason is sc.Reason.METRIC_UNAVAILABLE:
        message = f"holding {decision.current} replicas: {why or decision.message}"
        return _condition("False", decision.reason.value, message, generation)
    return _condition("True", decision.reason.value, decision.message, generation)


# --- predictive maintenance ------------------------------------------------------------------

# The memory check owns these top-level keys of status.maintenance; the restart and disk checks
# own status.maintenance.restarts and .disk; each owns its entries of the shared requests list
# (by their ``resource``; entries without one are memory's, as written before there were others).
_MEMORY_KEYS = ("lastEvaluated", "reason", "message", "pods", "findings")
MAX_REQUESTS = 64  # status.maintenance.requests maxItems


async def _write_maintenance(
    memo: Any,
    body: Mapping[str, Any],
    resource: tr.Resource,
    part: Mapping[str, Any] | None,
    requests: Sequence[Mapping[str, Any]] | None = None,
) -> None:
    """Replace one check's part of status.maintenance (None removes it) and, unless
    ``requests`` is None, its requests; the other checks' parts are kept."""
    runtime = _runtime(memo)
    uid = body["metadata"]["uid"]
    lock = _autoscaler(memo).maintenance_locks.setdefault(uid, asyncio.Lock())
    async with lock:
        status = runtime.reported.get(uid) or body.get("status") or {}
        previous = status.get("maintenance") or {}
        merged = dict(previous)
        if resource is tr.Resource.MEMORY:
            # Set to None, not dropped: status is merge-patched, and a missing key would stay.
            merged.update(dict.fromkeys(_MEMORY_KEYS))
            merged.update(part or {})
        else:
            merged[resource.value] = None if part is None else dict(part)
        if requests is not None or part is None:
            kept = [
                r
                for r in previous.get("requests") or []
                if isinstance(r, Mapping) and r.get("resource", tr.Resource.MEMORY.value) != resource.value
            ]
            # The CRD bounds the list; past it the API server would refuse the whole patch.
            merged["requests"] = [*kept, *(requests or [])][:MAX_REQUESTS]
        live = any(v not in (None, [], {}) for v in merged.values())
        await rs.write_status(runtime, body, {"maintenance": merged if live else None})


def _own_part(previous: Mapping[str, Any], resource: tr.Resource) -> dict[str, Any]:
    if resource is tr.Resource.MEMORY:
        return {k: previous[k] for k in _MEMORY_KEYS if previous.get(k) is not None}
    return dict(previous.get(resource.value) or {})


def _known_requests(previous: Mapping[str, Any], resource: tr.Resource) -> dict[str, float]:
    """Recorded requests of one check by key, with when they were first made."""
    now = time.time()
    return {
        r["key"]: _seconds(r.get("requestedAt"), now)
        for r in previous.get("requests") or []
        if isinstance(r, Mapping)
        and "key" in r
        and r.get("resource", tr.Resource.MEMORY.value) == resource.value
    }


async def _notify_maintenance(memo: Any, body: Mapping[str, Any], message: str, title: str, key: str) -> None:
    _post(memo, body, "Warning", mt.CAUSE, message)
    runtime = _runtime(memo)
    if runtime.notifier is None:
        return
    meta = body["metadata"]
    with contextlib.suppress(ports.Unavailable):
        await runtime.notifier.notify(
            ports.Notification(
                namespace=meta["namespace"],
                service=meta["name"],
                kind=mt.CAUSE,
                severity="warning",
                title=f"{meta['namespace']}/{meta['name']}: {title}",
                message=message,
                key=f"{meta['uid']}/{key}",
            )
        )


async def _maintain(memo: Any, indexes: Mapping[str, Any], stale: Mapping[str, Any]) -> None:
    body = _fresh(indexes, stale)
    if body is None:
        return
    runtime = _runtime(memo)
    meta = body["metadata"]
    status = runtime.reported.get(meta["uid"]) or body.get("status") or {}
    memory = tr.Resource.MEMORY
    # Memory requests outlive a spec error: a bad edit does not make a leak go away.
    spec = await _check_spec(
        memo, body, memory, lambda raw: mt.parse(raw.get("healing"), raw.get("template")), keep_requests=True
    )
    if spec is None:
        return
    now = time.time()
    per_pod = await _trend_history(memo, body, memory, spec, label="pod", now=now)
    if per_pod is None:
        return
    findings = await _autoscaler(memo).compute(mt.assess_all, sorted(per_pod.items()), spec, now=now)
    known = _known_requests(status.get("maintenance") or {}, memory)
    wanted, new = mt.requests(findings, known, now=now)
    maintenance = {
        "lastEvaluated": sc.rfc3339(now),
        "reason": "Evaluated",
        "message": f"{len(findings)} pod(s) checked, {len(wanted)} predicted to run out within the lead time",
        "pods": len(findings),
        "findings": mt.report(findings),
    }
    await _write_maintenance(memo, body, memory, maintenance, [r.to_dict(sc.rfc3339) for r in wanted])
    for request in new:
        title = "pod predicted to run out of memory"
        await _notify_maintenance(memo, body, request.message, title, request.key)


class _Switchable(Protocol):
    @property
    def enabled(self) -> bool: ...


_S = TypeVar("_S", bound=_Switchable)


async def _check_spec(
    memo: Any,
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
        await _write_maintenance(memo, body, resource, invalid, None if keep_requests else [])
        return None
    if not spec.enabled:
        await _write_maintenance(memo, body, resource, None)
        return None
    return spec


async def _trend_history(
    memo: Any, body: Mapping[str, Any], resource: tr.Resource, spec: Any, *, label: str, now: float
) -> dict[str, list[tuple[float, float]]] | None:
    """The trend query's history over ``spec.window``, per subject (the ``label`` of each series),
    or None after recording in status why there is none. Requests already recorded stay when
    Prometheus is unavailable: losing it does not make a leak or a filling disk go away."""
    runtime = _runtime(memo)
    meta = body["metadata"]
    status = runtime.reported.get(meta["uid"]) or body.get("status") or {}
    previous = _own_part(status.get("maintenance") or {}, resource)
    if runtime.metrics is None:
        unavailable = {**previous, "reason": "MetricUnavailable", "message": "no metrics provider"}
        await _write_maintenance(memo, body, resource, unavailable)
        return None
    query = sc.render_query(spec.query, namespace=meta["namespace"], service=meta["name"])
    try:
        series = await runtime.metrics.range(query, now - spec.window, now, spec.step)
    except ports.Unavailable as exc:
        changes = {**previous, "reason": "MetricUnavailable", "message": str(exc)[:1024]}
        await _write_maintenance(memo, body, resource, changes)
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


async def _check_restarts(memo: Any, indexes: Mapping[str, Any], stale: Mapping[str, Any]) -> None:
    await _check_trend(memo, indexes, stale, tr.Resource.RESTARTS)


async def _check_disk(memo: Any, indexes: Mapping[str, Any], stale: Mapping[str, Any]) -> None:
    await _check_trend(memo, indexes, stale, tr.Resource.DISK)


async def _check_trend(
    memo: Any, indexes: Mapping[str, Any], stale: Mapping[str, Any], resource: tr.Resource
) -> None:
    """The restart-count trend of the service's pods, or the disk trend of the nodes they run
    on: findings in status.maintenance.<resource>, requests for the healing loop, Events."""
    body = _fresh(indexes, stale)
    if body is None:
        return
    runtime = _runtime(memo)
    meta = body["metadata"]
    status = runtime.reported.get(meta["uid"]) or body.get("status") or {}
    parse = tr.parse_restarts if resource is tr.Resource.RESTARTS else tr.parse_disk
    spec = await _check_spec(memo, body, resource, lambda raw: parse(raw.get("healing")))
    if spec is None:
        return
    now = time.time()
    label = "pod" if resource is tr.Resource.RESTARTS else "node"
    per_subject = await _trend_history(memo, body, resource, spec, label=label, now=now)
    if per_subject is None:
        return
    if resource is tr.Resource.DISK:
        hosting = _hosting_nodes(indexes, body)
        per_subject = {node: points for node, points in per_subject.items() if node in hosting}
    findings = await _autoscaler(memo).compute(tr.assess_all, sorted(per_subject.items()), spec, now=now)
    known = _known_requests(status.get("maintenance") or {}, resource)
    wanted, new = tr.requests(findings, known, spec, now=now)
    what = "pod(s)" if resource is tr.Resource.RESTARTS else "node(s) hosting its pods"
    limit = "restart limit" if resource is tr.Resource.RESTARTS else "disk threshold"
    part = {
        "lastEvaluated": sc.rfc3339(now),
        "reason": "Evaluated",
        "message": f"{len(findings)} {what} checked, {len(wanted)} predicted to reach the {limit} "
        "within the lead time",
        "checked": len(findings),
        "findings": tr.report(findings),
    }
    await _write_maintenance(memo, body, resource, part, [r.to_dict(sc.rfc3339) for r in wanted])
    for request in new:
        if resource is tr.Resource.RESTARTS:
            title = "pod predicted to reach its restart limit"
        else:
            title = f"node predicted to fill its disk ({request.action})"
        await _notify_maintenance(memo, body, request.message, title, request.key)


async def _check_risk(memo: Any, indexes: Mapping[str, Any], stale: Mapping[str, Any]) -> None:
    """The block's failure-risk query for the nodes the service's pods run on: readings in
    status.maintenance.risk, a request for the node action per node at or above the threshold.
    Unlike a trend, a reading is only as good as it is fresh: when Prometheus does not answer,
    or answers NaN or nothing for a node, that node gets no request (recorded ones are cleared)
    and the service's status says why; the log says it once, when it starts."""
    body = _fresh(indexes, stale)
    if body is None:
        return
    runtime = _runtime(memo)
    meta = body["metadata"]
    status = runtime.reported.get(meta["uid"]) or body.get("status") or {}
    resource = tr.Resource.RISK
    spec = await _check_spec(memo, body, resource, lambda raw: tr.parse_risk(raw.get("healing")))
    if spec is None:
        return
    now = time.time()
    previous = _own_part(status.get("maintenance") or {}, resource)
    query = sc.render_query(spec.query, namespace=meta["namespace"], service=meta["name"])
    hosting = _hosting_nodes(indexes, body)
    try:
        if runtime.metrics is None:
            raise ports.Unavailable("no metrics provider")
        samples = await runtime.metrics.instant(query) if hosting else ()
    except ports.Unavailable as exc:
        message = f"failure risk unknown, no node acted on: {exc}"[:1024]
        if previous.get("reason") != "MetricUnavailable":
            log.warning("%s/%s: %s", meta["namespace"], meta["name"], message)
        blind = {"lastEvaluated": sc.rfc3339(now), "reason": "MetricUnavailable", "message": message}
        await _write_maintenance(memo, body, resource, blind, [])
        return
    pairs = [(s.labels.get("node", ""), s.value) for s in samples]
    readings = tr.assess_risk(pairs, hosting, spec)
    known = _known_requests(status.get("maintenance") or {}, resource)
    wanted, new = tr.risk_requests(readings, known, spec, query, now=now)
    reason, message = tr.risk_summary(readings, spec)
    if reason != "Evaluated" and previous.get("reason") != reason:
        log.warning("%s/%s: %s", meta["namespace"], meta["name"], message)
    part = {
        "lastEvaluated": sc.rfc3339(now),
        "reason": reason,
        "message": message,
        "checked": len(readings),
        "findings": [r.to_dict() for r in readings][:20],
    }
    await _write_maintenance(memo, body, resource, part, [r.to_dict(sc.rfc3339) for r in wanted])
    for request in new:
        title = f"node failure risk at or above {spec.limit:g} ({request.action})"
        await _notify_maintenance(memo, body, request.message, title, request.key)


_WORKERS: dict[str, Callable[[Any, Mapping[str, Any], Mapping[str, Any]], Any]] = {
    "autoscaling": _autoscale,
    "maintenance": _maintain,
    "restarts": _check_restarts,
    "disk": _check_disk,
    "risk": _check_risk,
}


def _seconds(value: Any, default: float) -> float:
    if not isinstance(value, str):
        return default
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return default
