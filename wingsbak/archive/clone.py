"""A copy-on-write clone of a server tree (the FICLONE ioctl: XFS with reflink, btrfs), made
while the game's saving is paused: the backup then reads the clone, and the game saves again
as soon as the clone exists instead of when the archive is read.

``<system.data>/.wingsbak-clone-<label>`` beside the server roots, never inside one (Wings
counts a server's disk use by walking its directory, and players see what is in it), mode
0700, holding

- ``.wingsbak-clone``, the marker, written and fsync'd right after the mkdir: only a
  directory holding it (a regular file of the daemon's own uid naming the label) is removed
  by :func:`remove_clones`, which the daemon runs at start (a clone left by a kill -9);
- ``tree/``, the clone: every entry the backup's rules keep, with its owner, mode and times
  (what the archive records), cloned file by file; symlinks as symlinks, FIFOs, sockets and
  devices left out (the archive leaves them out too).

A clone shares its data blocks with the originals until the game writes them again, so it
costs metadata, not space. A file system that cannot clone (ext4, tmpfs, another file system
than the server's) raises :class:`CloneUnsupported` at the first file; anything else that
goes wrong removes the clone and raises, and the backup reads the live files instead.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import stat
import sys
import threading
from pathlib import Path

from wingsbak.archive.ratelimit import Cancelled
from wingsbak.archive.rules import PTEROIGNORE, IgnoreRules
from wingsbak.archive.walk import Kind, WalkEntry, open_root, walk
from wingsbak.log import get_logger

log = get_logger(__name__)

__all__ = ["CLONE_PREFIX", "CloneUnsupported", "clone_tree", "remove_clone", "remove_clones"]

CLONE_PREFIX = ".wingsbak-clone-"
MARKER = ".wingsbak-clone"
TREE = "tree"
# linux/fs.h: _IOW(0x94, 9, int)
FICLONE = 0x40049409
_MAGIC = b"wingsbak clone\n"
_LABEL = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]{0,63}")
# What a file system that cannot clone answers (ext4, tmpfs: EOPNOTSUPP; other file systems
# than the source's: EXDEV; some drivers: EINVAL or ENOTTY).
_CANNOT_CLONE = frozenset({errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS})
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class CloneUnsupported(OSError):
    """The server's file system cannot clone files (or the clone's place is on another)."""


def clone_tree(
    root: str | os.PathLike[str],
    parent: str | os.PathLike[str],
    label: str,
    rules: IgnoreRules,
    cancel: threading.Event | None = None,
) -> Path:
    """Clone what a backup of ``root`` under ``rules`` reads into a marked directory in
    ``parent``; returns the clone's tree (archive it as the server root). On any error the
    clone is removed before the error is raised."""
    if not _LABEL.fullmatch(label):
        raise ValueError(f"not a clone label: {label!r}")
    parent = Path(parent)
    if os.stat(root).st_dev != os.stat(parent).st_dev:
        raise CloneUnsupported(
            errno.EXDEV, "the server's files are on another file system than system.data"
        )
    base = parent / (CLONE_PREFIX + label)
    if _marked(base, label):  # left by a run that died
        remove_clone(base)
    os.mkdir(base, 0o700)
    try:
        _write_marker(base, label)
        os.mkdir(base / TREE, 0o700)
        tree = os.open(base / TREE, _DIR_FLAGS)
        try:
            _Cloner(tree, cancel).run(root, rules)
        finally:
            os.close(tree)
    except BaseException:
        remove_clone(base)
        raise
    return base / TREE


def remove_clone(base: str | os.PathLike[str]) -> None:
    """Remove a clone (``clone_tree``'s result or its parent) and everything in it."""
    path = Path(base)
    if path.name == TREE and path.parent.name.startswith(CLONE_PREFIX):
        path = path.parent
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=_writable_and_retry)
    else:
        shutil.rmtree(path, onerror=lambda f, p, info: _writable_and_retry(f, p, info[1]))


def remove_clones(parent: str | os.PathLike[str]) -> list[str]:
    """Remove every clone this daemon left in ``parent`` (a run killed during a backup);
    the names removed. A directory of that prefix without the marker is kept, unless it is
    empty (a kill between the mkdir and the marker)."""
    removed: list[str] = []
    try:
        with os.scandir(parent) as it:
            names = [e.name for e in it if e.name.startswith(CLONE_PREFIX)]
    except FileNotFoundError:
        return removed
    for name in names:
        path = Path(parent) / name
        label = name[len(CLONE_PREFIX) :]
        try:
            if _marked(path, label):
                remove_clone(path)
            elif path.is_dir() and not path.is_symlink():
                path.rmdir()  # only when empty
            else:
                continue
        except OSError as exc:
            log.error("clone_not_removed", path=str(path), error=exc.strerror or str(exc))
            continue
        removed.append(name)
    return removed


