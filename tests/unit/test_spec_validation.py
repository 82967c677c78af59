"""The basic reconcile judges the whole spec (issue 14.8, and 14.6 behind the CRD).

An InvalidSpec found in one block (an autoscaling quantile, a forecast period under two steps)
showed only on that loop's own condition while ``Degraded`` said False and the phase Ready. The
reconcile's plan must carry the SpecError of any block, which the report turns into
``Degraded=True/InvalidSpec`` and phase InvalidSpec naming the field.
"""

from __future__ import annotations

import asyncio
import collections
import copy
from typing import Any

import pytest

from homeostat.core import children as kids
from homeostat.core import reconcile as rec
from homeostat.core import spec as specs
from homeostat.core import validation
from homeostat.handlers import replicatedservice as rs
from homeostat.handlers import runtime as rt

OWNER = kids.Owner("web", "prod", "uid-1")
SPEC: dict[str, Any] = {
    "template": {
        "metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]},
    },
    "replicas": {"min": 2, "max": 6},
}


def _with(path: str, value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(SPEC)
    *parents, leaf = path.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return spec


def _planned(spec: dict[str, Any]) -> specs.ServiceSpec | specs.SpecError:
    body = {"metadata": {"name": OWNER.name, "namespace": OWNER.namespace, "uid": OWNER.uid}, "spec": spec}
    runtime = rt.Runtime(workloads=None, credentials=lambda: None)  # type: ignore[arg-type]
    indexes: Any = collections.defaultdict(dict)
    planned = asyncio.run(rs._plan(OWNER, body, previous={}, observed={}, runtime=runtime, indexes=indexes))
    return planned.spec


INVALID = [
    ("autoscaling.forecast.quantile", 0.1, "spec.autoscaling.forecast.quantile"),
    ("autoscaling.forecast", {"period": "5m", "step": "5m"}, "spec.autoscaling.forecast.period"),
    ("healing.predictiveMaintenance", {"memory": {"window": "soon"}}, "spec.healing.predictiveMaintenance"),
    ("rollout", {"canary": {"steps": [{"weight": 10}]}, "blueGreen": {}}, "spec.rollout.blueGreen"),
    (
        "rollout.analysis",
        {"metrics": [{"name": "e", "query": "x{p='{{pod}}'}", "max": 1}]},
        "metrics[0].query",
    ),
    (
        "autoscaling.metric",
        {"query": "rate({{svc}}[1m])", "targetPerReplica": 5},
        "spec.autoscaling.metric.query",
    ),
    ("healing.oom", {"maxMemory": "-1Gi"}, "spec.healing.oom.maxMemory"),
    ("autoscaling.behavior", {"scaleDown": {"stabilizationWindow": "2h"}}, "scaleDown.stabilizationWindow"),
    (
        "autoscaling.forecast",
        {"seasonality": "Weekly", "history": "72h"},
        "spec.autoscaling.forecast.history",
    ),
    ("autoscaling.forecast", {"period": "6h", "history": "2h"}, "spec.autoscaling.forecast.history"),
    (
        "rollout",
        {"strategy": "Canary", "canary": {"steps": [{"weight": 5, "pause": "9999h"}]}},
        "steps[0].pause",
    ),
]


@pytest.mark.parametrize(("path", "value", "field"), INVALID, ids=[f for *_, f in INVALID])
def test_an_invalid_block_is_invalid_spec_on_degraded(path: str, value: Any, field: str) -> None:
    spec = _planned(_with(path, value))
    assert isinstance(spec, specs.SpecError), f"planned as valid: {path}={value!r}"
    assert field in spec.field
    report = rec.report(
        owner=OWNER,
        generation=3,
        spec=spec,
        applies=(),
        outcome=rec.ApplyOutcome(),
        deployment=None,
        previous={},
        now="2026-12-07T00:00:00Z",
    )
    degraded = next(c for c in report.status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "InvalidSpec")
    assert field in degraded["message"]
    assert report.status["phase"] == "InvalidSpec"


def test_a_valid_spec_still_plans() -> None:
    assert isinstance(_planned(SPEC), specs.ServiceSpec)
    full = _with(
        "autoscaling", {"mode": "Reactive", "metric": {"query": 'x{s="{{service}}"}', "targetPerReplica": 5}}
    )
    assert isinstance(validation.parse(full), specs.ServiceSpec)


def test_an_unset_desired_is_defaulted_to_min_on_the_version_judged() -> None:
    assert specs.default_desired(SPEC, "41") == [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "41"},
        {"op": "add", "path": "/spec/replicas/desired", "value": 2},
    ]
    assert specs.default_desired(_with("replicas.desired", 4), "41") is None
    assert specs.default_desired({**SPEC, "replicas": {"min": 5, "max": 3}}, "41") is None
    assert specs.default_desired({"template": SPEC["template"]}, "41") is None  # no replicas block
    assert specs.default_desired(SPEC, None) is None
