"""Render the Helm chart without a cluster and check what a cluster admin would object to.

The chart is how Homeostat reaches production clusters, and its mistakes only show up at install
time on someone else's cluster: a pod rejected by Pod Security admission, a Slack token leaked
into the environment, CRDs that drifted from the ones the e2e tests validated, an undocumented
value. Each of those is checked here against `helm template` output, with the real helm binary
that tests/cluster/build.sh builds.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster import local

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "homeostat"
REPO_CRDS = ROOT / "crds"
CHART_CRDS = CHART / "crds"
SECRETS_DIR = "/etc/homeostat/secrets"

# Value sets the chart must render with; the ids name them in test output.
SCENARIOS: dict[str, list[str]] = {
    "defaults": [],
    "namespaced": ["--set", "watchNamespaces={a,b}"],
    "ha": ["--set", "replicas=2"],
    "servicemonitor": ["--set", "serviceMonitor.enabled=true"],
    "everything": [
        "--set",
        "watchNamespaces={a,b}",
        "--set",
        "replicas=2",
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "slack.existingSecret=homeostat-slack",
    ],
}


def helm_binary() -> str:
    """The helm that tests/cluster/build.sh put in the cache (HOMEOSTAT_CACHE is honoured)."""
    return local.tool("helm")


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=120, check=False)


def render(extra: Sequence[str] = ()) -> list[dict[str, Any]]:
    result = helm("template", "hs", str(CHART), "--namespace", "homeostat-system", *extra)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def only(docs: Sequence[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def the_deployment(docs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    (deployment,) = only(docs, "Deployment")
    return deployment


def walk(node: Any) -> Iterator[tuple[Any, Any]]:
    """Every (key, value) pair in a nested structure of dicts and lists."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def docs(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(SCENARIOS[request.param])


