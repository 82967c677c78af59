"""The scale subresource works on a service that never set ``spec.replicas.desired`` (issue 14.12).

``.spec.replicas.desired`` is the scale subresource's ``specReplicasPath``. While it was unset
the API server answered every GET of ``/scale`` with ``InternalError … the spec replicas field
".spec.replicas.desired" does not exist``: a real HorizontalPodAutoscaler targeting the service
reported FailedGetScale forever, and ``kubectl patch --subresource=scale`` failed the same way.
The operator now writes ``desired = min`` when it is unset. The HPA here is the
controller-manager's own; it needs no metrics to raise a count below its minReplicas.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import test_crd_validation as crd

from conftest import Cluster, OperatorProcess, get_json, wait_for

pytestmark = pytest.mark.e2e


def _service(name: str) -> dict[str, Any]:
    """The admission tests' valid base, under another name."""
    return crd.merge(
        crd.BASE, {"metadata": {"name": name}, "spec": {"template": {"metadata": {"labels": {"app": name}}}}}
    )


def _desired(cluster: Cluster, namespace: str, name: str) -> int | None:
    body = get_json(cluster, "rsvc", name, "-n", namespace) or {}
    desired = ((body.get("spec") or {}).get("replicas") or {}).get("desired")
    return desired if isinstance(desired, int) else None


def _create(cluster: Cluster, namespace: str, name: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(_service(name)))
    got = wait_for(
        lambda: _desired(cluster, namespace, name), timeout=30, what="spec.replicas.desired defaulted"
    )
    assert got == 2


def test_a_real_hpa_scales_a_service_that_never_set_desired(
    cluster: Cluster, namespace: str, operator_process: OperatorProcess
) -> None:
    _create(cluster, namespace, "web")
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web"},
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "homeostat.dev/v1alpha1",
                "kind": "ReplicatedService",
                "name": "web",
            },
            "minReplicas": 3,
            "maxReplicas": 5,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}},
                }
            ],
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(hpa))
    # The HPA controller resyncs every 15 s.
    wait_for(
        lambda: _desired(cluster, namespace, "web") == 3, timeout=60, what="the HPA to scale to its minimum"
    )
    conditions = (get_json(cluster, "hpa", "web", "-n", namespace) or {}).get("status", {}).get(
        "conditions"
    ) or []
    able = next(c for c in conditions if c["type"] == "AbleToScale")
    assert able["status"] == "True", able


def test_a_merge_patch_to_scale_works_on_a_service_that_never_set_desired(
    cluster: Cluster, namespace: str, operator_process: OperatorProcess
) -> None:
    _create(cluster, namespace, "api")
    scale = json.loads(
        cluster.kubectl("get", "rsvc", "api", "-n", namespace, "--subresource=scale", "-o", "json").stdout
    )
    assert scale["spec"]["replicas"] == 2
    cluster.kubectl(
        "patch",
        "rsvc",
        "api",
        "-n",
        namespace,
        "--subresource=scale",
        "--type=merge",
        "-p",
        '{"spec":{"replicas":4}}',
    )
    assert _desired(cluster, namespace, "api") == 4


def test_raising_min_past_a_defaulted_desired_is_accepted(
    cluster: Cluster, namespace: str, operator_process: OperatorProcess
) -> None:
    """The defaulted desired is the old min; the user's next apply raising min must not be
    refused for a field they never wrote. The service runs desired kept inside the bounds."""
    _create(cluster, namespace, "db")
    raised = _service("db")
    raised["spec"]["replicas"] = {"min": 3, "max": 6}
    res = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(raised), check=False)
    assert res.returncode == 0, res.stderr
    wait_for(
        lambda: (
            ((get_json(cluster, "rsvc", "db", "-n", namespace) or {}).get("status") or {}).get(
                "desiredReplicas"
            )
            == 3
        ),
        timeout=30,
        what="status.desiredReplicas 3",
    )
    # A new desired outside the bounds is still refused.
    res = cluster.kubectl("scale", "rsvc", "db", "-n", namespace, "--replicas=1", check=False)
    assert res.returncode != 0 and "spec.replicas.desired" in res.stderr, res.stderr
