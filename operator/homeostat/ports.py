"""The small interfaces through which handlers act on the world.

Handlers depend on these protocols, never on a client library, so an adapter can be swapped
(or run against canned responses) without touching decision logic. One module per
implementation lives in ``homeostat.adapters``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

from homeostat.core import children as kids


@dataclasses.dataclass(frozen=True, repr=False)
class Credentials:
    """How to reach and authenticate to the API server; the token is never printed."""

    server: str
    ca_path: str | None = None
    certificate_path: str | None = None
    private_key_path: str | None = None
    token: str | None = None
    insecure: bool = False

    def __repr__(self) -> str:
        return f"Credentials(server={self.server!r})"


class Rejected(Exception):
    """The API server refused an object as invalid: retrying the same object cannot help."""


class Unavailable(Exception):
    """The API server could not be reached or failed; the same call may succeed later."""


class Workloads(Protocol):
    """Applies and removes the children of a service, and writes its status."""

    async def apply(self, manifest: Mapping[str, Any]) -> Mapping[str, Any]:
        """Server-side apply ``manifest``; return the object as stored."""
        ...

    async def delete(self, ref: kids.ChildRef) -> None: ...

    async def patch_status(self, owner: kids.Owner, status: Mapping[str, Any]) -> None: ...


# --- metrics ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sample:
    """One series of an instant query: its labels and value (NaN is kept, never dropped)."""

    labels: Mapping[str, str]
    value: float


@dataclasses.dataclass(frozen=True)
class Series:
    """One series of a range query: its labels and ``(unix seconds, value)`` points in time order."""

    labels: Mapping[str, str]
    points: tuple[tuple[float, float], ...]


class MetricsProvider(Protocol):
    """A metrics backend (Prometheus). Raises ``Unavailable`` when it cannot answer.

    An empty tuple means the backend answered with no data: callers treat that as
    inconclusive, never as a pass or as zero load.
    """

    async def instant(self, query: str) -> tuple[Sample, ...]: ...

    async def range(self, query: str, start: float, end: float, step: float) -> tuple[Series, ...]: ...


# --- notifications ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Notification:
    """Something a human should hear about. ``key`` is stable per occurrence, so a notifier
    can drop a repeat sent after an operator restart."""

    namespace: str
    service: str
    kind: str  # e.g. RolloutPromoted, RolloutRolledBack, PredictedExhaustion
    severity: str  # "info", "warning" or "critical"
    title: str
    message: str
    key: str


class Notifier(Protocol):
    """Delivers notifications (Slack, a webhook, or nothing). Raises ``Unavailable`` on failure."""

    async def notify(self, notification: Notification) -> None: ...
