"""kopf wiring for Approval objects: post the request, take decisions, expire, keep Slack in step.

Every decision (a Slack click, a kubectl vote, an expiry) goes through ``transact``: read the
Approval, let the pure core decide, write the status with the resourceVersion it was computed
from, and on a conflict read again. That is what makes a double click or an approve/deny race
end in exactly one decision, even across operator processes. Slack work (posting, updating)
runs in a background worker with backoff, so a Slack outage never blocks a decision and never
turns into an action: the request simply stays pending. No kopf timers and no finalizers: the
expiry clock is a startup task, like the reconcile's resync.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

import kopf

from homeostat import ports
from homeostat.core import approval as appr
from homeostat.core import children as kids

APPROVALS = (appr.GROUP, appr.VERSION, appr.PLURAL)
MEMO_KEY = "approvals"
MAX_BACKOFF = 60.0
WORKERS = 4
_CONFLICT_RETRIES = 8

audit_log = logging.getLogger("homeostat.audit")
_log = logging.getLogger("homeostat.approvals")

Key = tuple[str, str]


class ApprovalsRuntime:
    """Per-process collaborators of the approval handlers, put into kopf's memo by the CLI."""

    def __init__(
        self,
        store: ports.ApprovalStore,
        messenger: ports.ApprovalMessenger | None,
        *,
        http_bind: str = "0.0.0.0",
        http_port: int | None = 8080,
        tick_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.messenger = messenger
        self.telemetry: ports.Telemetry = ports.NopTelemetry()  # the CLI sets the real one
        self.http_bind = http_bind
        self.http_port = http_port  # None: no HTTP server
        self.tick_seconds = tick_seconds
        self.clock = clock
        self.locks: collections.defaultdict[Key, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self.slack_locks: collections.defaultdict[Key, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        # Posted messages by approval uid: an event may carry a body older than our own write of
        # the message ts, and must not post a second message.
        self.posted: dict[str, ports.MessageRef] = {}
        self.shown: dict[str, str] = {}
        self.retry_at: dict[Key, float] = {}
        self.expiring: set[Key] = set()
        self.attempts: dict[Key, int] = {}
        self.jobs: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
        self.index: Any = None
        self.tasks: list[asyncio.Task[Any]] = []
        self.background: set[asyncio.Task[None]] = set()

    def known(self, ref: appr.Ref) -> Mapping[str, Any] | None:
        """The latest body of an Approval this process has seen (from the kopf index)."""
        if self.index is None:
            return None
        store = self.index.get((ref.namespace, ref.name))
        values = list(store) if store is not None else []
        return values[-1] if values else None

    def submit(self, job: Callable[[], Awaitable[None]]) -> None:
        self.jobs.put_nowait(job)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a fire-and-forget coroutine, keeping a reference so it is not collected early."""
        task = asyncio.create_task(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)


def runtime_of(memo: Any) -> ApprovalsRuntime:
    runtime = memo.get(MEMO_KEY)
    if not isinstance(runtime, ApprovalsRuntime):
        raise kopf.PermanentError("approvals runtime missing from memo; start with `homeostat run`")
    return runtime


def _ref(body: Mapping[str, Any]) -> appr.Ref:
    return appr.Ref(body["metadata"]["namespace"], body["metadata"]["name"])


# --- audit -------------------------------------------------------------------------------------


def audit(event: str, ref: appr.Ref, **fields: Any) -> None:
    """One JSON line per request and decision; no secrets ever reach these fields."""
    audit_log.info(json.dumps({"audit": event, "approval": str(ref), **fields}, sort_keys=True, default=str))


def service_event(
    runtime: ApprovalsRuntime, body: Mapping[str, Any], type: str, reason: str, message: str
) -> None:
    """An Event on the ReplicatedService the request is about (or on the Approval if none).

    Posted through the store rather than ``kopf.event``: clicks are decided by workers that may
    run in a standby replica or outside any kopf handler, where kopf's Event poster is missing.
    """
    meta, spec = body["metadata"], body.get("spec") or {}
    service = spec.get("service")
    if service:
        uid = next(
            (o.get("uid") for o in meta.get("ownerReferences") or () if o.get("kind") == kids.KIND),
            None,
        )
        involved = {
            "apiVersion": kids.API_VERSION,
            "kind": kids.KIND,
            "name": service,
            "namespace": meta["namespace"],
        }
    else:
        uid = meta.get("uid")
        involved = {
            "apiVersion": appr.API_VERSION,
            "kind": appr.KIND,
            "name": meta["name"],
            "namespace": meta["namespace"],
        }
    if uid:
        involved["uid"] = uid
    runtime.spawn(_post_event(runtime, involved, type, reason, message[:1000]))


async def _post_event(
    runtime: ApprovalsRuntime, involved: Mapping[str, Any], type: str, reason: str, message: str
) -> None:
    try:
        await runtime.store.post_event(involved, type, reason, message)
    except (ports.Unavailable, ports.Rejected) as exc:
        _log.warning("could not post the %s Event for %s: %s", reason, involved.get("name"), exc)


# --- transactions ------------------------------------------------------------------------------

Decider = Callable[
    [appr.Request, appr.State, Mapping[str, Any]], tuple[Mapping[str, Any] | None, list[appr.Result]]
]


@dataclasses.dataclass(frozen=True)
class Transacted:
    body: Mapping[str, Any] | None  # the Approval after the write (or as read, if nothing changed)
    results: list[appr.Result]
    written: bool


async def transact(runtime: ApprovalsRuntime, ref: appr.Ref, decider: Decider) -> Transacted:
    """Read, decide, write with the read resourceVersion; on a conflict, do it all again."""
    if not ref.valid:
        raise ports.Rejected(f"{ref!s:.300} is not an Approval name the API server could hold")
    async with runtime.locks[(ref.namespace, ref.name)]:
        for _ in range(_CONFLICT_RETRIES):
            body = await runtime.store.get(ref.namespace, ref.name)
            if body is None:
                return Transacted(None, [], False)
            request = appr.parse_request(body.get("spec") or {})
            state = appr.State.from_storage(body.get("status"))
            patch, results = decider(request, state, body.get("status") or {})
            if not patch:
                return Transacted(body, results, False)
            version = body["metadata"].get("resourceVersion")
            try:
                written = await runtime.store.patch_status(ref.namespace, ref.name, patch, version)
            except ports.Conflict:
                continue
            if not _stored(written, patch):
                # Audit lines, Events and metrics follow from this answer: they may only tell of
                # a decision the API server's own answer shows it kept.
                raise ports.Unavailable(f"the API server did not store the decision on approval {ref}")
            return Transacted(written, results, True)
    raise ports.Unavailable(f"approval {ref} kept changing while being decided")


def _stored(written: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
    if "phase" not in patch:
        return True
    try:
        return appr.State.from_storage(written.get("status")) == appr.State.from_storage(patch)
    except (ValueError, KeyError, TypeError):
        return False


def _state_patch(state: appr.State) -> dict[str, Any]:
    stored = state.as_in_storage()
    return stored


def decide_click(runtime: ApprovalsRuntime, identity: appr.Identity, verdict: appr.Verdict) -> Decider:
    def decider(
        request: appr.Request, state: appr.State, status: Mapping[str, Any]
    ) -> tuple[Mapping[str, Any] | None, list[appr.Result]]:
        result = appr.decide(request, state, identity, verdict, runtime.clock())
        patch = _state_patch(result.state) if result.state != state or not status.get("phase") else None
        return patch, [result]

    return decider


def decide_votes(runtime: ApprovalsRuntime) -> Decider:
    """Judge the kubectl votes waiting in status.votes, oldest first, and clear them."""

    def decider(
        request: appr.Request, state: appr.State, status: Mapping[str, Any]
    ) -> tuple[Mapping[str, Any] | None, list[appr.Result]]:
        votes = list(status.get("votes") or ())
        if not votes:
            return None, []
        results: list[appr.Result] = []
        rejections = list(status.get("rejections") or ())
        for vote in votes:
            identity = appr.Identity(
                appr.Channel.KUBECTL, str(vote.get("user") or ""), tuple(vote.get("groups") or ())
            )
            try:
                verdict = appr.Verdict(vote.get("verdict"))
            except ValueError:
                continue
            result = appr.with_vote(
                appr.decide(request, state, identity, verdict, runtime.clock()), str(vote.get("id"))
            )
            state = result.state
            results.append(result)
            if result.rejection is not None:
                rejections.append(
                    {
                        "vote": str(vote.get("id"))[:64],
                        "user": identity.user[:253],
                        "reason": result.rejection.value,
                        "message": result.message[:1024],
                    }
                )
        patch: dict[str, Any] = {**_state_patch(state), "votes": None}
        patch["rejections"] = rejections[-appr.MAX_REJECTIONS :]
        return patch, results

    return decider


def expire_due(runtime: ApprovalsRuntime) -> Decider:
    def decider(
        request: appr.Request, state: appr.State, status: Mapping[str, Any]
    ) -> tuple[Mapping[str, Any] | None, list[appr.Result]]:
        new = appr.expire(request, state, runtime.clock())
        if new == state:
            return None, []
        return _state_patch(new), [appr.Result(new, appr.Outcome.ACCEPTED, None, new.reason)]

    return decider


def open_pending() -> Decider:
    """Record Pending on a new request, so `kubectl get approvals` shows it at once."""

    def decider(
        request: appr.Request, state: appr.State, status: Mapping[str, Any]
    ) -> tuple[Mapping[str, Any] | None, list[appr.Result]]:
        if status.get("phase"):
            return None, []
        return _state_patch(state), []

    return decider


def report(
    runtime: ApprovalsRuntime,
    body: Mapping[str, Any],
    ref: appr.Ref,
    results: list[appr.Result],
    *,
    identity: str,
    channel: str,
    written: bool = False,
) -> None:
    """Audit every accepted or refused decision: a log line always, an Event for accepted ones."""
    for result in results:
        state = result.state
        last = state.decisions[-1] if state.decisions and result.outcome is appr.Outcome.ACCEPTED else None
        verdict = last.verdict.value if last else ""
        who = str(last.identity) if last else identity
        audit(
            "decision" if result.outcome is appr.Outcome.ACCEPTED else "decision-refused",
            ref,
            who=who,
            channel=channel,
            verdict=verdict,
            phase=state.phase.value,
            rejection=result.rejection.value if result.rejection else None,
            message=result.message,
        )
        if result.outcome is appr.Outcome.ACCEPTED:
            reason = {
                appr.Phase.APPROVED: "ApprovalGranted",
                appr.Phase.DENIED: "ApprovalDenied",
                appr.Phase.EXPIRED: "ApprovalExpired",
                appr.Phase.PENDING: "ApprovalVoted",
            }[state.phase]
            kind = "Warning" if state.phase in (appr.Phase.DENIED, appr.Phase.EXPIRED) else "Normal"
            service_event(runtime, body, kind, reason, f"{ref.name}: {result.message}")
            runtime.telemetry.approval(
                state.phase.value if state.phase is not appr.Phase.PENDING else "Voted"
            )
        else:
            runtime.telemetry.approval("Refused")
            if result.rejection is appr.Rejection.EXPIRED and written:
                # The click found the request past its expiry and recorded the timeout.
                audit("expired", ref, phase=state.phase.value, message=state.reason)
                service_event(runtime, body, "Warning", "ApprovalExpired", f"{ref.name}: {state.reason}")
            service_event(
                runtime, body, "Warning", "ApprovalDecisionRefused", f"{ref.name}: {result.message}"
            )


# --- Slack ---------------------------------------------------------------------------------------


def _shown(state: appr.State) -> str:
    return f"{state.phase.value}:{len(state.decisions)}"


async def sync_slack(runtime: ApprovalsRuntime, ref: appr.Ref) -> None:
    """Post the request once; update the message after each decision. On failure, back off."""
    messenger = runtime.messenger
    if messenger is None:
        return
    key = (ref.namespace, ref.name)
    if runtime.retry_at.get(key, 0.0) > runtime.clock():
        return  # backing off: the clock retries when it is time, whatever events arrive meanwhile
    async with runtime.slack_locks[key]:
        body = await runtime.store.get(ref.namespace, ref.name)
        if body is None:
            return
        uid = body["metadata"]["uid"]
        try:
            request = appr.parse_request(body.get("spec") or {})
        except ValueError:
            return
        status = body.get("status") or {}
        state = appr.expire(request, appr.State.from_storage(status), runtime.clock())
        stored = status.get("slack") or {}
        message = runtime.posted.get(uid)
        if message is None and stored.get("posted") and stored.get("ts"):
            message = ports.MessageRef(str(stored.get("channel")), str(stored.get("ts")))
        shown = runtime.shown.get(uid) or stored.get("updatedPhase")
        try:
            if message is None:
                if state.phase.terminal or not (request.channel or getattr(messenger, "channel", "")):
                    return  # decided before Slack ever heard of it (kubectl), or no channel
                message = await _post_once(runtime, messenger, ref, request, state=state, stored=stored)
                runtime.posted[uid] = message
                runtime.shown[uid] = _shown(state)
                await _record_slack(
                    runtime,
                    ref,
                    {
                        "posted": True,
                        "channel": message.channel,
                        "ts": message.ts,
                        "updatedPhase": _shown(state),
                        "attempts": 0,
                        "lastError": None,
                    },
                )
                audit("slack-posted", ref, channel=message.channel, ts=message.ts)
            elif shown != _shown(state):
                await messenger.update(message, ref, request, state)
                runtime.shown[uid] = _shown(state)
                await _record_slack(
                    runtime, ref, {"updatedPhase": _shown(state), "attempts": 0, "lastError": None}
                )
                audit("slack-updated", ref, phase=state.phase.value)
            runtime.attempts.pop(key, None)
            runtime.retry_at.pop(key, None)
        except ports.Rejected as exc:
            # Retrying cannot help (no channel configured): say so once and stop.
            _log.warning("approval %s cannot be posted to Slack: %s", ref, exc)
            await _record_slack(runtime, ref, {"lastError": str(exc)[:256]})
        except ports.Unavailable as exc:
            attempts = runtime.attempts.get(key, 0) + 1
            runtime.attempts[key] = attempts
            delay = min(MAX_BACKOFF, 2.0 ** min(attempts, 6))
            runtime.retry_at[key] = runtime.clock() + delay
            _log.warning(
                "Slack for approval %s failed (attempt %d, retry in %.0fs): %s", ref, attempts, delay, exc
            )
            await _record_slack(runtime, ref, {"attempts": attempts, "lastError": str(exc)[:256]})


async def _post_once(
    runtime: ApprovalsRuntime,
    messenger: ports.ApprovalMessenger,
    ref: appr.Ref,
    request: appr.Request,
    *,
    state: appr.State,
    stored: Mapping[str, Any],
) -> ports.MessageRef:
    """Post the request, unless an earlier post whose ts was never recorded (a crash between
    posting and recording, or Slack failing after accepting it) can be found first."""
    since = stored.get("postingSince")
    if since:
        found = await messenger.find(ref, request, appr.parse_time(since, "status.slack.postingSince"))
        if found is not None:
            audit("slack-found", ref, channel=found.channel, ts=found.ts)
            return found
    else:
        # Recorded before posting, or no post happens: it tells a restarted operator to look first.
        marker = {"postingSince": appr.format_time(runtime.clock())}
        await runtime.store.patch_status(ref.namespace, ref.name, {"slack": marker}, None)
    return await messenger.post(ref, request, state)


async def _record_slack(runtime: ApprovalsRuntime, ref: appr.Ref, slack: Mapping[str, Any]) -> None:
    try:
        await runtime.store.patch_status(ref.namespace, ref.name, {"slack": dict(slack)}, None)
    except (ports.Unavailable, ports.Rejected) as exc:
        _log.warning("cannot record Slack state of approval %s: %s", ref, exc)


# --- decisions from Slack (called by the interactivity server) ----------------------------------


async def slack_identity(runtime: ApprovalsRuntime, click: ports.Click) -> appr.Identity:
    """The clicker, with the approver user groups of the request that Slack says they are in.

    Membership is looked up only for the groups this request names (a spec never changes, so
    reading it before the transaction is safe) and only here, in the worker: the 3-second
    acknowledgement never waits for Slack."""
    identity = appr.Identity(appr.Channel.SLACK, click.user)
    messenger = runtime.messenger
    if messenger is None:
        return identity
    body = runtime.known(click.ref) or await runtime.store.get(click.ref.namespace, click.ref.name)
    try:
        wanted = appr.parse_request((body or {}).get("spec") or {}).approvers.slack_groups
    except ValueError:
        return identity  # transact reports the invalid request
    if not wanted:
        return identity
    groups = await messenger.member_groups(click.user, wanted)
    return dataclasses.replace(identity, groups=tuple(sorted(groups)))


async def apply_click(runtime: ApprovalsRuntime, click: ports.Click) -> None:
    """The background half of a click: decide, audit, update the message or tell the clicker."""
    try:
        identity = await slack_identity(runtime, click)
    except (ports.Unavailable, ports.Rejected) as exc:
        _log.warning("click on approval %s by slack:%s not recorded: %s", click.ref, click.user, exc)
        await _reply(runtime, click, "Your decision could not be recorded right now; please try again.")
        return
    try:
        done = await transact(runtime, click.ref, decide_click(runtime, identity, click.verdict))
    except (ports.Unavailable, ports.Rejected, ValueError) as exc:
        _log.warning("click on approval %s by %s not recorded: %s", click.ref, identity, exc)
        await _reply(runtime, click, "Your decision could not be recorded right now; please try again.")
        return
    if done.body is None:
        await _reply(runtime, click, "This approval request no longer exists.")
        return
    report(
        runtime,
        done.body,
        click.ref,
        done.results,
        identity=str(identity),
        channel=appr.Channel.SLACK.value,
        written=done.written,
    )
    for result in done.results:
        if result.outcome is appr.Outcome.REJECTED:
            await _reply(runtime, click, result.message)
    if done.written:
        await sync_slack(runtime, click.ref)


async def _reply(runtime: ApprovalsRuntime, click: ports.Click, text: str) -> None:
    if runtime.messenger is None or not click.response_url:
        return
    try:
        await runtime.messenger.reply(click.response_url, text)
    except ports.Unavailable as exc:
        _log.info("could not reply to %s in Slack: %s", click.user, exc)


# --- kopf handlers -------------------------------------------------------------------------------

_KEPT_METADATA = ("name", "namespace", "uid", "resourceVersion", "ownerReferences")


@kopf.index(*APPROVALS)  # type: ignore[arg-type]
async def approvals(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
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
        runtime = runtime_of(memo)
        uid = body["metadata"].get("uid")
        runtime.posted.pop(uid, None)
        runtime.shown.pop(uid, None)
        return
    runtime = runtime_of(memo)
    ref = _ref(body)
    status = body.get("status") or {}
    try:
        request = appr.parse_request(body.get("spec") or {})
    except ValueError as exc:
        _log.warning("approval %s is invalid and is ignored: %s", ref, exc)
        return
    if not status.get("phase"):
        done = await transact(runtime, ref, open_pending())
        if done.written and done.body is not None:
            audit(
                "request",
                ref,
                action=request.action,
                target=str(request.target),
                cause=request.cause,
                requester=request.requester,
                risk=request.risk.value,
                quorum=request.required,
                expiresAt=appr.format_time(request.expires_at),
            )
            service_event(
                runtime,
                done.body,
                "Normal",
                "ApprovalRequested",
                f"{ref.name}: {request.action} {request.target} needs approval ({request.cause})",
            )
            runtime.telemetry.approval("Requested")
    if status.get("votes"):
        done = await transact(runtime, ref, decide_votes(runtime))
        if done.body is not None:
            report(
                runtime, done.body, ref, done.results, identity="kubectl", channel=appr.Channel.KUBECTL.value
            )
    runtime.submit(lambda: sync_slack(runtime, ref))


@kopf.on.startup()
async def start_approvals(*, memo: Any, logger: Any, **kwargs: Any) -> None:
    """The expiry clock and the workers, as plain tasks (kopf timers add finalizers). They run in
    every replica: a standby's HTTP port still takes clicks, and the status write with its
    resourceVersion check keeps decisions single across replicas."""
    runtime = memo.get(MEMO_KEY)
    if not isinstance(runtime, ApprovalsRuntime):
        logger.info("approvals are not configured in this process")
        return
    runtime.index = kwargs.get("approvals")
    _ensure_started(runtime)


def _ensure_started(runtime: ApprovalsRuntime) -> None:
    if runtime.tasks:
        return
    # A few workers, so one slow Slack call (a long Retry-After) does not hold up other requests'
    # clicks; the per-approval locks keep each request's work in order.
    for _ in range(WORKERS):
        runtime.tasks.append(asyncio.create_task(_worker(runtime)))
    runtime.tasks.append(asyncio.create_task(_clock(runtime)))


@kopf.on.cleanup()
async def stop_approvals(*, memo: Any, **_: Any) -> None:
    runtime = memo.get(MEMO_KEY)
    if not isinstance(runtime, ApprovalsRuntime):
        return
    for task in runtime.tasks:
        task.cancel()


async def _worker(runtime: ApprovalsRuntime) -> None:
    while True:
        job = await runtime.jobs.get()
        try:
            await job()
        except Exception:  # one failing job must not stop the worker
            _log.exception("approval job failed")


async def _clock(runtime: ApprovalsRuntime) -> None:
    """Expire due requests and retry Slack work whose backoff has passed."""
    while True:
        await asyncio.sleep(runtime.tick_seconds)
        now = runtime.clock()
        for key, store in list((runtime.index or {}).items()):
            values = list(store)
            if not values:
                continue
            body = values[-1]
            ref = appr.Ref(*key)
            phase = (body.get("status") or {}).get("phase") or appr.Phase.PENDING.value
            try:
                expires = appr.parse_time((body.get("spec") or {}).get("expiresAt"), "spec.expiresAt")
            except ValueError:
                continue
            if phase == appr.Phase.PENDING.value and now >= expires and key not in runtime.expiring:
                runtime.expiring.add(key)
                runtime.submit(_expire_job(runtime, ref))
        for key, at in list(runtime.retry_at.items()):
            if now >= at:
                runtime.retry_at.pop(key, None)
                ref = appr.Ref(*key)
                runtime.submit(functools.partial(sync_slack, runtime, ref))


def _expire_job(runtime: ApprovalsRuntime, ref: appr.Ref) -> Callable[[], Awaitable[None]]:
    async def job() -> None:
        try:
            done = await transact(runtime, ref, expire_due(runtime))
        finally:
            runtime.expiring.discard((ref.namespace, ref.name))
        if done.written and done.body is not None:
            report(runtime, done.body, ref, done.results, identity="timeout", channel="timeout")
            await sync_slack(runtime, ref)

    return job
