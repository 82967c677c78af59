"""kopf wiring for self-healing: watch pods, nodes and policies; run the healing core; act.

One loop (a startup task, not a kopf timer: timers put a finalizer on every service) walks every
service with ``spec.healing`` about once a second. Everything it reads comes from kopf indexes
(watch caches), so a pass costs no API calls unless it acts. Decisions are the core's
(``core.remediation.step`` under ``core.policy.decide``); this module only executes them through
``ports.HealingActions`` and ``ports.ApprovalGate``, records them (``status.healing``,
``status.lastRemediation``, an Event and a log line) and persists the state.

Services with ``spec.healing.slo`` also need Prometheus answers: a task per service asks the
runtime's ``ports.MetricsProvider`` every ``slo.interval`` (never the 1 s pass itself, which only
reads the latest readings), and any failure becomes an Unknown reading, which the core never
treats as a breach.

Collaborators come from the runtime (``handlers.runtime``): ``healing_actions`` and ``gate``.
Without a gate (``ports.NoApprovalGate``), actions that need approval simply stay pending:
nothing risky ever runs unapproved.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf

from homeostat import ports
from homeostat.core import approval as appr
from homeostat.core import children as kids
from homeostat.core import fields
from homeostat.core import policy as pol
from homeostat.core import remediation as rem
from homeostat.core import spec as specs
from homeostat.handlers import runtime as rt

INTERVAL = 1.0  # seconds between passes; well under any sensible node grace period
SLOW_PASS = 5.0  # seconds; a pass this long is logged with its slowest service
REQUESTER = pol.REQUESTER
logger = logging.getLogger("homeostat.healing")

_APPROVAL_VERDICTS = {
    appr.ApprovalPhase.PENDING: pol.ApprovalVerdict.PENDING,
    appr.ApprovalPhase.APPROVED: pol.ApprovalVerdict.APPROVED,
    appr.ApprovalPhase.DENIED: pol.ApprovalVerdict.DENIED,
    appr.ApprovalPhase.EXPIRED: pol.ApprovalVerdict.EXPIRED,
}


# --- watch caches ------------------------------------------------------------------------------


@kopf.index("", "v1", "pods", labels={kids.LABEL_SERVICE: kopf.PRESENT})  # type: ignore[arg-type]
async def healing_pods(
    namespace: str, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    # The view the core reads, not the body: a pod's status is mostly what no decision needs
    # (images, IPs, every condition), and there is one pod or more per service.
    return {(namespace, labels[kids.LABEL_SERVICE]): rem.PodView.of(body)}


@kopf.index("", "v1", "nodes")
async def healing_nodes(name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    wanted = ("Ready", *rem.PRESSURE_CONDITIONS)
    conditions = [c for c in (body.get("status") or {}).get("conditions") or [] if c.get("type") in wanted]
    return {
        name: {
            "metadata": {"name": name},
            "spec": {"unschedulable": bool((body.get("spec") or {}).get("unschedulable"))},
            "status": {"conditions": copy.deepcopy(conditions)},
        }
    }


@kopf.index(kids.GROUP, kids.VERSION, "remediationpolicies")
async def healing_policies(name: str, spec: kopf.Spec, **_: Any) -> dict[Any, Any]:
    return {name: copy.deepcopy(dict(spec))}


@kopf.on.startup()
async def start_healing(*, memo: Any, settings: kopf.OperatorSettings, **_: Any) -> None:
    rt.of(memo)
    # Only pods of our services reach this process: filtered by the API server, not after it.
    settings.watching.label_selectors["", "v1", "pods"] = kids.LABEL_SERVICE


@kopf.on.event(*rt.RSVC, id="healing_start")
async def ensure_healing(*, memo: Any, **kwargs: Any) -> None:
    """Start the loop from the first service event rather than at startup, so a replica paused
    by kopf peering (which gets no events) never heals anything."""
    runtime = rt.of(memo)
    if runtime.healing.task is None:
        runtime.healing.task = asyncio.create_task(_forever(runtime, kwargs))


async def _forever(runtime: rt.Runtime, indexes: Mapping[str, Any]) -> None:
    while True:
        await asyncio.sleep(INTERVAL)
        try:
            await heal_all(runtime, indexes)
        except asyncio.CancelledError:
            raise
        except Exception:  # one bad pass must not end self-healing for good
            logger.exception("healing pass failed")


def _values(store: Any) -> list[Any]:
    return list(store) if store is not None else []


async def heal_all(runtime: rt.Runtime, indexes: Mapping[str, Any]) -> None:
    loop = runtime.healing
    now = runtime.clock()
    nodes = _nodes(loop, indexes, now)
    ready = sum(1 for n in nodes.values() if n.ready)
    cluster = pol.ClusterView(nodes_total=len(nodes), nodes_ready=ready)
    stores = list(indexes["services"].values())
    # After a restart, every service's recorded actions count towards the cluster and namespace
    # limits before the first service is healed, not only the ones healed so far.
    present = {b[-1]["metadata"]["uid"] for b in map(_values, stores) if b}
    for gone in [uid for uid in loop.histories if uid not in present]:
        loop.histories.pop(gone, None)
        loop.states.pop(gone, None)
    for gone in [uid for uid in loop.slo if uid not in present]:
        loop.slo.pop(gone).stop()
    for store in stores:
        bodies = _values(store)
        if bodies and bodies[-1]["metadata"]["uid"] not in loop.histories:
            try:
                recorded = rem.HealingState.from_storage((bodies[-1].get("status") or {}).get("healing"))
            except fields.StorageError:
                continue  # that service's own pass reports it, and heals nothing
            loop.histories[bodies[-1]["metadata"]["uid"]] = recorded.history
    started, slowest, slowest_took = time.monotonic(), "", 0.0
    for store in stores:
        bodies = _values(store)
        if not bodies:
            continue
        body = bodies[-1]
        if body["metadata"].get("deletionTimestamp"):
            continue
        meta = body["metadata"]
        began = time.monotonic()
        try:
            await _heal(runtime, indexes=indexes, body=body, nodes=nodes, cluster=cluster, now=now)
        except Exception:
            logger.exception(f"healing {meta['namespace']}/{meta['name']} failed")
        if (took := time.monotonic() - began) > slowest_took:
            slowest, slowest_took = f"{meta['namespace']}/{meta['name']}", took
    if (took := time.monotonic() - started) > SLOW_PASS:
        # Services are healed one after another (cluster-wide limits see each decision before
        # the next is made), so one slow service delays all: say which.
        logger.warning(f"healing pass took {took:.1f}s; slowest: {slowest} ({slowest_took:.1f}s)")


def _nodes(loop: rt.HealingLoopState, indexes: Mapping[str, Any], now: float) -> dict[str, rem.NodeView]:
    nodes: dict[str, rem.NodeView] = {}
    seen = set()
    for store in list(indexes["healing_nodes"].values()):
        bodies = _values(store)
        if not bodies:
            continue
        body = bodies[-1]
        name = body["metadata"]["name"]
        seen.add(name)
        probe = rem.NodeView.of(body)
        for since, flag in (
            (loop.not_ready_since, not probe.ready),
            (loop.pressure_since, bool(probe.pressure)),
        ):
            if flag:
                since.setdefault(name, now)
            else:
                since.pop(name, None)
        nodes[name] = rem.NodeView.of(body, loop.not_ready_since.get(name), loop.pressure_since.get(name))
    for gone in set(loop.not_ready_since) - seen:
        loop.not_ready_since.pop(gone, None)
    for gone in set(loop.pressure_since) - seen:
        loop.pressure_since.pop(gone, None)
    return nodes


def _policy(indexes: Mapping[str, Any], spec: Mapping[str, Any]) -> pol.Policy | str:
    name = ((spec.get("approvals") or {}).get("policy")) or pol.DEFAULT_POLICY
    bodies = _values(indexes["healing_policies"].get(name))
    if not bodies:
        return f"RemediationPolicy {name} not found; no healing action is taken"
    try:
        return pol.parse(name, bodies[-1])
    except pol.PolicyError as exc:
        return f"RemediationPolicy {name} is invalid ({exc}); no healing action is taken"


async def _heal(
    runtime: rt.Runtime,
    *,
    indexes: Mapping[str, Any],
    body: Mapping[str, Any],
    nodes: Mapping[str, rem.NodeView],
    cluster: pol.ClusterView,
    now: float,
) -> None:
    loop = runtime.healing
    meta, spec = body["metadata"], body.get("spec") or {}
    uid = meta["uid"]
    try:
        healing = rem.parse_healing(spec.get("healing"))
    except specs.SpecError:
        return  # the reconcile reports an invalid spec
    readings = _slo_readings(runtime, meta, healing, now)
    if not healing.enabled:
        loop.histories.pop(uid, None)
        return
    state = await _readable_state(runtime, body)
    if state is None:
        return
    policy = await _policy_or_report(runtime, indexes, body, state)
    if policy is None:
        return
    pods = tuple(_values(indexes["healing_pods"].get((meta["namespace"], meta["name"]))))
    try:
        view = rem.view_of(body, healing, pods=pods, nodes=nodes, slo=readings)
    except specs.SpecError:
        return  # the reconcile reports an invalid spec
    others = tuple(r for other, history in loop.histories.items() if other != uid for r in history)
    approvals = {key: value for (owner, key), value in loop.approvals.items() if owner == uid}
    state, effects = rem.step(state, rem.PassContext(view, policy, others, cluster, approvals, now))
    await _write_ahead(runtime, body, state, effects)
    # Remembered before the effects run: if one of them fails unexpectedly, the next pass must
    # start from what was just stored, not from the state before it (an action would repeat).
    runtime.healing.states[uid] = state
    state, last = await _carry_out(runtime, body, state, effects, now)
    _remember(runtime, uid, state)
    # A merge patch keeps keys it does not mention: clear a policy error reported earlier.
    changes: dict[str, Any] = {"healing": {**state.as_in_storage(), "policyError": None, "statusError": None}}
    changes["healing"]["slo"] = [r.as_in_storage() for r in readings] or None
    if last is not None:
        changes["lastRemediation"] = last
    await runtime.write_status(body, changes)


def _state(runtime: rt.Runtime, body: Mapping[str, Any]) -> rem.HealingState:
    """This process's healing state of the service, else the one stored in its status; raises
    ``StorageError`` when the stored one cannot be read."""
    stored = (body.get("status") or {}).get("healing")
    return runtime.healing.states.get(body["metadata"]["uid"]) or rem.HealingState.from_storage(stored)


async def _readable_state(runtime: rt.Runtime, body: Mapping[str, Any]) -> rem.HealingState | None:
    """The healing state, or None after reporting (once per change) that the stored one cannot
    be read: nothing is healed then, since acting as if fresh could repeat a risky action (the
    stored-state rule, core/fields.py). The unreadable record is kept for a human to fix."""
    loop, uid = runtime.healing, body["metadata"]["uid"]
    try:
        state = _state(runtime, body)
    except fields.StorageError as exc:
        message = f"status.{exc}; fix or clear status.healing. No healing action is taken meanwhile"
        if loop.state_errors.get(uid) != message:
            loop.state_errors[uid] = message
            runtime.event(body, "Warning", "RemediationStateUnreadable", message)
            stored = (body.get("status") or {}).get("healing")
            if isinstance(stored, Mapping):
                await runtime.write_status(body, {"healing": {**stored, "statusError": message}})
        return None
    loop.state_errors.pop(uid, None)
    return state


async def _policy_or_report(
    runtime: rt.Runtime, indexes: Mapping[str, Any], body: Mapping[str, Any], state: rem.HealingState
) -> pol.Policy | None:
    """The service's RemediationPolicy; None after reporting, once per change, why there is
    none to act under (missing or invalid): no healing action is taken without one."""
    loop, uid = runtime.healing, body["metadata"]["uid"]
    policy = _policy(indexes, body.get("spec") or {})
    if not isinstance(policy, str):
        loop.policy_errors.pop(uid, None)
        return policy
    if loop.policy_errors.get(uid) != policy:
        loop.policy_errors[uid] = policy
        runtime.event(body, "Warning", "RemediationPolicyMissing", policy)
        reported = {**state.as_in_storage(), "policyError": policy}
        await runtime.write_status(body, {"healing": reported})
    return None


async def _carry_out(
    runtime: rt.Runtime,
    body: Mapping[str, Any],
    state: rem.HealingState,
    effects: tuple[rem.Effect, ...],
    now: float,
) -> tuple[rem.HealingState, dict[str, Any] | None]:
    """Execute the core's effects in order; the last one that leaves a record for
    ``status.lastRemediation``. Held actions are reported once per action and reason."""
    last: dict[str, Any] | None = None
    held: dict[tuple[str, str], list[rem.Held]] = {}
    for effect in effects:
        if isinstance(effect, rem.Held):
            held.setdefault((effect.action.value, effect.reason.value), []).append(effect)
            continue
        state, record = await _execute(runtime, body, state, effect, now=now)
        last = record or last
    # A storm holds many pods at once for the same reason: one Event per reason, not per pod.
    for (action, _), group in held.items():
        more = f" and {len(group) - 5} more" if len(group) > 5 else ""
        targets = ", ".join(h.target for h in group[:5]) + more
        runtime.event(body, "Normal", "RemediationHeld", f"{action} on {targets}: {group[0].message}")
    return state, last


def _remember(runtime: rt.Runtime, uid: str, state: rem.HealingState) -> None:
    """Keep the new state, and forget approvals and executions of incidents that are over."""
    loop = runtime.healing
    loop.states[uid] = state
    loop.histories[uid] = state.history
    live = {i.key for i in state.incidents}
    for key in [k for k in loop.approvals if k[0] == uid and k[1] not in live]:
        loop.approvals.pop(key, None)
        loop.tickets.pop(key, None)
    loop.executed -= {k for k in loop.executed if k[0] == uid and k[1] not in live}


async def _write_ahead(
    runtime: rt.Runtime,
    body: Mapping[str, Any],
    state: rem.HealingState,
    effects: tuple[rem.Effect, ...],
) -> None:
    """Store the state before its effects run, when a crash in between would be unsafe.

    The record of an action (its history entry, the incident now Verifying) is stored before the
    action runs. A crash in between then leaves an action counted but not taken, which
    verification escalates, never one taken but uncounted, which would slip past rate limits
    and the circuit breaker and could run twice. And an approval request is named after its
    incident's occurrence (when it was first seen): the incident is stored before the first
    request, or a restart in between would see a new occurrence and open a second request for
    the same problem. A failed write raises here, before anything is done.
    """
    uid = body["metadata"]["uid"]
    tickets = runtime.healing.tickets
    acting = any(isinstance(e, rem.Execute) and not e.resume for e in effects)
    asking = any(isinstance(e, rem.AskApproval) and (uid, e.incident) not in tickets for e in effects)
    if acting or asking:
        await runtime.write_status(body, {"healing": {**state.as_in_storage(), "policyError": None}})


def _slo_readings(
    runtime: rt.Runtime, meta: Mapping[str, Any], healing: rem.HealingSpec, now: float
) -> tuple[rem.SloReading, ...]:
    """The service's latest SLO readings; starts a query task when one is due and none runs."""
    loop = runtime.healing
    uid = meta["uid"]
    if not healing.slo:
        if uid in loop.slo:
            loop.slo.pop(uid).stop()
        return ()
    probe = loop.slo.setdefault(uid, rt.SloProbe())
    if probe.objectives != healing.objectives:
        # A changed query or bound is a new measurement: no breach carries over from the old one.
        probe.stop()
        probe.objectives, probe.readings, probe.due, probe.task = healing.objectives, {}, 0.0, None
    if now >= probe.due and (probe.task is None or probe.task.done()):
        probe.due = now + healing.slo_interval
        probe.task = asyncio.create_task(
            _probe(runtime, probe, meta["namespace"], meta["name"], healing.objectives)
        )
    return tuple(probe.readings[o.name] for o in healing.objectives if o.name in probe.readings)


