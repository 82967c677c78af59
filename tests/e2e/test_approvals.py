"""Approvals end to end: the operator as a process, a real API server, real slack-sdk against the
local Slack-compatible server, and clicks signed exactly as Slack signs them.

The operator under test watches only ``ap-*`` namespaces (the session operator watches ``t-*``),
serves Slack interactivity on a free 127.0.0.1 port, and reads its Slack credentials from a
temporary secrets directory; the last test checks those secrets never reached its log, an
Event or an Approval's status.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster import local
from conftest import REPO, VENV_BIN, Cluster, OperatorProcess, get_json, plugin, wait_for
from homeostat.core import approval as ap
from homeostat.core import fields
from slack import server as fake

pytestmark = pytest.mark.e2e

TOKEN = f"xoxb-e2e-{uuid.uuid4().hex}"
SIGNING = f"signing-{uuid.uuid4().hex}"
APPROVER, SECOND, STRANGER, HUMAN_REQUESTER = "U0APPROVER", "U0SECOND", "U0STRANGER", "U0REQUESTER"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def slack_server() -> Iterator[fake.FakeSlack]:
    server = fake.FakeSlack(TOKEN).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("secrets")
    (directory / "bot-token").write_text(TOKEN + "\n")
    (directory / "signing-secret").write_text(SIGNING + "\n")
    return directory


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster,
    crds_installed: None,
    slack_server: fake.FakeSlack,
    secrets_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    port = free_port()
    log = tmp_path_factory.mktemp("approvals-operator") / "operator.log"
    proc = OperatorProcess(
        cluster.kubeconfig,
        log,
        ("--namespace", "ap-*", "--http-port", str(port), "--http-bind", "127.0.0.1", "--log-level", "debug"),
        env={
            "HOMEOSTAT_SECRETS_DIR": str(secrets_dir),
            "HOMEOSTAT_SLACK_API_URL": slack_server.api_url,
            "HOMEOSTAT_SLACK_CHANNEL": "#homeostat",
        },
    ).start()
    proc.port = port  # type: ignore[attr-defined]
    wait_for(lambda: healthy(port) or not proc.alive(), timeout=60, what="the operator's /healthz")
    if not proc.alive():
        pytest.fail(f"operator exited at start:\n{proc.logs()}")
    yield proc
    proc.stop()
    if os.environ.get("HOMEOSTAT_SHOW_OPERATOR_LOG"):
        print(proc.logs())


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture
def ns(cluster: Cluster) -> Iterator[str]:
    name = f"ap-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


# --- helpers -------------------------------------------------------------------------------------


def create(cluster: Cluster, namespace: str, *, expires_in: float = 3600, **changes: Any) -> str:
    """Create an Approval the way the gate does (name = hash of action + target + cause)."""
    spec: dict[str, Any] = {
        "action": "DrainNode",
        "target": {"kind": "Node", "namespace": "", "name": "kwok-node-1"},
        "cause": f"node NotReady for 5m ({uuid.uuid4().hex[:6]})",
        "evidence": {"notReadyFor": "5m", "podsOnNode": "3"},
        "service": "web",
        "requester": "homeostat",
        "risk": "high",
        "quorum": 1,
        "approvers": {"slack": [APPROVER], "users": [], "groups": []},
        "channel": "#ops",
        "expiresAt": fields.rfc3339(time.time() + expires_in),
    }
    spec.update(changes)
    target = ap.Target(spec["target"]["kind"], spec["target"]["namespace"], spec["target"]["name"])
    name = ap.object_name(spec["action"], target, spec["cause"])
    manifest = {
        "apiVersion": ap.API_VERSION,
        "kind": ap.KIND,
        "metadata": {"name": name, "namespace": namespace},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps({**manifest, "spec": spec}))
    return name


def approval(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    body = get_json(cluster, "approval", name, "-n", namespace)
    assert body is not None, f"approval {namespace}/{name} not found"
    return body


def status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return dict(approval(cluster, namespace, name).get("status") or {})


def posted(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return dict(
        wait_for(
            lambda: (
                (status(cluster, namespace, name).get("slack") or {}).get("posted")
                and status(cluster, namespace, name)["slack"]
            ),
            timeout=30,
            what=f"{name} posted to Slack",
        )
    )


def click(
    operator: OperatorProcess,
    slack_server: fake.FakeSlack,
    namespace: str,
    name: str,
    user: str,
    *,
    verdict: str = "approve",
    secret: str = SIGNING,
    age: float = 0,
    tamper: bool = False,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, str]:
    """POST a click to the operator, signed as Slack signs it (unless told otherwise)."""
    payload = (
        body
        if body is not None
        else fake.click_body(
            namespace, name, user, verdict, response_url=slack_server.response_url(f"{name}-{user}")
        )
    )
    signed = fake.signed_headers(secret, payload, int(time.time() - age))
    if tamper:
        payload = payload.replace(user.encode(), APPROVER.encode())
    request = urllib.request.Request(
        f"http://127.0.0.1:{operator.port}/slack/interactions",  # type: ignore[attr-defined]
        data=payload,
        headers=headers if headers is not None else signed,
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def messages_for(slack_server: fake.FakeSlack, namespace: str, name: str) -> list[dict[str, Any]]:
    value = f"{namespace}/{name}"
    return [m for m in slack_server.messages.values() if f"Approval {value}" in json.dumps(m["blocks"])]


def posts_for(slack_server: fake.FakeSlack, namespace: str, name: str) -> list[fake.Call]:
    value = f"{namespace}/{name}"
    return [c for c in slack_server.calls_of("chat.postMessage") if f"Approval {value}" in json.dumps(c.args)]


def buttons(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]]


def replies_for(slack_server: fake.FakeSlack, name: str, user: str) -> list[str]:
    return [r["text"] for r in slack_server.replies if r["hook"] == f"{name}-{user}"]


def events(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    body = get_json(cluster, "events", "-n", namespace)
    return list((body or {}).get("items") or [])


def event_reasons(cluster: Cluster, namespace: str, involved: str = "web") -> set[str]:
    return {e["reason"] for e in events(cluster, namespace) if e["involvedObject"]["name"] == involved}


def decision_state(body: dict[str, Any]) -> tuple[Any, ...]:
    st = body.get("status") or {}
    return st.get("phase"), json.dumps(st.get("decisions")), st.get("decidedAt")


def kubectl_user(cluster: Cluster) -> str:
    review = json.loads(cluster.kubectl("auth", "whoami", "-o", "json").stdout)
    return str(review["status"]["userInfo"]["username"])


# --- tests ---------------------------------------------------------------------------------------


def test_request_is_posted_once_and_an_allowed_click_approves_it(
    cluster: Cluster, operator: OperatorProcess, slack_server: fake.FakeSlack, ns: str
) -> None:
    name = create(cluster, ns)
    slack = posted(cluster, ns, name)
    (message,) = messages_for(slack_server, ns, name)
    assert slack["ts"] == message["ts"] and slack["channel"] == message["channel"]
    assert [b["value"] for b in buttons(message)] == [f"{ns}/{name}"] * 2
    assert "confirm" in buttons(message)[0]  # high risk: a confirmation dialog
    text = json.dumps(message["blocks"])
    assert "kwok-node-1" in text and "podsOnNode" in text and "DrainNode" in text
    assert all(c.authorized for c in posts_for(slack_server, ns, name))
    assert status(cluster, ns, name)["phase"] == "Pending"

    started = time.monotonic()
    code, _ = click(operator, slack_server, ns, name, APPROVER)
    acknowledged = time.monotonic() - started
    assert code == 200
    wait_for(
        lambda: status(cluster, ns, name).get("phase") == "Approved",
        timeout=20,
        interval=0.05,
        what="Approved",
    )
    print(
        f"\nclick acknowledged in {acknowledged * 1000:.0f} ms, Approved in the API after "
        f"{(time.monotonic() - started) * 1000:.0f} ms"
    )
    st = status(cluster, ns, name)
    (decision,) = st["decisions"]
    assert (decision["user"], decision["channel"], decision["verdict"]) == (APPROVER, "slack", "approve")
    assert st["decidedAt"]
    wait_for(
        lambda: not buttons(slack_server.messages[message["ts"]]),
        timeout=20,
        what="the message updated without buttons",
    )
    assert "Approved" in json.dumps(slack_server.messages[message["ts"]]["blocks"])
    assert len(posts_for(slack_server, ns, name)) == 1
    wait_for(
        lambda: {"ApprovalRequested", "ApprovalGranted"} <= event_reasons(cluster, ns),
        timeout=20,
        what="Events on the service",
    )
    audit = [line for line in operator.logs().splitlines() if '"audit"' in line and name in line]
    assert any('"request"' in line for line in audit) and any('"decision"' in line for line in audit)


def test_rejected_clicks_change_nothing(
    cluster: Cluster, operator: OperatorProcess, slack_server: fake.FakeSlack, ns: str
) -> None:
    name = create(cluster, ns, requester=HUMAN_REQUESTER)
    posted(cluster, ns, name)
    before = decision_state(approval(cluster, ns, name))
    valid_body = fake.click_body(ns, name, APPROVER, response_url=slack_server.response_url("x"))

    assert click(operator, slack_server, ns, name, APPROVER, secret="not-the-secret")[0] == 401
    assert click(operator, slack_server, ns, name, APPROVER, age=301)[0] == 401  # replay window is 5 min
    assert (
        click(operator, slack_server, ns, name, STRANGER, tamper=True)[0] == 401
    )  # body altered after signing
    unsigned = {"Content-Type": "application/x-www-form-urlencoded"}
    assert click(operator, slack_server, ns, name, APPROVER, headers=unsigned)[0] == 401
    wrong_type = {**fake.signed_headers(SIGNING, valid_body), "Content-Type": "application/json"}
    assert click(operator, slack_server, ns, name, APPROVER, headers=wrong_type, body=valid_body)[0] == 415
    huge = valid_body + b"&pad=" + b"x" * 70_000
    assert click(operator, slack_server, ns, name, APPROVER, body=huge)[0] == 413
    assert click(operator, slack_server, ns, "no-such-approval", APPROVER)[0] == 404

    code, text = click(operator, slack_server, ns, name, STRANGER)
    assert code == 200 and "not an approver" in text
    code, text = click(operator, slack_server, ns, name, HUMAN_REQUESTER)
    assert code == 200 and "may not decide" in text
    wait_for(
        lambda: replies_for(slack_server, name, STRANGER), timeout=20, what="ephemeral reply to the stranger"
    )
    wait_for(
        lambda: replies_for(slack_server, name, HUMAN_REQUESTER), timeout=20, what="reply to the requester"
    )
    assert "not an approver" in replies_for(slack_server, name, STRANGER)[0]
    time.sleep(2)  # the worker has replied; give a wrongly accepted decision time to show up
    assert decision_state(approval(cluster, ns, name)) == before
    assert status(cluster, ns, name)["phase"] == "Pending"
    assert not [
        c
        for c in slack_server.calls_of("chat.update")
        if c.args.get("ts") == status(cluster, ns, name)["slack"]["ts"]
    ]
    # ... and a proper click still works afterwards.
    assert click(operator, slack_server, ns, name, APPROVER)[0] == 200
    wait_for(lambda: status(cluster, ns, name).get("phase") == "Approved", timeout=20, what="Approved")


def test_second_click_after_a_decision_is_refused(
    cluster: Cluster, operator: OperatorProcess, slack_server: fake.FakeSlack, ns: str
) -> None:
    name = create(cluster, ns, approvers={"slack": [APPROVER, SECOND]})
    posted(cluster, ns, name)
    assert click(operator, slack_server, ns, name, APPROVER, verdict="deny")[0] == 200
    wait_for(lambda: status(cluster, ns, name).get("phase") == "Denied", timeout=20, what="Denied")
    decided = decision_state(approval(cluster, ns, name))
    code, text = click(operator, slack_server, ns, name, SECOND, verdict="approve")
    assert code == 200 and "already denied" in text
    code, _ = click(operator, slack_server, ns, name, APPROVER, verdict="deny")  # a double click
    assert code == 200
    wait_for(lambda: replies_for(slack_server, name, SECOND), timeout=20, what="reply to the late click")
    assert "already denied" in replies_for(slack_server, name, SECOND)[0]
    time.sleep(1)
    assert decision_state(approval(cluster, ns, name)) == decided
    assert len(status(cluster, ns, name)["decisions"]) == 1


def test_simultaneous_approve_and_deny_make_one_decision(
    cluster: Cluster, operator: OperatorProcess, slack_server: fake.FakeSlack, ns: str
) -> None:
    import concurrent.futures

    name = create(cluster, ns, approvers={"slack": [APPROVER, SECOND]})
    posted(cluster, ns, name)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        clicks = [(APPROVER, "approve"), (SECOND, "deny"), (APPROVER, "approve"), (SECOND, "deny")]
        codes = list(
            pool.map(lambda c: click(operator, slack_server, ns, name, c[0], verdict=c[1])[0], clicks)
        )
    assert codes == [200] * 4
    wait_for(
        lambda: status(cluster, ns, name).get("phase") in ("Approved", "Denied"), timeout=20, what="decided"
    )
    time.sleep(2)
    st = status(cluster, ns, name)
    assert len(st["decisions"]) == 1, st["decisions"]


def test_quorum_not_met_stays_pending(
    cluster: Cluster, operator: OperatorProcess, slack_server: fake.FakeSlack, ns: str
) -> None:
    name = create(cluster, ns, risk="critical", quorum=2, approvers={"slack": [APPROVER, SECOND]})
    slack = posted(cluster, ns, name)
    assert click(operator, slack_server, ns, name, APPROVER)[0] == 200
    wait_for(
        lambda: len(status(cluster, ns, name).get("decisions") or []) == 1, timeout=20, what="one approval"
    )
    assert click(operator, slack_server, ns, name, APPROVER)[0] == 200  # the same person again
    time.sleep(2)
    st = status(cluster, ns, name)
    assert st["phase"] == "Pending" and len(st["decisions"]) == 1 and "1 of 2" in st["reason"]
    message = slack_server.messages[slack["ts"]]
    assert buttons(message)  # still asking
    assert click(operator, slack_server, ns, name, SECOND)[0] == 200
    wait_for(lambda: status(cluster, ns, name).get("phase") == "Approved", timeout=20, what="Approved by two")
    assert {d["user"] for d in status(cluster, ns, name)["decisions"]} == {APPROVER, SECOND}


def test_timeout_denies_and_is_recorded(
    cluster: Cluster, operator: OperatorProcess, slack_server: fake.FakeSlack, ns: str
) -> None:
    name = create(cluster, ns, expires_in=6)
    slack = posted(cluster, ns, name)
    wait_for(lambda: status(cluster, ns, name).get("phase") == "Expired", timeout=30, what="Expired")
    st = status(cluster, ns, name)
    assert "denied" in st["reason"] and st["decidedAt"] and not st.get("decisions")
    wait_for(lambda: not buttons(slack_server.messages[slack["ts"]]), timeout=20, what="message updated")
    assert "Expired" in json.dumps(slack_server.messages[slack["ts"]]["blocks"])
    wait_for(
        lambda: "ApprovalExpired" in event_reasons(cluster, ns), timeout=20, what="ApprovalExpired Event"
    )
    code, text = click(operator, slack_server, ns, name, APPROVER)
    assert code == 200 and "expired" in text
    time.sleep(1)
    assert status(cluster, ns, name)["phase"] == "Expired" and not status(cluster, ns, name).get("decisions")


def test_slack_down_stays_pending_and_kubectl_approves(
    cluster: Cluster, operator: OperatorProcess, slack_server: fake.FakeSlack, ns: str
) -> None:
    me = kubectl_user(cluster)
    slack_server.fail("error")
    try:
        name = create(cluster, ns, approvers={"slack": [APPROVER], "users": [me]})
        wait_for(
            lambda: (status(cluster, ns, name).get("slack") or {}).get("attempts", 0) >= 2,
            timeout=30,
            what="retries against the failing Slack",
        )
        # Backing off: a few calls in five seconds, not a tight loop.
        calls_before = len(slack_server.calls)
        time.sleep(5)
        assert len(slack_server.calls) - calls_before <= 4
        st = status(cluster, ns, name)
        assert st["phase"] == "Pending" and not st.get("decisions") and not st["slack"].get("posted")
        assert "internal_error" in st["slack"]["lastError"]
        listing = plugin(cluster, "approvals", "-n", ns)
        assert listing.returncode == 0, listing.stderr
        assert name in listing.stdout and "Pending" in listing.stdout
        result = plugin(cluster, "approve", name, "-n", ns)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "accepted" in result.stdout
    finally:
        slack_server.fail("ok")
    st = status(cluster, ns, name)
    (decision,) = st["decisions"]
    assert st["phase"] == "Approved"
    assert (decision["user"], decision["channel"]) == (me, "kubectl") and "system:masters" in decision[
        "groups"
    ]
    # Slack is back. A post that was in flight when Slack failed may still land, but nothing may
    # keep offering buttons for a request that is already decided.
    wait_for(
        lambda: all(not buttons(m) for m in messages_for(slack_server, ns, name)),
        timeout=30,
        what="no message still asking",
    )
    assert len(posts_for(slack_server, ns, name)) <= 1
    again = plugin(cluster, "deny", name, "-n", ns)
    assert again.returncode == 1 and "already approved" in again.stderr


def test_kubectl_vote_by_a_non_approver_is_refused(
    cluster: Cluster, operator: OperatorProcess, ns: str
) -> None:
    name = create(cluster, ns, channel="", approvers={"users": ["someone-else"], "groups": ["sre"]})
    wait_for(lambda: status(cluster, ns, name).get("phase") == "Pending", timeout=20, what="Pending")
    result = plugin(cluster, "approve", name, "-n", ns)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "refused (NotAllowed)" in result.stdout
    st = status(cluster, ns, name)
    assert st["phase"] == "Pending" and not st.get("decisions") and not st.get("votes")
    result = plugin(cluster, "approve", "missing", "-n", ns)
    assert result.returncode == 1 and "no approval 'missing'" in result.stderr


def test_rate_limited_slack_still_gets_the_message(
    cluster: Cluster, operator: OperatorProcess, slack_server: fake.FakeSlack, ns: str
) -> None:
    slack_server.rate_limit(calls=1, retry_after=1)
    name = create(cluster, ns)
    posted(cluster, ns, name)
    assert len(posts_for(slack_server, ns, name)) == 1
    assert [c.status for c in slack_server.calls if c.status == 429]


def test_restart_does_not_post_again(
    cluster: Cluster, operator: OperatorProcess, slack_server: fake.FakeSlack, ns: str
) -> None:
    name = create(cluster, ns)
    posted(cluster, ns, name)
    operator.stop()
    operator.start()
    wait_for(lambda: healthy(operator.port), timeout=60, what="the restarted operator")  # type: ignore[attr-defined]
    time.sleep(3)
    assert len(posts_for(slack_server, ns, name)) == 1
    assert click(operator, slack_server, ns, name, APPROVER)[0] == 200
    wait_for(
        lambda: status(cluster, ns, name).get("phase") == "Approved",
        timeout=20,
        what="Approved after restart",
    )


def test_crash_between_posting_and_recording_does_not_post_twice(
    cluster: Cluster, operator: OperatorProcess, slack_server: fake.FakeSlack, ns: str
) -> None:
    """Slack accepts the post, the operator dies before it learns the message's ts."""
    slack_server.hang_seconds = 20
    slack_server.fail("hang")
    try:
        name = create(cluster, ns)
        wait_for(lambda: messages_for(slack_server, ns, name), timeout=30, what="the post reaching Slack")
        assert (status(cluster, ns, name).get("slack") or {}).get("postingSince")
        assert not (status(cluster, ns, name).get("slack") or {}).get("ts")
        operator.kill()
    finally:
        slack_server.fail("ok")
    operator.start()
    wait_for(lambda: healthy(operator.port), timeout=60, what="the restarted operator")  # type: ignore[attr-defined]
    slack = posted(cluster, ns, name)
    (message,) = messages_for(slack_server, ns, name)
    assert slack["ts"] == message["ts"]
    assert len(posts_for(slack_server, ns, name)) == 1
    assert slack_server.calls_of("conversations.history")
    assert click(operator, slack_server, ns, name, APPROVER)[0] == 200
    wait_for(
        lambda: not buttons(slack_server.messages[message["ts"]]),
        timeout=20,
        what="the found message updated",
    )


