"""Slack user groups as approvers, end to end (ADR 0014).

A RemediationPolicy names a Slack user group, not a person, as the approvers of DrainNode. The
operator runs as a process with real slack-sdk against the local Slack-compatible server, whose
``usergroups.users.list`` says who is in the group. A signed click by someone outside the group
is refused and nothing happens; a signed click by a member approves and the node is drained.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import test_healing as healing

from cluster import local
from conftest import OperatorProcess, get_json, wait_for
from slack import server as fake

pytestmark = pytest.mark.e2e

# The healing tests' fixtures: a tainted KWOK node of the test's own, a policy name cleaned up after.
chaos_node = healing.chaos_node
policy_name = healing.policy_name

GROUP, OTHER_GROUP = "S0ONCALL", "S0DEVS"
MEMBER, OUTSIDER = "U0ONCALL", "U0DEVELOPER"


def _click(port: int, signing: str, slack: fake.FakeSlack, *, namespace: str, name: str, user: str) -> str:
    body = fake.click_body(namespace, name, user, "approve", response_url=slack.response_url(user))
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/slack/interactions",
        data=body,
        headers=fake.signed_headers(signing, body, int(time.time())),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        return str(json.loads(response.read()).get("text") or "")


def test_a_member_of_an_approver_group_approves_and_an_outsider_cannot(
    local_cluster: local.LocalCluster,
    crds_installed: None,
    policy_name: str,
    chaos_node: str,
    tmp_path: Path,
) -> None:
    token, signing = f"xoxb-{uuid.uuid4().hex}", f"s-{uuid.uuid4().hex}"
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "bot-token").write_text(token)
    (secrets / "signing-secret").write_text(signing)
    slack = fake.FakeSlack(token).start()
    slack.set_group(GROUP, MEMBER, "U0SOMEONE")
    slack.set_group(OTHER_GROUP, OUTSIDER)  # a group, but not one the policy names
    namespace = f"hsg-{uuid.uuid4().hex[:8]}"
    local_cluster.kubectl("create", "namespace", namespace)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    flags = ("--namespace", namespace, "--http-port", str(port), "--http-bind", "127.0.0.1")
    env = {"HOMEOSTAT_SECRETS_DIR": str(secrets), "HOMEOSTAT_SLACK_API_URL": slack.api_url}
    proc = OperatorProcess(local_cluster.kubeconfig, tmp_path / "operator.log", flags, env=env).start()
    try:
        drain = {"risk": "high", "mode": "approve", "approvers": {"slack": {"groups": [GROUP]}}}
        policy = healing._policy(policy_name, actions={"DrainNode": drain})
        service = healing._service(
            "cache", namespace, policy_name, 2, {"nodeFailure": {"gracePeriod": "2s"}}, node=chaos_node
        )
        service["spec"]["approvals"]["slack"] = {"channel": "#ops"}
        healing._apply(local_cluster, policy, service)

        def on_chaos() -> list[str] | None:
            pods = healing._pods(local_cluster, namespace, "cache")
            names = [p["metadata"]["name"] for p in pods if p["spec"].get("nodeName") == chaos_node]
            return names if len(pods) == 2 and all(map(healing._running_ready, pods)) and names else None

        on_node = wait_for(on_chaos, timeout=90, what="ready pods on the chaos node")
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        pressure = {"type": "DiskPressure", "status": "True", "reason": "Test", "message": "simulated"}
        pressure.update(lastTransitionTime=now, lastHeartbeatTime=now)
        local_cluster.kubectl(
            "patch",
            "node",
            chaos_node,
            "--subresource=status",
            "-p",
            json.dumps({"status": {"conditions": [pressure]}}),
        )

        def message() -> tuple[dict[str, Any], dict[str, Any]] | None:
            items = (get_json(local_cluster, "approvals", "-n", namespace) or {}).get("items") or []
            for item in items:
                ref = f"{namespace}/{item['metadata']['name']}"
                for posted in slack.messages.values():
                    if f"Approval {ref}" in json.dumps(posted["blocks"]):
                        return item, posted
            return None

        approval, posted = wait_for(message, timeout=45, what="the Slack message for the drain")
        name = approval["metadata"]["name"]
        # The group travels separately from user IDs: it is not mistaken for a user.
        assert approval["spec"]["approvers"].get("slackGroups") == [GROUP]
        assert not approval["spec"]["approvers"].get("slack")

        # Someone outside the group: refused, told why, and nothing happens.
        ack = _click(port, signing, slack, namespace=namespace, name=name, user=OUTSIDER)
        assert "Checking your approver groups" in ack
        wait_for(
            lambda: [r for r in slack.replies if r["hook"] == OUTSIDER and "not an approver" in r["text"]],
            timeout=30,
            what="the refusal sent to the outsider",
        )
        time.sleep(3)  # a wrongly accepted click would have started the drain by now
        body = get_json(local_cluster, "approval", name, "-n", namespace) or {}
        assert (body.get("status") or {}).get("phase") == "Pending"
        assert not (body.get("status") or {}).get("decisions")
        still = [
            p["metadata"]["name"]
            for p in healing._pods(local_cluster, namespace, "cache")
            if p["spec"].get("nodeName") == chaos_node
        ]
        assert sorted(still) == sorted(on_node), "pods left the node without an approval"
        assert not (healing._healing(local_cluster, namespace, "cache").get("history") or [])

        # A member of the group: approved, and the node is drained.
        _click(port, signing, slack, namespace=namespace, name=name, user=MEMBER)

        def drained() -> bool:
            pods = [
                p
                for p in healing._pods(local_cluster, namespace, "cache")
                if not p["metadata"].get("deletionTimestamp")
            ]
            off = [p for p in pods if p["spec"].get("nodeName") != chaos_node]
            return len(off) == 2 and all(map(healing._running_ready, off)) and len(pods) == 2

        wait_for(drained, timeout=60, what=f"{chaos_node} drained after the group member's click")
        status = (get_json(local_cluster, "approval", name, "-n", namespace) or {}).get("status") or {}
        assert status["phase"] == "Approved"
        (decision,) = status["decisions"]
        assert (decision["user"], decision["channel"], decision.get("groups")) == (MEMBER, "slack", [GROUP])
        wait_for(
            lambda: (
                "Approved" in json.dumps(slack.messages[posted["ts"]]["blocks"])
                and '"actions"' not in json.dumps(slack.messages[posted["ts"]]["blocks"])
            ),
            timeout=30,
            what="the Slack message updated to the decision, without buttons",
        )
        history = healing._healing(local_cluster, namespace, "cache").get("history") or []
        assert [r["action"] for r in history] == ["DrainNode"]
        # Only the group the request names was looked up, never the other one or the full list.
        looked_up = {c.args.get("usergroup") for c in slack.calls_of("usergroups.users.list")}
        assert looked_up == {GROUP}
        assert not slack.calls_of("usergroups.list", ok_only=False)
        assert token not in proc.logs() and signing not in proc.logs()
    finally:
        proc.stop()
        slack.stop()
        local_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
