"""The HTTP port (handlers.interactions.make_app) over a fake messenger and store: every refusal
in its order and status code, and an accepted click decided in the approvals worker (issue 15)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp.test_utils
import fakes
import pytest

from homeostat import ports
from homeostat.core import approval as appr
from homeostat.handlers import interactions
from homeostat.handlers import runtime as rt

NAME = "restartpod-web-1"
REF = appr.Ref("prod", NAME)
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _click(user: str = "U1", verdict: appr.Vote = appr.Vote.APPROVE, name: str = NAME) -> ports.Click:
    return ports.Click(appr.Ref("prod", name), verdict, user, response_url="https://hooks.example/r")


def _runtime(messenger: Any = None, **store: Any) -> tuple[rt.Runtime, fakes.FakeStore]:
    body = fakes.approval(NAME, users=frozenset(), slack_users=frozenset({"U1"}))
    body["status"] = appr.State().as_in_storage()
    fake = fakes.FakeStore({("prod", NAME): body}, **store)
    extra = {"messenger": messenger} if messenger is not None else {}
    return fakes.runtime_of(store=fake, **extra), fake


async def _post(
    runtime: rt.Runtime, data: bytes = b"payload=x", headers: Mapping[str, str] = FORM
) -> tuple[int, str]:
    server = aiohttp.test_utils.TestServer(interactions.make_app(runtime))
    async with aiohttp.test_utils.TestClient(server) as client:
        response = await client.post("/slack/interactions", data=data, headers=dict(headers))
        return response.status, await response.text()


def _answer(runtime: rt.Runtime, **kwargs: Any) -> tuple[int, str]:
    return fakes.run(_post(runtime, **kwargs))


REFUSALS = [
    # (the messenger, the request, the status code)
    pytest.param(None, {}, 503, id="slack-not-configured"),
    pytest.param(fakes.FakeMessenger(ports.Verification.BAD_SIGNATURE), {}, 401, id="bad-signature"),
    pytest.param(fakes.FakeMessenger(ports.Verification.STALE), {}, 401, id="stale"),
    pytest.param(fakes.FakeMessenger(click=None), {}, 400, id="not-our-button"),
    pytest.param(fakes.FakeMessenger(click=_click(name="gone")), {}, 404, id="unknown-approval"),
    pytest.param(
        fakes.FakeMessenger(click=_click()), {"headers": {"Content-Type": "text/plain"}}, 415, id="type"
    ),
    pytest.param(
        fakes.FakeMessenger(click=_click()), {"data": b"payload=" + b"x" * (65 * 1024)}, 413, id="too-large"
    ),
]


@pytest.mark.parametrize(("messenger", "request_", "code"), REFUSALS)
def test_a_refused_request_gets_its_status_code_and_decides_nothing(
    messenger: Any, request_: dict[str, Any], code: int
) -> None:
    runtime, store = _runtime(messenger)
    status, _ = _answer(runtime, **request_)
    assert status == code
    assert runtime.approvals.jobs.qsize() == 0
    assert store.writes == []


def test_a_valid_click_is_acknowledged_at_once_and_decided_in_the_worker() -> None:
    messenger = fakes.FakeMessenger(click=_click())
    runtime, store = _runtime(messenger)

    async def scenario() -> tuple[tuple[int, str], list[fakes.PostedEvent]]:
        answer = await _post(runtime)
        assert store.writes == []  # nothing is decided before the answer
        job = runtime.approvals.jobs.get_nowait()
        await job()
        return answer, await fakes.posted(runtime)

    (status, text), events = fakes.run(scenario())
    assert status == 200 and "Recording your approve" in text
    assert store.status(NAME)["phase"] == "Approved"
    assert [e.reason for e in events] == ["ApprovalGranted"]
    assert messenger.replies == []


def test_a_click_by_someone_not_an_approver_is_told_why_and_changes_nothing() -> None:
    messenger = fakes.FakeMessenger(click=_click(user="U-mallory"))
    runtime, store = _runtime(messenger)

    async def scenario() -> tuple[tuple[int, str], list[fakes.PostedEvent]]:
        answer = await _post(runtime)
        await runtime.approvals.jobs.get_nowait()()
        return answer, await fakes.posted(runtime)

    (status, text), events = fakes.run(scenario())
    assert status == 200 and "not an approver" in text
    assert store.status(NAME)["phase"] == "Pending"
    assert [e.reason for e in events] == ["ApprovalDecisionRefused"]
    assert len(messenger.replies) == 1 and "not an approver" in messenger.replies[0]


def test_a_click_the_store_cannot_record_asks_the_clicker_to_try_again() -> None:
    messenger = fakes.FakeMessenger(click=_click())
    runtime, _ = _runtime(messenger, error=ports.Unavailable("API server down"))

    async def scenario() -> list[fakes.PostedEvent]:
        await _post(runtime)
        await runtime.approvals.jobs.get_nowait()()
        return await fakes.posted(runtime)

    events = fakes.run(scenario())
    assert events == []
    assert messenger.replies == ["Your decision could not be recorded right now; please try again."]


def test_healthz_and_metrics_answer() -> None:
    runtime, _ = _runtime()

    async def scenario() -> tuple[int, str, int]:
        server = aiohttp.test_utils.TestServer(interactions.make_app(runtime))
        async with aiohttp.test_utils.TestClient(server) as client:
            health = await client.get("/healthz")
            metrics = await client.get("/metrics")
            return health.status, await health.text(), metrics.status

    assert fakes.run(scenario()) == (200, "ok\n", 200)
