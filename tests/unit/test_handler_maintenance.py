"""The predictive-maintenance checks (handlers.maintenance) over fake ports: each writes only its
own part of status.maintenance and its own requests, and an outage keeps or clears requests as
the kind of check demands (issue 15)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import fakes
import pytest
from fakes import NOW

from homeostat import ports
from homeostat.core import maintenance as mt
from homeostat.core import remediation as rem
from homeostat.core import trends as tr
from homeostat.handlers import maintenance
from homeostat.handlers import runtime as rt

Check = Callable[[rt.Runtime, Mapping[str, Any], Mapping[str, Any]], Awaitable[None]]

RISK_QUERY = 'node_failure_risk{node!=""}'
HEALING = {
    "predictiveMaintenance": {
        "query": RISK_QUERY,
        "threshold": 0.8,
        "memory": {},
        "restarts": {},
        "disk": {},
    }
}
BEFORE = "2023-11-14T22:00:00Z"


def _request(resource: str | None, subject: str, **extra: Any) -> dict[str, Any]:
    key = f"{subject}/{mt.CAUSE}/{resource or 'memory'}"
    request = {
        "key": key,
        "cause": mt.CAUSE,
        "requestedAt": BEFORE,
        "message": f"{resource} request",
        **extra,
    }
    if resource is not None:  # memory's requests were written before there were others
        request["resource"] = resource
    return request


REQUESTS = {
    "memory": _request(None, "web-1", pod="web-1", action="RestartPod"),
    "restarts": _request("restarts", "web-2", pod="web-2", action="RestartPod"),
    "disk": _request("disk", "n1", node="n1", action="CordonNode"),
    "risk": _request("risk", "n1", node="n1", action="CordonNode"),
}
PREVIOUS: dict[str, Any] = {
    "lastEvaluated": BEFORE,
    "reason": "Evaluated",
    "message": "1 pod(s) checked, 1 predicted to run out within the lead time",
    "pods": 1,
    "findings": [{"pod": "web-1", "verdict": "ExhaustionPredicted"}],
    "restarts": {"lastEvaluated": BEFORE, "reason": "Evaluated", "message": "restarts before", "checked": 1},
    "disk": {"lastEvaluated": BEFORE, "reason": "Evaluated", "message": "disk before", "checked": 1},
    "risk": {"lastEvaluated": BEFORE, "reason": "Evaluated", "message": "risk before", "checked": 1},
    "requests": list(REQUESTS.values()),
}
RESOURCES = [tr.Resource.MEMORY, tr.Resource.RESTARTS, tr.Resource.DISK, tr.Resource.RISK]


def _body(healing: Mapping[str, Any] | None = None, maintenance_status: Any = PREVIOUS) -> dict[str, Any]:
    return fakes.service(
        healing=HEALING if healing is None else healing,
        status={"maintenance": maintenance_status, "phase": "Ready"},
    )


def _indexes(body: Mapping[str, Any]) -> dict[str, Any]:
    pods = {("prod", "web"): [rem.PodView("web-1", node="n1"), rem.PodView("web-2", node="n2")]}
    return fakes.indexes(body, healing_pods=pods)


def _flat(label: str, subject: str, value: float) -> ports.Series:
    return ports.Series({label: subject}, tuple((NOW - 600 + 60 * i, value) for i in range(11)))


def _rising_restarts(pod: str) -> ports.Series:
    """One more restart a minute: ten restarts now, the limit (10) reached within the lead time."""
    return ports.Series({"pod": pod}, tuple((NOW - 600 + 60 * i, float(i)) for i in range(11)))


def _run(runtime: rt.Runtime, check: Check, body: Mapping[str, Any]) -> list[fakes.PostedEvent]:
    async def scenario() -> list[fakes.PostedEvent]:
        await check(runtime, _indexes(body), body)
        return await fakes.posted(runtime)

    return fakes.run(scenario())


def _maintenance(runtime: rt.Runtime) -> Mapping[str, Any]:
    return runtime.reported["uid-web"]["maintenance"]


def _requests_of(maintenance_status: Mapping[str, Any], resource: tr.Resource) -> list[Mapping[str, Any]]:
    return [r for r in maintenance_status.get("requests") or [] if r.get("resource", "memory") == resource]


CHECKS = [
    # (the check, the resource it owns, the metrics' answers to a run that evaluates)
    pytest.param(
        maintenance.check_memory,
        tr.Resource.MEMORY,
        fakes.FakeMetrics(range_answer=(_flat("pod", "web-1", 50 * 2**20),)),
        id="memory",
    ),
    pytest.param(
        maintenance.check_restarts,
        tr.Resource.RESTARTS,
        fakes.FakeMetrics(range_answer=(_flat("pod", "web-2", 1.0),)),
        id="restarts",
    ),
    pytest.param(
        maintenance.check_disk,
        tr.Resource.DISK,
        fakes.FakeMetrics(range_answer=(_flat("node", "n1", 0.3),)),
        id="disk",
    ),
    pytest.param(
        maintenance.check_risk,
        tr.Resource.RISK,
        fakes.FakeMetrics(fakes.samples(0.1, node="n1") + fakes.samples(0.2, node="n2")),
        id="risk",
    ),
]


@pytest.mark.parametrize(("check", "resource", "metrics"), CHECKS)
def test_a_check_writes_its_own_part_and_keeps_the_others(
    check: Check, resource: tr.Resource, metrics: fakes.FakeMetrics
) -> None:
    runtime = fakes.runtime_of(metrics=metrics)
    events = _run(runtime, check, _body())
    after = _maintenance(runtime)

    mine = tr.own_part(after, resource)
    assert (mine["reason"], mine["lastEvaluated"]) == ("Evaluated", "2023-11-14T22:13:20Z")
    assert _requests_of(after, resource) == []  # the old subject is no longer predicted to fail
    for other in RESOURCES:
        if other is not resource:
            assert tr.own_part(after, other) == tr.own_part(PREVIOUS, other), other
            assert _requests_of(after, other) == _requests_of(PREVIOUS, other), other
    assert runtime.reported["uid-web"]["phase"] == "Ready"
    assert events == []


def test_the_disk_check_reads_only_the_nodes_hosting_the_services_pods() -> None:
    series = (_flat("node", "n1", 0.3), _flat("node", "elsewhere", 0.3))
    runtime = fakes.runtime_of(metrics=fakes.FakeMetrics(range_answer=series))
    _run(runtime, maintenance.check_disk, _body())
    assert _maintenance(runtime)["disk"]["checked"] == 1


TREND_OUTAGE = [
    pytest.param(maintenance.check_memory, tr.Resource.MEMORY, id="memory"),
    pytest.param(maintenance.check_restarts, tr.Resource.RESTARTS, id="restarts"),
    pytest.param(maintenance.check_disk, tr.Resource.DISK, id="disk"),
]


@pytest.mark.parametrize(("check", "resource"), TREND_OUTAGE)
def test_prometheus_unavailable_keeps_every_recorded_request(check: Check, resource: tr.Resource) -> None:
    runtime = fakes.runtime_of(metrics=fakes.FakeMetrics(range_answer=ports.Unavailable("prometheus down")))
    events = _run(runtime, check, _body())
    after = _maintenance(runtime)
    assert after["requests"] == PREVIOUS["requests"]
    mine = tr.own_part(after, resource)
    assert (mine["reason"], mine["message"]) == ("MetricUnavailable", "prometheus down")
    # The rest of the check's last evaluation stays, so its findings are still shown.
    assert mine["lastEvaluated"] == BEFORE
    for other in RESOURCES:
        if other is not resource:
            assert tr.own_part(after, other) == tr.own_part(PREVIOUS, other)
    assert events == []


def test_a_risk_query_unavailable_clears_the_risk_requests_only() -> None:
    metrics = fakes.FakeMetrics(ports.Unavailable("prometheus down"))
    runtime = fakes.runtime_of(metrics=metrics)
    events = _run(runtime, maintenance.check_risk, _body())
    after = _maintenance(runtime)
    assert metrics.instant_queries == [RISK_QUERY]
    assert _requests_of(after, tr.Resource.RISK) == []
    assert [r["key"] for r in after["requests"]] == [
        REQUESTS[name]["key"] for name in ("memory", "restarts", "disk")
    ]
    assert after["risk"] == {
        "lastEvaluated": "2023-11-14T22:13:20Z",
        "reason": "MetricUnavailable",
        "message": "failure risk unknown, no node acted on: prometheus down",
    }
    assert events == []


def test_a_node_at_risk_is_requested_once_with_one_event_and_one_notification() -> None:
    metrics = fakes.FakeMetrics(fakes.samples(0.95, node="n2"))
    notifier = fakes.FakeNotifier()
    runtime = fakes.runtime_of(metrics=metrics, notifier=notifier)
    body = _body()

    async def scenario() -> list[fakes.PostedEvent]:
        await maintenance.check_risk(runtime, _indexes(body), body)
        await maintenance.check_risk(runtime, _indexes(body), body)
        return await fakes.posted(runtime)

    events = fakes.run(scenario())
    [request] = _requests_of(_maintenance(runtime), tr.Resource.RISK)
    assert (request["node"], request["action"]) == ("n2", "Notify")
    assert [(e.type, e.reason) for e in events] == [("Warning", mt.CAUSE)]
    assert [n.key for n in notifier.sent] == [f"uid-web/n2/{mt.CAUSE}/risk"]


def test_a_rising_restart_count_becomes_a_request_an_event_and_a_notification() -> None:
    metrics = fakes.FakeMetrics(range_answer=(_rising_restarts("web-1"),))
    notifier = fakes.FakeNotifier()
    runtime = fakes.runtime_of(metrics=metrics, notifier=notifier)
    events = _run(runtime, maintenance.check_restarts, _body())
    [request] = _requests_of(_maintenance(runtime), tr.Resource.RESTARTS)
    assert (request["pod"], request["action"], request["requestedAt"]) == (
        "web-1",
        "RestartPod",
        "2023-11-14T22:13:20Z",
    )
    assert [e.reason for e in events] == [mt.CAUSE]
    assert "web-1" in events[0].message
    assert len(notifier.sent) == 1 and notifier.sent[0].severity == "warning"


def test_a_request_already_recorded_keeps_its_time_and_is_not_announced_again() -> None:
    recorded = _request("restarts", "web-1", pod="web-1", action="RestartPod")
    body = _body(maintenance_status={"requests": [recorded]})
    runtime = fakes.runtime_of(metrics=fakes.FakeMetrics(range_answer=(_rising_restarts("web-1"),)))
    events = _run(runtime, maintenance.check_restarts, body)
    [request] = _requests_of(_maintenance(runtime), tr.Resource.RESTARTS)
    assert request["requestedAt"] == BEFORE
    assert events == []


SWITCHED = [
    # (check, spec.healing, what is left of its part, whether its requests stay)
    (maintenance.check_restarts, {"predictiveMaintenance": {"memory": {}}}, None, False),
    (
        maintenance.check_restarts,
        {"predictiveMaintenance": {"restarts": {"limit": 0.5}}},
        "InvalidSpec",
        False,
    ),
    (maintenance.check_risk, {"predictiveMaintenance": {"query": "q", "threshold": 2}}, "InvalidSpec", False),
    # A bad edit does not make a leak go away: memory's requests outlive a spec error.
    (maintenance.check_memory, {"predictiveMaintenance": {"memory": {"query": ""}}}, "InvalidSpec", True),
]


@pytest.mark.parametrize(("check", "healing", "reason", "kept"), SWITCHED)
def test_a_check_switched_off_or_invalid_leaves_the_others_alone(
    check: Check, healing: Mapping[str, Any], reason: str | None, kept: bool
) -> None:
    resource = {
        maintenance.check_restarts: tr.Resource.RESTARTS,
        maintenance.check_risk: tr.Resource.RISK,
        maintenance.check_memory: tr.Resource.MEMORY,
    }[check]
    metrics = fakes.FakeMetrics(ports.Unavailable("never asked"), ports.Unavailable("never asked"))
    runtime = fakes.runtime_of(metrics=metrics)
    _run(runtime, check, _body(healing))
    after = _maintenance(runtime)
    assert (metrics.instant_queries, metrics.range_queries) == ([], [])
    assert tr.own_part(after, resource).get("reason") == reason
    assert (_requests_of(after, resource) == _requests_of(PREVIOUS, resource)) is kept
    for other in RESOURCES:
        if other is not resource:
            assert tr.own_part(after, other) == tr.own_part(PREVIOUS, other)
            assert _requests_of(after, other) == _requests_of(PREVIOUS, other)


def test_the_last_check_switched_off_removes_status_maintenance() -> None:
    only_restarts = {"restarts": {"reason": "Evaluated"}, "requests": [REQUESTS["restarts"]]}
    workloads = fakes.FakeWorkloads()
    runtime = fakes.runtime_of(workloads)
    _run(runtime, maintenance.check_restarts, _body({}, maintenance_status=only_restarts))
    assert workloads.patched[-1][1]["maintenance"] is None


@pytest.mark.parametrize(("check", "resource", "metrics"), CHECKS)
def test_recorded_requests_that_cannot_be_read_hold_the_check_and_say_so(
    check: Check, resource: tr.Resource, metrics: fakes.FakeMetrics
) -> None:
    """The stored-state rule (core/fields.py): an unreadable request is never read as new (it
    would be announced again with a fresh time); the check holds and its part says why."""
    broken = {**REQUESTS[resource.value], "requestedAt": "yesterday"}
    stored = {
        **PREVIOUS,
        "requests": [r if r is not REQUESTS[resource.value] else broken for r in REQUESTS.values()],
    }
    runtime = fakes.runtime_of(metrics=metrics)
    events = _run(runtime, check, _body(maintenance_status=stored))
    after = _maintenance(runtime)
    mine = tr.own_part(after, resource)
    assert mine["reason"] == "InvalidStatus" and "requestedAt" in mine["message"]
    assert after["requests"] == stored["requests"]  # nothing dropped, nothing added
    assert events == []
