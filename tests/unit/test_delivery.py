"""The translation between the rollout machine and Kubernetes objects, without a cluster.

State and a snapshot of the children go in; the objects to apply or delete, the route patch and
the status come out (Scenario-style, as in test_rollout.py).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from homeostat.core import children as kids
from homeostat.core import delivery as dl
from homeostat.core import reconcile as rec
from homeostat.core import rollout as ro
from homeostat.core import spec as specs

OWNER = kids.Owner("web", "shop", "uid-1")
FRESH = ro.RolloutState()
T0 = 1_000_000.0


def template(image: str) -> dict[str, Any]:
    return {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": image}]}}


OLD, NEW = template("web:1"), template("web:2")
REV_OLD, REV_NEW = kids.revision(OLD), kids.revision(NEW)


def service_spec(tpl: dict[str, Any], desired: int = 4, ports: bool = True) -> specs.ServiceSpec:
    raw: dict[str, Any] = {"template": tpl, "replicas": {"min": 1, "max": 10, "desired": desired}}
    if ports:
        raw["ports"] = [{"name": "http", "port": 80, "targetPort": 8080}]
    return specs.parse(raw)


CANARY = ro.parse_rollout_spec(
    {
        "strategy": "Canary",
        "canary": {"steps": [{"weight": 25, "pause": "10s"}, {"weight": 50, "pause": "10s"}]},
    }
)
BLUE_GREEN = ro.parse_rollout_spec({"strategy": "BlueGreen", "blueGreen": {"scaleDownDelay": "30s"}})
GATEWAY = ro.parse_rollout_spec(
    {
        "strategy": "Canary",
        "canary": {"steps": [{"weight": 20, "pause": "10s"}]},
        "trafficRouting": {"type": "GatewayAPI", "gatewayAPI": {"httpRoute": "web-route"}},
    }
)


def stored(manifest: dict[str, Any], ready: int | None = None) -> dict[str, Any]:
    """``manifest`` as the watch cache would show it once its controller caught up."""
    body = copy.deepcopy(manifest)
    body["metadata"]["generation"] = 1
    replicas = body.get("spec", {}).get("replicas", 0)
    ready = replicas if ready is None else ready
    body["status"] = {
        "observedGeneration": 1,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": ready,
        "availableReplicas": ready,
    }
    return body


def stable_world(spec_tpl: dict[str, Any] = OLD, replicas: int = 4, keep: bool = True) -> dl.World:
    spec = service_spec(spec_tpl, replicas)
    revisions = {}
    if keep:
        revisions[kids.revision(spec_tpl)] = kids.controller_revision(OWNER, spec_tpl, 1)
    return dl.World(
        stable=stored(kids.deployment(OWNER, spec, template=spec_tpl, replicas=replicas)),
        services={"web": stored(kids.service(OWNER, spec))},
        pdb=stored(kids.disruption_budget(OWNER, spec)),
        revisions=revisions,
    )


def run(
    spec: specs.ServiceSpec,
    rollout_spec: ro.RolloutSpec,
    world: dl.World,
    *,
    state: ro.RolloutState = FRESH,
    now: float = T0,
    command: ro.Command | None = None,
) -> dl.Plan:
    obs = dl.observe(
        OWNER, spec, world, recorded_active=None, measured=None, analysis_available=True, command=command
    )
    return dl.plan(OWNER, spec, rollout_spec, state=state, world=world, obs=obs, now=now)


def applied(plan: dl.Plan) -> dict[str, dict[str, Any]]:
    return {f"{a.ref.kind}/{a.ref.name}": dict(a.manifest) for a in plan.applies}


PROMOTED = ro.RolloutState(phase=ro.RolloutPhase.PROMOTED, stable_revision=REV_OLD, revision=REV_OLD)


# --- commands --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("pause/1", ro.Command("1", ro.CommandKind.PAUSE)),
        ("promote-full/abc-2", ro.Command("abc-2", ro.CommandKind.PROMOTE_FULL)),
        ("abort/x", ro.Command("x", ro.CommandKind.ABORT)),
    ],
)
def test_commands_are_read_from_the_annotation(value: str | None, expected: ro.Command | None) -> None:
    annotations = {} if value is None else {dl.ANNOTATION_COMMAND: value}
    assert dl.parse_command(annotations) == expected


@pytest.mark.parametrize("value", ["pause", "pause/", "explode/1", "/1"])
def test_malformed_commands_name_the_annotation(value: str) -> None:
    with pytest.raises(specs.SpecError) as err:
        dl.parse_command({dl.ANNOTATION_COMMAND: value})
    assert dl.ANNOTATION_COMMAND in err.value.field


# --- observations ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "generation", "expected_ready"),
    [
        (
            {
                "observedGeneration": 1,
                "replicas": 4,
                "updatedReplicas": 4,
                "readyReplicas": 4,
                "availableReplicas": 4,
            },
            1,
            4,
        ),
        (
            {
                "observedGeneration": 1,
                "replicas": 4,
                "updatedReplicas": 4,
                "readyReplicas": 2,
                "availableReplicas": 2,
            },
            1,
            2,
        ),
        # Ready but not yet available (minReadySeconds): not counted.
        (
            {
                "observedGeneration": 1,
                "replicas": 4,
                "updatedReplicas": 4,
                "readyReplicas": 4,
                "availableReplicas": 1,
            },
            1,
            1,
        ),
        # Rolling: two old pods may be among the four ready ones.
        (
            {
                "observedGeneration": 2,
                "replicas": 5,
                "updatedReplicas": 3,
                "readyReplicas": 4,
                "availableReplicas": 4,
            },
            2,
            2,
        ),
        # The controller has not seen the latest spec: its counts say nothing about it.
        (
            {
                "observedGeneration": 1,
                "replicas": 4,
                "updatedReplicas": 4,
                "readyReplicas": 4,
                "availableReplicas": 4,
            },
            2,
            0,
        ),
    ],
)
def test_track_view_counts_only_pods_of_the_track_revision(
    status: dict[str, int], generation: int, expected_ready: int
) -> None:
    body = kids.deployment(OWNER, service_spec(OLD))
    body["metadata"]["generation"] = generation
    body["status"] = status
    view = dl.track_view(body)
    assert (view.revision, view.replicas, view.ready) == (REV_OLD, 4, expected_ready)


@pytest.mark.parametrize(
    ("settled", "expected_ready"),
    [
        (None, 0),  # nothing known: no pod counts until the controller catches up
        (ro.TrackView(REV_OLD, 1, 1), 1),  # a scale from 1: the ready pod stays ready
        (ro.TrackView(REV_NEW, 1, 1), 0),  # the template changed: the ready pod is of another revision
    ],
)
def test_a_lagging_controller_keeps_the_pods_known_ready_only_after_a_scale(
    settled: ro.TrackView | None, expected_ready: int
) -> None:
    body = kids.deployment(OWNER, service_spec(OLD), replicas=3)
    body["metadata"]["generation"] = 2
    body["status"] = {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1}
    assert dl.track_view(body, settled).ready == expected_ready


def test_settled_views_remember_caught_up_tracks_and_forget_deleted_ones() -> None:
    world = stable_world()
    views = dl.settled_views(
        OWNER, dataclass_replace(world, settled={"web-canary": ro.TrackView(REV_NEW, 1, 1)})
    )
    assert views == {"web": ro.TrackView(REV_OLD, 4, 4)}


def test_absent_track() -> None:
    assert dl.track_view(None) == ro.TrackView()


def _route(stable: int, canary: int) -> dict[str, Any]:
    return {
        "spec": {
            "rules": [
                {
                    "backendRefs": [
                        {"name": "web-stable", "port": 80, "weight": stable},
                        {"name": "web-canary", "port": 80, "weight": canary},
                    ]
                }
            ]
        }
    }


@pytest.mark.parametrize(("stable", "canary", "weight"), [(100, 0, 0), (80, 20, 20), (1, 1, 50), (0, 0, 0)])
def test_route_weight(stable: int, canary: int, weight: int) -> None:
    assert dl.route_weight(_route(stable, canary), OWNER) == weight


# --- plans -----------------------------------------------------------------------------------


def test_first_deployment_creates_stable_service_budget_and_keeps_the_template() -> None:
    spec = service_spec(OLD)
    plan = run(spec, CANARY, dl.World())
    made = applied(plan)
    assert set(made) == {
        "Deployment/web",
        "Service/web",
        "PodDisruptionBudget/web",
        f"ControllerRevision/web-{REV_OLD}",
    }
    assert made["Deployment/web"]["spec"]["replicas"] == 4
    assert made[f"ControllerRevision/web-{REV_OLD}"]["data"]["template"] == OLD
    assert plan.state.phase is ro.RolloutPhase.INITIALIZING


def test_steady_state_plans_nothing() -> None:
    plan = run(service_spec(OLD), CANARY, stable_world(), state=PROMOTED)
    assert plan.applies == ()
    assert plan.deletes == ()
    assert plan.view.serving


def test_new_template_starts_a_canary_next_to_the_kept_stable_template() -> None:
    world = stable_world()
    plan = run(service_spec(NEW), CANARY, world, state=PROMOTED)
    made = applied(plan)
    canary = made["Deployment/web-canary"]
    assert canary["spec"]["replicas"] == 1  # ceil(4 * 25%)
    assert canary["spec"]["template"]["spec"]["containers"][0]["image"] == "web:2"
    assert canary["spec"]["template"]["metadata"]["labels"][kids.LABEL_TRACK] == "canary"
    assert f"ControllerRevision/web-{REV_NEW}" in made
    # Stable keeps its own template and its full size until canary pods are ready.
    assert "Deployment/web" not in made
    assert plan.state.phase is ro.RolloutPhase.PROGRESSING
    assert plan.status["canary"] == {"weight": 0, "step": 0, "phase": "Progressing"}


def test_stable_is_rebuilt_from_the_kept_template_after_it_was_deleted() -> None:
    world = dataclass_replace(stable_world(), stable=None)
    state = ro.RolloutState(
        phase=ro.RolloutPhase.PROGRESSING, stable_revision=REV_OLD, revision=REV_NEW, started_at=T0, weight=25
    )
    plan = run(service_spec(NEW), CANARY, world, state=state, now=T0 + 1)
    stable = applied(plan)["Deployment/web"]
    assert stable["spec"]["template"]["spec"]["containers"][0]["image"] == "web:1"
    assert stable["metadata"]["annotations"][kids.ANNOTATION_REVISION] == REV_OLD


def test_a_revision_whose_template_is_lost_is_reported_not_guessed() -> None:
    world = dataclass_replace(stable_world(keep=False), stable=None)
    state = ro.RolloutState(
        phase=ro.RolloutPhase.PROGRESSING, stable_revision=REV_OLD, revision=REV_NEW, started_at=T0, weight=25
    )
    plan = run(service_spec(NEW), CANARY, world, state=state, now=T0 + 1)
    assert "Deployment/web" not in applied(plan)
    assert plan.problems == (f"the pod template of revision {REV_OLD} is no longer known",)


def test_stable_template_falls_back_to_the_running_deployment() -> None:
    world = stable_world(keep=False)
    spec = service_spec(NEW)
    assert dl.template_of(REV_OLD, spec, world) == OLD


def test_abort_command_brings_traffic_home_and_deletes_the_canary() -> None:
    spec = service_spec(NEW)
    world = stable_world()
    canary = stored(kids.deployment(OWNER, spec, "canary", template=NEW, replicas=1))
    world = dataclass_replace(world, canary=canary)
    state = ro.RolloutState(
        phase=ro.RolloutPhase.PROGRESSING,
        stable_revision=REV_OLD,
        revision=REV_NEW,
        started_at=T0,
        weight=25,
        step_reached_at=T0 + 1,
    )
    plan = run(spec, CANARY, world, state=state, now=T0 + 2, command=ro.Command("c1", ro.CommandKind.ABORT))
    assert plan.deletes == (kids.ChildRef("apps/v1", "Deployment", "shop", "web-canary"),)
    assert plan.state.phase is ro.RolloutPhase.ABORTED
    assert [e.reason for e in plan.events] == ["RollingBack", "CommandApplied", "Aborted"]


def test_blue_green_first_points_the_service_at_stable() -> None:
    plan = run(service_spec(NEW), BLUE_GREEN, stable_world(), state=PROMOTED)
    made = applied(plan)
    assert made["Service/web"]["spec"]["selector"][kids.LABEL_REVISION] == REV_OLD
    assert "Deployment/web-canary" not in made  # no preview before traffic is pinned to stable


def test_blue_green_services_select_the_active_revision_and_the_preview_track() -> None:
    spec = service_spec(NEW)
    active = stored(kids.service(OWNER, spec, extra_selector={kids.LABEL_REVISION: REV_OLD}))
    world = dataclass_replace(stable_world(), services={"web": active})
    plan = run(spec, BLUE_GREEN, world, state=PROMOTED)
    made = applied(plan)
    assert "Service/web" not in made
    assert made["Service/web-preview"]["spec"]["selector"] == {
        kids.LABEL_SERVICE: "web",
        kids.LABEL_TRACK: "canary",
    }
    assert made["Deployment/web-canary"]["spec"]["replicas"] == 4  # the preview runs the full count
    assert plan.status["activeRevision"] == REV_OLD


def test_gateway_weights_patch_only_our_backends() -> None:
    spec = service_spec(NEW, desired=5)
    world = stable_world(replicas=5)
    canary = stored(kids.deployment(OWNER, spec, "canary", template=NEW, replicas=1))
    world = dataclass_replace(world, canary=canary, route=_route(100, 0))
    state = ro.RolloutState(
        phase=ro.RolloutPhase.PROGRESSING, stable_revision=REV_OLD, revision=REV_NEW, started_at=T0, weight=20
    )
    plan = run(spec, GATEWAY, world, state=state, now=T0 + 1)
    assert plan.route == dl.RoutePatch(
        "web-route",
        (
            {"op": "add", "path": "/spec/rules/0/backendRefs/0/weight", "value": 80},
            {"op": "add", "path": "/spec/rules/0/backendRefs/1/weight", "value": 20},
        ),
    )
    names = {a.ref.name for a in plan.applies if a.ref.kind == "Service"}
    assert names == {"web-stable", "web-canary"}


def test_a_route_without_our_backends_is_a_problem() -> None:
    spec = service_spec(NEW, desired=5)
    canary = stored(kids.deployment(OWNER, spec, "canary", template=NEW, replicas=1))
    world = dataclass_replace(stable_world(replicas=5), canary=canary, route={"spec": {"rules": [{}]}})
    state = ro.RolloutState(
        phase=ro.RolloutPhase.PROGRESSING, stable_revision=REV_OLD, revision=REV_NEW, started_at=T0, weight=20
    )
    plan = run(spec, GATEWAY, world, state=state, now=T0 + 1)
    assert plan.route is None
    assert plan.problems == ("HTTPRoute web-route has no backends to weigh",)


def test_old_revisions_are_pruned_but_the_ones_in_use_are_kept() -> None:
    world = stable_world()
    revisions = dict(world.revisions)
    for i in range(15):
        tpl = template(f"web:old-{i}")
        revisions[kids.revision(tpl)] = kids.controller_revision(OWNER, tpl, 2 + i)
    world = dataclass_replace(world, revisions=revisions)
    plan = run(service_spec(OLD), CANARY, world, state=PROMOTED)
    pruned = {ref.name for ref in plan.deletes}
    assert len(pruned) == 5  # 15 spare, 10 kept
    assert f"web-{REV_OLD}" not in pruned
    assert f"web-{kids.revision(template('web:old-0'))}" in pruned  # the oldest go first


def test_rolled_back_service_reports_degraded_phase() -> None:
    state = ro.RolloutState(phase=ro.RolloutPhase.ROLLED_BACK, stable_revision=REV_OLD, revision=REV_NEW)
    assert dl.status_phase(state) == rec.ServicePhase.DEGRADED.value
    assert dl.status_phase(PROMOTED) is None


def dataclass_replace(world: dl.World, **changes: Any) -> dl.World:
    import dataclasses

    return dataclasses.replace(world, **changes)


# --- rolling updates -------------------------------------------------------------------------

ROLLING_WORLD = stable_world()


def rolling(
    tpl: dict[str, Any],
    *,
    stable: str | None = REV_OLD,
    rollback: dict[str, Any] | None = None,
    command: str | None = None,
    world: dl.World = ROLLING_WORLD,
) -> dl.RollingPlan:
    return dl.rolling_update(
        service_spec(tpl),
        stable_revision=stable,
        rollback=rollback,
        command=dl.parse_command({dl.ANNOTATION_COMMAND: command} if command else {}),
        world=world,
        owner=OWNER,
        now=T0,
    )


def test_rolling_update_without_a_command_deploys_the_spec() -> None:
    plan = rolling(NEW)
    assert plan.spec.template == NEW
    assert (plan.rollback, plan.event, plan.degraded_by) == (None, None, None)
    assert plan.keep_revision is not None and plan.keep_revision["data"]["template"] == NEW


def test_abort_deploys_the_stable_template_and_says_why() -> None:
    plan = rolling(NEW, command="abort/heal-1")
    assert plan.spec.template == OLD
    assert plan.rollback == {"revision": REV_NEW, "stableRevision": REV_OLD, "command": "heal-1", "at": T0}
    assert plan.event is not None and plan.event.reason == "RolledBack"
    assert plan.degraded_by is not None and plan.degraded_by[0] == "RolledBack"


@pytest.mark.parametrize(
    ("tpl", "stable", "command", "refusal"),
    [
        (OLD, REV_OLD, "abort/1", "no revision newer than the stable one"),
        (NEW, None, "abort/1", "no revision newer than the stable one"),
        (NEW, REV_OLD, "pause/1", "only takes abort"),
    ],
)
def test_refused_commands_are_reported_once(
    tpl: dict[str, Any], stable: str | None, command: str, refusal: str
) -> None:
    plan = rolling(tpl, stable=stable, command=command)
    assert plan.spec.template == tpl
    assert plan.event is not None and plan.event.reason == "CommandIgnored" and refusal in plan.event.message
    again = rolling(tpl, stable=stable, command=command, rollback=dict(plan.rollback or {}))
    assert again.event is None


def test_a_lost_stable_template_refuses_the_abort() -> None:
    world = dataclass_replace(stable_world(keep=False), stable=None)
    plan = rolling(NEW, command="abort/1", world=world)
    assert plan.spec.template == NEW
    assert plan.event is not None and "no longer known" in plan.event.message


def test_the_hold_lasts_until_the_template_changes_and_the_abort_is_not_reapplied() -> None:
    held = dict(rolling(NEW, command="abort/heal-1").rollback or {})
    same = rolling(NEW, command="abort/heal-1", rollback=held)
    assert same.spec.template == OLD and same.event is None
    newer = template("web:3")
    moved_on = rolling(newer, command="abort/heal-1", rollback=held)
    assert moved_on.spec.template == newer
    assert moved_on.rollback == {"command": "heal-1"}
    assert moved_on.event is None and moved_on.degraded_by is None


def test_ready_names_the_revision_that_serves_not_the_rolled_back_one() -> None:
    state = ro.RolloutState(phase=ro.RolloutPhase.ROLLED_BACK, stable_revision=REV_OLD, revision=REV_NEW)
    plan = run(service_spec(NEW), CANARY, stable_world(), state=state)
    report = rec.report(
        owner=OWNER,
        generation=2,
        spec=service_spec(NEW),
        applies=(),
        outcome=rec.ApplyOutcome(),
        deployment=None,
        previous={},
        now="2026-01-01T00:00:00Z",
        view=plan.view,
        degraded_by=("RolledBack", "revision was rolled back"),
    )
    ready = next(c for c in report.status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and REV_OLD in ready["message"] and REV_NEW not in ready["message"]
    assert report.status["phase"] == "Degraded"
