"""The ReplicatedService CRD rejects bad specs at admission, and says which field is wrong.

The schema and CEL rules are the user's first line of feedback (ADR 0003): a typo should fail
`kubectl apply` with a message naming the field, not become a confusing condition minutes
later. Only a real API server can tell whether a rule compiles, fits the cost budget and fires,
so each case is sent with `kubectl apply --dry-run=server`. A valid base is patched per case;
the base itself must pass, or every rejection below would prove nothing.
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("crds_installed")]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

DELETE = object()
"""Patch value that removes the key from the base instead of setting it."""

BASE: dict[str, Any] = {
    "apiVersion": "homeostat.dev/v1alpha1",
    "kind": "ReplicatedService",
    "metadata": {"name": "subject"},
    "spec": {
        "template": {
            "metadata": {"labels": {"app": "subject"}},
            "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]},
        },
        "ports": [{"name": "http", "port": 8080}],
        "replicas": {"min": 2, "max": 6},
    },
}


def merge(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``patch`` into a copy of ``base``: maps merge, lists and scalars replace."""
    out = copy.deepcopy(dict(base))
    for key, value in patch.items():
        if value is DELETE:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def with_spec(**spec: Any) -> dict[str, Any]:
    return merge(BASE, {"spec": spec})


def apply(
    cluster: Cluster, namespace: str, obj: Mapping[str, Any], *, dry_run: bool = True
) -> subprocess.CompletedProcess[str]:
    args = ["apply", "-n", namespace, "-f", "-"]
    if dry_run:
        args.insert(1, "--dry-run=server")
    return cluster.kubectl(*args, input=json.dumps(obj), check=False)


CANARY = {"strategy": "Canary", "canary": {"steps": [{"weight": 10}, {"weight": 50, "pause": "5m"}]}}
METRIC = {"query": "sum(rate(http_requests_total[2m]))", "targetPerReplica": 50}
ERROR_RATE = {"name": "error-rate", "query": "vector(0)", "max": 0.01}

