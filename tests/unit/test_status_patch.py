"""A writer's status keys reach the server exactly as written, nested keys it dropped included.

``status.forecast.fallback`` once outlived the untrusted forecast it described: the autoscaler
wrote a new ``forecast`` without it, and the merge patch kept the old key beside the new
backtest figures, so `make demo` read "the operator does not trust it" next to a trusted one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from homeostat.handlers import runtime as rt

BODY = {"metadata": {"name": "shop", "namespace": "demo", "uid": "u1"}, "status": {}}


class Recorder:
    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    async def patch_status(self, owner: object, status: dict[str, Any]) -> None:
        self.patches.append(status)


def _write(runtime: Any, changes: dict[str, Any]) -> None:
    asyncio.run(runtime.write_status(BODY, changes))


def test_a_nested_key_the_writer_dropped_is_sent_as_null() -> None:
    recorder = Recorder()
    runtime = rt.Runtime(workloads=recorder, credentials=None)  # type: ignore[arg-type]
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
    assert rt.replacing([1, 2], [3]) == [3]
    assert rt.replacing({"a": {"b": 1, "c": 2}}, {"a": {"b": 1}}) == {"a": {"b": 1, "c": None}}
    assert rt.replacing(None, {"a": 1}) == {"a": 1}
    assert rt.replacing({"a": 1}, None) is None
