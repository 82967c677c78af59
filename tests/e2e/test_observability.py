"""The operator's own metrics, scraped by a real Prometheus, and the Grafana dashboard's queries.

A canary with analysis and a reactively scaled service run while Prometheus scrapes both the
traffic simulator and the operator's ``/metrics``; then every query of the dashboard in the
chart must be valid PromQL to the real Prometheus, and the ones about what just happened must
return data.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import prom
from conftest import REPO, Cluster, OperatorProcess, get_json, wait_for
from traffic import model, simulator

pytestmark = pytest.mark.e2e

DASHBOARD = REPO / "charts" / "homeostat" / "dashboards" / "homeostat.json"
SEL = 'namespace="{{namespace}}",service="{{service}}",revision="{{revision}}"'
ERROR_RATIO = (
    f'sum(rate(homeostat_sim_requests_total{{{SEL},code=~"5.."}}[5s]))'
    f" / sum(rate(homeostat_sim_requests_total{{{SEL}}}[5s]))"
)


class Setup:
    def __init__(self, cluster: Cluster, namespace: str, server: prom.PrometheusServer, http: str) -> None:
        self.cluster, self.namespace, self.server, self.http = cluster, namespace, server, http

    def query(self, expr: str) -> dict[str, Any]:
        url = f"{self.server.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return dict(json.load(response))
        except urllib.error.HTTPError as exc:  # a bad query is a 400 with the reason as JSON
            return dict(json.loads(exc.read()))


@pytest.fixture
def setup(
    cluster: Cluster, crds_installed: None, traffic_simulator: simulator.Simulator, tmp_path: Path
) -> Iterator[Setup]:
    namespace = f"o-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", namespace)
    port = prom.free_port()
    server = prom.PrometheusServer([traffic_simulator.target, f"127.0.0.1:{port}"], workdir=tmp_path / "prom")
    server.start()
    operator = OperatorProcess(
        cluster.kubeconfig,
        tmp_path / "operator.log",
        (
            "--namespace",
            namespace,
            "--prometheus-url",
            server.url,
            "--http-bind",
            "127.0.0.1",
            "--http-port",
            str(port),
        ),
    ).start()
    try:
        yield Setup(cluster, namespace, server, f"http://127.0.0.1:{port}")
    finally:
        operator.stop()
        server.cleanup()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def service(image: str) -> dict[str, Any]:
    body = yaml.safe_load((REPO / "examples" / "web.yaml").read_text())
    body["metadata"]["name"] = "obs"
    body["metadata"]["annotations"] = {model.ANNOTATION_PATTERN: "constant rps=30"}
    body["spec"]["replicas"] = {"min": 1, "max": 6, "desired": 2}
    body["spec"]["template"]["spec"]["containers"][0]["image"] = image
    body["spec"]["rollout"] = {
        "strategy": "Canary",
        "canary": {"steps": [{"weight": 50, "pause": "4s"}]},
        "analysis": {
            "interval": "2s",
            "metrics": [{"name": "error-ratio", "query": ERROR_RATIO, "max": 0.1}],
        },
    }
    body["spec"]["autoscaling"] = {
        "mode": "Reactive",
        "interval": "2s",
        "metric": {
            "query": 'sum(homeostat_sim_demand_rps{namespace="{{namespace}}",service="{{service}}"})',
            "targetPerReplica": 10,
        },
    }
    return body


def exposed(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text exposition, by name and label set."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def grafana_variables(expr: str) -> str:
    """What Grafana substitutes before a query reaches Prometheus."""
    for name, value in (
        ("$__rate_interval", "1m"),
        ("$__range", "1h"),
        ("$namespace", ".*"),
        ("$service", ".*"),
    ):
        expr = expr.replace(name, value)
    return expr


def test_operator_metrics_and_dashboard_queries(setup: Setup) -> None:
    cluster, namespace = setup.cluster, setup.namespace
    cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(service("registry.k8s.io/pause:3.10"))
    )

    def rollout() -> dict[str, Any]:
        body = get_json(cluster, "rsvc", "obs", "-n", namespace) or {}
        return (body.get("status") or {}).get("rollout") or {}

    wait_for(lambda: rollout().get("phase") == "Promoted", timeout=60, what="first revision")
    cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(service("registry.k8s.io/pause:3.9"))
    )
    wait_for(
        lambda: rollout().get("phase") == "Promoted" and rollout().get("analysis", {}).get("runs"),
        timeout=90,
        what="canary promoted",
    )

    with urllib.request.urlopen(f"{setup.http}/metrics", timeout=5) as response:
        text = response.read().decode()
        assert response.headers["Content-Type"].startswith("text/plain")
    values = exposed(text)
    ours = {"namespace": namespace, "service": "obs"}
    assert values[("homeostat_rollout_phase", frozenset({**ours, "phase": "Promoted"}.items()))] == 1
    assert values[("homeostat_analysis_runs_total", frozenset({**ours, "verdict": "Pass"}.items()))] >= 1
    assert values[("homeostat_autoscaler_desired_replicas", frozenset(ours.items()))] == 3  # 30 rps / 10
    assert values[("homeostat_reconciles_total", frozenset({**ours, "outcome": "ok"}.items()))] >= 1
    assert any(name == "homeostat_reconcile_duration_seconds_bucket" for name, _ in values)
    labels = f'namespace="{namespace}",service="obs"'

    # Prometheus has scraped the operator: the dashboard's queries are valid and the ones about
    # this run return data.
    wait_for(
        lambda: setup.query(f'homeostat_rollout_phase{{{labels},phase="Promoted"}} == 1')["data"]["result"],
        timeout=30,
        what="operator metrics in Prometheus",
    )
    dashboard = json.loads(DASHBOARD.read_text())
    answered = {}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            result = setup.query(grafana_variables(target["expr"]))
            assert result["status"] == "success", f"{panel['title']}: {target['expr']}: {result}"
            answered[panel["title"]] = answered.get(panel["title"], False) or bool(result["data"]["result"])
    for title in (
        "Load vs forecast vs capacity",
        "Desired replicas",
        "Rollout phase",
        "Canary weight",
        "Analysis runs by verdict",
        "Reconcile latency",
        "Reconciles by outcome",
        "Background queues",
    ):
        assert answered[title], f"dashboard panel {title!r} shows no data"
    for variable in dashboard["templating"]["list"][1:]:
        query = re.fullmatch(r"label_values\((.*), (\w+)\)", variable["query"])
        assert query, variable
        series = grafana_variables(query.group(1))
        assert setup.query(f"count by ({query.group(2)}) ({series})")["data"]["result"], variable["name"]
