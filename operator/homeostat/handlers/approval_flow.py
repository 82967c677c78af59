"""Transactions on Approval objects, shared by the approval handlers and the HTTP endpoint.

Every decision (a Slack click, a kubectl vote, an expiry) goes through ``transact``: read the
Approval, let the pure core decide, write the status with the resourceVersion it was computed
from, and on a conflict read again. That is what makes a double click or an approve/deny race
end in exactly one decision, even across operator processes. Slack work (posting, updating)
runs in the approval workers with backoff, so a Slack outage never blocks a decision and never
turns into an action: the request simply stays pending. Not a handler module: the approval
handlers (``handlers.approvals``) and the Slack endpoint (``handlers.interactions``) both call
it, and handler modules never import each other.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from homeostat import ports
from homeostat.core import approval as appr
from homeostat.core import children as kids
from homeostat.core import fields
from homeostat.handlers import runtime as rt

MAX_BACKOFF = 60.0
_CONFLICT_RETRIES = 8

audit_log = logging.getLogger("homeostat.audit")
_log = logging.getLogger("homeostat.approvals")


# --- audit -------------------------------------------------------------------------------------


def audit(event: str, ref: appr.Ref, **fields: Any) -> None:
    """One JSON line per request and decision; no secrets ever reach these fields."""
    audit_log.info(json.dumps({"audit": event, "approval": str(ref), **fields}, sort_keys=True, default=str))


def service_event(runtime: rt.Runtime, body: Mapping[str, Any], type: str, reason: str, message: str) -> None:
    """An Event on the ReplicatedService the request is about (or on the Approval if none).

    Clicks are decided by workers that may run in a standby replica or outside any kopf
    handler: the runtime posts Events through its own port, from anywhere.
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
    runtime.event_about(involved, type, reason, message)


# --- transactions ------------------------------------------------------------------------------

Decider = Callable[
    [appr.ApprovalRequest, appr.State, Mapping[str, Any]],
    tuple[Mapping[str, Any] | None, list[appr.DecisionResult]],
]


@dataclasses.dataclass(frozen=True)
class Transacted:
    body: Mapping[str, Any] | None  # the Approval after the write (or as read, if nothing changed)
    results: list[appr.DecisionResult]
    written: bool


async def transact(runtime: rt.Runtime, ref: appr.Ref, decider: Decider) -> Transacted:
    """Read, decide, write with the read resourceVersion; on a conflict, do it all again."""
    if not ref.valid:
        raise ports.Rejected(f"{ref!s:.300} is not an Approval name the API server could hold")
    async with runtime.approvals.locks[(ref.namespace, ref.name)]:
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


def decide_click(runtime: rt.Runtime, identity: appr.Identity, verdict: appr.Vote) -> Decider:
    def decider(
        request: appr.ApprovalRequest, state: appr.State, status: Mapping[str, Any]
    ) -> tuple[Mapping[str, Any] | None, list[appr.DecisionResult]]:
        result = appr.decide(request, state, identity, verdict, runtime.clock())
        patch = _state_patch(result.state) if result.state != state or not status.get("phase") else None
        return patch, [result]

    return decider


def decide_votes(runtime: rt.Runtime) -> Decider:
    """Judge the kubectl votes waiting in status.votes, oldest first, and clear them."""

    def decider(
        request: appr.ApprovalRequest, state: appr.State, status: Mapping[str, Any]
    ) -> tuple[Mapping[str, Any] | None, list[appr.DecisionResult]]:
        votes = list(status.get("votes") or ())
        if not votes:
            return None, []
        results: list[appr.DecisionResult] = []
        rejections = list(status.get("rejections") or ())
        for vote in votes:
            identity = appr.Identity(
                appr.Channel.KUBECTL, str(vote.get("user") or ""), tuple(vote.get("groups") or ())
            )
            try:
                verdict = appr.Vote(vote.get("verdict"))
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


def expire_due(runtime: rt.Runtime) -> Decider:
    def decider(
        request: appr.ApprovalRequest, state: appr.State, status: Mapping[str, Any]
    ) -> tuple[Mapping[str, Any] | None, list[appr.DecisionResult]]:
        new = appr.expire(request, state, runtime.clock())
        if new == state:
            return None, []
        return _state_patch(new), [appr.DecisionResult(new, appr.DecisionOutcome.ACCEPTED, None, new.reason)]

    return decider


