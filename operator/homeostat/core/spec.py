"""The ReplicatedService spec as frozen values, parsed once at the edge of the core.

The API server's schema and CEL rules reject most bad input, but the operator must not trust
that: a CRD may be older than the operator, and some mistakes (a pod spec Kubernetes refuses)
only show when children are applied. Parsing returns a value or a ``SpecError`` naming the
field, which the reconciler turns into an ``InvalidSpec`` condition instead of a crash.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Mapping
from typing import Any

from homeostat.core import fields

# The spec's error is the field parsers' error; every module names it as spec.SpecError.
SpecError = fields.SpecError
JSON = dict[str, Any]

_QUANTITY = re.compile(r"^([+-]?[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
_QUANTITY_SUFFIX = {
    None: 1.0,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
    "Pi": 2.0**50,
    "Ei": 2.0**60,
}


class Strategy(enum.StrEnum):
    ROLLING_UPDATE = "RollingUpdate"
    CANARY = "Canary"
    BLUE_GREEN = "BlueGreen"


@dataclasses.dataclass(frozen=True)
class Port:
    name: str
    port: int
    target_port: int | str
    protocol: str = "TCP"


@dataclasses.dataclass(frozen=True)
class Replicas:
    min: int = 1
    max: int = 10
    desired: int | None = None

    @property
    def effective(self) -> int:
        """What the workload should run: the desired count, kept inside the bounds."""
        wanted = self.min if self.desired is None else self.desired
        return max(self.min, min(self.max, wanted))


@dataclasses.dataclass(frozen=True)
class DisruptionBudget:
    max_unavailable: int | str | None = 1
    min_available: int | str | None = None


@dataclasses.dataclass(frozen=True)
class ServiceSpec:
    template: Mapping[str, Any]
    ports: tuple[Port, ...] = ()
    replicas: Replicas = Replicas()
    disruption_budget: DisruptionBudget = DisruptionBudget()
    strategy: Strategy = Strategy.ROLLING_UPDATE
    min_ready_seconds: int = 0


def quantity(value: Any) -> float | None:
    """A Kubernetes quantity (``128Mi``, ``1G``, ``1e9``, ``500m``) in base units; None when
    unreadable. Memory limits, ceilings and working sets are compared in these units."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    match = _QUANTITY.match(value.strip())
    return float(match.group(1)) * _QUANTITY_SUFFIX[match.group(2)] if match else None


def _int_or_percent(value: Any, field: str) -> int | str:
    if isinstance(value, str) and re.fullmatch(r"[0-9]+%", value):
        return value
    return fields.integer(value, field)


# A pod template a person writes is about a dozen levels deep (affinity terms are the deepest).
# The schema passes most of it through unvalidated, and junk nested hundreds of levels deep
# would otherwise reach everything that walks it (copies, diffs, the Deployment's JSON).
MAX_TEMPLATE_DEPTH = 32


