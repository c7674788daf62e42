"""Ignore rules: ``.pteroignore`` plus the request's lines, with git's ``.gitignore`` semantics.

PROTOCOL.md: both apply, ``.pteroignore`` first, so that a request line can override it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable

from pathspec import GitIgnoreSpec

PTEROIGNORE = ".pteroignore"
MAX_PTEROIGNORE_BYTES = 32 * 1024


class IgnoreRules:
    """One matcher for every ignore line that applies to a server root."""

    __slots__ = ("_match", "lines")

    def __init__(self, lines: Iterable[str] = ()) -> None:
        self.lines: list[str] = [line.rstrip("\r") for line in lines]
        meaningful = [ln for ln in self.lines if ln.strip() and not ln.startswith("#")]
        spec = GitIgnoreSpec.from_lines(self.lines) if meaningful else None
        self._match = spec.match_file if spec is not None else None

    @classmethod
    def from_text(cls, *texts: str) -> IgnoreRules:
        lines: list[str] = []
        for text in texts:
            lines.extend(text.splitlines())
        return cls(lines)

    @classmethod
    def for_server(cls, root: str | os.PathLike[str], request_lines: str = "") -> IgnoreRules:
        """Rules of a server root: its ``.pteroignore`` (if safe to read), then the request's."""
        return cls.from_text(read_pteroignore(root), request_lines)

    @property
    def empty(self) -> bool:
        return self._match is None

    def excludes(self, relpath: str, is_dir: bool = False) -> bool:
        """Whether ``relpath`` (POSIX, relative to the root, no leading slash) is excluded."""
        if self._match is None:
            return False
        return self._match(relpath + "/" if is_dir else relpath)


def read_pteroignore(root: str | os.PathLike[str]) -> str:
    """The text of ``root/.pteroignore``, or "" when it is absent or not safe to read.

    Only a regular file (never a symlink, FIFO or device) of at most 32 KiB is read; opening
    with ``O_NOFOLLOW | O_NONBLOCK`` means a symlink to ``/etc/shadow`` or a FIFO cannot be
    used to read another file or to hang the backup.
    """
    from wingsbak.log import get_logger

    log = get_logger(__name__)
    path = os.path.join(root, PTEROIGNORE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            log.warning("pteroignore_skipped", reason="is a symlink", path=PTEROIGNORE)
        else:
            log.warning("pteroignore_skipped", reason=exc.strerror, path=PTEROIGNORE)
        return ""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            log.warning("pteroignore_skipped", reason="not a regular file", path=PTEROIGNORE)
            return ""
        if st.st_size > MAX_PTEROIGNORE_BYTES:
            log.warning(
                "pteroignore_skipped",
                reason=f"larger than {MAX_PTEROIGNORE_BYTES} bytes",
                size=st.st_size,
                path=PTEROIGNORE,
            )
            return ""
        data = os.read(fd, MAX_PTEROIGNORE_BYTES + 1)[:MAX_PTEROIGNORE_BYTES]
    finally:
        os.close(fd)
    return data.decode("utf-8", errors="replace")
