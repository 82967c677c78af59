"""Two operator replicas with kopf peering: one acts, and a killed active one is replaced.

Both replicas watch the same namespace with distinct priorities. While both live, only the
higher one may touch anything; after it is SIGKILLed the other takes over once the dead one's
keep-alive expires (``--peering-lifetime``) and finishes the rollout the first one started,
from the state it left in the service's status.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, Cluster, OperatorProcess, get_json, wait_for

pytestmark = pytest.mark.e2e

LIFETIME = 10


@pytest.fixture
def ha_namespace(cluster: Cluster, crds_installed: None) -> Iterator[str]:
    name = f"h-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    peering = {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "ha"}}
    cluster.kubectl("apply", "-n", name, "-f", "-", input=json.dumps(peering))
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def replica(cluster: Cluster, namespace: str, log: Path, priority: int) -> OperatorProcess:
    args = ("--namespace", namespace, "--peering", "ha", "--priority", str(priority), "--http-port", "0")
    return OperatorProcess(cluster.kubeconfig, log, (*args, "--peering-lifetime", str(LIFETIME))).start()


def service(image: str) -> dict[str, Any]:
    body = yaml.safe_load((REPO / "examples" / "web.yaml").read_text())
    body["metadata"]["name"] = "ha"
    body["spec"]["replicas"] = {"min": 1, "max": 10, "desired": 4}
    body["spec"]["rollout"] = {
        "strategy": "Canary",
        "canary": {"steps": [{"weight": 25, "pause": "2s"}, {"weight": 50, "pause": "30s"}]},
    }
    body["spec"]["template"]["spec"]["containers"][0]["image"] = image
    return body


def rollout(cluster: Cluster, namespace: str) -> dict[str, Any]:
    return ((get_json(cluster, "rsvc", "ha", "-n", namespace) or {}).get("status") or {}).get("rollout") or {}


def acted(log: str) -> list[str]:
    """What a replica did to the cluster, from its own log."""
    return re.findall(
        r"(?:created|updated) (?:Deployment|Service|PodDisruptionBudget|ControllerRevision)/\S+", log
    )


def test_one_replica_acts_and_a_killed_one_is_replaced(
    cluster: Cluster, ha_namespace: str, tmp_path: Path
) -> None:
    active = replica(cluster, ha_namespace, tmp_path / "active.log", priority=200)
    # kopf starts a replica paused and resumes it once no higher peer is seen; the standby starts
    # after the active one has announced itself (started together, kopf may let the lower one
    # act for the fraction of a second before it sees the other's first keep-alive).
    wait_for(lambda: "Resuming operations" in active.logs(), timeout=60, what="active replica resumes")
    standby = replica(cluster, ha_namespace, tmp_path / "standby.log", priority=100)
    try:
        wait_for(
            lambda: "Initial authentication has finished" in standby.logs(), timeout=60, what="standby up"
        )
        cluster.kubectl(
            "apply", "-n", ha_namespace, "-f", "-", input=json.dumps(service("registry.k8s.io/pause:3.10"))
        )
        wait_for(
            lambda: rollout(cluster, ha_namespace).get("phase") == "Promoted",
            timeout=60,
            what="first revision",
        )
        cluster.kubectl(
            "apply", "-n", ha_namespace, "-f", "-", input=json.dumps(service("registry.k8s.io/pause:3.9"))
        )
        # Kill the active replica in the middle of the second step's long pause.
        wait_for(lambda: rollout(cluster, ha_namespace).get("step") == 1, timeout=60, what="second step")
        assert acted(active.logs()), "the active replica did nothing"
        assert not acted(standby.logs()), (
            f"the standby acted while the active one lived: {acted(standby.logs())}"
        )
        assert "Resuming operations" not in standby.logs()
        active.kill()
        killed = time.monotonic()
        wait_for(
            lambda: "Resuming operations" in standby.logs(), timeout=LIFETIME + 30, what="standby resumes"
        )
        handover = time.monotonic() - killed
        done = wait_for(
            lambda: (
                rollout(cluster, ha_namespace)
                if rollout(cluster, ha_namespace).get("phase") == "Promoted"
                else None
            ),
            timeout=90,
            what="rollout finished by the standby",
        )
        print(
            f"handover after SIGKILL of the active replica: {handover:.1f} s (peering lifetime {LIFETIME} s)"
        )
        assert handover <= LIFETIME + 15
        assert done["step"] == 1  # it continued at the step the dead replica had reached
        canary = get_json(cluster, "deployment", "ha-canary", "-n", ha_namespace)
        assert canary is None or canary.get("metadata", {}).get("deletionTimestamp")
        assert acted(standby.logs()), "the standby never acted after the handover"
    finally:
        active.stop()
        standby.stop()
