"""Choose the notifier and the approval messenger from configuration, with a no-op fallback.

Slack is optional: without credentials the operator still runs, notifications are dropped
(logged at debug) and approvals work through kubectl alone. Broken credentials (an unreadable
file, an empty token) are a one-line configuration error instead, so a typo in a Secret is not
mistaken for "Slack off".
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from homeostat import ports
from homeostat.adapters import slack

_log = logging.getLogger("homeostat.notifications")


class DroppingNotifier(ports.NopNotifier):
    """``ports.Notifier`` that drops everything (Slack is not configured), at debug level."""

    async def notify(self, notification: ports.Notification) -> None:
        _log.debug(
            "notification dropped (no notifier configured): %s %s", notification.kind, notification.title
        )


@dataclasses.dataclass(frozen=True)
class SlackConfig:
    api_url: str
    channel: str
    secrets_dir: str | None

    @classmethod
    def from_env(cls) -> SlackConfig:
        return cls(
            api_url=os.environ.get("HOMEOSTAT_SLACK_API_URL") or slack.DEFAULT_API_URL,
            channel=os.environ.get("HOMEOSTAT_SLACK_CHANNEL") or "",
            secrets_dir=os.environ.get("HOMEOSTAT_SECRETS_DIR") or None,
        )

    @property
    def configured(self) -> bool:
        """Slack is on when the secrets directory holds a bot token."""
        return self.secrets_dir is not None and (Path(self.secrets_dir) / slack.TOKEN_FILE).exists()


@dataclasses.dataclass(frozen=True)
class Chosen:
    notifier: ports.Notifier
    messenger: ports.ApprovalMessenger
    description: str


def from_config(config: SlackConfig) -> Chosen:
    """Slack when configured, else no-ops. Raises ``slack.ConfigError`` for broken credentials."""
    if not config.configured:
        return Chosen(
            DroppingNotifier(), ports.NoMessenger(), "Slack off (no bot-token in HOMEOSTAT_SECRETS_DIR)"
        )
    client = slack.load(config.secrets_dir, config.api_url, config.channel)
    return Chosen(client, client, f"Slack at {config.api_url}")