def test_lint_strict() -> None:
    result = helm("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr


def test_lint_strict_with_every_option() -> None:
    result = helm("lint", "--strict", str(CHART), *SCENARIOS["everything"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_renders_the_expected_objects() -> None:
    kinds = sorted(doc["kind"] for doc in render())
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "RemediationPolicy",
        "Service",
        "ServiceAccount",
    ]

    kinds = sorted(doc["kind"] for doc in render(SCENARIOS["everything"]))
    assert kinds == sorted(
        ["ClusterRole", "ClusterRoleBinding"]
        + ["Role", "RoleBinding", "KopfPeering"] * 2
        + ["Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "ServiceMonitor"]
        + ["RemediationPolicy"]
    )
    kinds = sorted(doc["kind"] for doc in render(["--set", "defaultPolicy.enabled=false"]))
    assert "RemediationPolicy" not in kinds


def test_pod_security_standard_restricted(docs: list[dict[str, Any]]) -> None:
    pod = the_deployment(docs)["spec"]["template"]["spec"]
    pod_ctx = pod["securityContext"]
    assert pod_ctx["runAsNonRoot"] is True
    assert pod_ctx["runAsUser"] == 10001
    assert pod_ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    for volume in pod["volumes"]:
        assert "hostPath" not in volume, volume
    for container in pod["containers"] + pod.get("initContainers", []):
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False, container["name"]
        assert ctx["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert ctx["readOnlyRootFilesystem"] is True, container["name"]
        assert ctx["runAsNonRoot"] is True, container["name"]
        assert ctx.get("runAsUser", pod_ctx["runAsUser"]) == 10001, container["name"]
        assert ctx.get("privileged", False) is False, container["name"]
        assert ctx.get("seccompProfile", pod_ctx["seccompProfile"]) == {"type": "RuntimeDefault"}
        assert "ports" not in container or all("hostPort" not in p for p in container["ports"])


def test_writable_tmp_on_read_only_root(docs: list[dict[str, Any]]) -> None:
    pod = the_deployment(docs)["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    (container,) = pod["containers"]
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]


def test_service_account_token(docs: list[dict[str, Any]]) -> None:
    (account,) = only(docs, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    pod = the_deployment(docs)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == account["metadata"]["name"]


def test_no_secret_reaches_the_environment(docs: list[dict[str, Any]]) -> None:
    for key, value in walk(docs):
        assert key not in ("secretKeyRef", "secretRef"), value
    (container,) = the_deployment(docs)["spec"]["template"]["spec"]["containers"]
    assert "envFrom" not in container
    for var in container["env"]:
        assert not re.search(r"TOKEN|SIGNING|PASSWORD", var["name"]), var


def test_slack_secret_is_a_read_only_volume() -> None:
    pod = the_deployment(render(SCENARIOS["everything"]))["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == SECRETS_DIR]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "homeostat-slack"
    assert {item["key"] for item in volume["secret"]["items"]} == {"bot-token", "signing-secret"}
    env = {var["name"]: var.get("value") for var in container["env"]}
    assert env["HOMEOSTAT_SECRETS_DIR"] == SECRETS_DIR

    # Without a Secret configured nothing is mounted (a missing Secret would block the pod).
    pod = the_deployment(render())["spec"]["template"]["spec"]
    assert all("secret" not in volume for volume in pod["volumes"])


def test_container_contract(docs: list[dict[str, Any]]) -> None:
    deployment = the_deployment(docs)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/homeostat/homeostat:0.1.0"
    args = container["args"]
    assert args[:2] == ["run", "--log-format=json"]
    assert "--liveness=http://0.0.0.0:8081/healthz" in args
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8080, "health": 8081}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert set(container["resources"]) == {"requests", "limits"}
    env = {var["name"]: var for var in container["env"]}
    for name in ("HOMEOSTAT_PROMETHEUS_URL", "HOMEOSTAT_SLACK_API_URL", "HOMEOSTAT_SLACK_CHANNEL"):
        assert "value" in env[name], name
    assert env["HOMEOSTAT_SECRETS_DIR"]["value"] == SECRETS_DIR


def test_namespace_flags() -> None:
    (container,) = the_deployment(render())["spec"]["template"]["spec"]["containers"]
    assert "--all-namespaces" in container["args"]
    assert not [arg for arg in container["args"] if arg.startswith("--namespace")]

    (container,) = the_deployment(render(SCENARIOS["namespaced"]))["spec"]["template"]["spec"]["containers"]
    assert "--all-namespaces" not in container["args"]
    assert [arg for arg in container["args"] if arg.startswith("--namespace")] == [
        "--namespace=a",
        "--namespace=b",
    ]


def test_namespace_globs_are_refused() -> None:
    result = helm("template", "hs", str(CHART), "--set", "watchNamespaces={team-*}")
    assert result.returncode != 0
    assert "globs are not supported" in result.stderr


def test_standalone_by_default() -> None:
    docs = render()
    deployment = the_deployment(docs)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "HOMEOSTAT_PEERING" not in {var["name"] for var in container["env"]}
    assert not only(docs, "PodDisruptionBudget")
    assert not only(docs, "ClusterKopfPeering")


def test_high_availability_peers() -> None:
    docs = render(SCENARIOS["ha"])
    deployment = the_deployment(docs)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {var["name"]: var for var in container["env"]}
    assert env["HOMEOSTAT_PEERING"]["value"] == deployment["metadata"]["name"]
    # Equal priorities pause every kopf peer; the chart must not hand all pods the same one.
    assert "HOMEOSTAT_PRIORITY" not in env
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    (peering,) = only(docs, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == env["HOMEOSTAT_PEERING"]["value"]
    (pdb,) = only(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]

    refused = helm("template", "hs", str(CHART), "--set", "replicas=2", "--set", "peering.priority=5")
    assert refused.returncode != 0
    assert "peering.priority must be empty" in refused.stderr


def test_service_and_service_monitor() -> None:
    docs = render(SCENARIOS["servicemonitor"])
    deployment = the_deployment(docs)
    (service,) = only(docs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    (monitor,) = only(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [endpoint["port"] for endpoint in monitor["spec"]["endpoints"]] == ["http"]
    assert not only(render(), "ServiceMonitor")


def test_image_tag_defaults_to_app_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["apiVersion"], chart["name"], chart["version"]) == ("v2", "homeostat", "0.1.0")
    (container,) = the_deployment(render())["spec"]["template"]["spec"]["containers"]
    assert container["image"].endswith(":" + str(chart["appVersion"]))
    (container,) = the_deployment(render(["--set", "image.tag=1.2.3"]))["spec"]["template"]["spec"][
        "containers"
    ]
    assert container["image"] == "ghcr.io/homeostat/homeostat:1.2.3"


KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z0-9_.-]+):(\s|$)")


def test_every_value_is_documented() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    keys = 0
    for number, line in enumerate(lines):
        match = KEY_LINE.match(line)
        if not match:
            continue
        keys += 1
        previous = lines[number - 1].strip() if number else ""
        assert previous.startswith("#"), (
            f"values.yaml:{number + 1}: {match['key']!r} has no comment line above it"
        )
    assert keys >= 20, "the key pattern stopped matching values.yaml"
    # Keys inside lists of maps would escape the check above; keep the defaults free of them.
    assert not [line for line in lines if re.match(r"^\s*-\s+[A-Za-z0-9_.-]+:", line)]


def test_chart_crds_are_copies_of_the_repository_crds() -> None:
    repo = {path.name: path.read_bytes() for path in sorted(REPO_CRDS.glob("*.yaml"))}
    if not repo:
        pytest.skip("crds/ is still empty")
    chart = {path.name: path.read_bytes() for path in sorted(CHART_CRDS.glob("*.yaml"))}
    assert sorted(chart) == sorted(repo), "run `make chart-crds`"
    for name, content in repo.items():
        assert chart[name] == content, (
            f"charts/homeostat/crds/{name} differs from crds/{name}: run `make chart-crds`"
        )


def test_chart_policies_are_copies_of_the_repository_policies() -> None:
    repo = {path.name: path.read_bytes() for path in sorted((ROOT / "policies").glob("*.yaml"))}
    chart = {path.name: path.read_bytes() for path in sorted((CHART / "policies").glob("*.yaml"))}
    assert repo, "policies/ should ship at least the default policy"
    assert chart == repo, "charts/homeostat/policies differs from policies/: run `make chart-crds`"


def test_drain_scope_follows_the_install_mode() -> None:
    """A namespaced install without cluster-wide drain rights tells the operator to stay inside
    its namespaces; every other combination drains the whole node (ADR 0014)."""

    def args(*sets: str) -> list[str]:
        flags = [arg for value in sets for arg in ("--set", value)]
        (container,) = the_deployment(render(flags))["spec"]["template"]["spec"]["containers"]
        return [str(arg) for arg in container["args"]]

    namespaced = "watchNamespaces={a,b}"
    assert "--drain-scope=watched" not in args()
    assert "--drain-scope=watched" not in args("healing.drainAllNamespaces=false")  # cluster-wide
    assert "--drain-scope=watched" not in args(namespaced)
    assert "--drain-scope=watched" in args(namespaced, "healing.drainAllNamespaces=false")
