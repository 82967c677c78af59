"""The operator's one per-process runtime: what every handler shares, typed, in one memo entry.

The CLI builds it whole (``Runtime``) and puts it into kopf's memo under ``runtime``; handlers
reach it with ``of(memo)`` and never keep state of their own anywhere else. It holds:

- the ports, with stand-ins from ``ports`` for what is not configured, so no handler checks
  for None (``ports.configured`` says where behaviour really differs);
- the process pool for CPU-heavy pure code, and the clock;
- the per-feature state of this process (everything durable is in the objects' status);
- the one way each to post an Event, notify a human, write a writer's part of a service's
  status, read the status this process last wrote, and read one number from a query.

Handler modules never import each other (import-linter says so); what two of them share
lives here, or in ``handlers.approval_flow``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import multiprocessing
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Mapping, Sequence
from typing import Any, TypeVar

import kopf

from homeostat import ports
from homeostat.core import approval as appr
from homeostat.core import children as kids
from homeostat.core import delivery as dl
from homeostat.core import fields
from homeostat.core import policy as pol
from homeostat.core import reconcile as rec
from homeostat.core import remediation as rem
from homeostat.core import rollout as ro

MEMO_KEY = "runtime"
RSVC = (kids.GROUP, kids.VERSION, "replicatedservices")
EVENT_MESSAGE_LIMIT = 1024  # the Events API's message bound (events.k8s.io/v1 note)
EVENT_QUEUE_LIMIT = 10_000  # past this a burst of Events is dropped, not held in memory
INVALID_RETRY = 30.0  # seconds: periodic work on a spec that does not parse is retried this slowly

Key = tuple[str, str]
_T = TypeVar("_T")

log = logging.getLogger("homeostat")
_BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


# --- reading kopf's indexes and bodies ---------------------------------------------------------


def latest(store: Any) -> Any:
    """The newest body a kopf index holds under one key, or None."""
    values = list(store) if store is not None else []
    return values[-1] if values else None


def owner_of(body: Mapping[str, Any]) -> kids.Owner:
    meta = body["metadata"]
    return kids.Owner(meta["name"], meta["namespace"], meta["uid"])


def involved(body: Mapping[str, Any]) -> dict[str, Any]:
    """The ``involvedObject`` of an Event about a ReplicatedService."""
    meta = body["metadata"]
    return {
        "apiVersion": kids.API_VERSION,
        "kind": kids.KIND,
        "name": meta["name"],
        "namespace": meta["namespace"],
        "uid": meta["uid"],
    }


def one_value(samples: Sequence[ports.Sample]) -> tuple[float | None, str]:
    """The one number a query that must answer with exactly one series gave, or why there is
    none: no data, or several series (the query should aggregate them)."""
    if not samples:
        return None, "no data"
    if len(samples) > 1:
        return None, f"the query returned {len(samples)} series; aggregate it to one"
    return samples[0].value, ""


# --- per-feature state of this process --------------------------------------------------------


@dataclasses.dataclass
class ReconcileState:
    """The reconcile's memory: the status it last wrote, rollout analyses and wake-ups."""

    locks: collections.defaultdict[Key, asyncio.Lock] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(asyncio.Lock)
    )
    # Rollout analysis runs apart from reconciles (a slow query never holds the lock); the
    # latest result waits here, per object uid, for the next reconcile to consume it.
    measured: dict[str, dl.Measured] = dataclasses.field(default_factory=dict)
    analyses: dict[str, asyncio.Task[None]] = dataclasses.field(default_factory=dict)
    wakeups: dict[Key, asyncio.TimerHandle] = dataclasses.field(default_factory=dict)
    settled: dict[Key, dict[str, ro.TrackView]] = dataclasses.field(default_factory=dict)
    resync_task: asyncio.Task[None] | None = None


