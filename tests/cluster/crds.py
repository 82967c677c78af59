"""Install the repo's CRDs and wait until the API server serves them, for the demo and benchmarks.

`kubectl wait --for=condition=Established` right after creating a CRD errors out instead of
waiting when the CRD has no conditions yet (`.status.conditions accessor error: <nil> is of the
type <nil>`), which broke `make demo` on a fresh cluster. This polls the condition instead.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from cluster import local

REPO = Path(__file__).resolve().parents[2]


def names(directory: Path = REPO / "crds") -> list[str]:
    """Names of the CRDs defined in ``directory``."""
    found = []
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                found.append(str(doc["metadata"]["name"]))
    return found


def established(kubeconfig: Path, name: str) -> bool:
    res = local.run_kubectl(kubeconfig, "get", "crd", name, "-o", "json", check=False, timeout=30)
    if res.returncode != 0:
        return False
    conditions = (json.loads(res.stdout).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


def wait_established(kubeconfig: Path, crd_names: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    pending = list(crd_names)
    while pending:
        pending = [name for name in pending if not established(kubeconfig, name)]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise local.ClusterError(f"CRDs not Established after {timeout:.0f}s: {', '.join(pending)}")
        time.sleep(0.2)


def install(kubeconfig: Path, timeout: float = 60) -> None:
    """Apply crds/ (server-side, so a re-run over an older version wins) and wait for them all."""
    local.run_kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    wait_established(kubeconfig, names(), timeout)