async def _probe(
    runtime: rt.Runtime,
    probe: rt.SloProbe,
    namespace: str,
    name: str,
    objectives: tuple[rem.SloObjective, ...],
) -> None:
    """Ask Prometheus for every objective; whatever goes wrong becomes an Unknown reading."""
    problems: dict[str, str] = {}
    for objective in objectives:
        value: float | None = None
        query = fields.render_query(objective.query, namespace=namespace, service=name)
        try:
            value, why = rt.one_value(await runtime.metrics.instant(query))
        except ports.Unavailable as exc:
            why = f"Prometheus unavailable: {exc}"
        except Exception as exc:  # an unexpected answer must not end the probing for good
            why = f"query failed: {exc}"
        if probe.objectives != objectives:
            return  # the spec changed meanwhile: these answers are for queries no longer asked
        reading = rem.read_slo(objective, value, probe.readings.get(objective.name), runtime.clock(), why)
        probe.readings[objective.name] = reading
        if reading.verdict is rem.SloVerdict.UNKNOWN:
            problems[objective.name] = reading.message
    unknown = tuple(sorted(problems))
    if unknown != probe.unknown:
        if unknown:
            why = "; ".join(f"{k}: {v}" for k, v in sorted(problems.items()))
            logger.warning(f"{namespace}/{name}: SLO unknown, no SLO action is taken: {why}")
        else:
            logger.info(f"{namespace}/{name}: SLO readings available again")
        probe.unknown = unknown


