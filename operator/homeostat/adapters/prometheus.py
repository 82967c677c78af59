"""``ports.MetricsProvider`` over Prometheus' HTTP API, safe to call from kopf's event loop.

Rollout analysis, autoscaling and healing all ask Prometheus on every reconcile. A Prometheus
that is down or slow must not stall those handlers nor pile up worker threads, and a wrong
answer must never look like a right one. So each call is bounded by a timeout, a circuit
breaker fails fast while Prometheus keeps failing, and anything that is not a well-formed
answer becomes ``ports.Unavailable`` with a message saying what was wrong. NaN stays NaN (a
ratio of two zero rates is "no traffic", not "no errors"), and an empty answer is an empty
tuple, which callers treat as inconclusive.

``prometheus_api_client`` is synchronous, so every request runs in a worker thread.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import datetime
import enum
import json
import logging
import math
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import prometheus_api_client
import prometheus_api_client.exceptions
import requests
import urllib3

from homeostat import ports

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
DEFAULT_FAILURE_THRESHOLD = 3
DEFAULT_COOLDOWN = 30.0


class BreakerState(enum.StrEnum):
    CLOSED = "closed"  # calls go through
    OPEN = "open"  # calls fail fast until the cooldown ends
    HALF_OPEN = "half-open"  # one probe call is in flight; others fail fast


@dataclasses.dataclass
class CircuitBreaker:
    """Counts consecutive backend failures; after ``threshold`` of them, refuses calls for
    ``cooldown`` seconds, then lets a single probe through to decide whether to close again.

    Thread-safe because outcomes are recorded from worker threads' callers on the event loop
    and from tests alike; the clock is injectable so the cooldown needs no sleeping in tests.
    """

    threshold: int = DEFAULT_FAILURE_THRESHOLD
    cooldown: float = DEFAULT_COOLDOWN
    clock: Callable[[], float] = time.monotonic
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    last_error: str = ""
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def admit(self) -> None:
        """Raise ``Unavailable`` if the call must not go to the backend now."""
        with self._lock:
            if self.state is BreakerState.CLOSED:
                return
            remaining = self.opened_at + self.cooldown - self.clock()
            if self.state is BreakerState.OPEN and remaining <= 0:
                self.state = BreakerState.HALF_OPEN
                return  # this caller is the probe
            wait = f"retrying in {max(remaining, 0):.0f}s" if remaining > 0 else "a probe is in flight"
            raise ports.Unavailable(
                f"Prometheus circuit open after {self.failures} consecutive failures ({wait}); "
                f"last error: {self.last_error}"
            )

    def succeeded(self) -> None:
        with self._lock:
            if self.state is not BreakerState.CLOSED:
                logger.info("Prometheus answers again; circuit closed")
            self.state = BreakerState.CLOSED
            self.failures = 0

    def failed(self, error: str) -> None:
        with self._lock:
            self.failures += 1
            self.last_error = error
            if self.state is BreakerState.HALF_OPEN or (
                self.state is BreakerState.CLOSED and self.failures >= self.threshold
            ):
                if self.state is BreakerState.CLOSED:
                    logger.warning(
                        "Prometheus failed %d times in a row; failing fast for %.0fs: %s",
                        self.failures,
                        self.cooldown,
                        error,
                    )
                self.state = BreakerState.OPEN
                self.opened_at = self.clock()

    def released(self) -> None:
        """The call ended without saying anything about the backend (e.g. a bad query):
        a half-open probe that did that lets the next caller probe instead."""
        with self._lock:
            if self.state is BreakerState.HALF_OPEN:
                self.state = BreakerState.OPEN
                self.opened_at = self.clock() - self.cooldown


class _BackendError(Exception):
    """Prometheus (or the network to it) failed: counts towards opening the breaker."""


class _QueryError(Exception):
    """Prometheus is fine but refused this query (HTTP 400/422): retrying cannot help, and
    it says nothing about Prometheus' health."""


