"""A generated corpus of bad input against the real API server and a running operator (issue 14).

Two kinds: objects (a ReplicatedService, a RemediationPolicy and an Approval, each valid to
begin with, then mutated: a field dropped, given the wrong type, nested deep, made huge or
strange) and Slack clicks (unsigned garbage, and correctly signed requests whose payload is
malformed, names no Approval, or comes from someone not allowed). Every object must be refused
with a message naming a field, or be accepted and handled; every click must get a 4xx, or a 200
that refuses it. Throughout, the operator must log no unexpected traceback, stay alive, keep
serving a healthy service in the same namespace, and decide nothing: the pending Approval the
clicks aim at stays pending. ``HOMEOSTAT_FUZZ_EXAMPLES`` sets the count of clicks and of each
kind of object (100 in ``make test``, 500 in ``make chaos``).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import http.client
import json
import os
import re
import socket
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import kubernetes
import pytest
from hypothesis import strategies as st

import chaos_report as report
from conftest import Cluster, OperatorProcess, get_json, wait_for
from homeostat.adapters import slack
from homeostat.core import approval as ap
from homeostat.core import fields
from slack import server as fake

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("HOMEOSTAT_FUZZ_EXAMPLES", "100"))
TOKEN, SIGNING = f"xoxb-{uuid.uuid4().hex}", f"s-{uuid.uuid4().hex}"
APPROVER = "U0APPROVER"
# The endpoint allows 30 requests per source in 10 s: stay under it, so every click is judged on
# its content rather than refused for the rate (which is tested elsewhere).
PACE = 10 / 28
GROUP, VERSION = "homeostat.dev", "v1alpha1"
# Reproducible (the same corpus every run), no deadline (each example waits for the API server).
SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(hypothesis.HealthCheck),
    database=None,
)
# The API server names the field it refused: spec.<path>, metadata.<path>, or the schema path.
FIELD = re.compile(r"spec\.|spec:|\.spec|metadata\.|metadata:")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def corpus(
    cluster: Cluster, crds_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, OperatorProcess, int]]:
    """A namespace with a healthy service, and an operator of its own (so its log is this
    test's alone) with Slack configured against the local Slack-compatible server."""
    secrets = tmp_path_factory.mktemp("corpus-secrets")
    (secrets / "bot-token").write_text(TOKEN)
    (secrets / "signing-secret").write_text(SIGNING)
    slack = fake.FakeSlack(TOKEN).start()
    namespace = f"bc-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", namespace)
    port = _free_port()
    operator = OperatorProcess(
        cluster.kubeconfig,
        tmp_path_factory.mktemp("corpus-operator") / "operator.log",
        ("--namespace", namespace, "--http-port", str(port), "--http-bind", "127.0.0.1"),
        env={"HOMEOSTAT_SECRETS_DIR": str(secrets), "HOMEOSTAT_SLACK_API_URL": slack.api_url},
    ).start()
    try:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(_steady(1)))
        wait_for(lambda: _replicas(cluster, namespace) == 1, timeout=90, what="the healthy service served")
        yield namespace, operator, port
    finally:
        operator.stop()
        slack.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _steady(desired: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ReplicatedService",
        "metadata": {"name": "steady"},
        "spec": {
            "template": {"spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]}},
            "replicas": {"min": 1, "max": 5, "desired": desired},
        },
    }


def _replicas(cluster: Cluster, namespace: str) -> int | None:
    body = get_json(cluster, "deployment", "steady", "-n", namespace)
    return None if body is None else int(body["spec"]["replicas"])


def _still_serving(cluster: Cluster, namespace: str, operator: OperatorProcess, desired: int) -> None:
    """The operator is alive, logged no unexpected traceback, and a change to the healthy
    service still reaches its Deployment."""
    assert operator.alive(), operator.logs()[-3000:]
    unexpected, _ = report.tracebacks(operator.logs())
    assert not unexpected, unexpected[:5]
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(_steady(desired)))
    wait_for(lambda: _replicas(cluster, namespace) == desired, timeout=60, what="the healthy service changed")


# --- mutated objects ---------------------------------------------------------------------------


