"""Static checks of the ReplicatedService CRD that need no cluster.

The API server accepts a CRD with missing descriptions, and `kubectl explain` and docs/api.md
then show nothing for those fields; it also accepts defaults that its own enum or pattern would
reject. These tests catch both early, and pin the parts other code relies on: the scale
subresource paths (kubectl scale, the autoscaler) and the printer columns.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "replicatedservices.homeostat.dev.yaml"
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


@pytest.fixture(scope="module")
def version(crd: dict[str, Any]) -> dict[str, Any]:
    (served,) = crd["spec"]["versions"]
    return served


@pytest.fixture(scope="module")
def schema(version: dict[str, Any]) -> dict[str, Any]:
    return version["schema"]["openAPIV3Schema"]


def nodes(node: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any], bool]]:
    """Every schema node below ``node`` as (path, node, is_property), items and maps included."""
    yield path, node, True
    for name, child in node.get("properties", {}).items():
        yield from nodes(child, f"{path}.{name}" if path else name)
    for key, suffix in (("items", "[]"), ("additionalProperties", "{}")):
        child = node.get(key)
        if isinstance(child, Mapping):
            for sub_path, sub, is_prop in nodes(child, path + suffix):
                yield sub_path, sub, is_prop and sub is not child


def test_identity(crd: dict[str, Any], version: dict[str, Any]) -> None:
    assert crd["metadata"]["name"] == "replicatedservices.homeostat.dev"
    spec = crd["spec"]
    assert spec["group"] == "homeostat.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "ReplicatedService",
        "listKind": "ReplicatedServiceList",
        "plural": "replicatedservices",
        "singular": "replicatedservice",
        "shortNames": ["rsvc"],
        "categories": ["homeostat"],
    }
    assert version["name"] == "v1alpha1"
    assert version["served"] and version["storage"]


def test_every_property_has_a_description(schema: dict[str, Any]) -> None:
    missing = [
        path or "<root>"
        for path, node, is_property in nodes(schema)
        if is_property and path != "metadata" and not str(node.get("description", "")).strip()
    ]
    # Root metadata is the one exception: the API server forbids a description on it.
    assert set(schema["properties"]["metadata"]) == {"type"}
    assert missing == []
    # Guard against the walk silently skipping a section.
    paths = {path for path, _, _ in nodes(schema)}
    assert {"spec.rollout.canary.steps[].weight", "status.conditions[].type", "status.forecast.mase"} <= paths


def test_schema_is_structural(schema: dict[str, Any]) -> None:
    untyped = [
        path
        for path, node, _ in nodes(schema)
        if "type" not in node and not node.get("x-kubernetes-int-or-string")
    ]
    assert untyped == []
    for path, node, _ in nodes(schema):
        if node.get("x-kubernetes-int-or-string"):
            assert node.get("anyOf") == [{"type": "integer"}, {"type": "string"}], path
            assert "type" not in node, path
        if node.get("type") == "object" and "properties" in node:
            missing = set(node.get("required", [])) - set(node["properties"])
            if not node.get("x-kubernetes-preserve-unknown-fields"):
                assert not missing, f"{path} requires undeclared {missing}"


def test_list_map_keys_are_required(schema: dict[str, Any]) -> None:
    found = {}
    for path, node, _ in nodes(schema):
        if node.get("x-kubernetes-list-type") == "map":
            keys = node["x-kubernetes-list-map-keys"]
            assert set(keys) <= set(node["items"].get("required", [])), path
            found[path] = keys
    assert found == {
        "spec.ports": ["name"],
        "spec.rollout.analysis.metrics": ["name"],
        "status.conditions": ["type"],
    }


def test_defaults_satisfy_their_own_schema(schema: dict[str, Any]) -> None:
    checked = 0
    for path, node, _ in nodes(schema):
        if "default" not in node:
            continue
        default = node["default"]
        checked += 1
        if "enum" in node:
            assert default in node["enum"], path
        if "pattern" in node and isinstance(default, str):
            assert re.fullmatch(node["pattern"], default), path
        if "minimum" in node and isinstance(default, int | float):
            assert default >= node["minimum"], path
        if "maximum" in node and isinstance(default, int | float):
            assert default <= node["maximum"], path
    assert checked > 20


def test_cel_rules_have_messages_and_bounded_inputs(schema: dict[str, Any]) -> None:
    count = 0
    for path, node, _ in nodes(schema):
        for rule in node.get("x-kubernetes-validations", []):
            count += 1
            assert rule.get("message", "").strip(), f"{path}: {rule['rule']}"
            if node.get("type") == "array":
                assert "maxItems" in node, f"{path}: a CEL rule over a list needs maxItems"
            if node.get("type") == "string":
                bounded = "maxLength" in node or "enum" in node
                assert bounded, f"{path}: a CEL rule over a string needs maxLength or enum"
    assert count >= 15


def test_durations_share_one_pattern(schema: dict[str, Any]) -> None:
    durations = [path for path, node, _ in nodes(schema) if node.get("pattern") == DURATION_PATTERN]
    assert "spec.rollout.analysis.interval" in durations
    assert "spec.approvals.timeout" in durations
    for path, node, _ in nodes(schema):
        described = "duration" in str(node.get("description", ""))
        if path.startswith("spec.") and node.get("type") == "string" and described:
            assert node.get("pattern") == DURATION_PATTERN, path
    valid = ["30s", "5m", "1h30m", "500ms", "1.5h", "0s"]
    invalid = ["", "30", "5 m", "1d", "-1s", "1h-30m", "ms"]
    assert all(re.fullmatch(DURATION_PATTERN, v) for v in valid)
    assert not any(re.fullmatch(DURATION_PATTERN, v) for v in invalid)


def test_positive_durations_have_a_cel_rule(schema: dict[str, Any]) -> None:
    # The pattern guard keeps a malformed value to one error (the pattern's) instead of adding a
    # CEL "type conversion error"; it must be the same pattern the field declares.
    # An upper bound also refuses seven digits before CEL parses the value: a duration past
    # about 2.5 million hours overflows, and would be a CEL error rather than the message.
    positive_rule = f'!self.matches(r"{DURATION_PATTERN}") || duration(self) > duration("0s")'
    at_most = re.compile(
        re.escape(
            f'!self.matches(r"{DURATION_PATTERN}") || (!self.matches(r"[0-9]{{7}}") && duration(self) <= '
        )
        + r'duration\("[0-9]+h"\)\)'
    )
    positive, bounded = set(), set()
    for path, node, _ in nodes(schema):
        for rule in node.get("x-kubernetes-validations", []):
            if "duration(self)" in rule["rule"]:
                assert rule["rule"] == positive_rule or at_most.fullmatch(rule["rule"]), path
                assert node["pattern"] == DURATION_PATTERN, path
                (positive if rule["rule"] == positive_rule else bounded).add(path)
    assert bounded == {
        "spec.rollout.canary.steps[].pause",
        "spec.autoscaling.behavior.scaleUp.stabilizationWindow",
        "spec.autoscaling.behavior.scaleDown.stabilizationWindow",
    }
    assert {
        "spec.rollout.analysis.interval",
        "spec.autoscaling.interval",
        "spec.approvals.timeout",
        "spec.autoscaling.forecast.history",
    } <= positive


def test_strategy_is_immutable(schema: dict[str, Any]) -> None:
    strategy = schema["properties"]["spec"]["properties"]["rollout"]["properties"]["strategy"]
    (rule,) = strategy["x-kubernetes-validations"]
    assert rule["rule"] == "self == oldSelf"
    assert rule["message"].startswith("rollout.strategy is immutable")


def test_defaults_from_the_adr(schema: dict[str, Any]) -> None:
    spec = schema["properties"]["spec"]["properties"]

    def at(*path: str) -> Any:
        node: Mapping[str, Any] = {"properties": spec}
        for name in path:
            node = node["properties"][name]
        return node["default"]

    assert at("replicas", "min") == 1
    assert at("replicas", "max") == 10
    assert at("disruptionBudget") == {"maxUnavailable": 1}
    assert at("rollout", "strategy") == "RollingUpdate"
    assert at("rollout", "analysis", "interval") == "30s"
    assert at("rollout", "analysis", "failureLimit") == 2
    assert at("rollout", "analysis", "inconclusiveLimit") == 3
    assert at("rollout", "analysis", "consecutiveErrorLimit") == 4
    assert at("autoscaling", "mode") == "Off"
    assert at("autoscaling", "interval") == "30s"
    assert at("autoscaling", "tolerance") == 0.1
    assert at("autoscaling", "startupDelay") == "60s"
    assert at("autoscaling", "forecast", "method") == "HoltWinters"
    assert at("autoscaling", "forecast", "seasonality") == "Auto"
    assert at("autoscaling", "forecast", "history") == "168h"
    assert at("autoscaling", "forecast", "quantile") == 0.9
    assert at("autoscaling", "forecast", "refitInterval") == "24h"
    assert at("approvals", "timeout") == "1h"
    assert spec["ports"]["items"]["properties"]["protocol"]["default"] == "TCP"


def test_status_shape(schema: dict[str, Any]) -> None:
    status = schema["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == [
        "Pending",
        "Ready",
        "Progressing",
        "Degraded",
        "Paused",
        "RollingBack",
        "InvalidSpec",
    ]
    condition = status["conditions"]["items"]["properties"]
    assert set(condition) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }
    assert status["rollout"]["x-kubernetes-preserve-unknown-fields"] is True
    assert set(status["forecast"]["properties"]) == {
        "method",
        "horizon",
        "predictedPeak",
        "predictedPeakAt",
        "mase",
        "smape",
        "lastFitTime",
        "mode",
        "fallback",
    }
    assert set(status["lastRemediation"]["properties"]) == {"action", "target", "cause", "outcome", "time"}
    assert status["selector"]["type"] == "string"


def test_subresources(version: dict[str, Any]) -> None:
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas.desired",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }


def test_printer_columns(version: dict[str, Any], schema: dict[str, Any]) -> None:
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Phase": ".status.phase",
        "Ready": ".status.readyReplicas",
        "Desired": ".status.desiredReplicas",
        "Revision": ".status.currentRevision",
        "Canary%": ".status.canary.weight",
        "Peak": ".status.forecast.predictedPeak",
        "Age": ".metadata.creationTimestamp",
    }
    # Each column points at a field that exists in the schema.
    paths = {"." + path.replace("[]", "") for path, _, _ in nodes(schema)}
    for path in columns.values():
        assert path in paths or path.startswith(".metadata."), path


def test_template_keeps_the_pod_spec(schema: dict[str, Any]) -> None:
    spec = schema["properties"]["spec"]
    assert spec["required"] == ["template"]
    pod = spec["properties"]["template"]["properties"]["spec"]
    assert pod["x-kubernetes-preserve-unknown-fields"] is True
    assert pod["required"] == ["containers"]
    containers = pod["properties"]["containers"]
    assert (containers["minItems"], containers["maxItems"]) == (1, 20)
    assert containers["items"]["x-kubernetes-preserve-unknown-fields"] is True
    assert containers["items"]["required"] == ["name", "image"]


def test_object_defaults_agree_with_field_defaults(schema: dict[str, Any]) -> None:
    """An object default spells out its fields' defaults: the API server checks CEL rules
    against the default as written, without applying nested defaults first."""
    checked = 0
    for path, node, _ in nodes(schema):
        if node.get("type") != "object" or not isinstance(node.get("default"), Mapping):
            continue
        for key, value in node["default"].items():
            child = node["properties"][key]
            if "default" in child:
                assert child["default"] == value, f"{path}.{key}"
                checked += 1
    assert checked >= 3


def _all_nodes(path: Path) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for doc in yaml.safe_load_all(path.read_text()):
        for version in doc["spec"]["versions"]:
            for where, node, _ in nodes(version["schema"]["openAPIV3Schema"]):
                yield f"{version['name']}:{where}", node


@pytest.mark.parametrize("path", sorted((ROOT / "crds").glob("*.yaml")), ids=lambda p: p.name)
def test_fractional_bounds_are_checked_by_cel(path: Path) -> None:
    """The API server compares a whole-number value with ``minimum``/``maximum`` cut to whole
    numbers (quantile 0 passed minimum 0.5, and 1.0 was refused as above 0): every bound that
    is not a whole number must be repeated in a CEL rule, which compares exactly (issue 14)."""
    for where, node in _all_nodes(path):
        rules = [rule["rule"] for rule in node.get("x-kubernetes-validations", [])]
        for key, op in (("minimum", ">"), ("maximum", "<")):
            bound = node.get(key)
            if bound is None or float(bound).is_integer():
                continue
            strict = node.get(f"exclusive{key.title()}")
            wanted = f"self {op if strict else op + '='} {bound}"
            assert any(wanted in rule for rule in rules), f"{where}: no CEL rule {wanted}"