INVALID = [
    pytest.param(merge(BASE, {"spec": DELETE}), "spec", id="no-spec"),
    pytest.param(with_spec(template=DELETE), "spec.template", id="no-template"),
    pytest.param(
        with_spec(template={"spec": {"containers": []}}), "spec.template.spec.containers", id="no-containers"
    ),
    pytest.param(
        with_spec(template={"spec": {"containers": [{"name": "app"}]}}),
        "spec.template.spec.containers[0].image",
        id="container-without-image",
    ),
    pytest.param(
        with_spec(
            template={
                "spec": {
                    "containers": [
                        {"name": "app", "image": "registry.k8s.io/pause:3.10"},
                        {"name": "app", "image": "registry.k8s.io/pause:3.10"},
                    ]
                }
            }
        ),
        "spec.template.spec.containers",
        id="duplicate-container-names",
    ),
    pytest.param(
        merge(BASE, {"metadata": {"name": "x" * 64}}),
        "metadata.name must be a DNS-1035 label",
        id="long-name",
    ),
    pytest.param(with_spec(replicas={"min": 5, "max": 3}), "spec.replicas.min", id="min-above-max"),
    pytest.param(with_spec(replicas={"min": 20}), "spec.replicas.max", id="min-above-default-max"),
    pytest.param(with_spec(replicas={"min": -1}), "spec.replicas.min", id="negative-min"),
    pytest.param(with_spec(replicas={"desired": 7}), "spec.replicas.desired", id="desired-above-max"),
    pytest.param(with_spec(replicas={"desired": 1}), "spec.replicas.desired", id="desired-below-min"),
    pytest.param(
        with_spec(ports=[{"name": "http", "port": 8080}, {"name": "alt", "port": 8080}]),
        "spec.ports",
        id="duplicate-port-number",
    ),
    pytest.param(
        with_spec(ports=[{"name": "http", "port": 8080}, {"name": "http", "port": 9090}]),
        "spec.ports[1]",
        id="duplicate-port-name",
    ),
    pytest.param(with_spec(ports=[{"name": "http", "port": 70000}]), "spec.ports[0].port", id="port-range"),
    pytest.param(
        with_spec(disruptionBudget={"maxUnavailable": 1, "minAvailable": 1}),
        "spec.disruptionBudget",
        id="budget-both",
    ),
    pytest.param(with_spec(disruptionBudget={}), "spec.disruptionBudget", id="budget-neither"),
    pytest.param(
        with_spec(disruptionBudget={"maxUnavailable": "lots"}),
        "spec.disruptionBudget.maxUnavailable",
        id="budget-not-a-percentage",
    ),
    pytest.param(with_spec(rollout={"strategy": "Recreate"}), "spec.rollout.strategy", id="unknown-strategy"),
    pytest.param(with_spec(rollout={"strategy": "Canary"}), "spec.rollout.canary", id="canary-without-steps"),
    pytest.param(
        with_spec(rollout={**CANARY, "canary": {"steps": [{"weight": 50}, {"weight": 20}]}}),
        "spec.rollout.canary.steps",
        id="canary-weights-decreasing",
    ),
    pytest.param(
        with_spec(rollout={**CANARY, "canary": {"steps": [{"weight": 20}, {"weight": 20}]}}),
        "spec.rollout.canary.steps",
        id="canary-weights-repeated",
    ),
    pytest.param(
        with_spec(rollout={**CANARY, "canary": {"steps": [{"weight": 0}]}}),
        "spec.rollout.canary.steps[0].weight",
        id="canary-weight-zero",
    ),
    pytest.param(
        with_spec(rollout={**CANARY, "canary": {"steps": [{"weight": 101}]}}),
        "spec.rollout.canary.steps[0].weight",
        id="canary-weight-over-100",
    ),
    pytest.param(
        with_spec(rollout={**CANARY, "canary": {"steps": [{"weight": 10, "pause": "5 minutes"}]}}),
        "spec.rollout.canary.steps[0].pause",
        id="canary-pause-not-a-duration",
    ),
    pytest.param(
        with_spec(rollout={"trafficRouting": {"type": "GatewayAPI"}}),
        "spec.rollout.trafficRouting.gatewayAPI",
        id="gateway-without-route",
    ),
    pytest.param(
        with_spec(rollout={"analysis": {"interval": "0s"}}),
        "spec.rollout.analysis.interval",
        id="analysis-interval-zero",
    ),
    pytest.param(
        with_spec(rollout={"analysis": {"interval": "30"}}),
        "spec.rollout.analysis.interval",
        id="analysis-interval-no-unit",
    ),
    pytest.param(
        with_spec(rollout={"analysis": {"metrics": [{"name": "error-rate", "query": "vector(0)"}]}}),
        "spec.rollout.analysis.metrics[0]",
        id="metric-without-bounds",
    ),
    pytest.param(
        with_spec(rollout={"analysis": {"metrics": [{**ERROR_RATE, "min": 1, "max": 0}]}}),
        "spec.rollout.analysis.metrics[0]",
        id="metric-min-above-max",
    ),
    pytest.param(
        with_spec(rollout={"analysis": {"metrics": [ERROR_RATE, ERROR_RATE]}}),
        "spec.rollout.analysis.metrics[1]",
        id="metric-names-repeated",
    ),
    pytest.param(
        with_spec(rollout={"slo": {"errorRatioQuery": "vector(0)", "objective": 1}}),
        "spec.rollout.slo.objective",
        id="slo-objective-one",
    ),
    pytest.param(with_spec(autoscaling={"mode": "Sometimes"}), "spec.autoscaling.mode", id="unknown-mode"),
    pytest.param(
        with_spec(autoscaling={"mode": "Reactive"}), "spec.autoscaling.metric", id="reactive-no-metric"
    ),
    pytest.param(
        with_spec(autoscaling={"mode": "Predictive"}), "spec.autoscaling.metric", id="predictive-no-metric"
    ),
    pytest.param(
        with_spec(autoscaling={"mode": "Preview"}), "spec.autoscaling.metric", id="preview-no-metric"
    ),
    pytest.param(
        with_spec(autoscaling={"mode": "Reactive", "metric": {**METRIC, "targetPerReplica": 0}}),
        "spec.autoscaling.metric.targetPerReplica",
        id="target-per-replica-zero",
    ),
    pytest.param(
        with_spec(autoscaling={"interval": "0s"}), "spec.autoscaling.interval", id="autoscaling-interval-zero"
    ),
    pytest.param(
        with_spec(autoscaling={"tolerance": 1.5}), "spec.autoscaling.tolerance", id="tolerance-over-1"
    ),
    pytest.param(
        with_spec(autoscaling={"forecast": {"quantile": 0.3}}),
        "spec.autoscaling.forecast.quantile",
        id="quantile-low",
    ),
    pytest.param(
        with_spec(autoscaling={"forecast": {"quantile": 0.9999}}),
        "spec.autoscaling.forecast.quantile",
        id="quantile-high",
    ),
    pytest.param(
        with_spec(autoscaling={"forecast": {"history": "0h"}}),
        "spec.autoscaling.forecast.history",
        id="history-zero",
    ),
    pytest.param(
        with_spec(
            autoscaling={
                "behavior": {"scaleUp": {"policies": [{"type": "Pods", "value": 0, "period": "1m"}]}}
            }
        ),
        "spec.autoscaling.behavior.scaleUp.policies[0].value",
        id="scaling-policy-value-zero",
    ),
    pytest.param(
        with_spec(healing={"predictiveMaintenance": {"threshold": 0.5}}),
        "spec.healing.predictiveMaintenance.query",
        id="predictive-maintenance-without-query",
    ),
    pytest.param(
        with_spec(healing={"oom": {"maxMemory": "lots"}}), "spec.healing.oom.maxMemory", id="oom-max-memory"
    ),
    pytest.param(
        with_spec(approvals={"timeout": "0s"}), "spec.approvals.timeout", id="approval-timeout-zero"
    ),
    pytest.param(
        with_spec(approvals={"slack": {}}), "spec.approvals.slack.channel", id="slack-without-channel"
    ),
    # Issue 14, item 6: specs that were accepted and then reported Ready.
    pytest.param(
        with_spec(rollout={**CANARY, "blueGreen": {"autoPromote": True}}),
        "spec.rollout.canary and spec.rollout.blueGreen are mutually exclusive",
        id="canary-and-blue-green",
    ),
    pytest.param(
        with_spec(rollout={"strategy": "BlueGreen", "blueGreen": {}, "canary": CANARY["canary"]}),
        "spec.rollout.canary and spec.rollout.blueGreen are mutually exclusive",
        id="blue-green-and-canary",
    ),
    pytest.param(
        with_spec(rollout={"analysis": {"metrics": [{**ERROR_RATE, "query": 'up{pod="{{pod}}"}'}]}}),
        "spec.rollout.analysis.metrics[0].query",
        id="metric-unknown-placeholder",
    ),
    pytest.param(
        with_spec(rollout={"slo": {"errorRatioQuery": 'err{svc="{{svc}}"}', "objective": 0.99}}),
        "spec.rollout.slo.errorRatioQuery",
        id="slo-unknown-placeholder",
    ),
    pytest.param(
        with_spec(autoscaling={"mode": "Reactive", "metric": {**METRIC, "query": "rate({{revision}}[1m])"}}),
        "spec.autoscaling.metric.query",
        id="autoscaling-unknown-placeholder",
    ),
    pytest.param(
        with_spec(healing={"oom": {"maxMemory": "-1Gi"}}),
        "spec.healing.oom.maxMemory must be a positive quantity",
        id="oom-max-memory-negative",
    ),
    pytest.param(
        with_spec(healing={"oom": {"maxMemory": -5}}),
        "spec.healing.oom.maxMemory must be a positive quantity",
        id="oom-max-memory-negative-int",
    ),
    pytest.param(
        with_spec(autoscaling={"behavior": {"scaleDown": {"stabilizationWindow": "3601s"}}}),
        "spec.autoscaling.behavior.scaleDown.stabilizationWindow must be at most 1h",
        id="scale-down-window-over-an-hour",
    ),
    pytest.param(
        with_spec(autoscaling={"behavior": {"scaleUp": {"stabilizationWindow": "2h"}}}),
        "spec.autoscaling.behavior.scaleUp.stabilizationWindow must be at most 1h",
        id="scale-up-window-over-an-hour",
    ),
    pytest.param(
        with_spec(autoscaling={"forecast": {"seasonality": "Weekly", "history": "72h"}}),
        "spec.autoscaling.forecast.history must cover at least one seasonal period",
        id="history-shorter-than-a-week",
    ),
    pytest.param(
        with_spec(autoscaling={"forecast": {"seasonality": "Daily", "history": "12h"}}),
        "spec.autoscaling.forecast.history must cover at least one seasonal period",
        id="history-shorter-than-a-day",
    ),
    pytest.param(
        with_spec(autoscaling={"forecast": {"period": "6h", "history": "2h"}}),
        "spec.autoscaling.forecast.history must be at least spec.autoscaling.forecast.period",
        id="history-shorter-than-period",
    ),
    pytest.param(
        with_spec(autoscaling={"forecast": {"period": "5m", "step": "5m"}}),
        "spec.autoscaling.forecast.period must be at least two steps",
        id="period-under-two-steps",
    ),
    pytest.param(
        with_spec(rollout={**CANARY, "canary": {"steps": [{"weight": 10, "pause": "9999999999h"}]}}),
        "spec.rollout.canary.steps[0].pause",
        id="canary-pause-overflows",
    ),
    pytest.param(
        with_spec(rollout={**CANARY, "canary": {"steps": [{"weight": 10, "pause": "721h"}]}}),
        "spec.rollout.canary.steps pause must be at most 720h",
        id="canary-pause-over-30-days",
    ),
    pytest.param(
        with_spec(
            template={"spec": {"containers": [{"name": "app", "image": " registry.k8s.io/pause:3.10"}]}}
        ),
        "spec.template.spec.containers image must not contain whitespace",
        id="image-leading-whitespace",
    ),
    # Item 7: whole numbers were checked against the fractional bounds cut to whole numbers.
    pytest.param(
        with_spec(autoscaling={"forecast": {"quantile": 0}}),
        "spec.autoscaling.forecast.quantile must be between 0.5 and 0.999",
        id="quantile-zero",
    ),
    pytest.param(
        with_spec(autoscaling={"forecast": {"quantile": 1}}),
        "spec.autoscaling.forecast.quantile must be between 0.5 and 0.999",
        id="quantile-one",
    ),
]

