"""The per-service periodic loop: every feature's evaluation on its own interval, per service.

Autoscaling and the maintenance checks register their work with ``runtime.periodic`` (the
kind, the interval a service wants it at, and the evaluation); this loop walks the
``services`` index, starts what is due and cancels what a service no longer wants.

Not a kopf timer: kopf puts a finalizer on every object with a timer, and a finalizer would
block deleting a service whenever the operator is down. The loop starts from the first watch
event, so a replica paused by kopf peering (which gets none) never evaluates anything.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Hashable, Mapping
from typing import Any

import kopf

from homeostat import ports
from homeostat.handlers import runtime as rt

TICK = 1.0  # how often the loop looks for due work; intervals are per service

log = logging.getLogger("homeostat.periodic")


@kopf.on.startup()
async def check_periodic(*, memo: Any, **kwargs: Any) -> None:
    rt.of(memo)
    if "services" not in kwargs:
        raise kopf.PermanentError("the services index is not available to startup handlers")


@kopf.on.event(*rt.RSVC, id="periodic_start")
async def start_periodic(*, memo: Any, **kwargs: Any) -> None:
    runtime = rt.of(memo)
    if runtime.periodic.task is None:
        runtime.periodic.task = asyncio.create_task(_loop(runtime, kwargs))


def work_of(runtime: rt.Runtime, body: Mapping[str, Any]) -> dict[str, float]:
    """The work a service wants (kind -> interval), recomputed only when what it reads changed."""
    meta, status = body["metadata"], body.get("status") or {}
    jobs = rt.PERIODIC.values()
    basis: Hashable = (meta.get("generation"), tuple(job.basis(status) for job in jobs))
    cached = runtime.periodic.work.get(meta["uid"])
    if cached is None or cached[0] != basis:
        wanted = {job.kind: interval for job in jobs if (interval := job.wants(body)) is not None}
        cached = (basis, wanted)
        runtime.periodic.work[meta["uid"]] = cached
    return cached[1]


async def _loop(runtime: rt.Runtime, indexes: Mapping[str, Any]) -> None:
    while True:
        wake = runtime.clock() + TICK
        try:
            wake = min(wake, schedule(runtime, indexes, runtime.clock()))
        except Exception:  # the loop must outlive any one bad object
            log.exception("periodic loop")
        # Woken at the next due time, not on a coarse tick: the forecast horizon covers one
        # interval between evaluations, and a late evaluation would eat into the startup delay.
        await asyncio.sleep(max(0.01, wake - runtime.clock()))


def schedule(runtime: rt.Runtime, indexes: Mapping[str, Any], now: float) -> float:
    """Start the evaluations that are due; return when the next one falls due."""
    state = runtime.periodic
    seen: set[tuple[str, str]] = set()
    uids: set[str] = set()
    wake = math.inf
    for store in list(indexes["services"].values()):
        body = rt.latest(store)
        if body is None or body["metadata"].get("deletionTimestamp"):
            continue
        uid = body["metadata"]["uid"]
        uids.add(uid)
        for kind, interval in work_of(runtime, body).items():
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
            job = rt.PERIODIC[kind]
            state.running[key] = asyncio.create_task(_guarded(job, runtime, indexes, body))
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
    job: rt.PeriodicJob, runtime: rt.Runtime, indexes: Mapping[str, Any], stale: Mapping[str, Any]
) -> None:
    meta = stale["metadata"]
    body = fresh(indexes, stale)
    if body is None:
        return
    try:
        await job.work(runtime, indexes, body)
    except asyncio.CancelledError:
        raise
    except ports.Unavailable as exc:
        log.warning("%s/%s: %s", meta["namespace"], meta["name"], exc)
    except Exception:
        log.exception("evaluating %s of %s/%s", job.kind, meta["namespace"], meta["name"])


def fresh(indexes: Mapping[str, Any], body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The newest copy of the service (the loop's may be an interval old), None once deleted."""
    meta = body["metadata"]
    newest = rt.latest(indexes["services"].get((meta["namespace"], meta["name"])))
    if newest is None or newest["metadata"].get("uid") != meta["uid"]:
        return None
    return newest  # type: ignore[no-any-return]
