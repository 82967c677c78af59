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

Collaborators come from kopf's memo, put there by the CLI: ``healing_actions``
(``ports.HealingActions``) and, optionally, ``approval_gate`` (``ports.ApprovalGate``). Without a
gate, actions that need approval simply stay pending: nothing risky ever runs unapproved.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import logging
import time
from collections.abc import Mapping
from typing import Any, cast

import kopf

from homeostat import ports
from homeostat.core import approval as appr
from homeostat.core import children as kids
from homeostat.core import policy as pol
from homeostat.core import remediation as rem
from homeostat.core import scaling as sc
from homeostat.core import spec as specs
from homeostat.handlers import replicatedservice as rs

INTERVAL = 1.0  # seconds between passes; well under any sensible node grace period
SLOW_PASS = 5.0  # seconds; a pass this long is logged with its slowest service
REQUESTER = pol.REQUESTER
logger = logging.getLogger("homeostat.healing")

_APPROVAL_VERDICTS = {
    appr.Phase.PENDING: pol.ApprovalVerdict.PENDING,
    appr.Phase.APPROVED: pol.ApprovalVerdict.APPROVED,
    appr.Phase.DENIED: pol.ApprovalVerdict.DENIED,
    appr.Phase.EXPIRED: pol.ApprovalVerdict.EXPIRED,
}


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


class Loop:
    """Per-process memory of the healing loop (everything durable is in status.healing)."""

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.states: dict[str, rem.HealingState] = {}  # by service uid
        self.histories: dict[str, tuple[pol.Record, ...]] = {}  # by service uid, for cluster limits
        self.approvals: dict[tuple[str, str], pol.ApprovalState] = {}  # (uid, incident key)
        self.tickets: dict[tuple[str, str], ports.ApprovalTicket] = {}
        self.not_ready_since: dict[str, float] = {}  # node -> when this process first saw it not Ready
        self.pressure_since: dict[str, float] = {}  # node -> when this process first saw it under pressure
        self.blocked: dict[tuple[str, str], str] = {}  # (uid, incident) -> last refused eviction reported
        self.policy_errors: dict[str, str] = {}  # by service uid, reported once per change
        # Incidents whose action this process carried out. An action resumed while verifying
        # is carried out again only when it is not here: after a restart, the write-ahead
        # record says it was decided but not whether it ran.
        self.executed: set[tuple[str, str]] = set()  # (uid, incident)
        self.slo: dict[str, SloProbe] = {}  # by service uid; breached-since lives in the readings


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
    # Only pods of our services reach this process: filtered by the API server, not after it.
    settings.watching.label_selectors["", "v1", "pods"] = kids.LABEL_SERVICE
    memo["healing_loop"] = Loop()
    if memo.get("healing_actions") is None:
        logger.warning("no healing executor configured; self-healing is off")


@kopf.on.event(*rs.RSVC, id="healing_start")
async def ensure_healing(*, memo: Any, **kwargs: Any) -> None:
    """Start the loop from the first service event rather than at startup: a task inherits the
    context it is created in, and kopf.event only works in the context of a handler."""
    loop = memo.get("healing_loop")
    if not isinstance(loop, Loop) or loop.task is not None or memo.get("healing_actions") is None:
        return
    loop.task = asyncio.create_task(_forever(memo, kwargs))


@kopf.on.cleanup()
async def stop_healing(*, memo: Any, **_: Any) -> None:
    loop = memo.get("healing_loop")
    if isinstance(loop, Loop) and loop.task is not None:
        loop.task.cancel()
    if isinstance(loop, Loop):
        for probe in loop.slo.values():
            probe.stop()


async def _forever(memo: Any, indexes: Mapping[str, Any]) -> None:
    while True:
        await asyncio.sleep(INTERVAL)
        try:
            await heal_all(memo, indexes)
        except asyncio.CancelledError:
            raise
        except Exception:  # one bad pass must not end self-healing for good
            logger.exception("healing pass failed")


def _values(store: Any) -> list[Any]:
    return list(store) if store is not None else []


def _now() -> float:
    return datetime.datetime.now(datetime.UTC).timestamp()


