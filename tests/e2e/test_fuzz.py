"""Fuzz: generated ReplicatedService specs against the real API server and a running operator.

Every spec must either be refused by the API server with a message that names a field, or be
accepted and then handled by the operator (a status for its generation, even if that status is
InvalidSpec); the operator must neither crash nor wedge. ``HOMEOSTAT_FUZZ_EXAMPLES`` sets the
count (100 in ``make test``, 500 in ``make chaos``).
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import hypothesis
import kubernetes
import pytest
from hypothesis import strategies as st

import chaos_report as report
from conftest import Cluster, OperatorProcess, wait_for

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("HOMEOSTAT_FUZZ_EXAMPLES", "100"))


@st.composite
def mostly(draw: st.DrawFn, valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]) -> Any:
    """A valid value 29 times in 30: one bad field per spec is enough to exercise refusals,
    and specs the API server accepts must reach the operator often."""
    return draw(invalid) if draw(st.integers(0, 29)) == 0 else draw(valid)


# Values near and across the schema's edges, plus plain garbage of the wrong type.
ints = mostly(st.integers(0, 12), st.one_of(st.sampled_from([-1, 10001, 2**31]), st.text(max_size=4)))
durations = mostly(
    st.sampled_from(["30s", "5m", "1h30m", "500ms", "2s"]),
    st.sampled_from(["", "5", "1d", "-1s", "0s", "soon"]),
)
names = mostly(st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True), st.text(max_size=20))
images = mostly(st.sampled_from(["registry.k8s.io/pause:3.10", "busybox"]), st.text(max_size=30))
quantities = mostly(st.sampled_from(["64Mi", "1Gi", "100m"]), st.sampled_from(["lots", "-1Mi", "1.5.5", ""]))


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


def prune(value: Any) -> Any:
    """Drop the keys a strategy chose to leave out (None), as a user leaves fields unset."""
    if isinstance(value, dict):
        return {k: prune(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [prune(v) for v in value]
    return value


containers = st.lists(
    st.fixed_dictionaries(
        {
            "name": names,
            "image": images,
            "resources": maybe(
                st.fixed_dictionaries({"limits": st.fixed_dictionaries({"memory": quantities})})
            ),
        }
    ),
    min_size=1,
    max_size=2,
)
steps = st.lists(st.fixed_dictionaries({"weight": ints, "pause": maybe(durations)}), max_size=4)
metrics = st.lists(
    st.fixed_dictionaries({"name": names, "query": st.text(max_size=20), "max": maybe(st.floats(-1, 2))}),
    max_size=2,
)
specs = st.fixed_dictionaries(
    {
        "template": st.fixed_dictionaries(
            {
                "metadata": maybe(
                    st.fixed_dictionaries({"labels": st.dictionaries(names, names, max_size=2)})
                ),
                "spec": st.fixed_dictionaries({"containers": containers}),
            }
        ),
        "ports": maybe(
            st.lists(
                st.fixed_dictionaries(
                    {"name": names, "port": ints, "targetPort": maybe(st.one_of(ints, names))}
                ),
                max_size=3,
            )
        ),
        "replicas": maybe(
            st.fixed_dictionaries({"min": maybe(ints), "max": maybe(ints), "desired": maybe(ints)})
        ),
        "minReadySeconds": maybe(ints),
        "disruptionBudget": maybe(
            st.fixed_dictionaries(
                {
                    "maxUnavailable": maybe(st.one_of(ints, st.sampled_from(["25%", "200%", "x"]))),
                    "minAvailable": maybe(ints),
                }
            )
        ),
        "rollout": maybe(
            st.fixed_dictionaries(
                {
                    "strategy": mostly(
                        st.sampled_from(["RollingUpdate", "Canary", "BlueGreen"]), st.just("Yolo")
                    ),
                    "canary": maybe(st.fixed_dictionaries({"steps": steps})),
                    "blueGreen": maybe(st.fixed_dictionaries({"scaleDownDelay": maybe(durations)})),
                    "analysis": maybe(
                        st.fixed_dictionaries(
                            {
                                "interval": maybe(durations),
                                "failureLimit": maybe(ints),
                                "metrics": maybe(metrics),
                            }
                        )
                    ),
                }
            )
        ),
        "autoscaling": maybe(
            st.fixed_dictionaries(
                {
                    "mode": mostly(
                        st.sampled_from(["Off", "Reactive", "Predictive", "Preview"]), st.just("Magic")
                    ),
                    "metric": maybe(
                        st.fixed_dictionaries(
                            {"query": st.text(max_size=10), "targetPerReplica": st.floats(-1, 100)}
                        )
                    ),
                    "interval": maybe(durations),
                }
            )
        ),
    }
)


def test_generated_specs_are_refused_with_a_field_or_handled(
    cluster: Cluster, namespace: str, operator_process: OperatorProcess, chaos_report: report.Recorder
) -> None:
    api = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
    custom = kubernetes.client.CustomObjectsApi(api)
    accepted: list[str] = []
    refused: list[str] = []
    counter = iter(range(10**6))

    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(hypothesis.HealthCheck),
        database=None,
    )
    @hypothesis.given(specs)
    def apply(spec: dict[str, Any]) -> None:
        name = f"fz-{next(counter)}"
        body = {
            "apiVersion": "homeostat.dev/v1alpha1",
            "kind": "ReplicatedService",
            "metadata": {"name": name},
            "spec": prune(spec),
        }
        try:
            custom.create_namespaced_custom_object(
                "homeostat.dev", "v1alpha1", namespace, "replicatedservices", body
            )
        except kubernetes.client.ApiException as exc:
            assert exc.status in (400, 422), f"{exc.status} {exc.body}"
            # The API server names the field: spec.<path>, or the schema path it checked.
            assert re.search(r"spec\.|spec:|\.spec|metadata\.", exc.body or ""), exc.body
            refused.append(name)
            return
        accepted.append(name)

    apply()
    print(f"fuzz: {EXAMPLES} examples, {len(refused)} refused by the API server, {len(accepted)} accepted")
    assert len(refused) >= EXAMPLES // 10 and len(accepted) >= EXAMPLES // 10, (
        "too one-sided to test both paths"
    )

    def handled(name: str) -> bool:
        body = custom.get_namespaced_custom_object(
            "homeostat.dev", "v1alpha1", namespace, "replicatedservices", name
        )
        status = body.get("status") or {}
        return status.get("observedGeneration") == body["metadata"]["generation"] and bool(
            status.get("phase")
        )

    deadline = time.monotonic() + 180
    pending = list(accepted)
    while pending and time.monotonic() < deadline:
        pending = [name for name in pending if not handled(name)]
        time.sleep(1)
    assert not pending, f"{len(pending)} accepted specs never got a status, e.g. {pending[:5]}"
    assert operator_process.alive(), operator_process.logs()[-3000:]
    # Not wedged: a plain service created now still becomes Ready.
    plain = {
        "apiVersion": "homeostat.dev/v1alpha1",
        "kind": "ReplicatedService",
        "metadata": {"name": "after-fuzz"},
        "spec": {
            "template": {"spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]}}
        },
    }
    custom.create_namespaced_custom_object(
        "homeostat.dev", "v1alpha1", namespace, "replicatedservices", plain
    )
    wait_for(
        lambda: (
            custom.get_namespaced_custom_object(
                "homeostat.dev", "v1alpha1", namespace, "replicatedservices", "after-fuzz"
            )
            .get("status", {})
            .get("phase")
            == "Ready"
        ),
        timeout=60,
        what="a plain service Ready after the fuzzing",
    )
    # Converged: refused with a field named, or handled (status written); the session operator
    # serves the other tests too, so its crashes are not charged to this row.
    chaos_report.record("fuzz", trials=EXAMPLES, faults=EXAMPLES, converged=len(refused) + len(accepted))
