"""`homeostat run` must fail fast with one clear line when it cannot reach a cluster.

A crash-looping pod's last log line, or a person's terminal, is where this error is read; a
traceback or an endless retry loop there helps nobody.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HOMEOSTAT = str(Path(sys.executable).parent / "homeostat")


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HOMEOSTAT, *args], capture_output=True, text=True, timeout=60, env=env)


def _kubeconfig(tmp_path: Path, server: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "{server}", insecure-skip-tls-verify: true}}}}]
users: [{{name: u, user: {{token: not-a-real-token}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
"""
    )
    return path


def test_help_lists_commands() -> None:
    res = _run("--help")
    assert res.returncode == 0
    assert "run" in res.stdout


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "cannot load Kubernetes credentials"),
        ("garbage", "cannot load Kubernetes credentials"),
        ("no-context", "cannot load Kubernetes credentials"),
        ("unreachable", "cannot reach the API server at https://127.0.0.1:9"),
    ],
)
def test_bad_cluster_config_is_one_clear_line(tmp_path: Path, case: str, expected: str) -> None:
    if case == "missing":
        path = tmp_path / "does-not-exist"
    elif case == "garbage":
        path = tmp_path / "kubeconfig"
        path.write_text("::: this is not yaml :::\n\t- [")
    elif case == "no-context":
        path = tmp_path / "kubeconfig"
        path.write_text("apiVersion: v1\nkind: Config\nclusters: []\nusers: []\ncontexts: []\n")
    else:
        path = _kubeconfig(tmp_path, "https://127.0.0.1:9")
    res = _run("run", "--kubeconfig", str(path))
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("homeostat: error:")
    assert expected in lines[0]
    assert "Traceback" not in res.stderr + res.stdout
    assert "not-a-real-token" not in res.stderr + res.stdout
