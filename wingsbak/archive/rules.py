"""Ignore rules: ``.pteroignore`` plus the request's lines, with git's ``.gitignore`` semantics.

PROTOCOL.md: both apply, ``.pteroignore`` first, so that a request line can override it.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable

from pathspec import GitIgnoreSpec

PTEROIGNORE = ".pteroignore"
MAX_PTEROIGNORE_BYTES = 32 * 1024


class IgnoreRules:
    """One matcher for every ignore line that applies to a server root.

    Git decides for a path whose parents are not excluded (the walk never enters an excluded
    directory) by the last pattern that matches the path itself, a directory-only pattern
    ``p/`` acting as ``p`` for directories and not at all for files. pathspec's own
    ``match_file`` also matches a path through its parents, which decides wrongly for
    ``dir/**`` (not ``dir`` itself), ``*`` with ``!*/``, and ``a/**/`` (directories only); so
    only pathspec's per-pattern regular expressions are used, matching the path itself.
    """

    __slots__ = ("_dir_rules", "_file_rules", "lines")

    def __init__(self, lines: Iterable[str] = ()) -> None:
        self.lines: list[str] = [line.rstrip("\r") for line in lines]
        self._dir_rules: list[tuple[re.Pattern[str], bool]] = []
        self._file_rules: list[tuple[re.Pattern[str], bool]] = []
        for line in self.lines:
            as_dir = _dir_line(line)
            rule = _compile(as_dir)
            if rule is None:
                continue
            self._dir_rules.append(rule)
            if as_dir == line:
                self._file_rules.append(rule)
        # The last matching pattern decides: look from the end.
        self._dir_rules.reverse()
        self._file_rules.reverse()

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
        return not self._dir_rules

    def excludes(self, relpath: str, is_dir: bool = False) -> bool:
        """Whether ``relpath`` (POSIX, relative to the root, no leading slash) is excluded,
        given that no directory above it is."""
        for regex, exclude in self._dir_rules if is_dir else self._file_rules:
            m = regex.match(relpath)
            # A match through the directory marker is a match of a parent, not of the path.
            if m is not None and m.groupdict().get("ps_d") is None:
                return exclude
        return False


def _dir_line(line: str) -> str:
    """``line`` as it applies to a directory: a trailing "/" (before unescaped trailing
    spaces, which git drops) no longer restricts it, since the path is a directory."""
    body = line
    while body.endswith(" ") and not body.endswith("\\ "):
        body = body[:-1]
    if len(body) > 1 and body.endswith("/") and not body.startswith("#"):
        # Spaces before the slash are part of the name: escape them now that they trail.
        stem = body[:-1]
        core = stem.rstrip(" ")
        spaces = len(stem) - len(core)
        if spaces and core.endswith("\\"):
            core = core[:-1]
        return core + "\\ " * spaces
    return line


def _compile(line: str) -> tuple[re.Pattern[str], bool] | None:
    """The regular expression of one line and whether it excludes; None for comments,
    blank and invalid lines."""
    for pattern in GitIgnoreSpec.from_lines([line]).patterns:
        if pattern.include is not None and pattern.regex is not None:
            return pattern.regex, bool(pattern.include)
    return None


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
