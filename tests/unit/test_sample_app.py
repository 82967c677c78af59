"""The sample workload (examples/app/app.py) as a process: what a real node's pods will do.

Each test starts the app on a free loopback port with the environment a pod spec would give it and
talks HTTP to it, so the metric names and labels checked here are what Prometheus would scrape and
the operator's queries select on.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "examples/app/app.py"
LINE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

POD_ENV = {
    "APP_NAMESPACE": "shop",
    "APP_SERVICE": "web",
    "APP_REVISION": "6d5f7c",
    "APP_TRACK": "canary",
    "APP_POD": "web-6d5f7c-abcde",
}


class App:
    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc = proc
        self.port = port

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        status, text = self.get("/metrics")
        assert status == 200
        return parse(text)


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = LINE.match(line)
        assert match, f"not a Prometheus text sample: {line!r}"
        labels = frozenset(LABEL.findall(match["labels"] or ""))
        samples[(match["name"], labels)] = float(match["value"])
    return samples


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(env: Mapping[str, str], *, wait: bool = True) -> App:
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("APP_")}
    proc = subprocess.Popen(
        [sys.executable, str(APP), "--host", "127.0.0.1", "--port", str(port)],
        env={**clean, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    app = App(proc, port)
    if wait:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, f"app exited: {proc.stderr.read().decode() if proc.stderr else ''}"
            try:
                if app.get("/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "app did not answer /healthz within 15 s"
            time.sleep(0.05)
    return app


@pytest.fixture
def launch() -> Iterator[list[App]]:
    started: list[App] = []
    yield started
    for app in started:
        if app.proc.poll() is None:
            app.proc.kill()
        app.proc.wait(timeout=10)
        if app.proc.stderr:
            app.proc.stderr.close()


def run(launch: list[App], env: Mapping[str, str], *, wait: bool = True) -> App:
    app = start(env, wait=wait)
    launch.append(app)
    return app


def labels(**extra: str) -> frozenset[tuple[str, str]]:
    pod = {
        "namespace": POD_ENV["APP_NAMESPACE"],
        "service": POD_ENV["APP_SERVICE"],
        "revision": POD_ENV["APP_REVISION"],
        "track": POD_ENV["APP_TRACK"],
        "pod": POD_ENV["APP_POD"],
    }
    return frozenset({**pod, **extra}.items())


def test_healthy_requests_are_counted_as_200_with_the_pods_labels(launch: list[App]) -> None:
    app = run(launch, {**POD_ENV, "APP_ERROR_RATIO": "0"})
    assert all(app.get("/")[0] == 200 for _ in range(7))
    samples = app.metrics()
    assert samples[("http_requests_total", labels(code="200"))] == 7
    assert ("http_requests_total", labels(code="500")) not in samples
    assert samples[("http_request_duration_seconds_count", labels())] == 7
    assert samples[("http_request_duration_seconds_bucket", labels(le="+Inf"))] == 7
    assert samples[("http_request_duration_seconds_bucket", labels(le="0.005"))] <= 7
    # Probes and scrapes are not "the work": only / counts.
    app.get("/healthz")
    app.get("/readyz")
    assert app.metrics()[("http_requests_total", labels(code="200"))] == 7


def test_an_error_ratio_of_one_answers_every_request_500(launch: list[App]) -> None:
    app = run(launch, {**POD_ENV, "APP_ERROR_RATIO": "1"})
    assert [app.get("/")[0] for _ in range(5)] == [500] * 5
    samples = app.metrics()
    assert samples[("http_requests_total", labels(code="500"))] == 5
    assert ("http_requests_total", labels(code="200")) not in samples


def test_added_latency_shows_in_the_histogram(launch: list[App]) -> None:
    app = run(launch, {**POD_ENV, "APP_LATENCY_MS": "150"})
    for _ in range(3):
        app.get("/")
    samples = app.metrics()
    assert samples[("http_request_duration_seconds_bucket", labels(le="0.1"))] == 0
    assert samples[("http_request_duration_seconds_bucket", labels(le="0.25"))] == 3
    assert samples[("http_request_duration_seconds_sum", labels())] >= 0.45


def test_labels_default_so_plain_scraping_still_selects_something(launch: list[App]) -> None:
    app = run(launch, {})
    app.get("/")
    [key] = [key for key in app.metrics() if key[0] == "http_requests_total"]
    got = dict(key[1])
    assert got["service"] == "sample-app"
    assert got["pod"] == socket.gethostname()
    assert got["code"] == "200"


def test_readiness_follows_the_flags_and_liveness_does_not(launch: list[App]) -> None:
    assert run(launch, {}).get("/readyz")[0] == 200
    unready = run(launch, {"APP_UNREADY": "1"})
    assert unready.get("/readyz")[0] == 503
    assert unready.get("/healthz")[0] == 200
    later = run(launch, {"APP_UNREADY_AFTER_S": "1"})
    assert later.get("/readyz")[0] == 200
    deadline = time.monotonic() + 10
    while later.get("/readyz")[0] == 200:
        assert time.monotonic() < deadline, "still ready 10 s after APP_UNREADY_AFTER_S=1"
        time.sleep(0.1)
    assert later.get("/healthz")[0] == 200


def test_crash_on_start_exits_non_zero(launch: list[App]) -> None:
    app = run(launch, {"APP_CRASH_ON_START": "true"}, wait=False)
    assert app.proc.wait(timeout=10) != 0


def test_a_bad_setting_stops_it_at_start(launch: list[App]) -> None:
    app = run(launch, {"APP_ERROR_RATIO": "2"}, wait=False)
    assert app.proc.wait(timeout=10) != 0
    assert app.proc.stderr is not None
    assert b"APP_ERROR_RATIO" in app.proc.stderr.read()


def test_sigterm_stops_it_cleanly_and_promptly(launch: list[App]) -> None:
    app = run(launch, {})
    app.proc.send_signal(signal.SIGTERM)
    # The kubelet's default grace is 30 s; a Python PID 1 without a handler would use all of it.
    assert app.proc.wait(timeout=5) == 0


def test_with_a_shutdown_delay_it_turns_unready_and_keeps_serving_until_it_stops(
    launch: list[App],
) -> None:
    app = run(launch, {"APP_SHUTDOWN_DELAY_S": "2"})
    assert app.get("/readyz")[0] == 200
    signalled = time.monotonic()
    app.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert app.proc.poll() is None, "exited before its shutdown delay"
    assert app.get("/readyz")[0] == 503
    assert app.get("/")[0] == 200, "stopped serving during the delay"
    assert app.proc.wait(timeout=5) == 0
    assert time.monotonic() - signalled >= 1.9


def test_a_second_signal_cuts_the_shutdown_delay_short(launch: list[App]) -> None:
    app = run(launch, {"APP_SHUTDOWN_DELAY_S": "30"})
    app.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert app.get("/readyz")[0] == 503
    app.proc.send_signal(signal.SIGTERM)
    assert app.proc.wait(timeout=5) == 0


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_the_leak_grows_the_resident_set(launch: list[App]) -> None:
    app = run(launch, {"APP_LEAK_MB_PER_S": "100"})
    before = vm_rss_mb(app.proc.pid)
    deadline = time.monotonic() + 10
    while vm_rss_mb(app.proc.pid) - before < 60:
        assert time.monotonic() < deadline, f"RSS grew {vm_rss_mb(app.proc.pid) - before:.0f} MB in 10 s"
        time.sleep(0.1)
    reported = next(v for (name, _), v in app.metrics().items() if name == "process_resident_memory_bytes")
    assert reported / 2**20 > before + 60


def test_the_leak_stops_at_its_cap(launch: list[App]) -> None:
    app = run(launch, {"APP_LEAK_MB_PER_S": "100", "APP_LEAK_LIMIT_MB": "30"})

    def leaked() -> float:
        return next(v for (name, _), v in app.metrics().items() if name == "sample_app_leaked_bytes")

    deadline = time.monotonic() + 10
    while leaked() < 30 * 2**20:
        assert time.monotonic() < deadline, f"leaked only {leaked() / 2**20:.0f} MiB in 10 s"
        time.sleep(0.1)
    rss = vm_rss_mb(app.proc.pid)
    time.sleep(1)  # 100 MiB/s more, were it not capped
    assert leaked() == 30 * 2**20
    assert vm_rss_mb(app.proc.pid) - rss < 10


def test_no_leak_without_the_setting(launch: list[App]) -> None:
    app = run(launch, {})
    before = vm_rss_mb(app.proc.pid)
    time.sleep(1)
    assert vm_rss_mb(app.proc.pid) - before < 10


def test_unknown_paths_are_404(launch: list[App]) -> None:
    assert run(launch, {}).get("/nope")[0] == 404
