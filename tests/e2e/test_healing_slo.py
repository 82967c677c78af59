"""SLO-breach healing on a real control plane with a real Prometheus: scale up, roll back, hold.

The traffic simulator (tests/traffic) serves what the pods would report; its latency can grow
with the load on a pod (``traffic.homeostat.dev/latency-per-rps``), so adding replicas really
lowers it and the operator's verification has something true to observe. One Prometheus and one
operator (with its own policy) serve the module; the test that stops Prometheus runs last.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import prom
from conftest import Cluster, OperatorProcess, get_json, service_events, wait_for
from traffic import model, simulator

pytestmark = pytest.mark.e2e

SEL = 'namespace="{{namespace}}",service="{{service}}"'
MEAN_LATENCY = (
    f"sum(rate(homeostat_sim_request_duration_seconds_sum{{{SEL}}}[5s]))"
    f" / sum(rate(homeostat_sim_request_duration_seconds_count{{{SEL}}}[5s]))"
)
ERROR_RATIO = (
    f'sum(rate(homeostat_sim_requests_total{{{SEL},code=~"5.."}}[5s]))'
    f" / sum(rate(homeostat_sim_requests_total{{{SEL}}}[5s]))"
)
RPS = 10.0
PER_RPS = 0.05  # 10 rps on one pod add 0.5 s to the 44 ms base mean; on two pods 0.25 s
LATENCY_MAX = 0.4  # so one replica breaches (0.544 s) and two do not (0.294 s)
FOR, INTERVAL = 5, 2
POLICY = "slo-test"


class Setup:
    def __init__(self, cluster: Cluster, namespace: str, server: prom.PrometheusServer, op: OperatorProcess):
        self.cluster, self.namespace, self.prometheus, self.operator = cluster, namespace, server, op

    def apply(self, body: dict[str, Any]) -> None:
        self.cluster.kubectl("apply", "-n", self.namespace, "-f", "-", input=json.dumps(body))

    def get(self, name: str) -> dict[str, Any]:
        body = get_json(self.cluster, "rsvc", name, "-n", self.namespace)
        assert body is not None, f"rsvc {name} is gone"
        return body

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.get(name).get("status") or {})

    def desired(self, name: str) -> int:
        return int(self.get(name)["spec"]["replicas"]["desired"])

    def readings(self, name: str) -> dict[str, dict[str, Any]]:
        return {r["name"]: r for r in (self.status(name).get("healing") or {}).get("slo") or []}

    def events(self, name: str, reason: str) -> list[str]:
        return [
            e["message"] for e in service_events(self.cluster, self.namespace, name) if e["reason"] == reason
        ]


@pytest.fixture(scope="module")
def setup(
    cluster: Cluster,
    crds_installed: None,
    traffic_simulator: simulator.Simulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Setup]:
    namespace = f"slo-{uuid.uuid4().hex[:8]}"
    workdir = tmp_path_factory.mktemp("slo")
    server = prom.PrometheusServer([traffic_simulator.target], workdir=workdir / "prometheus").start()
    server.wait_for_target_up()
    cluster.kubectl("create", "namespace", namespace)
    policy = {
        "apiVersion": "homeostat.dev/v1alpha1",
        "kind": "RemediationPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "actions": {
                "Rollback": {"risk": "low", "mode": "auto"},
                "ScaleUp": {"risk": "low", "mode": "auto"},
            },
            "rateLimits": {"perService": {"maxActions": 10, "window": "10m"}},
            "cooldown": "5s",
            "verifyWindow": "40s",
            "circuitBreaker": {"failures": 5, "window": "10m"},
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(policy))
    operator = OperatorProcess(
        cluster.kubeconfig,
        workdir / "operator.log",
        ("--namespace", namespace, "--prometheus-url", server.url),
    ).start()
    try:
        yield Setup(cluster, namespace, server, operator)
    finally:
        operator.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        cluster.kubectl(
            "delete", "remediationpolicy", POLICY, "--ignore-not-found", "--wait=false", check=False
        )
        server.cleanup()
        print(f"operator log: {operator.log_path}")


def service(
    name: str, slo: dict[str, Any], *, desired: int = 1, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "homeostat.dev/v1alpha1",
        "kind": "ReplicatedService",
        "metadata": {"name": name, "annotations": {model.ANNOTATION_PATTERN: f"constant rps={RPS:g}"}},
        "spec": {
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations or {}},
                "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]},
            },
            "replicas": {"min": 1, "max": 4, "desired": desired},
            "healing": {"slo": {"for": f"{FOR}s", "interval": f"{INTERVAL}s", **slo}},
            "approvals": {"policy": POLICY},
        },
    }


LATENCY_SLO = {"latency": {"query": MEAN_LATENCY, "max": LATENCY_MAX}}
SLOW = {model.ANNOTATION_LATENCY_PER_RPS: f"{PER_RPS:g}"}


def test_a_stable_service_whose_latency_breaches_is_scaled_up_and_verified(setup: Setup) -> None:
    setup.apply(service("slow", LATENCY_SLO, annotations=SLOW))

    def scaled() -> int | None:
        desired = setup.desired("slow")
        return desired if desired > 1 else None

    # One replica: mean latency 0.544 s against a 0.4 s bound, for 5 s, then one scale-up step.
    assert wait_for(scaled, timeout=90, what="the scale-up") == 2
    remediations = setup.events("slow", "Remediation")
    assert any("ScaleUp on ReplicatedService/" in m and "(LatencyBreach)" in m for m in remediations), (
        remediations
    )

    def verified() -> dict[str, Any] | None:
        last = setup.status("slow").get("lastRemediation") or {}
        return last if last.get("action") == "Verify" else None

    # Two replicas: 0.294 s, under the bound, so the scale-up is verified within the window.
    last = wait_for(verified, timeout=60, what="the scale-up verified")
    assert (last["cause"], last["outcome"]) == ("LatencyBreach", "Succeeded")
    history = (setup.status("slow").get("healing") or {}).get("history") or []
    assert [(r["action"], r["outcome"]) for r in history] == [("ScaleUp", "Succeeded")], history
    assert setup.events("slow", "RemediationVerified")

    def settled() -> dict[str, Any] | None:
        reading = setup.readings("slow")["latency"]
        return reading if reading.get("value") == pytest.approx(0.294, abs=0.02) else None

    # Once the rate window holds only two-replica samples, the model's figure exactly.
    assert wait_for(settled, timeout=30, what="latency at two replicas")["verdict"] == "Met"
    time.sleep(FOR + 2 * INTERVAL)
    assert setup.desired("slow") == 2  # verified: no further step


def test_a_new_revision_with_a_high_error_rate_is_rolled_back(setup: Setup) -> None:
    # No rollout block: a RollingUpdate service, so rollout analysis is not in play. Pods count
    # as available after 20 s, which keeps a new revision unproven (not yet the stable revision)
    # long enough for its errors to be seen: the bake time a real service would set.
    body = service("api", {"errorRate": {"query": ERROR_RATIO, "max": 0.1}}, desired=2)
    body["spec"]["minReadySeconds"] = 20
    setup.apply(body)

    def stable() -> str | None:
        status = setup.status("api")
        return status.get("stableRevision") if status.get("phase") == "Ready" else None

    good = wait_for(stable, timeout=90, what="a stable revision")
    patch = {"spec": {"template": {"metadata": {"annotations": {model.ANNOTATION_ERROR_RATE: "1"}}}}}
    setup.cluster.kubectl(
        "patch", "rsvc", "api", "-n", setup.namespace, "--type=merge", "-p", json.dumps(patch)
    )

    def rolled_back() -> dict[str, Any] | None:
        return setup.status("api").get("rollback") or None

    rollback = wait_for(rolled_back, timeout=60, what="the rollback")
    assert rollback["stableRevision"] == good and rollback["revision"] != good
    remediations = setup.events("api", "Remediation")
    assert any("Rollback on" in m and "(ErrorRateBreach)" in m for m in remediations), remediations

    def verified() -> list[dict[str, Any]] | None:
        history = (setup.status("api").get("healing") or {}).get("history") or []
        return history if history and history[-1]["outcome"] != "InProgress" else None

    history = wait_for(verified, timeout=60, what="the rollback verified")
    assert [(r["action"], r["outcome"]) for r in history] == [("Rollback", "Succeeded")], history
    assert setup.desired("api") == 2  # rolled back, not scaled


@pytest.mark.parametrize(
    ("slo", "message"),
    [
        ({}, "spec.healing.slo needs errorRate or latency when enabled"),
        ({"latency": {"max": 0.3}}, "spec.healing.slo.latency.query: Required value"),
        ({"errorRate": {"query": "q", "max": 2}}, "spec.healing.slo.errorRate.max: Invalid value"),
        ({"latency": {"query": "q", "max": 0}}, "spec.healing.slo.latency.max: Invalid value"),
        ({"latency": {"query": "q", "max": 1}, "interval": "0s"}, "slo.interval must be a positive duration"),
        (
            {"latency": {"query": "q", "max": 1}, "action": "Panic"},
            "spec.healing.slo.action: Unsupported value",
        ),
    ],
)
def test_bad_slo_blocks_are_refused_by_the_api_server(
    cluster: Cluster, crds_installed: None, slo: dict[str, Any], message: str
) -> None:
    body = service("bad", {})
    body["metadata"]["namespace"] = "default"
    body["spec"]["healing"] = {"slo": slo}
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(body), check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_without_prometheus_nothing_is_done_until_it_answers_again(setup: Setup) -> None:
    """Runs last: it stops the module's Prometheus."""
    setup.prometheus.stop()
    setup.apply(service("blind", LATENCY_SLO, annotations=SLOW))

    def unknown() -> dict[str, Any] | None:
        reading = setup.readings("blind").get("latency") or {}
        return reading if reading.get("verdict") == "Unknown" else None

    reading = wait_for(unknown, timeout=60, what="an Unknown latency reading")
    assert "Prometheus unavailable" in reading["message"], reading
    # Several times the for duration and the evaluation interval: still nothing done.
    time.sleep(3 * (FOR + INTERVAL))
    assert setup.desired("blind") == 1
    assert not setup.events("blind", "Remediation")
    assert not (setup.status("blind").get("healing") or {}).get("incidents")
    assert "SLO unknown, no SLO action is taken" in setup.operator.logs()
    # The same service with Prometheus back: the breach is seen and acted on, so the silence
    # above was the blindness, not a service that never breaches.
    setup.prometheus.start()
    setup.prometheus.wait_for_target_up()
    assert wait_for(
        lambda: setup.desired("blind") > 1, timeout=90, what="the scale-up once Prometheus answers"
    )
