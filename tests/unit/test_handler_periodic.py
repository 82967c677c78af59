"""The per-service periodic loop (handlers.periodic) over a registry of test jobs: what is due
starts, the cadence holds, work a service no longer wants is cancelled, deleted services are
forgotten (issue 15)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import Any

import fakes
import pytest
from fakes import NOW

from homeostat import ports
from homeostat.handlers import periodic
from homeostat.handlers import runtime as rt

INTERVAL = 10.0


@dataclasses.dataclass
class Job:
    """A periodic job whose interval is ``spec.every`` (absent: not wanted). ``hold`` keeps each
    evaluation running until it is set, ``error`` makes each one raise."""

    runs: list[Mapping[str, Any]] = dataclasses.field(default_factory=list)
    asked: int = 0
    hold: asyncio.Event | None = None
    error: Exception | None = None
    cancelled: int = 0

    def wants(self, body: Mapping[str, Any]) -> float | None:
        self.asked += 1
        every = (body.get("spec") or {}).get("every")
        return None if every is None else float(every)

    async def work(self, runtime: rt.Runtime, indexes: Mapping[str, Any], body: Mapping[str, Any]) -> None:
        self.runs.append(body)
        if self.error is not None:
            raise self.error
        if self.hold is not None:
            try:
                await self.hold.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise


@pytest.fixture
def job(monkeypatch: pytest.MonkeyPatch) -> Job:
    """The only registered periodic job, for the length of one test."""
    one = Job()
    registry = {"test": rt.PeriodicJob("test", one.wants, lambda status: bool(status.get("flag")), one.work)}
    monkeypatch.setattr(rt, "PERIODIC", registry)
    return one


def _body(uid: str = "u1", name: str = "web", generation: int = 1, **spec: Any) -> dict[str, Any]:
    return fakes.service(name=name, uid=uid, generation=generation, every=INTERVAL, **spec)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_work_that_is_due_starts_and_the_next_run_is_one_interval_later(job: Job) -> None:
    async def scenario() -> tuple[float, dict[tuple[str, str], float]]:
        runtime = fakes.runtime_of()
        body = _body()
        wake = periodic.schedule(runtime, fakes.indexes(body), NOW)
        await _settle()
        return wake, dict(runtime.periodic.due)

    wake, due = fakes.run(scenario())
    assert len(job.runs) == 1
    assert due == {("u1", "test"): NOW + INTERVAL}
    assert wake == NOW + INTERVAL


CADENCE = [
    # (seconds after the first run the loop looks again, runs by then, the next due time)
    (INTERVAL / 2, 1, NOW + INTERVAL),  # not due yet: nothing starts, the due time stays
    (INTERVAL + 0.5, 2, NOW + 2 * INTERVAL),  # a little late: due + interval, not now + interval
    (3.5 * INTERVAL, 2, NOW + 4.5 * INTERVAL),  # more than an interval late: now + interval
]


@pytest.mark.parametrize(("later", "runs", "due"), CADENCE)
def test_the_cadence_is_kept_without_drift(job: Job, later: float, runs: int, due: float) -> None:
    async def scenario() -> tuple[float, float]:
        runtime = fakes.runtime_of()
        idx = fakes.indexes(_body())
        periodic.schedule(runtime, idx, NOW)
        await _settle()
        wake = periodic.schedule(runtime, idx, NOW + later)
        await _settle()
        return wake, runtime.periodic.due[("u1", "test")]

    wake, next_due = fakes.run(scenario())
    assert (len(job.runs), next_due, wake) == (runs, due, due)


def test_an_evaluation_still_running_is_not_started_twice(job: Job) -> None:
    async def scenario() -> None:
        job.hold = asyncio.Event()
        runtime = fakes.runtime_of()
        idx = fakes.indexes(_body())
        periodic.schedule(runtime, idx, NOW)
        await _settle()
        periodic.schedule(runtime, idx, NOW + 3 * INTERVAL)
        await _settle()
        job.hold.set()

    fakes.run(scenario())
    assert len(job.runs) == 1


@dataclasses.dataclass
class Rt:
    runtime: rt.Runtime
    wake: float
    cancelled: int  # evaluations cancelled while the loop still runs (asyncio.run cancels the rest)


def test_work_a_service_no_longer_wants_is_cancelled(job: Job) -> None:
    async def scenario() -> Rt:
        job.hold = asyncio.Event()
        runtime = fakes.runtime_of()
        periodic.schedule(runtime, fakes.indexes(_body()), NOW)
        await _settle()
        # The spec edit drops the job (a new generation, so the cached wants are recomputed).
        edited = fakes.service(uid="u1", generation=2)
        wake = periodic.schedule(runtime, fakes.indexes(edited), NOW + 1)
        await _settle()
        return Rt(runtime, wake, job.cancelled)

    out = fakes.run(scenario())
    assert out.cancelled == 1
    assert out.runtime.periodic.due == {} and out.runtime.periodic.running == {}
    assert out.runtime.periodic.work["u1"][1] == {}  # still known, wanting nothing
    assert out.wake == float("inf")


GONE = [
    # How a service leaves: removed from the index, or marked for deletion.
    pytest.param(lambda body: fakes.indexes(), id="removed"),
    pytest.param(
        lambda body: fakes.indexes({**body, "metadata": {**body["metadata"], "deletionTimestamp": "now"}}),
        id="deleting",
    ),
]


@pytest.mark.parametrize("after", GONE)
def test_a_deleted_service_is_forgotten_and_its_work_cancelled(job: Job, after: Any) -> None:
    async def scenario() -> Rt:
        job.hold = asyncio.Event()
        runtime = fakes.runtime_of()
        body = _body()
        periodic.schedule(runtime, fakes.indexes(body), NOW)
        runtime.periodic.maintenance_locks["u1"] = asyncio.Lock()
        await _settle()
        wake = periodic.schedule(runtime, after(body), NOW + 1)
        await _settle()
        return Rt(runtime, wake, job.cancelled)

    out = fakes.run(scenario())
    state = out.runtime.periodic
    assert out.cancelled == 1
    assert (state.due, state.running, state.work, state.maintenance_locks) == ({}, {}, {}, {})


def test_one_service_going_leaves_the_others_alone(job: Job) -> None:
    async def scenario() -> rt.Runtime:
        runtime = fakes.runtime_of()
        web, api = _body(), _body(uid="u2", name="api")
        periodic.schedule(runtime, fakes.indexes(web, api), NOW)
        await _settle()
        periodic.schedule(runtime, fakes.indexes(api), NOW + 1)
        await _settle()
        return runtime

    runtime = fakes.run(scenario())
    assert set(runtime.periodic.due) == {("u2", "test")}
    assert set(runtime.periodic.work) == {"u2"}


def test_what_a_service_wants_is_recomputed_only_when_its_basis_changes(job: Job) -> None:
    runtime = fakes.runtime_of()
    body = _body()
    assert periodic.work_of(runtime, body) == {"test": INTERVAL}
    assert periodic.work_of(runtime, body) == {"test": INTERVAL}
    assert job.asked == 1
    # A status change the job's basis reads is a reason to ask again; a new generation too.
    assert periodic.work_of(runtime, {**body, "status": {"flag": True}}) == {"test": INTERVAL}
    assert job.asked == 2
    edited = fakes.service(uid="u1", generation=2, every=3.0)
    assert periodic.work_of(runtime, edited) == {"test": 3.0}
    assert job.asked == 3


def test_an_evaluation_reads_the_newest_copy_of_the_service(job: Job) -> None:
    async def scenario() -> None:
        runtime = fakes.runtime_of()
        idx = fakes.indexes(_body())
        periodic.schedule(runtime, idx, NOW)
        # The index moves on before the task runs: the task reads the newer body.
        idx["services"][("prod", "web")].append(_body(generation=2))
        await _settle()

    fakes.run(scenario())
    assert [b["metadata"]["generation"] for b in job.runs] == [2]


def test_an_evaluation_of_a_service_replaced_meanwhile_does_nothing(job: Job) -> None:
    async def scenario() -> None:
        runtime = fakes.runtime_of()
        idx = fakes.indexes(_body())
        periodic.schedule(runtime, idx, NOW)
        idx["services"][("prod", "web")] = [_body(uid="u-new")]  # deleted and created again
        await _settle()

    fakes.run(scenario())
    assert job.runs == []


@pytest.mark.parametrize("error", [ports.Unavailable("prometheus down"), RuntimeError("bug")])
def test_a_failing_evaluation_is_contained_and_runs_again_when_due(job: Job, error: Exception) -> None:
    async def scenario() -> bool:
        job.error = error
        runtime = fakes.runtime_of()
        idx = fakes.indexes(_body())
        periodic.schedule(runtime, idx, NOW)
        await _settle()
        task = runtime.periodic.running[("u1", "test")]
        periodic.schedule(runtime, idx, NOW + INTERVAL)
        await _settle()
        return task.done() and not task.cancelled() and task.exception() is None

    assert fakes.run(scenario())
    assert len(job.runs) == 2