def test_interactivity_is_rate_limited_per_source(
    operator: OperatorProcess, slack_server: fake.FakeSlack
) -> None:
    codes = [click(operator, slack_server, "ap-none", "x", STRANGER, secret="wrong")[0] for _ in range(40)]
    assert 429 in codes and codes[0] == 401
    time.sleep(11)  # let the window pass for whatever runs next


def test_secrets_never_appear_in_logs_events_or_status(cluster: Cluster, operator: OperatorProcess) -> None:
    logs = operator.logs()
    assert "audit" in logs  # the log is real and has content
    every_event = json.dumps(get_json(cluster, "events", "-A"))
    every_approval = json.dumps(get_json(cluster, "approvals", "-A"))
    for secret in (TOKEN, SIGNING):
        assert secret not in logs
        assert secret not in every_event
        assert secret not in every_approval


def test_gate_opens_one_request_per_incident(
    cluster: Cluster, operator: OperatorProcess, slack_server: fake.FakeSlack, ns: str
) -> None:
    """The gate remediation calls: create-or-get by action + target + cause, phase as the answer."""
    import asyncio

    from homeostat.adapters import approvals, kube

    cluster.kubectl("apply", "-n", ns, "-f", str(REPO / "examples" / "web.yaml"))
    gate = approvals.KubeApprovals(kube.load_client(str(cluster.kubeconfig)))
    request = ap.ApprovalRequest(
        action="DrainNode",
        target=ap.Target("Node", "", "kwok-node-2"),
        cause="NotReady since 18:00",
        service="web",
        requester="homeostat",
        risk=ap.Risk.HIGH,
        quorum=1,
        approvers=ap.Approvers(slack=frozenset({APPROVER})),
        expires_at=time.time() + 600,
        channel="#ops",
        evidence={"notReadyFor": "6m"},
    )

    async def ask_concurrently() -> list[Any]:
        return list(await asyncio.gather(*(gate.request(ns, request) for _ in range(5))))

    tickets = asyncio.run(ask_concurrently())
    assert {t.name for t in tickets} == {ap.object_name(request.action, request.target, request.cause)}
    assert {t.phase for t in tickets} == {ap.ApprovalPhase.PENDING}
    (item,) = (get_json(cluster, "approvals", "-n", ns) or {})["items"]
    owners = item["metadata"].get("ownerReferences") or []
    assert [(o["kind"], o["name"]) for o in owners] == [("ReplicatedService", "web")]
    name = tickets[0].name
    posted(cluster, ns, name)
    assert len(posts_for(slack_server, ns, name)) == 1

    assert click(operator, slack_server, ns, name, APPROVER)[0] == 200
    wait_for(
        lambda: asyncio.run(gate.request(ns, request)).phase is ap.ApprovalPhase.APPROVED,
        timeout=20,
        what="gate says approved",
    )
    ticket = asyncio.run(gate.request(ns, request))
    asyncio.run(gate.record_outcome(ticket, ap.ActionResult.SUCCEEDED, "drained kwok-node-2: 3 pods evicted"))
    assert status(cluster, ns, name)["outcome"]["result"] == "Succeeded"
    # Another cause on the same target is another incident: a new request.
    other = asyncio.run(gate.request(ns, dataclasses.replace(request, cause="NotReady since 19:00")))
    assert other.name != name and other.phase is ap.ApprovalPhase.PENDING


