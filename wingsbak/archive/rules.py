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
from dataclasses import dataclass, replace
from typing import Any, Protocol

from pathspec.patterns.gitignore.spec import GitIgnoreSpecPattern

try:  # google-re2: a linear-time engine, so no ignore line can make matching hang.
    import re2 as _re2

    _RE2_OPTIONS = _re2.Options()
    _RE2_OPTIONS.encoding = _re2.Options.Encoding.LATIN1  # one byte per character, as git
    _RE2_OPTIONS.log_errors = False
except Exception:  # not installed, or another package's "re2" module
    _re2 = None

PTEROIGNORE = ".pteroignore"
# Read whole up to this size; a larger one fails the backup (archiving everything it
# excludes would be the silent alternative).
MAX_PTEROIGNORE_BYTES = 1024 * 1024
# Without re2, Python's backtracking ``re`` matches: a line with more runs of ``*`` than this
# could take minutes on a long name (holding the GIL), so it is skipped with a warning.
MAX_STAR_RUNS_WITHOUT_RE2 = 2
# Wildcard lines per RE2 set (see _Globs).
GLOB_CHUNK = 128

# pathspec's directory marker: a match through it is a match of a parent, not of the path.
_DIR_MARK_CG = "(?P<ps_d>/)"
_DIR_MARK_OPT = f"(?:{_DIR_MARK_CG}|$)"
_STAR_RUN = re.compile(r"(?<!\\)\*+")


class PteroignoreTooLarge(Exception):
    """The server's ``.pteroignore`` is larger than is read: the backup fails, naming it."""


class Excluder(Protocol):
    """What the walk asks: whether a path is excluded (given that no parent is)."""

    @property
    def empty(self) -> bool: ...

    def excludes(self, relpath: str, is_dir: bool = False) -> bool: ...


def _warn(line: str, reason: str) -> None:
    from wingsbak.log import get_logger

    # A line of a .pteroignore that is not UTF-8 holds surrogate escapes: log it printable.
    shown = line.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    get_logger(__name__).warning("ignore_line_skipped", line=shown, reason=reason)


@dataclass(slots=True, frozen=True)
class _Rule:
    """One usable line: what it is matched against, and how."""

    exclude: bool
    on_names: bool  # a line without "/": git matches it against the last component only
    regex: bytes  # a regular expression that must match the whole text (name or path)
    # Without other wildcards: the one text it matches, or the end ("*.log") or start
    # ("core.*") every text it matches has.
    literal: bytes | None = None
    suffix: bytes | None = None
    prefix: bytes | None = None
    # A path line's directory every match lies under ("plugins/x" for "plugins/x/*.yml").
    under: bytes = b""


class _Globs:
    """The wildcard lines matched against one kind of text, asked together: ``last`` gives
    the highest index of a line that matches.

    With google-re2 they are RE2 sets (one automaton for many lines, linear time), in chunks
    of ``GLOB_CHUNK`` lines so that the lazily built automaton's states stay small and its
    cache does not thrash on thousands of lines. A set says only which of its lines match,
    and says "none" when its automaton runs out of memory; so each set holds a first line
    that matches every text, and an answer without it means "ask this chunk's lines one by
    one" (as a set too large to compile is asked). Without re2, each chunk is one ``re``
    alternation of its lines from the last to the first: the alternative that matches first
    is the highest line, and its group number is ``lastindex``.
    """

    __slots__ = ("_chunks",)

    def __init__(self, rules: list[tuple[int, _Rule]]) -> None:
        chunk = _Re2Chunk if _re2 is not None else _ReChunk
        self._chunks = [
            chunk(rules[start : start + GLOB_CHUNK]) for start in range(0, len(rules), GLOB_CHUNK)
        ]
        self._chunks.reverse()  # highest lines first: the first chunk that matches decides

    def last(self, text: bytes, above: int) -> int:
        """The highest index of a line that matches ``text``, if above ``above``; else
        ``above``."""
        for chunk in self._chunks:
            if chunk.top <= above:
                break
            found = chunk.last(text)
            if found >= 0:
                return max(found, above)
        return above