def _writable_and_retry(func: object, path: str, exc: BaseException) -> None:
    """rmtree's error handler: a directory the player made read-only is made writable once
    (a daemon that is not root could not empty it otherwise)."""
    parent = os.path.dirname(path)
    if not isinstance(exc, PermissionError) or not parent:
        raise exc
    os.chmod(parent, 0o700)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _write_marker(base: Path, label: str) -> None:
    fd = os.open(base / MARKER, _NEW_FLAGS, 0o600)
    try:
        os.write(fd, _MAGIC + label.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(base.parent, _DIR_FLAGS)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _marked(base: Path, label: str) -> bool:
    try:
        dir_fd = os.open(base, _DIR_FLAGS)
    except OSError:
        return False
    try:
        fd = os.open(MARKER, _READ_FLAGS, dir_fd=dir_fd)
    except OSError:
        return False
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_size > 256:
            return False
        return os.read(fd, 257) == _MAGIC + label.encode() + b"\n"
    finally:
        os.close(fd)


class _Cloner:
    def __init__(self, tree_fd: int, cancel: threading.Event | None) -> None:
        self.tree = tree_fd
        self.cancel = cancel
        self.owned = os.geteuid() == 0  # only root can give entries their owners back
        self.dirs: list[tuple[str, os.stat_result]] = []

    def run(self, root: str | os.PathLike[str], rules: IgnoreRules) -> None:
        entries = walk(root, rules, self._unreadable, on_special=self._special)
        with contextlib.closing(entries):
            for entry in entries:
                if self.cancel is not None and self.cancel.is_set():
                    raise Cancelled("backup cancelled")
                self._add(entry)
        self._keep_pteroignore(root, rules)
        # Last, deepest first: creating their entries changed the directories' times.
        for relpath, st in reversed(self.dirs):
            self._meta(relpath, st, follow=False)

    def _unreadable(self, relpath: str, reason: str) -> None:
        # The live files are read instead, where the archiver applies allow_skipped.
        raise OSError(errno.EACCES, f"cannot clone {relpath!r}: {reason}")

    def _special(self, relpath: str, reason: str) -> None:
        log.warning("archive_entry_skipped", path=relpath, reason=reason)

    def _add(self, entry: WalkEntry) -> None:
        if entry.kind is Kind.DIR:
            os.mkdir(entry.relpath, 0o700, dir_fd=self.tree)
            self.dirs.append((entry.relpath, entry.st))
        elif entry.kind is Kind.SYMLINK:
            os.symlink(entry.linkname, entry.relpath, dir_fd=self.tree)
            self._meta(entry.relpath, entry.st, follow=False)
        else:
            self._file(entry.name, entry.dir_fd, entry.relpath)

    def _file(self, name: str, dir_fd: int, relpath: str) -> None:
        try:
            src = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return  # deleted since the listing: not part of this backup
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode):
                return  # replaced by a FIFO or a device since the listing
            dst = os.open(relpath, _NEW_FLAGS, 0o600, dir_fd=self.tree)
            try:
                if st.st_size:
                    try:
                        fcntl.ioctl(dst, FICLONE, src)
                    except OSError as exc:
                        if exc.errno in _CANNOT_CLONE:
                            raise CloneUnsupported(exc.errno, exc.strerror, relpath) from None
                        raise
                self._meta_fd(dst, st)
            finally:
                os.close(dst)
        finally:
            os.close(src)

    def _keep_pteroignore(self, root: str | os.PathLike[str], rules: IgnoreRules) -> None:
        """A ``.pteroignore`` that excludes itself is cloned all the same: the archive of
        the clone reads its rules from it."""
        if rules.empty or not rules.excludes(PTEROIGNORE):
            return
        root_fd = open_root(root)
        try:
            self._file(PTEROIGNORE, root_fd, PTEROIGNORE)
        except FileExistsError:
            pass
        finally:
            os.close(root_fd)

    def _meta_fd(self, fd: int, st: os.stat_result) -> None:
        if self.owned:
            os.fchown(fd, st.st_uid, st.st_gid)
        os.fchmod(fd, stat.S_IMODE(st.st_mode))  # after the chown, which clears set-id bits
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))

    def _meta(self, relpath: str, st: os.stat_result, *, follow: bool) -> None:
        if self.owned:
            os.chown(relpath, st.st_uid, st.st_gid, dir_fd=self.tree, follow_symlinks=follow)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(relpath, stat.S_IMODE(st.st_mode), dir_fd=self.tree)
        os.utime(
            relpath, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=self.tree, follow_symlinks=follow
        )