@pytest.fixture
def voter_policy(cluster: Cluster) -> Iterator[None]:
    """The chart's ValidatingAdmissionPolicy, with the operator under test (kwok-admin) exempt."""
    rendered = subprocess.run(
        [
            local.tool("helm"),
            "template",
            "hs",
            str(REPO / "charts" / "homeostat"),
            "--show-only",
            "templates/approval-votes-policy.yaml",
            "--set",
            "approvals.enforceVoterIdentity=true",
            "--set",
            f"approvals.operatorUsername={kubectl_user(cluster)}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    cluster.kubectl("apply", "-f", "-", input=rendered)
    yield
    cluster.kubectl("delete", "-f", "-", input=rendered, check=False)


def service_account_kubeconfig(cluster: Cluster, namespace: str, account: str, path: Path) -> Path:
    import yaml

    cluster.kubectl("create", "serviceaccount", account, "-n", namespace)
    token = cluster.kubectl("create", "token", account, "-n", namespace).stdout.strip()
    config = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    context = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    context["context"]["user"] = account
    config["contexts"] = [context]
    config["users"] = [{"name": account, "user": {"token": token}}]
    path.write_text(yaml.safe_dump(config))
    return path


def as_user(kubeconfig: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        [local.tool("kubectl"), *args, "--kubeconfig", str(kubeconfig)],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        input=input,
    )


def test_kubectl_votes_need_rbac_and_are_bound_to_the_caller(
    cluster: Cluster, operator: OperatorProcess, ns: str, voter_policy: None, tmp_path: Path
) -> None:
    voter = f"system:serviceaccount:{ns}:voter"
    kubeconfig = service_account_kubeconfig(cluster, ns, "voter", tmp_path / "voter.yaml")
    name = create(cluster, ns, channel="", approvers={"users": [voter]})
    wait_for(lambda: status(cluster, ns, name).get("phase") == "Pending", timeout=20, what="Pending")

    # Allowed by the request, but RBAC does not let it write approvals/status yet.
    cluster.kubectl("create", "role", "read-approvals", "-n", ns, "--verb=get,list", "--resource=approvals")
    cluster.kubectl(
        "create",
        "rolebinding",
        "read-approvals",
        "-n",
        ns,
        "--role=read-approvals",
        f"--serviceaccount={ns}:voter",
    )
    refused = as_user(kubeconfig, "homeostat", "approve", name, "-n", ns)
    assert refused.returncode == 1 and "RBAC forbids" in refused.stderr, refused.stdout + refused.stderr
    assert not status(cluster, ns, name).get("votes")

    cluster.kubectl("create", "role", "vote", "-n", ns, "--verb=get,patch", "--resource=approvals/status")
    cluster.kubectl("create", "rolebinding", "vote", "-n", ns, "--role=vote", f"--serviceaccount={ns}:voter")
    # Forging another user's vote, or the decision itself, is refused by the API server.
    forged = {
        "status": {
            "votes": [
                {"id": "f1", "user": "kwok-admin", "verdict": "approve", "at": fields.rfc3339(time.time())}
            ]
        }
    }

    def forge() -> subprocess.CompletedProcess[str] | None:
        patch = json.dumps(forged)
        args = ("patch", "approval", name, "-n", ns, "--subresource=status", "--type=merge", "-p", patch)
        result = as_user(kubeconfig, *args)
        return result if result.returncode != 0 and "as yourself" in result.stderr else None

    refusal = wait_for(forge, timeout=30, what="the admission policy to refuse a forged vote")
    assert "Forbidden" in refusal.stderr
    self_approved = {"status": {"phase": "Approved", "reason": "trust me"}}
    result = as_user(
        kubeconfig,
        "patch",
        "approval",
        name,
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(self_approved),
    )
    assert result.returncode != 0 and "only the operator" in result.stderr, result.stderr
    assert status(cluster, ns, name)["phase"] == "Pending"

    accepted = as_user(kubeconfig, "homeostat", "approve", name, "-n", ns)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    st = status(cluster, ns, name)
    (decision,) = st["decisions"]
    assert st["phase"] == "Approved" and (decision["user"], decision["channel"]) == (voter, "kubectl")
