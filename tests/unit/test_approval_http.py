"""Small pure pieces around the approval endpoints: the per-source rate limit and the plugin's
listing, table-driven. The endpoints themselves are tested end to end (tests/e2e/test_approvals.py)."""

from __future__ import annotations

import io

import pytest

from homeostat import plugin
from homeostat.core import approval as ap
from homeostat.handlers import interactions


def test_rate_limit_window_per_source() -> None:
    limiter = interactions.RateLimiter(limit=3, window=10.0)
    assert [limiter.allow("a", t) for t in (0, 1, 2, 3)] == [True, True, True, False]
    assert limiter.allow("b", 3)  # another source has its own budget
    assert not limiter.allow("a", 9.9)
    assert limiter.allow("a", 10.5)  # the first request left the window


@pytest.mark.parametrize(
    ("seconds", "text"), [(-1, "expired"), (0, "expired"), (30, "in 30s"), (600, "in 10m"), (10800, "in 3h")]
)
def test_relative_expiry(seconds: float, text: str) -> None:
    assert plugin._relative(seconds) == text


def test_listing_row_reads_state_and_expiry() -> None:
    now = 1_800_000_000.0
    request = ap.ApprovalRequest(
        action="DrainNode",
        target=ap.Target("Node", "", "n1"),
        cause="c",
        service="web",
        requester="homeostat",
        risk=ap.Risk.CRITICAL,
        quorum=2,
        approvers=ap.Approvers(slack=frozenset({"U1", "U2"})),
        expires_at=now + 600,
    )
    one = ap.decide(request, ap.State(), ap.Identity(ap.Channel.SLACK, "U1"), ap.Vote.APPROVE, now).state
    item = {
        "metadata": {"name": "x", "namespace": "ns"},
        "spec": request.as_spec(),
        "status": one.as_in_storage(),
    }
    assert plugin._row(item, now, False)[:8] == [
        "x",
        "Pending",
        "DrainNode",
        "Node/n1",
        "web",
        "critical",
        "1/2",
        "in 10m",
    ]
    # Past its expiry a pending request already reads as Expired, before the operator records it.
    assert plugin._row(item, now + 601, True)[:3] == ["ns", "x", "Expired"]


def test_table_alignment() -> None:
    out = io.StringIO()
    plugin._table([["NAME", "PHASE"], ["a-long-name", "Pending"]], out)
    assert out.getvalue().splitlines() == ["NAME          PHASE", "a-long-name   Pending"]