def _last(action: str, target: str, cause: str, outcome: str, now: float) -> dict[str, Any]:
    when = fields.rfc3339(now)
    return {"action": action, "target": target, "cause": cause, "outcome": outcome, "time": when}


async def _execute(
    runtime: rt.Runtime, body: Mapping[str, Any], state: rem.HealingState, effect: rem.Effect, *, now: float
) -> tuple[rem.HealingState, dict[str, Any] | None]:
    if isinstance(effect, rem.Execute):
        return await _act(runtime, body, state, effect, now)
    if isinstance(effect, rem.AskApproval):
        await _ask(runtime, body, effect, now)
        return state, None
    if isinstance(effect, rem.Escalate):
        runtime.event(body, "Warning", "RemediationEscalated", f"{effect.reason}: {effect.message}")
        await _notify(runtime, body, effect)
        return state, _last("Escalate", effect.target, effect.cause.value, effect.reason, now)
    if isinstance(effect, rem.Held):  # reported per reason by the caller
        return state, None
    outcome = "Succeeded" if effect.succeeded else "Failed"
    if effect.succeeded:
        runtime.event(body, "Normal", "RemediationVerified", effect.message)
    else:
        runtime.event(body, "Warning", "RemediationIneffective", effect.message)
    return state, _last("Verify", effect.target, effect.cause.value, outcome, now)


