"""SIGKILL the operator at random points of canary rollouts: every rollout still converges.

The operator's only memory is the service's status, so a kill at any instant must neither lose
a rollout nor repeat a step or a notification after the restart. Each trial rolls out a new
revision through three steps, kills the operator once or twice at random moments, restarts it
and checks the outcome from the Events and the operator's own log.
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import chaos_report as report
from conftest import REPO, Cluster, OperatorProcess, get_json, service_events, wait_for

pytestmark = pytest.mark.e2e

TRIALS = int(os.environ.get("HOMEOSTAT_CHAOS_TRIALS", "10"))
STEPS = {"strategy": "Canary", "canary": {"steps": [{"weight": w, "pause": "1s"} for w in (25, 50, 75)]}}


@pytest.fixture
def chaos_namespace(cluster: Cluster) -> Iterator[str]:
    # Outside the session operator's `t-*` namespaces: this test runs (and kills) its own.
    name = f"k-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def service(image: str) -> dict[str, Any]:
    body = yaml.safe_load((REPO / "examples" / "web.yaml").read_text())
    body["metadata"]["name"] = "chaos"
    body["spec"]["replicas"] = {"min": 1, "max": 10, "desired": 4}
    body["spec"]["rollout"] = STEPS
    body["spec"]["template"]["spec"]["containers"][0]["image"] = image
    return body


def rollout(cluster: Cluster, namespace: str) -> dict[str, Any]:
    body = get_json(cluster, "rsvc", "chaos", "-n", namespace) or {}
    return (body.get("status") or {}).get("rollout") or {}


def events(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    return service_events(cluster, namespace, "chaos")


# About 15 s a trial on two busy cores: pytest's default 600 s is too short for 50.
@pytest.mark.timeout(300 + 60 * TRIALS)
def test_sigkill_at_random_points_of_rollouts(
    cluster: Cluster,
    crds_installed: None,
    chaos_namespace: str,
    tmp_path: Path,
    chaos_report: report.Recorder,
) -> None:
    seed = int(os.environ.get("HOMEOSTAT_CHAOS_SEED", str(int(time.time()))))
    rng = random.Random(seed)
    print(f"chaos seed {seed}, {TRIALS} trials")
    operator = OperatorProcess(cluster.kubeconfig, tmp_path / "operator.log", ("--namespace", "k-*"))
    operator.start()
    try:
        cluster.kubectl(
            "apply", "-n", chaos_namespace, "-f", "-", input=json.dumps(service("registry.k8s.io/pause:3.10"))
        )
        wait_for(
            lambda: rollout(cluster, chaos_namespace).get("phase") == "Promoted", timeout=60, what="first"
        )
        kills = 0
        revisions = []
        for trial in range(TRIALS):
            image = f"registry.k8s.io/pause:chaos-{trial}"
            cluster.kubectl("apply", "-n", chaos_namespace, "-f", "-", input=json.dumps(service(image)))
            for _ in range(rng.choice((1, 2))):
                # A rollout of three 1 s steps takes about 5 s here: kill anywhere in it.
                time.sleep(rng.uniform(0.0, 5.0))
                operator.kill()
                kills += 1
                time.sleep(rng.uniform(0.0, 1.0))
                operator.start()

            def promoted() -> dict[str, Any] | None:
                # Until the operator has seen this trial's spec (killed right after the apply, it
                # may not have), the status still describes the previous trial's promotion.
                body = get_json(cluster, "rsvc", "chaos", "-n", chaos_namespace) or {}
                status = body.get("status") or {}
                state = status.get("rollout") or {}
                seen = status.get("observedGeneration") == body.get("metadata", {}).get("generation")
                current = state.get("revision") == status.get("currentRevision")
                return state if seen and current and state.get("phase") == "Promoted" else None

            done = wait_for(promoted, timeout=90, what=f"trial {trial} promoted")
            revisions.append(done["revision"])
            stable = get_json(cluster, "deployment", "chaos", "-n", chaos_namespace)
            assert stable is not None
            assert stable["spec"]["template"]["spec"]["containers"][0]["image"] == image
            assert stable["spec"]["replicas"] == 4
        wait_for(
            lambda: get_json(cluster, "deployment", "chaos-canary", "-n", chaos_namespace) is None,
            timeout=30,
            what="canary track gone",
        )
    finally:
        operator.stop()
    # Every step of every revision started once, and each revision was promoted once. The API
    # server folds identical Events into one with a count, so the counts are added up.
    posted: collections.Counter[tuple[str, str]] = collections.Counter()
    for event in events(cluster, chaos_namespace):
        posted[(event["reason"], event["message"])] += int(event.get("count") or 1)
    once = ("CanaryStepStarted", "Promoting", "Promoted", "RolloutStarted")
    duplicates = {key: n for key, n in posted.items() if n > 1 and key[0] in once}
    notified = re.findall(r"notification RolloutPromoted: revision (\w+) is promoted", operator.logs())
    repeated = {r: n for r, n in collections.Counter(notified).items() if n > 1}
    promoted = sum(n for (reason, _), n in posted.items() if reason == "Promoted")
    print(
        f"trials={TRIALS} kills={kills} converged={len(revisions)} "
        f"duplicate_events={len(duplicates)} duplicate_notifications={len(repeated)} "
        f"promoted_events={promoted} promoted_notifications={len(notified)}"
    )
    chaos_report.record(
        "rollout SIGKILL",
        trials=TRIALS,
        faults=kills,
        converged=len(revisions),
        duplicates=sum(n - 1 for n in duplicates.values()) + sum(n - 1 for n in repeated.values()),
        operators=[operator],
    )
    assert len(set(revisions)) == TRIALS
    assert not duplicates, duplicates
    assert not repeated, repeated
    # A kill may lose an Event or a notification (they go out after the state that records them
    # is stored), never double it; most must still arrive.
    assert promoted >= TRIALS // 2
    assert len(notified) >= TRIALS // 2