class _Re2Chunk:
    __slots__ = ("_indices", "_match", "_one_by_one", "_regexes", "top")

    def __init__(self, rules: list[tuple[int, _Rule]]) -> None:
        assert _re2 is not None
        matcher = _re2.Set.FullMatchSet(_RE2_OPTIONS)
        matcher.Add(b"(?s).*")  # set index 0: matches every text (see _Globs)
        for _, rule in rules:
            matcher.Add(b"(?s)" + rule.regex)
        try:
            matcher.Compile()
            self._match = matcher.Match
        except _re2.error:  # too large for RE2's memory budget: one by one, as the lines compile
            self._match = _no_answer
        self._indices = [-1] + [index for index, _ in rules]  # by set index
        self._regexes = [rule.regex for _, rule in rules]
        self._one_by_one: list[Any] | None = None
        self.top = self._indices[-1]

    def last(self, text: bytes) -> int:
        found = self._match(text)
        if not found:
            return self._last_one_by_one(text)
        return self._indices[max(found)]

    def _last_one_by_one(self, text: bytes) -> int:
        assert _re2 is not None
        if self._one_by_one is None:
            self._one_by_one = [
                _re2.compile(b"(?s)" + regex, _RE2_OPTIONS).fullmatch for regex in self._regexes
            ]
        for i in range(len(self._one_by_one) - 1, -1, -1):
            if self._one_by_one[i](text) is not None:
                return self._indices[i + 1]
        return -1


def _no_answer(text: bytes) -> list[int]:
    return []


class _ReChunk:
    __slots__ = ("_indices", "_match", "top")

    def __init__(self, rules: list[tuple[int, _Rule]]) -> None:
        backwards = rules[::-1]
        self._indices = [-1] + [index for index, _ in backwards]  # by group number
        with warnings.catch_warnings():  # "Possible nested set" of "[[:alpha:]]"
            warnings.simplefilter("ignore", FutureWarning)
            alternation = b"|".join(b"(" + rule.regex + b")" for _, rule in backwards)
            self._match = re.compile(alternation, re.DOTALL).fullmatch
        self.top = rules[-1][0]

    def last(self, text: bytes) -> int:
        m = self._match(text)
        return -1 if m is None else self._indices[m.lastindex or 0]


class _Matchers:
    """Every rule that applies to one kind of entry (directories, or everything else),
    indexed so that a path is matched against all of them at once, never line by line.

    Lines without a wildcard, and name lines whose only wildcard is a leading or trailing
    "*", are dictionary keys (one look-up per distinct length for the latter). The other
    name lines are RE2 sets over the last component. The other path lines are RE2 sets
    grouped by the directory their matches lie under, so that an entry asks only the groups
    of its own directory and its parents (found once per directory): lines about
    ``plugins/x/`` cost nothing to a file elsewhere.
    """

    __slots__ = (
        "_for_dir",
        "_name_globs",
        "_names",
        "_path_globs",
        "_paths",
        "_prefixes",
        "_suffixes",
    )

    def __init__(self, rules: list[tuple[int, _Rule]]) -> None:
        self._names: dict[bytes, int] = {}
        self._paths: dict[bytes, int] = {}
        suffixes: dict[int, dict[bytes, int]] = {}
        prefixes: dict[int, dict[bytes, int]] = {}
        name_globs: list[tuple[int, _Rule]] = []
        path_globs: dict[bytes, list[tuple[int, _Rule]]] = {}
        for index, rule in rules:  # in order: a later line overwrites an earlier one
            if rule.literal is not None:
                (self._names if rule.on_names else self._paths)[rule.literal] = index
            elif rule.suffix is not None:
                suffixes.setdefault(len(rule.suffix), {})[rule.suffix] = index
            elif rule.prefix is not None:
                prefixes.setdefault(len(rule.prefix), {})[rule.prefix] = index
            elif rule.on_names:
                name_globs.append((index, rule))
            else:
                path_globs.setdefault(rule.under, []).append((index, rule))
        self._suffixes = [(-n, keys) for n, keys in suffixes.items()]
        self._prefixes = list(prefixes.items())
        self._name_globs = _Globs(name_globs) if name_globs else None
        self._path_globs = {under: _Globs(group) for under, group in path_globs.items()}
        # The last directory asked about and its path groups: entries come a directory at a
        # time. One tuple, replaced whole, so that two threads asking never mix them up.
        self._for_dir: tuple[bytes, list[_Globs]] = (b"/", [])

    def _groups(self, parent: bytes) -> list[_Globs]:
        """The path groups that can match an entry of ``parent`` ("" for the root)."""
        cached_dir, cached = self._for_dir
        if cached_dir == parent:
            return cached
        groups = [self._path_globs[b""]] if b"" in self._path_globs else []
        if parent:
            end = parent.find(b"/")
            while True:
                group = self._path_globs.get(parent if end < 0 else parent[:end])
                if group is not None:
                    groups.append(group)
                if end < 0:
                    break
                end = parent.find(b"/", end + 1)
        self._for_dir = (parent, groups)
        return groups

    def last(self, path: bytes) -> int:
        """The index of the last rule matching ``path``, -1 if none does."""
        slash = path.rfind(b"/")
        name = path[slash + 1 :]
        best = max(self._names.get(name, -1), self._paths.get(path, -1))
        for start, keys in self._suffixes:
            best = max(best, keys.get(name[start:], -1))
        for end, keys in self._prefixes:
            best = max(best, keys.get(name[:end], -1))
        if self._name_globs is not None:
            best = self._name_globs.last(name, best)
        if self._path_globs:
            for group in self._groups(path[:slash] if slash > 0 else b""):
                best = group.last(path, best)
        return best