async def _act(
    runtime: rt.Runtime, body: Mapping[str, Any], state: rem.HealingState, effect: rem.Execute, now: float
) -> tuple[rem.HealingState, dict[str, Any] | None]:
    """Carry out one action, or resume one decided before a restart, and report it."""
    loop = runtime.healing
    key = (body["metadata"]["uid"], effect.incident)
    if effect.resume and effect.action is not pol.Action.DRAIN_NODE and key in loop.executed:
        return state, None
    try:
        done = await _run(runtime.healing_actions, body, effect)
    except ports.EvictionRefused as exc:
        # The budget protects the service: stop here, report once, try again on a later
        # pass while the verify window lasts; never force the pod out.
        if loop.blocked.get(key) != str(exc):
            loop.blocked[key] = str(exc)
            runtime.event(body, "Warning", "DrainBlocked", str(exc))
        return state, None
    except (ports.Unavailable, ports.Rejected) as exc:
        if effect.resume:
            logger.warning(f"resuming {effect.action.value} on {effect.target}: {exc}")
            return state, None
        text = f"{effect.action.value} on {effect.target} failed: {exc}"
        runtime.event(body, "Warning", "RemediationFailed", text)
        await _record_outcome(runtime, key, appr.ActionResult.FAILED, text)
        state = rem.action_failed(state, effect.incident, str(exc), now)
        return state, _last(effect.action.value, effect.target, effect.cause.value, "Failed", now)
    first_here = key not in loop.executed
    loop.executed.add(key)
    if effect.resume:
        await _resumed(runtime, body, effect, done, first_here=first_here)
        return state, None
    loop.blocked.pop(key, None)
    text = f"{effect.action.value} on {effect.target} ({effect.cause.value}): {done.text}. {effect.message}"
    runtime.event(body, "Normal", "Remediation", text)
    await _record_outcome(runtime, key, appr.ActionResult.SUCCEEDED, done.text)
    return state, _last(effect.action.value, effect.target, effect.cause.value, "Executed", now)


