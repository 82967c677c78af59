"""Progressive delivery in Kubernetes terms: what the cluster shows the rollout machine, and
which objects carry out its decisions.

``core.rollout`` decides in tracks, weights and revisions; this module translates both ways, so
the handler stays a loop of "observe, plan, apply" and the translation is tested without a
cluster. Every decision is recomputed from the watch cache and ``status.rollout`` on each call:
the plan names the objects that differ from what the decision needs, which makes re-running it
after a crash harmless (level-based, ADR 0004).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from homeostat.core import analysis as an
from homeostat.core import children as kids
from homeostat.core import reconcile as rec
from homeostat.core import rollout as ro
from homeostat.core import spec as specs

ANNOTATION_COMMAND = f"{kids.GROUP}/rollout-command"
TRACK_CANARY = ro.Track.CANARY.value
PREVIEW_SUFFIX = "-preview"
_KEEP_REVISIONS = 10  # ControllerRevisions kept besides the ones in use, like revisionHistoryLimit


@dataclasses.dataclass(frozen=True)
class World:
    """What the watch cache shows of one service's children, each None when absent."""

    stable: Mapping[str, Any] | None = None
    canary: Mapping[str, Any] | None = None
    services: Mapping[str, Mapping[str, Any] | None] = dataclasses.field(default_factory=dict)
    pdb: Mapping[str, Any] | None = None
    route: Mapping[str, Any] | None = None  # the HTTPRoute named by the spec (GatewayAPI)
    revisions: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)  # by revision
    # The last view of each track taken while its controller had caught up, by Deployment name.
    settled: Mapping[str, ro.TrackView] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Measured:
    """The result of the latest RunAnalysis, as the handler collected it."""

    revision: str
    at: float
    measurements: tuple[an.Measurement, ...]


@dataclasses.dataclass(frozen=True)
class RoutePatch:
    """A JSON patch of the user's HTTPRoute: only the weights of our two backends change."""

    name: str
    operations: tuple[Mapping[str, Any], ...]


@dataclasses.dataclass(frozen=True)
class Plan:
    state: ro.RolloutState
    applies: tuple[rec.Apply, ...]
    deletes: tuple[kids.ChildRef, ...]
    route: RoutePatch | None
    analysis: ro.RunAnalysis | None
    notifications: tuple[ro.Notify, ...]
    events: tuple[ro.PostEvent, ...]
    condition: ro.SetCondition
    view: rec.DeploymentView  # how the service as a whole serves, for Ready and Progressing
    status: Mapping[str, Any]  # status keys the rollout owns
    problems: tuple[str, ...]  # why some object could not be planned (the rollout waits)


# --- commands --------------------------------------------------------------------------------


def parse_command(annotations: Mapping[str, str] | None) -> ro.Command | None:
    """The rollout command in the service's annotation, ``<kind>/<id>``; None if absent.

    One annotation keeps only the latest command; the machine remembers applied ids, so a
    command is carried out once however often it is seen. A malformed value raises
    ``SpecError`` so it is reported, not silently ignored.
    """
    raw = (annotations or {}).get(ANNOTATION_COMMAND)
    if not raw:
        return None
    kind, sep, ident = raw.partition("/")
    kinds = ", ".join(k.value for k in ro.CommandKind)
    if not sep or not ident:
        raise specs.SpecError(
            f"metadata.annotations[{ANNOTATION_COMMAND}]", f"{raw!r} is not <command>/<id> ({kinds})"
        )
    try:
        return ro.Command(ident, ro.CommandKind(kind))
    except ValueError:
        raise specs.SpecError(
            f"metadata.annotations[{ANNOTATION_COMMAND}]", f"unknown command {kind!r}; one of {kinds}"
        ) from None


# --- observations ----------------------------------------------------------------------------


def caught_up(deployment: Mapping[str, Any]) -> bool:
    """Whether the Deployment controller has seen our latest write, so its counts describe it."""
    meta = deployment.get("metadata") or {}
    status = deployment.get("status") or {}
    return int(status.get("observedGeneration", 0)) >= int(meta.get("generation", 0))


