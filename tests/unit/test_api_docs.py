"""docs/api.md is generated from the CRD; this fails when someone changed one and not the other.

Fix a failure by running `python tools/gen_api_docs.py`, never by editing docs/api.md by hand.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_api_docs", ROOT / "tools" / "gen_api_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_docs_are_up_to_date() -> None:
    gen = _generator()
    expected = gen.render(gen.load_crd())
    actual = (ROOT / "docs" / "api.md").read_text()
    assert actual == expected, "docs/api.md is stale: run python tools/gen_api_docs.py"


def test_api_docs_cover_every_field() -> None:
    gen = _generator()
    text = (ROOT / "docs" / "api.md").read_text()
    crd = gen.load_crd()
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for section in ("spec", "status"):
        for path, _, _ in gen.walk(schema["properties"][section], section):
            if path != section:
                assert f"| `{path}` |" in text, path


def test_check_mode_reports_staleness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = _generator()
    stale = tmp_path / "api.md"
    stale.write_text("old\n")
    monkeypatch.setattr(gen, "DOC_PATH", stale)
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0
    assert gen.main(["--check"]) == 0
