"""The replica count of a ReplicatedService, written through its scale subresource.

Scaling through ``/scale`` rather than patching the spec means the autoscaler owns exactly one
field (``spec.replicas.desired``), the API server checks it against the same validation as
``kubectl scale``, and a rollout editing the template at the same moment never conflicts with
it. The synchronous client call runs in a worker thread, like every call in ``adapters.kube``.
"""

from __future__ import annotations

import asyncio

import kubernetes

from homeostat import ports
from homeostat.adapters import kube
from homeostat.core import children as kids


class KubernetesScaler:
    """``ports.Scaler`` over the official client."""

    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        # Reuses the Workloads adapter's request handling (timeouts, error mapping).
        self._calls = kube.KubernetesWorkloads(api)

    async def scale(self, owner: kids.Owner, replicas: int) -> None:
        if replicas < 0:
            raise ports.Rejected(f"cannot scale {owner.namespace}/{owner.name} to {replicas} replicas")
        path = kube._path(kids.API_VERSION, kids.KIND, owner.namespace, owner.name) + "/scale"
        body = {"spec": {"replicas": replicas}}
        await asyncio.to_thread(self._calls._call, path, "PATCH", body, "application/merge-patch+json")
