"""The whole ReplicatedService spec checked at once, for the basic reconcile.

Each loop parses only its own block (the autoscaler ``spec.autoscaling``, maintenance
``spec.healing``), and reported a bad block only on its own condition: a service showed
``Degraded=False`` and phase Ready with an InvalidSpec on the ``Autoscaling`` condition (issue
14.8). The reconcile parses the spec through ``parse`` here, so any ``SpecError`` of any block
shows on ``Degraded`` and in the phase. The rules the CRD states in CEL for whole-spec
consistency are repeated, for a CRD older than the operator (issue 14.6).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from homeostat.core import forecast as fc
from homeostat.core import maintenance as mt
from homeostat.core import remediation as rem
from homeostat.core import rollout as ro
from homeostat.core import scaling as sc
from homeostat.core import spec as specs
from homeostat.core import trends as tr

_PLACEHOLDER = re.compile(r"\{\{[^{}]*\}\}")
_ROLLOUT_PLACEHOLDERS = frozenset({"{{service}}", "{{namespace}}", "{{revision}}"})
_SERVICE_PLACEHOLDERS = frozenset({"{{service}}", "{{namespace}}"})
MAX_STABILIZATION_WINDOW = 3600.0  # seconds, as the HorizontalPodAutoscaler allows
MAX_PAUSE = 720 * 3600.0  # seconds: a canary step held for more than 30 days is a typo
_SEASON = {fc.Seasonality.DAILY: 86400.0, fc.Seasonality.WEEKLY: 7 * 86400.0}


def parse(raw: Mapping[str, Any]) -> specs.ServiceSpec:
    """The ``ServiceSpec``, after every block of ``raw`` parsed; else the first ``SpecError``."""
    service = specs.parse(raw)
    _check_images(raw.get("template") or {})
    _check_rollout(raw.get("rollout"))
    _check_autoscaling(sc.parse(raw.get("autoscaling")))
    _check_queries(raw)
    healing = raw.get("healing")
    memory_ceiling = rem.parse_healing(healing).max_memory
    if memory_ceiling is not None and memory_ceiling <= 0:
        raise specs.SpecError("spec.healing.oom.maxMemory", "must be a positive quantity, such as 2Gi")
    mt.parse(healing, raw.get("template"))
    for trend in (tr.parse_restarts, tr.parse_disk, tr.parse_risk):
        trend(healing)
    return service


def _check_images(template: Mapping[str, Any]) -> None:
    for i, container in enumerate((template.get("spec") or {}).get("containers") or []):
        if any(ch.isspace() for ch in str(container.get("image", ""))):
            raise specs.SpecError(f"spec.template.spec.containers[{i}].image", "must not contain whitespace")


def _check_rollout(raw: Mapping[str, Any] | None) -> None:
    rollout = ro.parse_rollout_spec(raw)
    if raw and raw.get("canary") is not None and raw.get("blueGreen") is not None:
        raise specs.SpecError(
            "spec.rollout.blueGreen", "canary and blueGreen are mutually exclusive; set only the strategy's"
        )
    for i, step in enumerate(rollout.steps):
        if step.pause is not None and step.pause > MAX_PAUSE:
            raise specs.SpecError(f"spec.rollout.canary.steps[{i}].pause", "must be at most 720h (30 days)")


def _check_autoscaling(auto: sc.AutoscalingSpec) -> None:
    field = "spec.autoscaling"
    for name, rules in (("scaleUp", auto.behavior.scale_up), ("scaleDown", auto.behavior.scale_down)):
        if rules.stabilization_window > MAX_STABILIZATION_WINDOW:
            raise specs.SpecError(
                f"{field}.behavior.{name}.stabilizationWindow", "must be at most 1h (3600s), as in an HPA"
            )
    forecast = auto.forecast
    season = _SEASON.get(forecast.seasonality, 0.0)
    if forecast.history < season:
        raise specs.SpecError(f"{field}.forecast.history", f"must cover one seasonal period ({season:g}s)")
    if len(forecast.candidate_periods) == 1 and forecast.history < forecast.candidate_periods[0]:
        raise specs.SpecError(f"{field}.forecast.history", f"must be at least {field}.forecast.period")


def _queries(raw: Mapping[str, Any]) -> Iterator[tuple[str, Any, frozenset[str]]]:
    rollout = raw.get("rollout") or {}
    for i, metric in enumerate((rollout.get("analysis") or {}).get("metrics") or []):
        yield f"spec.rollout.analysis.metrics[{i}].query", metric.get("query"), _ROLLOUT_PLACEHOLDERS
    slo = rollout.get("slo") or {}
    yield "spec.rollout.slo.errorRatioQuery", slo.get("errorRatioQuery"), _ROLLOUT_PLACEHOLDERS
    metric = (raw.get("autoscaling") or {}).get("metric") or {}
    yield "spec.autoscaling.metric.query", metric.get("query"), _SERVICE_PLACEHOLDERS


def _check_queries(raw: Mapping[str, Any]) -> None:
    for field, query, known in _queries(raw):
        unknown = sorted(set(_PLACEHOLDER.findall(query)) - known) if isinstance(query, str) else []
        if unknown:
            allowed = ", ".join(sorted(known))
            raise specs.SpecError(field, f"unknown placeholder {unknown[0]}; the placeholders are {allowed}")
