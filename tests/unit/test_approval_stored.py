"""A decision is told (audit line, Event, metric) only when the API server's answer shows it kept.

Issue 14.3: a button value with ``?x=1`` sent the status write to the main resource, where the
API server ignores ``status`` and answers 200 with the object unchanged; the operator then logged
and counted an approval that never happened. The store here answers like that server did.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp.test_utils
import pytest

from homeostat import ports
from homeostat.adapters import slack
from homeostat.core import approval as ap
from homeostat.handlers import approval_flow, interactions
from homeostat.handlers import runtime as rt
from slack import server as fake

NOW = 1_900_000_000.0


class Store:
    """An Approval store whose status writes land (``keeps``) or are silently dropped."""

    def __init__(self, body: dict[str, Any], *, keeps: bool) -> None:
        self.body, self.keeps = body, keeps
        self.events: list[tuple[str, str]] = []

    async def get(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return copy.deepcopy(self.body)

    async def create(self, manifest: Mapping[str, Any]) -> Mapping[str, Any]:
        raise AssertionError("not used")

    async def patch_status(
        self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None
    ) -> Mapping[str, Any]:
        if self.keeps:
            self.body["status"] = {**(self.body.get("status") or {}), **status}
        return copy.deepcopy(self.body)

    async def post_event(self, involved: Mapping[str, Any], type: str, reason: str, message: str) -> None:
        self.events.append((reason, message))


def _approval() -> dict[str, Any]:
    request = ap.ApprovalRequest(
        action="DrainNode",
        target=ap.Target("Node", "", "n1"),
        cause="NodePressure",
        service="web",
        requester="homeostat",
        risk=ap.Risk.HIGH,
        quorum=1,
        approvers=ap.Approvers(slack=frozenset({"U1"})),
        expires_at=NOW + 600,
    )
    return {
        "metadata": {"name": "drainnode-1", "namespace": "team-a", "uid": "u1", "resourceVersion": "7"},
        "spec": request.as_spec(),
        "status": ap.State().as_in_storage(),
    }


def _runtime(store: Any, **kwargs: Any) -> rt.Runtime:
    settings = rt.RuntimeSettings(http_port=None)
    return rt.Runtime(
        workloads=None, credentials=None, store=store, events=store, settings=settings, **kwargs
    )  # type: ignore[arg-type]


async def _settled(runtime: rt.Runtime, work: Any) -> None:
    await work
    await runtime.drain_events(5.0)


@pytest.mark.parametrize("keeps", [True, False])
def test_a_click_is_told_only_when_the_answer_shows_it_stored(
    keeps: bool, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(_approval(), keeps=keeps)
    runtime = _runtime(store, clock=lambda: NOW)
    click = ports.Click(ap.Ref("team-a", "drainnode-1"), ap.Vote.APPROVE, "U1", "")
    with caplog.at_level(logging.INFO):
        asyncio.run(_settled(runtime, approval_flow.apply_click(runtime, click)))
    granted = [reason for reason, _ in store.events if reason == "ApprovalGranted"]
    decided = [r for r in caplog.records if '"audit": "decision"' in r.getMessage()]
    if keeps:
        assert store.body["status"]["phase"] == "Approved"
        assert granted and decided
    else:
        assert store.body["status"]["phase"] == "Pending"
        assert not granted, "an ApprovalGranted Event for a decision the API server did not keep"
        assert not decided, "an audit line for a decision the API server did not keep"
        assert any("did not store the decision" in r.getMessage() for r in caplog.records)


def test_an_invalid_name_is_refused_before_any_call() -> None:
    store = Store(_approval(), keeps=True)
    runtime = _runtime(store, clock=lambda: NOW)
    with pytest.raises(ports.Rejected, match="not an Approval name"):
        asyncio.run(
            approval_flow.transact(runtime, ap.Ref("team-a", "drainnode-1?x=1"), approval_flow.open_pending())
        )


@pytest.mark.parametrize(
    ("namespace", "name", "valid"),
    [
        ("team-a", "drainnode-1", True),
        ("a", "a.b-c.d", True),
        ("team-a", "x?x=1", False),
        ("team-a", "x#", False),
        ("team-a", "x/status", False),
        ("team-a", "", False),
        ("", "x", False),
        ("team_a", "x", False),
        ("team-a", "x." + "y" * 64, False),  # a label of 64
        ("team-a", ".".join(["x" * 63] * 4), False),  # 255 characters
        ("team-a", ".".join(["x" * 63] * 3 + ["x" * 61]), True),  # 253
    ],
)
def test_ref_validity(namespace: str, name: str, valid: bool) -> None:
    assert ap.Ref(namespace, name).valid is valid


def _post(body: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
    """POST /slack/interactions on the operator's real aiohttp app, with the Slack adapter."""

    class Clock:
        def now(self) -> float:
            return NOW

    messenger = slack.SlackApprovals(slack._Secret("xoxb-t"), slack._Secret(SIGNING), clock=Clock())
    runtime = _runtime(Store(_approval(), keeps=True), messenger=messenger)

    async def go() -> tuple[int, str]:
        app = interactions.make_app(runtime)
        async with aiohttp.test_utils.TestClient(aiohttp.test_utils.TestServer(app)) as client:
            res = await client.post("/slack/interactions", data=body, headers=dict(headers))
            return res.status, await res.text()

    return asyncio.run(go())


SIGNING = "s-test"


def test_the_endpoint_answers_4xx_to_bad_clicks_never_500(caplog: pytest.LogCaptureFixture) -> None:
    binary = b"payload=\xff\xfe"
    forged = fake.signed_headers("forged", binary, int(NOW))
    with caplog.at_level(logging.WARNING):
        assert _post(binary, forged)[0] == 401
    assert not [r for r in caplog.records if r.exc_info], "a traceback in the log"
    body = fake.click_body("team-a", "x", "U1")
    non_ascii = {**fake.signed_headers(SIGNING, body, int(NOW)), "X-Slack-Signature": "v0=\u00e9"}
    assert _post(body, non_ascii)[0] == 401
    deep = b"payload=" + b"[" * 20_000 + b"]" * 20_000  # under the 64 KiB limit
    assert _post(deep, fake.signed_headers(SIGNING, deep, int(NOW)))[0] == 400
    sneaky = fake.click_body("team-a", "drainnode-1?x=1", "U1")
    assert _post(sneaky, fake.signed_headers(SIGNING, sneaky, int(NOW)))[0] == 400
    good = fake.click_body("team-a", "drainnode-1", "U1")
    assert _post(good, fake.signed_headers(SIGNING, good, int(NOW)))[0] == 200
