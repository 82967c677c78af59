"""The replica count of a ReplicatedService, written through its scale subresource.

Scaling through ``/scale`` rather than patching the spec means the autoscaler owns exactly one
field (``spec.replicas.desired``), the API server checks it against the same validation as
``kubectl scale``, and a rollout editing the template at the same moment never conflicts with
it. The call goes through ``adapters.kube`` like every other (timeouts, error mapping).
"""

from __future__ import annotations

from homeostat import ports
from homeostat.adapters import kube
from homeostat.core import children as kids


class KubernetesScaler:
    """``ports.Scaler`` over ``adapters.kube``."""

    def __init__(self, client: kube.Client) -> None:
        # Reuses the Workloads adapter's request handling (timeouts, error mapping).
        self._calls = kube.KubernetesWorkloads(client)

    async def scale(self, owner: kids.Owner, replicas: int) -> None:
        if replicas < 0:
            raise ports.Rejected(f"cannot scale {owner.namespace}/{owner.name} to {replicas} replicas")
        path = kube._path(kids.API_VERSION, kids.KIND, owner.namespace, owner.name) + "/scale"
        body = {"spec": {"replicas": replicas}}
        await self._calls._call(path, "PATCH", body, "application/merge-patch+json")