def track_view(deployment: Mapping[str, Any] | None, settled: ro.TrackView | None = None) -> ro.TrackView:
    """A track as the rollout machine sees it: ready counts only pods of the track's revision.

    ``settled`` is the last view taken while the controller had caught up. Until it catches up
    with a newer write its counts describe an older spec: after a mere scale (same revision) the
    pods known ready stay ready, otherwise none of them count. Capacity is never overstated,
    and a step's scale-up does not look like a sudden loss of the pods already serving.
    """
    if deployment is None:
        return ro.TrackView()
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    wanted = int(spec.get("replicas", 0))
    revision = (meta.get("annotations") or {}).get(kids.ANNOTATION_REVISION)
    ready = 0
    if caught_up(deployment):
        # While the Deployment rolls, old pods may still be among the ready ones; count the
        # worst case.
        # Available, not just ready: with minReadySeconds a pod that crashes soon after
        # starting never counts.
        old = max(0, int(status.get("replicas", 0)) - int(status.get("updatedReplicas", 0)))
        usable = min(int(status.get("readyReplicas", 0)), int(status.get("availableReplicas", 0)))
        ready = max(0, min(usable - old, wanted))
    elif settled is not None and settled.revision == revision:
        ready = min(settled.ready, wanted)
    return ro.TrackView(revision=revision, replicas=wanted, ready=ready)


def settled_views(owner: kids.Owner, world: World) -> dict[str, ro.TrackView]:
    """The tracks whose controllers have caught up, to remember for the next observation."""
    views = dict(world.settled)
    for track, deployment in ((kids.TRACK_STABLE, world.stable), (TRACK_CANARY, world.canary)):
        name = kids.track_name(owner, track)
        if deployment is None:
            views.pop(name, None)
        elif caught_up(deployment):
            views[name] = track_view(deployment)
    return views


def route_weight(route: Mapping[str, Any] | None, owner: kids.Owner) -> int | None:
    """The canary's share of the HTTPRoute's backends of this service, in percent."""
    if route is None:
        return None
    stable_name, canary_name = _backend_names(owner)
    stable = canary = 0
    for rule in (route.get("spec") or {}).get("rules") or []:
        for ref in rule.get("backendRefs") or []:
            weight = int(ref.get("weight", 1))
            if ref.get("name") == canary_name:
                canary += weight
            elif ref.get("name") == stable_name:
                stable += weight
    total = stable + canary
    return round(100 * canary / total) if total else 0


def _backend_names(owner: kids.Owner) -> tuple[str, str]:
    return f"{owner.name}-stable", f"{owner.name}-{TRACK_CANARY}"


def active_revision(world: World, owner: kids.Owner, recorded: str | None) -> str | None:
    """The revision blue-green traffic goes to: the Service's selector, else what we recorded."""
    service = world.services.get(owner.name)
    if service is not None:
        selected = ((service.get("spec") or {}).get("selector") or {}).get(kids.LABEL_REVISION)
        if selected:
            return str(selected)
    return recorded


def observe(
    owner: kids.Owner,
    spec: specs.ServiceSpec,
    world: World,
    *,
    recorded_active: str | None,
    measured: Measured | None,
    analysis_available: bool,
    command: ro.Command | None,
) -> ro.Observations:
    return ro.Observations(
        desired_revision=kids.revision(spec.template),
        total=spec.replicas.effective,
        stable=track_view(world.stable, world.settled.get(kids.track_name(owner, kids.TRACK_STABLE))),
        canary=track_view(world.canary, world.settled.get(kids.track_name(owner, TRACK_CANARY))),
        route_weight=route_weight(world.route, owner),
        active_revision=active_revision(world, owner, recorded_active),
        analysis_available=analysis_available,
        measurements=() if measured is None else measured.measurements,
        measured_at=None if measured is None else measured.at,
        measured_revision=None if measured is None else measured.revision,
        commands=() if command is None else (command,),
    )


# --- planning --------------------------------------------------------------------------------


def template_of(revision: str, spec: specs.ServiceSpec, world: World) -> Mapping[str, Any] | None:
    """The pod template of ``revision``: the spec's, a kept ControllerRevision's, or the one a
    track runs (services created before revisions were kept)."""
    if kids.revision(spec.template) == revision:
        return spec.template
    kept = world.revisions.get(revision)
    if kept is not None:
        template = (kept.get("data") or {}).get("template")
        if isinstance(template, Mapping) and kids.revision(template) == revision:
            return template
    for deployment in (world.stable, world.canary):
        if (
            deployment is not None
            and (deployment.get("metadata") or {}).get("annotations", {}).get(kids.ANNOTATION_REVISION)
            == revision
        ):
            return _user_template(deployment)
    return None


