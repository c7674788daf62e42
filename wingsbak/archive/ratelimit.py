"""A byte rate held to a limit (:class:`TokenBucket`), and :class:`Cancelled`: what it, and
every long piece of work in the engine, raises once the caller's event is set."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

MIB = 1024 * 1024


class Cancelled(Exception):
    """The work was cancelled (by the caller's event)."""


class TokenBucket:
    """Limits a byte rate. The burst is a quarter second of the rate, so any window of a few
    seconds averages within a few percent of the limit.

    ``clock`` and ``sleep`` default to the real ones (``sleep`` to waiting on ``cancel`` when
    given, so that a cancellation ends the wait); tests pass simulated ones.
    """

    def __init__(
        self,
        bytes_per_second: float,
        cancel: threading.Event | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        if bytes_per_second <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(bytes_per_second)
        self.burst = self.rate / 4
        self.tokens = self.burst
        self.clock = clock
        if sleep is None:
            sleep = cancel.wait if cancel is not None else time.sleep
        self.sleep = sleep
        self.last = clock()
        self.cancel = cancel

    def consume(self, n: int) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= n
        if self.tokens < 0:
            self.sleep(-self.tokens / self.rate)
            if self.cancel is not None and self.cancel.is_set():
                raise Cancelled("cancelled")
