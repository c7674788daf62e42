"""restic's retries of repository operations, read from its stderr, and when to give up.

restic retries a failed repository operation on its own and says so on stderr:
``<op> returned error, retrying after <delay>: <error>``. restic 0.15 and later also say how
the retries ended (``<op> operation successful after N retries`` or ``<op> failed: ...``);
0.14 says nothing when a retry works. So an operation's chain of retries ends with such a
line, or when its next retry is overdue: announced delay plus a grace. A chain that has lasted
``timeout`` seconds means the repository is not answering, whatever restic would still try
(from 0.17 for up to 15 minutes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_RETRYING = re.compile(
    r"^(?P<op>.+?) returned error, retrying after (?P<delay>\S+): (?P<error>.*)$"
)
_ENDED = re.compile(r"^(?P<op>.+?) (?:operation successful after \d+ retries|failed: .*)$")
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(text: str) -> float | None:
    """Seconds in a Go duration such as ``552.33ms`` or ``1m3.5s``; None when it is not one."""
    parts = _GO_DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNITS[u] for n, u in parts)


@dataclass(slots=True)
class _Chain:
    started: float
    last: float
    delay: float


class RetryChains:
    """The operations restic is retrying, each from its first failure."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        # How late a retry may be before its operation is taken to have worked: well under
        # the timeout, so that one failure that restic recovers from never adds up to it.
        self.grace = min(30.0, timeout / 4)
        self._chains: dict[str, _Chain] = {}
        self.last_error = ""

    @property
    def active(self) -> bool:
        return bool(self._chains)

    def feed(self, line: str, now: float) -> bool:
        """Take one stderr line; True when it is a retry."""
        retrying = _RETRYING.match(line)
        if retrying is not None:
            op = retrying.group("op")
            delay = go_duration(retrying.group("delay")) or 0.0
            chain = self._chains.get(op)
            if chain is None:
                self._chains[op] = _Chain(now, now, delay)
            else:
                chain.last, chain.delay = now, delay
            self.last_error = retrying.group("error")
            return True
        ended = _ENDED.match(line)
        if ended is not None:
            self._chains.pop(ended.group("op"), None)
        return False

    def given_up(self, now: float) -> bool:
        """Whether one operation has been failing for ``timeout`` seconds; drops the chains
        whose next retry is overdue."""
        for op, chain in list(self._chains.items()):
            if now > chain.last + chain.delay + self.grace:
                del self._chains[op]
            elif now - chain.started >= self.timeout:
                return True
        return False
