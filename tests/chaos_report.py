"""The chaos suite's summary table: what each fault scenario did and how the operator came out of it.

Passing tests alone say little about a fault suite: a reader wants to see how many faults were
injected, how many trials converged and whether anything was done twice or crashed. Tests
record one row per run into the session's recorder (the ``chaos_report`` fixture, or
``chaos_report.record`` directly), rows of one scenario are added up, and the table is printed
at the end of the session. A test that requested the recorder and failed is listed under the
table, so a failure before its ``record`` call does not silently drop a row.

"crashes" counts operator processes that exited without the test killing them, plus tracebacks
in their logs (an unhandled exception the operator survived is still a defect to look at).
Registered as a pytest plugin from tests/conftest.py.
"""

from __future__ import annotations

import dataclasses
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

    def cells(self) -> tuple[str, ...]:
        return (
            self.scenario,
            str(self.trials),
            str(self.faults),
            str(self.converged),
            str(self.duplicates),
            str(self.crashes),
        )


def count_crashes(operators: Iterable[Operator]) -> int:
    """Exits the test did not cause, plus tracebacks in the operators' logs."""
    return sum(op.unexpected_exits() + op.logs().count(TRACEBACK) for op in operators)


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
        row.crashes += crashes + count_crashes(operators)

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
    for nodeid in _RECORDER.failed:
        terminalreporter.write_line(f"FAILED, its figures may be missing above: {nodeid}")
