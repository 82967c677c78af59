"""The chaos summary's own arithmetic: a wrong crash count would make the whole table a lie."""

from __future__ import annotations

import dataclasses

import pytest

import chaos_report as report

UNAVAILABLE = """[2026-11-23 21:39:04,018] kopf.objects [ERROR   ] Handler failed
Traceback (most recent call last):
  File "x.py", line 1, in f
homeostat.ports.Unavailable: connection refused
"""
KEYERROR = """[2026-11-23 21:40:00,000] homeostat [ERROR   ] evaluating a/b
Traceback (most recent call last):
  File "y.py", line 2, in g
KeyError: 'spec'
"""
CHAINED = """[2026-11-23 21:41:00,000] homeostat [ERROR   ] loop
Traceback (most recent call last):
  File "z.py", line 3, in h
homeostat.ports.Unavailable: down

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "z.py", line 4, in h
NameError: name '_WORKERS' is not defined
"""
PLAIN = "[2026-11-23 21:42:00,000] homeostat [INFO    ] created Deployment/web\n"


@dataclasses.dataclass
class FakeOperator:
    log: str
    exits: int = 0

    def logs(self) -> str:
        return self.log

    def unexpected_exits(self) -> int:
        return self.exits


@pytest.mark.parametrize(
    ("log", "unexpected", "expected"),
    [
        (PLAIN, [], 0),
        (PLAIN + UNAVAILABLE + PLAIN, [], 1),
        (UNAVAILABLE + KEYERROR, ["KeyError: 'spec'"], 1),
        # The last exception of a chain decides: here a defect raised while handling an outage.
        (CHAINED, ["NameError: name '_WORKERS' is not defined"], 0),
    ],
)
def test_tracebacks_split_expected_outages_from_defects(
    log: str, unexpected: list[str], expected: int
) -> None:
    assert report.tracebacks(log) == (unexpected, expected)


def test_rows_add_up_and_crashes_count_exits_and_defects() -> None:
    recorder = report.Recorder()
    recorder.record("fuzz", trials=100, faults=100, converged=100)
    recorder.record("rollout SIGKILL", trials=2, faults=3, converged=2, duplicates=1)
    recorder.record(
        "rollout SIGKILL",
        trials=1,
        faults=1,
        converged=0,
        operators=[FakeOperator(KEYERROR + UNAVAILABLE, exits=1)],
    )
    rollout = recorder.rows["rollout SIGKILL"]
    assert (rollout.trials, rollout.faults, rollout.converged, rollout.duplicates, rollout.crashes) == (
        3,
        4,
        2,
        1,
        2,
    )
    assert rollout.expected_tracebacks == 1
    lines = recorder.table().splitlines()
    # Header, rule, rows in the fixed scenario order (not recording order), then the total.
    assert lines[0].split("|")[1].strip() == "scenario" and set(lines[1]) == {"|", "-"}
    assert lines[2].split("|")[1].strip() == "rollout SIGKILL"
    assert lines[3].split("|")[1].strip() == "fuzz"
    assert [c.strip() for c in lines[4].split("|")[1:-1]] == ["total", "103", "104", "102", "1", "2"]
    assert len({len(line) for line in lines}) == 1  # aligned columns
