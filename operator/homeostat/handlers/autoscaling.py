"""kopf wiring for autoscaling: one evaluation per service every ``spec.autoscaling.interval``.

The load metric and its history are read through the metrics port, the forecast is fitted in
the runtime's process pool, ``core.scaling`` decides, and the count is written through the
scale subresource. The periodic loop (``handlers.periodic``) runs the evaluation; status goes
through ``Runtime.write_status`` so the reconcile's keys and conditions are never touched.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from homeostat import ports
from homeostat.core import fields
from homeostat.core import forecast as fc
from homeostat.core import scaling as sc
from homeostat.core import spec as specs
from homeostat.handlers import runtime as rt

CONDITION = "Autoscaling"
SAMPLES_PER_BIN = 8
MAX_POINTS = 10_000

log = logging.getLogger("homeostat.autoscaling")


def _wants(body: Mapping[str, Any]) -> float | None:
    """Every interval while a mode is on or a forecast is shown; slowly, to clear what an
    earlier mode left behind, while the condition is shown; a spec that does not parse is
    retried slowly (and reported by the evaluation itself)."""
    raw = (body.get("spec") or {}).get("autoscaling") or {}
    status = body.get("status") or {}
    if (isinstance(raw, Mapping) and raw.get("mode", "Off") != "Off") or status.get("forecast"):
        try:
            return sc.parse(raw).interval
        except specs.SpecError:
            return rt.INVALID_RETRY
    return rt.INVALID_RETRY if _has_condition(status) else None


def _basis(status: Mapping[str, Any]) -> tuple[bool, bool]:
    return bool(status.get("forecast")), _has_condition(status)


def _has_condition(status: Mapping[str, Any]) -> bool:
    return any(c.get("type") == CONDITION for c in status.get("conditions") or [])


def _condition(status: str, reason: str, message: str, generation: int) -> dict[str, Any]:
    return {
        "type": CONDITION,
        "status": status,
        "reason": reason,
        "message": message[:4096],
        "observedGeneration": generation,
    }


def _previous_condition(status: Mapping[str, Any]) -> Mapping[str, Any]:
    for cond in status.get("conditions") or []:
        if cond.get("type") == CONDITION:
            return cond  # type: ignore[no-any-return]
    return {}


def _total(samples: Sequence[ports.Sample]) -> float | None:
    """The service's load: the sum over the series the query returns; None without data."""
    if not samples:
        return None
    values = [s.value for s in samples]
    return math.fsum(values) if all(math.isfinite(v) for v in values) else None


def _history(series: Sequence[ports.Series]) -> tuple[list[float], list[float]]:
    """One series from several: values at the same timestamp are summed."""
    totals: dict[float, float] = {}
    for one in series:
        for t, v in one.points:
            totals[t] = totals.get(t, 0.0) + v
    times = sorted(totals)
    return times, [totals[t] for t in times]


@rt.periodic("autoscaling", wants=_wants, basis=_basis)
async def autoscale(runtime: rt.Runtime, indexes: Mapping[str, Any], body: Mapping[str, Any]) -> None:
    meta = body["metadata"]
    generation = int(meta.get("generation", 0))
    raw = body.get("spec") or {}
    status = runtime.status_of(body)
    try:
        auto = sc.parse(raw.get("autoscaling"))
        service = specs.parse(raw)
    except specs.SpecError as exc:
        invalid = _condition("False", "InvalidSpec", f"{exc.field}: {exc}", generation)
        await runtime.write_status(body, {}, [invalid])
        return
    if auto.mode is sc.ScalingMode.OFF:
        off = _condition("False", sc.ScalingReason.OFF.value, "spec.autoscaling.mode is Off", generation)
        await runtime.write_status(body, {"forecast": None, "autoscaling": None}, [off])
        return

    now = runtime.clock()
    current = service.replicas.desired if service.replicas.desired is not None else service.replicas.effective
    saved = status.get("autoscaling") or {}
    try:
        previous_state = sc.ScalingState.from_dict(saved.get("scaling"))
    except fields.StorageError as exc:
        # The record the rate policies and stabilisation window read: read as empty, a scale-in
        # could come at once. Hold, and say how to get out (core/fields.py, the stored-state rule).
        message = f"status.autoscaling.scaling cannot be read ({exc}); fix or clear it. Holding {current}"
        await runtime.write_status(body, {}, [_condition("False", "InvalidStatus", message, generation)])
        return
    decision, new_state, model, metric, why = await _evaluate(
        runtime, body, auto, service, current=current, saved=saved, state=previous_state, now=now
    )
    condition = _decision_condition(decision, why, generation)
    applied = False
    if decision.changed and auto.mode is not sc.ScalingMode.PREVIEW:
        # Write-ahead, as in healing: the scaling record the rate policies and stabilisation
        # window read is stored before the count changes, so a crash in between can only make
        # the next change wait, never let it come early.
        await runtime.write_status(body, {"autoscaling": {**saved, "scaling": new_state.to_dict()}})
        failure = await _apply(runtime, body, decision)
        if failure is None:
            applied = True
        else:
            condition = _condition("False", failure[0], failure[1], generation)
            new_state = previous_state  # nothing happened, so nothing to remember
    changes = sc.evaluation_status(decision, new_state, current=current, metric=metric, model=model, now=now)
    before = _previous_condition(runtime.status_of(body))
    await runtime.write_status(body, changes, [condition])
    _announce(runtime, body, decision, condition, before=before, applied=applied, saved=saved)
    namespace, name = meta["namespace"], meta["name"]
    capacity = decision.desired * auto.target_per_replica
    runtime.telemetry.scaled(
        namespace, name, decision.desired, decision.reason.value, load=metric, capacity=capacity
    )
    summary = decision.forecast
    if summary is not None:
        runtime.telemetry.forecast(
            namespace, name, mase=summary.mase, smape=summary.smape, peak=summary.predicted_peak
        )


