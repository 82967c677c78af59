"""tests/kind/kind.sh, the path for users with Docker, as far as a machine without Docker can check.

Nothing here can run kind or docker, so a broken script would only show on a user's machine:
the script must parse, the Makefile targets must call it, every step must be there in the
right order, a missing tool must stop it with one line naming it, and the chart must render
with the exact values it installs with.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster import local

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "kind" / "kind.sh"
OPERATOR_REF = "localhost/homeostat/operator:dev"
APP_REF = "localhost/homeostat/sample-app:dev"


def test_script_parses() -> None:
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("target", "command"), [("kind-up", "up"), ("kind-e2e", "e2e"), ("kind-down", "down")]
)
def test_make_targets_call_the_script(target: str, command: str) -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(rf"^{target}:[^\n]*\n((?:\t[^\n]*\n)+)", makefile, re.M)
    assert recipe, f"no {target} rule"
    assert recipe.group(1).strip() == f"bash tests/kind/kind.sh {command}"
    assert target in makefile.split(".PHONY:", 1)[1].split("\n\n", 1)[0]


def test_up_builds_loads_and_installs_in_order() -> None:
    text = SCRIPT.read_text()
    steps = [
        'kind create cluster --name "$NAME" --config "$repo/kind-config.yaml"',
        'docker build -t "$OPERATOR_REPOSITORY:$TAG" "$repo"',
        'docker build -t "$APP_REPOSITORY:$TAG" "$repo/examples/app"',
        'docker tag "$OPERATOR_REPOSITORY:$TAG" "$OPERATOR_REPOSITORY:$TAG-upgrade"',
        'kind load docker-image --name "$NAME" "$OPERATOR_REPOSITORY:$TAG" '
        '"$OPERATOR_REPOSITORY:$TAG-upgrade"',
        'helm upgrade --install homeostat "$repo/charts/homeostat"',
    ]
    positions = [text.find(step) for step in steps]
    assert -1 not in positions, [s for s, p in zip(steps, positions, strict=True) if p == -1]
    assert positions == sorted(positions)
    for value in (
        '-n "$NAMESPACE" --create-namespace',
        '--set image.repository="$OPERATOR_REPOSITORY"',
        '--set image.tag="$TAG"',
        "--set image.pullPolicy=Never",
    ):
        assert value in text
    # Both Dockerfiles keep a public default base, which is what a Docker user can pull.
    for dockerfile in (ROOT / "Dockerfile", ROOT / "examples" / "app" / "Dockerfile"):
        if dockerfile.exists():
            assert re.search(r"^ARG BASE_IMAGE=python:3\.11", dockerfile.read_text(), re.M), dockerfile


def _run(command: str, tmp_path: Path, path: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), command],
        env={"PATH": path, "HOME": str(tmp_path), "HOMEOSTAT_CACHE": str(tmp_path / "cache"), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def _path_without(tmp_path: Path, *absent: str) -> str:
    """A PATH with bash and coreutils but none of ``absent`` (docker, kind, go...)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("bash", "cat", "chmod", "dirname", "grep", "mkdir", "rm"):
        found = shutil.which(tool)
        assert found
        if tool not in absent and not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def test_up_without_docker_stops_with_one_line(tmp_path: Path) -> None:
    result = _run("up", tmp_path, _path_without(tmp_path, "docker"))
    assert (result.returncode, result.stderr) == (
        1,
        "kind: prerequisite missing: docker (install Docker; kind runs its nodes as containers)\n",
    )


def test_up_with_a_stopped_docker_daemon_says_so(tmp_path: Path) -> None:
    path = _path_without(tmp_path)
    docker = Path(path) / "docker"
    docker.write_text("#!/bin/sh\nexit 1\n")
    docker.chmod(0o755)
    result = _run("up", tmp_path, path)
    assert result.returncode == 1
    assert result.stderr == "kind: prerequisite missing: a running Docker daemon (docker info failed)\n"


def test_e2e_points_the_suite_at_the_kind_cluster_and_its_images(tmp_path: Path) -> None:
    path = _path_without(tmp_path)
    venv = tmp_path / "venv"
    venv.mkdir()
    pytest_stub = venv / "pytest"
    pytest_stub.write_text(
        '#!/bin/sh\necho "$KUBECONFIG|$HOMEOSTAT_OPERATOR_IMAGE|$HOMEOSTAT_APP_IMAGE|$*"\n'
    )
    pytest_stub.chmod(0o755)
    kubeconfig = tmp_path / "kind.yaml"
    result = _run("e2e", tmp_path, path, VENV_BIN=str(venv), KIND_KUBECONFIG=str(kubeconfig))
    assert (result.returncode, result.stderr) == (
        1,
        "kind: no kind cluster homeostat: run make kind-up first\n",
    )
    kubeconfig.write_text("apiVersion: v1\n")
    result = _run("e2e", tmp_path, path, VENV_BIN=str(venv), KIND_KUBECONFIG=str(kubeconfig))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{kubeconfig}|{OPERATOR_REF}|{APP_REF}|-m e2e -q\n"


def test_an_unknown_command_prints_the_usage(tmp_path: Path) -> None:
    result = _run("sideways", tmp_path, _path_without(tmp_path))
    assert (result.returncode, result.stderr) == (1, "kind: usage: tests/kind/kind.sh up|e2e|down\n")


def _render() -> list[dict[str, Any]]:
    result = subprocess.run(
        [
            local.tool("helm"),
            "template",
            "homeostat",
            str(ROOT / "charts" / "homeostat"),
            "--namespace",
            "homeostat-system",
            "--set",
            "image.repository=localhost/homeostat/operator",
            "--set",
            "image.tag=dev",
            "--set",
            "image.pullPolicy=Never",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": os.environ.get("HOME", "/tmp")},
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_the_chart_renders_with_the_values_kind_installs_with() -> None:
    docs = _render()
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert len(deployments) == 1
    pod = deployments[0]["spec"]["template"]["spec"]
    assert [(c["image"], c["imagePullPolicy"]) for c in pod["containers"]] == [(OPERATOR_REF, "Never")]
    assert all(d["metadata"].get("namespace", "homeostat-system") == "homeostat-system" for d in docs)
