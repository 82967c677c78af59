"""Table-driven tests of the pure reconcile core: spec in, observed children in, plan and status out."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from homeostat.core import children as kids
from homeostat.core import reconcile as rec
from homeostat.core import spec as specs

OWNER = kids.Owner("web", "prod", "uid-1")
NOW = "2026-11-22T10:00:00Z"
LATER = "2026-11-22T10:05:00Z"


def raw_spec(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "main", "image": "nginx:1.27"}]},
        },
        "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
        "replicas": {"min": 2, "max": 6, "desired": 3},
    }
    base.update(overrides)
    return base


def parsed(**overrides: Any) -> specs.ServiceSpec:
    return specs.parse(raw_spec(**overrides))


# --- parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"template": None}, "spec.template"),
        ({"template": {"spec": {"containers": []}}}, "spec.template.spec.containers"),
        ({"template": {"spec": {"containers": [{"name": "x"}]}}}, "spec.template.spec.containers[0].image"),
        ({"ports": [{"name": "a", "port": 0}]}, "spec.ports[0].port"),
        ({"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]}, "spec.ports"),
        ({"replicas": {"min": 5, "max": 2}}, "spec.replicas"),
        ({"replicas": {"min": -1, "max": 2}}, "spec.replicas.min"),
        ({"replicas": {"min": 1, "max": 2, "desired": "3"}}, "spec.replicas.desired"),
        ({"disruptionBudget": {}}, "spec.disruptionBudget"),
        ({"disruptionBudget": {"maxUnavailable": 1, "minAvailable": 1}}, "spec.disruptionBudget"),
        ({"disruptionBudget": {"maxUnavailable": "ten"}}, "spec.disruptionBudget.maxUnavailable"),
        ({"rollout": {"strategy": "YOLO"}}, "spec.rollout.strategy"),
    ],
)
def test_unusable_specs_name_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(specs.SpecError) as info:
        specs.parse(raw_spec(**overrides))
    assert info.value.field == field


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("depth", "refused"),
    # spec.template.spec.containers[0].junk is 4 levels below spec.template; the junk adds more.
    [(28, False), (29, True), (600, True), (10_000, True)],
)
def test_junk_nested_deep_in_the_template_is_refused_by_name(depth: int, refused: bool) -> None:
    """Issue 14.11: 600 levels made every recursive walk of the object fail; the parser walks it
    in a loop and names where it goes too deep, at any depth the API server can store."""
    container = {"name": "app", "image": "x", "junk": _nested(depth)}
    raw = raw_spec(template={"spec": {"containers": [container]}})
    if not refused:
        specs.parse(raw)
        return
    with pytest.raises(specs.SpecError) as info:
        specs.parse(raw)
    assert info.value.field.startswith("spec.template.spec.containers[0].junk.a.a")
    assert "nested more than 32 levels below spec.template" in str(info.value)


@pytest.mark.parametrize(
    ("replicas", "effective"),
    [
        ({"min": 2, "max": 6, "desired": 3}, 3),
        ({"min": 2, "max": 6}, 2),
        ({"min": 2, "max": 6, "desired": 9}, 6),
        ({"min": 2, "max": 6, "desired": 0}, 2),
        ({"min": 0, "max": 1, "desired": 0}, 0),
    ],
)
def test_effective_replicas_stay_in_bounds(replicas: dict[str, int], effective: int) -> None:
    assert parsed(replicas=replicas).replicas.effective == effective


# --- children ----------------------------------------------------------------------------


def test_children_are_owned_labelled_and_selected_by_track() -> None:
    dep, svc, pdb = kids.desired(OWNER, parsed())
    for child in (dep, svc, pdb):
        assert child["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
        assert child["metadata"]["labels"][kids.LABEL_MANAGED_BY] == "homeostat"
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["selector"]["matchLabels"] == {kids.LABEL_SERVICE: "web", kids.LABEL_TRACK: "stable"}
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["app"] == "web"
    assert pod_labels[kids.LABEL_REVISION] == kids.revision(raw_spec()["template"])
    assert svc["spec"]["selector"] == {kids.LABEL_SERVICE: "web"}
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
    assert pdb["spec"] == {"selector": {"matchLabels": {kids.LABEL_SERVICE: "web"}}, "maxUnavailable": 1}


def test_user_labels_cannot_hijack_the_selector() -> None:
    template = raw_spec()["template"]
    template["metadata"]["labels"][kids.LABEL_SERVICE] = "other"
    dep = kids.deployment(OWNER, parsed(template=template))
    assert dep["spec"]["template"]["metadata"]["labels"][kids.LABEL_SERVICE] == "web"


@pytest.mark.parametrize(
    ("refs", "owned"),
    [([{"uid": "uid-1"}], True), ([{"uid": "someone-else"}], False), ([], False), (None, False)],
)
def test_only_owned_children_count(refs: list[dict[str, str]] | None, owned: bool) -> None:
    body = {"metadata": {"name": "web", "ownerReferences": refs}}
    assert (kids.owned_by(OWNER, body) is body) is owned
    assert kids.owned_by(OWNER, None) is None


def test_no_ports_means_no_service() -> None:
    kinds = [c["kind"] for c in kids.desired(OWNER, parsed(ports=[]))]
    assert kinds == ["Deployment", "PodDisruptionBudget"]


def test_revision_is_stable_and_sensitive() -> None:
    a = raw_spec()["template"]
    b = copy.deepcopy(a)
    assert kids.revision(a) == kids.revision(b)
    b["spec"]["containers"][0]["image"] = "nginx:1.28"
    assert kids.revision(a) != kids.revision(b)


@pytest.mark.parametrize(
    ("wanted", "actual", "expected"),
    [
        ({"a": 1}, {"a": 1, "b": 2}, True),  # server defaults are not drift
        ({"a": 1}, {"a": 2}, False),
        ({"a": [{"x": 1}]}, {"a": [{"x": 1, "y": 0}]}, True),
        ({"a": [{"x": 1}]}, {"a": [{"x": 1}, {"x": 2}]}, False),
        ({"a": {"b": "c"}}, {"a": None}, False),
        ({"a": "1"}, {"a": 1}, False),
    ],
)
def test_is_subset(wanted: Any, actual: Any, expected: bool) -> None:
    assert kids.is_subset(wanted, actual) is expected


# --- plan ------------------------------------------------------------------------------------


def _omit_zero(value: Any) -> Any:
    """Go's omitempty: the API server leaves zero numbers, empty strings and empty maps out."""
    if isinstance(value, dict):
        kept = {k: _omit_zero(v) for k, v in value.items() if v not in (0, "", None, {}, [])}
        return {k: v for k, v in kept.items() if v not in ({}, [])}
    if isinstance(value, list):
        return [_omit_zero(v) for v in value]
    return value