SERVICE = {
    "template": {
        "metadata": {"labels": {"app": "m"}, "annotations": {"team": "shop"}},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "registry.k8s.io/pause:3.10",
                    "resources": {"limits": {"memory": "64Mi"}, "requests": {"cpu": "10m"}},
                    "env": [{"name": "A", "value": "1"}],
                }
            ]
        },
    },
    "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
    "replicas": {"min": 1, "max": 4, "desired": 2},
    "disruptionBudget": {"maxUnavailable": 1},
    "rollout": {
        "strategy": "Canary",
        "canary": {"steps": [{"weight": 25, "pause": "30s"}, {"weight": 50}]},
        "analysis": {
            "interval": "10s",
            "failureLimit": 2,
            "metrics": [{"name": "errors", "query": 'sum(rate(x{service="{{service}}"}[1m]))', "max": 0.1}],
        },
    },
    "autoscaling": {
        "mode": "Reactive",
        "metric": {"query": 'sum(rate(x{service="{{service}}"}[1m]))', "targetPerReplica": 20},
        "interval": "15s",
    },
    "healing": {"oom": {"increasePercent": 50, "maxMemory": "256Mi"}, "crashLoop": {"window": "10m"}},
}
POLICY = {
    "actions": {
        "RestartPod": {"risk": "low", "mode": "auto"},
        "DrainNode": {
            "risk": "high",
            "mode": "approve",
            "approvers": {"slack": {"users": [APPROVER]}},
            "quorum": 1,
            "timeout": "10m",
        },
    },
    "rateLimits": {"perService": {"maxActions": 5, "window": "10m"}},
    "blastRadius": {"minHealthyNodes": "50%", "maxConcurrentActions": 2},
    "cooldown": "1m",
    "verifyWindow": "2m",
    "circuitBreaker": {"failures": 3, "window": "10m"},
}


def _approval_spec(expires_in: float = 3600) -> dict[str, Any]:
    return {
        "action": "DrainNode",
        "target": {"kind": "Node", "namespace": "", "name": "node-000000"},
        "cause": "node NotReady for 5m",
        "evidence": {"notReadyFor": "5m"},
        "service": "steady",
        "requester": "homeostat",
        "risk": "high",
        "quorum": 1,
        "approvers": {"slack": [APPROVER], "users": [], "groups": []},
        "channel": "#ops",
        "expiresAt": fields.rfc3339(time.time() + expires_in),
    }


KINDS = {
    "ReplicatedService": ("replicatedservices", SERVICE),
    "RemediationPolicy": ("remediationpolicies", POLICY),
    "Approval": ("approvals", None),  # the spec is made per example: it holds an expiry time
}

# Header values may be any UTF-8 but a line break or another control character (which the
# client itself refuses to send).
HEADER_TEXT = st.characters(blacklist_categories=("Cc", "Cs"))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
strange_text = st.sampled_from(
    [
        "",
        " leading",
        "trailing ",
        "x" * 5000,
        "\u0000",
        "party \U0001f389",
        "{{pod}}",
        "{{svc}}",
        "-1",
        "9999999999h",
        "1.5.5",
        "NaN",
        "../..",
        "a?x=1#",
    ]
)


@st.composite
def mutation(draw: st.DrawFn) -> tuple[list[int], str, Any]:
    """Where (a walk of indices into the object) and what to do there."""
    walk = draw(st.lists(st.integers(0, 50), min_size=1, max_size=7))
    op = draw(st.sampled_from(["delete", "replace", "strange", "negate", "nest", "unknown", "stringify"]))
    value = draw(json_values if op in ("replace", "unknown") else strange_text)
    return walk, op, value


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": value}
    return value


def mutate(spec: Any, walk: list[int], op: str, value: Any) -> Any:
    """Apply one mutation at the node the walk ends on (each index picks a child, modulo)."""
    root = {"spec": copy.deepcopy(spec)}
    parent: Any = root
    key: Any = "spec"
    for step in walk:
        node = parent[key]
        if isinstance(node, dict) and node:
            parent, key = node, sorted(node)[step % len(node)]
        elif isinstance(node, list) and node:
            parent, key = node, step % len(node)
        else:
            break
    node = parent[key]
    if op == "delete" and isinstance(parent, dict):
        del parent[key]
    elif op in {"replace", "strange"}:
        parent[key] = value
    elif op == "negate":
        parent[key] = -node if isinstance(node, int | float) and not isinstance(node, bool) else -1
    elif op == "nest":
        # Deeper than the parser allows; far deeper is test_bad_input.py (this process recurses).
        parent[key] = _nested(40 + (walk[0] % 10) * 20)
    elif op == "unknown" and isinstance(node, dict):
        node[f"x-{walk[0]}"] = value
    elif op == "stringify":
        parent[key] = json.dumps(node)
    return root["spec"]


