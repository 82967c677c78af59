"""kopf wiring for Approval objects: open the request, take kubectl votes, expire, sync Slack.

The decisions themselves are ``handlers.approval_flow`` transactions over the pure core
(``core.approval``). No kopf timers and no finalizers: the expiry clock and the workers are
startup tasks, like the reconcile's resync.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import kopf

from homeostat.core import approval as appr
from homeostat.core import fields
from homeostat.handlers import approval_flow as flow
from homeostat.handlers import runtime as rt

APPROVALS = (appr.GROUP, appr.VERSION, appr.PLURAL)
WORKERS = 4

_log = logging.getLogger("homeostat.approvals")


# --- kopf handlers -------------------------------------------------------------------------------

_KEPT_METADATA = ("name", "namespace", "uid", "resourceVersion", "ownerReferences")


@kopf.index(*APPROVALS)  # type: ignore[arg-type]
async def approvals(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[rt.Key, dict[str, Any]]:
    meta = body.get("metadata") or {}
    slim = {k: meta[k] for k in _KEPT_METADATA if k in meta}
    return {
        (namespace, name): {
            "metadata": slim,
            "spec": dict(body.get("spec") or {}),
            "status": dict(body.get("status") or {}),
        }
    }


@kopf.on.event(*APPROVALS)
async def approval_changed(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED":
        runtime = rt.of(memo)
        uid = body["metadata"].get("uid")
        runtime.approvals.posted.pop(uid, None)
        runtime.approvals.shown.pop(uid, None)
        return
    runtime = rt.of(memo)
    ref = appr.Ref(body["metadata"]["namespace"], body["metadata"]["name"])
    status = body.get("status") or {}
    try:
        request = appr.parse_request(body.get("spec") or {})
    except ValueError as exc:
        _log.warning("approval %s is invalid and is ignored: %s", ref, exc)
        return
    if not status.get("phase"):
        done = await flow.transact(runtime, ref, flow.open_pending())
        if done.written and done.body is not None:
            flow.audit(
                "request",
                ref,
                action=request.action,
                target=str(request.target),
                cause=request.cause,
                requester=request.requester,
                risk=request.risk.value,
                quorum=request.required,
                expiresAt=fields.rfc3339(request.expires_at),
            )
            flow.service_event(
                runtime,
                done.body,
                "Normal",
                "ApprovalRequested",
                f"{ref.name}: {request.action} {request.target} needs approval ({request.cause})",
            )
            runtime.telemetry.approval("Requested")
    if status.get("votes"):
        done = await flow.transact(runtime, ref, flow.decide_votes(runtime))
        if done.body is not None:
            flow.report(
                runtime, done.body, ref, done.results, identity="kubectl", channel=appr.Channel.KUBECTL.value
            )
    runtime.submit(lambda: flow.sync_slack(runtime, ref))


@kopf.on.startup()
async def start_approvals(*, memo: Any, logger: Any, **kwargs: Any) -> None:
    """The expiry clock and the workers, as plain tasks (kopf timers add finalizers). They run in
    every replica: a standby's HTTP port still takes clicks, and the status write with its
    resourceVersion check keeps decisions single across replicas."""
    runtime = rt.of(memo)
    runtime.approvals.index = kwargs.get("approvals")
    _ensure_started(runtime)


def _ensure_started(runtime: rt.Runtime) -> None:
    if runtime.approvals.tasks:
        return
    # A few workers, so one slow Slack call (a long Retry-After) does not hold up other requests'
    # clicks; the per-approval locks keep each request's work in order.
    for _ in range(WORKERS):
        runtime.approvals.tasks.append(asyncio.create_task(_worker(runtime)))
    runtime.approvals.tasks.append(asyncio.create_task(_clock(runtime)))


async def _worker(runtime: rt.Runtime) -> None:
    while True:
        job = await runtime.approvals.jobs.get()
        try:
            await job()
        except Exception:  # one failing job must not stop the worker
            _log.exception("approval job failed")


async def _clock(runtime: rt.Runtime) -> None:
    """Expire due requests and retry Slack work whose backoff has passed."""
    while True:
        await asyncio.sleep(runtime.settings.approval_tick_seconds)
        now = runtime.clock()
        for key, store in list((runtime.approvals.index or {}).items()):
            values = list(store)
            if not values:
                continue
            body = values[-1]
            ref = appr.Ref(*key)
            phase = (body.get("status") or {}).get("phase") or appr.ApprovalPhase.PENDING.value
            try:
                expires = fields.parse_rfc3339((body.get("spec") or {}).get("expiresAt"), "spec.expiresAt")
            except ValueError:
                continue
            if (
                phase == appr.ApprovalPhase.PENDING.value
                and now >= expires
                and key not in runtime.approvals.expiring
            ):
                runtime.approvals.expiring.add(key)
                runtime.submit(_expire_job(runtime, ref))
        for key, at in list(runtime.approvals.retry_at.items()):
            if now >= at:
                runtime.approvals.retry_at.pop(key, None)
                ref = appr.Ref(*key)
                runtime.submit(functools.partial(flow.sync_slack, runtime, ref))


def _expire_job(runtime: rt.Runtime, ref: appr.Ref) -> Callable[[], Awaitable[None]]:
    async def job() -> None:
        try:
            done = await flow.transact(runtime, ref, flow.expire_due(runtime))
        finally:
            runtime.approvals.expiring.discard((ref.namespace, ref.name))
        if done.written and done.body is not None:
            flow.report(runtime, done.body, ref, done.results, identity="timeout", channel="timeout")
            await flow.sync_slack(runtime, ref)

    return job
