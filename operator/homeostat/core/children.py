"""The Kubernetes objects a ReplicatedService owns, computed from its spec alone.

Keeping this pure means the reconciler's output can be checked without a cluster, and the same
function decides both what to create and whether what exists has drifted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from homeostat.core import spec as specs

GROUP = "homeostat.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ReplicatedService"

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_SERVICE = f"{GROUP}/service"
LABEL_TRACK = f"{GROUP}/track"
LABEL_REVISION = f"{GROUP}/revision"
ANNOTATION_REVISION = f"{GROUP}/revision"
MANAGER = "homeostat"
TRACK_STABLE = "stable"


@dataclasses.dataclass(frozen=True)
class Owner:
    """Identity of the ReplicatedService, enough to name and own its children."""

    name: str
    namespace: str
    uid: str


@dataclasses.dataclass(frozen=True)
class ChildRef:
    api_version: str
    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, manifest: Mapping[str, Any]) -> ChildRef:
        meta = manifest["metadata"]
        return cls(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


def revision(template: Mapping[str, Any]) -> str:
    """A stable hash of the pod template: equal templates give equal revisions, always."""
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def selector(owner: Owner) -> dict[str, str]:
    """Labels that select every pod of the service, whatever its track or revision."""
    return {LABEL_SERVICE: owner.name}


def selector_string(owner: Owner) -> str:
    return ",".join(f"{k}={v}" for k, v in selector(owner).items())


def _metadata(owner: Owner, name: str, extra_labels: Mapping[str, str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": {
            LABEL_MANAGED_BY: MANAGER,
            LABEL_NAME: owner.name,
            LABEL_SERVICE: owner.name,
            **dict(extra_labels),
        },
        "ownerReferences": [
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": owner.name,
                "uid": owner.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }


def track_name(owner: Owner, track: str) -> str:
    """Deployment name of a track: the stable track carries the service's own name."""
    return owner.name if track == TRACK_STABLE else f"{owner.name}-{track}"


def deployment(
    owner: Owner,
    spec: specs.ServiceSpec,
    track: str = TRACK_STABLE,
    *,
    template: Mapping[str, Any] | None = None,
    replicas: int | None = None,
) -> dict[str, Any]:
    """The Deployment of one track, running ``template`` (default: the spec's own)."""
    template = spec.template if template is None else template
    rev = revision(template)
    template_meta = template.get("metadata") or {}
    track_labels = {**selector(owner), LABEL_TRACK: track}
    pod_labels = {**(template_meta.get("labels") or {}), **track_labels, LABEL_REVISION: rev}
    pod_meta: dict[str, Any] = {"labels": pod_labels}
    if template_meta.get("annotations"):
        pod_meta["annotations"] = dict(template_meta["annotations"])
    meta = _metadata(owner, track_name(owner, track), {LABEL_TRACK: track})
    meta["annotations"] = {ANNOTATION_REVISION: rev}
    deployment_spec: dict[str, Any] = {
        "replicas": spec.replicas.effective if replicas is None else replicas,
        "revisionHistoryLimit": 3,
        "selector": {"matchLabels": track_labels},
        "template": {"metadata": pod_meta, "spec": template["spec"]},
    }
    if spec.min_ready_seconds:
        # The API server leaves a zero out of the stored object; writing one would look like
        # drift on every reconcile.
        deployment_spec["minReadySeconds"] = spec.min_ready_seconds
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": deployment_spec}


def service(
    owner: Owner,
    spec: specs.ServiceSpec,
    *,
    name: str | None = None,
    extra_selector: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A Service over the service's pods; ``extra_selector`` narrows it to a track or revision."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, name or owner.name),
        "spec": {
            "type": "ClusterIP",
            "selector": {**selector(owner), **dict(extra_selector or {})},
            "ports": [
                {"name": p.name, "port": p.port, "targetPort": p.target_port, "protocol": p.protocol}
                for p in spec.ports
            ],
        },
    }


def disruption_budget(owner: Owner, spec: specs.ServiceSpec) -> dict[str, Any]:
    budget = spec.disruption_budget
    body: dict[str, Any] = {"selector": {"matchLabels": selector(owner)}}
    if budget.max_unavailable is not None:
        body["maxUnavailable"] = budget.max_unavailable
    else:
        body["minAvailable"] = budget.min_available
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(owner, owner.name),
        "spec": body,
    }


def desired(owner: Owner, spec: specs.ServiceSpec) -> tuple[dict[str, Any], ...]:
    """Every child the service should have; a Service only when there is a port to serve."""
    children = [deployment(owner, spec)]
    if spec.ports:
        children.append(service(owner, spec))
    children.append(disruption_budget(owner, spec))
    return tuple(children)


def controller_revision(owner: Owner, template: Mapping[str, Any], number: int) -> dict[str, Any]:
    """A ControllerRevision keeping one pod template, so any revision can be run again later.

    A rollout must be able to bring back the stable revision after the spec moved on (the spec
    holds only the newest template); this is how StatefulSets and DaemonSets keep theirs.
    """
    rev = revision(template)
    return {
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": _metadata(owner, f"{owner.name}-{rev}", {LABEL_REVISION: rev}),
        "data": {"template": dict(template)},
        "revision": number,
    }


def owned_by(owner: Owner, body: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """``body`` if this service owns it, else None: a same-named object that belongs to
    someone else (or to a deleted predecessor) must be treated as absent, not adopted."""
    if body is None:
        return None
    refs = (body.get("metadata") or {}).get("ownerReferences") or []
    return body if any(ref.get("uid") == owner.uid for ref in refs) else None


def is_subset(wanted: Any, actual: Any) -> bool:
    """True when everything we set is present in ``actual`` with the same value.

    The API server adds defaults (protocols, termination paths, ...) that we never set; those
    must not count as drift, or every reconcile would rewrite every child.
    """
    if isinstance(wanted, Mapping):
        return isinstance(actual, Mapping) and all(
            key in actual and is_subset(value, actual[key]) for key, value in wanted.items()
        )
    if isinstance(wanted, Sequence) and not isinstance(wanted, str):
        return (
            isinstance(actual, Sequence)
            and not isinstance(actual, str)
            and len(wanted) == len(actual)
            and all(is_subset(w, a) for w, a in zip(wanted, actual, strict=True))
        )
    return bool(wanted == actual)