def test_mutated_objects_are_refused_by_field_or_handled(
    cluster: Cluster, corpus: tuple[str, OperatorProcess, int], chaos_report: report.Recorder
) -> None:
    namespace, operator, _ = corpus
    api = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
    custom = kubernetes.client.CustomObjectsApi(api)
    refused: list[str] = []
    accepted: dict[str, str] = {}  # name -> kind
    counter, run = iter(range(10**6)), uuid.uuid4().hex[:6]  # policies are cluster-wide

    @hypothesis.settings(SETTINGS, max_examples=EXAMPLES * len(KINDS))  # EXAMPLES of each kind
    @hypothesis.given(st.sampled_from(sorted(KINDS)), st.lists(mutation(), min_size=1, max_size=3))
    def apply(kind: str, mutations: list[tuple[list[int], str, Any]]) -> None:
        plural, seed = KINDS[kind]
        spec: Any = seed if seed is not None else _approval_spec()
        for walk, op, value in mutations:
            spec = mutate(spec, walk, op, value)
        name = f"m-{run}-{next(counter)}"
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}
        try:
            if kind == "RemediationPolicy":
                custom.create_cluster_custom_object(GROUP, VERSION, plural, body)
            else:
                custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
        except kubernetes.client.ApiException as exc:
            assert exc.status in (400, 422), f"{kind} {exc.status} {exc.body}"
            assert FIELD.search(exc.body or ""), exc.body
            refused.append(name)
            return
        except ValueError:
            refused.append(name)  # not even sendable as JSON (the client refuses it)
            return
        accepted[name] = kind

    try:
        apply()
        services = [n for n, k in accepted.items() if k == "ReplicatedService"]

        def handled(name: str) -> bool:
            body = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "replicatedservices", name)
            status = body.get("status") or {}
            return status.get("observedGeneration") == body["metadata"]["generation"] and bool(
                status.get("phase")
            )

        deadline, pending = time.monotonic() + 180, services
        while pending and time.monotonic() < deadline:
            pending = [n for n in pending if not handled(n)]
            time.sleep(1)
        assert not pending, f"{len(pending)} accepted services never got a status, e.g. {pending[:5]}"
        # Nothing decided: no accepted Approval was approved, so nothing ran on its say-so.
        for name in (n for n, k in accepted.items() if k == "Approval"):
            status = (get_json(cluster, "approval", name, "-n", namespace) or {}).get("status") or {}
            assert status.get("phase") in (None, "Pending", "Expired"), (name, status)
            assert not status.get("decisions"), (name, status)
        _still_serving(cluster, namespace, operator, desired=2)
    finally:
        for name in (n for n, k in accepted.items() if k == "RemediationPolicy"):
            cluster.kubectl("delete", "remediationpolicy", name, "--wait=false", check=False)
    counts = {k: sum(1 for v in accepted.values() if v == k) for k in KINDS}
    print(
        f"bad objects: {EXAMPLES * len(KINDS)} generated, {len(refused)} refused by the API server, "
        f"accepted {counts}"
    )
    assert len(refused) >= EXAMPLES // 10 and len(accepted) >= EXAMPLES // 10, "too one-sided"
    assert min(counts.values()) > 0, f"a kind never got through: {counts}"
    chaos_report.record(
        "bad objects",
        trials=EXAMPLES * len(KINDS),
        faults=EXAMPLES * len(KINDS),
        converged=len(refused) + len(accepted),
        operators=[operator],
    )


# --- malformed clicks --------------------------------------------------------------------------


def _sign(body: bytes, timestamp: int) -> str:
    digest = hmac.new(SIGNING.encode(), f"v0:{timestamp}:".encode() + body, hashlib.sha256).hexdigest()
    return f"v0={digest}"


