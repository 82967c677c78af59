"""The autoscaling evaluation (handlers.autoscaling.autoscale) over fake ports: the metric in,
the scale call, status.autoscaling, the Autoscaling condition and the Events out (issue 15)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import fakes
import pytest
from fakes import NOW

from homeostat import ports
from homeostat.core import children as kids
from homeostat.core import scaling as sc
from homeostat.handlers import autoscaling
from homeostat.handlers import runtime as rt

QUERY = 'sum(rate(http_requests_total{namespace="{{namespace}}", service="{{service}}"}[1m]))'
RENDERED = 'sum(rate(http_requests_total{namespace="prod", service="web"}[1m]))'
REACTIVE = {"mode": "Reactive", "metric": {"query": QUERY, "targetPerReplica": 10}}
OWNER = kids.Owner("web", "prod", "uid-web")
EARLIER = {"recommendations": [[NOW - 100, 2]], "events": []}  # a scaling state already stored


def _body(autoscaling_spec: Mapping[str, Any], status: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return fakes.service(
        replicas={"min": 1, "max": 10, "desired": 2}, autoscaling=dict(autoscaling_spec), status=status
    )


def _condition(status: Mapping[str, Any]) -> Mapping[str, Any]:
    found = [c for c in status.get("conditions") or [] if c["type"] == autoscaling.CONDITION]
    assert len(found) == 1, status.get("conditions")
    return found[0]


def _evaluate(runtime: rt.Runtime, body: Mapping[str, Any]) -> list[fakes.PostedEvent]:
    async def scenario() -> list[fakes.PostedEvent]:
        await autoscaling.autoscale(runtime, fakes.indexes(body), body)
        return await fakes.posted(runtime)

    return fakes.run(scenario())


def test_a_reactive_scale_up_scales_records_and_announces() -> None:
    metrics, scaler, workloads = (
        fakes.FakeMetrics(fakes.samples(30.0, 20.0)),
        fakes.FakeScaler(),
        fakes.FakeWorkloads(),
    )
    runtime = fakes.runtime_of(workloads, metrics=metrics, scaler=scaler)
    body = _body(REACTIVE)
    events = _evaluate(runtime, body)

    assert metrics.instant_queries == [RENDERED]
    assert scaler.calls == [(OWNER, 5)]  # 50 over 10 per replica
    status = runtime.reported["uid-web"]
    assert {k: status["autoscaling"][k] for k in ("current", "desired", "reactive", "reason", "metric")} == {
        "current": 2,
        "desired": 5,
        "reactive": 5,
        "reason": "Reactive",
        "metric": 50.0,
    }
    assert status["autoscaling"]["scaling"]["events"] == [[NOW, 3]]
    assert (_condition(status)["status"], _condition(status)["reason"]) == ("True", "Reactive")
    assert [(e.type, e.reason) for e in events] == [("Normal", "ScaledUp")]
    assert events[0].involved["uid"] == "uid-web"
    # Write-ahead: the scaling record is stored before the count changes, then the evaluation.
    assert len(workloads.patched) == 2
    assert workloads.patched[0][1]["autoscaling"]["scaling"]["events"] == [[NOW, 3]]
    assert "desired" not in workloads.patched[0][1]["autoscaling"]


def test_a_service_within_tolerance_is_left_alone_and_nothing_is_announced() -> None:
    scaler = fakes.FakeScaler()
    runtime = fakes.runtime_of(metrics=fakes.FakeMetrics(fakes.samples(20.0)), scaler=scaler)
    events = _evaluate(runtime, _body(REACTIVE))
    assert scaler.calls == []
    assert runtime.reported["uid-web"]["autoscaling"]["desired"] == 2
    assert events == []


INVALID = [
    # (spec.autoscaling, the field the condition names)
    ({"mode": "Reactive"}, "spec.autoscaling.metric.query"),
    ({"mode": "Sometimes", "metric": {"query": QUERY, "targetPerReplica": 1}}, "spec.autoscaling.mode"),
    ({"mode": "Reactive", "metric": {"query": QUERY, "targetPerReplica": 0}}, "targetPerReplica"),
    ({"mode": "Reactive", "metric": {"query": QUERY, "targetPerReplica": 1}, "interval": 5}, "interval"),
]


@pytest.mark.parametrize(("spec", "field"), INVALID)
def test_an_invalid_spec_is_a_condition_and_never_a_scale(spec: Mapping[str, Any], field: str) -> None:
    metrics, scaler = fakes.FakeMetrics(fakes.samples(500.0)), fakes.FakeScaler()
    runtime = fakes.runtime_of(metrics=metrics, scaler=scaler)
    _evaluate(runtime, _body(spec, status={"autoscaling": {"desired": 3}}))
    status = runtime.reported["uid-web"]
    condition = _condition(status)
    assert (condition["status"], condition["reason"]) == ("False", "InvalidSpec")
    assert field in condition["message"]
    assert condition["observedGeneration"] == 1
    assert scaler.calls == [] and metrics.instant_queries == []
    assert status["autoscaling"] == {"desired": 3}  # what an earlier evaluation wrote stays


UNAVAILABLE = [
    # (the metrics backend's answer, what the condition says)
    (ports.Unavailable("connection refused"), "the metrics backend is unavailable: connection refused"),
    ((), "the query returned no data"),
    (fakes.samples(float("nan")), "the query returned NaN"),
]


@pytest.mark.parametrize(("answer", "why"), UNAVAILABLE)
def test_without_a_metric_the_replicas_are_held(answer: Any, why: str) -> None:
    scaler = fakes.FakeScaler()
    runtime = fakes.runtime_of(metrics=fakes.FakeMetrics(answer), scaler=scaler)
    events = _evaluate(runtime, _body(REACTIVE, status={"autoscaling": {"scaling": EARLIER}}))
    status = runtime.reported["uid-web"]
    condition = _condition(status)
    assert (condition["status"], condition["reason"]) == ("False", "MetricUnavailable")
    assert condition["message"] == f"holding 2 replicas: {why}"
    assert scaler.calls == []
    assert (status["autoscaling"]["desired"], status["autoscaling"]["metric"]) == (2, None)
    assert status["autoscaling"]["scaling"] == EARLIER
    assert [(e.type, e.reason) for e in events] == [("Warning", "MetricUnavailable")]


def test_a_metric_outage_is_announced_once_not_on_every_evaluation() -> None:
    runtime = fakes.runtime_of(metrics=fakes.FakeMetrics(ports.Unavailable("down")))
    body = _body(REACTIVE)

    async def scenario() -> list[fakes.PostedEvent]:
        for _ in range(3):
            await autoscaling.autoscale(runtime, fakes.indexes(body), body)
        return await fakes.posted(runtime)

    assert [e.reason for e in fakes.run(scenario())] == ["MetricUnavailable"]


REFUSED = [
    (ports.Rejected("spec.replicas.desired: must be at most 4"), "ScaleRejected"),
    (ports.Unavailable("the API server is down"), "ScaleFailed"),
]


@pytest.mark.parametrize(("error", "reason"), REFUSED)
def test_a_refused_scale_is_a_condition_and_the_scaling_state_does_not_advance(
    error: Exception, reason: str
) -> None:
    scaler = fakes.FakeScaler(error=error)
    workloads = fakes.FakeWorkloads()
    runtime = fakes.runtime_of(workloads, metrics=fakes.FakeMetrics(fakes.samples(50.0)), scaler=scaler)
    events = _evaluate(runtime, _body(REACTIVE, status={"autoscaling": {"scaling": EARLIER}}))

    assert scaler.calls == [(OWNER, 5)]
    status = runtime.reported["uid-web"]
    condition = _condition(status)
    assert (condition["status"], condition["reason"]) == ("False", reason)
    assert str(error) in condition["message"] and "2 -> 5" in condition["message"]
    # The write-ahead record is taken back: nothing happened, so nothing is remembered.
    assert status["autoscaling"]["scaling"] == EARLIER
    assert workloads.patched[-1][1]["autoscaling"]["scaling"] == EARLIER
    assert [(e.type, e.reason) for e in events] == [("Warning", reason)]


def test_without_a_configured_scaler_the_scale_fails_visibly() -> None:
    runtime = fakes.runtime_of(metrics=fakes.FakeMetrics(fakes.samples(50.0)))  # ports.NoScaler
    events = _evaluate(runtime, _body(REACTIVE))
    assert _condition(runtime.reported["uid-web"])["reason"] == "ScaleFailed"
    assert [e.reason for e in events] == ["ScaleFailed"]


def test_mode_off_clears_what_an_earlier_mode_left() -> None:
    earlier = {
        "phase": "Ready",
        "autoscaling": {"desired": 5, "scaling": EARLIER},
        "forecast": {"method": "HoltWinters", "mode": "Predictive"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "Available"}],
    }
    workloads, metrics, scaler = (
        fakes.FakeWorkloads(),
        fakes.FakeMetrics(fakes.samples(50.0)),
        fakes.FakeScaler(),
    )
    runtime = fakes.runtime_of(workloads, metrics=metrics, scaler=scaler)
    _evaluate(runtime, _body({"mode": "Off"}, status=earlier))

    [(_, patch)] = workloads.patched
    assert patch["autoscaling"] is None and patch["forecast"] is None
    assert "phase" not in patch  # the reconcile's keys are not written
    status = runtime.reported["uid-web"]
    assert [c["type"] for c in status["conditions"]] == ["Ready", "Autoscaling"]
    assert (_condition(status)["status"], _condition(status)["reason"]) == (
        "False",
        sc.ScalingReason.OFF.value,
    )
    assert scaler.calls == [] and metrics.instant_queries == []


def test_mode_off_twice_patches_once() -> None:
    workloads = fakes.FakeWorkloads()
    runtime = fakes.runtime_of(workloads)
    body = _body({"mode": "Off"}, status={"autoscaling": {"desired": 5}})

    async def scenario() -> None:
        await autoscaling.autoscale(runtime, fakes.indexes(body), body)
        await autoscaling.autoscale(runtime, fakes.indexes(body), body)

    fakes.run(scenario())
    assert len(workloads.patched) == 1


def test_preview_reports_what_it_would_do_and_scales_nothing() -> None:
    spec = {**REACTIVE, "mode": "Preview"}
    metrics, scaler = fakes.FakeMetrics(fakes.samples(50.0), range_answer=()), fakes.FakeScaler()
    runtime = fakes.runtime_of(metrics=metrics, scaler=scaler)
    events = _evaluate(runtime, _body(spec))
    status = runtime.reported["uid-web"]
    assert scaler.calls == []
    assert (status["autoscaling"]["desired"], status["autoscaling"]["preview"]) == (2, 5)
    assert status["forecast"]["mode"] == "Preview"
    assert len(metrics.range_queries) == 1  # the history for the forecast
    assert "PreviewScale" in [e.reason for e in events]
    assert "ScaledUp" not in [e.reason for e in events]


def test_the_evaluation_keeps_the_reconciles_status_and_conditions() -> None:
    earlier = {
        "phase": "Ready",
        "replicas": 2,
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Available", "lastTransitionTime": "t0"}
        ],
    }
    runtime = fakes.runtime_of(metrics=fakes.FakeMetrics(fakes.samples(50.0)), scaler=fakes.FakeScaler())
    _evaluate(runtime, _body(REACTIVE, status=earlier))
    status = runtime.reported["uid-web"]
    assert (status["phase"], status["replicas"]) == ("Ready", 2)
    assert status["conditions"][0] == earlier["conditions"][0]


def test_a_stored_scaling_record_that_cannot_be_read_holds_and_says_so() -> None:
    """The stored-state rule (core/fields.py): read as empty, the stabilisation window would be
    forgotten and a scale-in could come at once; the evaluation holds instead."""
    scaler = fakes.FakeScaler()
    runtime = fakes.runtime_of(metrics=fakes.FakeMetrics(fakes.samples(1.0)), scaler=scaler)
    body = _body(REACTIVE, status={"autoscaling": {"scaling": {"events": [["soon", 1]]}}})
    _evaluate(runtime, body)
    assert scaler.calls == []
    condition = _condition(runtime.reported["uid-web"])
    assert (condition["status"], condition["reason"]) == ("False", "InvalidStatus")
    assert "status.autoscaling.scaling" in condition["message"]