class PrometheusMetrics:
    """``ports.MetricsProvider`` for one Prometheus server."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        breaker: CircuitBreaker | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._shown = _without_userinfo(self.url)  # what logs and messages may show
        self.timeout = timeout
        self.breaker = breaker or CircuitBreaker()
        # No client-side retries: the caller reconciles again soon anyway, and retries with
        # back-off would hold a worker thread for seconds while Prometheus is down.
        self._client = prometheus_api_client.PrometheusConnect(
            url=self.url,
            headers=dict(headers) if headers else None,
            retry=urllib3.util.retry.Retry(total=0, raise_on_status=False),
            timeout=timeout,
        )

    def __repr__(self) -> str:
        return f"PrometheusMetrics(url={self._shown!r})"

    async def instant(self, query: str) -> tuple[ports.Sample, ...]:
        result = await self._call(query, self._query_instant, query)
        return _parse_instant(result)

    async def range(self, query: str, start: float, end: float, step: float) -> tuple[ports.Series, ...]:
        if not (step > 0 and math.isfinite(step)):
            raise ports.Unavailable(f"range query step must be a positive number of seconds, got {step!r}")
        if end < start:
            raise ports.Unavailable(f"range query ends ({end}) before it starts ({start})")
        result = await self._call(query, self._query_range, query, start, end, step)
        return _parse_range(result)

    def close(self) -> None:
        self._client.close()

    # --- the blocking part, run in a worker thread ---------------------------------------------

    def _params(self) -> dict[str, str]:
        # Ask Prometheus to give up too, so an expensive query stops costing it CPU.
        return {"timeout": f"{self.timeout:g}s"}

    def _query_instant(self, query: str) -> Any:
        return self._client.custom_query(query, params=self._params(), timeout=self.timeout)

    def _query_range(self, query: str, start: float, end: float, step: float) -> Any:
        return self._client.custom_query_range(
            query,
            start_time=datetime.datetime.fromtimestamp(start, datetime.UTC),
            end_time=datetime.datetime.fromtimestamp(end, datetime.UTC),
            step=f"{step:g}",
            params=self._params(),
            timeout=self.timeout,
        )

    def _guarded(self, call: Callable[..., Any], *args: Any) -> Any:
        try:
            return call(*args)
        except prometheus_api_client.exceptions.PrometheusApiClientException as exc:
            status, detail = _http_failure(str(exc))
            if status in (400, 422):
                raise _QueryError(detail) from None
            raise _BackendError(f"HTTP {status}: {detail}" if status else detail) from None
        except ValueError as exc:  # the body was not JSON (requests' JSONDecodeError)
            raise _BackendError(f"the answer is not JSON: {_first_line(exc)}") from None
        except requests.Timeout:
            raise _BackendError(f"no answer within {self.timeout:g}s") from None
        except requests.ConnectionError as exc:
            reason = _connection_reason(exc)
            # Without client retries urllib3 reports a read timeout as a connection error.
            raise _BackendError(
                f"no answer within {self.timeout:g}s" if reason == "timed out" else reason
            ) from None
        except requests.RequestException as exc:
            raise _BackendError(f"{type(exc).__name__}: {_first_line(exc)}") from None
        except (KeyError, TypeError) as exc:
            raise _BackendError(f"the answer has no data.result ({type(exc).__name__}: {exc})") from None

    async def _call(self, query: str, call: Callable[..., Any], *args: Any) -> Any:
        self.breaker.admit()
        try:
            # wait_for bounds the whole call (connect + every read), which requests' timeout
            # alone does not; the thread finishes on its own shortly after.
            result = await asyncio.wait_for(
                asyncio.to_thread(self._guarded, call, *args), timeout=self.timeout + 1.0
            )
            _check_shape(result)
        except _QueryError as exc:
            self.breaker.released()
            raise ports.Unavailable(
                f"Prometheus at {self._shown} refused the query {query!r}: {exc}"
            ) from None
        except (_BackendError, _Malformed) as exc:
            self.breaker.failed(str(exc))
            raise ports.Unavailable(f"Prometheus at {self._shown}: {exc}") from None
        except TimeoutError:
            self.breaker.failed(f"no answer within {self.timeout:g}s")
            raise ports.Unavailable(
                f"Prometheus at {self._shown}: no answer within {self.timeout:g}s"
            ) from None
        except BaseException:
            self.breaker.released()
            raise
        self.breaker.succeeded()
        return result


class _Malformed(Exception):
    """The answer parsed as JSON but is not what the Prometheus API documents."""


def _check_shape(result: Any) -> None:
    """Validate before declaring success, so a half-broken proxy counts as a failure."""
    if not isinstance(result, list):
        raise _Malformed(f"malformed answer: data.result is {type(result).__name__}, not a list")
    if _is_scalar(result):
        return
    for index, item in enumerate(result):
        if not isinstance(item, dict):
            raise _Malformed(f"malformed answer: result[{index}] is {type(item).__name__}, not an object")
        metric = item.get("metric")
        if not isinstance(metric, dict):
            raise _Malformed(f"malformed answer: result[{index}] has no metric labels")
        if "value" in item:
            _point(item["value"], f"result[{index}].value")
        elif "values" in item and isinstance(item["values"], list):
            for j, point in enumerate(item["values"]):
                _point(point, f"result[{index}].values[{j}]")
        else:
            raise _Malformed(f"malformed answer: result[{index}] has neither value nor values")


def _is_scalar(result: list[Any]) -> bool:
    # A scalar or string result is a bare [time, "value"] pair instead of a list of series.
    return len(result) == 2 and isinstance(result[0], int | float) and isinstance(result[1], str)


def _point(raw: Any, where: str) -> tuple[float, float]:
    if not (isinstance(raw, list | tuple) and len(raw) == 2):
        raise _Malformed(f"malformed answer: {where} is not a [time, value] pair")
    try:
        return float(raw[0]), float(raw[1])  # float() reads "NaN", "+Inf" and "-Inf"
    except (TypeError, ValueError):
        raise _Malformed(f"malformed answer: {where} = {raw!r} is not a number") from None


def _labels(item: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in item["metric"].items()}


def _parse_instant(result: Sequence[Any]) -> tuple[ports.Sample, ...]:
    if _is_scalar(list(result)):
        return (ports.Sample(labels={}, value=_point(list(result), "result")[1]),)
    samples = []
    for index, item in enumerate(result):
        if "value" not in item:
            raise ports.Unavailable(
                f"Prometheus answered an instant query with a range (result[{index}] has no value)"
            )
        samples.append(ports.Sample(labels=_labels(item), value=_point(item["value"], "value")[1]))
    return tuple(samples)


def _parse_range(result: Sequence[Any]) -> tuple[ports.Series, ...]:
    if _is_scalar(list(result)):
        raise ports.Unavailable("Prometheus answered a range query with a scalar")
    series = []
    for index, item in enumerate(result):
        if "values" not in item:
            raise ports.Unavailable(
                f"Prometheus answered a range query with an instant vector (result[{index}] has no values)"
            )
        points = tuple(sorted(_point(p, "values") for p in item["values"]))
        series.append(ports.Series(labels=_labels(item), points=points))
    return tuple(series)


def _http_failure(message: str) -> tuple[int | None, str]:
    """Status and Prometheus' own error text from the client's "HTTP Status Code N (b'...')"."""
    match = _HTTP_FAILURE.match(message)
    if not match:
        return None, _first_line(message)[:300]
    status, body = int(match.group(1)), match.group(2)
    try:
        raw = ast.literal_eval(body)
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    except (ValueError, SyntaxError):
        text = body
    try:
        decoded = json.loads(text)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict) and decoded.get("error"):
        return status, f"{decoded.get('errorType', 'error')}: {decoded['error']}"
    return status, _first_line(text)[:300] or "(empty body)"


_HTTP_FAILURE = re.compile(r"HTTP Status Code (\d+) \((.*)\)\Z", re.DOTALL)


def _without_userinfo(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _connection_reason(exc: BaseException) -> str:
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    if "Name or service not known" in text or "Temporary failure in name resolution" in text:
        return "host name not resolved"
    if "timed out" in text.lower():
        return "timed out"
    if "RemoteDisconnected" in text or "Connection aborted" in text:
        return "connection closed without an answer"
    return _first_line(text)[:300]


def _first_line(exc: object) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