def _user_template(deployment: Mapping[str, Any]) -> Mapping[str, Any]:
    """A Deployment's pod template as the user wrote it: our own labels taken off again."""
    pod = ((deployment.get("spec") or {}).get("template")) or {}
    meta = pod.get("metadata") or {}
    ours = {kids.LABEL_SERVICE, kids.LABEL_TRACK, kids.LABEL_REVISION}
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in ours}
    user_meta: dict[str, Any] = {}
    if labels:
        user_meta["labels"] = labels
    if meta.get("annotations"):
        user_meta["annotations"] = dict(meta["annotations"])
    template: dict[str, Any] = {"spec": pod.get("spec") or {}}
    if user_meta:
        template = {"metadata": user_meta, **template}
    return template


def plan(
    owner: kids.Owner,
    spec: specs.ServiceSpec,
    rollout_spec: ro.RolloutSpec,
    *,
    state: ro.RolloutState,
    world: World,
    obs: ro.Observations,
    now: float,
) -> Plan:
    """One rollout step, and the objects, route weights and queries that carry it out."""
    new_state, actions = ro.step(state, rollout_spec, obs, now)
    problems: list[str] = []
    tracks: dict[ro.Track, tuple[str, int] | None] = {
        ro.Track.STABLE: _running(obs.stable),
        ro.Track.CANARY: _running(obs.canary),
    }
    active = obs.active_revision or new_state.stable_revision
    route: RoutePatch | None = None
    analysis: ro.RunAnalysis | None = None
    for action in actions:
        if isinstance(action, ro.ScaleTrack):
            tracks[action.track] = (action.revision, action.replicas)
        elif isinstance(action, ro.DeleteTrack):
            tracks[action.track] = None
        elif isinstance(action, ro.SwitchActiveService):
            active = action.revision
        elif isinstance(action, ro.SetTrafficWeight):
            route = _route_patch(world.route, owner, rollout_spec, action.canary_weight)
            if route is None:
                problems.append(f"HTTPRoute {rollout_spec.traffic.http_route} has no backends to weigh")
        elif isinstance(action, ro.RunAnalysis):
            analysis = action

    applies, deletes = _children(
        owner, spec, rollout_spec, world=world, tracks=tracks, active=active, problems=problems
    )
    in_use = {obs.desired_revision, new_state.stable_revision, new_state.revision}
    deletes.extend(_pruned_revisions(owner, world, in_use))

    notifications = tuple(a for a in actions if isinstance(a, ro.Notify))
    events = tuple(a for a in actions if isinstance(a, ro.PostEvent))
    condition = next(a for a in actions if isinstance(a, ro.SetCondition))
    status: dict[str, Any] = {
        "rollout": new_state.as_in_storage(),
        "canary": ro.canary_status(new_state, rollout_spec),
        "activeRevision": active if rollout_spec.strategy is specs.Strategy.BLUE_GREEN else None,
    }
    return Plan(
        state=new_state,
        applies=applies,
        deletes=tuple(deletes),
        route=route,
        analysis=analysis,
        notifications=notifications,
        events=events,
        condition=condition,
        view=_view(new_state, obs),
        status=status,
        problems=tuple(problems),
    )


def _children(
    owner: kids.Owner,
    spec: specs.ServiceSpec,
    rollout_spec: ro.RolloutSpec,
    *,
    world: World,
    tracks: Mapping[ro.Track, tuple[str, int] | None],
    active: str | None,
    problems: list[str],
) -> tuple[tuple[rec.Apply, ...], list[kids.ChildRef]]:
    """Applies and deletions that make the children match the tracks and the active revision."""
    wanted: list[dict[str, Any]] = []
    current: dict[kids.ChildRef, Mapping[str, Any] | None] = {}
    deletes: list[kids.ChildRef] = []
    for track, deployment in ((ro.Track.STABLE, world.stable), (ro.Track.CANARY, world.canary)):
        ref = kids.ChildRef("apps/v1", "Deployment", owner.namespace, kids.track_name(owner, track.value))
        target = tracks[track]
        if target is None:
            if deployment is not None:
                deletes.append(ref)
            continue
        revision, replicas = target
        template = template_of(revision, spec, world)
        if template is None:
            problems.append(f"the pod template of revision {revision} is no longer known")
            continue
        wanted.append(kids.deployment(owner, spec, track.value, template=template, replicas=replicas))
        current[ref] = deployment
    wanted.extend(_services(owner, spec, rollout_spec, active))
    wanted.append(kids.disruption_budget(owner, spec))
    if kids.revision(spec.template) not in world.revisions:
        numbers = [int(r.get("revision", 0)) for r in world.revisions.values()]
        wanted.append(kids.controller_revision(owner, spec.template, max(numbers, default=0) + 1))
    for manifest in wanted:
        ref = kids.ChildRef.of(manifest)
        if manifest["kind"] == "Service":
            current[ref] = world.services.get(ref.name)
        elif manifest["kind"] == "PodDisruptionBudget":
            current[ref] = world.pdb
    deletes.extend(_stale_services(owner, spec, rollout_spec, world))
    return rec.plan_manifests(wanted, current), deletes


