"""Two operator shards side by side, split by a label selector: each acts on its own services only.

A platform that outgrows one operator runs several deployments, each with
``--shard-selector`` (or a namespace list). The API server filters the watch, so a shard never
sees, indexes or touches another shard's services, and one shard's outage leaves the others'
services looked after.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, Cluster, OperatorProcess, get_json, wait_for

pytestmark = pytest.mark.e2e

SHARD = "homeostat.dev/shard"


@pytest.fixture
def shard_namespace(cluster: Cluster, crds_installed: None) -> Iterator[str]:
    name = f"s-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def service(name: str, shard: str) -> dict[str, Any]:
    body = yaml.safe_load((REPO / "examples" / "web.yaml").read_text())
    body["metadata"] = {"name": name, "labels": {SHARD: shard}}
    return body


def replicas(cluster: Cluster, namespace: str, name: str) -> int | None:
    body = get_json(cluster, "deployment", name, "-n", namespace)
    return None if body is None else int(body["spec"]["replicas"])


def test_each_shard_acts_on_its_own_services_only(
    cluster: Cluster, shard_namespace: str, tmp_path: Path
) -> None:
    ns = shard_namespace
    shards = {
        shard: OperatorProcess(
            cluster.kubeconfig,
            tmp_path / f"{shard}.log",
            ("--namespace", ns, "--shard-selector", f"{SHARD}={shard}", "--http-port", "0"),
        ).start()
        for shard in ("a", "b")
    }
    try:
        for name, shard in (("alpha", "a"), ("beta", "b")):
            cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(service(name, shard)))
        for name in ("alpha", "beta"):
            wait_for(
                lambda n=name: (
                    ((get_json(cluster, "rsvc", n, "-n", ns) or {}).get("status") or {}).get("phase")
                    == "Ready"
                ),
                timeout=60,
                what=f"{name} Ready",
            )
        assert "Deployment/alpha" in shards["a"].logs() and "Deployment/beta" not in shards["a"].logs()
        assert "Deployment/beta" in shards["b"].logs() and "Deployment/alpha" not in shards["b"].logs()

        # Shard a is down: its service's drift stays, shard b still repairs its own.
        shards["a"].kill()
        for name in ("alpha", "beta"):
            cluster.kubectl("scale", "deployment", name, "-n", ns, "--replicas=1")
        wait_for(lambda: replicas(cluster, ns, "beta") == 3, timeout=30, what="beta repaired by shard b")
        assert replicas(cluster, ns, "alpha") == 1, "another shard touched alpha"
        shards["a"].start()
        wait_for(
            lambda: replicas(cluster, ns, "alpha") == 3,
            timeout=60,
            what="alpha repaired once shard a is back",
        )
    finally:
        for operator in shards.values():
            operator.stop()