# The periodic work of a service: what it wants (kind -> interval, from its body) and the
# coroutine that does one evaluation. Registered by the feature modules at import time.
Wants = Callable[[Mapping[str, Any]], "float | None"]
Basis = Callable[[Mapping[str, Any]], Hashable]
Work = Callable[["Runtime", Mapping[str, Any], Mapping[str, Any]], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class PeriodicJob:
    kind: str
    wants: Wants  # the interval the service wants this job at, or None
    basis: Basis  # what of the status ``wants`` reads besides the spec (for its cache)
    work: Work


PERIODIC: dict[str, PeriodicJob] = {}


def periodic(kind: str, *, wants: Wants, basis: Basis) -> Callable[[Work], Work]:
    """Register a feature's per-service evaluation with the periodic loop (handlers.periodic)."""

    def register(work: Work) -> Work:
        PERIODIC[kind] = PeriodicJob(kind, wants, basis, work)
        return work

    return register


@dataclasses.dataclass
class PeriodicState:
    task: asyncio.Task[None] | None = None
    due: dict[Key, float] = dataclasses.field(default_factory=dict)  # (uid, kind) -> when
    running: dict[Key, asyncio.Task[None]] = dataclasses.field(default_factory=dict)
    # The work each service wants, by uid, with what it was derived from: parsing every
    # service's spec on every tick kept a core busy at a thousand services.
    work: dict[str, tuple[Hashable, dict[str, float]]] = dataclasses.field(default_factory=dict)
    # The memory, restart and disk checks each own a part of status.maintenance and run as
    # separate tasks: their read-modify-write of it is serialised per service.
    maintenance_locks: dict[str, asyncio.Lock] = dataclasses.field(default_factory=dict)


class SloProbe:
    """The latest Prometheus answers for one service's ``spec.healing.slo``, refreshed by a task
    of its own every ``interval``: the 1 s healing pass reads them and never waits on a query."""

    def __init__(self) -> None:
        self.objectives: tuple[rem.SloObjective, ...] = ()
        self.readings: dict[str, rem.SloReading] = {}  # by objective name
        self.due = 0.0
        self.task: asyncio.Task[None] | None = None
        # Objectives last logged as unknown: an outage is logged when it starts and ends, not on
        # every evaluation (the reason's wording changes, e.g. a circuit's retry countdown).
        self.unknown: tuple[str, ...] = ()

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


@dataclasses.dataclass
class HealingLoopState:
    """Per-process memory of the healing loop (everything durable is in status.healing)."""

    task: asyncio.Task[None] | None = None
    states: dict[str, rem.HealingState] = dataclasses.field(default_factory=dict)  # by uid
    histories: dict[str, tuple[pol.Record, ...]] = dataclasses.field(default_factory=dict)
    approvals: dict[Key, pol.ApprovalState] = dataclasses.field(default_factory=dict)  # (uid, incident)
    tickets: dict[Key, ports.ApprovalTicket] = dataclasses.field(default_factory=dict)
    not_ready_since: dict[str, float] = dataclasses.field(default_factory=dict)  # by node
    pressure_since: dict[str, float] = dataclasses.field(default_factory=dict)  # by node
    blocked: dict[Key, str] = dataclasses.field(default_factory=dict)  # last refused eviction told
    policy_errors: dict[str, str] = dataclasses.field(default_factory=dict)  # reported once a change
    state_errors: dict[str, str] = dataclasses.field(
        default_factory=dict
    )  # unreadable status.healing, told once
    # Incidents whose action this process carried out. An action resumed while verifying is
    # carried out again only when it is not here: after a restart, the write-ahead record says
    # it was decided but not whether it ran.
    executed: set[Key] = dataclasses.field(default_factory=set)
    unavailable: set[Key] = dataclasses.field(default_factory=set)  # gate outages told, per incident
    slo: dict[str, SloProbe] = dataclasses.field(default_factory=dict)  # by uid


@dataclasses.dataclass
class ApprovalsState:
    """The approval handlers' memory: locks, what Slack shows, backoff and the work queue."""

    locks: collections.defaultdict[Key, asyncio.Lock] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(asyncio.Lock)
    )
    slack_locks: collections.defaultdict[Key, asyncio.Lock] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(asyncio.Lock)
    )
    # Posted messages by approval uid: an event may carry a body older than our own write of
    # the message ts, and must not post a second message.
    posted: dict[str, ports.MessageRef] = dataclasses.field(default_factory=dict)
    shown: dict[str, str] = dataclasses.field(default_factory=dict)
    retry_at: dict[Key, float] = dataclasses.field(default_factory=dict)
    expiring: set[Key] = dataclasses.field(default_factory=set)
    attempts: dict[Key, int] = dataclasses.field(default_factory=dict)
    jobs: asyncio.Queue[Callable[[], Awaitable[None]]] = dataclasses.field(default_factory=asyncio.Queue)
    index: Any = None  # kopf's approvals index, once startup hands it over
    tasks: list[asyncio.Task[Any]] = dataclasses.field(default_factory=list)


# --- the process pool --------------------------------------------------------------------------


def default_workers() -> int:
    """Forecast worker processes: two where there are two cores (the 1000-series cycle then fits
    well inside a minute), never more than the machine has."""
    return max(1, min(2, os.cpu_count() or 1))