async def heal_all(memo: Any, indexes: Mapping[str, Any]) -> None:
    loop: Loop = memo["healing_loop"]
    now = _now()
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
            recorded = rem.HealingState.from_storage((bodies[-1].get("status") or {}).get("healing"))
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
            await _heal(memo, loop, indexes=indexes, body=body, nodes=nodes, cluster=cluster, now=now)
        except Exception:
            logger.exception(f"healing {meta['namespace']}/{meta['name']} failed")
        if (took := time.monotonic() - began) > slowest_took:
            slowest, slowest_took = f"{meta['namespace']}/{meta['name']}", took
    if (took := time.monotonic() - started) > SLOW_PASS:
        # Services are healed one after another (cluster-wide limits see each decision before
        # the next is made), so one slow service delays all: say which.
        logger.warning(f"healing pass took {took:.1f}s; slowest: {slowest} ({slowest_took:.1f}s)")


def _nodes(loop: Loop, indexes: Mapping[str, Any], now: float) -> dict[str, rem.NodeView]:
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


def _memory_limits(template: Mapping[str, Any]) -> dict[str, float | None]:
    limits: dict[str, float | None] = {}
    for container in ((template.get("spec") or {}).get("containers")) or []:
        memory = ((container.get("resources") or {}).get("limits") or {}).get("memory")
        limits[str(container.get("name"))] = specs.quantity(memory)
    return limits


async def _heal(
    memo: Any,
    loop: Loop,
    *,
    indexes: Mapping[str, Any],
    body: Mapping[str, Any],
    nodes: Mapping[str, rem.NodeView],
    cluster: pol.ClusterView,
    now: float,
) -> None:
    meta, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
    uid = meta["uid"]
    try:
        healing = rem.parse_healing(spec.get("healing"))
    except specs.SpecError:
        return  # the reconcile reports an invalid spec
    readings = _slo_readings(memo, loop, meta, healing, now)
    if not healing.enabled:
        loop.histories.pop(uid, None)
        return
    runtime = rs._runtime(memo)
    policy = _policy(indexes, spec)
    if isinstance(policy, str):
        if loop.policy_errors.get(uid) != policy:
            loop.policy_errors[uid] = policy
            _event(body, "Warning", "RemediationPolicyMissing", policy)
            paused = loop.states.get(uid) or rem.HealingState.from_storage(status.get("healing"))
            reported = {**paused.as_in_storage(), "policyError": policy}
            await rs.write_status(runtime, body, {"healing": reported})
        return
    loop.policy_errors.pop(uid, None)
    state = loop.states.get(uid) or rem.HealingState.from_storage(status.get("healing"))
    pods = tuple(_values(indexes["healing_pods"].get((meta["namespace"], meta["name"]))))
    template = spec.get("template") or {}
    replicas = spec.get("replicas") or {}
    view = rem.ServiceView(
        namespace=meta["namespace"],
        name=meta["name"],
        healing=healing,
        stable_revision=str(status.get("stableRevision") or ""),
        current_revision=kids.revision(template),
        pods=pods,
        nodes=nodes,
        memory_limits=_memory_limits(template),
        replicas=int(replicas.get("desired") or status.get("desiredReplicas") or replicas.get("min") or 1),
        max_replicas=int(replicas.get("max") or 10),
        maintenance=rem.maintenance_requests(status),
        rolled_back=str((status.get("rollback") or {}).get("revision") or ""),
        slo=readings,
        autoscaled=_autoscaled(spec),
    )
    others = tuple(r for other, history in loop.histories.items() if other != uid for r in history)
    approvals = {key: value for (owner, key), value in loop.approvals.items() if owner == uid}
    ctx = rem.Context(view, policy, others, cluster, approvals, now)
    state, effects = rem.step(state, ctx)
    await _write_ahead(runtime, loop, body, state, effects)
    last: dict[str, Any] | None = None
    held: dict[tuple[str, str], list[rem.Held]] = {}
    for effect in effects:
        if isinstance(effect, rem.Held):
            held.setdefault((effect.action.value, effect.reason.value), []).append(effect)
            continue
        state, record = await _execute(memo, loop, body, state, effect, now=now)
        last = record or last
    # A storm holds many pods at once for the same reason: one Event per reason, not per pod.
    for (action, _), group in held.items():
        targets = ", ".join(h.target for h in group[:5]) + (
            f" and {len(group) - 5} more" if len(group) > 5 else ""
        )
        _event(body, "Normal", "RemediationHeld", f"{action} on {targets}: {group[0].message}")
    loop.states[uid] = state
    loop.histories[uid] = state.history
    live = {i.key for i in state.incidents}
    for owner, key in [k for k in loop.approvals if k[0] == uid and k[1] not in live]:
        loop.approvals.pop((owner, key), None)
        loop.tickets.pop((owner, key), None)
    loop.executed -= {k for k in loop.executed if k[0] == uid and k[1] not in live}
    # A merge patch keeps keys it does not mention: clear a policy error reported earlier.
    changes: dict[str, Any] = {"healing": {**state.as_in_storage(), "policyError": None}}
    changes["healing"]["slo"] = [r.as_in_storage() for r in readings] or None
    if last is not None:
        changes["lastRemediation"] = last
    await rs.write_status(runtime, body, changes)


