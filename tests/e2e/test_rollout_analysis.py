"""Rollouts judged by real Prometheus: promote the good, roll back the bad, hold when blind.

The traffic simulator (tests/traffic) serves what each pod would report, with the faults a
revision's pod template asks for; a real Prometheus scrapes it every second and the operator
queries it with the PromQL written in the service's spec, exactly as in production.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import chaos_report as report
from conftest import REPO, Cluster, OperatorProcess, get_json, service_events, wait_for
from prom import PrometheusServer
from traffic import model

pytestmark = pytest.mark.e2e

SEL = 'namespace="{{namespace}}",service="{{service}}",revision="{{revision}}"'
ERROR_RATIO = (
    f'sum(rate(homeostat_sim_requests_total{{{SEL},code=~"5.."}}[5s]))'
    f" / sum(rate(homeostat_sim_requests_total{{{SEL}}}[5s]))"
)
INTERVAL, FAILURE_LIMIT = 2.0, 1
ANALYSIS = {
    "interval": f"{INTERVAL:g}s",
    "failureLimit": FAILURE_LIMIT,
    "inconclusiveLimit": 30,
    "consecutiveErrorLimit": 30,
    "metrics": [{"name": "error-ratio", "query": ERROR_RATIO, "max": 0.1}],
}
CANARY = {
    "strategy": "Canary",
    "canary": {"steps": [{"weight": 25, "pause": "6s"}, {"weight": 50, "pause": "6s"}]},
    "analysis": ANALYSIS,
}
BLUE_GREEN = {"strategy": "BlueGreen", "blueGreen": {"scaleDownDelay": "2s"}, "analysis": ANALYSIS}
GOOD, BAD = "registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.9"


@pytest.fixture
def analysed(
    cluster: Cluster,
    crds_installed: None,
    prometheus_factory: Callable[..., PrometheusServer],
    tmp_path: Path,
) -> Iterator[tuple[OperatorProcess, PrometheusServer, str]]:
    """An operator of its own, reading a Prometheus of its own, in a namespace of its own."""
    server = prometheus_factory()
    namespace = f"a-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", namespace)
    operator = OperatorProcess(
        cluster.kubeconfig,
        tmp_path / "operator.log",
        ("--namespace", namespace, "--prometheus-url", server.url),
    ).start()
    yield operator, server, namespace
    operator.stop()
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def service(name: str, rollout: dict[str, Any], image: str, error_rate: float = 0.0) -> dict[str, Any]:
    body = yaml.safe_load((REPO / "examples" / "web.yaml").read_text())
    body["metadata"]["name"] = name
    body["metadata"]["annotations"] = {model.ANNOTATION_PATTERN: "constant rps=40"}
    body["spec"]["replicas"] = {"min": 1, "max": 10, "desired": 4}
    body["spec"]["rollout"] = rollout
    template = body["spec"]["template"]
    template["spec"]["containers"][0]["image"] = image
    if error_rate:
        template.setdefault("metadata", {}).setdefault("annotations", {})[model.ANNOTATION_ERROR_RATE] = str(
            error_rate
        )
    return body


def apply(cluster: Cluster, namespace: str, body: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))


def status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return (get_json(cluster, "rsvc", name, "-n", namespace) or {}).get("status") or {}


def phase(cluster: Cluster, namespace: str, name: str) -> str | None:
    return (status(cluster, namespace, name).get("rollout") or {}).get("phase")


def wait_phase(
    cluster: Cluster, namespace: str, name: str, want: str, timeout: float = 120
) -> dict[str, Any]:
    return wait_for(
        lambda: status(cluster, namespace, name) if phase(cluster, namespace, name) == want else None,
        timeout=timeout,
        what=f"{name} {want} (now {phase(cluster, namespace, name)})",
    )


def reasons(cluster: Cluster, namespace: str, name: str) -> list[str]:
    return [e["reason"] for e in service_events(cluster, namespace, name)]


def test_good_canary_passes_analysis_and_is_promoted(
    cluster: Cluster, analysed: tuple[OperatorProcess, PrometheusServer, str]
) -> None:
    operator, _, namespace = analysed
    apply(cluster, namespace, service("good", CANARY, GOOD))
    wait_phase(cluster, namespace, "good", "Promoted")
    apply(cluster, namespace, service("good", CANARY, "registry.k8s.io/pause:3.8"))
    done = wait_phase(cluster, namespace, "good", "Promoted")
    analysis = done["rollout"]["analysis"]
    assert analysis["lastVerdict"] == "Pass"
    assert analysis["runs"] >= 2 and analysis["failures"] == 0
    assert "notification RolloutPromoted" in operator.logs()


def test_bad_canary_is_rolled_back_with_the_failing_metric(
    cluster: Cluster, analysed: tuple[OperatorProcess, PrometheusServer, str]
) -> None:
    operator, _, namespace = analysed
    apply(cluster, namespace, service("bad", CANARY, GOOD))
    wait_phase(cluster, namespace, "bad", "Promoted")
    apply(cluster, namespace, service("bad", CANARY, BAD, error_rate=0.5))
    # Fault onset: the first canary pod is ready and takes traffic.
    wait_for(
        lambda: (
            (get_json(cluster, "deployment", "bad-canary", "-n", namespace) or {})
            .get("status", {})
            .get("readyReplicas")
        ),
        timeout=60,
        interval=0.1,
        what="canary pod ready",
    )
    onset = time.monotonic()
    canary_gone_with_stable_ready: list[int] = []

    def rolled_back() -> bool:
        canary = get_json(cluster, "deployment", "bad-canary", "-n", namespace)
        if canary is None and not canary_gone_with_stable_ready:
            stable = get_json(cluster, "deployment", "bad", "-n", namespace) or {}
            canary_gone_with_stable_ready.append(int(stable.get("status", {}).get("readyReplicas", 0)))
        # Both: a poll that reads the canary just before it goes and the phase just after must
        # not end the wait without having seen the canary gone.
        return bool(canary_gone_with_stable_ready) and phase(cluster, namespace, "bad") == "RolledBack"

    wait_for(rolled_back, timeout=90, interval=0.2, what="rollback")
    elapsed = time.monotonic() - onset
    # The analysis needs FAILURE_LIMIT + 1 failed runs, one interval apart, after the rate window
    # has two scrapes; the rest is the order of the rollback itself.
    budget = (FAILURE_LIMIT + 1) * INTERVAL + 15
    assert elapsed < budget, f"rolled back {elapsed:.1f}s after fault onset, budget {budget:.0f}s"
    # Stable carried the full load before the canary (and its traffic) went away.
    assert canary_gone_with_stable_ready and canary_gone_with_stable_ready[0] == 4
    final = status(cluster, namespace, "bad")
    assert final["phase"] == "Degraded"
    degraded = next(c for c in final["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "RolledBack"
    assert "error-ratio = 0.5" in degraded["message"], degraded["message"]
    assert final["rollout"]["failure"]["metric"] == "error-ratio"
    stable = get_json(cluster, "deployment", "bad", "-n", namespace)
    assert stable is not None and stable["spec"]["template"]["spec"]["containers"][0]["image"] == GOOD
    assert "AnalysisFailed" in reasons(cluster, namespace, "bad")
    assert operator.logs().count("notification RolloutFailed") == 1
    # The failed template stays in the spec; only a new template starts a new rollout.
    time.sleep(3)
    assert phase(cluster, namespace, "bad") == "RolledBack"
    apply(cluster, namespace, service("bad", CANARY, "registry.k8s.io/pause:3.8"))
    wait_phase(cluster, namespace, "bad", "Promoted")


def test_bad_blue_green_preview_never_gets_traffic(
    cluster: Cluster, analysed: tuple[OperatorProcess, PrometheusServer, str]
) -> None:
    _, _, namespace = analysed
    apply(cluster, namespace, service("bg", BLUE_GREEN, GOOD))
    first = wait_phase(cluster, namespace, "bg", "Promoted")
    stable_revision = first["rollout"]["stableRevision"]
    apply(cluster, namespace, service("bg", BLUE_GREEN, BAD, error_rate=0.5))
    switched: list[str] = []

    def rolled_back() -> bool:
        svc = get_json(cluster, "service", "bg", "-n", namespace) or {}
        selected = svc.get("spec", {}).get("selector", {}).get("homeostat.dev/revision")
        if selected and selected != stable_revision:
            switched.append(selected)
        return phase(cluster, namespace, "bg") == "RolledBack"

    wait_for(rolled_back, timeout=90, interval=0.2, what="blue-green rollback")
    assert not switched, "the active Service selected the failing preview"
    wait_for(
        lambda: get_json(cluster, "deployment", "bg-canary", "-n", namespace) is None,
        timeout=30,
        what="preview deleted",
    )


def test_prometheus_down_holds_the_rollout_until_it_returns(
    cluster: Cluster, analysed: tuple[OperatorProcess, PrometheusServer, str], chaos_report: report.Recorder
) -> None:
    operator, server, namespace = analysed
    apply(cluster, namespace, service("blind", CANARY, GOOD))
    wait_phase(cluster, namespace, "blind", "Promoted")
    apply(cluster, namespace, service("blind", CANARY, "registry.k8s.io/pause:3.8"))
    wait_for(
        lambda: (status(cluster, namespace, "blind").get("rollout") or {}).get("stepReachedAt"),
        timeout=60,
        what="first step reached",
    )
    server.stop()
    try:
        # Well past every step's pause: with no answers the rollout must not move on.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            rollout = status(cluster, namespace, "blind").get("rollout") or {}
            assert rollout.get("phase") in ("Progressing", "Paused"), rollout
            assert rollout.get("step") == 0, rollout
            time.sleep(1)
        analysis = (status(cluster, namespace, "blind").get("rollout") or {}).get("analysis") or {}
        assert analysis.get("lastVerdict") == "Error", analysis
    finally:
        server.start()
    done = wait_phase(cluster, namespace, "blind", "Promoted")
    assert done["rollout"]["analysis"]["lastVerdict"] == "Pass"
    chaos_report.record("Prometheus stop", trials=1, faults=1, converged=1, operators=[operator])


def test_slo_burn_rate_fails_a_revision_that_spends_the_error_budget(
    cluster: Cluster, analysed: tuple[OperatorProcess, PrometheusServer, str]
) -> None:
    _, _, namespace = analysed
    slo = {
        "strategy": "Canary",
        "canary": {"steps": [{"weight": 50, "pause": "6s"}]},
        "analysis": {**ANALYSIS, "metrics": []},
        # 5 % errors against a 99.9 % objective burn the budget 50 times too fast.
        "slo": {"errorRatioQuery": ERROR_RATIO, "objective": 0.999, "maxBurnRate": 14.4},
    }
    apply(cluster, namespace, service("slo", slo, GOOD))
    wait_phase(cluster, namespace, "slo", "Promoted")
    apply(cluster, namespace, service("slo", slo, BAD, error_rate=0.05))
    done = wait_phase(cluster, namespace, "slo", "RolledBack")
    assert done["rollout"]["failure"]["metric"] == "slo-burn-rate"
    assert done["rollout"]["failure"]["value"] == pytest.approx(50, rel=0.1)
