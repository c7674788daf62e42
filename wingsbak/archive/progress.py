"""How often a long job reports its progress: at most once every ``PROGRESS_INTERVAL``."""

from __future__ import annotations

import time
from collections.abc import Callable

PROGRESS_INTERVAL = 0.25  # seconds
Clock = Callable[[], float]


class ProgressThrottle:
    """``due()`` is true at most once per ``interval`` of ``clock`` (injectable for tests)."""

    def __init__(self, interval: float | None = None, clock: Clock = time.monotonic) -> None:
        self.interval = PROGRESS_INTERVAL if interval is None else interval
        self.clock = clock
        self.next_report = clock() + self.interval

    def due(self) -> bool:
        now = self.clock()
        if now < self.next_report:
            return False
        self.next_report = now + self.interval
        return True
