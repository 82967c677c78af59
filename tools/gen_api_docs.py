"""Generate docs/api.md, the ReplicatedService API reference, from the CRD.

The CRD in crds/ is the single source of truth for the API (ADR 0003); writing the reference by
hand would let the two drift. This walks the OpenAPI schema and renders one row per field with
its type, default, description and validation rules (schema bounds and CEL), and a test
(tests/unit/test_api_docs.py) fails when docs/api.md is not what this script would write.

Usage: python tools/gen_api_docs.py [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CRD_PATH = ROOT / "crds" / "replicatedservices.homeostat.dev.yaml"
DOC_PATH = ROOT / "docs" / "api.md"

Schema = Mapping[str, Any]


def load_crd(path: Path = CRD_PATH) -> dict[str, Any]:
    with path.open() as fh:
        crd: dict[str, Any] = yaml.safe_load(fh)
    return crd


def _cell(text: str) -> str:
    """Make text safe inside a markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _code(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "))
    return f"`{text}`"


def type_name(node: Schema) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    kind = node.get("type", "any")
    if kind == "array":
        return f"[]{type_name(node.get('items', {}))}"
    if kind == "object" and "additionalProperties" in node and "properties" not in node:
        return f"map[string]{type_name(node['additionalProperties'])}"
    if "format" in node and kind in ("integer", "number"):
        return f"{kind} ({node['format']})"
    return str(kind)


def rules(node: Schema, required: bool) -> list[str]:
    """Human-readable validation rules of one schema node, in a fixed order."""
    out = []
    if required:
        out.append("required")
    if node.get("format") == "date-time":
        out.append("RFC 3339 date-time")
    if "enum" in node:
        out.append("one of " + ", ".join(_code(v) for v in node["enum"]))
    if "minimum" in node:
        op = ">" if node.get("exclusiveMinimum") else ">="
        out.append(f"{op} {node['minimum']}")
    if "maximum" in node:
        op = "<" if node.get("exclusiveMaximum") else "<="
        out.append(f"{op} {node['maximum']}")
    for key, label in (
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
        ("maxProperties", "max entries"),
    ):
        if key in node:
            out.append(f"{label} {node[key]}")
    if "pattern" in node:
        out.append(f"pattern {_code(node['pattern'])}")
    if node.get("x-kubernetes-list-type") == "map":
        keys = ", ".join(node.get("x-kubernetes-list-map-keys", []))
        out.append(f"list-map keyed by {keys}")
    elif node.get("x-kubernetes-list-type") == "set":
        out.append("unique items")
    if node.get("x-kubernetes-preserve-unknown-fields"):
        out.append("unknown fields preserved")
    for rule in node.get("x-kubernetes-validations", []):
        message = " ".join(str(rule.get("message", "")).split())
        kind = "transition rule" if "oldSelf" in rule["rule"] else "CEL"
        out.append(f"{kind} {_code(rule['rule'])}: {message}")
    return out


def walk(node: Schema, path: str, required: bool = False) -> Iterator[tuple[str, Schema, bool]]:
    """Every documented field below node as (path, schema, required), depth first, in file order."""
    yield path, node, required
    if node.get("type") == "array" and isinstance(node.get("items"), Mapping):
        items = node["items"]
        for name, child in items.get("properties", {}).items():
            yield from walk(child, f"{path}[].{name}", name in items.get("required", []))
        return
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}", name in node.get("required", []))


def _field_table(rows: Sequence[tuple[str, Schema, bool]]) -> list[str]:
    lines = [
        "| Field | Type | Default | Description | Validation |",
        "| --- | --- | --- | --- | --- |",
    ]
    for path, node, required in rows:
        default = _code(node["default"]) if "default" in node else ""
        lines.append(
            f"| `{path}` | {_cell(type_name(node))} | {_cell(default)} "
            f"| {_cell(node.get('description', ''))} | {_cell('; '.join(rules(node, required)))} |"
        )
    return lines


def render(crd: Mapping[str, Any]) -> str:
    spec = crd["spec"]
    names = spec["names"]
    (version,) = (v for v in spec["versions"] if v.get("storage"))
    schema = version["schema"]["openAPIV3Schema"]
    api_version = f"{spec['group']}/{version['name']}"
    lines = [
        f"# {names['kind']} API reference ({api_version})",
        "",
        "<!-- Generated by tools/gen_api_docs.py from "
        "crds/replicatedservices.homeostat.dev.yaml; do not edit by hand. -->",
        "",
        " ".join(schema.get("description", "").split()),
        "",
        f"- API version: `{api_version}`",
        f"- Kind: `{names['kind']}` (plural `{names['plural']}`, singular `{names['singular']}`)",
        f"- Short names: {', '.join(_code(n) for n in names.get('shortNames', []))}",
        f"- Categories: {', '.join(_code(n) for n in names.get('categories', []))}",
        f"- Scope: {spec['scope']}",
        "- Durations are Go-style strings such as `30s`, `5m`, `1h30m` or `500ms`.",
    ]
    subresources = version.get("subresources", {})
    if "status" in subresources:
        lines.append("- Subresource `status`: only the operator writes `.status`.")
    if "scale" in subresources:
        scale = subresources["scale"]
        lines.append(
            f"- Subresource `scale`: `kubectl scale` writes `{scale['specReplicasPath']}`, reads "
            f"`{scale['statusReplicasPath']}` and selects pods with `{scale['labelSelectorPath']}`."
        )
    for rule in schema.get("x-kubernetes-validations", []):
        lines.append(f"- Object rule {_code(rule['rule'])}: {' '.join(rule['message'].split())}")
    columns = version.get("additionalPrinterColumns", [])
    if columns:
        lines += ["", "## Printer columns", "", "| Column | Type | Source |", "| --- | --- | --- |"]
        lines += [f"| {c['name']} | {c['type']} | `{c['jsonPath']}` |" for c in columns]
    properties = schema["properties"]
    for name, child in properties["spec"]["properties"].items():
        rows = list(walk(child, f"spec.{name}", name in properties["spec"].get("required", [])))
        lines += ["", f"## spec.{name}", "", *_field_table(rows)]
    rows = list(walk(properties["status"], "status"))[1:]
    lines += ["", "## status", "", *_field_table(rows)]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail instead of writing when out of date")
    args = parser.parse_args(argv)
    text = render(load_crd())
    if args.check:
        if not DOC_PATH.exists() or DOC_PATH.read_text() != text:
            sys.stderr.write(
                f"{DOC_PATH.relative_to(ROOT)} is out of date; run python tools/gen_api_docs.py\n"
            )
            return 1
        return 0
    DOC_PATH.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