def _running(view: ro.TrackView) -> tuple[str, int] | None:
    return None if view.revision is None else (view.revision, view.replicas)


def _services(
    owner: kids.Owner, spec: specs.ServiceSpec, rollout_spec: ro.RolloutSpec, active: str | None
) -> list[dict[str, Any]]:
    if not spec.ports:
        return []
    if rollout_spec.strategy is specs.Strategy.BLUE_GREEN:
        # The Service follows one revision; the preview Service always shows the canary track.
        selector = {kids.LABEL_REVISION: active} if active else {}
        return [
            kids.service(owner, spec, extra_selector=selector),
            kids.service(
                owner, spec, name=owner.name + PREVIEW_SUFFIX, extra_selector={kids.LABEL_TRACK: TRACK_CANARY}
            ),
        ]
    services = [kids.service(owner, spec)]
    if rollout_spec.traffic.type is ro.Routing.GATEWAY_API:
        stable_name, canary_name = _backend_names(owner)
        services.append(
            kids.service(owner, spec, name=stable_name, extra_selector={kids.LABEL_TRACK: kids.TRACK_STABLE})
        )
        services.append(
            kids.service(owner, spec, name=canary_name, extra_selector={kids.LABEL_TRACK: TRACK_CANARY})
        )
    return services


def _stale_services(
    owner: kids.Owner, spec: specs.ServiceSpec, rollout_spec: ro.RolloutSpec, world: World
) -> list[kids.ChildRef]:
    wanted = {m["metadata"]["name"] for m in _services(owner, spec, rollout_spec, None)}
    return [
        kids.ChildRef("v1", "Service", owner.namespace, name)
        for name, body in sorted(world.services.items())
        if body is not None and name not in wanted
    ]


def _pruned_revisions(owner: kids.Owner, world: World, in_use: set[str | None]) -> list[kids.ChildRef]:
    spare = sorted(
        (r for r in world.revisions if r not in in_use),
        key=lambda r: int(world.revisions[r].get("revision", 0)),
        reverse=True,
    )
    return [
        kids.ChildRef("apps/v1", "ControllerRevision", owner.namespace, f"{owner.name}-{r}")
        for r in spare[_KEEP_REVISIONS:]
    ]


def _route_patch(
    route: Mapping[str, Any] | None, owner: kids.Owner, rollout_spec: ro.RolloutSpec, canary_weight: int
) -> RoutePatch | None:
    if route is None or rollout_spec.traffic.http_route is None:
        return None
    stable_name, canary_name = _backend_names(owner)
    weights = {stable_name: 100 - canary_weight, canary_name: canary_weight}
    operations: list[Mapping[str, Any]] = []
    found = set()
    for i, rule in enumerate((route.get("spec") or {}).get("rules") or []):
        for j, ref in enumerate(rule.get("backendRefs") or []):
            name = ref.get("name")
            if name in weights:
                found.add(name)
                operations.append(
                    {"op": "add", "path": f"/spec/rules/{i}/backendRefs/{j}/weight", "value": weights[name]}
                )
    if found != set(weights):
        return None
    return RoutePatch(rollout_spec.traffic.http_route, tuple(operations))