async def _resumed(
    runtime: rt.Runtime, body: Mapping[str, Any], effect: rem.Execute, done: _Done, *, first_here: bool
) -> None:
    """Report an action recorded before a restart (perhaps never carried out) that ran now."""
    if first_here:
        # The process that decided the action was killed holding the approval's ticket: its
        # outcome is recorded now, so the Approval shows the action ran under it.
        await _record_resumed(runtime, body, effect, done.text)
    if effect.action is pol.Action.DRAIN_NODE:
        # A drain is resumed on every pass while a budget holds pods back: said only when one
        # of those passes moved pods.
        if done.evicted:
            text = f"{done.text} after the disruption budget allowed it"
            runtime.event(body, "Normal", "DrainResumed", text)
        return
    text = f"{effect.action.value} on {effect.target} ({effect.cause.value}), resumed: {done.text}"
    runtime.event(body, "Normal", "RemediationResumed", text)


@dataclasses.dataclass(frozen=True)
class _Done:
    """What an action did: the text for its Event, and for a drain how many pods it evicted."""

    text: str
    evicted: int | None = None


async def _run(actions: ports.HealingActions, body: Mapping[str, Any], effect: rem.Execute) -> _Done:
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    action = effect.action
    if action in (pol.Action.RESTART_POD, pol.Action.RESCHEDULE_PODS):
        force = action is pol.Action.RESCHEDULE_PODS
        deleted = [pod for pod in effect.pods if await actions.delete_pod(namespace, pod, force=force)]
        return _Done(f"deleted {len(deleted)} pod(s): {', '.join(deleted) or 'none left'}")
    if action is pol.Action.CORDON_NODE:
        await actions.cordon(effect.node)
        return _Done(f"node {effect.node} cordoned")
    if action is pol.Action.DRAIN_NODE:
        drained = await actions.drain(effect.node)
        return _Done(drained.describe(effect.node), drained.evicted)
    if action is pol.Action.SCALE_UP:
        await actions.scale(namespace, name, int(effect.value))
        return _Done(f"scaled to {effect.value} replicas")
    if action is pol.Action.RAISE_MEMORY_LIMIT:
        await actions.set_memory_limit(namespace, name, effect.container, effect.value)
        return _Done(f"memory limit of {effect.container} raised to {effect.value}")
    await actions.rollback(namespace, name, effect.value)
    return _Done(f"rollback to the stable revision requested (abort/{effect.value})")


