"""Chooses the metrics backend from configuration.

Handlers only see ``ports.MetricsProvider | None``: None means no backend was configured, and
metric-driven features report "no metrics backend configured" instead of guessing. Keeping the
choice here lets a second backend be added without touching the CLI or the handlers.
"""

from __future__ import annotations

import urllib.parse

from homeostat import ports
from homeostat.adapters import prometheus


def from_url(url: str | None) -> ports.MetricsProvider | None:
    """A provider for ``url`` (an http(s) Prometheus base URL), or None when unset or blank.

    Raises ValueError with a one-line message for a URL that cannot be a Prometheus server, so
    a typo fails at startup rather than as "unavailable" on every reconcile.
    """
    if url is None or not url.strip():
        return None
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"the Prometheus URL must look like http://HOST:PORT, got {url!r}")
    if parsed.query or parsed.fragment:
        raise ValueError(f"the Prometheus URL must be a base URL without ?query or #fragment, got {url!r}")
    return prometheus.PrometheusMetrics(url.strip())
