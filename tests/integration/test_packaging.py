"""The image installs the built wheel into a clean environment; check that path works here.

`docker build` cannot run on our machines, so this repeats the Dockerfile's install steps:
build the wheel, install it into a fresh virtual environment, run the console script.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_installs_into_clean_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheels = list(dist.glob("homeostat-*.whl"))
    assert len(wheels) == 1
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=True)
    pip = env_dir / "bin" / "pip"
    subprocess.run([str(pip), "install", "--quiet", str(wheels[0])], check=True, timeout=900)
    res = subprocess.run(
        [str(env_dir / "bin" / "homeostat"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert "run" in res.stdout
    # The package, not a stray `operator` package, must be what got installed.
    listing = subprocess.run(
        [
            str(env_dir / "bin" / "python"),
            "-c",
            "import homeostat, operator; print(homeostat.__file__, operator.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "site-packages/homeostat" in listing
    assert "site-packages" not in listing.split()[1]
