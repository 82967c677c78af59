"""The forecast pool's size: min(2, CPUs) by default, --forecast-workers to change it."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from homeostat import cli
from homeostat.handlers import runtime as rt


@pytest.mark.parametrize(("flag", "expected"), [(None, min(2, os.cpu_count() or 1)), (1, 1), (3, 3)])
def test_pool_size(flag: int | None, expected: int) -> None:
    assert rt.ProcessPool(flag).workers == expected


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_cli_refuses_a_bad_worker_count(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["run", "--kubeconfig", "/nonexistent", "--forecast-workers", value])
    assert exited.value.code == 2
    assert "--forecast-workers" in capsys.readouterr().err


def test_two_workers_run_two_fits_at_once() -> None:
    """Two overlapping tasks get a worker each (a one-worker pool would keep one process)."""
    state = rt.ProcessPool(2)

    async def both() -> None:
        await asyncio.gather(state.compute(time.sleep, 0.5), state.compute(time.sleep, 0.5))

    try:
        asyncio.run(both())
        assert state.pool is not None and len(state.pool._processes) == 2
    finally:
        state.shutdown()


def test_workers_get_one_blas_thread_each() -> None:
    """Several workers each running OpenBLAS with a thread per core oversubscribe the CPUs."""
    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {name: os.environ.pop(name, None) for name in names}
    state = rt.ProcessPool(2)
    try:
        seen = asyncio.run(state.compute(os.getenv, "OPENBLAS_NUM_THREADS"))
        assert seen == "1"
    finally:
        state.shutdown()
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value