async def _ask(runtime: rt.Runtime, body: Mapping[str, Any], effect: rem.AskApproval, now: float) -> None:
    loop = runtime.healing
    key = (body["metadata"]["uid"], effect.incident)
    settings = (body.get("spec") or {}).get("approvals") or {}
    request = pol.approval_request(
        effect.request, effect.rule, settings, symptom=effect.message, occurrence=effect.occurrence, now=now
    )
    try:
        ticket = await runtime.gate.request(body["metadata"]["namespace"], request)
    except ports.Unavailable as exc:
        # Stays pending: never executed without an answer. Told once per incident, not per pass.
        if key not in loop.unavailable:
            loop.unavailable.add(key)
            runtime.event(body, "Warning", "ApprovalUnavailable", f"{effect.message}: {exc}")
        loop.approvals.setdefault(key, pol.ApprovalState(pol.ApprovalVerdict.PENDING))
        return
    loop.unavailable.discard(key)
    first = key not in loop.tickets
    loop.tickets[key] = ticket
    deciders: frozenset[str] = frozenset()
    if ticket.phase is appr.ApprovalPhase.APPROVED:
        # Belt and braces: the gate enforced the quorum; the policy checks the recorded deciders
        # again before anything runs.
        try:
            stored = await runtime.healing_actions.approval(ticket.namespace, ticket.name)
        except ports.Unavailable as exc:
            # Not readable now: not approved yet, as far as this pass knows; asked again next pass.
            logger.warning(f"Approval {ticket.namespace}/{ticket.name} could not be read: {exc}")
            loop.approvals.setdefault(key, pol.ApprovalState(pol.ApprovalVerdict.PENDING))
            return
        decided = appr.State.from_storage((stored or {}).get("status"))
        deciders = frozenset(str(d.identity) for d in decided.decisions if d.verdict is appr.Vote.APPROVE)
    verdict = _APPROVAL_VERDICTS[ticket.phase]
    loop.approvals[key] = pol.ApprovalState(verdict, deciders, REQUESTER, effect.occurrence)
    if first:
        text = (
            f"{request.action} on {request.target} needs approval: Approval {ticket.namespace}/{ticket.name}"
        )
        runtime.event(body, "Normal", "ApprovalRequested", text)


