"""The traffic model is what e2e tests predict Prometheus' answers from: check its arithmetic."""

from __future__ import annotations

import math
import re

import pytest

from traffic import model

NS, SVC = "ns", "web"


def pod(uid: str, revision: str = "r1", ready: bool = True, **annotations: str) -> model.PodInfo:
    faults = model.parse_faults(
        {f"traffic.homeostat.dev/{k.replace('_', '-')}": v for k, v in annotations.items()}
    )
    return model.PodInfo(uid, NS, SVC, revision, "stable", f"web-{uid}", 1000.0, ready, faults)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, model.Constant(10.0)),
        ("", model.Constant(10.0)),
        ("constant rps=20", model.Constant(20.0)),
        ("seasonal base=10 amplitude=40 period=300s phase=0s", model.Seasonal(10, 40, 300, 0)),
        ("seasonal base=1 amplitude=2 period=1h phase=5m", model.Seasonal(1, 2, 3600, 300)),
    ],
)
def test_patterns_parse(text: str | None, expected: model.Pattern) -> None:
    assert model.parse_pattern(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("wavy rps=1", "unknown pattern kind"),
        ("constant rps=-1", ">= 0"),
        ("constant rps", "not key=value"),
        ("constant speed=3", "unknown key"),
        ("seasonal base=1", "needs period"),
        ("seasonal base=1 period=soon", "not a duration"),
    ],
)
def test_bad_patterns_say_why(text: str, message: str) -> None:
    with pytest.raises(model.PatternError, match=message):
        model.parse_pattern(text)


def test_seasonal_trough_at_phase_and_peak_half_a_period_later() -> None:
    p = model.Seasonal(base=10, amplitude=40, period=300, phase=60)
    assert p.demand(60) == pytest.approx(10)
    assert p.demand(60 + 150) == pytest.approx(50)
    assert p.demand(60 + 300) == pytest.approx(10)
    assert p.demand(60 + 75) == pytest.approx(30)


def test_demand_splits_evenly_and_errors_are_rate_times_requests() -> None:
    world = model.World(now=0.0)
    world.update({(NS, SVC): model.Constant(20)}, [pod("a"), pod("b", "r2", error_rate="0.5")])
    world.advance(10.0)
    a, b = world.pods["a"], world.pods["b"]
    assert (a.ok, a.errors) == pytest.approx((100.0, 0.0))
    assert (b.ok, b.errors) == pytest.approx((50.0, 50.0))
    assert b.latency_count == pytest.approx(100.0)


def test_counters_survive_updates_and_unready_pods_serve_nothing() -> None:
    world = model.World(now=0.0)
    world.update({(NS, SVC): model.Constant(10)}, [pod("a"), pod("b")])
    world.advance(10.0)
    world.update({(NS, SVC): model.Constant(10)}, [pod("a"), pod("b", ready=False)])
    world.advance(20.0)
    assert world.pods["a"].ok == pytest.approx(50 + 100)
    assert world.pods["b"].ok == pytest.approx(50)
    world.update({(NS, SVC): model.Constant(10)}, [pod("a")])  # b deleted: its counters go
    assert set(world.pods) == {"a"}


def test_capacity_sheds_the_excess_as_503() -> None:
    world = model.World(now=0.0)
    world.update({(NS, SVC): model.Constant(30)}, [pod("a", capacity="20")])
    world.advance(1.0)
    assert (world.pods["a"].ok, world.pods["a"].shed) == pytest.approx((20.0, 10.0))


def test_latency_injection_moves_the_histogram() -> None:
    world = model.World(now=0.0)
    world.update({(NS, SVC): model.Constant(10)}, [pod("fast"), pod("slow", latency="0.8")])
    world.advance(1.0)
    le = dict(zip(model.BUCKETS, world.pods["fast"].buckets, strict=True))
    assert le[0.025] == pytest.approx(2.5)  # half the requests take 20 ms
    assert le[0.25] == pytest.approx(5.0)
    slow = dict(zip(model.BUCKETS, world.pods["slow"].buckets, strict=True))
    assert slow[0.5] == 0 and slow[1.0] == pytest.approx(5.0)
    assert world.pods["slow"].latency_sum / world.pods["slow"].latency_count == pytest.approx(0.8 + 0.044)


def test_load_dependent_latency_falls_as_pods_are_added() -> None:
    def mean_latency(pods: int) -> float:
        world = model.World(now=0.0)
        world.update(
            {(NS, SVC): model.Constant(10)}, [pod(str(i), latency_per_rps="0.05") for i in range(pods)]
        )
        world.advance(1.0)
        counters = world.pods["0"]
        return counters.latency_sum / counters.latency_count

    # 10 rps on one pod add 0.5 s, on two pods 0.25 s each, on top of the 44 ms base mean.
    assert mean_latency(1) == pytest.approx(0.044 + 0.5)
    assert mean_latency(2) == pytest.approx(0.044 + 0.25)


def test_memory_leaks_from_pod_start() -> None:
    counters = model.PodCounters(pod("a", memory_leak="2Mi"))
    assert counters.memory(1000.0) == model.DEFAULT_MEMORY
    assert counters.memory(1010.0) == model.DEFAULT_MEMORY + 20 * 2**20