def nested_beyond(value: Any, limit: int, path: str) -> str | None:
    """The path of the first value more than ``limit`` levels below ``value``, or None. A loop,
    not recursion: the point is to survive what recursion would not."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if depth > limit:
            return where
        if isinstance(item, Mapping):
            stack.extend((v, f"{where}.{k}", depth + 1) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(item))
    return None


def _parse_template(raw: Any) -> Mapping[str, Any]:
    template = fields.mapping(raw, "spec.template")
    deep = nested_beyond(template, MAX_TEMPLATE_DEPTH, "spec.template")
    if deep is not None:
        raise SpecError(deep[:200], f"is nested more than {MAX_TEMPLATE_DEPTH} levels below spec.template")
    pod = fields.mapping(template.get("spec"), "spec.template.spec")
    containers = pod.get("containers")
    if not isinstance(containers, list) or not containers:
        raise SpecError("spec.template.spec.containers", "at least one container is required")
    for i, raw_container in enumerate(containers):
        container = fields.mapping(raw_container, f"spec.template.spec.containers[{i}]")
        for key in ("name", "image"):
            if not isinstance(container.get(key), str) or not container[key]:
                raise SpecError(f"spec.template.spec.containers[{i}].{key}", "is required")
        _check_resources(container.get("resources"), f"spec.template.spec.containers[{i}].resources")
    return template


# The grammar of resource.Quantity: an API server refusing a Deployment for a malformed one does
# not say which field it was.
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_K8S_QUANTITY = re.compile(rf"[+-]?{_NUMBER}(?:Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?{_NUMBER}|m|k|M|G|T|P|E)?")


def _check_resources(raw: Any, field: str) -> None:
    if not isinstance(raw, Mapping):
        return
    for part in ("limits", "requests"):
        values = raw.get(part)
        if not isinstance(values, Mapping):
            continue
        for name, value in values.items():
            if isinstance(value, bool) or not (
                isinstance(value, int | float) or (isinstance(value, str) and _K8S_QUANTITY.fullmatch(value))
            ):
                raise SpecError(
                    f"{field}.{part}.{name}", f"{value!r:.40} is not a quantity such as 128Mi, 0.5 or 500m"
                )


def _parse_ports(raw: Any) -> tuple[Port, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SpecError("spec.ports", "must be a list")
    ports = []
    for i, raw_item in enumerate(raw):
        item = fields.mapping(raw_item, f"spec.ports[{i}]")
        port = fields.integer(item.get("port"), f"spec.ports[{i}].port", 1)
        target = item.get("targetPort", port)
        if not isinstance(target, str):
            target = fields.integer(target, f"spec.ports[{i}].targetPort", 1)
        name = item.get("name") or f"port-{port}"
        ports.append(Port(str(name), port, target, str(item.get("protocol", "TCP"))))
    if len({p.name for p in ports}) != len(ports):
        raise SpecError("spec.ports", "port names must be unique")
    return tuple(ports)


def parse_replicas(raw: Any) -> Replicas:
    if raw is None:
        return Replicas()
    raw = fields.mapping(raw, "spec.replicas")
    low = fields.integer(raw.get("min", 1), "spec.replicas.min")
    high = fields.integer(raw.get("max", max(low, 10)), "spec.replicas.max", 1)
    if low > high:
        raise SpecError("spec.replicas", f"min ({low}) must not exceed max ({high})")
    desired = raw.get("desired")
    if desired is not None:
        desired = fields.integer(desired, "spec.replicas.desired")
    return Replicas(low, high, desired)


def _parse_budget(raw: Any) -> DisruptionBudget:
    if raw is None:
        return DisruptionBudget()
    raw = fields.mapping(raw, "spec.disruptionBudget")
    max_u, min_a = raw.get("maxUnavailable"), raw.get("minAvailable")
    if (max_u is None) == (min_a is None):
        raise SpecError("spec.disruptionBudget", "set exactly one of maxUnavailable and minAvailable")
    if max_u is not None:
        return DisruptionBudget(
            max_unavailable=_int_or_percent(max_u, "spec.disruptionBudget.maxUnavailable")
        )
    return DisruptionBudget(
        max_unavailable=None, min_available=_int_or_percent(min_a, "spec.disruptionBudget.minAvailable")
    )


def parse(raw: Mapping[str, Any]) -> ServiceSpec:
    """Turn a ReplicatedService ``spec`` into a ``ServiceSpec`` or raise ``SpecError``."""
    rollout = raw.get("rollout") or {}
    strategy_name = fields.mapping(rollout, "spec.rollout").get("strategy", Strategy.ROLLING_UPDATE.value)
    try:
        strategy = Strategy(strategy_name)
    except ValueError:
        raise SpecError("spec.rollout.strategy", f"unknown strategy {strategy_name!r}") from None
    return ServiceSpec(
        template=_parse_template(raw.get("template")),
        ports=_parse_ports(raw.get("ports")),
        replicas=parse_replicas(raw.get("replicas")),
        disruption_budget=_parse_budget(raw.get("disruptionBudget")),
        strategy=strategy,
        min_ready_seconds=fields.integer(raw.get("minReadySeconds", 0), "spec.minReadySeconds"),
    )


def default_desired(raw: Mapping[str, Any], resource_version: str | None) -> list[JSON] | None:
    """JSON-patch operations that set an unset ``spec.replicas.desired`` to ``min``, or None.

    The scale subresource maps ``.spec.replicas.desired``; while it is unset the API server
    answers every GET of ``/scale`` with an InternalError, so an HPA targeting the service never
    scales it (issue 14.12). A CRD default is a constant and cannot be ``min``, so the operator
    writes it, only if the object is still the version it judged (the ``test`` operation): a
    ``kubectl scale`` landing first wins.
    """
    replicas = raw.get("replicas")
    if not isinstance(replicas, Mapping) or replicas.get("desired") is not None or not resource_version:
        return None
    try:
        low = parse_replicas(replicas).min
    except SpecError:
        return None  # the reconcile reports it
    return [
        {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version},
        {"op": "add", "path": "/spec/replicas/desired", "value": low},
    ]