class ProcessPool:
    """Worker processes for CPU-heavy pure code (forecast fits, trend assessments): an optimised
    Holt-Winters fit takes hundreds of milliseconds, which would stall kopf's event loop."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, workers) if workers else default_workers()
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None

    def executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self.pool is None:
            if self.workers > 1:
                # One BLAS thread per worker. OpenBLAS otherwise starts a thread per core in every
                # process and two workers fight over the same cores: measured on 2 cores, two
                # workers were no faster than one; with a thread each, 1.7x. Read by a worker
                # when it loads numpy (spawned workers inherit the environment), never by this
                # process, whose numpy is loaded already; an explicit setting wins.
                for name in _BLAS_THREADS:
                    os.environ.setdefault(name, "1")
            # spawn, not fork: forking a process that runs an event loop and threads can copy
            # held locks into the child.
            self.pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn")
            )
        return self.pool

    async def compute(self, func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run ``func`` in the pool; a crashed worker is replaced once."""
        loop = asyncio.get_running_loop()
        call = functools.partial(func, *args, **kwargs)
        try:
            return await loop.run_in_executor(self.executor(), call)
        except concurrent.futures.process.BrokenProcessPool:
            self.shutdown()
            return await loop.run_in_executor(self.executor(), call)

    def shutdown(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None


# --- the runtime -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RuntimeSettings:
    resync_seconds: float = 60.0
    http_bind: str = "0.0.0.0"
    http_port: int | None = 8080  # None: no HTTP server
    approval_tick_seconds: float = 1.0


@dataclasses.dataclass(eq=False)
class Runtime:
    """Everything a handler needs, built whole by the CLI (tests build it over fake ports)."""

    workloads: ports.Workloads
    credentials: Callable[[], Awaitable[ports.Credentials]]
    metrics: ports.MetricsProvider = dataclasses.field(default_factory=ports.NoMetrics)
    notifier: ports.Notifier = dataclasses.field(default_factory=ports.NopNotifier)
    telemetry: ports.Telemetry = dataclasses.field(default_factory=ports.NopTelemetry)
    events: ports.EventRecorder = dataclasses.field(default_factory=ports.NoEvents)
    scaler: ports.Scaler = dataclasses.field(default_factory=ports.NoScaler)
    healing_actions: ports.HealingActions = dataclasses.field(default_factory=ports.NoHealing)
    gate: ports.ApprovalGate = dataclasses.field(default_factory=ports.NoApprovalGate)
    store: ports.ApprovalStore = dataclasses.field(default_factory=ports.NoApprovalStore)
    messenger: ports.ApprovalMessenger = dataclasses.field(default_factory=ports.NoMessenger)
    settings: RuntimeSettings = RuntimeSettings()
    pool: ProcessPool = dataclasses.field(default_factory=ProcessPool)
    clock: Callable[[], float] = time.time
    # Per-feature state of this process.
    reconcile: ReconcileState = dataclasses.field(default_factory=ReconcileState)
    periodic: PeriodicState = dataclasses.field(default_factory=PeriodicState)
    healing: HealingLoopState = dataclasses.field(default_factory=HealingLoopState)
    approvals: ApprovalsState = dataclasses.field(default_factory=ApprovalsState)
    # The status this process last wrote, per object uid: an event may carry a body older than
    # its own last patch, and judging transitions against it would repeat Events.
    reported: dict[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    background: set[asyncio.Task[Any]] = dataclasses.field(default_factory=set)
    http_runner: Any = None  # the aiohttp runner of handlers.interactions, once serving
    _event_queue: asyncio.Queue[tuple[dict[str, Any], str, str, str]] | None = None
    _event_task: asyncio.Task[None] | None = None
    _events_dropped: int = 0

    # --- status ------------------------------------------------------------------------------

    def status_of(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """The service's status as this process last wrote it, else as the body carries it."""
        return self.reported.get(body["metadata"]["uid"]) or body.get("status") or {}

    async def write_status(
        self,
        body: Mapping[str, Any],
        changes: Mapping[str, Any],
        conditions: Sequence[Mapping[str, Any]] = (),
    ) -> bool:
        """Merge one writer's own status keys and condition types into the service's status.

        For writers other than the reconcile (autoscaler, healing, maintenance). Under the
        service's lock and starting from what this process last wrote, so two writers never
        erase each other's keys or conditions. Returns whether anything was patched.
        """
        owner = owner_of(body)
        async with self.reconcile.locks[(owner.namespace, owner.name)]:
            previous = self.status_of(body)
            status = {**previous, **changes}
            if conditions:
                now = fields.rfc3339(self.clock())
                status["conditions"] = rec.merge_conditions(previous.get("conditions") or [], conditions, now)
            patch = {k: replacing(previous.get(k), v) for k, v in status.items() if previous.get(k) != v}
            if not patch:
                return False
            await self.workloads.patch_status(owner, patch)
            self.reported[owner.uid] = status
            return True

    # --- Events --------------------------------------------------------------------------------

    def event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Log and post one Event about a ReplicatedService (its body)."""
        self.event_about(involved(body), type_, reason, message)

    def event_about(self, target: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Log and post one Event about ``target`` (an ``involvedObject``).

        Posted in order by one task through ``events``, never awaited by the caller: an Event is
        a report, and a slow API server must not hold up the decision it reports.
        """
        text = message[:EVENT_MESSAGE_LIMIT]
        (log.warning if type_ == "Warning" else log.info)(
            "%s/%s: %s: %s", target.get("namespace"), target.get("name"), reason, text
        )
        if self._event_queue is None:
            self._event_queue = asyncio.Queue()
        if self._event_queue.qsize() >= EVENT_QUEUE_LIMIT:
            self._events_dropped += 1
            if self._events_dropped == 1:
                log.warning("more than %d Events waiting to be posted; dropping new ones", EVENT_QUEUE_LIMIT)
            return
        self._event_queue.put_nowait((dict(target), type_, reason, text))
        if self._event_task is None or self._event_task.done():
            self._event_task = asyncio.create_task(self._post_events(self._event_queue))

    async def _post_events(self, queue: asyncio.Queue[tuple[dict[str, Any], str, str, str]]) -> None:
        while True:
            target, type_, reason, message = await queue.get()
            try:
                await self.events.post_event(target, type_, reason, message)
            except (ports.Unavailable, ports.Rejected) as exc:
                log.warning("could not post the %s Event for %s: %s", reason, target.get("name"), exc)
            finally:
                queue.task_done()
            if queue.empty():
                self._events_dropped = 0

    async def drain_events(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds (of the event loop's clock) for the queued Events to be
        posted: at shutdown, so a stopping operator still reports what it last did."""
        if self._event_queue is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event_queue.join(), timeout)

    # --- notifications -------------------------------------------------------------------------

    async def notify(
        self, body: Mapping[str, Any], *, kind: str, severity: str, title: str, message: str, key: str
    ) -> None:
        """Tell a human about one occurrence (``key``, unique per occurrence, under the
        service's uid); a notifier outage is logged and never fails the caller."""
        meta = body["metadata"]
        note = ports.Notification(
            namespace=meta["namespace"],
            service=meta["name"],
            kind=kind,
            severity=severity,
            title=f"{meta['namespace']}/{meta['name']}: {title}",
            message=message,
            key=f"{meta['uid']}/{key}",
        )
        try:
            await self.notifier.notify(note)
        except ports.Unavailable as exc:
            log.warning(
                "notification %s about %s/%s not delivered: %s", kind, note.namespace, note.service, exc
            )

    # --- tasks ---------------------------------------------------------------------------------

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a fire-and-forget coroutine, keeping a reference so it is not collected early."""
        task = asyncio.create_task(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def approval_known(self, ref: appr.Ref) -> Mapping[str, Any] | None:
        """The latest body of an Approval this process has seen (from the kopf index)."""
        index = self.approvals.index
        if index is None:
            return None
        known: Mapping[str, Any] | None = latest(index.get((ref.namespace, ref.name)))
        return known

    def submit(self, job: Callable[[], Awaitable[None]]) -> None:
        """Queue approval work for the approval workers (handlers.approvals starts them)."""
        self.approvals.jobs.put_nowait(job)

    async def stop(self) -> None:
        """Cancel every task this runtime started and stop the pool (kopf's cleanup); Events
        already queued get a few seconds to be posted."""
        await self.drain_events(3.0)
        tasks = [
            self.reconcile.resync_task,
            self.periodic.task,
            *self.periodic.running.values(),
            self.healing.task,
            *self.approvals.tasks,
            *self.reconcile.analyses.values(),
            self._event_task,
        ]
        for task in tasks:
            if task is not None:
                task.cancel()
        for probe in self.healing.slo.values():
            probe.stop()
        for handle in self.reconcile.wakeups.values():
            handle.cancel()
        self.pool.shutdown()


def replacing(old: Any, new: Any) -> Any:
    """The merge-patch value that leaves exactly ``new`` on the server where ``old`` was. A
    merge patch merges objects key by key, so a key that ``new`` dropped is sent as null: else
    a stale ``status.forecast.fallback`` outlived the untrusted forecast it was about."""
    if not (isinstance(old, Mapping) and isinstance(new, Mapping)):
        return new
    dropped = {key: None for key in old if key not in new}
    return {**dropped, **{key: replacing(old.get(key), value) for key, value in new.items()}}


def of(memo: Any) -> Runtime:
    """The runtime the CLI put into kopf's memo."""
    runtime = memo.get(MEMO_KEY)
    if not isinstance(runtime, Runtime):
        raise kopf.PermanentError("homeostat runtime missing from memo; start with `homeostat run`")
    return runtime