EDGES = [
    pytest.param({"autoscaling": {"forecast": {"quantile": 0.5}}}, id="quantile-0.5"),
    pytest.param({"autoscaling": {"forecast": {"quantile": 0.999}}}, id="quantile-0.999"),
    pytest.param({"autoscaling": {"behavior": {"scaleDown": {"stabilizationWindow": "1h"}}}}, id="window-1h"),
    pytest.param(
        {"autoscaling": {"forecast": {"seasonality": "Daily", "history": "24h"}}}, id="history-a-day"
    ),
    pytest.param({"autoscaling": {"forecast": {"period": "10m", "history": "10m"}}}, id="history-one-period"),
    pytest.param(
        {"rollout": {**CANARY, "canary": {"steps": [{"weight": 10, "pause": "720h"}]}}}, id="pause-30d"
    ),
    pytest.param({"healing": {"oom": {"maxMemory": "512Mi"}}}, id="max-memory"),
    pytest.param(
        {
            "rollout": {
                "analysis": {"metrics": [{**ERROR_RATE, "query": 'x{a="{{service}}",r="{{revision}}"}'}]}
            }
        },
        id="known-placeholders",
    ),
]


def test_base_is_valid(cluster: Cluster, namespace: str) -> None:
    res = apply(cluster, namespace, BASE)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize(("obj", "field"), INVALID)
