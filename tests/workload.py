"""Manifests of the sample app (examples/app) for pods that really execute.

The e2e tests and the demo both run it on the real node: one place builds its container, with the
probes, the Pod Security "restricted" context and the downward-API labels its metrics carry, so
that a test asking for "a revision that answers 5xx" says only that.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

from conftest import Workloads

LABELS = (
    ("APP_NAMESPACE", "metadata.namespace"),
    ("APP_POD", "metadata.name"),
    ("APP_SERVICE", "metadata.labels['homeostat.dev/service']"),
    ("APP_REVISION", "metadata.labels['homeostat.dev/revision']"),
    ("APP_TRACK", "metadata.labels['homeostat.dev/track']"),
)

RESTRICTED = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def container(image: str, memory: str = "64Mi", **env: str) -> dict[str, Any]:
    """The app's container; ``env`` switches its misbehaviour (APP_ERROR_RATIO="1", ...).

    It serves on for 2 s after SIGTERM, unready, so a pod that goes (a canary step, a drain)
    leaves the Service's endpoints before its socket closes, well inside the 5 s grace."""
    env = {"APP_SHUTDOWN_DELAY_S": "2", **env}
    return {
        "name": "app",
        "image": image,
        "imagePullPolicy": "Never",
        "ports": [{"name": "http", "containerPort": 8080}],
        "env": [
            *({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}} for name, path in LABELS),
            *({"name": name, "value": value} for name, value in sorted(env.items())),
        ],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 1,
            "failureThreshold": 1,
        },
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5},
        "resources": {"requests": {"cpu": "10m", "memory": memory}, "limits": {"memory": memory}},
        "securityContext": RESTRICTED,
    }


def pod_spec(workloads: Workloads, memory: str = "64Mi", **env: str) -> dict[str, Any]:
    return workloads.place(
        {
            "containers": [container(workloads.app_image, memory, **env)],
            "terminationGracePeriodSeconds": 5,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        }
    )


def replicated_service(
    workloads: Workloads, name: str, memory: str = "64Mi", env: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    """A ReplicatedService running the app on the real node(s), with its http port exposed."""
    return {
        "apiVersion": "homeostat.dev/v1alpha1",
        "kind": "ReplicatedService",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": pod_spec(workloads, memory, **(env or {})),
            },
            "ports": [{"name": "http", "port": 8080, "targetPort": "http"}],
            "replicas": {"min": 1, "max": 4, "desired": 2},
            **spec,
        },
    }


def answer(url: str, timeout: float = 2) -> int:
    """The HTTP status a GET of ``url`` gets (an error status included), 0 for no answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0