class IgnoreRules:
    """One matcher for every ignore line that applies to a server root.

    Git decides for a path whose parents are not excluded (the walk never enters an excluded
    directory) by the last pattern that matches the path itself, a directory-only pattern
    ``p/`` acting as ``p`` for directories and not at all for files; a pattern without a
    slash is matched against the last component only. pathspec's own ``match_file`` also
    matches a path through its parents, which decides wrongly for ``dir/**`` (not ``dir``
    itself), ``*`` with ``!*/``, and ``a/**/`` (directories only); so only pathspec's
    per-pattern regular expressions are used, matching the path itself.

    A path is matched against all lines at once (see ``_Matchers``): lines without a
    wildcard are dictionary keys, the others RE2 sets; the last line that matches decides.
    Without google-re2 Python's ``re`` matches, skipping lines whose wildcards could
    backtrack for minutes. A line that cannot be used is skipped with a warning naming it,
    never failing the backup.
    """

    __slots__ = ("_dirs", "_exclude", "_files", "lines")

    def __init__(self, lines: Iterable[str] = ()) -> None:
        self.lines: list[str] = list(lines)
        self._exclude: list[bool] = []
        dir_rules: list[tuple[int, _Rule]] = []
        file_rules: list[tuple[int, _Rule]] = []
        for raw in self.lines:
            line = _git_line(raw)
            if line is None:
                continue
            as_dir = _dir_line(line)
            rule = _compile(as_dir, raw)
            if rule is None:
                continue
            index = len(self._exclude)
            self._exclude.append(rule.exclude)
            dir_rules.append((index, rule))
            if as_dir == line:
                file_rules.append((index, rule))
        self._dirs = _Matchers(dir_rules)
        self._files = _Matchers(file_rules)

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
        """Rules of a server root: its ``.pteroignore`` (if safe to read), then the request's.
        Raises :class:`PteroignoreTooLarge` for a ``.pteroignore`` over 1 MiB."""
        return cls.from_text(read_pteroignore(root), request_lines)

    @property
    def empty(self) -> bool:
        return not self._exclude

    def excludes(self, relpath: str, is_dir: bool = False) -> bool:
        """Whether ``relpath`` (POSIX, relative to the root, no leading slash) is excluded,
        given that no directory above it is."""
        index = (self._dirs if is_dir else self._files).last(
            relpath.encode("utf-8", "surrogateescape")
        )
        return index >= 0 and self._exclude[index]


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


def _regex(line: str) -> tuple[str, bool] | None:
    """pathspec's regular expression of ``line``, made to match a whole path (bytes in
    ``_Rule.regex`` are this, encoded), and whether the line excludes; None for comments and
    blank lines and for lines that can only match through a parent. Raises pathspec's
    error for a line it cannot translate."""
    regex, include = GitIgnoreSpecPattern.pattern_to_regex(line)
    if include is None or regex is None:
        return None
    if isinstance(regex, bytes):
        regex = regex.decode("utf-8", "surrogateescape")
    if regex.endswith(_DIR_MARK_OPT):
        return regex[: -len(_DIR_MARK_OPT)], bool(include)
    if _DIR_MARK_CG in regex:
        return None  # every match of it goes through the directory marker: a parent's
    return regex + ".*", bool(include)  # a prefix of the path is enough (e.g. "dir/**")


