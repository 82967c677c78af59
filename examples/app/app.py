"""A sample workload for a real node: an HTTP service that can be told to misbehave.

KWOK pods execute nothing, so the traffic simulator (tests/traffic) stands in for them. On a real
kubelet + containerd node the pods run this instead: it serves requests, answers liveness and
readiness probes, and exports the metrics the operator's analysis, scaling and healing queries read,
under the same names and labels the simulator uses. Environment variables make it fail in the ways
Homeostat must notice: errors, latency, a memory leak up to a real OOM kill, a crash at start (a real
CrashLoopBackOff), readiness that never comes or goes away.

Python standard library only, so its image needs nothing from a package index. See README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

# The bucket bounds tests/traffic/model.py uses, so dashboards and quantiles read both alike.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LABEL_ENV = (
    ("namespace", "APP_NAMESPACE"),
    ("service", "APP_SERVICE"),
    ("revision", "APP_REVISION"),
    ("track", "APP_TRACK"),
    ("pod", "APP_POD"),
)
PAGE = 4096


class Config:
    """The behaviour asked for by the environment; a bad value stops the process at start."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.error_ratio = _number(env, "APP_ERROR_RATIO", 0.0)
        if not 0.0 <= self.error_ratio <= 1.0:
            raise ValueError(f"APP_ERROR_RATIO must be between 0 and 1, not {self.error_ratio}")
        self.latency = _number(env, "APP_LATENCY_MS", 0.0) / 1000
        self.leak_bytes_per_s = _number(env, "APP_LEAK_MB_PER_S", 0.0) * 1024 * 1024
        # Stop growing once this much is held: a leak that levels off under a raised limit.
        self.leak_limit_bytes = _number(env, "APP_LEAK_LIMIT_MB", float("inf")) * 1024 * 1024
        self.crash_on_start = _flag(env, "APP_CRASH_ON_START")
        self.unready = _flag(env, "APP_UNREADY")
        after = env.get("APP_UNREADY_AFTER_S", "").strip()
        self.unready_after = float(after) if after else None
        # Between SIGTERM and exit: unready but still serving, so the Service's endpoints drop
        # the pod (kube-proxy takes a moment) before its socket closes.
        self.shutdown_delay = _number(env, "APP_SHUTDOWN_DELAY_S", 0.0)
        self.draining = threading.Event()
        defaults = {"service": "sample-app", "pod": socket.gethostname()}
        self.labels = tuple((name, env.get(var) or defaults.get(name, "")) for name, var in LABEL_ENV)


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number, not {text!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative, not {text!r}")
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Metrics:
    """Counters for the requests to ``/``, kept by hand: the exposition format is a few lines."""

    def __init__(self, labels: tuple[tuple[str, str], ...]) -> None:
        self.labels = labels
        self.lock = threading.Lock()
        self.codes: dict[str, int] = {}
        self.buckets = [0] * len(BUCKETS)
        self.count = 0
        self.total_seconds = 0.0
        self.leaked = 0
        self.started = time.time()

    def observe(self, code: int, seconds: float) -> None:
        with self.lock:
            self.codes[str(code)] = self.codes.get(str(code), 0) + 1
            for index, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self.buckets[index] += 1
            self.count += 1
            self.total_seconds += seconds

    def render(self) -> str:
        base = self.labels
        with self.lock:
            lines = [
                "# HELP http_requests_total Requests to / answered, by HTTP status code.",
                "# TYPE http_requests_total counter",
            ]
            for code in sorted(self.codes):
                lines.append(f"http_requests_total{_labels((*base, ('code', code)))} {self.codes[code]}")
            name = "http_request_duration_seconds"
            lines += [f"# HELP {name} Latency of requests to /.", f"# TYPE {name} histogram"]
            for bound, value in zip(BUCKETS, self.buckets, strict=True):
                lines.append(f"{name}_bucket{_labels((*base, ('le', repr(bound))))} {value}")
            lines.append(f"{name}_bucket{_labels((*base, ('le', '+Inf')))} {self.count}")
            lines.append(f"{name}_sum{_labels(base)} {self.total_seconds!r}")
            lines.append(f"{name}_count{_labels(base)} {self.count}")
            leaked = self.leaked
        lines += [
            "# HELP process_resident_memory_bytes Resident memory size in bytes.",
            "# TYPE process_resident_memory_bytes gauge",
            f"process_resident_memory_bytes {resident_bytes()}",
            "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.",
            "# TYPE process_start_time_seconds gauge",
            f"process_start_time_seconds {self.started!r}",
            "# HELP sample_app_leaked_bytes Memory held on purpose (APP_LEAK_MB_PER_S).",
            "# TYPE sample_app_leaked_bytes gauge",
            f"sample_app_leaked_bytes{_labels(base)} {leaked}",
        ]
        return "\n".join(lines) + "\n"


def leak(
    metrics: Metrics, bytes_per_s: float, stop: threading.Event, limit_bytes: float = float("inf")
) -> None:
    """Holds ever more memory, up to ``limit_bytes``, written so every page is resident: a mapping
    never touched costs nothing and would never reach the container's limit."""
    held: list[bytes] = []
    owed = 0.0
    total = 0
    while not stop.wait(0.1):
        owed += bytes_per_s * 0.1
        size = int(min(owed, limit_bytes - total)) // PAGE * PAGE
        if size > 0:
            total += size
            held.append(b"\x01" * size)
            owed -= size
            with metrics.lock:
                metrics.leaked += size


def make_server(host: str, port: int, config: Config, metrics: Metrics) -> http.server.ThreadingHTTPServer:
    started = time.monotonic()

    def ready() -> bool:
        if config.unready or config.draining.is_set():
            return False
        return config.unready_after is None or time.monotonic() - started < config.unready_after

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/":
                begun = time.monotonic()
                if config.latency:
                    time.sleep(config.latency)
                code = 500 if random.random() < config.error_ratio else 200
                metrics.observe(code, time.monotonic() - begun)
                self._reply(code, b"error\n" if code == 500 else b"ok\n")
            elif path == "/healthz":
                self._reply(200, b"ok\n")
            elif path == "/readyz":
                self._reply(200, b"ready\n") if ready() else self._reply(503, b"not ready\n")
            elif path == "/metrics":
                self._reply(200, metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8")
            else:
                self._reply(404, b"not found\n")

        def _reply(self, code: int, body: bytes, content_type: str = "text/plain") -> None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # probes and scrapes every few seconds would drown the pod's log

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def log(message: str) -> None:
    """One line to the container's log (stderr, unbuffered)."""
    sys.stderr.write(f"sample-app: {message}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Sample HTTP workload for Homeostat's real node.")
    parser.add_argument("--host", default=os.environ.get("APP_HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    args = parser.parse_args(argv)
    try:
        config = Config(os.environ)
    except ValueError as exc:
        log(str(exc))
        return 2
    if config.crash_on_start:
        log("APP_CRASH_ON_START is set, exiting")
        return 1

    # As PID 1 in a container Python gets no default SIGTERM action: without this each pod deletion
    # would wait out the whole grace period. The signals are blocked before any thread starts (the
    # threads inherit the mask) and taken by sigwait below, so the main thread sees them at once
    # rather than when some other thread that caught them lets it run.
    stopping = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stopping)
    stop = threading.Event()

    metrics = Metrics(config.labels)
    server = make_server(args.host, args.port, config, metrics)
    threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True, name="http").start()
    if config.leak_bytes_per_s:
        threading.Thread(
            target=leak,
            args=(metrics, config.leak_bytes_per_s, stop, config.leak_limit_bytes),
            daemon=True,
            name="leak",
        ).start()
    host, port = server.server_address[:2]
    log(f"listening on {host}:{port}")
    signal.sigwait(stopping)
    if config.shutdown_delay:
        config.draining.set()
        log(f"stopping in {config.shutdown_delay:g} s, unready meanwhile")
        signal.sigtimedwait(stopping, config.shutdown_delay)  # a second signal cuts it short
    stop.set()
    server.shutdown()
    server.server_close()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
