"""The operator's Kubernetes credential never shows: not in its log, nor in an Event, a status or
an error message, whatever it does with it (issue 13).

The operator runs as a ServiceAccount whose bearer token is in its kubeconfig, as a CI runner
or a workstation would give it, reconciles a service, reports an invalid one and opens an
Approval; then every place a secret could leak to is searched for the token. A revoked-looking
token (one the API server refuses) must stop ``homeostat run`` with one line that does not
repeat it either.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import VENV_BIN, Cluster, OperatorProcess, get_json, wait_for

pytestmark = pytest.mark.e2e


def _kubeconfig(cluster: Cluster, token: str, path: Path) -> Path:
    """The cluster's own server and CA, with ``token`` as the only credential."""
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    server = next(c for c in admin["clusters"] if c["name"] == context["cluster"])["cluster"]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": server}],
                "users": [{"name": "sa", "user": {"token": token}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "sa"}}],
                "current-context": "c",
            }
        )
    )
    path.chmod(0o600)
    return path


@pytest.fixture
def service_account(cluster: Cluster, private_namespace: str) -> Iterator[str]:
    """A token of a ServiceAccount bound to cluster-admin (the operator's chart role would do;
    this test is about where the token goes, not what it may do)."""
    binding = f"hs-cred-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "serviceaccount", "op", "-n", private_namespace)
    cluster.kubectl(
        "create",
        "clusterrolebinding",
        binding,
        "--clusterrole=cluster-admin",
        f"--serviceaccount={private_namespace}:op",
    )
    token = cluster.kubectl("create", "token", "op", "-n", private_namespace, "--duration=1h").stdout.strip()
    assert len(token) > 100, "no token"
    yield token
    cluster.kubectl("delete", "clusterrolebinding", binding, "--ignore-not-found", check=False)


def _apply(cluster: Cluster, namespace: str, body: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))


def test_the_operators_token_appears_nowhere(
    cluster: Cluster, crds_installed: None, private_namespace: str, service_account: str, tmp_path: Path
) -> None:
    namespace, token = private_namespace, service_account
    config = _kubeconfig(cluster, token, tmp_path / "sa.kubeconfig")
    operator = OperatorProcess(
        config, tmp_path / "operator.log", ("--namespace", namespace, "--http-port", "0")
    )
    operator.start()
    try:
        container = {"name": "app", "image": "registry.k8s.io/pause:3.10"}
        for name, pod in (
            ("good", {"containers": [container]}),
            ("typo", {"nodeSelectr": {}, "containers": [container]}),
        ):
            _apply(
                cluster,
                namespace,
                {
                    "apiVersion": "homeostat.dev/v1alpha1",
                    "kind": "ReplicatedService",
                    "metadata": {"name": name},
                    "spec": {"template": {"spec": pod}},
                },
            )

        def phase(name: str) -> str | None:
            return ((get_json(cluster, "rsvc", name, "-n", namespace) or {}).get("status") or {}).get("phase")

        wait_for(lambda: phase("good") == "Ready", timeout=90, what="the good service Ready")
        wait_for(lambda: phase("typo") == "InvalidSpec", timeout=60, what="the bad one InvalidSpec")
        assert operator.alive()
    finally:
        operator.stop()
    events = (get_json(cluster, "events", "-n", namespace) or {}).get("items") or []
    services = (get_json(cluster, "rsvc", "-n", namespace) or {}).get("items") or []
    assert events and len(services) == 2, "nothing to search"
    statuses = [s.get("status") for s in services]
    for where, text in (
        ("log", operator.logs()),
        ("Events", json.dumps(events)),
        ("status", json.dumps(statuses)),
    ):
        assert token not in text and token[-24:] not in text, f"the token is in the operator's {where}"


def test_a_token_the_api_server_refuses_stops_the_operator_without_repeating_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    forged = "eyJhbGciOiJSUzI1NiJ9." + uuid.uuid4().hex * 4 + ".c2lnbmF0dXJl"
    config = _kubeconfig(cluster, forged, tmp_path / "forged.kubeconfig")
    run = subprocess.run(
        [str(VENV_BIN / "homeostat"), "run", "--kubeconfig", str(config), "--http-port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode != 0, "started with a token the API server refuses"
    said = (run.stdout + run.stderr).strip()
    assert said and forged not in said and forged[21:53] not in said, said[-500:]
    assert "Traceback" not in said, said[-2000:]
    print(f"refused token: {said.splitlines()[-1]}")