async def _write_ahead(
    runtime: rs.Runtime,
    loop: Loop,
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
    acting = any(isinstance(e, rem.Execute) and not e.resume for e in effects)
    asking = any(isinstance(e, rem.AskApproval) and (uid, e.incident) not in loop.tickets for e in effects)
    if acting or asking:
        await rs.write_status(runtime, body, {"healing": {**state.as_in_storage(), "policyError": None}})


def _autoscaled(spec: Mapping[str, Any]) -> bool:
    try:
        return sc.parse(spec.get("autoscaling")).mode in (sc.Mode.REACTIVE, sc.Mode.PREDICTIVE)
    except specs.SpecError:
        return False  # the reconcile reports it; no autoscaler runs on an invalid spec


def _slo_readings(
    memo: Any, loop: Loop, meta: Mapping[str, Any], healing: rem.HealingSpec, now: float
) -> tuple[rem.SloReading, ...]:
    """The service's latest SLO readings; starts a query task when one is due and none runs."""
    uid = meta["uid"]
    if not healing.slo:
        if uid in loop.slo:
            loop.slo.pop(uid).stop()
        return ()
    probe = loop.slo.setdefault(uid, SloProbe())
    if probe.objectives != healing.objectives:
        # A changed query or bound is a new measurement: no breach carries over from the old one.
        probe.stop()
        probe.objectives, probe.readings, probe.due, probe.task = healing.objectives, {}, 0.0, None
    if now >= probe.due and (probe.task is None or probe.task.done()):
        probe.due = now + healing.slo_interval
        probe.task = asyncio.create_task(
            _probe(rs._runtime(memo).metrics, probe, meta["namespace"], meta["name"], healing.objectives)
        )
    return tuple(probe.readings[o.name] for o in healing.objectives if o.name in probe.readings)


async def _probe(
    metrics: ports.MetricsProvider | None,
    probe: SloProbe,
    namespace: str,
    name: str,
    objectives: tuple[rem.SloObjective, ...],
) -> None:
    """Ask Prometheus for every objective; whatever goes wrong becomes an Unknown reading."""
    problems: dict[str, str] = {}
    for objective in objectives:
        value: float | None = None
        why = ""
        if metrics is None:
            why = "no Prometheus is configured (--prometheus-url)"
        else:
            query = sc.render_query(objective.query, namespace=namespace, service=name)
            try:
                samples = await metrics.instant(query)
            except ports.Unavailable as exc:
                why = f"Prometheus unavailable: {exc}"
            except Exception as exc:  # an unexpected answer must not end the probing for good
                why = f"query failed: {exc}"
            else:
                if len(samples) == 1:
                    value = samples[0].value
                else:
                    why = "no data" if not samples else f"{len(samples)} series instead of one number"
        if probe.objectives != objectives:
            return  # the spec changed meanwhile: these answers are for queries no longer asked
        reading = rem.read_slo(objective, value, probe.readings.get(objective.name), _now(), why)
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


def _event(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    meta = body["metadata"]
    target = {
        "apiVersion": kids.API_VERSION,
        "kind": kids.KIND,
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
    }
    kopf.event(kopf.Body(cast(kopf.RawBody, target)), type=type_, reason=reason, message=message[:1000])
    log = logger.warning if type_ == "Warning" else logger.info
    log(f"{meta['namespace']}/{meta['name']}: {reason}: {message}")


def _last(action: str, target: str, cause: str, outcome: str, now: float) -> dict[str, Any]:
    when = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"action": action, "target": target, "cause": cause, "outcome": outcome, "time": when}


async def _execute(
    memo: Any, loop: Loop, body: Mapping[str, Any], state: rem.HealingState, effect: rem.Effect, *, now: float
) -> tuple[rem.HealingState, dict[str, Any] | None]:
    uid = body["metadata"]["uid"]
    if isinstance(effect, rem.Execute):
        key = (uid, effect.incident)
        drain = effect.action is pol.Action.DRAIN_NODE
        if effect.resume and not drain and key in loop.executed:
            return state, None
        actions: ports.HealingActions = memo["healing_actions"]
        try:
            done = await _run(actions, body, effect)
        except ports.EvictionRefused as exc:
            # The budget protects the service: stop here, report once, try again on a later
            # pass while the verify window lasts; never force the pod out.
            if loop.blocked.get((uid, effect.incident)) != str(exc):
                loop.blocked[(uid, effect.incident)] = str(exc)
                _event(body, "Warning", "DrainBlocked", str(exc))
            return state, None
        except (ports.Unavailable, ports.Rejected) as exc:
            if effect.resume:
                logger.warning(f"resuming {effect.action.value} on {effect.target}: {exc}")
                return state, None
            text = f"{effect.action.value} on {effect.target} failed: {exc}"
            _event(body, "Warning", "RemediationFailed", text)
            await _record_outcome(memo, loop, (uid, effect.incident), appr.ActionResult.FAILED, text)
            state = rem.action_failed(state, effect.incident, str(exc), now)
            return state, _last(effect.action.value, effect.target, effect.cause.value, "Failed", now)
        first_here = key not in loop.executed
        loop.executed.add(key)
        if effect.resume and first_here:
            # The process that decided the action was killed holding the approval's ticket: its
            # outcome is recorded now, so the Approval shows the action ran under it.
            await _record_resumed(memo, body, effect, done)
        if effect.resume and drain:
            if not done.endswith(" 0 pod(s) evicted"):
                _event(body, "Normal", "DrainResumed", f"{done} after the disruption budget allowed it")
            return state, None
        if effect.resume:
            # Recorded before a restart, perhaps never carried out: this is its first run here.
            text = f"{effect.action.value} on {effect.target} ({effect.cause.value}), resumed: {done}"
            _event(body, "Normal", "RemediationResumed", text)
            return state, None
        loop.blocked.pop((uid, effect.incident), None)
        text = f"{effect.action.value} on {effect.target} ({effect.cause.value}): {done}. {effect.message}"
        _event(body, "Normal", "Remediation", text)
        await _record_outcome(memo, loop, (uid, effect.incident), appr.ActionResult.SUCCEEDED, done)
        return state, _last(effect.action.value, effect.target, effect.cause.value, "Executed", now)
    if isinstance(effect, rem.AskApproval):
        await _ask(memo, loop, body, effect, now)
        return state, None
    if isinstance(effect, rem.Escalate):
        _event(body, "Warning", "RemediationEscalated", f"{effect.reason}: {effect.message}")
        await _notify(memo, body, effect)
        return state, _last("Escalate", effect.target, effect.cause.value, effect.reason, now)
    if isinstance(effect, rem.Held):  # reported per reason by the caller
        return state, None
    outcome = "Succeeded" if effect.succeeded else "Failed"
    if effect.succeeded:
        _event(body, "Normal", "RemediationVerified", effect.message)
    else:
        _event(body, "Warning", "RemediationIneffective", effect.message)
    return state, _last("Verify", effect.target, effect.cause.value, outcome, now)


async def _run(actions: ports.HealingActions, body: Mapping[str, Any], effect: rem.Execute) -> str:
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    action = effect.action
    if action in (pol.Action.RESTART_POD, pol.Action.RESCHEDULE_PODS):
        force = action is pol.Action.RESCHEDULE_PODS
        deleted = [pod for pod in effect.pods if await actions.delete_pod(namespace, pod, force=force)]
        return f"deleted {len(deleted)} pod(s): {', '.join(deleted) or 'none left'}"
    if action is pol.Action.CORDON_NODE:
        await actions.cordon(effect.node)
        return f"node {effect.node} cordoned"
    if action is pol.Action.DRAIN_NODE:
        return (await actions.drain(effect.node)).describe(effect.node)
    if action is pol.Action.SCALE_UP:
        await actions.scale(namespace, name, int(effect.value))
        return f"scaled to {effect.value} replicas"
    if action is pol.Action.RAISE_MEMORY_LIMIT:
        await actions.set_memory_limit(namespace, name, effect.container, effect.value)
        return f"memory limit of {effect.container} raised to {effect.value}"
    await actions.rollback(namespace, name, effect.value)
    return f"rollback to the stable revision requested (abort/{effect.value})"


def _target(text: str) -> appr.Target:
    kind, _, rest = text.partition("/")
    if kind == "Node":
        return appr.Target(kind, "", rest)
    namespace, _, name = rest.partition("/")
    return appr.Target(kind, namespace, name)


async def _ask(memo: Any, loop: Loop, body: Mapping[str, Any], effect: rem.AskApproval, now: float) -> None:
    gate: ports.ApprovalGate | None = memo.get("approval_gate")
    key = (body["metadata"]["uid"], effect.incident)
    if gate is None:
        if key not in loop.approvals:
            _event(
                body, "Warning", "ApprovalUnavailable", f"{effect.message}: no approval gate is configured"
            )
        loop.approvals[key] = pol.ApprovalState(pol.ApprovalVerdict.PENDING)
        return
    rule = effect.rule
    settings = (body.get("spec") or {}).get("approvals") or {}
    slack = settings.get("slack") or {}
    approvers = pol.narrowed(rule.approvers, settings)
    request = appr.Request(
        action=effect.request.action.value,
        target=_target(effect.request.target),
        cause=effect.request.cause,
        service=effect.request.service,
        requester=REQUESTER,
        risk=appr.Risk(rule.risk.value),
        quorum=rule.quorum,
        approvers=appr.Approvers(
            slack=approvers.slack_users,
            users=approvers.kube_users,
            groups=approvers.kube_groups,
            slack_groups=approvers.slack_groups,
        ),
        expires_at=now + pol.approval_timeout(rule, settings),
        channel=str(slack.get("channel") or ""),
        evidence={"symptom": effect.message[:500]},
        incident=effect.occurrence,
    )
    try:
        ticket = await gate.request(body["metadata"]["namespace"], request)
    except ports.Unavailable as exc:
        logger.warning(f"approval gate unavailable: {exc}")
        return  # stays pending: never executed without an answer
    first = key not in loop.tickets
    loop.tickets[key] = ticket
    deciders: frozenset[str] = frozenset()
    if ticket.phase is appr.Phase.APPROVED:
        # Belt and braces: the gate enforced the quorum; the policy checks the recorded deciders
        # again before anything runs.
        actions: ports.HealingActions = memo["healing_actions"]
        stored = await actions.approval(ticket.namespace, ticket.name)
        decided = appr.State.from_storage((stored or {}).get("status"))
        deciders = frozenset(str(d.identity) for d in decided.decisions if d.verdict is appr.Verdict.APPROVE)
    verdict = _APPROVAL_VERDICTS[ticket.phase]
    loop.approvals[key] = pol.ApprovalState(verdict, deciders, REQUESTER, effect.occurrence)
    if first:
        _event(
            body,
            "Normal",
            "ApprovalRequested",
            f"{request.action} on {request.target} needs approval: Approval {ticket.namespace}/{ticket.name}",
        )


async def _record_outcome(
    memo: Any, loop: Loop, key: tuple[str, str], result: appr.ActionResult, message: str
) -> None:
    gate: ports.ApprovalGate | None = memo.get("approval_gate")
    ticket = loop.tickets.pop(key, None)
    loop.approvals.pop(key, None)
    if gate is None or ticket is None:
        return
    try:
        await gate.record_outcome(ticket, result, message)
    except ports.Unavailable as exc:
        logger.warning(f"could not record the outcome on Approval {ticket.namespace}/{ticket.name}: {exc}")


async def _record_resumed(memo: Any, body: Mapping[str, Any], effect: rem.Execute, done: str) -> None:
    """Record a resumed action's outcome on the Approval it ran under, if it needed one."""
    gate: ports.ApprovalGate | None = memo.get("approval_gate")
    if gate is None or not effect.occurrence:
        return
    namespace = body["metadata"]["namespace"]
    target = _target(effect.target)
    action = effect.action.value
    try:
        ticket = await gate.find(namespace, action, target, effect.cause.value, effect.occurrence)
        if ticket is not None and ticket.phase is appr.Phase.APPROVED:
            message = f"resumed after an operator restart: {done}"
            await gate.record_outcome(ticket, appr.ActionResult.SUCCEEDED, message)
    except (ports.Unavailable, ports.Rejected) as exc:
        logger.warning(f"could not record the outcome of resumed {action} on {effect.target}: {exc}")


async def _notify(memo: Any, body: Mapping[str, Any], effect: rem.Escalate) -> None:
    runtime = rs._runtime(memo)
    if runtime.notifier is None:
        return
    meta = body["metadata"]
    note = ports.Notification(
        namespace=meta["namespace"],
        service=meta["name"],
        kind="RemediationEscalated",
        severity="warning",
        title=f"{meta['namespace']}/{meta['name']}: {effect.cause.value} needs a human",
        message=effect.message,
        key=f"{meta['uid']}/{effect.incident}/{effect.reason}",
    )
    try:
        await runtime.notifier.notify(note)
    except ports.Unavailable as exc:
        logger.warning(f"could not notify about {effect.incident}: {exc}")
