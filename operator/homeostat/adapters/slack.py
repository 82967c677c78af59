"""Slack: approval requests with buttons, their updates, notifications, and click verification.

This is the only module that talks to Slack (slack-sdk's ``AsyncWebClient``), so the rules
that keep Slack safe to use live here: credentials are read from files (a mounted Secret),
never from the environment, and never appear in a log line, an exception message or a repr;
a button carries only the Approval's namespace/name; every click is verified against the
signing secret over the raw body before anything is parsed. Slack's 429 ``Retry-After`` is
honoured and connection errors are retried a little; anything beyond that is reported as
``ports.Unavailable`` and the caller keeps the request pending and retries later.

Approvers may be Slack user groups. Membership is read with ``usergroups.users.list`` when a
click arrives, only for the groups the request names, and kept for ``GROUP_TTL`` seconds so a
burst of clicks costs one call per group; a group that cannot be read counts as not containing
the clicker (the gate fails closed) and is not cached, so the next click asks again.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, cast

import aiohttp
import slack_sdk.errors
import slack_sdk.http_retry.builtin_async_handlers as retry
import slack_sdk.signature
import slack_sdk.web.async_client
import slack_sdk.web.async_slack_response

from homeostat import ports
from homeostat.core import approval as appr
from homeostat.core import fields

DEFAULT_API_URL = "https://slack.com/api/"
TOKEN_FILE = "bot-token"
SIGNING_SECRET_FILE = "signing-secret"
ACTION_APPROVE = "homeostat.approve"
ACTION_DENY = "homeostat.deny"
BLOCK_ACTIONS = "homeostat.approval"
REPLAY_WINDOW = 300.0  # seconds; Slack's documented limit for a request's timestamp
_TIMEOUT = 10  # seconds per Slack call
_SECTION_LIMIT = 2900  # Slack refuses section text over 3000 characters
_HOOK_HOSTS = frozenset({"hooks.slack.com"})
_KEPT_KEYS = 1024  # notification keys remembered to drop repeats
_MAX_PAGES = 10  # of conversations.list / conversations.history when looking for a message
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{6,}$")
METADATA_EVENT = "homeostat_approval"
GROUP_TTL = 60.0  # seconds a user group's member list is trusted; short, so removals take effect soon
_KEPT_GROUPS = 256  # member lists cached at most

_log = logging.getLogger("homeostat.adapters.slack")

# slack-sdk builds debug lines for every call when its logger is left at NOTSET; keep it quiet.
_SDK_LOGGER = logging.getLogger("homeostat.adapters.slack.sdk")
_SDK_LOGGER.setLevel(logging.WARNING)


class SlackConfigError(Exception):
    """The Slack credentials are missing or unreadable; the message never contains them."""


class _Secret:
    """A string that never prints itself."""

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


def read_secret(directory: Path, name: str) -> _Secret:
    path = directory / name
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise SlackConfigError(
            f"cannot read Slack secret {path}: {exc.strerror or type(exc).__name__}"
        ) from None
    if not value:
        raise SlackConfigError(f"Slack secret {path} is empty")
    return _Secret(value)


class _Clock:
    """Wall time for the replay window; an injected clock (any ``.now()``) tests it."""

    def now(self) -> float:
        return time.time()


class SlackApprovals:
    """``ports.ApprovalMessenger`` and ``ports.Notifier`` over Slack's Web API."""

    def __init__(
        self,
        token: _Secret,
        signing_secret: _Secret,
        api_url: str = DEFAULT_API_URL,
        *,
        channel: str = "",
        clock: Any = None,
        rate_limit_retries: int = 2,
    ) -> None:
        base = api_url if api_url.endswith("/") else api_url + "/"
        self._api_url = base
        self._token = token
        self.channel = channel
        self._client = slack_sdk.web.async_client.AsyncWebClient(
            token=token.reveal(),
            base_url=base,
            timeout=_TIMEOUT,
            logger=_SDK_LOGGER,
            retry_handlers=[
                retry.AsyncConnectionErrorRetryHandler(max_retry_count=2),
                retry.AsyncRateLimitErrorRetryHandler(max_retry_count=rate_limit_retries),
                retry.AsyncServerErrorRetryHandler(max_retry_count=1),
            ],
        )
        self._verifier = slack_sdk.signature.SignatureVerifier(
            signing_secret.reveal(), cast(slack_sdk.signature.Clock, clock or _Clock())
        )
        self._clock = clock or _Clock()
        self._sent: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.group_ttl = GROUP_TTL
        self._members: collections.OrderedDict[str, tuple[float, frozenset[str]]] = collections.OrderedDict()

    def __repr__(self) -> str:
        return f"SlackApprovals(api_url={self._api_url!r}, channel={self.channel!r})"

    # --- ports.ApprovalMessenger -------------------------------------------------------------

    async def post(self, ref: appr.Ref, request: appr.ApprovalRequest, state: appr.State) -> ports.MessageRef:
        channel = request.channel or self.channel
        if not channel:
            raise ports.Rejected("no Slack channel: set spec.channel or HOMEOSTAT_SLACK_CHANNEL")
        response = await self._call(
            "chat.postMessage",
            channel=channel,
            text=summary(request, state),
            blocks=blocks(ref, request, state),
            # Lets ``find`` recognise the message later; only the approval's identity, no secrets.
            metadata={"event_type": METADATA_EVENT, "event_payload": {"approval": str(ref)}},
        )
        return ports.MessageRef(str(response.get("channel") or channel), str(response["ts"]))

    async def find(
        self, ref: appr.Ref, request: appr.ApprovalRequest, since: float
    ) -> ports.MessageRef | None:
        channel = request.channel or self.channel
        if not channel:
            return None
        channel_id = channel if _CHANNEL_ID.match(channel) else await self._channel_id(channel.lstrip("#"))
        if channel_id is None:
            return None
        cursor = ""
        for _ in range(_MAX_PAGES):
            response = await self._call(
                "conversations.history",
                channel=channel_id,
                oldest=f"{since - 60:.6f}",  # a little slack for clock skew between us and Slack
                include_all_metadata=True,
                limit=200,
                **({"cursor": cursor} if cursor else {}),
            )
            for message in response.get("messages") or ():
                metadata = message.get("metadata") or {}
                payload = metadata.get("event_payload") or {}
                if metadata.get("event_type") == METADATA_EVENT and payload.get("approval") == str(ref):
                    return ports.MessageRef(channel_id, str(message["ts"]))
            cursor = str((response.get("response_metadata") or {}).get("next_cursor") or "")
            if not cursor:
                break
        return None

    async def _channel_id(self, name: str) -> str | None:
        cursor = ""
        for _ in range(_MAX_PAGES):
            response = await self._call(
                "conversations.list",
                types="public_channel,private_channel",
                exclude_archived=True,
                limit=200,
                **({"cursor": cursor} if cursor else {}),
            )
            for item in response.get("channels") or ():
                if item.get("name") == name:
                    return str(item["id"])
            cursor = str((response.get("response_metadata") or {}).get("next_cursor") or "")
            if not cursor:
                break
        return None

    async def update(
        self, message: ports.MessageRef, ref: appr.Ref, request: appr.ApprovalRequest, state: appr.State
    ) -> None:
        await self._call(
            "chat.update",
            channel=message.channel,
            ts=message.ts,
            text=summary(request, state),
            blocks=blocks(ref, request, state),
        )

    async def reply(self, response_url: str, text: str) -> None:
        if not self._may_reply_to(response_url):
            _SDK_LOGGER.warning("not replying to a response_url outside Slack: %s", _origin(response_url))
            return
        body = {"response_type": "ephemeral", "replace_original": False, "text": _escape(text)}
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_TIMEOUT)) as session,
                session.post(response_url, json=body) as response,
            ):
                await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ports.Unavailable(f"Slack response_url: {type(exc).__name__}") from None

    def parse_click(self, body: bytes) -> ports.Click | None:
        return parse_click(body)

    async def member_groups(self, user: str, groups: frozenset[str]) -> frozenset[str]:
        found: set[str] = set()
        for group in sorted(groups):
            members = await self._group_members(group)
            if members is not None and user in members:
                found.add(group)
        return frozenset(found)

    async def _group_members(self, group: str) -> frozenset[str] | None:
        now = self._clock.now()
        cached = self._members.get(group)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            response = await self._request(
                "usergroups.users.list", lambda: self._client.usergroups_users_list(usergroup=group)
            )
        except ports.Unavailable as exc:
            _log.warning("cannot read Slack user group %s, so nobody counts as its member: %s", group, exc)
            return None
        users = response.get("users")
        if not isinstance(users, list):
            _log.warning(
                "Slack user group %s: no member list in the answer; nobody counts as a member", group
            )
            return None
        members = frozenset(str(u) for u in users)
        self._members[group] = (now + self.group_ttl, members)
        self._members.move_to_end(group)
        while len(self._members) > _KEPT_GROUPS:
            self._members.popitem(last=False)
        return members

    def verify(self, body: bytes, headers: Mapping[str, str]) -> ports.Verification:
        lowered = {k.lower(): v for k, v in headers.items()}
        timestamp, signature = lowered.get("x-slack-request-timestamp"), lowered.get("x-slack-signature")
        if not timestamp or not signature:
            return ports.Verification.MISSING
        try:
            sent = int(timestamp)
        except ValueError:
            return ports.Verification.STALE
        if abs(self._clock.now() - sent) > REPLAY_WINDOW:
            return ports.Verification.STALE
        # Slack signs ASCII: a signature that is not, or a body that is not UTF-8, cannot be one
        # of its requests, and would make the verifier raise (compare_digest, decode) instead.
        if not signature.isascii() or not _utf8(body):
            return ports.Verification.BAD_SIGNATURE
        if not self._verifier.is_valid(body=body, timestamp=timestamp, signature=signature):
            return ports.Verification.BAD_SIGNATURE
        return ports.Verification.VALID

    # --- ports.Notifier ----------------------------------------------------------------------

    async def notify(self, notification: ports.Notification) -> None:
        if notification.key in self._sent:
            return
        if not self.channel:
            raise ports.Unavailable("no Slack channel configured for notifications")
        icon = {"critical": ":rotating_light:", "warning": ":warning:"}.get(
            notification.severity, ":information_source:"
        )
        title = _escape(f"{notification.title}")
        text = f"{icon} *{title}*\n{_escape(notification.message)}"
        context = _escape(f"{notification.kind} · {notification.namespace}/{notification.service}")
        await self._call(
            "chat.postMessage",
            channel=self.channel,
            text=f"{notification.title}: {notification.message}"[:_SECTION_LIMIT],
            blocks=[
                {"type": "section", "text": {"type": "mrkdwn", "text": text[:_SECTION_LIMIT]}},
                {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
            ],
        )
        self._sent[notification.key] = None
        while len(self._sent) > _KEPT_KEYS:
            self._sent.popitem(last=False)

    # --- plumbing ----------------------------------------------------------------------------

    async def check(self) -> str:
        """``auth.test``: who the bot is; raises ``Unavailable`` when Slack refuses or is down."""
        response = await self._call("auth.test")
        return str(response.get("user_id") or response.get("user") or "")

    async def _call(self, method: str, **kwargs: Any) -> Mapping[str, Any]:
        return await self._request(method, lambda: self._client.api_call(method, json=kwargs or None))

    async def _request(
        self,
        method: str,
        send: Callable[[], Awaitable[slack_sdk.web.async_slack_response.AsyncSlackResponse]],
    ) -> Mapping[str, Any]:
        """One Web API call through the client's retry handlers (429 Retry-After included), with
        every failure turned into ``ports.Unavailable`` whose text never holds a credential."""
        try:
            response = await send()
        except slack_sdk.errors.SlackApiError as exc:
            error = exc.response.get("error") if exc.response is not None else None
            status = getattr(exc.response, "status_code", "?")
            raise ports.Unavailable(f"Slack {method}: {error or 'error'} (HTTP {status})") from None
        except (aiohttp.ClientError, TimeoutError, slack_sdk.errors.SlackClientError) as exc:
            raise ports.Unavailable(f"Slack {method}: {type(exc).__name__}") from None
        data = response.data
        if not isinstance(data, Mapping):
            raise ports.Unavailable(f"Slack {method}: unexpected response")
        return data

    def _may_reply_to(self, url: str) -> bool:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme == "https" and parsed.hostname in _HOOK_HOSTS:
            return True
        return _origin(url) == _origin(self._api_url)

    async def close(self) -> None:
        session = getattr(self._client, "session", None)
        if session is not None:
            await session.close()


def _origin(url: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    return f"{parsed.scheme}://{parsed.netloc}"


def load(secrets_dir: str | None, api_url: str | None, channel: str | None) -> SlackApprovals:
    """Build the adapter from configuration; ``ConfigError`` (one line, no secret) if unusable."""
    if not secrets_dir:
        raise SlackConfigError("HOMEOSTAT_SECRETS_DIR is not set")
    directory = Path(secrets_dir)
    token = read_secret(directory, TOKEN_FILE)
    signing = read_secret(directory, SIGNING_SECRET_FILE)
    return SlackApprovals(token, signing, api_url or DEFAULT_API_URL, channel=channel or "")


# --- Block Kit ---------------------------------------------------------------------------------


def _escape(text: str) -> str:
    """Slack mrkdwn control characters; evidence and causes are data, never markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_PHASE_LINE = {
    appr.ApprovalPhase.APPROVED: ":white_check_mark: *Approved*",
    appr.ApprovalPhase.DENIED: ":no_entry: *Denied*",
    appr.ApprovalPhase.EXPIRED: ":hourglass: *Expired* (denied by timeout)",
}


def summary(request: appr.ApprovalRequest, state: appr.State) -> str:
    """The plain-text fallback (notifications, screen readers)."""
    head = f"{request.action} {request.target}"
    if state.phase is appr.ApprovalPhase.PENDING:
        return f"Approval needed: {head} ({request.risk.value} risk): {request.cause}"[:_SECTION_LIMIT]
    return f"{state.phase.value}: {head}: {state.reason}"[:_SECTION_LIMIT]


def _who(decision: appr.RecordedDecision) -> str:
    if decision.identity.channel is appr.Channel.SLACK:
        return f"<@{_escape(decision.identity.user)}>"
    return f"`{_escape(decision.identity.user)}` (kubectl)"


def blocks(ref: appr.Ref, request: appr.ApprovalRequest, state: appr.State) -> list[dict[str, Any]]:
    """The request message: context, evidence, and Approve/Deny while it is pending."""
    facts = [
        ("Action", request.action),
        ("Target", str(request.target)),
        ("Service", f"{ref.namespace}/{request.service}" if request.service else ref.namespace),
        ("Risk", request.risk.value),
        ("Requested by", request.requester),
        ("Approvals needed", str(request.required)),
        ("Expires", fields.rfc3339(request.expires_at)),
    ]
    result: list[dict[str, Any]] = [
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": f"*Approval needed:* {_escape(request.cause)}"[:_SECTION_LIMIT],
            },
        },
        {
            "type": "section",
            "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{_escape(v)}"[:1900]} for k, v in facts],
        },
    ]
    if request.evidence:
        lines = "\n".join(f"• *{_escape(k)}*: {_escape(v)}" for k, v in sorted(request.evidence.items()))
        result.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*Evidence*\n{lines}"[:_SECTION_LIMIT]}}
        )
    approvals = [d for d in state.decisions if d.verdict is appr.Vote.APPROVE]
    if state.phase is appr.ApprovalPhase.PENDING:
        if approvals:
            who = ", ".join(_who(d) for d in approvals)
            result.append(
                {"type": "context", "elements": [{"type": "mrkdwn", "text": f"Approved so far by {who}"}]}
            )
        result.append(_buttons(ref, request))
    else:
        line = _PHASE_LINE[state.phase]
        if state.decisions:
            line += " by " + ", ".join(_who(d) for d in state.decisions)
        if state.decided_at is not None:
            line += f" at {fields.rfc3339(state.decided_at)}"
        result.append({"type": "section", "text": {"type": "mrkdwn", "text": line[:_SECTION_LIMIT]}})
    result.append(
        {"type": "context", "elements": [{"type": "mrkdwn", "text": _escape(f"Approval {ref} · homeostat")}]}
    )
    return result


def _buttons(ref: appr.Ref, request: appr.ApprovalRequest) -> dict[str, Any]:
    value = str(ref)  # namespace/name: the only thing a click carries back
    approve: dict[str, Any] = {
        "type": "button",
        "action_id": ACTION_APPROVE,
        "text": {"type": "plain_text", "text": "Approve"},
        "style": "primary",
        "value": value,
    }
    deny: dict[str, Any] = {
        "type": "button",
        "action_id": ACTION_DENY,
        "text": {"type": "plain_text", "text": "Deny"},
        "style": "danger",
        "value": value,
    }
    if request.risk.destructive:
        approve["confirm"] = {
            "title": {"type": "plain_text", "text": "Approve this action?"},
            "text": {
                "type": "mrkdwn",
                "text": _escape(f"{request.action} {request.target} ({request.risk.value} risk)")[:300],
            },
            "confirm": {"type": "plain_text", "text": "Approve"},
            "deny": {"type": "plain_text", "text": "Cancel"},
            "style": "danger",
        }
    return {"type": "actions", "block_id": BLOCK_ACTIONS, "elements": [approve, deny]}


def _utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def parse_click(body: bytes) -> ports.Click | None:
    """The click in a verified interactivity request (form field ``payload``, JSON of type
    ``block_actions``), or None when it is not one of our buttons."""
    try:
        form = urllib.parse.parse_qs(body.decode(), strict_parsing=True)
        payload = json.loads(form["payload"][0])
    except (UnicodeDecodeError, ValueError, KeyError, IndexError, RecursionError):
        return None  # RecursionError: a payload nested thousands deep, signed or not
    if not isinstance(payload, Mapping) or payload.get("type") != "block_actions":
        return None
    actions, user = payload.get("actions"), payload.get("user")
    if not isinstance(actions, list) or len(actions) != 1 or not isinstance(user, Mapping):
        return None
    action = actions[0]
    if not isinstance(action, Mapping):
        return None
    verdicts = {ACTION_APPROVE: appr.Vote.APPROVE, ACTION_DENY: appr.Vote.DENY}
    verdict = verdicts.get(str(action.get("action_id")))
    value, user_id = action.get("value"), user.get("id")
    if verdict is None or not isinstance(value, str) or not isinstance(user_id, str) or not user_id:
        return None
    namespace, _, name = value.partition("/")
    if not appr.Ref(namespace, name).valid:
        return None
    response_url = payload.get("response_url")
    return ports.Click(
        appr.Ref(namespace, name), verdict, user_id, response_url if isinstance(response_url, str) else ""
    )
