"""The field parsers and formatters every resource's parser shares (``core/fields.py``).

Their messages reach users through conditions, and tests elsewhere pin the messages of whole
specs; these tables pin each parser's accepted values, refusals and wording on its own.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from homeostat.core import fields


def _refusal(parse: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(fields.SpecError) as caught:
        parse(*args, **kwargs)
    assert caught.value.field == "f"
    return caught.value.message


# --- mapping -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "optional", "expected"),
    [({"a": 1}, False, {"a": 1}), ({}, False, {}), (None, True, {}), ({"a": 1}, True, {"a": 1})],
)
def test_mapping_accepts(value: Any, optional: bool, expected: dict[str, Any]) -> None:
    assert fields.mapping(value, "f", optional=optional) == expected


@pytest.mark.parametrize(("value", "optional"), [(None, False), ([], False), ("x", True), (1, True)])
def test_mapping_refuses(value: Any, optional: bool) -> None:
    assert _refusal(fields.mapping, value, "f", optional=optional) == "must be an object"


# --- integer -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "low", "high", "message"),
    [
        (True, 0, None, "must be an integer, got True"),
        (1.0, 0, None, "must be an integer, got 1.0"),
        ("3", 0, None, "must be an integer, got '3'"),
        (-1, 0, None, "must be at least 0, got -1"),
        (0, 1, None, "must be at least 1, got 0"),
        (0, 1, 100, "must be between 1 and 100, got 0"),
        (101, 1, 100, "must be between 1 and 100, got 101"),
    ],
)
def test_integer_refuses(value: Any, low: int, high: int | None, message: str) -> None:
    assert _refusal(fields.integer, value, "f", low, high) == message


@pytest.mark.parametrize(("value", "low", "high"), [(0, 0, None), (7, 1, None), (1, 1, 100), (100, 1, 100)])
def test_integer_accepts_its_bounds(value: int, low: int, high: int | None) -> None:
    assert fields.integer(value, "f", low, high) == value


# --- number ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "low", "high", "message"),
    [
        (False, None, None, "must be a number, got False"),
        ("1", None, None, "must be a number, got '1'"),
        (math.nan, None, None, "must be a number, got nan"),
        (math.inf, None, None, "must be a number, got inf"),
        (-0.5, 0.0, None, "must be at least 0.0, got -0.5"),
        (1.5, 0.0, 1.0, "must be between 0.0 and 1.0, got 1.5"),
    ],
)
def test_number_refuses(value: Any, low: float | None, high: float | None, message: str) -> None:
    assert _refusal(fields.number, value, "f", low, high) == message


@pytest.mark.parametrize(("value", "expected"), [(1, 1.0), (0.25, 0.25), (-3, -3.0)])
def test_number_is_a_float(value: Any, expected: float) -> None:
    result = fields.number(value, "f")
    assert result == expected and isinstance(result, float)


# --- booleans and text -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parse", "value", "message"),
    [
        (fields.boolean, "true", "must be true or false, got 'true'"),
        (fields.boolean, 1, "must be true or false, got 1"),
        (fields.text, "", "must be a non-empty string"),
        (fields.text, None, "must be a non-empty string"),
        (fields.text, 3, "must be a non-empty string"),
    ],
)
def test_boolean_and_text_refuse(parse: Any, value: Any, message: str) -> None:
    assert _refusal(parse, value, "f") == message


# --- durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("500ms", 0.5), ("1.5h", 5400), ("0s", 0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert fields.parse_duration(text, "f") == seconds


@pytest.mark.parametrize("text", ["", "5", "m5", "5d", "-5s", "5s "])
def test_parse_duration_refuses(text: str) -> None:
    assert _refusal(fields.parse_duration, text, "f") == f"{text!r} is not a duration like 30s, 5m or 1h30m"


@pytest.mark.parametrize(
    ("value", "kwargs", "expected"),
    [
        ("2m", {}, 120.0),
        ("0s", {}, 0.0),
        (None, {"default": 60.0}, 60.0),
        (None, {"default": 0.0}, 0.0),  # a zero default is still a default
        ("1h", {"default": 60.0, "positive": True}, 3600.0),
    ],
)
def test_duration_accepts(value: Any, kwargs: dict[str, Any], expected: float) -> None:
    assert fields.duration(value, "f", **kwargs) == expected


@pytest.mark.parametrize(
    ("value", "kwargs", "message"),
    [
        (None, {}, "must be a duration string like 30s, got None"),
        (30, {}, "must be a duration string like 30s, got 30"),
        (30, {"example": "like 30m"}, "must be a duration string like 30m, got 30"),
        (30, {"example": "such as 5m"}, "must be a duration string such as 5m, got 30"),
        ("0s", {"positive": True}, "must be a positive duration"),
        ("5d", {"default": 1.0}, "'5d' is not a duration like 30s, 5m or 1h30m"),
    ],
)
def test_duration_refuses(value: Any, kwargs: dict[str, Any], message: str) -> None:
    assert _refusal(fields.duration, value, "f", **kwargs) == message


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.0, "0s"), (90.0, "1m30s"), (7200.0, "2h"), (3661.4, "1h1m1s")]
)
def test_duration_text_uses_the_go_form(seconds: float, text: str) -> None:
    assert fields.duration_text(seconds) == text


# --- the query template ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "rendered"),
    [
        (
            'sum(rate(x{namespace="{{namespace}}", service="{{service}}"}[1m]))',
            'sum(rate(x{namespace="ns", service="web"}[1m]))',
        ),
        ("up", "up"),
        ("{{service}}/{{service}}", "web/web"),
    ],
)
def test_render_query_fills_the_placeholders(query: str, rendered: str) -> None:
    assert fields.render_query(query, namespace="ns", service="web") == rendered


# --- RFC 3339 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0, "1970-01-01T00:00:00Z"), (60.9, "1970-01-01T00:01:00Z"), (1772323200.0, "2026-03-01T00:00:00Z")],
)
def test_rfc3339_round_trips_to_the_second(seconds: float, text: str) -> None:
    assert fields.rfc3339(seconds) == text
    assert fields.parse_rfc3339(text, "f") == math.floor(seconds)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1970-01-01T00:01:40Z", 100.0),
        ("1970-01-01T00:01:40+00:00", 100.0),
        ("1970-01-01T01:01:40+01:00", 100.0),
        ("1970-01-01T00:01:40", 100.0),  # no offset: UTC, as the API server means it
        ("1970-01-01T00:01:40.5Z", 100.5),
    ],
)
def test_parse_rfc3339(text: str, seconds: float) -> None:
    assert fields.parse_rfc3339(text, "f") == seconds


@pytest.mark.parametrize("value", [None, 100, "yesterday", "1970-13-01T00:00:00Z"])
def test_parse_rfc3339_refuses(value: Any) -> None:
    assert _refusal(fields.parse_rfc3339, value, "f") == f"must be an RFC 3339 time, got {value!r}"


# --- stored fields -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"), [(None, None), (1.5, 1.5), (math.inf, "Infinity"), (-math.inf, "-Infinity")]
)
def test_floats_round_trip_through_json(value: float | None, encoded: Any) -> None:
    assert fields.encode_float(value) == encoded
    assert fields.decode_float(encoded) == value


def test_nan_round_trips_through_json() -> None:
    decoded = fields.decode_float(fields.encode_float(math.nan))
    assert decoded is not None and math.isnan(decoded)


@pytest.mark.parametrize(
    ("read", "raw", "expected"),
    [
        (fields.stored_int, {}, 0),
        (fields.stored_int, {"k": None}, 0),
        (fields.stored_int, {"k": 3.0}, 3),
        (fields.stored_time, {}, None),
        (fields.stored_time, {"k": 12}, 12.0),
        (fields.stored_str, {"k": "x"}, "x"),
        (fields.stored_str, {}, None),
        (fields.stored_rfc3339, {"k": "1970-01-01T00:01:40Z"}, 100.0),
        (fields.stored_rfc3339, {}, None),
    ],
)
def test_stored_fields_read(read: Any, raw: dict[str, Any], expected: Any) -> None:
    assert read(raw, "k") == expected


@pytest.mark.parametrize(
    ("read", "raw", "message"),
    [
        (fields.stored_int, {"k": -1}, "k must be a non-negative integer, got -1"),
        (fields.stored_int, {"k": 1.5}, "k must be a non-negative integer, got 1.5"),
        (fields.stored_int, {"k": True}, "k must be a non-negative integer, got True"),
        (fields.stored_time, {"k": "soon"}, "k must be a number of seconds, got 'soon'"),
        (fields.stored_time, {"k": math.nan}, "k must be a number of seconds, got nan"),
        (fields.stored_str, {"k": 1}, "k must be a string, got 1"),
        (fields.stored_rfc3339, {"k": "soon"}, "k: must be an RFC 3339 time, got 'soon'"),
        (fields.stored_mapping, {"k": [1]}, "k must be an object"),
    ],
)
def test_stored_fields_refuse_with_the_field(read: Any, raw: dict[str, Any], message: str) -> None:
    value = raw if read is not fields.stored_mapping else raw["k"]
    with pytest.raises(fields.StorageError) as caught:
        read(value, "k")
    assert str(caught.value) == message


def test_stored_mapping_reads_absent_as_empty() -> None:
    assert fields.stored_mapping(None, "k") == {}
    assert fields.stored_mapping({"a": 1}, "k") == {"a": 1}


def test_both_errors_are_value_errors() -> None:
    # Every handler boundary catches ValueError; that is what keeps a bad field from crashing.
    assert issubclass(fields.SpecError, ValueError) and issubclass(fields.StorageError, ValueError)
