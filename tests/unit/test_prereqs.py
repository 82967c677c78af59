"""tests/cluster/prereqs.sh against stub apt-get, id and go, so no test installs anything.

The script is the only thing between a fresh machine and a test run that quietly tests less, so
what matters is checked here: it calls no apt command when everything is present, it installs
what is missing with one `apt-get update`, it never lets package scripts start services, and
whatever it cannot provide ends the run with exactly one line naming it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "cluster" / "prereqs.sh"
# What the script runs besides the stubs; nothing else from the host is on its PATH.
HOST_TOOLS = ("bash", "sh", "cat", "chmod", "dirname", "grep", "mktemp", "rm", "tail", "touch", "tr")

APT_GET = """#!/bin/sh
echo "apt-get $* policy=$(cat "$HOMEOSTAT_PREREQS_POLICY_RC" 2>/dev/null | tail -n 1)" >> "$STUB_LOG"
case "$1" in
  update) [ -z "$STUB_UPDATE_FAIL" ] || { echo "$STUB_UPDATE_FAIL"; exit 100; } ;;
  install)
    [ -z "$STUB_INSTALL_FAIL" ] || { echo "Reading package lists..."; echo "$STUB_INSTALL_FAIL"; exit 100; }
    [ -z "$STUB_CREATES" ] || touch $STUB_CREATES ;;
