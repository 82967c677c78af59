"""Audit the RBAC the Helm chart grants the operator, in every mode the chart supports.

A cluster admin approves Homeostat by reading its Roles; a permission that creeps in unnoticed
(a wildcard, `escalate`, cluster-wide access to Secrets) is how an operator becomes a privilege
escalation path. So the rendered rules are compared with the explicit tables below: any change
to RBAC has to change this file too, and shows up in review as a diff. The chart README explains
which code path needs each permission.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster import local

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "homeostat"
RELEASE_NAMESPACE = "homeostat-system"
WATCHED = ["team-a", "team-b"]

Triple = tuple[str, str, str]  # (apiGroup, resource, verb); "" is the core group


def table(*rows: tuple[str, str, str]) -> frozenset[Triple]:
    """Rows of (apiGroup, resource, space-separated verbs), expanded to one triple per verb."""
    return frozenset((group, resource, verb) for group, resource, verbs in rows for verb in verbs.split())


# Rules on namespaced resources: the ClusterRole in cluster-wide mode, each Role otherwise.
NAMESPACED = table(
    ("homeostat.dev", "replicatedservices", "get list watch patch"),
    ("homeostat.dev", "replicatedservices/status", "patch"),
    ("homeostat.dev", "replicatedservices/scale", "patch"),
    ("homeostat.dev", "approvals", "get list watch create"),
    ("homeostat.dev", "approvals/status", "patch"),
    ("apps", "deployments", "get list watch create patch delete"),
    ("apps", "controllerrevisions", "get list watch create patch delete"),
    ("", "services", "get list watch create patch delete"),
    ("policy", "poddisruptionbudgets", "get list watch create patch delete"),
    ("", "pods", "get list watch delete"),
    ("", "pods/eviction", "create"),
    ("", "events", "create"),
    ("gateway.networking.k8s.io", "httproutes", "get patch"),
)
# Cluster-scoped resources, granted by a ClusterRole in both modes.
CLUSTER_SCOPED = table(
    ("apiextensions.k8s.io", "customresourcedefinitions", "get list watch"),
    ("", "nodes", "get list watch patch"),
    ("homeostat.dev", "remediationpolicies", "get list watch"),
)
# A namespaced kopf lists namespaces to learn which watched ones exist; a cluster-wide one does not.
NAMESPACE_DISCOVERY = table(("", "namespaces", "get list watch"))
# Node drains of a namespaced install that may evict pods of every namespace on the node
# (healing.drainAllNamespaces, the default); pods/eviction is a subresource, so this is no read.
CLUSTER_DRAIN = table(("", "pods", "list"), ("", "pods/eviction", "create"))
# kopf peering, only when more than one replica runs (or a peering name is set).
CLUSTER_PEERING = table(("kopf.dev", "clusterkopfpeerings", "get list watch patch"))
NAMESPACED_PEERING = table(("kopf.dev", "kopfpeerings", "get list watch patch"))

FORBIDDEN_VERBS = {"escalate", "bind", "impersonate"}

# mode id -> (helm --set arguments, expected ClusterRole triples, expected triples of each Role)
MODES: dict[str, tuple[list[str], frozenset[Triple], frozenset[Triple] | None]] = {
    "cluster-wide": ([], NAMESPACED | CLUSTER_SCOPED, None),
    "cluster-wide-ha": (["replicas=2"], NAMESPACED | CLUSTER_SCOPED | CLUSTER_PEERING, None),
    # Nothing to take away: a cluster-wide operator lists and evicts pods everywhere anyway.
    "cluster-wide-own-drains": (["healing.drainAllNamespaces=false"], NAMESPACED | CLUSTER_SCOPED, None),
    "namespaced": (
        [f"watchNamespaces={{{','.join(WATCHED)}}}"],
        CLUSTER_SCOPED | NAMESPACE_DISCOVERY | CLUSTER_DRAIN,
        NAMESPACED,
    ),
    "namespaced-ha": (
        [f"watchNamespaces={{{','.join(WATCHED)}}}", "replicas=2"],
        CLUSTER_SCOPED | NAMESPACE_DISCOVERY | CLUSTER_DRAIN,
        NAMESPACED | NAMESPACED_PEERING,
    ),
    # Confined drains: no pod permission at all outside the watched namespaces.
    "namespaced-own-drains": (
        [f"watchNamespaces={{{','.join(WATCHED)}}}", "healing.drainAllNamespaces=false"],
        CLUSTER_SCOPED | NAMESPACE_DISCOVERY,
        NAMESPACED,
    ),
}


def helm_binary() -> str:
    """The helm that tests/cluster/build.sh put in the cache (HOMEOSTAT_CACHE is honoured)."""
    return local.tool("helm")


def render(sets: Sequence[str]) -> list[dict[str, Any]]:
    args = [helm_binary(), "template", "hs", str(CHART), "--namespace", RELEASE_NAMESPACE]
    for value in sets:
        args += ["--set", value]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def triples(role: Mapping[str, Any]) -> frozenset[Triple]:
    return frozenset(
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule["verbs"]
    )


def of_kind(docs: Sequence[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


@pytest.fixture(scope="module", params=sorted(MODES))
def mode(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    sets, _, _ = MODES[request.param]
    return request.param, render(sets)


def test_no_wildcards(mode: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = mode
    for role in of_kind(docs, "ClusterRole") + of_kind(docs, "Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                for entry in rule.get(field, []):
                    assert "*" not in entry, (role["metadata"]["name"], rule)


def test_no_privilege_escalation_verbs(mode: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = mode
    for role in of_kind(docs, "ClusterRole") + of_kind(docs, "Role"):
        for rule in role["rules"]:
            assert not FORBIDDEN_VERBS & set(rule["verbs"]), (role["metadata"]["name"], rule)
            assert "nonResourceURLs" not in rule, rule


def test_no_cluster_wide_secret_reads(mode: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = mode
    for role in of_kind(docs, "ClusterRole"):
        for rule in role["rules"]:
            if "secrets" in rule.get("resources", []):
                assert not {"list", "watch"} & set(rule["verbs"]), rule


def test_no_secret_access_at_all(mode: tuple[str, list[dict[str, Any]]]) -> None:
    # Stricter than the ClusterRole rule above: the Slack credentials are mounted files, so no
    # Role needs Secrets either.
    _, docs = mode
    for role in of_kind(docs, "ClusterRole") + of_kind(docs, "Role"):
        assert not [t for t in triples(role) if t[1] == "secrets"], role["metadata"]["name"]


def test_rules_match_the_expected_table(mode: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = mode
    _, expected_cluster, expected_role = MODES[name]
    (cluster_role,) = of_kind(docs, "ClusterRole")
    got = triples(cluster_role)
    assert got == expected_cluster, (
        f"unexpected: {sorted(got - expected_cluster)}; missing: {sorted(expected_cluster - got)}"
    )
    roles = of_kind(docs, "Role")
    if expected_role is None:
        assert not roles
        return
    assert sorted(role["metadata"]["namespace"] for role in roles) == sorted(WATCHED)
    for role in roles:
        got = triples(role)
        assert got == expected_role, (
            f"unexpected: {sorted(got - expected_role)}; missing: {sorted(expected_role - got)}"
        )


def test_bindings_tie_the_roles_to_the_operator(mode: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = mode
    (account,) = of_kind(docs, "ServiceAccount")
    subject = {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": RELEASE_NAMESPACE}
    (cluster_role,) = of_kind(docs, "ClusterRole")
    (cluster_binding,) = of_kind(docs, "ClusterRoleBinding")
    assert cluster_binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": cluster_role["metadata"]["name"],
    }
    assert cluster_binding["subjects"] == [subject]
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in of_kind(docs, "Role")}
    bindings = of_kind(docs, "RoleBinding")
    assert len(bindings) == len(roles)
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert (binding["metadata"]["namespace"], binding["roleRef"]["name"]) in roles
        assert binding["subjects"] == [subject]


def test_rbac_can_be_left_to_the_cluster_admin() -> None:
    docs = render(["rbac.create=false"])
    assert not [
        doc for doc in docs if doc["kind"] in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
    ]


def test_no_rule_grants_update_because_the_operator_never_replaces_objects() -> None:
    """The chart grants no `update`: that stays true only while no code path sends a PUT."""
    sources = (Path(__file__).resolve().parents[2] / "operator" / "homeostat").rglob("*.py")
    offenders = [str(p) for p in sources if '"PUT"' in p.read_text() or "'PUT'" in p.read_text()]
    assert offenders == []
    for _, rules, roles in MODES.values():
        verbs = {verb for _, _, verb in rules | (roles or frozenset())}
        assert "update" not in verbs
