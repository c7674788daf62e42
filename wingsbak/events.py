"""Per-server publish/subscribe feeding the websocket.

Each subscriber has a bounded queue; when a slow client's queue is full the oldest message is
dropped, so a slow client never slows a backup or the other clients.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

BACKUP_COMPLETED = "backup completed"
BACKUP_RESTORE_COMPLETED = "backup restore completed"
BACKUP_PROGRESS = "backup progress"
DAEMON_MESSAGE = "daemon message"
# A restore's console lines: Wings prints one per file (server/backup.go RestoreBackup); a
# console shows at most this many a second of a server, and a count of the others.
RESTORING_LINES_PER_SECOND = 10


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


class RestoringLines:
    """The ``(restoring): <file>`` console lines of one restore, as Wings prints them
    (server/backup.go), at most ``limit`` a second: files beyond are counted, and the count
    comes as one more line when the second is over (or the restore is). Not thread-safe: one
    restore's thread feeds it."""

    def __init__(
        self, limit: int = RESTORING_LINES_PER_SECOND, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.clock = clock
        self._second_ends: float | None = None
        self._shown = 0  # lines of names in the current second
        self._unnamed = 0  # files restored and not shown since the last count line

    def take(self, names: Sequence[str], files: int) -> list[str]:
        """The lines for ``files`` more files restored, of which ``names`` are named."""
        now = self.clock()
        lines: list[str] = []
        if self._second_ends is None or now >= self._second_ends:
            lines += self.flush()
            self._second_ends, self._shown = now + 1.0, 0
        shown = list(names[: max(0, self.limit - self._shown)])
        self._shown += len(shown)
        self._unnamed += max(0, files - len(shown))
        lines += [f"(restoring): {name}" for name in shown]
        return lines

    def flush(self) -> list[str]:
        """The count line of the files not shown, if any."""
        if not self._unnamed:
            return []
        count, self._unnamed = self._unnamed, 0
        return [f"(restoring): {count} more file{'' if count == 1 else 's'}"]
