"""The console patterns of ``system.backups`` (``console_wait_for``, the quiesce rules'
``image``, ``invocation`` and ``wait_for``): RE2, so that no pattern can make matching a
console line hang; Python's ``re`` only where google-re2 has no wheel."""

from __future__ import annotations

import re
from typing import Any, Protocol

try:
    import re2 as _re2

    _OPTIONS = _re2.Options()
    _OPTIONS.log_errors = False
except Exception:  # not installed, or another package's "re2" module
    _re2 = None

# A console line is searched this far: a game that prints a megabyte on one line must not
# cost the event loop more than a bounded match.
MAX_LINE = 16 * 1024


class Pattern(Protocol):
    def search(self, text: str, /) -> Any: ...


def compile_pattern(pattern: str) -> Pattern:
    """The compiled pattern; ``ValueError`` naming what is wrong with it."""
    if _re2 is not None:
        try:
            return _re2.compile(pattern, _OPTIONS)  # type: ignore[no-any-return]
        except _re2.error as exc:
            detail = exc.args[0] if exc.args else exc
            if isinstance(detail, bytes):
                detail = detail.decode("utf-8", "replace")
            raise ValueError(str(detail)) from None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(str(exc)) from None


def matches(pattern: Pattern, text: str) -> bool:
    return pattern.search(text[:MAX_LINE]) is not None