def test_invalid_spec_is_rejected(cluster: Cluster, namespace: str, obj: dict[str, Any], field: str) -> None:
    res = apply(cluster, namespace, obj)
    assert res.returncode != 0, f"accepted: {json.dumps(obj.get('spec', obj))}"
    assert field in res.stderr, res.stderr


@pytest.mark.parametrize("spec", EDGES)
def test_edge_of_each_new_bound_is_accepted(cluster: Cluster, namespace: str, spec: dict[str, Any]) -> None:
    res = apply(cluster, namespace, with_spec(**spec))
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_is_accepted(cluster: Cluster, namespace: str, path: Path) -> None:
    res = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path), check=False)
    assert res.returncode == 0, res.stderr


def test_examples_exist() -> None:
    assert {p.name for p in EXAMPLES.glob("*.yaml")} >= {"web.yaml", "full.yaml"}


def test_defaults_are_filled_in(cluster: Cluster, namespace: str) -> None:
    minimal = with_spec(ports=DELETE, replicas=DELETE)
    res = apply(cluster, namespace, minimal, dry_run=False)
    assert res.returncode == 0, res.stderr
    spec = json.loads(cluster.kubectl("get", "rsvc", "subject", "-n", namespace, "-o", "json").stdout)["spec"]
    # An operator running in the session writes desired = min (the scale subresource needs it).
    assert spec["replicas"] in ({"min": 1, "max": 10}, {"min": 1, "max": 10, "desired": 1})
    assert spec["disruptionBudget"] == {"maxUnavailable": 1}
    assert spec["rollout"]["strategy"] == "RollingUpdate"
    assert spec["autoscaling"]["mode"] == "Off"
    assert spec["autoscaling"]["interval"] == "30s"
    assert spec["autoscaling"]["forecast"]["quantile"] == 0.9
    assert "healing" not in spec and "approvals" not in spec