esac
"""


class Machine:
    """A PATH of stubs and selected host tools, and the environment the script runs with."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir()
        for tool in HOST_TOOLS:
            found = shutil.which(tool)
            assert found, tool
            (self.bin / tool).symlink_to(found)
        self.log = root / "calls.log"
        self.log.touch()
        self.stub("apt-get", APT_GET)
        self.stub("id", '#!/bin/sh\necho "${STUB_UID:-0}"\n')
        self.stub("go", '#!/bin/sh\necho "${STUB_GO:-go1.26.0}"\n')
        venv = root / "venv" / "bin"
        venv.mkdir(parents=True)
        (venv / "python").symlink_to(sys.executable)  # the venv exists: python3-venv is not needed
        self.env = {
            "PATH": str(self.bin),
            "PY": sys.executable,
            "VENV": str(root / "venv"),
            "STUB_LOG": str(self.log),
            "HOMEOSTAT_PREREQS_POLICY_RC": str(root / "policy-rc.d"),
            "HOMEOSTAT_PREREQS": "",
        }

    def stub(self, name: str, text: str) -> None:
        path = self.bin / name
        path.write_text(text)
        path.chmod(0o755)

    def tool(self, name: str) -> Path:
        """An absolute probe path that exists only once created (as the stub install does)."""
        return self.root / "installed" / name

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        (self.root / "installed").mkdir(exist_ok=True)
        return subprocess.run(
            ["bash", str(SCRIPT), *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=30,
        )

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return Machine(tmp_path)


def test_everything_present_runs_no_apt_and_is_fast(machine: Machine) -> None:
    machine.tool("x").parent.mkdir()
    machine.tool("x").touch()
    started = time.monotonic()
    result = machine.run(HOMEOSTAT_PREREQS=f"pkg-a={machine.tool('x')} pkg-b=bash,cat")
    elapsed = time.monotonic() - started
    assert (result.returncode, result.stderr) == (0, "")
    assert machine.calls() == []
    assert elapsed < 1.0


def test_missing_packages_are_installed_with_one_update(machine: Machine) -> None:
    a, b = machine.tool("a"), machine.tool("b")
    result = machine.run(
        HOMEOSTAT_PREREQS=f"pkg-a={a} pkg-b=bash,{b} pkg-c=cat",
        STUB_CREATES=f"{a} {b}",
    )
    assert result.returncode == 0, result.stderr
    assert machine.calls() == [
        "apt-get update -qq policy=exit 101",
        "apt-get install -y -qq --no-install-recommends pkg-a pkg-b policy=exit 101",
    ]
    # The policy that kept package scripts from starting services is gone again.
    assert not (machine.root / "policy-rc.d").exists()


def test_an_existing_policy_rc_is_left_alone(machine: Machine) -> None:
    policy = machine.root / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 0\n")
    machine.run(HOMEOSTAT_PREREQS=f"pkg-a={machine.tool('a')}", STUB_CREATES=str(machine.tool("a")))
    assert policy.read_text() == "#!/bin/sh\nexit 0\n"
    assert machine.calls()[-1].endswith("policy=exit 0")


def test_a_failed_install_stops_with_one_line_naming_it(machine: Machine) -> None:
    result = machine.run(
        HOMEOSTAT_PREREQS=f"prometheus={machine.tool('prometheus')}",
        STUB_INSTALL_FAIL="E: Unable to locate package prometheus",
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1:] == [
        "prerequisite missing: prometheus "
        "(apt-get install prometheus failed: E: Unable to locate package prometheus)"
    ]
    assert sum("prerequisite missing" in line for line in result.stderr.splitlines()) == 1


def test_a_failed_update_names_the_packages(machine: Machine) -> None:
    result = machine.run(
        HOMEOSTAT_PREREQS=f"buildah={machine.tool('buildah')}",
        STUB_UPDATE_FAIL="E: The repository 'x' does not have a Release file.",
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith(
        "prerequisite missing: buildah (apt-get update failed: E:"
    )
    assert len(machine.calls()) == 1  # no install after a failed update


def test_a_package_that_installs_without_its_file_is_named(machine: Machine) -> None:
    result = machine.run(HOMEOSTAT_PREREQS=f"runc={machine.tool('runc')}")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "prerequisite missing: runc (installed, but a file it should provide is absent)"
    )


def test_not_root_installs_nothing_and_says_what_to_run(machine: Machine) -> None:
    result = machine.run(HOMEOSTAT_PREREQS=f"gcc={machine.tool('gcc')}", STUB_UID="1000")
    assert result.returncode == 1
    assert result.stderr == (
        "prerequisite missing: gcc (not root; run: sudo apt-get install -y --no-install-recommends gcc)\n"
    )
    assert machine.calls() == []


def test_check_only_reports_and_installs_nothing(machine: Machine) -> None:
    result = machine.run("--check", HOMEOSTAT_PREREQS=f"mmdebstrap={machine.tool('m')}")
    assert (result.returncode, result.stderr) == (1, "prerequisite missing: mmdebstrap (run: make prereqs)\n")
    assert machine.calls() == []


def test_old_go_stops_the_run(machine: Machine) -> None:
    result = machine.run(STUB_GO="go1.22.5")
    assert (result.returncode, result.stderr) == (1, "prerequisite missing: go 1.24+ (found go1.22.5)\n")


def test_absent_go_stops_the_run(machine: Machine) -> None:
    (machine.bin / "go").unlink()
    result = machine.run()
    assert result.returncode == 1
    assert result.stderr.startswith("prerequisite missing: go 1.24+ (not on PATH")


def test_old_python_stops_the_run(machine: Machine) -> None:
    machine.stub("python-old", "#!/bin/sh\necho 3.9\n")
    result = machine.run(PY=str(machine.bin / "python-old"))
    assert result.returncode == 1
    assert result.stderr.startswith("prerequisite missing: python 3.11+ (")
    assert "is 3.9" in result.stderr


def test_python_without_ensurepip_gets_python3_venv_when_no_venv_exists(machine: Machine) -> None:
    # Debian's own python3 cannot make a venv until python3-venv is installed.
    machine.stub("python-debian", '#!/bin/sh\ncase "$2" in "import ensurepip") exit 1 ;; esac\necho 3.11\n')
    result = machine.run(PY=str(machine.bin / "python-debian"), VENV=str(machine.root / "no-venv"))
    assert result.returncode == 1
    assert "apt-get install -y -qq --no-install-recommends python3-venv policy=exit 101" in machine.calls()
    assert result.stderr.splitlines()[-1] == (
        f"prerequisite missing: python3-venv ({machine.bin / 'python-debian'} still cannot import ensurepip)"
    )


def test_the_default_table_names_what_the_project_uses() -> None:
    text = SCRIPT.read_text()
    table = text.split('DEFAULT_TABLE="', 1)[1].split('"\n', 1)[0]
    packages = {line.split("=", 1)[0] for line in table.split() if "=" in line}
    assert packages == {
        "prometheus",
        "containerd",
        "runc",
        "containernetworking-plugins",
        "buildah",
        "mmdebstrap",
        "iptables",
        "conntrack",
        "iproute2",
        "gcc",
        "libc6-dev",
        "openssl",
    }
    assert "/usr/bin/promtool" in table  # Debian's prometheus package ships promtool too


def test_script_is_valid_bash() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def _make_prerequisites(makefile: Path) -> dict[str, list[str]]:
    rules: dict[str, list[str]] = {}
    for line in makefile.read_text().splitlines():
        target, sep, deps = line.partition(":")
        if sep and not line.startswith(("\t", "#", ".")) and "=" not in target and not deps.startswith("="):
            rules[target.strip()] = deps.split()
    return rules


@pytest.mark.parametrize("target", ["binaries", "cluster-up", "test", "e2e", "demo", "bench", "chaos"])
def test_make_targets_that_need_the_machine_run_prereqs_first(target: str) -> None:
    rules = _make_prerequisites(SCRIPT.parents[2] / "Makefile")
    assert rules[target][:1] == ["prereqs"], rules[target]
    assert "tests/cluster/prereqs.sh" in (SCRIPT.parents[2] / "Makefile").read_text()


def test_ci_runs_the_readme_command_and_leaves_provisioning_to_it() -> None:
    ci = (SCRIPT.parents[2] / ".ci" / "run").read_text()
    assert "unset KUBECONFIG" in ci and ci.rstrip().endswith("make test")
    assert "apt-get" not in ci


def test_a_missing_prometheus_fails_the_tests_that_need_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import prom

    monkeypatch.setattr(prom, "PROMTOOL", str(tmp_path / "promtool"))
    with pytest.raises(pytest.fail.Exception, match=r"promtool is missing: run `make prereqs`"):
        prom.need_prometheus()
