"""``adapters.memory.release`` hands freed heap pages back: measured on a process of its own.

The child fills its heap with small allocations, frees all but the last (which pins the top of
the heap, so glibc cannot shrink it by itself), and reports its resident set before and after
the release. Without the call the freed memory stays resident, as after the operator's
start-up burst.
"""

from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from homeostat.adapters import memory

CHILD = """
import json, sys
from homeostat.adapters import memory

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

chunks = [bytearray(1000) for _ in range(150_000)]
pin = chunks[-1]
filled = rss_mb()
del chunks
freed = rss_mb()
released = memory.release()
print(json.dumps({"filled": filled, "freed": freed, "after": rss_mb(), "released": released}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_release_gives_freed_heap_pages_back() -> None:
    if memory._malloc_trim() is None:
        pytest.skip("this C library has no malloc_trim")
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, check=True
    )
    figures = json.loads(done.stdout)
    assert figures["released"] is True
    # The premise: freeing alone left the memory resident (about 150 MB of it).
    assert figures["freed"] > figures["filled"] - 50, figures
    assert figures["after"] < figures["freed"] - 100, figures


def test_the_c_library_is_looked_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # find_library runs `ldconfig -p` in a subprocess: once per process, not every 30 s.
    lookups: list[str] = []
    real = ctypes.util.find_library

    def counted(name: str) -> str | None:
        lookups.append(name)
        return real(name)

    monkeypatch.setattr(ctypes.util, "find_library", counted)
    getattr(memory._malloc_trim, "cache_clear", lambda: None)()
    for _ in range(3):
        memory.release()
    assert len(lookups) == 1
