"""The operator's HTTP port: Slack interactivity (``POST /slack/interactions``), ``/healthz`` and
the operator's Prometheus metrics (``GET /metrics``).

A click is an unauthenticated HTTP request until its signature says otherwise, so the order
of checks is the point: size and content type before reading, the signature over the raw
bytes before parsing anything, and authorization (approvers, requester, quorum, expiry) in the
core on every click. Slack wants an answer within 3 seconds, so the request is acknowledged at
once and the decision, the Slack update and the reply to the clicker happen in the approvals
worker. Refused clicks get HTTP 200 with an ephemeral text (Slack shows a non-2xx answer as a
generic error, which would hide the reason) and leave the Approval untouched.

Status codes: 415 wrong content type, 413 body too large, 401 missing/bad signature or stale
timestamp, 400 not one of our buttons, 404 unknown approval, 429 too many requests from one
source, 503 Slack not configured, 200 otherwise.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any

import aiohttp.web
import kopf

from homeostat import ports
from homeostat.core import approval as appr
from homeostat.handlers import approval_flow as flow
from homeostat.handlers import runtime as rt

MAX_BODY = 64 * 1024  # Slack's block_actions payloads are a few kilobytes
RATE_LIMIT = 30  # requests per source ...
RATE_WINDOW = 10.0  # ... per this many seconds
_FORM = "application/x-www-form-urlencoded"

_log = logging.getLogger("homeostat.http")


class RateLimiter:
    """A sliding window of request times per source address."""

    def __init__(self, limit: int = RATE_LIMIT, window: float = RATE_WINDOW) -> None:
        self.limit, self.window = limit, window
        self._seen: dict[str, collections.deque[float]] = {}

    def allow(self, source: str, now: float) -> bool:
        times = self._seen.setdefault(source, collections.deque())
        while times and now - times[0] > self.window:
            times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now)
        if len(self._seen) > 10_000:  # forget idle sources so the table cannot grow forever
            for key in [k for k, v in self._seen.items() if not v or now - v[-1] > self.window]:
                del self._seen[key]
        return True


def _ephemeral(text: str) -> aiohttp.web.Response:
    return aiohttp.web.json_response({"response_type": "ephemeral", "replace_original": False, "text": text})


def make_app(runtime: rt.Runtime, limiter: RateLimiter | None = None) -> aiohttp.web.Application:
    limiter = limiter or RateLimiter()

    async def metrics(_: aiohttp.web.Request) -> aiohttp.web.Response:
        body, content_type = runtime.telemetry.exposition()
        return aiohttp.web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(text="ok\n")

    async def interactions(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return await _interaction(runtime, limiter, request)

    app = aiohttp.web.Application(client_max_size=MAX_BODY)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/slack/interactions", interactions)
    return app


async def _interaction(
    runtime: rt.Runtime, limiter: RateLimiter, request: aiohttp.web.Request
) -> aiohttp.web.Response:
    """One click: refused in the order of the module docstring, else acknowledged at once."""
    source = request.remote or "unknown"
    body = await _read(limiter, request, source)
    if isinstance(body, aiohttp.web.Response):
        return body
    messenger = runtime.messenger
    if not ports.configured(messenger):
        return aiohttp.web.Response(status=503, text="Slack is not configured\n")
    verdict = messenger.verify(body, request.headers)
    if verdict is not ports.Verification.VALID:
        _log.warning("refused a Slack interaction from %s: %s", source, verdict.value)
        return aiohttp.web.Response(status=401, text=f"{verdict.value}\n")
    click = messenger.parse_click(body)
    if click is None:
        return aiohttp.web.Response(status=400, text="not a Homeostat approval button\n")
    known = runtime.approval_known(click.ref) or await runtime.store.get(click.ref.namespace, click.ref.name)
    if known is None:
        return aiohttp.web.Response(status=404, text=f"no approval {click.ref}\n")
    # A first answer from what this process knows; the decision itself is made again on a
    # fresh read in the worker, so a stale view here can never approve anything.
    try:
        asked = appr.parse_request(known.get("spec") or {})
        preview = appr.decide(
            asked,
            appr.State.from_storage(known.get("status")),
            appr.Identity(appr.Channel.SLACK, click.user),
            click.verdict,
            runtime.clock(),
        )
    except ValueError:
        return aiohttp.web.Response(status=404, text=f"approval {click.ref} is invalid\n")
    runtime.submit(lambda: flow.apply_click(runtime, click))
    if preview.rejection is appr.Rejection.NOT_ALLOWED and asked.approvers.slack_groups:
        # Group membership is read from Slack in the worker, which replies if it is missing.
        return _ephemeral(f"Checking your approver groups for {click.ref.name}…")
    if preview.outcome is appr.DecisionOutcome.REJECTED:
        return _ephemeral(preview.message)
    return _ephemeral(f"Recording your {click.verdict.value} for {click.ref.name}…")


async def _read(
    limiter: RateLimiter, request: aiohttp.web.Request, source: str
) -> bytes | aiohttp.web.Response:
    """The raw body, or the refusal of a request too frequent, of the wrong type or too large."""
    if not limiter.allow(source, time.monotonic()):
        return aiohttp.web.Response(status=429, text="too many requests\n", headers={"Retry-After": "10"})
    if request.content_type != _FORM:
        return aiohttp.web.Response(status=415, text=f"expected {_FORM}\n")
    if request.content_length is not None and request.content_length > MAX_BODY:
        return aiohttp.web.Response(status=413, text="request body too large\n")
    try:
        return await request.read()
    except aiohttp.web.HTTPRequestEntityTooLarge:
        return aiohttp.web.Response(status=413, text="request body too large\n")


async def start(runtime: rt.Runtime) -> aiohttp.web.AppRunner | None:
    """Serve on ``http_bind:http_port``. A port already in use is logged, not fatal: the
    operator's reconciling does not depend on it, and kubectl approvals keep working."""
    bind, port = runtime.settings.http_bind, runtime.settings.http_port
    runner = aiohttp.web.AppRunner(make_app(runtime), access_log=None)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, bind, port)
    try:
        await site.start()
    except OSError as exc:
        # Loud when Slack is configured (its buttons need this port), quiet when it is not.
        log = _log.error if ports.configured(runtime.messenger) else _log.warning
        log(
            "cannot serve HTTP on %s:%s (%s): Slack buttons will not work in this process",
            bind,
            port,
            exc.strerror or exc,
        )
        await runner.cleanup()
        return None
    _log.info("serving Slack interactivity on http://%s:%s/slack/interactions", bind, port)
    return runner


@kopf.on.startup()
async def start_http(*, memo: Any, **_: Any) -> None:
    runtime = rt.of(memo)
    if runtime.settings.http_port is not None:
        runtime.http_runner = await start(runtime)


@kopf.on.cleanup()
async def stop_http(*, memo: Any, **_: Any) -> None:
    runner = rt.of(memo).http_runner
    if runner is not None:
        await runner.cleanup()
