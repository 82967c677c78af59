"""The chaos suite's summary table: what each fault scenario did and how the operator came out of it.

Passing tests alone say little about a fault suite: a reader wants to see how many faults were
injected, how many trials converged and whether anything was done twice or crashed. Tests
record one row per run into the session's recorder (the ``chaos_report`` fixture, or
``chaos_report.record`` directly), rows of one scenario are added up, and the table is printed
at the end of the session. A test that requested the recorder and failed is listed under the
table, so a failure before its ``record`` call does not silently drop a row.

"crashes" counts operator processes that exited without the test killing them, plus tracebacks
in their logs (an unhandled exception the operator survived is still a defect to look at),
except those ending in ``homeostat.ports.Unavailable``: that is the operator saying the fault
the test injected (API server or Prometheus away) is there, and it survives it by design.
Those are counted apart and printed under the table, since a traceback for an expected outage
is noise worth removing. Registered as a pytest plugin from tests/conftest.py.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any, Protocol

import pytest

COLUMNS = ("scenario", "trials", "faults injected", "converged", "duplicates", "crashes")
# The order rows are printed in; scenarios not listed follow in the order they were recorded.
ORDER = (
    "rollout SIGKILL",
    "scaling SIGKILL",
    "remediation SIGKILL",
    "Slack outage",
    "Slack rate limit",
    "API server restart",
    "partition",
    "Prometheus stop",
    "fuzz",
)
TRACEBACK = "Traceback (most recent call last)"
EXPECTED = "homeostat.ports.Unavailable"
# A log record starts with its timestamp (the operator's plain format): "[2026-11-23 21:39:04,011]".
RECORD = re.compile(r"^\[\d{4}-", re.MULTILINE)


class Operator(Protocol):
    """What the recorder needs of ``conftest.OperatorProcess``."""

    def logs(self) -> str: ...

    def unexpected_exits(self) -> int: ...


@dataclasses.dataclass
class Row:
    scenario: str
    trials: int = 0
    faults: int = 0
    converged: int = 0
    duplicates: int = 0
    crashes: int = 0
    expected_tracebacks: int = 0  # not a column: printed under the table

    def cells(self) -> tuple[str, ...]:
        return (
            self.scenario,
            str(self.trials),
            str(self.faults),
            str(self.converged),
            str(self.duplicates),
            str(self.crashes),
        )


def tracebacks(log: str) -> tuple[list[str], int]:
    """The final exception line of each unexpected traceback in ``log``, and how many expected
    ones (``homeostat.ports.Unavailable``) there were."""
    unexpected, expected = [], 0
    for record in RECORD.split(log):
        if TRACEBACK not in record:
            continue
        lines = [line for line in record.splitlines() if line.strip()]
        last = lines[-1] if lines else ""
        if last.startswith(EXPECTED):
            expected += 1
        else:
            unexpected.append(last)
    return unexpected, expected


def count_crashes(operators: Iterable[Operator]) -> int:
    """Exits the test did not cause, plus unexpected tracebacks in the operators' logs."""
    return sum(op.unexpected_exits() + len(tracebacks(op.logs())[0]) for op in operators)


class Recorder:
    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.failed: list[str] = []

    def record(
        self,
        scenario: str,
        *,
        trials: int,
        faults: int,
        converged: int,
        duplicates: int = 0,
        crashes: int = 0,
        operators: Iterable[Operator] = (),
    ) -> None:
        """Add one run's figures to ``scenario``'s row; ``operators`` adds their crashes."""
        row = self.rows.setdefault(scenario, Row(scenario))
        row.trials += trials
        row.faults += faults
        row.converged += converged
        row.duplicates += duplicates
        operators = list(operators)
        row.crashes += crashes + count_crashes(operators)
        row.expected_tracebacks += sum(tracebacks(op.logs())[1] for op in operators)

    def table(self) -> str:
        rank = {name: i for i, name in enumerate(ORDER)}
        rows = sorted(self.rows.values(), key=lambda r: rank.get(r.scenario, len(ORDER)))
        cells = [COLUMNS, *(r.cells() for r in rows)]
        if len(rows) > 1:
            total = Row(
                "total",
                *(sum(getattr(r, f) for r in rows) for f in ("trials", "faults", "converged", "duplicates")),
                sum(r.crashes for r in rows),
            )
            cells.append(total.cells())
        widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]

        def line(values: tuple[str, ...]) -> str:
            first, *rest = values
            return (
                "| "
                + " | ".join(
                    [first.ljust(widths[0]), *(v.rjust(w) for v, w in zip(rest, widths[1:], strict=True))]
                )
                + " |"
            )

        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        return "\n".join([line(cells[0]), rule, *(line(c) for c in cells[1:])])


_RECORDER = Recorder()


def record(scenario: str, **figures: Any) -> None:
    """Module-level shortcut for tests that do not take the fixture."""
    _RECORDER.record(scenario, **figures)


@pytest.fixture(scope="session")
def chaos_report() -> Recorder:
    return _RECORDER


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" and report.failed and "chaos_report" in getattr(item, "fixturenames", ()):
        _RECORDER.failed.append(item.nodeid)
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _RECORDER.rows and not _RECORDER.failed:
        return
    terminalreporter.section("chaos and fault summary")
    if _RECORDER.rows:
        terminalreporter.write_line(_RECORDER.table())
    noisy = [
        f"{r.scenario} {r.expected_tracebacks}" for r in _RECORDER.rows.values() if r.expected_tracebacks
    ]
    if noisy:
        terminalreporter.write_line(
            f"tracebacks for an expected outage ({EXPECTED}, survived, not counted as crashes): "
            + ", ".join(noisy)
        )
    for nodeid in _RECORDER.failed:
        terminalreporter.write_line(f"FAILED, its figures may be missing above: {nodeid}")