def _as_stored(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the API server would hand back: our fields (zeros left out) plus defaults and status."""
    stored = _omit_zero(copy.deepcopy(manifest))
    stored["metadata"]["resourceVersion"] = "1"
    if stored["kind"] == "Deployment":  # only some kinds get annotations from the server
        stored["metadata"].setdefault("annotations", {})["deployment.kubernetes.io/revision"] = "1"
    stored["spec"]["someServerDefault"] = True
    return stored


def _observed(spec: specs.ServiceSpec, mutate: Any = None) -> dict[kids.ChildRef, Any]:
    observed: dict[kids.ChildRef, Any] = {}
    for manifest in kids.desired(OWNER, spec):
        stored = _as_stored(manifest)
        if mutate:
            mutate(stored)
        observed[kids.ChildRef.of(manifest)] = stored
    return observed


def _scale_deployment(body: dict[str, Any]) -> None:
    if body["kind"] == "Deployment":
        body["spec"]["replicas"] = 7


def _strip_labels(body: dict[str, Any]) -> None:
    body["metadata"]["labels"] = {}


@pytest.mark.parametrize(
    ("case", "observed", "expected"),
    [
        (
            "nothing exists",
            {},
            [("Deployment", "Created"), ("Service", "Created"), ("PodDisruptionBudget", "Created")],
        ),
        ("all in place", _observed(parsed()), []),
        ("replicas changed by hand", _observed(parsed(), _scale_deployment), [("Deployment", "Updated")]),
        (
            "labels stripped",
            _observed(parsed(), _strip_labels),
            [("Deployment", "Updated"), ("Service", "Updated"), ("PodDisruptionBudget", "Updated")],
        ),
    ],
)
def test_plan(case: str, observed: dict[kids.ChildRef, Any], expected: list[tuple[str, str]]) -> None:
    applies = rec.plan(OWNER, parsed(), observed)
    assert [(a.manifest["kind"], a.reason.value) for a in applies] == expected, case


@pytest.mark.parametrize("overrides", [{}, {"minReadySeconds": 0}, {"minReadySeconds": 5}])
def test_plan_is_idempotent_after_apply(overrides: dict[str, Any]) -> None:
    spec = parsed(**overrides)
    first = rec.plan(OWNER, spec, {})
    observed = {a.ref: _as_stored(dict(a.manifest)) for a in first}
    assert rec.plan(OWNER, spec, observed) == ()


def test_template_change_updates_the_deployment_only() -> None:
    old = _observed(parsed())
    template = raw_spec()["template"]
    template["spec"]["containers"][0]["image"] = "nginx:1.28"
    applies = rec.plan(OWNER, parsed(template=template), old)
    assert [a.manifest["kind"] for a in applies] == ["Deployment"]


def test_removed_ports_make_the_service_stale() -> None:
    observed = _observed(parsed())
    stale = rec.stale_children(OWNER, parsed(ports=[]), observed)
    assert [ref.kind for ref in stale] == ["Service"]


# --- report ----------------------------------------------------------------------------------


def _deployment(spec: specs.ServiceSpec, **status: Any) -> dict[str, Any]:
    dep = _as_stored(kids.deployment(OWNER, spec))
    dep["metadata"]["generation"] = 2
    dep["status"] = {"observedGeneration": 2, **status}
    return dep


def _report(
    spec: specs.ServiceSpec | specs.SpecError,
    deployment: dict[str, Any] | None,
    previous: dict[str, Any] | None = None,
    outcome: rec.ApplyOutcome | None = None,
    now: str = NOW,
) -> rec.Report:
    return rec.report(
        owner=OWNER,
        generation=4,
        spec=spec,
        applies=(),
        outcome=outcome or rec.ApplyOutcome(),
        deployment=deployment,
        previous=previous or {},
        now=now,
    )


def _conditions(report: rec.Report) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in report.status["conditions"]}


READY = {"replicas": 3, "readyReplicas": 3, "updatedReplicas": 3, "availableReplicas": 3}


@pytest.mark.parametrize(
    ("case", "deployment_status", "phase", "ready", "progressing"),
    [
        ("no deployment yet", None, "Pending", ("False", "WaitingForPods"), ("True", "Scaling")),
        (
            "pods starting",
            {"replicas": 3, "updatedReplicas": 3},
            "Progressing",
            ("False", "WaitingForPods"),
            ("True", "Scaling"),
        ),
        ("all ready", READY, "Ready", ("True", "Available"), ("False", "Stable")),
        (
            "rolling",
            {"replicas": 4, "readyReplicas": 3, "updatedReplicas": 1, "availableReplicas": 3},
            "Progressing",
            ("False", "WaitingForPods"),
            ("True", "RollingOut"),
        ),
        (
            "stale counts",
            {**READY, "observedGeneration": 1},
            "Progressing",
            ("False", "WaitingForPods"),
            ("True", "Scaling"),
        ),
    ],
)
def test_status_phases(
    case: str,
    deployment_status: dict[str, Any] | None,
    phase: str,
    ready: tuple[str, str],
    progressing: tuple[str, str],
) -> None:
    spec = parsed()
    dep = None if deployment_status is None else _deployment(spec, **deployment_status)
    report = _report(spec, dep)
    assert report.status["phase"] == phase, case
    conditions = _conditions(report)
    assert conditions["Ready"] == ready, case
    assert conditions["Progressing"] == progressing, case
    assert conditions["Degraded"] == ("False", "Healthy"), case
    assert report.status["observedGeneration"] == 4
    assert report.status["selector"] == "homeostat.dev/service=web"
    assert report.status["desiredReplicas"] == 3


def test_ready_sets_stable_revision_and_one_event() -> None:
    spec = parsed()
    report = _report(spec, _deployment(spec, **READY))
    assert report.status["stableRevision"] == report.status["currentRevision"]
    assert [(e.type, e.reason) for e in report.events] == [("Normal", "Ready")]
    again = _report(spec, _deployment(spec, **READY), previous=dict(report.status), now=LATER)
    assert again.events == ()
    assert not rec.status_changed(report.status, again.status)


def test_transition_time_moves_only_on_flip() -> None:
    spec = parsed()
    first = _report(spec, _deployment(spec, replicas=3, updatedReplicas=3))
    same = _report(
        spec, _deployment(spec, replicas=3, updatedReplicas=3), previous=dict(first.status), now=LATER
    )
    flipped = _report(spec, _deployment(spec, **READY), previous=dict(first.status), now=LATER)

    def ready_time(r: rec.Report) -> str:
        return next(c["lastTransitionTime"] for c in r.status["conditions"] if c["type"] == "Ready")

    assert ready_time(first) == NOW
    assert ready_time(same) == NOW
    assert ready_time(flipped) == LATER


def test_invalid_spec_reports_the_field_once() -> None:
    error = specs.SpecError("spec.replicas", "min (5) must not exceed max (2)")
    report = _report(error, None)
    assert report.status["phase"] == "InvalidSpec"
    assert _conditions(report)["Degraded"] == ("True", "InvalidSpec")
    assert [(e.type, e.reason) for e in report.events] == [("Warning", "InvalidSpec")]
    assert "spec.replicas" in report.events[0].message
    again = _report(error, None, previous=dict(report.status), now=LATER)
    assert again.events == ()


def test_rejected_child_is_invalid_spec_and_api_trouble_is_degraded() -> None:
    spec = parsed()
    ref = kids.ChildRef("apps/v1", "Deployment", "prod", "web")
    rejected = _report(
        spec,
        None,
        outcome=rec.ApplyOutcome(rejected={ref: "spec.template.spec.containers[0].image: Required"}),
    )
    assert rejected.status["phase"] == "InvalidSpec"
    assert "containers[0].image" in _conditions_message(rejected, "Degraded")
    failing = _report(spec, None, outcome=rec.ApplyOutcome(errors={ref: "503: unavailable"}))
    assert failing.status["phase"] == "Degraded"
    assert _conditions(failing)["Degraded"] == ("True", "ApplyFailed")


def _conditions_message(report: rec.Report, ctype: str) -> str:
    return str(next(c["message"] for c in report.status["conditions"] if c["type"] == ctype))


def test_other_status_fields_pass_through() -> None:
    spec = parsed()
    previous = {"canary": {"weight": 20}, "forecast": {"predictedPeak": 9}}
    report = _report(spec, _deployment(spec, **READY), previous=previous)
    assert report.status["canary"] == {"weight": 20}
    assert report.status["forecast"] == {"predictedPeak": 9}


def test_conditions_of_other_writers_pass_through() -> None:
    spec = parsed()
    foreign = {"type": "Autoscaling", "status": "True", "reason": "Predictive", "message": "m"}
    report = _report(spec, _deployment(spec, **READY), previous={"conditions": [foreign]})
    assert foreign in report.status["conditions"]
    assert [c["type"] for c in report.status["conditions"]][:3] == ["Ready", "Progressing", "Degraded"]


@pytest.mark.parametrize(
    ("previous", "updates", "expected"),
    [
        ([], [("A", "True")], [("A", "True", NOW)]),
        ([("A", "True", "t0")], [("A", "True")], [("A", "True", "t0")]),
        ([("A", "True", "t0")], [("A", "False")], [("A", "False", NOW)]),
        (
            [("A", "True", "t0"), ("B", "False", "t1")],
            [("B", "True")],
            [("A", "True", "t0"), ("B", "True", NOW)],
        ),
        ([("A", "True", "t0")], [("B", "True")], [("A", "True", "t0"), ("B", "True", NOW)]),
    ],
)
def test_merge_conditions_replaces_by_type_and_keeps_transition_times(
    previous: list[tuple[str, str, str]], updates: list[tuple[str, str]], expected: list[tuple[str, str, str]]
) -> None:
    merged = rec.merge_conditions(
        [{"type": t, "status": s, "lastTransitionTime": at} for t, s, at in previous],
        [{"type": t, "status": s} for t, s in updates],
        NOW,
    )
    assert [(c["type"], c["status"], c["lastTransitionTime"]) for c in merged] == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("128Mi", 128 * 2**20),
        ("1Gi", 2.0**30),
        ("1.5Gi", 1.5 * 2**30),
        ("1G", 1e9),
        ("500k", 5e5),
        ("1e9", 1e9),
        ("1000", 1000.0),
        (1024, 1024.0),
        ("100m", 0.1),
        ("12 apples", None),
        ("x", None),
        ("", None),
        (None, None),
        (True, None),
        (float("inf"), None),
    ],
)
def test_quantity(value: Any, expected: float | None) -> None:
    assert specs.quantity(value) == expected


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("128Mi", True),
        ("0.5", True),
        (".5", True),
        ("500m", True),
        ("1e3", True),
        ("1E", True),
        ("+2Gi", True),
        (2, True),
        ("lots", False),
        ("1.5.5", False),
        ("64 Mi", False),
        ("", False),
        (True, False),
        ("1Mb", False),
    ],
)
def test_template_quantities_are_checked_by_field(value: Any, ok: bool) -> None:
    """Issue 14.13: the API server's refusal of a bad quantity names no field; the parser does."""
    container = {"name": "app", "image": "x", "resources": {"limits": {"memory": value}}}
    raw = raw_spec(template={"spec": {"containers": [container]}})
    if ok:
        specs.parse(raw)
        return
    with pytest.raises(specs.SpecError) as info:
        specs.parse(raw)
    assert info.value.field == "spec.template.spec.containers[0].resources.limits.memory"


@pytest.mark.parametrize(
    ("kind", "message", "expected"),
    [
        (
            "Deployment",
            "failed to create typed patch object (ns/typo; apps/v1, Kind=Deployment): "
            ".spec.template.spec.nodeSelectr: field not declared in schema",
            "spec.template.spec.nodeSelectr: field not declared in schema (refused in Deployment/typo)",
        ),
        (
            "Deployment",
            'Deployment.apps "typo" is invalid: spec.template.labels: Invalid value: "bad!": a label',
            'spec.template.metadata.labels: Invalid value: "bad!": a label (refused in Deployment/typo)',
        ),
        ("Service", "spec.ports[0].port: Invalid value", "Service/typo: spec.ports[0].port: Invalid value"),
    ],
)
def test_child_refusals_name_the_services_fields(kind: str, message: str, expected: str) -> None:
    """Issue 14.13: a Deployment's refusal is given in the service's field paths."""
    ref = kids.ChildRef("apps/v1" if kind == "Deployment" else "v1", kind, "ns", "typo")
    assert rec.in_service_terms(ref, message) == expected
