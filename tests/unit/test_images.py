"""The parts of tests/cluster/images.py that decide what to rebuild and what to call it.

A warm ``build_all()`` trusts these: if a changed input did not change its key, a stale image would
be deployed under a current-looking tag. No buildah runs here; archives are written by hand.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from cluster import images


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_key_changes_with_any_input_and_only_with_inputs(tmp_path: Path) -> None:
    root = tree(tmp_path, {"Dockerfile": "FROM x\n", "src/a.py": "a = 1\n", "src/b/c.py": "c = 1\n"})
    key = images.hash_inputs(["Dockerfile", "src"], root)
    assert images.hash_inputs(["Dockerfile", "src"], root) == key

    (root / "src/b/c.py").write_text("c = 2\n")
    changed = images.hash_inputs(["Dockerfile", "src"], root)
    assert changed != key

    (root / "src/b/d.py").write_text("")  # a new, empty file is an input too
    added = images.hash_inputs(["Dockerfile", "src"], root)
    assert added != changed

    (root / "src/b/d.py").rename(root / "src/b/e.py")  # so is a file's name
    renamed = images.hash_inputs(["Dockerfile", "src"], root)
    assert renamed != added

    (root / "src/b/e.py").chmod(0o755)
    assert images.hash_inputs(["Dockerfile", "src"], root) != renamed


def test_caches_and_bytecode_are_not_inputs(tmp_path: Path) -> None:
    root = tree(tmp_path, {"src/a.py": "a = 1\n"})
    key = images.hash_inputs(["src"], root)
    tree(root, {"src/__pycache__/a.cpython-311.pyc": "x", "src/.ruff_cache/x": "y", "src/z.pyc": "z"})
    assert images.hash_inputs(["src"], root) == key


def test_extra_strings_such_as_the_bases_key_change_the_key(tmp_path: Path) -> None:
    root = tree(tmp_path, {"Dockerfile": "FROM x\n"})
    assert images.hash_inputs(["Dockerfile"], root, ["base=1"]) != images.hash_inputs(
        ["Dockerfile"], root, ["base=2"]
    )


def test_a_missing_input_is_an_error_not_an_empty_hash(tmp_path: Path) -> None:
    with pytest.raises(images.ImageBuildError, match="does not exist"):
        images.hash_inputs(["nope"], tmp_path)


def test_refs_are_the_repository_and_a_short_hash() -> None:
    key = "3f9a1c2e4b5d" + "0" * 52
    assert images.tag_for(key) == "3f9a1c2e4b5d"
    assert images.tag_for(key, "upgrade") == "3f9a1c2e4b5d-upgrade"
    with pytest.raises(ValueError):
        images.tag_for(key, "no spaces")
    ref = images.operator_ref()
    repository, tag = images.split_ref(ref)
    assert repository == images.OPERATOR_REPOSITORY == "localhost/homeostat/operator"
    assert tag == images.tag_for(images.operator_key())
    assert images.operator_ref("second") == f"{ref}-second"
    assert images.split_ref(images.app_ref())[0] == images.APP_REPOSITORY
    with pytest.raises(ValueError):
        images.split_ref("localhost:5000/x")


def test_the_operators_key_follows_its_base(monkeypatch: pytest.MonkeyPatch) -> None:
    key = images.operator_key()
    monkeypatch.setattr(images, "base_key", lambda: "another base")
    assert images.operator_key() != key


def oci_archive(path: Path, ref: str) -> Path:
    manifest = json.dumps({"config": {"digest": "sha256:" + "c" * 64}, "layers": []}).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + "a" * 64,
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": ref},
            }
        ],
    }
    with tarfile.open(path, "w") as tar:
        for name, body in (
            ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            ("index.json", json.dumps(index).encode()),
            ("blobs/sha256/" + "a" * 64, manifest),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return path


def test_a_second_tag_is_the_same_image_under_another_name(tmp_path: Path) -> None:
    source = oci_archive(tmp_path / "a.oci.tar", "localhost/homeostat/operator:abc")
    target = tmp_path / "b.oci.tar"
    images.retag_archive(source, "localhost/homeostat/operator:abc-second", target)
    assert images.archive_manifest_digest(target) == images.archive_manifest_digest(source)
    assert images.archive_image_id(target) == "sha256:" + "c" * 64
    with tarfile.open(target) as tar:
        member = tar.extractfile("index.json")
        assert member is not None
        index = json.load(member)
        names = sorted(tar.getnames())
    with tarfile.open(source) as tar:
        assert names == sorted(tar.getnames())
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == (
        "localhost/homeostat/operator:abc-second"
    )


def test_the_cache_follows_homeostat_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOMEOSTAT_CACHE", str(tmp_path))
    assert images.cache_dir() == tmp_path / "images"
    assert str(tmp_path / "images/buildah/root") in images._buildah_global()


def test_a_warm_cache_needs_no_tools(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOMEOSTAT_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    for kind, key in (
        ("pause", images.pause_key()),
        ("debian-python", images.base_key()),
        ("operator", images.operator_key()),
        ("sample-app", images.app_key()),
    ):
        archive = images._archive_name(kind, key)
        archive.parent.mkdir(parents=True, exist_ok=True)
        archive.write_bytes(b"")
    built = images.build_all()
    assert [image.ref for image in built] == [
        images.PAUSE_REF,
        images.BASE_REF,
        images.operator_ref(),
        images.app_ref(),
    ]


def test_a_missing_tool_is_named_with_its_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOMEOSTAT_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(
        images.ImageBuildError, match=r"^image build needs buildah \(apt-get install buildah\)$"
    ):
        images.build_pause()


def test_a_failed_step_is_one_line_with_the_tool_its_last_error_and_the_log(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    script = (
        "import sys; print('noise', file=sys.stderr); print('E: no space left', file=sys.stderr); sys.exit(3)"
    )
    with pytest.raises(images.ImageBuildError) as caught:
        images._run(["python3", "-c", script], log)
    assert str(caught.value) == f"image build failed: python3: E: no space left; full log: {log}"
    assert "noise" in log.read_text()
