"""Notifications to ``system.backups.notify_url``: one JSON POST for every failed backup or
restore and every backup that fails its check, delivered through the outbox like the panel's
reports (retried, kept across restarts).

The body is what Discord and Slack webhooks take as it is: ``content`` (Discord) and ``text``
(Slack) carry the same sentence, and the fields beside them (``event``, ``server``,
``backup``, ``store``, ``error``, ``time``, ``node``) are for anything else that reads it.
The URL often holds a webhook's token, so it is never logged and never written to the
outbox file: an item there only says it goes to the notify URL configured at delivery.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import aiohttp

from wingsbak.panel import PanelStatus

BACKUP_FAILED = "backup_failed"
RESTORE_FAILED = "restore_failed"
BACKUP_CORRUPT = "backup_corrupt"
# Discord refuses a ``content`` longer than this.
MAX_SENTENCE = 2000


class WebhookClient:
    """The outbox's client for notifications: one POST of the item's body to the URL."""

    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        self.url = url.strip()
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    @property
    def configured(self) -> bool:
        return bool(self.url)

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> None:
        """One attempt. :class:`PanelStatus` for an answer that is not a success (a redirect
        too: a webhook that moved is the operator's to update, not ours to follow)."""
        del path  # an item's path means nothing here: the whole URL is the operator's
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        async with self._session.request(
            method,
            self.url,
            json=body,
            headers={"User-Agent": "wingsbak", "Content-Type": "application/json"},
            allow_redirects=False,
        ) as resp:
            text = (await resp.read()).decode("utf-8", errors="replace")
            if resp.status >= 300:
                raise PanelStatus(resp.status, text[:300])

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def message(
    event: str,
    *,
    server: str,
    backup: str,
    store: str = "",
    error: str = "",
    node: str = "",
    when: float | None = None,
) -> dict[str, Any]:
    """The body of one notification."""
    stamp = datetime.fromtimestamp(time.time() if when is None else when, UTC)
    iso = stamp.isoformat(timespec="seconds").replace("+00:00", "Z")
    sentence = _sentence(event, server, backup, store, error, iso)
    return {
        "content": sentence,
        "text": sentence,
        # Discord: a name like "@everyone" in an error must not ping a channel.
        "allowed_mentions": {"parse": []},
        "event": event,
        "server": server,
        "backup": backup,
        "store": store,
        "error": error,
        "time": iso,
        "node": node,
    }


def _sentence(event: str, server: str, backup: str, store: str, error: str, iso: str) -> str:
    what = {
        BACKUP_FAILED: "backup failed",
        RESTORE_FAILED: "restore failed",
        BACKUP_CORRUPT: "backup failed its check",
    }.get(event, event)
    subject = f"backup {backup}" if backup else "a backup"
    if server:
        subject += f" of server {server}"
    if store:
        subject += f" ({store})"
    text = f"wingsbak: {what}: {subject} at {iso}"
    if error:
        text += f": {error}"
    # Slack reads <...> as a link or a mention; names in an error come from game servers.
    text = text.replace("<", "\u2039").replace(">", "\u203a")
    if len(text) > MAX_SENTENCE:
        text = text[: MAX_SENTENCE - 1] + "…"
    return text