async def _evaluate(
    runtime: rt.Runtime,
    body: Mapping[str, Any],
    auto: sc.AutoscalingSpec,
    service: specs.ServiceSpec,
    *,
    current: int,
    saved: Mapping[str, Any],
    state: sc.ScalingState,
    now: float,
) -> tuple[sc.ScalingDecision, sc.ScalingState, fc.ModelState | None, float | None, str]:
    """Read the metric (and, for a forecast, its history), then let the core decide."""
    meta = body["metadata"]
    query = fields.render_query(auto.query, namespace=meta["namespace"], service=meta["name"])
    metric, why = await _metric(runtime.metrics, query)
    model = fc.ModelState.from_dict(saved.get("model"))
    forecast: fc.Forecast | None = None
    if metric is not None and auto.mode in (sc.ScalingMode.PREDICTIVE, sc.ScalingMode.PREVIEW):
        forecast, model = await _forecast(runtime, query=query, auto=auto, model=model, now=now)
    decision, new_state = sc.decide(
        auto,
        current=current,
        bounds=service.replicas,
        metric=metric,
        forecast=forecast,
        state=state,
        now=now,
    )
    return decision, new_state, model, metric, why


async def _apply(
    runtime: rt.Runtime, body: Mapping[str, Any], decision: sc.ScalingDecision
) -> tuple[str, str] | None:
    """Write the count through the scale subresource; the reason and message if that failed."""
    try:
        await runtime.scaler.scale(rt.owner_of(body), decision.desired)
    except (ports.Rejected, ports.Unavailable) as exc:
        reason = "ScaleRejected" if isinstance(exc, ports.Rejected) else "ScaleFailed"
        return reason, f"could not scale {decision.current} -> {decision.desired}: {exc}"
    return None


def _announce(
    runtime: rt.Runtime,
    body: Mapping[str, Any],
    decision: sc.ScalingDecision,
    condition: Mapping[str, Any],
    *,
    before: Mapping[str, Any],
    applied: bool,
    saved: Mapping[str, Any],
) -> None:
    """Events: every applied change, every new preview, and every change of the condition."""
    if applied:
        verb = "ScaledUp" if decision.desired > decision.current else "ScaledDown"
        runtime.event(body, "Normal", verb, f"{decision.reason.value}: {decision.message}")
    preview = decision.preview
    if preview is not None and preview != saved.get("preview") and preview != decision.current:
        runtime.event(body, "Normal", "PreviewScale", decision.message)
    if (before.get("status"), before.get("reason")) == (condition["status"], condition["reason"]):
        return
    if condition["status"] == "False":
        runtime.event(body, "Warning", condition["reason"], condition["message"])
    elif decision.reason in (
        sc.ScalingReason.FORECAST_UNRELIABLE,
        sc.ScalingReason.FORECAST_MISSING,
        sc.ScalingReason.HISTORY_TOO_SHORT,
    ):
        runtime.event(body, "Normal", decision.reason.value, condition["message"])


async def _metric(metrics: ports.MetricsProvider, query: str) -> tuple[float | None, str]:
    try:
        samples = await metrics.instant(query)
    except ports.Unavailable as exc:
        return None, f"the metrics backend is unavailable: {exc}"
    value = _total(samples)
    if value is None:
        return None, "the query returned no data" if not samples else "the query returned NaN"
    return value, ""


async def _forecast(
    runtime: rt.Runtime,
    *,
    query: str,
    auto: sc.AutoscalingSpec,
    model: fc.ModelState | None,
    now: float,
) -> tuple[fc.Forecast | None, fc.ModelState | None]:
    config = auto.forecast
    # Several samples per forecast bin, so a bin holds the mean load over its whole width rather
    # than one instant of it (a single sample per bin can sit anywhere in the bin and shift the
    # predicted rise by most of a step); capped well below Prometheus' 11,000 points a series.
    resolution = max(config.step / SAMPLES_PER_BIN, config.history / MAX_POINTS)
    start = math.floor((now - config.history) / resolution) * resolution
    try:
        series = await runtime.metrics.range(query, start, now, resolution)
    except ports.Unavailable as exc:
        log.warning("history of %r unavailable: %s", query, exc)
        return None, model
    times, values = _history(series)
    try:
        return await runtime.pool.compute(
            fc.forecast, times, values, now=now, horizon=auto.horizon, config=config, state=model
        )
    except Exception:  # a broken pool or a bug in a fit must not stop reactive scaling
        log.exception("forecast failed")
        return None, model


def _decision_condition(decision: sc.ScalingDecision, why: str, generation: int) -> dict[str, Any]:
    if decision.reason is sc.ScalingReason.METRIC_UNAVAILABLE:
        message = f"holding {decision.current} replicas: {why or decision.message}"
        return _condition("False", decision.reason.value, message, generation)
    return _condition("True", decision.reason.value, decision.message, generation)
