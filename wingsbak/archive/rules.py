"""Ignore rules: ``.pteroignore`` plus the request's lines, with git's ``.gitignore`` semantics.

PROTOCOL.md: both apply, ``.pteroignore`` first, so that a request line can override it.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import warnings
from collections.abc import Iterable

from pathspec.patterns.gitignore.spec import GitIgnoreSpecPattern

try:  # google-re2: a linear-time engine, so no ignore line can make matching hang.
    import re2 as _re2

    _RE2_OPTIONS = _re2.Options()
    _RE2_OPTIONS.encoding = _re2.Options.Encoding.LATIN1  # one byte per character, as git
    _RE2_OPTIONS.log_errors = False
except Exception:  # not installed, or another package's "re2" module
    _re2 = None

PTEROIGNORE = ".pteroignore"
MAX_PTEROIGNORE_BYTES = 32 * 1024
# Without re2, Python's backtracking ``re`` matches: a line with more runs of ``*`` than this
# could take minutes on a long name (holding the GIL), so it is skipped with a warning.
MAX_STAR_RUNS_WITHOUT_RE2 = 2

# pathspec's directory marker: a match through it is a match of a parent, not of the path.
_DIR_MARK_CG = "(?P<ps_d>/)"
_DIR_MARK_OPT = f"(?:{_DIR_MARK_CG}|$)"
_STAR_RUN = re.compile(r"(?<!\\)\*+")


def _warn(line: str, reason: str) -> None:
    from wingsbak.log import get_logger

    # A line of a .pteroignore that is not UTF-8 holds surrogate escapes: log it printable.
    shown = line.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    get_logger(__name__).warning("ignore_line_skipped", line=shown, reason=reason)


class _Matcher:
    """A compiled rule, matching a path's UTF-8 bytes (surrogate escapes giving back the raw
    bytes of a non-UTF-8 name) one byte per character, as git does."""

    __slots__ = ("_match",)

    def __init__(self, regex: str, to_end: bool) -> None:
        source = regex.encode("utf-8", "surrogateescape")
        if _re2 is not None:
            # RE2's "$" (without multi-line) is the end of the text only.
            self._match = _re2.compile(b"(?s)" + source + b"$" * to_end, _RE2_OPTIONS).match
        else:
            with warnings.catch_warnings():  # "Possible nested set" of "[[:alpha:]]"
                warnings.simplefilter("ignore", FutureWarning)
                self._match = re.compile(source + b"\\Z" * to_end, re.DOTALL).match

    def __call__(self, path: bytes) -> bool:
        return self._match(path) is not None


class IgnoreRules:
    """One matcher for every ignore line that applies to a server root.

    Git decides for a path whose parents are not excluded (the walk never enters an excluded
    directory) by the last pattern that matches the path itself, a directory-only pattern
    ``p/`` acting as ``p`` for directories and not at all for files. pathspec's own
    ``match_file`` also matches a path through its parents, which decides wrongly for
    ``dir/**`` (not ``dir`` itself), ``*`` with ``!*/``, and ``a/**/`` (directories only); so
    only pathspec's per-pattern regular expressions are used, matching the path itself.

    They are matched with google-re2 (linear time) when it is importable; otherwise with
    Python's ``re``, skipping lines whose wildcards could backtrack for minutes. A line that
    cannot be used is skipped with a warning naming it, never failing the backup.
    """

    __slots__ = ("_dir_rules", "_file_rules", "lines")

    def __init__(self, lines: Iterable[str] = ()) -> None:
        self.lines: list[str] = list(lines)
        self._dir_rules: list[tuple[_Matcher, bool]] = []
        self._file_rules: list[tuple[_Matcher, bool]] = []
        for raw in self.lines:
            line = _git_line(raw)
            if line is None:
                continue
            as_dir = _dir_line(line)
            rule = _compile(as_dir, raw)
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
        """Lines as git reads them: split at "\\n" only, one trailing "\\r" dropped."""
        lines: list[str] = []
        for text in texts:
            for line in text.split("\n"):
                lines.append(line[:-1] if line.endswith("\r") else line)
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
        path = relpath.encode("utf-8", "surrogateescape")
        for matches, exclude in self._dir_rules if is_dir else self._file_rules:
            if matches(path):
                return exclude
        return False


def _git_line(line: str) -> str | None:
    """``line`` with git's trailing-space rule applied, in the form pathspec reads it; None
    for a line git never matches with (a pattern ending in an unescaped backslash).

    Git drops trailing spaces unless escaped, and nothing else: a trailing tab is part of
    the name, so it is written for pathspec (which would strip it) as "[\\t]"."""
    last_space = None
    i = 0
    while i < len(line):
        c = line[i]
        if c == " ":
            if last_space is None:
                last_space = i
        elif c == "\\":
            i += 1
            if i == len(line):
                if not line.startswith("#"):
                    _warn(line, "ends with an unescaped backslash (git never matches it)")
                return None
            last_space = None
        else:
            last_space = None
        i += 1
    if last_space is not None:
        line = line[:last_space]
    if line.startswith("#"):
        return line
    body = line
    while body and body[-1] != " " and body[-1].isspace():
        body = body[:-1]
    if body != line:
        # Other whitespace (tab, CR...) trails: part of the name for git, stripped by
        # pathspec unless it is written as a bracket expression.
        line = body + "".join(f"[{c}]" for c in line[len(body) :])
    return line


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


def _compile(line: str, raw: str) -> tuple[_Matcher, bool] | None:
    """The matcher of one line (for the path itself) and whether it excludes; None for
    comments, blank lines, lines that can only match through a parent, and lines that
    cannot be used (skipped with a warning naming ``raw``)."""
    try:
        regex, include = GitIgnoreSpecPattern.pattern_to_regex(line)
    except Exception as exc:
        _warn(raw, f"not a valid pattern: {exc}")
        return None
    if include is None or regex is None:
        return None
    if isinstance(regex, bytes):
        regex = regex.decode("utf-8", "surrogateescape")
    to_end = regex.endswith(_DIR_MARK_OPT)
    if to_end:
        regex = regex[: -len(_DIR_MARK_OPT)]
    elif _DIR_MARK_CG in regex:
        return None  # every match of it goes through the directory marker: a parent's
    if _re2 is None and len(_STAR_RUN.findall(line)) > MAX_STAR_RUNS_WITHOUT_RE2:
        _warn(
            raw,
            f"more than {MAX_STAR_RUNS_WITHOUT_RE2} runs of '*' could take minutes to match "
            "without google-re2",
        )
        return None
    try:
        return _Matcher(regex, to_end), bool(include)
    except Exception as exc:
        _warn(raw, f"not a valid pattern: {exc}")
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
    # As git reads it: a UTF-8 BOM at the start is not part of the first line, and bytes
    # that are not UTF-8 stay the bytes they are (matched against the names' bytes).
    # (No "utf-8-sig" codec: its module may not be importable once the CLI has dropped access.)
    return data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="surrogateescape")
