"""The Slack adapter against the local Slack-compatible server (tests/slack/server.py).

Real slack-sdk, real HTTP on 127.0.0.1: what is checked is what the SDK actually sends and how
the adapter reads Slack's answers, failures and rate limits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from homeostat import ports
from homeostat.adapters import notifiers, slack
from homeostat.core import approval as ap
from slack import server as fake

TOKEN = "xoxb-unit-SECRET-token"
SIGNING = "unit-signing-SECRET"
REF = ap.Ref("team-a", "drainnode-0123456789abcdef")
REQUEST = ap.ApprovalRequest(
    action="DrainNode",
    target=ap.Target("Node", "", "kwok-node-1"),
    cause="node NotReady for 5m <script>",
    service="web",
    requester="homeostat",
    risk=ap.Risk.HIGH,
    quorum=1,
    approvers=ap.Approvers(slack=frozenset({"U1"})),
    expires_at=2_000_000_000.0,
    channel="#ops",
    evidence={"notReadyFor": "5m", "pods": "3"},
)


@pytest.fixture
def server() -> Iterator[fake.FakeSlack]:
    srv = fake.FakeSlack(TOKEN).start()
    yield srv
    srv.stop()


def client(server: fake.FakeSlack, **kwargs: object) -> slack.SlackApprovals:
    return slack.SlackApprovals(
        slack._Secret(TOKEN), slack._Secret(SIGNING), server.api_url, channel="#alerts", **kwargs
    )  # type: ignore[arg-type]


def buttons(message: dict[str, object]) -> list[dict[str, object]]:
    blocks = message["blocks"]
    assert isinstance(blocks, list)
    return [e for b in blocks if b["type"] == "actions" for e in b["elements"]]


def test_post_carries_context_and_buttons_with_only_the_approval_identity(server: fake.FakeSlack) -> None:
    ref = asyncio.run(client(server).post(REF, REQUEST, ap.State()))
    (call,) = server.calls_of("chat.postMessage")
    assert call.authorized
    assert ref.channel.startswith("C") and ref.ts in server.messages
    approve, deny = buttons(server.messages[ref.ts])
    assert approve["value"] == deny["value"] == "team-a/drainnode-0123456789abcdef"
    assert (approve["action_id"], deny["action_id"]) == (slack.ACTION_APPROVE, slack.ACTION_DENY)
    assert "confirm" in approve  # high risk: a confirmation dialog
    text = str(server.messages[ref.ts]["blocks"])
    assert (
        "kwok-node-1" in text
        and "notReadyFor" in text
        and "&lt;script&gt;" in text
        and "<script>" not in text
    )


def test_low_risk_has_no_confirmation(server: fake.FakeSlack) -> None:
    ref = asyncio.run(client(server).post(REF, dataclasses.replace(REQUEST, risk=ap.Risk.LOW), ap.State()))
    approve, _ = buttons(server.messages[ref.ts])
    assert "confirm" not in approve


def test_update_after_a_decision_removes_the_buttons(server: fake.FakeSlack) -> None:
    adapter = client(server)
    ref = asyncio.run(adapter.post(REF, REQUEST, ap.State()))
    decided = ap.decide(
        REQUEST, ap.State(), ap.Identity(ap.Channel.SLACK, "U1"), ap.Vote.APPROVE, 1.9e9
    ).state
    asyncio.run(adapter.update(ref, REF, REQUEST, decided))
    message = server.messages[ref.ts]
    assert buttons(message) == []
    assert "Approved" in str(message["blocks"]) and "<@U1>" in str(message["blocks"])


def test_rate_limit_is_honoured(server: fake.FakeSlack) -> None:
    server.rate_limit(calls=1, retry_after=1)
    started = time.monotonic()
    asyncio.run(client(server).post(REF, REQUEST, ap.State()))
    assert time.monotonic() - started >= 1.0  # waited for Retry-After
    assert [c.status for c in server.calls_of("chat.postMessage", ok_only=False)] == [429, 200]


def test_rate_limit_beyond_the_retries_is_unavailable(server: fake.FakeSlack) -> None:
    server.rate_limit(calls=10, retry_after=0)
    with pytest.raises(ports.Unavailable, match="ratelimited"):
        asyncio.run(client(server, rate_limit_retries=1).post(REF, REQUEST, ap.State()))


@pytest.mark.parametrize("mode", ["error", "drop"])
def test_slack_down_is_unavailable(server: fake.FakeSlack, mode: str) -> None:
    server.fail(mode)
    with pytest.raises(ports.Unavailable) as info:
        asyncio.run(client(server).post(REF, REQUEST, ap.State()))
    assert TOKEN not in str(info.value)


def test_unreachable_slack_is_unavailable() -> None:
    adapter = slack.SlackApprovals(slack._Secret(TOKEN), slack._Secret(SIGNING), "http://127.0.0.1:9/api/")
    with pytest.raises(ports.Unavailable):
        asyncio.run(adapter.post(REF, REQUEST, ap.State()))


def test_a_wrong_token_is_reported_without_the_token(server: fake.FakeSlack) -> None:
    server.token = "xoxb-another"
    with pytest.raises(ports.Unavailable, match="invalid_auth") as info:
        asyncio.run(client(server).check())
    assert TOKEN not in str(info.value)


def test_auth_test(server: fake.FakeSlack) -> None:
    assert asyncio.run(client(server).check()) == "UBOT"


class Clock:
    def __init__(self, now: float) -> None:
        self.value = now

    def now(self) -> float:
        return self.value


def test_signature_verification() -> None:
    now = 1_900_000_000
    adapter = slack.SlackApprovals(slack._Secret(TOKEN), slack._Secret(SIGNING), clock=Clock(now))
    body = fake.click_body("team-a", "x", "U1")
    good = fake.signed_headers(SIGNING, body, now)
    assert adapter.verify(body, good) is ports.Verification.VALID
    assert adapter.verify(body + b"x", good) is ports.Verification.BAD_SIGNATURE
    assert (
        adapter.verify(body, fake.signed_headers("other-secret", body, now))
        is ports.Verification.BAD_SIGNATURE
    )
    assert adapter.verify(body, fake.signed_headers(SIGNING, body, now - 301)) is ports.Verification.STALE
    assert adapter.verify(body, fake.signed_headers(SIGNING, body, now + 301)) is ports.Verification.STALE
    assert adapter.verify(body, fake.signed_headers(SIGNING, body, now - 299)) is ports.Verification.VALID
    assert (
        adapter.verify(body, {"Content-Type": "application/x-www-form-urlencoded"})
        is ports.Verification.MISSING
    )
    assert adapter.verify(body, {**good, "X-Slack-Request-Timestamp": "soon"}) is ports.Verification.STALE


def test_undecodable_or_non_ascii_input_is_a_bad_signature_not_a_crash() -> None:
    """Issue 14.1: a forger with a current timestamp only; before, both raised (a 500)."""
    now = 1_900_000_000
    adapter = slack.SlackApprovals(slack._Secret(TOKEN), slack._Secret(SIGNING), clock=Clock(now))
    binary = b"payload=\xff\xfe\x80"
    assert (
        adapter.verify(binary, fake.signed_headers("forged", binary, now)) is ports.Verification.BAD_SIGNATURE
    )
    # Even correctly signed, a body that is not UTF-8 is not one Slack sent.
    assert (
        adapter.verify(binary, fake.signed_headers(SIGNING, binary, now)) is ports.Verification.BAD_SIGNATURE
    )
    body = fake.click_body("team-a", "x", "U1")
    headers = {**fake.signed_headers(SIGNING, body, now), "X-Slack-Signature": "v0=\u00e9" + "0" * 63}
    assert adapter.verify(body, headers) is ports.Verification.BAD_SIGNATURE


def test_a_payload_nested_thousands_deep_is_not_a_click() -> None:
    """Issue 14.2: json.loads raised RecursionError, which became a 500."""
    deep = "[" * 100_000 + "]" * 100_000
    assert slack.parse_click(b"payload=" + urllib.parse.quote(deep).encode()) is None


@pytest.mark.parametrize(
    "value",
    [
        "team-a/x?x=1",  # issue 14.3: the query string moved the status write to the main resource
        "team-a/x#",
        "team-a/x%2Fstatus",
        "team-a/X",
        "Team-A/x",
        "team-a/-x",
        "team-a/x..y",
        "team-a/" + "x" * 254,
        "t" * 64 + "/x",
        "team-a/x y",
    ],
)
def test_a_button_value_that_is_no_approval_name_is_not_a_click(value: str) -> None:
    namespace, _, name = value.partition("/")
    assert slack.parse_click(fake.click_body(namespace, name, "U1")) is None


def test_parse_click() -> None:
    click = slack.parse_click(
        fake.click_body("team-a", "drainnode-1", "U1", "deny", response_url="http://h/hooks/1")
    )
    assert click == ports.Click(ap.Ref("team-a", "drainnode-1"), ap.Vote.DENY, "U1", "http://h/hooks/1")
    assert slack.parse_click(b"payload=not-json") is None
    assert slack.parse_click(b"") is None
    assert slack.parse_click(fake.click_body("team-a", "a/b", "U1")) is None
    assert slack.parse_click(fake.click_body("", "x", "U1")) is None


def test_reply_goes_only_to_slack_or_the_configured_origin(server: fake.FakeSlack) -> None:
    adapter = client(server)
    asyncio.run(adapter.reply(server.response_url("r1"), "you may not approve <this>"))
    assert server.replies == [
        {
            "hook": "r1",
            "response_type": "ephemeral",
            "replace_original": False,
            "text": "you may not approve &lt;this&gt;",
        }
    ]
    asyncio.run(adapter.reply("http://127.0.0.2:1/hooks/evil", "x"))  # another origin: not contacted
    assert len(server.replies) == 1


def test_secrets_come_from_files_and_never_print(tmp_path: Path) -> None:
    with pytest.raises(slack.SlackConfigError, match="bot-token"):
        slack.load(str(tmp_path), None, None)
    (tmp_path / "bot-token").write_text(TOKEN + "\n")
    (tmp_path / "signing-secret").write_text("")
    with pytest.raises(slack.SlackConfigError, match="empty") as info:
        slack.load(str(tmp_path), None, None)
    assert TOKEN not in str(info.value)
    (tmp_path / "signing-secret").write_text(SIGNING)
    adapter = slack.load(str(tmp_path), "http://127.0.0.1:1/api", "#ops")
    assert TOKEN not in repr(adapter) and SIGNING not in repr(adapter)
    assert TOKEN not in repr(slack.read_secret(tmp_path, "bot-token"))


def test_factory_falls_back_to_nop(tmp_path: Path) -> None:
    off = notifiers.from_config(notifiers.SlackConfig(slack.DEFAULT_API_URL, "", None))
    assert isinstance(off.notifier, notifiers.DroppingNotifier) and not ports.configured(off.messenger)
    assert not ports.configured(
        notifiers.from_config(notifiers.SlackConfig(slack.DEFAULT_API_URL, "", str(tmp_path))).messenger
    )
    (tmp_path / "bot-token").write_text(TOKEN)
    (tmp_path / "signing-secret").write_text(SIGNING)
    on = notifiers.from_config(notifiers.SlackConfig("http://127.0.0.1:1/api/", "#ops", str(tmp_path)))
    assert isinstance(on.messenger, slack.SlackApprovals) and on.notifier is on.messenger


def test_notifier_drops_repeats_of_one_key(server: fake.FakeSlack) -> None:
    adapter = client(server)
    note = ports.Notification(
        "team-a", "web", "RolloutRolledBack", "critical", "Rolled back", "r2 failed", "k1"
    )

    async def twice() -> None:
        await adapter.notify(note)
        await adapter.notify(note)

    asyncio.run(twice())
    (call,) = server.calls_of("chat.postMessage")
    assert call.args["channel"] == "#alerts" and "Rolled back" in call.args["text"]


def test_fake_server_file_upload(server: fake.FakeSlack) -> None:
    """The fake's upload flow works with the SDK's files_upload_v2 (for a chart image later)."""
    from slack_sdk.web.async_client import AsyncWebClient

    async def upload() -> None:
        web = AsyncWebClient(token=TOKEN, base_url=server.api_url)
        await web.files_upload_v2(
            content=b"\x89PNG fake", filename="forecast.png", title="forecast", channel="C1"
        )

    asyncio.run(upload())
    assert server.calls_of("files.getUploadURLExternal") and server.calls_of("files.completeUploadExternal")
    assert list(server.uploads.values()) == [b"\x89PNG fake"]


def test_find_recognises_our_message_by_its_metadata(server: fake.FakeSlack) -> None:
    adapter = client(server)
    since = time.time()
    posted = asyncio.run(adapter.post(REF, REQUEST, ap.State()))
    assert asyncio.run(adapter.find(REF, REQUEST, since)) == posted
    other = ap.Ref("team-a", "drainnode-ffffffffffffffff")
    assert asyncio.run(adapter.find(other, REQUEST, since)) is None
    by_id = dataclasses.replace(REQUEST, channel=posted.channel)
    assert asyncio.run(adapter.find(REF, by_id, since)) == posted
    assert asyncio.run(adapter.find(REF, REQUEST, since + 3600)) is None  # only recent messages
    unknown = dataclasses.replace(REQUEST, channel="#nowhere")
    assert asyncio.run(adapter.find(REF, unknown, since)) is None


# --- Slack user groups as approvers ----------------------------------------------------------


def test_member_groups_asks_only_for_the_named_groups(server: fake.FakeSlack) -> None:
    server.set_group("SOPS", "U7", "U8")
    server.set_group("SDBA", "U9")
    server.set_group("SUNRELATED", "U7")
    adapter = client(server, clock=Clock(time.time()))
    assert asyncio.run(adapter.member_groups("U7", frozenset({"SOPS", "SDBA"}))) == frozenset({"SOPS"})
    calls = server.calls_of("usergroups.users.list")
    assert sorted(c.args["usergroup"] for c in calls) == ["SDBA", "SOPS"]
    assert all(c.authorized for c in calls)
    assert server.calls_of("usergroups.list", ok_only=False) == []  # never lists every group


def test_member_groups_caches_for_a_short_while(server: fake.FakeSlack) -> None:
    server.set_group("SOPS", "U7")
    clock = Clock(time.time())
    adapter = client(server, clock=clock)

    async def clicks() -> list[frozenset[str]]:
        seen = [await adapter.member_groups("U7", frozenset({"SOPS"}))]
        server.set_group("SOPS", "U8")  # U7 leaves the group ...
        seen.append(await adapter.member_groups("U7", frozenset({"SOPS"})))  # ... cached still
        clock.value += slack.GROUP_TTL + 1
        seen.append(await adapter.member_groups("U7", frozenset({"SOPS"})))  # read again
        return seen

    assert asyncio.run(clicks()) == [frozenset({"SOPS"}), frozenset({"SOPS"}), frozenset()]
    assert len(server.calls_of("usergroups.users.list")) == 2


@pytest.mark.parametrize("failure", ["no_such_subteam", "missing_scope"])
def test_a_group_slack_cannot_read_counts_as_not_a_member(server: fake.FakeSlack, failure: str) -> None:
    server.set_group("SOPS", "U7")
    server.set_group("SDBA", "U7")
    server.fail_group("SDBA", failure)
    clock = Clock(time.time())
    adapter = client(server, clock=clock)

    async def clicks() -> list[frozenset[str]]:
        first = await adapter.member_groups("U7", frozenset({"SOPS", "SDBA"}))
        server.set_group("SDBA", "U7")  # readable again: a failure is not cached
        return [first, await adapter.member_groups("U7", frozenset({"SDBA"}))]

    assert asyncio.run(clicks()) == [frozenset({"SOPS"}), frozenset({"SDBA"})]


def test_member_groups_with_slack_down_fails_closed(server: fake.FakeSlack) -> None:
    server.set_group("SOPS", "U7")
    server.fail("error")
    assert asyncio.run(client(server).member_groups("U7", frozenset({"SOPS"}))) == frozenset()


def test_member_groups_honours_retry_after(server: fake.FakeSlack) -> None:
    server.set_group("SOPS", "U7")
    server.rate_limit(calls=1, retry_after=1)
    started = time.monotonic()
    assert asyncio.run(client(server).member_groups("U7", frozenset({"SOPS"}))) == frozenset({"SOPS"})
    assert time.monotonic() - started >= 1.0  # waited for Retry-After
    statuses = [c.status for c in server.calls_of("usergroups.users.list", ok_only=False)]
    assert statuses == [429, 200]