@st.composite
def click(draw: st.DrawFn, namespace: str, name: str) -> tuple[bytes, dict[str, bytes], set[int]]:
    """A request body, its headers and the answers it may get."""
    now = int(time.time())
    kind = draw(
        st.sampled_from(
            ["garbage", "forged", "stale", "malformed", "odd", "stranger", "missing", "oversized"]
        )
    )
    form = "application/x-www-form-urlencoded"
    if kind == "garbage":  # any bytes, any headers, no valid signature
        body = draw(st.binary(max_size=3000))
        headers = {
            "Content-Type": draw(st.sampled_from([form, "application/json", "text/plain"])).encode(),
            "X-Slack-Request-Timestamp": draw(st.sampled_from([str(now), "soon", "", "١٢٣"])).encode(),
            "X-Slack-Signature": draw(st.text(HEADER_TEXT, max_size=80)).encode(),
        }
        return body, headers, {400, 401, 415}
    if kind == "oversized":
        body = b"payload=" + b"x" * 70_000
        return body, {"Content-Type": form.encode(), "X-Slack-Request-Timestamp": str(now).encode()}, {413}
    # Well-formed requests from here on; what they carry is bad.
    value = draw(
        st.one_of(
            st.sampled_from(
                [
                    f"{namespace}/{name}?x=1",
                    f"{namespace}/{name}#",
                    f"{namespace}/{name}/status",
                    f"{namespace}/",
                ]
            ),
            st.builds(lambda s: f"{namespace}/{s}", st.text(max_size=30)),
            st.text(max_size=40),
            st.just(f"{namespace}/{name}"),
        )
    )
    user = draw(st.one_of(st.just("U0STRANGER"), st.text(max_size=12)).filter(lambda u: u != APPROVER))
    action = draw(st.sampled_from([slack.ACTION_APPROVE, slack.ACTION_DENY, "x"]))
    kinds = ["block_actions", "view_submission", ""]
    if kind == "stranger":  # a real button of the real Approval, clicked by someone not allowed
        value, user, action, kinds = f"{namespace}/{name}", "U0STRANGER", slack.ACTION_APPROVE, kinds[:1]
    elif kind == "missing":  # a real button naming no Approval there is
        value = draw(st.sampled_from([f"{namespace}/no-such-approval", f"other-namespace/{name}"]))
        user, action, kinds = "U0STRANGER", slack.ACTION_APPROVE, kinds[:1]
    payload: Any = {
        "type": draw(st.sampled_from(kinds)),
        "user": {"id": user},
        "response_url": "",
        "actions": [
            {
                "action_id": action,
                "value": value,
            }
        ],
    }
    raw = json.dumps(payload)
    if kind == "malformed":
        raw = draw(
            st.one_of(
                json_values.map(json.dumps),  # valid JSON, not a click
                st.just("[" * 3000 + "]" * 3000),  # nested past any recursion limit
                st.integers(1, len(raw) - 1).map(lambda cut: raw[:cut]),  # cut short
            )
        )
    body = urllib.parse.urlencode({"payload": raw}).encode()
    stamp = now - 3600 if kind == "stale" else now
    secret_ok = kind != "forged"
    signature = _sign(body, stamp) if secret_ok else _sign(body + b"!", stamp)
    headers = {
        "Content-Type": form.encode(),
        "X-Slack-Request-Timestamp": str(stamp).encode(),
        "X-Slack-Signature": signature.encode(),
    }
    if kind in ("forged", "stale"):
        return body, headers, {401}
    if kind == "stranger":
        return body, headers, {200}  # with an ephemeral refusal; the Approval is untouched
    if kind == "missing":
        return body, headers, {404}
    # Signed: not one of our buttons (400), no such approval (404), or refused in a 200.
    return body, headers, {200, 400, 404}


def _post(port: int, body: bytes, headers: dict[str, bytes]) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("POST", "/slack/interactions")
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")[:200]
    except (ConnectionError, http.client.HTTPException) as exc:
        return 0, repr(exc)  # the server closed on a request it refused to read
    finally:
        conn.close()


def test_malformed_clicks_get_4xx_and_decide_nothing(
    cluster: Cluster, corpus: tuple[str, OperatorProcess, int], chaos_report: report.Recorder, tmp_path: Path
) -> None:
    namespace, operator, port = corpus
    spec = _approval_spec()
    target = ap.Target("Node", "", "node-000000")
    name = ap.object_name(spec["action"], target, f"{spec['cause']} {uuid.uuid4().hex[:6]}")
    manifest = {"apiVersion": ap.API_VERSION, "kind": ap.KIND, "metadata": {"name": name}, "spec": spec}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    wait_for(
        lambda: ((get_json(cluster, "approval", name, "-n", namespace) or {}).get("status") or {}).get(
            "phase"
        ),
        timeout=60,
        what="the Approval opened as Pending",
    )
    answers: dict[int, int] = {}
    last = [0.0]

    @SETTINGS
    @hypothesis.given(click(namespace, name))
    def send(request: tuple[bytes, dict[str, bytes], set[int]]) -> None:
        body, headers, allowed = request
        time.sleep(max(0.0, PACE - (time.monotonic() - last[0])))
        last[0] = time.monotonic()
        status, text = _post(port, body, headers)
        answers[status] = answers.get(status, 0) + 1
        # 0: the server refused to read an oversized body and closed; that is a refusal too.
        assert status in allowed or (status == 0 and 413 in allowed), (status, text, headers, body[:200])

    send()
    # Some were judged on their merits: clicks on the real Approval by someone not allowed.
    assert answers.get(200, 0) > 0 and answers.get(404, 0) > 0, answers
    status = (get_json(cluster, "approval", name, "-n", namespace) or {}).get("status") or {}
    assert status.get("phase") == "Pending" and not status.get("decisions"), status
    _still_serving(cluster, namespace, operator, desired=3)
    print(f"bad clicks: {EXAMPLES} sent, answers {dict(sorted(answers.items()))}")
    chaos_report.record(
        "bad clicks", trials=EXAMPLES, faults=EXAMPLES, converged=sum(answers.values()), operators=[operator]
    )
