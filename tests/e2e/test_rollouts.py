"""Canary and blue-green rollouts end to end: a template change in, tracks and traffic out.

The operator runs as a process against the real API server and is driven only through kubectl
(and the `kubectl homeostat` plugin), as a user would. These scenarios need no metrics; the ones
judged by Prometheus are in test_rollout_analysis.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from conftest import REPO, Cluster, OperatorProcess, get_json, plugin, service_events, wait_for

pytestmark = pytest.mark.e2e

COMMAND = "homeostat.dev/rollout-command"


def manifest(name: str, rollout: dict[str, Any], image: str = "registry.k8s.io/pause:3.10") -> dict[str, Any]:
    body = yaml.safe_load((REPO / "examples" / "web.yaml").read_text())
    body["metadata"]["name"] = name
    body["spec"]["replicas"] = {"min": 1, "max": 10, "desired": 4}
    body["spec"]["rollout"] = rollout
    body["spec"]["template"]["spec"]["containers"][0]["image"] = image
    return body


def apply(cluster: Cluster, namespace: str, body: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))


def status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return (get_json(cluster, "rsvc", name, "-n", namespace) or {}).get("status") or {}


def rollout_phase(cluster: Cluster, namespace: str, name: str) -> str | None:
    return (status(cluster, namespace, name).get("rollout") or {}).get("phase")


def wait_phase(
    cluster: Cluster, namespace: str, name: str, phase: str, timeout: float = 90
) -> dict[str, Any]:
    return wait_for(
        lambda: (
            status(cluster, namespace, name) if rollout_phase(cluster, namespace, name) == phase else None
        ),
        timeout=timeout,
        what=f"rollout of {name} to reach {phase} (now {rollout_phase(cluster, namespace, name)})",
    )


def image_of(cluster: Cluster, namespace: str, deployment: str) -> str | None:
    body = get_json(cluster, "deployment", deployment, "-n", namespace)
    return None if body is None else body["spec"]["template"]["spec"]["containers"][0]["image"]


def reasons(cluster: Cluster, namespace: str, name: str) -> list[str]:
    return [e["reason"] for e in service_events(cluster, namespace, name)]


def command(cluster: Cluster, namespace: str, name: str, kind: str) -> None:
    """Steer a rollout the way a user does: ``kubectl homeostat <verb> NAME``."""
    verb = {"promote-step": ["promote"], "promote-full": ["promote", "--full"]}.get(kind, [kind])
    done = plugin(cluster, verb[0], name, "-n", namespace, *verb[1:])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CommandApplied" in done.stdout or "RolledBack" in done.stdout, done.stdout


CANARY = {
    "strategy": "Canary",
    "canary": {"steps": [{"weight": 25, "pause": "2s"}, {"weight": 50, "pause": "2s"}]},
}
OLD, NEW = "registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.9"


@pytest.fixture
def running(operator_process: OperatorProcess) -> OperatorProcess:
    return operator_process


def test_good_canary_goes_through_every_step_and_is_promoted(
    cluster: Cluster, namespace: str, running: OperatorProcess
) -> None:
    apply(cluster, namespace, manifest("shop", CANARY, OLD))
    first = wait_phase(cluster, namespace, "shop", "Promoted")
    old_revision = first["rollout"]["stableRevision"]
    assert image_of(cluster, namespace, "shop") == OLD

    apply(cluster, namespace, manifest("shop", CANARY, NEW))
    # The canary track appears next to stable with a quarter of the replicas.
    canary = wait_for(
        lambda: get_json(cluster, "deployment", "shop-canary", "-n", namespace),
        timeout=60,
        what="canary track",
    )
    assert canary["spec"]["replicas"] == 1
    assert canary["spec"]["template"]["spec"]["containers"][0]["image"] == NEW
    assert image_of(cluster, namespace, "shop") == OLD  # stable keeps serving the old revision

    done = wait_phase(cluster, namespace, "shop", "Promoted")
    assert done["rollout"]["stableRevision"] != old_revision
    assert done["stableRevision"] == done["currentRevision"]
    assert image_of(cluster, namespace, "shop") == NEW
    wait_for(
        lambda: get_json(cluster, "deployment", "shop-canary", "-n", namespace) is None,
        timeout=30,
        what="canary track deleted",
    )
    wait_for(lambda: status(cluster, namespace, "shop").get("phase") == "Ready", timeout=30, what="Ready")
    seen = reasons(cluster, namespace, "shop")
    for reason in ("RolloutStarted", "StepReached", "CanaryStepStarted", "Promoting", "Promoted"):
        assert reason in seen, seen
    # Both revisions' templates are kept for a later rollback.
    kept = get_json(cluster, "controllerrevisions", "-n", namespace, "-l", "homeostat.dev/service=shop")
    assert kept is not None and len(kept["items"]) == 2


def test_blue_green_previews_then_switches_the_service(
    cluster: Cluster, namespace: str, running: OperatorProcess
) -> None:
    rollout = {"strategy": "BlueGreen", "blueGreen": {"scaleDownDelay": "3s"}}
    apply(cluster, namespace, manifest("bg", rollout, OLD))
    first = wait_phase(cluster, namespace, "bg", "Promoted")
    old_revision = first["rollout"]["stableRevision"]
    service = get_json(cluster, "service", "bg", "-n", namespace)
    assert service is not None
    assert service["spec"]["selector"]["homeostat.dev/revision"] == old_revision
    preview = get_json(cluster, "service", "bg-preview", "-n", namespace)
    assert preview is not None and preview["spec"]["selector"]["homeostat.dev/track"] == "canary"

    apply(cluster, namespace, manifest("bg", rollout, NEW))
    wait_for(
        lambda: (
            (get_json(cluster, "deployment", "bg-canary", "-n", namespace) or {})
            .get("spec", {})
            .get("replicas")
            == 4
        ),
        timeout=60,
        what="full-size preview",
    )
    done = wait_phase(cluster, namespace, "bg", "Promoted")
    new_revision = done["rollout"]["stableRevision"]
    assert new_revision != old_revision
    service = get_json(cluster, "service", "bg", "-n", namespace)
    assert service is not None and service["spec"]["selector"]["homeostat.dev/revision"] == new_revision
    assert image_of(cluster, namespace, "bg") == NEW
    assert "ActiveSwitched" in reasons(cluster, namespace, "bg")


def test_manual_pause_promote_and_abort(cluster: Cluster, namespace: str, running: OperatorProcess) -> None:
    held = {"strategy": "Canary", "canary": {"steps": [{"weight": 25}, {"weight": 50, "pause": "1h"}]}}
    apply(cluster, namespace, manifest("man", held, OLD))
    wait_phase(cluster, namespace, "man", "Promoted")

    apply(cluster, namespace, manifest("man", held, NEW))
    # A step without a pause holds until a human promotes it.
    paused = wait_phase(cluster, namespace, "man", "Paused")
    assert paused["rollout"]["pauseReason"] == "AwaitingPromotion"
    assert paused["phase"] == "Paused"
    command(cluster, namespace, "man", "promote-step")
    wait_for(
        lambda: (status(cluster, namespace, "man").get("rollout") or {}).get("step") == 1,
        timeout=30,
        what="step 2",
    )
    command(cluster, namespace, "man", "pause")
    wait_for(
        lambda: (
            (status(cluster, namespace, "man").get("rollout") or {}).get("pauseReason") == "PausedByCommand"
        ),
        timeout=30,
        what="paused by command",
    )
    command(cluster, namespace, "man", "promote-full")
    wait_phase(cluster, namespace, "man", "Promoted")
    assert image_of(cluster, namespace, "man") == NEW

    # A third revision, aborted: stable goes back to full size and the canary disappears.
    third = "registry.k8s.io/pause:3.8"
    apply(cluster, namespace, manifest("man", held, third))
    wait_phase(cluster, namespace, "man", "Paused")
    command(cluster, namespace, "man", "abort")
    aborted = wait_phase(cluster, namespace, "man", "Aborted")
    shown = plugin(cluster, "status", "man", "-n", namespace)
    assert shown.returncode == 0 and "Aborted" in shown.stdout, shown.stdout + shown.stderr
    refused = plugin(cluster, "resume", "man", "-n", namespace, "--timeout", "20")
    assert refused.returncode == 1 and "CommandIgnored" in refused.stdout, refused.stdout
    missing = plugin(cluster, "pause", "nope", "-n", namespace)
    assert missing.returncode == 1 and "no ReplicatedService 'nope'" in missing.stderr
    assert image_of(cluster, namespace, "man") == NEW
    stable = get_json(cluster, "deployment", "man", "-n", namespace)
    assert stable is not None and stable["spec"]["replicas"] == 4
    wait_for(
        lambda: get_json(cluster, "deployment", "man-canary", "-n", namespace) is None,
        timeout=30,
        what="canary deleted after abort",
    )
    assert aborted["rollout"]["cause"] == "Aborted"
    seen = reasons(cluster, namespace, "man")
    assert seen.count("CommandApplied") == 4, seen
    assert seen.count("CommandIgnored") == 1, seen


def test_bad_command_is_reported_and_the_operator_keeps_running(
    cluster: Cluster, namespace: str, running: OperatorProcess
) -> None:
    apply(cluster, namespace, manifest("cmd", CANARY, OLD))
    wait_phase(cluster, namespace, "cmd", "Promoted")
    cluster.kubectl("annotate", "rsvc", "cmd", "-n", namespace, "--overwrite", f"{COMMAND}=explode/1")
    degraded = wait_for(
        lambda: next(
            (
                c
                for c in status(cluster, namespace, "cmd").get("conditions", [])
                if c["type"] == "Degraded" and c["status"] == "True"
            ),
            None,
        ),
        timeout=30,
        what="Degraded condition",
    )
    assert COMMAND in degraded["message"] and "explode" in degraded["message"]
    assert running.alive()
    cluster.kubectl("annotate", "rsvc", "cmd", "-n", namespace, f"{COMMAND}-")
    wait_for(
        lambda: status(cluster, namespace, "cmd").get("phase") == "Ready", timeout=30, what="Ready again"
    )


def test_gateway_api_canary_sets_exact_route_weights(
    cluster: Cluster, namespace: str, running: OperatorProcess, gateway_api: None
) -> None:
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "gw-route"},
        "spec": {
            "rules": [
                {
                    "backendRefs": [
                        {"name": "gw-stable", "port": 8080, "weight": 100},
                        {"name": "gw-canary", "port": 8080, "weight": 0},
                    ]
                }
            ]
        },
    }
    apply(cluster, namespace, route)
    rollout = {
        "strategy": "Canary",
        "canary": {"steps": [{"weight": 20, "pause": "3s"}, {"weight": 60, "pause": "3s"}]},
        "trafficRouting": {"type": "GatewayAPI", "gatewayAPI": {"httpRoute": "gw-route"}},
    }
    apply(cluster, namespace, manifest("gw", rollout, OLD))
    wait_phase(cluster, namespace, "gw", "Promoted")
    for name, track in (("gw-stable", "stable"), ("gw-canary", "canary")):
        svc = get_json(cluster, "service", name, "-n", namespace)
        assert svc is not None and svc["spec"]["selector"]["homeostat.dev/track"] == track

    def canary_weight() -> int:
        body = get_json(cluster, "httproute", "gw-route", "-n", namespace) or {}
        refs = body["spec"]["rules"][0]["backendRefs"]
        return int(next(r["weight"] for r in refs if r["name"] == "gw-canary"))

    # Read before the change: the operator may set the first step before the first poll.
    seen: list[int] = [canary_weight()]
    apply(cluster, namespace, manifest("gw", rollout, NEW))

    def weights() -> bool:
        canary = canary_weight()
        if seen[-1] != canary:
            seen.append(canary)
        return rollout_phase(cluster, namespace, "gw") == "Promoted" and canary == 0 and 60 in seen

    wait_for(weights, timeout=90, interval=0.2, what="route weights 20 -> 60 -> 0")
    assert seen[:3] == [0, 20, 60], seen
    # Stable keeps its full size while exact weights route traffic (no replica-ratio split).
    assert image_of(cluster, namespace, "gw") == NEW
    stable = get_json(cluster, "deployment", "gw", "-n", namespace)
    assert stable is not None and stable["spec"]["replicas"] == 4


def test_rolling_update_abort_runs_the_stable_revision_again(
    cluster: Cluster, namespace: str, running: OperatorProcess
) -> None:
    from cluster import local

    rolling = {"strategy": "RollingUpdate"}

    def manifest_ru(image: str) -> dict[str, Any]:
        # Pods of the broken revision are ready for a second or two before they fail, as real
        # crashing containers are: only pods ready for 5 s count as available.
        return {
            **manifest("ru", rolling, image),
            "spec": {**manifest("ru", rolling, image)["spec"], "minReadySeconds": 5},
        }

    apply(cluster, namespace, manifest_ru(OLD))
    wait_for(lambda: status(cluster, namespace, "ru").get("phase") == "Ready", timeout=60, what="Ready")
    stable = status(cluster, namespace, "ru")["stableRevision"]
    broken = manifest_ru(NEW)
    # KWOK's chaos stage fails every container of the new revision: it never becomes ready.
    broken["spec"]["template"]["metadata"]["labels"][local.POD_FAILURE_LABEL] = "true"
    apply(cluster, namespace, broken)
    wait_for(lambda: image_of(cluster, namespace, "ru") == NEW, timeout=30, what="new revision rolling")
    assert status(cluster, namespace, "ru")["stableRevision"] == stable

    command(cluster, namespace, "ru", "abort")
    wait_for(lambda: image_of(cluster, namespace, "ru") == OLD, timeout=30, what="stable template back")
    held = wait_for(
        lambda: (
            status(cluster, namespace, "ru")
            if status(cluster, namespace, "ru").get("phase") == "Degraded"
            and status(cluster, namespace, "ru").get("readyReplicas") == 4
            else None
        ),
        timeout=60,
        what="Degraded, serving the stable revision",
    )
    degraded = next(c for c in held["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "RolledBack" and stable in degraded["message"]
    assert held["rollback"]["stableRevision"] == stable
    assert "RolledBack" in reasons(cluster, namespace, "ru")

    # A new template is a new rollout; the old abort annotation is not applied to it.
    third = "registry.k8s.io/pause:3.8"
    apply(cluster, namespace, manifest_ru(third))
    done = wait_for(
        lambda: (
            status(cluster, namespace, "ru")
            if status(cluster, namespace, "ru").get("phase") == "Ready"
            else None
        ),
        timeout=60,
        what="Ready at the third revision",
    )
    assert image_of(cluster, namespace, "ru") == third
    assert done["stableRevision"] == done["currentRevision"] != stable


def test_scaling_during_a_canary_splits_the_new_total_by_weight(
    cluster: Cluster, namespace: str, running: OperatorProcess
) -> None:
    held = {"strategy": "Canary", "canary": {"steps": [{"weight": 25}]}}
    apply(cluster, namespace, manifest("split", held, OLD))
    wait_phase(cluster, namespace, "split", "Promoted")
    apply(cluster, namespace, manifest("split", held, NEW))
    wait_phase(cluster, namespace, "split", "Paused")
    # The scale subresource (kubectl scale, an HPA, Homeostat's autoscaler) sets the total; the
    # rollout only splits it: 25 % of 8 is 2 canary pods, and stable carries the other 6.
    cluster.kubectl("scale", "rsvc", "split", "-n", namespace, "--replicas=8")

    def split() -> tuple[int, int] | None:
        stable = get_json(cluster, "deployment", "split", "-n", namespace) or {}
        canary = get_json(cluster, "deployment", "split-canary", "-n", namespace) or {}
        sizes = (stable.get("spec", {}).get("replicas"), canary.get("spec", {}).get("replicas"))
        return sizes if sizes == (6, 2) else None

    wait_for(split, timeout=60, what="stable 6 + canary 2")
    shown = wait_for(
        lambda: (
            status(cluster, namespace, "split")
            if status(cluster, namespace, "split").get("desiredReplicas") == 8
            else None
        ),
        timeout=30,
        what="desired 8",
    )
    assert shown["canary"]["weight"] == 25  # 2 of 8 ready pods
    row = cluster.kubectl("get", "rsvc", "split", "-n", namespace).stdout
    assert "Paused" in row and " 25 " in row, row