async def _record_outcome(
    runtime: rt.Runtime, key: tuple[str, str], result: appr.ActionResult, message: str
) -> None:
    loop = runtime.healing
    ticket = loop.tickets.pop(key, None)
    loop.approvals.pop(key, None)
    if ticket is None:
        return
    try:
        await runtime.gate.record_outcome(ticket, result, message)
    except ports.Unavailable as exc:
        logger.warning(f"could not record the outcome on Approval {ticket.namespace}/{ticket.name}: {exc}")


async def _record_resumed(
    runtime: rt.Runtime, body: Mapping[str, Any], effect: rem.Execute, done: str
) -> None:
    """Record a resumed action's outcome on the Approval it ran under, if it needed one."""
    if not effect.occurrence:
        return
    namespace = body["metadata"]["namespace"]
    target = pol.approval_target(effect.target)
    action = effect.action.value
    try:
        ticket = await runtime.gate.find(namespace, action, target, effect.cause.value, effect.occurrence)
        if ticket is not None and ticket.phase is appr.ApprovalPhase.APPROVED:
            message = f"resumed after an operator restart: {done}"
            await runtime.gate.record_outcome(ticket, appr.ActionResult.SUCCEEDED, message)
    except (ports.Unavailable, ports.Rejected) as exc:
        logger.warning(f"could not record the outcome of resumed {action} on {effect.target}: {exc}")


async def _notify(runtime: rt.Runtime, body: Mapping[str, Any], effect: rem.Escalate) -> None:
    await runtime.notify(
        body,
        kind="RemediationEscalated",
        severity="warning",
        title=f"{effect.cause.value} needs a human",
        message=effect.message,
        key=f"{effect.incident}/{effect.reason}",
    )