def test_strategy_is_immutable(cluster: Cluster, namespace: str) -> None:
    res = apply(cluster, namespace, BASE, dry_run=False)
    assert res.returncode == 0, res.stderr
    res = apply(cluster, namespace, with_spec(rollout=CANARY))
    assert res.returncode != 0, "changing rollout.strategy was accepted"
    assert "spec.rollout.strategy" in res.stderr, res.stderr
    assert "rollout.strategy is immutable" in res.stderr, res.stderr
    # Other rollout fields stay mutable.
    res = apply(cluster, namespace, with_spec(rollout={"paused": True}))
    assert res.returncode == 0, res.stderr


def test_scale_subresource_writes_desired_within_bounds(cluster: Cluster, namespace: str) -> None:
    res = apply(cluster, namespace, BASE, dry_run=False)
    assert res.returncode == 0, res.stderr
    cluster.kubectl("scale", "rsvc", "subject", "-n", namespace, "--replicas=4")
    got = json.loads(cluster.kubectl("get", "rsvc", "subject", "-n", namespace, "-o", "json").stdout)
    assert got["spec"]["replicas"]["desired"] == 4
    res = cluster.kubectl("scale", "rsvc", "subject", "-n", namespace, "--replicas=9", check=False)
    assert res.returncode != 0, "scaled above spec.replicas.max"
    assert "spec.replicas.desired" in res.stderr, res.stderr


def test_full_example_round_trips(cluster: Cluster, namespace: str) -> None:
    """Nothing in the full example is pruned: every field it sets is a declared field."""
    written = yaml.safe_load((EXAMPLES / "full.yaml").read_text())
    res = cluster.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", "-o", "json", input=json.dumps(written)
    )
    stored = json.loads(res.stdout)["spec"]
    assert merge(stored, written["spec"]) == stored


def policy(**actions: Any) -> dict[str, Any]:
    name = "bad-" + "-".join(sorted(actions)).lower()
    return {
        "apiVersion": "homeostat.dev/v1alpha1",
        "kind": "RemediationPolicy",
        "metadata": {"name": name},
        "spec": {"actions": actions},
    }


def approving(quorum: int = 1, **approvers: Any) -> dict[str, Any]:
    return {"risk": "medium", "mode": "approve", "quorum": quorum, "approvers": approvers}


# Issue 14, items 4 and 5: policies under which every approval request fails or never passes.
BAD_POLICIES = [
    pytest.param(
        policy(RestartPod=approving(slack={"users": ["U1", "homeostat"]})),
        "spec.actions.RestartPod.approvers may not include homeostat",
        id="requester-among-slack-approvers",
    ),
    pytest.param(
        policy(DrainNode={**approving(2, kubernetes={"users": ["alice", "homeostat"]}), "risk": "critical"}),
        "spec.actions.DrainNode.approvers may not include homeostat",
        id="requester-among-kubernetes-approvers",
    ),
    pytest.param(
        policy(ScaleUp=approving(3, slack={"users": ["U1"]}, kubernetes={"users": ["alice"]})),
        "spec.actions.ScaleUp.quorum must not exceed the number of approvers",
        id="quorum-above-approvers",
    ),
    pytest.param(
        policy(CordonNode=approving(2, kubernetes={"users": ["alice"], "groups": []})),
        "spec.actions.CordonNode.quorum must not exceed the number of approvers",
        id="quorum-above-approvers-empty-groups",
    ),
]

GOOD_POLICIES = [
    pytest.param(
        policy(ScaleUp=approving(2, slack={"users": ["U1"]}, kubernetes={"users": ["alice"]})),
        id="quorum-met",
    ),
    pytest.param(policy(ScaleUp=approving(3, slack={"groups": ["S1"]})), id="quorum-from-a-group"),
    pytest.param(policy(RestartPod={"risk": "low", "mode": "auto"}), id="auto-without-approvers"),
]


@pytest.mark.parametrize(("obj", "message"), BAD_POLICIES)
def test_unusable_policy_is_rejected(cluster: Cluster, obj: dict[str, Any], message: str) -> None:
    res = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(obj), check=False)
    assert res.returncode != 0, f"accepted: {json.dumps(obj['spec'])}"
    assert message in res.stderr, res.stderr


@pytest.mark.parametrize("obj", GOOD_POLICIES)
def test_usable_policy_is_accepted(cluster: Cluster, obj: dict[str, Any]) -> None:
    res = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(obj), check=False)
    assert res.returncode == 0, res.stderr
