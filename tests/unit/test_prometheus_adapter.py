"""PrometheusMetrics against canned Prometheus HTTP answers served on 127.0.0.1.

The canned bodies follow the Prometheus HTTP API documentation (vector, matrix, scalar, error
envelope); the server records every request so tests can tell a fail-fast from a real call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.server
import json
import math
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from homeostat import cli, ports
from homeostat.adapters import metrics, prometheus


@dataclasses.dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    delay: float = 0.0


def ok(result_type: str, result: Any) -> Reply:
    body = {"status": "success", "data": {"resultType": result_type, "result": result}}
    return Reply(200, json.dumps(body).encode())


def failure(status: int, error_type: str, error: str) -> Reply:
    return Reply(status, json.dumps({"status": "error", "errorType": error_type, "error": error}).encode())


class CannedPrometheus:
    """A tiny HTTP server answering every request with ``self.reply`` and recording paths."""

    def __init__(self) -> None:
        self.reply = ok("vector", [])
        self.requests: list[tuple[str, dict[str, str]]] = []
        canned = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parsed = urllib.parse.urlsplit(self.path)
                canned.requests.append((parsed.path, dict(urllib.parse.parse_qsl(parsed.query))))
                reply = canned.reply
                if reply.delay:
                    time.sleep(reply.delay)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def canned() -> Iterator[CannedPrometheus]:
    server = CannedPrometheus()
    yield server
    server.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def provider(url: str, timeout: float = 2.0, threshold: int = 3, clock: Callable[[], float] | None = None):
    breaker = prometheus.CircuitBreaker(threshold=threshold, cooldown=30.0, clock=clock or time.monotonic)
    return prometheus.PrometheusMetrics(url, timeout=timeout, breaker=breaker)


def instant(p: prometheus.PrometheusMetrics, query: str = "up") -> tuple[ports.Sample, ...]:
    return asyncio.run(p.instant(query))


def unavailable(p: prometheus.PrometheusMetrics, query: str = "up") -> str:
    with pytest.raises(ports.Unavailable) as info:
        instant(p, query)
    return str(info.value)


VECTOR = [
    {"metric": {"revision": "a", "track": "stable"}, "value": [1700000000.5, "0.25"]},
    {"metric": {"revision": "b", "track": "canary"}, "value": [1700000000.5, "NaN"]},
    {"metric": {"revision": "c"}, "value": [1700000000.5, "+Inf"]},
]


def test_vector_keeps_labels_and_nan(canned: CannedPrometheus) -> None:
    canned.reply = ok("vector", VECTOR)
    samples = instant(provider(canned.url), "sum by (revision) (rate(x[1m]))")
    assert [s.labels for s in samples] == [
        {"revision": "a", "track": "stable"},
        {"revision": "b", "track": "canary"},
        {"revision": "c"},
    ]
    assert samples[0].value == 0.25
    assert math.isnan(samples[1].value)
    assert samples[2].value == math.inf
    path, params = canned.requests[-1]
    assert path == "/api/v1/query"
    assert params["query"] == "sum by (revision) (rate(x[1m]))"
    assert params["timeout"] == "2s"  # Prometheus is asked to give up too


def test_empty_answer_is_an_empty_tuple(canned: CannedPrometheus) -> None:
    canned.reply = ok("vector", [])
    assert instant(provider(canned.url)) == ()


def test_scalar_answer_is_one_unlabelled_sample(canned: CannedPrometheus) -> None:
    canned.reply = ok("scalar", [1700000000, "3.5"])
    assert instant(provider(canned.url), "scalar(x)") == (ports.Sample(labels={}, value=3.5),)


def test_range_query_sends_step_and_returns_points_in_time_order(canned: CannedPrometheus) -> None:
    canned.reply = ok(
        "matrix",
        [
            {"metric": {"pod": "p1"}, "values": [[1000, "1"], [1030, "NaN"], [1015, "2"]]},
            {"metric": {"pod": "p2"}, "values": []},
        ],
    )
    series = asyncio.run(provider(canned.url).range("rate(x[1m])", 1000.0, 1060.0, 15.0))
    assert series[0] == ports.Series(
        labels={"pod": "p1"}, points=((1000.0, 1.0), (1015.0, 2.0), series[0].points[2])
    )
    assert series[0].points[2][0] == 1030.0 and math.isnan(series[0].points[2][1])
    assert series[1].points == ()
    path, params = canned.requests[-1]
    assert path == "/api/v1/query_range"
    assert (params["start"], params["end"], params["step"]) == ("1000", "1060", "15")


def test_empty_range_answer_is_an_empty_tuple(canned: CannedPrometheus) -> None:
    canned.reply = ok("matrix", [])
    assert asyncio.run(provider(canned.url).range("x", 0.0, 60.0, 5.0)) == ()


@pytest.mark.parametrize(
    ("start", "end", "step", "message"),
    [(0.0, 60.0, 0.0, "positive"), (0.0, 60.0, math.nan, "positive"), (60.0, 0.0, 5.0, "before it starts")],
)
def test_bad_range_arguments_are_refused_without_a_request(
    canned: CannedPrometheus, start: float, end: float, step: float, message: str
) -> None:
    with pytest.raises(ports.Unavailable, match=message):
        asyncio.run(provider(canned.url).range("x", start, end, step))
    assert canned.requests == []


def test_bad_query_names_prometheus_error_and_does_not_open_the_breaker(canned: CannedPrometheus) -> None:
    canned.reply = failure(400, "bad_data", 'invalid parameter "query": 1:5: parse error: unexpected ")"')
    p = provider(canned.url, threshold=1)
    message = unavailable(p, "sum(x))")
    assert "refused the query 'sum(x))'" in message
    assert "bad_data: invalid parameter" in message
    canned.reply = ok("vector", [])
    assert instant(p) == ()  # still closed: a bad query says nothing about Prometheus' health
    assert p.breaker.state is prometheus.BreakerState.CLOSED


def test_server_error_is_unavailable_with_status(canned: CannedPrometheus) -> None:
    canned.reply = failure(503, "timeout", "query timed out in query execution")
    message = unavailable(provider(canned.url))
    assert "HTTP 503" in message and "query timed out" in message


def test_plain_500_is_unavailable_and_not_retried(canned: CannedPrometheus) -> None:
    canned.reply = Reply(500, b"Internal Server Error\n")
    assert "HTTP 500: Internal Server Error" in unavailable(provider(canned.url))
    assert len(canned.requests) == 1


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (Reply(200, b"<html>login</html>"), "not JSON"),
        (Reply(200, b'{"status":"success","data":{"resultType":"vec'), "not JSON"),  # cut short
        (Reply(200, b'{"status":"error","errorType":"x","error":"y"}'), "no data.result"),
        (ok("vector", {"a": 1}), "data.result is dict"),
        (ok("vector", [{"value": [1, "1"]}]), "result[0] has no metric labels"),
        (ok("vector", [{"metric": {}}]), "result[0] has neither value nor values"),
        (ok("vector", [{"metric": {}, "value": [1, "many"]}]), "is not a number"),
        (ok("vector", [{"metric": {}, "value": [1]}]), "not a [time, value] pair"),
        (ok("vector", [{"metric": {}, "value": [1, "1"]}, "junk"]), "result[1] is str"),
    ],
)
def test_malformed_answers_are_unavailable_with_a_reason(
    canned: CannedPrometheus, reply: Reply, message: str
) -> None:
    canned.reply = reply
    assert message in unavailable(provider(canned.url))


def test_instant_answer_to_a_range_query_is_refused(canned: CannedPrometheus) -> None:
    canned.reply = ok("vector", VECTOR)
    with pytest.raises(ports.Unavailable, match="instant vector"):
        asyncio.run(provider(canned.url).range("x", 0.0, 60.0, 5.0))


def test_slow_answer_times_out(canned: CannedPrometheus) -> None:
    canned.reply = dataclasses.replace(ok("vector", []), delay=2.0)
    started = time.monotonic()
    message = unavailable(provider(canned.url, timeout=0.3))
    assert "no answer within 0.3s" in message
    assert time.monotonic() - started < 1.9  # did not wait for the slow answer


def test_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    message = unavailable(provider(f"http://127.0.0.1:{port}"))
    assert message == f"Prometheus at http://127.0.0.1:{port}: connection refused"


def test_breaker_opens_fails_fast_then_probes_and_closes(canned: CannedPrometheus) -> None:
    clock = FakeClock()
    p = provider(canned.url, threshold=2, clock=clock)
    canned.reply = Reply(500, b"down")
    unavailable(p)
    assert p.breaker.state is prometheus.BreakerState.CLOSED
    unavailable(p)
    assert p.breaker.state is prometheus.BreakerState.OPEN
    calls = len(canned.requests)

    message = unavailable(p)
    assert "circuit open after 2 consecutive failures" in message and "HTTP 500: down" in message
    assert len(canned.requests) == calls  # failed fast, nothing sent

    clock.now += 29
    unavailable(p)
    assert len(canned.requests) == calls

    clock.now += 2  # cooldown over: one probe goes through, and fails, so the breaker reopens
    unavailable(p)
    assert len(canned.requests) == calls + 1
    assert p.breaker.state is prometheus.BreakerState.OPEN
    unavailable(p)
    assert len(canned.requests) == calls + 1

    clock.now += 31
    canned.reply = ok("vector", VECTOR[:1])
    assert len(instant(p)) == 1  # the probe succeeds and closes the breaker
    assert p.breaker.state is prometheus.BreakerState.CLOSED
    assert len(instant(p)) == 1
    assert len(canned.requests) == calls + 3


def test_half_open_lets_exactly_one_probe_through() -> None:
    clock = FakeClock()
    breaker = prometheus.CircuitBreaker(threshold=1, cooldown=10.0, clock=clock)
    breaker.failed("boom")
    clock.now += 11
    breaker.admit()  # the probe
    with pytest.raises(ports.Unavailable, match="a probe is in flight"):
        breaker.admit()
    breaker.released()  # the probe ended without a verdict: the next caller probes
    breaker.admit()
    breaker.succeeded()
    assert breaker.state is prometheus.BreakerState.CLOSED and breaker.failures == 0


def test_timeouts_count_towards_the_breaker(canned: CannedPrometheus) -> None:
    canned.reply = dataclasses.replace(ok("vector", []), delay=1.0)
    p = provider(canned.url, timeout=0.2, threshold=2)
    unavailable(p)
    unavailable(p)
    assert "circuit open" in unavailable(p)


def test_userinfo_never_shows_in_messages() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    p = provider(f"http://alice:s3cret@127.0.0.1:{port}")
    assert "s3cret" not in unavailable(p)
    assert "s3cret" not in repr(p)


@pytest.mark.parametrize("url", [None, "", "   "])
def test_factory_returns_none_when_unconfigured(url: str | None) -> None:
    assert metrics.from_url(url) is None


def test_factory_builds_a_prometheus_provider() -> None:
    provider_ = metrics.from_url(" http://127.0.0.1:9090/ ")
    assert isinstance(provider_, prometheus.PrometheusMetrics)
    assert provider_.url == "http://127.0.0.1:9090"


@pytest.mark.parametrize("url", ["127.0.0.1:9090", "ftp://host", "http://", "http://h:9090/?x=1"])
def test_factory_refuses_urls_that_cannot_be_prometheus(url: str) -> None:
    with pytest.raises(ValueError, match="Prometheus URL"):
        metrics.from_url(url)


def test_cli_refuses_a_bad_prometheus_url_before_touching_the_cluster(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["run", "--kubeconfig", "/nonexistent", "--prometheus-url", "ftp://x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("homeostat: error: --prometheus-url: the Prometheus URL must look like")
