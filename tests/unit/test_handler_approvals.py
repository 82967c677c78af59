"""The Approval handlers (handlers.approvals over handlers.approval_flow) with a fake store: a
new request is opened Pending, kubectl votes are judged and cleared, due requests expire, and
conflicting writes are read again (issue 15)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import fakes
import pytest
from fakes import NOW

from homeostat import ports
from homeostat.core import approval as appr
from homeostat.handlers import approval_flow as flow
from homeostat.handlers import approvals
from homeostat.handlers import runtime as rt

NAME = "restartpod-web-1"
REF = appr.Ref("prod", NAME)


def _setup(body: dict[str, Any], **store: Any) -> tuple[rt.Runtime, fakes.FakeStore]:
    fake = fakes.FakeStore({("prod", body["metadata"]["name"]): body}, **store)
    return fakes.runtime_of(store=fake), fake


def _changed(runtime: rt.Runtime, body: Mapping[str, Any], type_: str | None = "MODIFIED") -> list[Any]:
    async def scenario() -> list[Any]:
        await approvals.approval_changed(type=type_, body=body, memo={rt.MEMO_KEY: runtime})
        return await fakes.posted(runtime)

    return fakes.run(scenario())


def _vote(user: str, verdict: str, vote_id: str = "v1") -> dict[str, Any]:
    return {"id": vote_id, "user": user, "verdict": verdict}


def test_a_new_request_is_opened_pending_told_on_the_service_and_queued_for_slack() -> None:
    body = fakes.approval(NAME)
    runtime, store = _setup(body)
    events = _changed(runtime, fakes.approval(NAME), "ADDED")

    [(name, patch, version)] = store.writes
    assert (name, patch["phase"], version) == (NAME, "Pending", "1")
    [event] = events
    assert (event.type, event.reason) == ("Normal", "ApprovalRequested")
    assert event.involved == {
        "apiVersion": "homeostat.dev/v1alpha1",
        "kind": "ReplicatedService",
        "name": "web",
        "namespace": "prod",
        "uid": "uid-web",
    }
    assert runtime.approvals.jobs.qsize() == 1


def test_a_request_already_open_is_not_written_again() -> None:
    pending = fakes.approval(NAME, status=appr.State().as_in_storage())
    runtime, store = _setup(pending)
    events = _changed(runtime, pending)
    assert (store.writes, events) == ([], [])
    assert runtime.approvals.jobs.qsize() == 1  # Slack is still brought up to date


VOTES = [
    # (the votes waiting in status.votes, the phase after, the Events, the rejections recorded)
    ([_vote("alice", "approve")], "Approved", ["ApprovalGranted"], []),
    ([_vote("alice", "deny")], "Denied", ["ApprovalDenied"], []),
    ([_vote("mallory", "approve")], "Pending", ["ApprovalDecisionRefused"], ["NotAllowed"]),
    ([_vote("homeostat", "approve")], "Pending", ["ApprovalDecisionRefused"], ["Requester"]),
    (
        [_vote("alice", "approve", "v1"), _vote("alice", "deny", "v2")],
        "Approved",
        ["ApprovalGranted", "ApprovalDecisionRefused"],
        ["AlreadyDecided"],
    ),
]


@pytest.mark.parametrize(("votes", "phase", "reasons", "rejections"), VOTES)
def test_kubectl_votes_are_judged_in_order_and_cleared(
    votes: list[dict[str, Any]], phase: str, reasons: list[str], rejections: list[str]
) -> None:
    status = {**appr.State().as_in_storage(), "votes": votes}
    runtime, store = _setup(fakes.approval(NAME, status=status))
    events = _changed(runtime, fakes.approval(NAME, status=status))

    after = store.status(NAME)
    assert after["phase"] == phase
    assert "votes" not in after
    assert [r["reason"] for r in after.get("rejections") or []] == rejections
    assert [e.reason for e in events] == reasons
    assert all(e.involved["name"] == "web" for e in events)


def test_an_invalid_request_is_ignored_without_a_write() -> None:
    body = fakes.approval(NAME)
    body["spec"] = {**body["spec"], "risk": "apocalyptic"}
    runtime, store = _setup(body)
    assert _changed(runtime, body, "ADDED") == []
    assert store.writes == [] and runtime.approvals.jobs.qsize() == 0


def test_a_conflicting_write_is_decided_again_on_a_fresh_read() -> None:
    status = {**appr.State().as_in_storage(), "votes": [_vote("alice", "approve")]}
    runtime, store = _setup(fakes.approval(NAME, status=status), conflicts=2)
    events = _changed(runtime, fakes.approval(NAME, status=status))
    assert [version for _, _, version in store.writes] == ["1", "2", "3"]
    assert store.status(NAME)["phase"] == "Approved"
    assert [e.reason for e in events] == ["ApprovalGranted"]  # told once, not per attempt


def test_a_request_that_never_stops_changing_is_unavailable_and_nothing_is_told() -> None:
    status = {**appr.State().as_in_storage(), "votes": [_vote("alice", "approve")]}
    runtime, _ = _setup(fakes.approval(NAME, status=status), conflicts=100)

    async def scenario() -> list[Any]:
        with pytest.raises(ports.Unavailable, match="kept changing"):
            await approvals.approval_changed(
                type="MODIFIED", body=fakes.approval(NAME, status=status), memo={rt.MEMO_KEY: runtime}
            )
        return await fakes.posted(runtime)

    assert fakes.run(scenario()) == []


def test_a_store_that_drops_the_decision_is_never_reported_as_decided() -> None:
    class Forgetful(fakes.FakeStore):
        async def patch_status(
            self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None
        ) -> Mapping[str, Any]:
            self.writes.append((name, dict(status), resource_version))
            return await self.get(namespace, name)  # type: ignore[return-value]

    status = {**appr.State().as_in_storage(), "votes": [_vote("alice", "approve")]}
    store = Forgetful({("prod", NAME): fakes.approval(NAME, status=status)})
    runtime = fakes.runtime_of(store=store)
    with pytest.raises(ports.Unavailable, match="did not store"):
        _changed(runtime, fakes.approval(NAME, status=status))


EXPIRY = [
    # (expiresAt, the phase after the expiry job, the Events)
    (NOW - 1, "Expired", ["ApprovalExpired"]),
    (NOW + 60, "Pending", []),
]


@pytest.mark.parametrize(("expires_at", "phase", "reasons"), EXPIRY)
def test_the_expiry_job_expires_what_is_due_and_only_that(
    expires_at: float, phase: str, reasons: list[str]
) -> None:
    body = fakes.approval(NAME, expires_at=expires_at, status=appr.State().as_in_storage())
    runtime, store = _setup(body)
    runtime.approvals.expiring.add(("prod", NAME))

    async def scenario() -> list[Any]:
        await approvals._expire_job(runtime, REF)()
        return await fakes.posted(runtime)

    events = fakes.run(scenario())
    assert store.status(NAME)["phase"] == phase
    assert [e.reason for e in events] == reasons
    assert ("prod", NAME) not in runtime.approvals.expiring  # the clock may ask again


def test_a_deleted_approval_is_forgotten() -> None:
    runtime, _ = _setup(fakes.approval(NAME))
    uid = f"uid-{NAME}"
    runtime.approvals.posted[uid] = ports.MessageRef("C1", "1.0")
    runtime.approvals.shown[uid] = "Pending:0"
    _changed(runtime, fakes.approval(NAME), "DELETED")
    assert (runtime.approvals.posted, runtime.approvals.shown) == ({}, {})


def test_slack_is_posted_once_and_updated_after_a_decision() -> None:
    messenger = fakes.FakeMessenger(channel="#ops")
    body = fakes.approval(NAME, status=appr.State().as_in_storage())
    store = fakes.FakeStore({("prod", NAME): body})
    runtime = fakes.runtime_of(store=store, messenger=messenger)

    async def scenario() -> None:
        await flow.sync_slack(runtime, REF)
        await flow.sync_slack(runtime, REF)
        store.bodies[("prod", NAME)]["status"]["phase"] = "Denied"
        await flow.sync_slack(runtime, REF)

    fakes.run(scenario())
    assert messenger.posts == [REF]
    assert messenger.updates == [(REF, appr.ApprovalPhase.DENIED)]
    assert store.status(NAME)["slack"]["ts"] == "1.0"


def test_a_slack_outage_backs_off_and_never_decides() -> None:
    class Down(fakes.FakeMessenger):
        async def post(
            self, ref: appr.Ref, request: appr.ApprovalRequest, state: appr.State
        ) -> ports.MessageRef:
            raise ports.Unavailable("slack 503")

    body = fakes.approval(NAME, status=appr.State().as_in_storage())
    store = fakes.FakeStore({("prod", NAME): body})
    runtime = fakes.runtime_of(store=store, messenger=Down(channel="#ops"))
    fakes.run(flow.sync_slack(runtime, REF))
    assert store.status(NAME)["phase"] == "Pending"
    assert store.status(NAME)["slack"]["attempts"] == 1
    assert runtime.approvals.retry_at[("prod", NAME)] == NOW + 2.0


def test_a_message_posted_is_not_posted_again_when_its_record_is_lost() -> None:
    class LosesSlack(fakes.FakeStore):
        """Accepts the Slack bookkeeping and keeps none of it (a write lost, a stale read)."""

        async def patch_status(
            self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None
        ) -> Mapping[str, Any]:
            kept = {k: v for k, v in status.items() if k != "slack"}
            return await super().patch_status(namespace, name, kept, resource_version)

    messenger = fakes.FakeMessenger(channel="#ops")
    store = LosesSlack({("prod", NAME): fakes.approval(NAME, status=appr.State().as_in_storage())})
    runtime = fakes.runtime_of(store=store, messenger=messenger)

    async def scenario() -> None:
        await flow.sync_slack(runtime, REF)
        await flow.sync_slack(runtime, REF)

    fakes.run(scenario())
    assert messenger.posts == [REF]