def _view(state: ro.RolloutState, obs: ro.Observations) -> rec.DeploymentView:
    """The service as one workload: serving once its tracks together run the full count."""
    replicas = obs.stable.replicas + obs.canary.replicas
    ready = obs.stable.ready + obs.canary.ready
    settled = state.phase in ro.TERMINAL and obs.canary.revision is None
    revision = state.stable_revision if settled else state.revision
    serving = settled and obs.stable.revision == state.stable_revision and obs.stable.ready >= obs.total
    updated = obs.stable.replicas if settled and obs.stable.revision == obs.desired_revision else 0
    return rec.DeploymentView(
        replicas=replicas,
        ready=ready,
        updated=updated,
        revision=revision,
        serving=serving or (state.phase in ro.LIVE and ready >= obs.total),
    )


def status_phase(state: ro.RolloutState) -> str | None:
    """``status.phase`` when the rollout decides it; a rolled-back revision leaves the service
    Degraded until a new template arrives."""
    if state.phase is ro.RolloutPhase.ROLLED_BACK:
        return rec.ServicePhase.DEGRADED.value
    return ro.status_phase(state)


def revisions_by_name(bodies: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """ControllerRevisions of one service keyed by the revision hash they keep."""
    kept: dict[str, Mapping[str, Any]] = {}
    for body in bodies:
        rev = ((body.get("metadata") or {}).get("labels") or {}).get(kids.LABEL_REVISION)
        if rev:
            kept[str(rev)] = body
    return kept


# --- rolling updates -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RollingPlan:
    """What a RollingUpdate service deploys: its spec, or the stable revision after an abort."""

    spec: specs.ServiceSpec  # the spec to build children from (its template may be the stable one)
    rollback: Mapping[str, Any] | None  # ``status.rollback``: the revision held back, and why
    event: ro.PostEvent | None
    degraded_by: tuple[str, str] | None
    keep_revision: Mapping[str, Any] | None  # a ControllerRevision to create for the spec's template


def rolling_update(
    spec: specs.ServiceSpec,
    *,
    stable_revision: str | None,
    rollback: Mapping[str, Any] | None,
    command: ro.Command | None,
    world: World,
    owner: kids.Owner,
    now: float,
) -> RollingPlan:
    """A RollingUpdate service has no steps to walk, but it can still be rolled back.

    An ``abort`` command (from a human or from self-healing) while the spec's revision is not
    the stable one deploys the stable revision's kept template instead, and keeps doing so
    until the template changes: the failed template stays in the spec for people to read, and a
    new template starts a new rollout.
    """
    desired = kids.revision(spec.template)
    applied = (rollback or {}).get("command")
    # The annotation outlives the rollback it asked for: the applied id is remembered even after
    # a new template ends the hold, or the same abort would hit the next revision too.
    held: dict[str, Any] | None = {"command": applied} if applied else None
    if rollback and rollback.get("revision") == desired:
        held = dict(rollback)
    event: ro.PostEvent | None = None
    if command is not None and applied != command.id:
        refusal = None
        if command.kind is not ro.CommandKind.ABORT:
            refusal = "a RollingUpdate service only takes abort"
        elif desired == stable_revision or stable_revision is None:
            refusal = "no revision newer than the stable one is being rolled out"
        elif template_of(stable_revision, spec, world) is None:
            refusal = f"the pod template of stable revision {stable_revision} is no longer known"
        if refusal is None:
            held = {"revision": desired, "stableRevision": stable_revision, "command": command.id, "at": now}
            text = f"revision {desired} rolled back to {stable_revision} by abort ({command.id})"
            event = ro.PostEvent("Warning", "RolledBack", text)
        else:
            event = ro.PostEvent(
                "Warning", "CommandIgnored", f"{command.kind.value} ({command.id}) ignored: {refusal}"
            )
            # Remember the id so the refusal is reported once, not on every reconcile.
            held = {**(held or {}), "command": command.id}
    deploy = spec
    degraded_by = None
    if held and held.get("revision") == desired:
        template = template_of(str(held["stableRevision"]), spec, world)
        if template is not None:
            deploy = dataclasses.replace(spec, template=template)
            degraded_by = (
                rec.ApplyReason.ROLLED_BACK.value,
                f"revision {desired} was rolled back to {held['stableRevision']}; "
                "change the template to roll out again",
            )
    keep = None
    if desired not in world.revisions:
        numbers = [int(r.get("revision", 0)) for r in world.revisions.values()]
        keep = kids.controller_revision(owner, spec.template, max(numbers, default=0) + 1)
    return RollingPlan(deploy, held, event, degraded_by, keep)
