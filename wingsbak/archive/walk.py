"""A safe walk of a server root.

Everything is opened relative to an open directory descriptor with ``O_NOFOLLOW``, so a
symlink (even one swapped in while the walk runs) is never followed and the walk never leaves
the root; symlinks are reported as symlinks. Excluded directories are pruned, never entered.
The walk streams ``os.scandir`` and holds one open directory per level of depth, so its memory
does not grow with the number of files.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum

from wingsbak.archive.rules import IgnoreRules

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# The node ran out of descriptors or memory: not one entry's problem. Skipping would leave
# files out of a backup reported successful, so these fail the backup instead.
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})


def raise_if_out_of_resources(exc: OSError) -> None:
    if exc.errno in OUT_OF_RESOURCES:
        raise exc


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


def _ignore_skip(relpath: str, reason: str) -> None:
    pass


def walk(
    root: str | os.PathLike[str],
    rules: IgnoreRules | None = None,
    on_skip: SkipCallback = _ignore_skip,
) -> Iterator[WalkEntry]:
    """Yield the entries under ``root`` depth-first, directories before their contents."""
    rules = rules or IgnoreRules()
    check = not rules.empty
    root_fd = os.open(os.fspath(root), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    # Each level: (fd, prefix, scandir iterator). Closed on the way out, even on error.
    stack: list[tuple[int, str, Iterator[os.DirEntry[str]]]] = []
    try:
        stack.append((root_fd, "", os.scandir(root_fd)))
        while stack:
            fd, prefix, it = stack[-1]
            try:
                entry = next(it, None)
            except OSError as exc:
                raise_if_out_of_resources(exc)
                on_skip(prefix.rstrip("/") or ".", f"cannot list directory: {exc.strerror}")
                entry = None
            if entry is None:
                stack.pop()
                it.close()  # type: ignore[attr-defined]
                if fd != root_fd:
                    os.close(fd)
                continue
            name = entry.name
            relpath = prefix + name
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # vanished since the listing: nothing to back up
            except OSError as exc:
                raise_if_out_of_resources(exc)
                on_skip(relpath, f"cannot stat: {exc.strerror}")
                continue
            mode = st.st_mode
            if stat.S_ISREG(mode):
                if check and rules.excludes(relpath):
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
                stack.append((child_fd, relpath + "/", child_it))
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
                on_skip(relpath, "not a regular file, directory or symlink")
    finally:
        for fd, _, it in stack:
            it.close()  # type: ignore[attr-defined]
            if fd != root_fd:
                os.close(fd)
        os.close(root_fd)
