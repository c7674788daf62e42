"""A safe walk of a server root.

Everything is opened relative to an open directory descriptor with ``O_NOFOLLOW``, so a
symlink (even one swapped in while the walk runs) is never followed and the walk never leaves
the root; symlinks are reported as symlinks. The root itself is opened so too: a server
directory that is a symlink, or not a directory, is refused. Excluded directories are pruned,
never entered.

The walk streams ``os.scandir`` and keeps at most ``MAX_OPEN_LEVELS`` directories open below
the root, so neither its memory nor its descriptors grow with the number of files, and a tree
thousands of levels deep does not run the node out of descriptors. Deeper than that, the
shallowest open level reads the rest of its listing ahead and is closed; it is reopened
through ``..`` of its child when the walk climbs back (no name, so no symlink, is resolved)
and must still be the directory it was. Only such a level holds names in memory, those it
has left to visit (GNU tar and fts hold every listing on the path whole).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum

from wingsbak.archive.rules import Excluder, IgnoreRules
from wingsbak.archive.staging import STAGING_PREFIX, staging_label

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Directories held open below the root, two descriptors each (ours and scandir's).
MAX_OPEN_LEVELS = 32
# The node ran out of descriptors or memory: not one entry's problem. Skipping would leave
# files out of a backup reported successful, so these fail the backup instead.
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})
# A directory that is gone from where it was listed: moved, removed, or replaced.
_GONE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP})


def raise_if_out_of_resources(exc: OSError) -> None:
    if exc.errno in OUT_OF_RESOURCES:
        raise exc


class UnsafeRoot(OSError):
    """The server directory is a symlink or not a directory: it is never followed."""


def open_root(root: str | os.PathLike[str]) -> int:
    """The server root opened as a directory, never through a symlink; :class:`UnsafeRoot`
    names the reason when it is not a real directory."""
    path = os.fspath(root)
    try:
        return os.open(path, _DIR_FLAGS)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        what = "a symlink" if os.path.islink(path) else "not a directory"
        raise UnsafeRoot(exc.errno, f"the server directory is {what}", path) from None


class Kind(IntEnum):
    FILE = 0
    DIR = 1
    SYMLINK = 2


@dataclass(slots=True)
class WalkEntry:
    relpath: str  # POSIX path relative to the root, no leading "./"
    name: str  # last component, to open relative to ``dir_fd``
    dir_fd: int  # the open parent directory; valid until the walk advances
    st: os.stat_result
    kind: Kind
    linkname: str = ""


SkipCallback = Callable[[str, str], None]
ExcludedCallback = Callable[[os.stat_result], None]


def _ignore_skip(relpath: str, reason: str) -> None:
    pass


@dataclass(slots=True)
class _Level:
    """One directory on the way down from the root."""

    prefix: str  # its relative path and "/" ("" for the root)
    fd: int  # -1 while closed
    listing: Iterator[os.DirEntry[str]] | None  # streamed while open, None once read ahead
    ahead: list[str]  # names still to visit, read ahead before it was closed (last first)
    ident: tuple[int, int] = (0, 0)  # (st_dev, st_ino), recorded when it was closed

    def close(self, root_fd: int) -> None:
        if self.listing is not None:
            self.listing.close()  # type: ignore[attr-defined]
            self.listing = None
        if self.fd >= 0 and self.fd != root_fd:
            os.close(self.fd)
        self.fd = -1


class _Stack:
    """The open directories of a walk: the root, and at most ``max_open`` levels below it,
    always the deepest ones (levels ``first_open`` and below)."""

    def __init__(self, root_fd: int, on_skip: SkipCallback, max_open: int) -> None:
        self.root_fd = root_fd
        self.on_skip = on_skip
        self.max_open = max_open
        self.levels = [_Level("", root_fd, os.scandir(root_fd), [])]
        self.first_open = 1

    def push(self, level: _Level) -> None:
        self.levels.append(level)
        if len(self.levels) - self.first_open > self.max_open:
            self._read_ahead_and_close(self.levels[self.first_open])
            self.first_open += 1

    def _read_ahead_and_close(self, level: _Level) -> None:
        if level.listing is not None:  # else it was read ahead before, when first closed
            ahead: list[str] = []
            try:
                ahead.extend(entry.name for entry in level.listing)
            except OSError as exc:
                raise_if_out_of_resources(exc)
                self.on_skip(level.prefix.rstrip("/"), f"cannot list directory: {exc.strerror}")
            ahead.reverse()
            level.ahead = ahead
        st = os.fstat(level.fd)
        level.ident = (st.st_dev, st.st_ino)
        level.close(self.root_fd)

    def pop(self) -> None:
        """Leave the deepest directory; its parent is reopened if it had been closed."""
        level = self.levels[-1]
        depth = len(self.levels) - 1
        try:
            if depth - 1 >= 1 and self.levels[depth - 1].fd < 0:
                self._reopen(depth - 1, level.fd)
                self.first_open = depth - 1
        finally:
            level.close(self.root_fd)
            self.levels.pop()
        if self.first_open > len(self.levels):
            self.first_open = len(self.levels)

    def _reopen(self, depth: int, child_fd: int) -> None:
        level = self.levels[depth]
        fd = -1
        if child_fd >= 0:
            fd = self._open_checked("..", child_fd, level.ident)
        if fd < 0:
            # The child was moved elsewhere: by name from the nearest open ancestor instead.
            fd = self._open_by_names(depth)
        if fd < 0:
            # Moved, removed or replaced since it was listed: what it still held is no
            # longer in the tree, as with a file deleted before it was read.
            level.ahead = []
        level.fd = fd

    def _open_checked(self, name: str, dir_fd: int, ident: tuple[int, int]) -> int:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            raise_if_out_of_resources(exc)
            if exc.errno in _GONE:
                return -1
            raise
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != ident:
            os.close(fd)
            return -1
        return fd

    def _open_by_names(self, depth: int) -> int:
        anchor = max(i for i in range(depth) if self.levels[i].fd >= 0)
        fd = self.levels[anchor].fd
        for i in range(anchor + 1, depth + 1):
            level = self.levels[i]
            name = level.prefix.rstrip("/").rsplit("/", 1)[-1]
            child = self._open_checked(name, fd, level.ident)
            if i - 1 > anchor:
                os.close(fd)
            if child < 0:
                return -1
            fd = child
        return fd

    def close_all(self) -> None:
        for level in self.levels:
            level.close(self.root_fd)
        self.levels.clear()


def walk(
    root: str | os.PathLike[str],
    rules: Excluder | None = None,
    on_skip: SkipCallback = _ignore_skip,
    *,
    on_special: SkipCallback = _ignore_skip,
    on_excluded: ExcludedCallback | None = None,
    max_open: int = MAX_OPEN_LEVELS,
) -> Iterator[WalkEntry]:
    """Yield the entries under ``root`` depth-first, directories before their contents.

    ``on_skip(relpath, reason)`` hears of each entry that could not be read (left out);
    ``on_special`` of each FIFO, socket or device (left out by design); ``on_excluded`` gets
    the stat of each regular file the rules exclude.
    Raises :class:`UnsafeRoot` when ``root`` is a symlink or not a directory."""
    rules = rules or IgnoreRules()
    check = not rules.empty
    root_fd = open_root(root)
    try:
        # Two at least: the parent of a directory just entered stays open while it is yielded.
        stack = _Stack(root_fd, on_skip, max(2, max_open))
    except BaseException:
        os.close(root_fd)
        raise
    levels = stack.levels
    try:
        while levels:
            level = levels[-1]
            fd, prefix = level.fd, level.prefix
            entry: os.DirEntry[str] | None = None
            if level.listing is not None:
                try:
                    entry = next(level.listing, None)
                except OSError as exc:
                    raise_if_out_of_resources(exc)
                    on_skip(prefix.rstrip("/") or ".", f"cannot list directory: {exc.strerror}")
                if entry is None:
                    stack.pop()
                    continue
                name = entry.name
            elif level.ahead:
                name = level.ahead.pop()
            else:
                stack.pop()
                continue
            if not prefix and name.startswith(STAGING_PREFIX) and staging_label(fd, name):
                continue  # a restore's staging (a player's folder of that name is backed up)
            relpath = prefix + name
            try:
                if entry is not None:
                    st = entry.stat(follow_symlinks=False)
                else:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # vanished since the listing: nothing to back up
            except OSError as exc:
                raise_if_out_of_resources(exc)
                on_skip(relpath, f"cannot stat: {exc.strerror}")
                continue
            mode = st.st_mode
            if stat.S_ISREG(mode):
                if check and rules.excludes(relpath):
                    if on_excluded is not None:
                        on_excluded(st)
                    continue
                yield WalkEntry(relpath, name, fd, st, Kind.FILE)
            elif stat.S_ISDIR(mode):
                if check and rules.excludes(relpath, is_dir=True):
                    continue
                try:
                    child_fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise_if_out_of_resources(exc)
                    # ELOOP/ENOTDIR: replaced by a symlink or a file since the listing.
                    on_skip(relpath, f"cannot open directory: {exc.strerror}")
                    continue
                try:
                    child_it = os.scandir(child_fd)
                except OSError as exc:
                    os.close(child_fd)
                    raise_if_out_of_resources(exc)
                    on_skip(relpath, f"cannot list directory: {exc.strerror}")
                    continue
                stack.push(_Level(relpath + "/", child_fd, child_it, []))
                yield WalkEntry(relpath, name, fd, st, Kind.DIR)
            elif stat.S_ISLNK(mode):
                if check and rules.excludes(relpath):
                    continue
                try:
                    target = os.readlink(name, dir_fd=fd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise_if_out_of_resources(exc)
                    on_skip(relpath, f"cannot read link: {exc.strerror}")
                    continue
                yield WalkEntry(relpath, name, fd, st, Kind.SYMLINK, target)
            else:
                if check and rules.excludes(relpath):
                    continue
                on_special(relpath, "not a regular file, directory or symlink")
    finally:
        stack.close_all()
        os.close(root_fd)