def test_exposition_is_valid_text_format() -> None:
    world = model.World(now=0.0)
    world.update({(NS, SVC): model.Constant(10)}, [pod("a", error_rate="0.1"), pod("b", ready=False)])
    world.advance(2.0)
    text = world.exposition()
    sample = re.compile(r'^[a-z_]+(\{([a-z]+="[^"]*",?)*\})? -?[0-9.e+inf]+$', re.IGNORECASE)
    for line in text.splitlines():
        assert line.startswith("# ") or sample.match(line), line
    assert 'homeostat_sim_requests_total{namespace="ns",service="web",revision="r1",track="stable",' in text
    assert 'pod="web-a",code="500"} 2.0' in text
    assert "web-b" not in text  # only Ready pods report
    assert 'homeostat_sim_demand_rps{namespace="ns",service="web"} 10.0' in text
    assert 'homeostat_sim_ready_pods{namespace="ns",service="web"} 1' in text


def test_demand_history_is_openmetrics_with_timestamps() -> None:
    text = model.demand_history(model.Seasonal(0, 10, 100), NS, SVC, start=0, end=50, step=25)
    lines = text.splitlines()
    assert lines[-1] == "# EOF"
    values = [float(line.split()[1]) for line in lines if not line.startswith("#")]
    assert values == pytest.approx([0.0, 5.0, 10.0])
    assert not math.isnan(sum(values))


def test_restart_counter_climbs_from_pod_start() -> None:
    counters = model.PodCounters(pod("a", restart_every="20s"))  # started at 1000
    assert [counters.restarts(t) for t in (900.0, 1019.9, 1020.0, 1065.0)] == [0, 0, 1, 3]
    assert model.PodCounters(pod("b")).restarts(1000.0) == 0
    with pytest.raises(model.PatternError):
        model.parse_faults({model.ANNOTATION_RESTART_EVERY: "0s"})


def test_node_disk_fills_from_when_first_seen_and_is_exported_per_node() -> None:
    world = model.World(now=100.0)
    filling = model.parse_node_disk(
        "n1", {model.ANNOTATION_DISK_FILL: "0.1", model.ANNOTATION_DISK_USED: "0.5"}, 100.0
    )
    world.update_nodes([filling, model.parse_node_disk("n2", {}, 100.0)])
    world.update_nodes(
        [
            model.parse_node_disk(
                "n1", {model.ANNOTATION_DISK_FILL: "0.1", model.ANNOTATION_DISK_USED: "0.5"}, 130.0
            )
        ]
    )
    assert world.nodes["n1"].since == 100.0 and "n2" not in world.nodes  # unchanged settings keep filling
    world.update({(NS, SVC): model.Constant(10)}, [pod("a", restart_every="10s")])
    world.advance(160.0)  # one minute after first seen: 0.6 used
    text = world.exposition()
    size = model.DISK_SIZE
    assert (
        f'node_filesystem_size_bytes{{node="n1",mountpoint="/",device="/dev/root"}} {float(size)!r}' in text
    )
    avail = next(line for line in text.splitlines() if line.startswith("node_filesystem_avail_bytes"))
    assert float(avail.split()[-1]) == pytest.approx(size * 0.4)
    assert 'kube_pod_container_status_restarts_total{namespace="ns",pod="web-a",container="app"} ' in text
    assert model.NodeDisk("n", used=0.9, fill=1.0).used_at(600.0) == 1.0
    with pytest.raises(model.PatternError):
        model.parse_node_disk("n", {model.ANNOTATION_DISK_USED: "2"}, 0.0)


def test_node_failure_risk_is_exported_as_a_gauge_and_changes_without_restarting_the_fill() -> None:
    world = model.World(now=100.0)
    world.update_nodes(
        [
            model.parse_node_disk(
                "n1", {model.ANNOTATION_FAILURE_RISK: "0.2", model.ANNOTATION_DISK_FILL: "0.1"}, 100.0
            ),
            model.parse_node_disk("n2", {model.ANNOTATION_FAILURE_RISK: "NaN"}, 100.0),
            model.parse_node_disk("n3", {}, 100.0),
        ]
    )
    world.update_nodes(
        [
            model.parse_node_disk(
                "n1", {model.ANNOTATION_FAILURE_RISK: "0.9", model.ANNOTATION_DISK_FILL: "0.1"}, 130.0
            ),
            model.parse_node_disk("n2", {model.ANNOTATION_FAILURE_RISK: "NaN"}, 130.0),
            model.parse_node_disk("n3", {}, 130.0),
        ]
    )
    assert world.nodes["n1"].since == 100.0 and world.nodes["n1"].failure_risk == 0.9
    lines = [
        line for line in world.exposition().splitlines() if line.startswith("homeostat_sim_node_failure_risk")
    ]
    assert lines == [
        'homeostat_sim_node_failure_risk{node="n1"} 0.9',
        'homeostat_sim_node_failure_risk{node="n2"} NaN',
    ]
    with pytest.raises(model.PatternError):
        model.parse_node_disk("n", {model.ANNOTATION_FAILURE_RISK: "high"}, 0.0)