def _compile(line: str, raw: str) -> _Rule | None:
    """The rule of one line, matching the path itself; None for comments, blank lines,
    lines that can only match through a parent, and lines that cannot be used (skipped with
    a warning naming ``raw``)."""
    try:
        translated = _regex(line)
        negated = line.startswith("!")
        body = line[1:] if negated else line
        on_names = bool(body) and "/" not in body
        if translated is not None and on_names:
            # The same pattern anchored at the root, matched against the last component.
            translated = _regex(("!" if negated else "") + "/" + body)
    except Exception as exc:
        _warn(raw, f"not a valid pattern: {exc}")
        return None
    if translated is None:
        return None
    regex, include = translated
    rule = _Rule(exclude=include, on_names=on_names, regex=regex.encode("utf-8", "surrogateescape"))
    # A line that pathspec reads as plain text is matched by equality, a name line whose one
    # wildcard is a leading or trailing "*" by its end or start.
    plain = body.removeprefix("/")
    if regex == "^" + re.escape(plain):
        return replace(rule, literal=_raw(plain))
    if on_names and regex.startswith("^[^/]*") and regex[6:] == re.escape(body[1:]):
        return replace(rule, suffix=_raw(body[1:]))
    if on_names and regex.endswith("[^/]*") and regex[:-5] == "^" + re.escape(body[:-1]):
        return replace(rule, prefix=_raw(body[:-1]))
    if _re2 is None and len(_STAR_RUN.findall(line)) > MAX_STAR_RUNS_WITHOUT_RE2:
        _warn(
            raw,
            f"more than {MAX_STAR_RUNS_WITHOUT_RE2} runs of '*' could take minutes to match "
            "without google-re2",
        )
        return None
    if not _usable(rule.regex, raw):
        return None
    return rule if on_names else replace(rule, under=_raw(_directory_prefix(regex)))


def _raw(text: str) -> bytes:
    """A name or pattern as the bytes it stands for (surrogate escapes back to raw bytes)."""
    return text.encode("utf-8", "surrogateescape")


_REGEX_SPECIAL = frozenset(".^$*+?{}[]|()")


def _directory_prefix(regex: str) -> str:
    """The directory under which everything a path regex of pathspec's matches lies: the
    plain text it starts with, up to its last "/" ("" if none)."""
    plain: list[str] = []
    i = 1 if regex.startswith("^") else len(regex)
    while i < len(regex):
        c = regex[i]
        if c == "\\" and i + 1 < len(regex) and not regex[i + 1].isalnum():
            plain.append(regex[i + 1])
            i += 2
            continue
        if c in _REGEX_SPECIAL or c == "\\":
            if c in "*+?{" and plain:
                plain.pop()  # a quantifier: the character before it may be absent
            break
        plain.append(c)
        i += 1
    text = "".join(plain)
    return text[: text.rfind("/")] if "/" in text else ""


def _usable(regex: bytes, raw: str) -> bool:
    """Whether ``regex`` compiles on its own; a line whose does not is skipped, warned."""
    try:
        if _re2 is not None:
            _re2.compile(b"(?s)" + regex, _RE2_OPTIONS)
        else:
            with warnings.catch_warnings():  # "Possible nested set" of "[[:alpha:]]"
                warnings.simplefilter("ignore", FutureWarning)
                re.compile(regex, re.DOTALL)
    except Exception as exc:
        _warn(raw, f"not a valid pattern: {exc}")
        return False
    return True


def read_pteroignore(root: str | os.PathLike[str]) -> str:
    """The text of ``root/.pteroignore``, or "" when it is absent or not safe to read.

    Only a regular file (never a symlink, FIFO or device) is read; opening with
    ``O_NOFOLLOW | O_NONBLOCK`` means a symlink to ``/etc/shadow`` or a FIFO cannot be used to
    read another file or to hang the backup. One over ``MAX_PTEROIGNORE_BYTES`` raises
    :class:`PteroignoreTooLarge`: dropping it would put everything it excludes in the backup.
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
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_PTEROIGNORE_BYTES:  # it may grow after the fstat: read, not trust
            chunk = os.read(fd, MAX_PTEROIGNORE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > MAX_PTEROIGNORE_BYTES:
        log.error(
            "pteroignore_too_large",
            path=PTEROIGNORE,
            size=max(size, st.st_size),
            limit=MAX_PTEROIGNORE_BYTES,
        )
        raise PteroignoreTooLarge(
            f"{PTEROIGNORE} is larger than {MAX_PTEROIGNORE_BYTES} bytes; the backup is refused "
            "rather than made without the exclusions it lists"
        )
    data = b"".join(chunks)
    # As git reads it: a UTF-8 BOM at the start is not part of the first line, and bytes
    # that are not UTF-8 stay the bytes they are (matched against the names' bytes).
    # (No "utf-8-sig" codec: its module may not be importable once the CLI has dropped access.)
    return data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="surrogateescape")
