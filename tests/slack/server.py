"""A local Slack-Web-API-compatible server for tests, plus clicks signed exactly as Slack signs them.

The operator talks to it through the real slack-sdk (``--slack-api-url http://127.0.0.1:PORT/api/``),
so what is tested is the request the SDK really sends. It records every call, checks the bot
token like Slack does (``invalid_auth``), and can be told to fail: HTTP 500, a dropped
connection, or 429 with ``Retry-After``. Methods: ``auth.test``, ``chat.postMessage``,
``chat.update``, ``conversations.list``, ``conversations.history`` (with message metadata),
``files.getUploadURLExternal`` + the upload URL + ``files.completeUploadExternal``, and
``usergroups.users.list`` (members set with ``set_group``, a group made to fail with
``fail_group``), ``response_url`` hooks (``/hooks/<id>``) for ephemeral replies to a click.
``hang`` mode accepts a ``chat.postMessage`` but holds the answer back, to stand for a client
that dies in between.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import http.server
import itertools
import json
import socket
import threading
import time
import urllib.parse
from typing import Any


@dataclasses.dataclass
class Call:
    method: str
    args: dict[str, Any]
    authorized: bool
    status: int


class FakeSlack:
    """Start with ``start()``; ``api_url`` is what the operator gets as its Slack API base."""

    def __init__(self, token: str = "xoxb-test-token", host: str = "127.0.0.1") -> None:
        """``host``: the address to listen on; ``make demo`` gives the real node's bridge
        address so that the operator's pod reaches it (never a wildcard address)."""
        self.token, self.host = token, host
        self.calls: list[Call] = []
        self.messages: dict[str, dict[str, Any]] = {}  # ts -> latest message
        self.replies: list[dict[str, Any]] = []  # bodies posted to response_url hooks
        self.uploads: dict[str, bytes] = {}
        self.mode = "ok"  # ok | error | drop | ratelimit | hang
        self.hang_seconds = 30.0
        self.channels: dict[str, str] = {_channel_id(f"#{n}"): n for n in ("ops", "homeostat", "alerts")}
        self.retry_after = 1
        self.rate_limited_calls = 0  # how many calls to answer 429 before recovering (ratelimit mode)
        self.usergroups: dict[str, list[str]] = {}  # user-group ID -> member user IDs
        self.group_errors: dict[str, str] = {}  # user-group ID -> the Slack error to answer with
        self._ts = itertools.count(1)
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None

    # --- control -----------------------------------------------------------------------------

    @property
    def base(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_url(self) -> str:
        return f"{self.base}/api/"

    def response_url(self, name: str = "click") -> str:
        return f"{self.base}/hooks/{name}"

    def start(self) -> FakeSlack:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                fake._handle(self)

            def do_GET(self) -> None:
                fake._handle(self)

        self._server = http.server.ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def fail(self, mode: str) -> None:
        """``error`` (HTTP 500), ``drop`` (close the connection unanswered), ``hang`` (accept a
        post, answer only after ``hang_seconds``) or ``ok`` again."""
        self.mode = mode

    def rate_limit(self, calls: int, retry_after: int = 1) -> None:
        """Answer the next ``calls`` API calls with 429 and ``Retry-After: retry_after``."""
        with self._lock:
            self.mode, self.rate_limited_calls, self.retry_after = "ratelimit", calls, retry_after

    def set_group(self, group: str, *members: str) -> None:
        """Make ``group`` a user group with exactly these members (and stop failing it)."""
        with self._lock:
            self.usergroups[group] = list(members)
            self.group_errors.pop(group, None)

    def fail_group(self, group: str, error: str = "no_such_subteam") -> None:
        """Answer ``usergroups.users.list`` for ``group`` with ``ok: false`` and ``error``."""
        with self._lock:
            self.group_errors[group] = error

    def calls_of(self, method: str, *, ok_only: bool = True) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method and (not ok_only or c.status == 200)]

    # --- serving -----------------------------------------------------------------------------

    def _handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b""
        path = urllib.parse.urlsplit(request.path).path
        if path.startswith("/hooks/"):
            with self._lock:
                self.replies.append({"hook": path[len("/hooks/") :], **_parse(raw, request.headers)})
            self._send(request, 200, {"ok": True})
            return
        if path.startswith("/upload/"):
            self.uploads[path[len("/upload/") :]] = raw
            self._send(request, 200, {"ok": True})
            return
        if not path.startswith("/api/"):
            self._send(request, 404, {"ok": False, "error": "unknown_path"})
            return
        method = path[len("/api/") :]
        # slack-sdk sends read methods (usergroups.users.list) as GET with query parameters.
        query = {k: v[0] for k, v in urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query).items()}
        args = {**query, **_parse(raw, request.headers)}
        authorized = request.headers.get("Authorization") == f"Bearer {self.token}"
        with self._lock:
            mode = self.mode
            if mode == "ratelimit":
                self.rate_limited_calls -= 1
                if self.rate_limited_calls <= 0:
                    self.mode = "ok"
        if mode == "drop":
            self._record(method, args, authorized, 0)
            request.close_connection = True
            with contextlib.suppress(OSError):
                request.connection.shutdown(socket.SHUT_RDWR)
            return
        if mode == "error":
            self._record(method, args, authorized, 500)
            self._send(request, 500, {"ok": False, "error": "internal_error"})
            return
        if mode == "ratelimit":
            self._record(method, args, authorized, 429)
            self._send(
                request, 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(self.retry_after)}
            )
            return
        self._record(method, args, authorized, 200)
        if not authorized:
            self._send(request, 200, {"ok": False, "error": "invalid_auth"})
            return
        answer = self._answer(method, args)
        if mode == "hang" and method == "chat.postMessage":
            time.sleep(self.hang_seconds)
        with contextlib.suppress(OSError):  # the client may be gone by now
            self._send(request, 200, answer)

    def _answer(self, method: str, args: dict[str, Any]) -> dict[str, Any]:
        if method == "auth.test":
            return {
                "ok": True,
                "url": "https://fake.slack.test/",
                "team": "Fake",
                "user": "homeostat",
                "user_id": "UBOT",
            }
        if method == "chat.postMessage":
            if not args.get("channel"):
                return {"ok": False, "error": "channel_not_found"}
            channel = _channel_id(str(args["channel"]))
            if str(args["channel"]).startswith("#"):
                self.channels.setdefault(channel, str(args["channel"])[1:])
            ts = f"{int(time.time())}.{next(self._ts):06d}"
            message = {
                "ts": ts,
                "channel": channel,
                "text": args.get("text"),
                "blocks": args.get("blocks") or [],
                "metadata": args.get("metadata"),
            }
            with self._lock:
                self.messages[ts] = message
            return {"ok": True, "channel": channel, "ts": ts, "message": message}
        if method == "chat.update":
            ts = str(args.get("ts"))
            with self._lock:
                if ts not in self.messages or self.messages[ts]["channel"] != args.get("channel"):
                    return {"ok": False, "error": "message_not_found"}
                self.messages[ts] = {
                    **self.messages[ts],
                    "text": args.get("text"),
                    "blocks": args.get("blocks") or [],
                }
            return {"ok": True, "channel": args.get("channel"), "ts": ts}
        if method == "conversations.list":
            channels = [{"id": i, "name": n, "is_channel": True} for i, n in sorted(self.channels.items())]
            return {"ok": True, "channels": channels, "response_metadata": {"next_cursor": ""}}
        if method == "conversations.history":
            oldest = float(args.get("oldest") or 0)
            with self._lock:
                found = [
                    {k: v for k, v in m.items() if k != "metadata" or args.get("include_all_metadata")}
                    for m in self.messages.values()
                    if m["channel"] == args.get("channel") and float(m["ts"]) >= oldest
                ]
            found.sort(key=lambda m: float(m["ts"]), reverse=True)
            return {
                "ok": True,
                "messages": found,
                "has_more": False,
                "response_metadata": {"next_cursor": ""},
            }
        if method == "usergroups.users.list":
            group = str(args.get("usergroup") or "")
            with self._lock:
                error = self.group_errors.get(group)
                members = self.usergroups.get(group)
            if error:
                return {"ok": False, "error": error}
            if members is None:
                return {"ok": False, "error": "no_such_subteam"}
            return {"ok": True, "users": list(members)}
        if method == "files.getUploadURLExternal":
            file_id = f"F{next(self._ts):08d}"
            return {"ok": True, "upload_url": f"{self.base}/upload/{file_id}", "file_id": file_id}
        if method == "files.completeUploadExternal":
            files = args.get("files")
            if isinstance(files, str):
                files = json.loads(files)
            return {"ok": True, "files": [{"id": f.get("id"), "title": f.get("title")} for f in files or []]}
        return {"ok": False, "error": "unknown_method"}

    def _record(self, method: str, args: dict[str, Any], authorized: bool, status: int) -> None:
        with self._lock:
            self.calls.append(Call(method, args, authorized, status))

    @staticmethod
    def _send(
        request: http.server.BaseHTTPRequestHandler,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        data = json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json; charset=utf-8")
        request.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.end_headers()
        request.wfile.write(data)


def _parse(raw: bytes, headers: Any) -> dict[str, Any]:
    kind = (headers.get("Content-Type") or "").split(";")[0].strip()
    if kind == "application/json":
        value = json.loads(raw or b"{}")
        return value if isinstance(value, dict) else {}
    return {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode(errors="replace")).items()}


def _channel_id(channel: str) -> str:
    """Slack answers with the channel's ID even when posted to by name."""
    if channel.startswith("#"):
        return "C" + hashlib.sha256(channel.encode()).hexdigest()[:8].upper()
    return channel


# --- clicks, signed as Slack signs them ----------------------------------------------------------


def click_body(
    namespace: str,
    name: str,
    user: str,
    verdict: str = "approve",
    *,
    response_url: str = "",
    channel: str = "C0000000",
    message_ts: str = "",
) -> bytes:
    """The form body Slack POSTs when a button of ours is clicked."""
    payload = {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "team_id": "T0000000"},
        "api_app_id": "A0000000",
        "container": {"type": "message", "message_ts": message_ts, "channel_id": channel},
        "channel": {"id": channel},
        "response_url": response_url,
        "actions": [
            {
                "type": "button",
                "block_id": "homeostat.approval",
                "action_id": f"homeostat.{verdict}",
                "value": f"{namespace}/{name}",
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }
    return urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()


def signed_headers(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": f"v0={digest}",
    }
