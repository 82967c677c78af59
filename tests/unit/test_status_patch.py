"""A writer's status keys reach the server exactly as written, nested keys it dropped included.

``status.forecast.fallback`` once outlived the untrusted forecast it described: the autoscaler
wrote a new ``forecast`` without it, and the merge patch kept the old key beside the new
backtest figures, so `make demo` read "the operator does not trust it" next to a trusted one.
"""

from __future__ import annotations

import asyncio
import collections
import types
from typing import Any

from homeostat.handlers import replicatedservice as rs

BODY = {"metadata": {"name": "shop", "namespace": "demo", "uid": "u1"}, "status": {}}


class Recorder:
    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    async def patch_status(self, owner: object, status: dict[str, Any]) -> None:
        self.patches.append(status)


def _write(runtime: Any, changes: dict[str, Any]) -> None:
    asyncio.run(rs.write_status(runtime, BODY, changes))


def test_a_nested_key_the_writer_dropped_is_sent_as_null() -> None:
    recorder = Recorder()
    runtime = types.SimpleNamespace(
        locks=collections.defaultdict(asyncio.Lock), reported={}, workloads=recorder
    )
    untrusted = {"method": "HoltWinters", "smape": 9.7, "fallback": "ForecastUnreliable: sMAPE 9.7%"}
    _write(runtime, {"forecast": untrusted, "autoscaling": {"mode": "Reactive"}})
    _write(
        runtime, {"forecast": {"method": "HoltWinters", "smape": 4.5}, "autoscaling": {"mode": "Reactive"}}
    )
    assert recorder.patches[0] == {"forecast": untrusted, "autoscaling": {"mode": "Reactive"}}
    # Only what changed is sent; what the new forecast lacks is removed on the server.
    assert recorder.patches[1] == {"forecast": {"method": "HoltWinters", "smape": 4.5, "fallback": None}}
    assert runtime.reported["u1"]["forecast"] == {"method": "HoltWinters", "smape": 4.5}


def test_values_that_are_not_objects_are_replaced_whole() -> None:
    assert rs._replacing([1, 2], [3]) == [3]
    assert rs._replacing({"a": {"b": 1, "c": 2}}, {"a": {"b": 1}}) == {"a": {"b": 1, "c": None}}
    assert rs._replacing(None, {"a": 1}) == {"a": 1}
    assert rs._replacing({"a": 1}, None) is None