def open_pending() -> Decider:
    """Record Pending on a new request, so `kubectl get approvals` shows it at once."""

    def decider(
        request: appr.ApprovalRequest, state: appr.State, status: Mapping[str, Any]
    ) -> tuple[Mapping[str, Any] | None, list[appr.DecisionResult]]:
        if status.get("phase"):
            return None, []
        return _state_patch(state), []

    return decider


def report(
    runtime: rt.Runtime,
    body: Mapping[str, Any],
    ref: appr.Ref,
    results: list[appr.DecisionResult],
    *,
    identity: str,
    channel: str,
    written: bool = False,
) -> None:
    """Audit every accepted or refused decision: a log line always, an Event for accepted ones."""
    for result in results:
        state = result.state
        last = (
            state.decisions[-1]
            if state.decisions and result.outcome is appr.DecisionOutcome.ACCEPTED
            else None
        )
        verdict = last.verdict.value if last else ""
        who = str(last.identity) if last else identity
        audit(
            "decision" if result.outcome is appr.DecisionOutcome.ACCEPTED else "decision-refused",
            ref,
            who=who,
            channel=channel,
            verdict=verdict,
            phase=state.phase.value,
            rejection=result.rejection.value if result.rejection else None,
            message=result.message,
        )
        if result.outcome is appr.DecisionOutcome.ACCEPTED:
            reason = {
                appr.ApprovalPhase.APPROVED: "ApprovalGranted",
                appr.ApprovalPhase.DENIED: "ApprovalDenied",
                appr.ApprovalPhase.EXPIRED: "ApprovalExpired",
                appr.ApprovalPhase.PENDING: "ApprovalVoted",
            }[state.phase]
            kind = (
                "Warning"
                if state.phase in (appr.ApprovalPhase.DENIED, appr.ApprovalPhase.EXPIRED)
                else "Normal"
            )
            service_event(runtime, body, kind, reason, f"{ref.name}: {result.message}")
            runtime.telemetry.approval(
                state.phase.value if state.phase is not appr.ApprovalPhase.PENDING else "Voted"
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


async def sync_slack(runtime: rt.Runtime, ref: appr.Ref) -> None:
    """Post the request once; update the message after each decision. On failure, back off."""
    messenger = runtime.messenger
    if not ports.configured(messenger):
        return
    key = (ref.namespace, ref.name)
    if runtime.approvals.retry_at.get(key, 0.0) > runtime.clock():
        return  # backing off: the clock retries when it is time, whatever events arrive meanwhile
    async with runtime.approvals.slack_locks[key]:
        body = await runtime.store.get(ref.namespace, ref.name)
        if body is None:
            return
        try:
            request = appr.parse_request(body.get("spec") or {})
        except ValueError:
            return
        try:
            await _show(runtime, messenger, ref, body, request)
            runtime.approvals.attempts.pop(key, None)
            runtime.approvals.retry_at.pop(key, None)
        except ports.Rejected as exc:
            # Retrying cannot help (no channel configured): say so once and stop.
            _log.warning("approval %s cannot be posted to Slack: %s", ref, exc)
            await _record_slack(runtime, ref, {"lastError": str(exc)[:256]})
        except ports.Unavailable as exc:
            attempts = runtime.approvals.attempts.get(key, 0) + 1
            runtime.approvals.attempts[key] = attempts
            delay = min(MAX_BACKOFF, 2.0 ** min(attempts, 6))
            runtime.approvals.retry_at[key] = runtime.clock() + delay
            _log.warning(
                "Slack for approval %s failed (attempt %d, retry in %.0fs): %s", ref, attempts, delay, exc
            )
            await _record_slack(runtime, ref, {"attempts": attempts, "lastError": str(exc)[:256]})


async def _show(
    runtime: rt.Runtime,
    messenger: ports.ApprovalMessenger,
    ref: appr.Ref,
    body: Mapping[str, Any],
    request: appr.ApprovalRequest,
) -> None:
    """Make the Slack message show the request as it stands: post it if there is none yet,
    update it if what it shows is behind, and record which in the Approval's status."""
    uid = body["metadata"]["uid"]
    status = body.get("status") or {}
    state = appr.expire(request, appr.State.from_storage(status), runtime.clock())
    stored = status.get("slack") or {}
    message = runtime.approvals.posted.get(uid)
    if message is None and stored.get("posted") and stored.get("ts"):
        message = ports.MessageRef(str(stored.get("channel")), str(stored.get("ts")))
    shown = runtime.approvals.shown.get(uid) or stored.get("updatedPhase")
    if message is None:
        if state.phase.terminal or not (request.channel or getattr(messenger, "channel", "")):
            return  # decided before Slack ever heard of it (kubectl), or no channel
        message = await _post_once(runtime, messenger, ref, request, state=state, stored=stored)
        runtime.approvals.posted[uid] = message
        runtime.approvals.shown[uid] = _shown(state)
        record = {"posted": True, "channel": message.channel, "ts": message.ts, "updatedPhase": _shown(state)}
        await _record_slack(runtime, ref, {**record, "attempts": 0, "lastError": None})
        audit("slack-posted", ref, channel=message.channel, ts=message.ts)
    elif shown != _shown(state):
        await messenger.update(message, ref, request, state)
        runtime.approvals.shown[uid] = _shown(state)
        await _record_slack(runtime, ref, {"updatedPhase": _shown(state), "attempts": 0, "lastError": None})
        audit("slack-updated", ref, phase=state.phase.value)


async def _post_once(
    runtime: rt.Runtime,
    messenger: ports.ApprovalMessenger,
    ref: appr.Ref,
    request: appr.ApprovalRequest,
    *,
    state: appr.State,
    stored: Mapping[str, Any],
) -> ports.MessageRef:
    """Post the request, unless an earlier post whose ts was never recorded (a crash between
    posting and recording, or Slack failing after accepting it) can be found first."""
    since = stored.get("postingSince")
    if since:
        found = await messenger.find(ref, request, fields.parse_rfc3339(since, "status.slack.postingSince"))
        if found is not None:
            audit("slack-found", ref, channel=found.channel, ts=found.ts)
            return found
    else:
        # Recorded before posting, or no post happens: it tells a restarted operator to look first.
        marker = {"postingSince": fields.rfc3339(runtime.clock())}
        await runtime.store.patch_status(ref.namespace, ref.name, {"slack": marker}, None)
    return await messenger.post(ref, request, state)


async def _record_slack(runtime: rt.Runtime, ref: appr.Ref, slack: Mapping[str, Any]) -> None:
    try:
        await runtime.store.patch_status(ref.namespace, ref.name, {"slack": dict(slack)}, None)
    except (ports.Unavailable, ports.Rejected) as exc:
        _log.warning("cannot record Slack state of approval %s: %s", ref, exc)


# --- decisions from Slack (called by the interactivity server) ----------------------------------


async def slack_identity(runtime: rt.Runtime, click: ports.Click) -> appr.Identity:
    """The clicker, with the approver user groups of the request that Slack says they are in.

    Membership is looked up only for the groups this request names (a spec never changes, so
    reading it before the transaction is safe) and only here, in the worker: the 3-second
    acknowledgement never waits for Slack."""
    identity = appr.Identity(appr.Channel.SLACK, click.user)
    messenger = runtime.messenger
    if not ports.configured(messenger):
        return identity
    body = runtime.approval_known(click.ref) or await runtime.store.get(click.ref.namespace, click.ref.name)
    try:
        wanted = appr.parse_request((body or {}).get("spec") or {}).approvers.slack_groups
    except ValueError:
        return identity  # transact reports the invalid request
    if not wanted:
        return identity
    groups = await messenger.member_groups(click.user, wanted)
    return dataclasses.replace(identity, groups=tuple(sorted(groups)))


async def apply_click(runtime: rt.Runtime, click: ports.Click) -> None:
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
        if result.outcome is appr.DecisionOutcome.REJECTED:
            await _reply(runtime, click, result.message)
    if done.written:
        await sync_slack(runtime, click.ref)


async def _reply(runtime: rt.Runtime, click: ports.Click, text: str) -> None:
    if not click.response_url:
        return
    try:
        await runtime.messenger.reply(click.response_url, text)
    except ports.Unavailable as exc:
        _log.info("could not reply to %s in Slack: %s", click.user, exc)
