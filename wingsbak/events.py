"""Per-server publish/subscribe feeding the websocket.

Each subscriber has a bounded queue; when a slow client's queue is full the oldest message is
dropped, so a slow client never slows a backup or the other clients.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

BACKUP_COMPLETED = "backup completed"
BACKUP_RESTORE_COMPLETED = "backup restore completed"
BACKUP_PROGRESS = "backup progress"


@dataclass(slots=True, frozen=True)
class Event:
    name: str
    args: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps({"event": self.name, "args": list(self.args)})


class EventBus:
    def __init__(self, queue_size: int = 64) -> None:
        self.queue_size = queue_size
        self._subscribers: dict[str, set[asyncio.Queue[Event]]] = defaultdict(set)
        self.dropped = 0

    def subscribe(self, server_uuid: str) -> asyncio.Queue[Event]:
        q: asyncio.Queue[Event] = asyncio.Queue(self.queue_size)
        self._subscribers[server_uuid].add(q)
        return q

    def unsubscribe(self, server_uuid: str, q: asyncio.Queue[Event]) -> None:
        subs = self._subscribers.get(server_uuid)
        if subs is not None:
            subs.discard(q)
            if not subs:
                del self._subscribers[server_uuid]

    def subscribers(self, server_uuid: str) -> int:
        return len(self._subscribers.get(server_uuid, ()))

    def publish(self, server_uuid: str, name: str, payload: Any) -> None:
        """Send ``payload`` (JSON-encoded into the single argument) to the server's clients."""
        event = Event(name, (payload if isinstance(payload, str) else json.dumps(payload),))
        for q in self._subscribers.get(server_uuid, ()):
            if q.full():
                try:
                    q.get_nowait()
                    self.dropped += 1
                except asyncio.QueueEmpty:  # pragma: no cover - single-threaded loop
                    pass
            q.put_nowait(event)
