"""Reading and writing single fields of a spec or a stored status: one parser or formatter each.

Every parser of a resource (the service spec, rollout, autoscaling, policy, approval, predictive
maintenance) checks the same kinds of field, and each used to carry its own copy of the checks,
with signatures and messages that had drifted apart. Messages name the field by its JSON path
and users read them in conditions, so they come from here and read the same everywhere.

Spec fields raise ``SpecError``; the reconciler turns it into an ``InvalidSpec`` condition.

Stored state follows ONE rule (ADR 0005's level/one-shot split is why):

    A loader (``from_storage``/``from_dict``) reads an absent or empty status as the fresh
    state. A status that is present but cannot be read raises ``StorageError`` naming the
    stored field; the loader never substitutes a fresh or partial state for it. The caller
    holds: it takes no action that depends on that state, says why (a condition or a log
    line naming the field) and tries again at its normal cadence.

Why not start afresh: the stored state is the operator's memory of what it already did, and
forgetting it repeats the risky part. A rollout would go back to its first step and notify
again, a Denied approval would be Pending and approvable again, and autoscaling would lose its
stabilisation window and rate-limit events and scale in at once. Why raising does not crash:
``StorageError`` is a ``ValueError`` that every handler boundary already catches (the rollout
reports it as a condition, the autoscaling loop logs it and waits an interval), so a broken
status costs one line per interval rather than a hot loop of retries. A person fixes or clears
the status; clearing it is an explicit fresh start.

A stored *cache* of something the operator recomputes without acting (the fitted forecast
model, ``forecast.ModelState``) is not such a memory: its loader returns None and the model
is refitted, which repeats nothing.
"""

from __future__ import annotations

import datetime
import enum
import math
import re
from collections.abc import Mapping
from typing import Any, TypeVar

_E = TypeVar("_E", bound=enum.StrEnum)

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_RFC3339 = "%Y-%m-%dT%H:%M:%SZ"


class FieldError(ValueError):
    """Input refused at one field; ``field`` is the JSON path of the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class SpecError(FieldError):
    """A spec the operator cannot act on."""


class StorageError(ValueError):
    """Persisted state the operator cannot read: corrupted, or written by a newer version."""


# --- spec fields -------------------------------------------------------------------------------


def mapping(value: Any, field: str, *, optional: bool = False) -> Mapping[str, Any]:
    """An object; with ``optional``, an absent one (None) reads as empty."""
    if value is None and optional:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(field, "must be an object")
    return value


def integer(value: Any, field: str, low: int = 0, high: int | None = None) -> int:
    """An integer in ``low..high`` (no upper bound when ``high`` is None); a bool is not one."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(field, f"must be an integer, got {value!r}")
    if high is None and value < low:
        raise SpecError(field, f"must be at least {low}, got {value}")
    if high is not None and not low <= value <= high:
        raise SpecError(field, f"must be between {low} and {high}, got {value}")
    return value


def number(value: Any, field: str, low: float | None = None, high: float | None = None) -> float:
    """A finite number, optionally bounded; NaN and infinities are refused (JSON cannot say
    them, and a comparison with NaN is always false)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SpecError(field, f"must be a number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise SpecError(field, f"must be {bounds}, got {value}")
    return float(value)


def boolean(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(field, f"must be true or false, got {value!r}")
    return value


def text(value: Any, field: str) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise SpecError(field, "must be a non-empty string")
    return value


def parse_duration(value: str, field: str) -> float:
    """Seconds in a Go-style duration such as ``1h30m`` or ``500ms``."""
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(value) or not value:
        raise SpecError(field, f"{value!r} is not a duration like 30s, 5m or 1h30m")
    return total


def duration(
    value: Any, field: str, *, default: float | None = None, positive: bool = False, example: str = "like 30s"
) -> float:
    """A duration string in seconds; ``default`` when absent (None) and a default is given.
    ``example`` completes "must be a duration string ..." for a value that is not a string:
    each resource's messages have always shown an example of its own scale."""
    if value is None and default is not None:
        return default
    if not isinstance(value, str):
        raise SpecError(field, f"must be a duration string {example}, got {value!r}")
    seconds = parse_duration(value, field)
    if positive and seconds <= 0:
        raise SpecError(field, "must be a positive duration")
    return seconds


def duration_text(seconds: float) -> str:
    """A duration in the Go form the API uses (``1m30s``, ``2h``, ``0s``)."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    out = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{secs}s" if secs else "")
    return out or "0s"


def render_query(query: str, *, namespace: str, service: str) -> str:
    """The PromQL query with the ``{{namespace}}`` and ``{{service}}`` placeholders filled in.

    Both are DNS labels (the API server validates them), so they need no quoting in PromQL.
    """
    return query.replace("{{namespace}}", namespace).replace("{{service}}", service)


# --- times -------------------------------------------------------------------------------------


def rfc3339(seconds: float) -> str:
    """Unix seconds as the UTC timestamp Kubernetes writes (``2026-03-01T00:00:00Z``), to the
    second: what the API server stores in its own time fields."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime(_RFC3339)


def parse_rfc3339(value: Any, field: str) -> float:
    """An RFC 3339 timestamp as Unix seconds; one without an offset is taken as UTC."""
    if not isinstance(value, str):
        raise SpecError(field, f"must be an RFC 3339 time, got {value!r}")
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SpecError(field, f"must be an RFC 3339 time, got {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


# --- stored fields -----------------------------------------------------------------------------
# Status is JSON: infinities are spelled out, and numbers may come back as ints.


def encode_float(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def decode_float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str) and value in ("NaN", "Infinity", "-Infinity"):
        return float(value.replace("Infinity", "inf"))
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StorageError(f"{value!r} is not a number")
    return float(value)


def stored_int(raw: Mapping[str, Any], key: str, default: int = 0) -> int:
    value = raw.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or value < 0:
        raise StorageError(f"{key} must be a non-negative integer, got {value!r}")
    return int(value)


def stored_time(raw: Mapping[str, Any], key: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StorageError(f"{key} must be a number of seconds, got {value!r}")
    return float(value)


def stored_str(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise StorageError(f"{key} must be a string, got {value!r}")
    return value


def stored_rfc3339(raw: Mapping[str, Any], key: str) -> float | None:
    """A stored RFC 3339 time as Unix seconds, None when absent."""
    value = raw.get(key)
    if value is None:
        return None
    try:
        return parse_rfc3339(value, key)
    except SpecError as exc:
        raise StorageError(str(exc)) from None


def stored_mapping(value: Any, field: str) -> Mapping[str, Any]:
    """A stored object; None reads as empty, the fresh state's shape."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise StorageError(f"{field} must be an object")
    return value


def stored_enum(kind: type[_E], raw: Mapping[str, Any], key: str) -> _E | None:
    """A stored enum value, None when absent; an unknown one may be a newer version's."""
    value = stored_str(raw, key)
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        raise StorageError(f"{key}: unknown value {value!r}") from None


def stored_strings(raw: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = raw.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise StorageError(f"{key} must be a list of strings")
    return tuple(value)
