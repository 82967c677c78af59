"""The reconcile (handlers.replicatedservice.reconcile) over fake Workloads: children applied,
status written, Events posted; a refused child is an InvalidSpec status and no hot retry, an
unreachable API server a kopf.TemporaryError (issue 15)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import fakes
import kopf
import pytest

from homeostat import ports
from homeostat.core import children as kids
from homeostat.handlers import replicatedservice as rs
from homeostat.handlers import runtime as rt

LOG = logging.getLogger("test.reconcile")
CHILDREN = ["Deployment", "Service", "PodDisruptionBudget", "ControllerRevision"]
REFUSED = 'Deployment.apps "web" is invalid: spec.template.spec.containers[0].image: Required value'


def _body(**changes: Any) -> dict[str, Any]:
    spec = {"ports": [{"port": 80, "targetPort": 8080}], "replicas": {"min": 2, "max": 5, "desired": 2}}
    return fakes.service(**{**spec, **changes})


def _reconcile(
    runtime: rt.Runtime,
    body: Mapping[str, Any],
    idx: Mapping[str, Any] | None = None,
    *,
    then: Callable[[list[Mapping[str, Any]]], Mapping[str, Any]] | None = None,
) -> tuple[list[fakes.PostedEvent], BaseException | None]:
    """One reconcile (and, with ``then``, a second over the indexes ``then`` builds from what
    the first applied), on one event loop: the raised exception, if any, and the Events."""

    async def scenario() -> tuple[list[fakes.PostedEvent], BaseException | None]:
        raised: BaseException | None = None
        try:
            await rs.reconcile(body, runtime, idx if idx is not None else fakes.indexes(body), LOG)
            if then is not None:
                workloads = runtime.workloads
                assert isinstance(workloads, fakes.FakeWorkloads)
                await rs.reconcile(body, runtime, then(list(workloads.applied)), LOG)
        except Exception as exc:
            raised = exc
        return await fakes.posted(runtime), raised

    return fakes.run(scenario())


def _conditions(status: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def _observed(applied: list[Mapping[str, Any]], body: Mapping[str, Any]) -> dict[str, Any]:
    """The indexes once the watch caches hold what the reconcile applied."""
    idx = fakes.indexes(body)
    for manifest in applied:
        meta = manifest["metadata"]
        if manifest["kind"] == "ControllerRevision":
            idx["revisions"].setdefault((meta["namespace"], "web"), []).append(manifest)
            continue
        plural = {
            "Deployment": "deployments",
            "Service": "services",
            "PodDisruptionBudget": "poddisruptionbudgets",
        }
        key = (meta["namespace"], meta["name"], manifest["kind"])
        idx[f"children_{plural[manifest['kind']]}"][key] = [manifest]
    return idx


def test_a_reconcile_applies_the_children_and_writes_status() -> None:
    workloads = fakes.FakeWorkloads()
    runtime = fakes.runtime_of(workloads)
    events, raised = _reconcile(runtime, _body())

    assert raised is None
    assert workloads.kinds() == CHILDREN
    for manifest in workloads.applied:
        assert [ref["uid"] for ref in manifest["metadata"]["ownerReferences"]] == ["uid-web"]
    [(owner, status)] = workloads.patched
    assert owner == kids.Owner("web", "prod", "uid-web")
    assert (status["phase"], status["desiredReplicas"], status["observedGeneration"]) == ("Progressing", 2, 1)
    assert _conditions(status) == {
        "Ready": ("False", "WaitingForPods"),
        "Progressing": ("True", "Scaling"),
        "Degraded": ("False", "Healthy"),
    }
    assert runtime.reported["uid-web"] == status
    [event] = events
    assert (event.type, event.reason) == ("Normal", "Created")
    assert "Deployment/web" in event.message and "PodDisruptionBudget/web" in event.message


def test_a_reconcile_of_what_exists_applies_nothing_and_writes_nothing() -> None:
    workloads = fakes.FakeWorkloads()
    runtime = fakes.runtime_of(workloads)
    body = _body()
    events, raised = _reconcile(runtime, body, then=lambda applied: _observed(applied, body))
    assert raised is None
    assert workloads.kinds() == CHILDREN  # applied once, nothing more
    assert len(workloads.patched) == 1
    assert [e.reason for e in events] == ["Created"]  # only the first reconcile's


def test_a_deployment_serving_every_replica_makes_the_service_ready() -> None:
    workloads = fakes.FakeWorkloads()
    runtime = fakes.runtime_of(workloads)
    body = _body()

    def serving(applied: list[Mapping[str, Any]]) -> Mapping[str, Any]:
        idx = _observed(applied, body)
        [store] = idx["children_deployments"].values()
        deployment = dict(store[0])
        deployment["metadata"] = {**deployment["metadata"], "generation": 1}
        deployment["status"] = {
            "observedGeneration": 1,
            **dict.fromkeys(("replicas", "readyReplicas", "updatedReplicas", "availableReplicas"), 2),
        }
        store[0] = deployment
        return idx

    events, _ = _reconcile(runtime, body, then=serving)
    status = runtime.reported["uid-web"]
    assert status["phase"] == "Ready"
    assert status["stableRevision"] == status["currentRevision"]
    assert _conditions(status)["Ready"] == ("True", "Available")
    assert [e.reason for e in events] == ["Created", "Ready"]


FAILURES = [
    # (what applying the Deployment raises, kopf.TemporaryError?, phase, Degraded reason)
    pytest.param(ports.Rejected(REFUSED), False, "InvalidSpec", "InvalidSpec", id="rejected"),
    pytest.param(ports.Unavailable("connection reset"), True, "Degraded", "ApplyFailed", id="unavailable"),
]


@pytest.mark.parametrize(("error", "retried", "phase", "reason"), FAILURES)
def test_a_failed_apply_is_reported_and_only_an_outage_retried(
    error: Exception, retried: bool, phase: str, reason: str
) -> None:
    workloads = fakes.FakeWorkloads(fail={"Deployment": error})
    runtime = fakes.runtime_of(workloads)
    events, raised = _reconcile(runtime, _body())

    assert isinstance(raised, kopf.TemporaryError) is retried
    if retried:
        assert raised is not None and "connection reset" in str(raised)
    else:
        assert raised is None
    status = runtime.reported["uid-web"]
    assert status["phase"] == phase
    assert _conditions(status)["Degraded"] == ("True", reason)
    assert [(e.type, e.reason) for e in events if e.type == "Warning"] == [("Warning", reason)]
    assert len(workloads.patched) == 1


@pytest.mark.parametrize("error", [ports.Rejected(REFUSED), ports.Unavailable("connection reset")])
def test_after_a_failed_apply_the_later_children_wait_for_the_next_reconcile(error: Exception) -> None:
    workloads = fakes.FakeWorkloads(fail={"Deployment": error})
    _reconcile(fakes.runtime_of(workloads), _body())
    assert workloads.kinds() == []


def test_a_refusal_is_told_in_the_services_own_terms() -> None:
    runtime = fakes.runtime_of(fakes.FakeWorkloads(fail={"Deployment": ports.Rejected(REFUSED)}))
    events, _ = _reconcile(runtime, _body())
    degraded = next(c for c in runtime.reported["uid-web"]["conditions"] if c["type"] == "Degraded")
    assert degraded["message"] == (
        "spec.template.spec.containers[0].image: Required value (refused in Deployment/web)"
    )
    assert _conditions(runtime.reported["uid-web"])["Ready"] == ("False", "InvalidSpec")
    assert [e.message for e in events if e.type == "Warning"] == [degraded["message"]]


def test_a_refusal_repeated_is_neither_retried_nor_told_again() -> None:
    workloads = fakes.FakeWorkloads(fail={"Deployment": ports.Rejected(REFUSED)})
    runtime = fakes.runtime_of(workloads)
    body = _body()

    async def scenario() -> list[fakes.PostedEvent]:
        for _ in range(3):
            await rs.reconcile(body, runtime, fakes.indexes(body), LOG)  # raises nothing
        return await fakes.posted(runtime)

    events = fakes.run(scenario())
    # (The other children are created again each time: these indexes never see them.)
    assert [e.reason for e in events if e.type == "Warning"] == ["InvalidSpec"]
    assert len(workloads.patched) == 1


def test_a_spec_that_does_not_parse_applies_nothing_and_says_which_field() -> None:
    workloads = fakes.FakeWorkloads()
    runtime = fakes.runtime_of(workloads)
    events, raised = _reconcile(runtime, _body(replicas={"min": 5, "max": 2}))
    assert raised is None and workloads.applied == []
    status = runtime.reported["uid-web"]
    assert status["phase"] == "InvalidSpec"
    assert _conditions(status)["Degraded"] == ("True", "InvalidSpec")
    assert [(e.type, e.reason) for e in events] == [("Warning", "InvalidSpec")]
    assert "spec.replicas" in events[0].message


@pytest.mark.parametrize("error", [None, ports.Rejected("the resourceVersion test failed")])
def test_an_unset_desired_count_is_defaulted_to_min_and_a_lost_race_tolerated(
    error: Exception | None,
) -> None:
    workloads = fakes.FakeWorkloads(fail={"json_patch": error} if error else {})
    runtime = fakes.runtime_of(workloads)
    body = _body(replicas={"min": 3, "max": 5})
    body["metadata"]["resourceVersion"] = "41"
    _, raised = _reconcile(runtime, body)
    assert raised is None
    assert workloads.kinds() == CHILDREN  # the reconcile goes on either way
    if error is None:
        [(ref, operations)] = workloads.json_patched
        assert (ref.kind, ref.name) == ("ReplicatedService", "web")
        assert operations == [
            {"op": "test", "path": "/metadata/resourceVersion", "value": "41"},
            {"op": "add", "path": "/spec/replicas/desired", "value": 3},
        ]


def test_a_service_being_deleted_is_left_to_garbage_collection() -> None:
    workloads = fakes.FakeWorkloads()
    runtime = fakes.runtime_of(workloads)
    body = _body()
    body["metadata"]["deletionTimestamp"] = "2023-11-14T22:13:20Z"
    events, raised = _reconcile(runtime, body)
    assert (workloads.applied, workloads.patched, events, raised) == ([], [], [], None)


def test_the_reconcile_keeps_what_other_writers_put_in_status() -> None:
    others = {
        "autoscaling": {"desired": 4},
        "maintenance": {"reason": "Evaluated"},
        "conditions": [{"type": "Autoscaling", "status": "True", "reason": "Reactive"}],
    }
    runtime = fakes.runtime_of()
    _reconcile(runtime, _body(status=others))
    status = runtime.reported["uid-web"]
    assert (status["autoscaling"], status["maintenance"]) == (others["autoscaling"], others["maintenance"])
    assert _conditions(status)["Autoscaling"] == ("True", "Reactive")
