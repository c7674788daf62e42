"""Safe, streaming restore of a backup archive into a server directory.

Its codec's reader (archive/codecs.py: gzip on a thread of its own) -> the tar reader
(archive/tarread.py) -> files written with ``os.write`` straight from the decompressed
buffer. Plain synchronous code for a worker thread.

The guard: every path is opened one component at a time relative to an open directory with
``O_NOFOLLOW``, so no symlink, whether already in the directory or created earlier by the same
archive, is ever followed. Names with ``..`` or a leading ``/``, links leaving the directory,
hard links to anything but a regular file inside it, and device or FIFO entries are skipped
with a log line. A file is written under a temporary name in its directory and renamed over
its final name once complete, so a failed restore never leaves a half-written file behind a
real name (the previous version, if any, stays until the new one is whole).

A truncating restore never deletes anything before the whole archive has been read and
verified (tar end marker, gzip CRC and length): it is extracted into a hidden staging
directory at the server root (same file system, so everything after is renames), and only
then are the old entries moved out and the new ones in (archive/staging.py). Until the swap
is committed any failure, a cancel, or a crash (then by :func:`recover_stagings`) puts the
old entries back; once it is, only the old entries are deleted, whatever happens.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from wingsbak import failpoint
from wingsbak.archive.codecs import GZIP, Codec
from wingsbak.archive.progress import Clock, ProgressThrottle
from wingsbak.archive.ratelimit import MIB, Cancelled, TokenBucket
from wingsbak.archive.staging import (
    STAGING_PREFIX,
    Recovered,
    Staging,
    recover_stagings,
    staging_label,
)
from wingsbak.archive.tarread import (
    DEVICES,
    DIRECTORY,
    GNU_DUMPDIR,
    GNU_SPARSE,
    HARDLINK,
    READ_CHUNK,
    REGULAR,
    SYMLINK,
    BadEntry,
    TarEntry,
    TarError,
    TarReader,
    iter_entries,
)
from wingsbak.errors import describe
from wingsbak.log import get_logger

log = get_logger(__name__)

__all__ = [
    "STAGING_PREFIX",
    "Cancelled",
    "NoSpace",
    "Recovered",
    "RestoreError",
    "RestoreProgress",
    "RestoreResult",
    "extract_archive",
    "open_server_root",
    "recover_stagings",
    "restore_archive_file",
]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# setuid, setgid and sticky never come back from an archive: a restore must not hand out
# privileges, whatever the archive says.
_MODE_MASK = 0o777
_NAME_MAX = 255
_STAGING_PREFIX_B = STAGING_PREFIX.encode()
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
# File names a progress report carries at most: a console shows a few a second, not all.
NAMES_PER_REPORT = 10


class RestoreError(Exception):
    """The restore failed: corrupt or truncated archive, unreadable source, or a write that
    failed in the destination. ``str()`` is one line meant for the operator."""


@dataclass(slots=True)
class RestoreProgress:
    bytes_read: int  # compressed bytes consumed from the source
    bytes_total: int  # compressed size when known (file size, Content-Length), else 0
    files: int  # entries restored so far
    bytes_written: int  # file data written into the destination
    files_written: int = 0  # regular files restored so far
    # Names of the first regular files restored since the previous report (at most
    # NAMES_PER_REPORT of them): what a console shows of a restore.
    names: tuple[str, ...] = ()

    @property
    def percent(self) -> float:
        if not self.bytes_total:
            return 0.0
        return min(100.0, 100.0 * self.bytes_read / self.bytes_total)


@dataclass(slots=True, frozen=True)
class RestoreResult:
    files: int  # regular files written
    directories: int
    symlinks: int
    hardlinks: int
    skipped: int  # entries refused by the guard or not restorable (each one logged)
    bytes_written: int  # file data written into the destination
    bytes_read: int  # compressed bytes read from the source


ProgressCallback = Callable[[RestoreProgress], None]


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class NoSpace(RestoreError):
    """The disk cannot hold the restored files beside the server's current ones."""


class _Skip(Exception):
    """This entry is not restored; the message says why (logged, never raised out)."""


class _CountingReader(io.RawIOBase):
    """Counts the compressed bytes pulled from the source, for progress."""

    def __init__(self, raw: _Readable) -> None:
        self.raw = raw
        self.count = 0

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        readinto = getattr(self.raw, "readinto", None)
        if readinto is not None:
            n: int = readinto(b) or 0
        else:
            data = self.raw.read(len(memoryview(b)))
            n = len(data)
            memoryview(b).cast("B")[:n] = data
        self.count += n
        return n

    def readable(self) -> bool:
        return True


def _show(name: bytes) -> str:
    return name.decode("utf-8", "backslashreplace")


def _split_name(name: bytes) -> list[bytes]:
    """The components of an archive name, or ``_Skip`` when it could leave the root."""
    if b"\x00" in name:  # only a pax record can carry one; no file system takes it
        raise _Skip("name contains a NUL byte")
    if name.startswith(b"/"):
        raise _Skip("absolute name")
    parts = [p for p in name.split(b"/") if p and p != b"."]
    if b".." in parts:
        raise _Skip("name contains '..'")
    if any(len(p) > _NAME_MAX for p in parts):
        # Refused here rather than by the kernel after the data was consumed, so one odd
        # name is skipped instead of failing the whole restore.
        raise _Skip(f"a name component is longer than {_NAME_MAX} bytes")
    return parts


def _check_symlink_target(parts: list[bytes], target: bytes) -> None:
    """A relative symlink may only point inside the root, judged by its text alone. An
    absolute one is restored as it is: it means a path in the game container's own mount
    namespace, and this restore never follows any link (nothing is written through it).

    Leading ``..`` climb through real directories (the symlink's own parents, which this
    restore opened with O_NOFOLLOW), so counting them is exact. A ``..`` after any other
    component could climb out of a symlink pointing elsewhere, where counting lies
    (``a/up -> ..`` then ``a/x -> up/../..``), so such targets are refused outright; the
    components that follow the leading ``..`` are either real directories or symlinks that
    passed this same test.
    """
    if not target:
        raise _Skip("empty symlink target")
    if b"\x00" in target:
        raise _Skip("symlink target contains a NUL byte")
    if target.startswith(b"/"):
        return
    comps = [c for c in target.split(b"/") if c and c != b"."]
    ups = 0
    while ups < len(comps) and comps[ups] == b"..":
        ups += 1
    if b".." in comps[ups:]:
        raise _Skip("symlink target with '..' after a name")
    if ups > len(parts) - 1:
        raise _Skip("symlink pointing outside the directory")


class _Dirs:
    """Open descriptors of the current parent chain, reused while the archive stays in one
    directory (archives list a directory's entries together)."""

    def __init__(self, root_fd: int, owner: tuple[int, int] | None) -> None:
        self.root_fd = root_fd
        self.owner = owner
        self.names: list[bytes] = []
        self.fds: list[int] = []

    def _drop(self, depth: int) -> None:
        while len(self.fds) > depth:
            self.names.pop()
            os.close(self.fds.pop())

    def close(self) -> None:
        self._drop(0)

    def forget(self, parts: list[bytes]) -> None:
        """``parts`` is about to be replaced: close any cached descriptor of it or below."""
        depth = len(parts)
        if len(self.names) >= depth and self.names[:depth] == parts:
            self._drop(depth - 1)

    def open(self, parts: list[bytes], replace_last: bool = False) -> int:
        """The directory ``parts``, created when missing, never through a symlink."""
        n = 0
        limit = min(len(parts), len(self.names))
        while n < limit and parts[n] == self.names[n]:
            n += 1
        if replace_last and n == len(parts):
            n -= 1  # re-check the entry itself: something may have replaced it
        self._drop(n)
        fd = self.fds[-1] if self.fds else self.root_fd
        for i in range(n, len(parts)):
            fd = _open_dir(fd, parts[i], self.owner, replace=replace_last and i == len(parts) - 1)
            self.names.append(parts[i])
            self.fds.append(fd)
        return fd


def _open_dir(parent: int, name: bytes, owner: tuple[int, int] | None, *, replace: bool) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        if not replace:
            raise _Skip(f"{_show(name)!r} on the way is a symlink or a file") from None
        # An explicit directory entry wins over a file or symlink of the same name (as GNU
        # tar does); the symlink itself is removed, never what it points to.
        log.info("restore_replacing_with_directory", name=_show(name))
        os.unlink(name, dir_fd=parent)
    try:
        os.mkdir(name, 0o755, dir_fd=parent)
    except FileExistsError:
        pass  # created meanwhile: the O_NOFOLLOW open below still decides
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _Skip(f"{_show(name)!r} is not a directory") from None
        raise
    if owner is not None:
        os.fchown(fd, *owner)  # also directories that have no entry of their own
    return fd


def _clear_way(parent: int, name: bytes) -> None:
    """Make room for a non-directory at ``name``: remove a file or symlink, or an empty
    directory; a directory with contents stays and the entry is skipped."""
    try:
        st = os.lstat(name, dir_fd=parent)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        try:
            os.rmdir(name, dir_fd=parent)
        except OSError:
            raise _Skip("a directory with contents has the same name") from None
    else:
        os.unlink(name, dir_fd=parent)


def open_server_root(dest: str | os.PathLike[str], *, create: bool = True) -> int:
    """The restore destination as an open directory, never through a symlink: a server root
    that is a symlink (or not a directory) is refused, since a restore through it would write
    (and a truncating one delete) wherever it points. Created when missing and ``create``."""
    path = os.fspath(dest)
    try:
        return os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        if not create:
            raise RestoreError(f"the server directory {path} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RestoreError(f"the server directory {path} is a symlink: refused") from None
        if exc.errno == errno.ENOTDIR:
            raise RestoreError(f"the server directory {path} is not a directory") from None
        raise RestoreError(f"cannot open {path}: {describe(exc, one_line=True)}") from exc
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with contextlib.suppress(FileExistsError):  # created meanwhile: the open decides
            os.mkdir(path, 0o755)
    except OSError as exc:
        raise RestoreError(f"cannot create {path}: {describe(exc, one_line=True)}") from exc
    return open_server_root(path, create=False)


def _check_space(staging: Staging, needed: int) -> None:
    """Fail before anything is written when the file system cannot hold ``needed`` more
    bytes (the restored tree, beside the server's current files)."""
    st = os.fstatvfs(staging.fd)
    free = st.f_bavail * st.f_frsize
    if needed > free:
        raise NoSpace(
            f"the disk cannot hold the restore beside the server's files ({needed} bytes "
            f"needed, {free} free); nothing was changed"
        )


class _Extractor:
    def __init__(
        self,
        reader: TarReader,
        root_fd: int,
        *,
        limiter: TokenBucket | None,
        progress: ProgressCallback | None,
        cancel: threading.Event | None,
        owner: tuple[int, int] | None,
        counter: _CountingReader,
        bytes_total: int,
        staging: Staging,
        clock: Clock = time.monotonic,
    ) -> None:
        self.reader = reader
        self.staging = staging
        self.root_fd = root_fd
        self.limiter = limiter
        self.progress = progress
        self.cancel = cancel
        self.owner = owner if owner is not None and os.geteuid() == 0 else None
        self.dirs = _Dirs(root_fd, self.owner)
        self.counter = counter
        self.bytes_total = bytes_total
        self.throttle = ProgressThrottle(clock=clock)
        self.dir_meta: dict[tuple[bytes, ...], tuple[int, int]] = {}
        self.stagings: dict[bytes, bool] = {}  # root names with the staging prefix: one?
        self.tmp_seq = 0
        self.files = self.directories = self.symlinks = self.hardlinks = 0
        self.skipped = 0
        self.bytes_written = 0
        self.names: list[list[bytes]] = []  # since the last report, at most NAMES_PER_REPORT

    # -- the tar stream ---------------------------------------------------------------

    def run(self) -> None:
        """Every entry, then the rest of the stream (a gzip CRC and length)."""
        try:
            while True:
                self._check()
                entry = next(self.reader, None)
                if entry is None:
                    return
                self._restore(entry)
        finally:
            self.dirs.close()

    def finish(self, root_fd: int) -> None:
        """Directory modes and times, once the entries are where they stay (``root_fd``)."""
        self.dirs = _Dirs(root_fd, self.owner)
        try:
            self._finish_directories()
        except OSError as exc:
            raise RestoreError(f"cannot set directory modes: {describe(exc)}") from exc
        finally:
            self.dirs.close()
        self._report()

    def _restore(self, entry: TarEntry) -> None:
        """Restore one entry; what it leaves of its data the reader skips."""
        try:
            if entry.unsupported:
                raise _Skip(entry.unsupported)
            self._entry(entry)
        except (_Skip, BadEntry) as why:
            self.skipped += 1
            log.warning("restore_entry_skipped", path=_show(entry.name), reason=str(why))
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise NoSpace(
                    f"the disk filled up while restoring {_show(entry.name)!r} "
                    f"({describe(exc, one_line=True)})"
                ) from exc
            raise RestoreError(f"cannot restore {_show(entry.name)!r}: {describe(exc)}") from exc

    def _entry(self, e: TarEntry) -> None:
        """Restore one entry (its data, if unused, is skipped by the reader)."""
        parts = _split_name(e.name)
        if not parts:
            return  # the root itself ("./"): its mode and owner stay as they are
        if self._is_staging(parts[0]):
            raise _Skip("the name is a restore's staging in the server directory")
        kind = e.type
        if kind in REGULAR or kind == GNU_SPARSE:
            self._file(parts, e)
            return
        if kind in (DIRECTORY, GNU_DUMPDIR):
            self.dirs.open(parts, replace_last=True)
            self.dir_meta[tuple(parts)] = (e.mode & _MODE_MASK, e.mtime)
            self.directories += 1
        elif kind == SYMLINK:
            self._symlink(parts, e)
        elif kind == HARDLINK:
            self._hardlink(parts, e)
        elif kind in DEVICES:
            raise _Skip(f"{DEVICES[kind]} entries are never restored")
        else:
            raise _Skip(f"unsupported entry type {chr(kind)!r}")
        self._tick()

    def _is_staging(self, first: bytes) -> bool:
        """Whether the root's entry ``first`` is this restore's staging or another marked one
        (a player's folder with the same prefix is restored like any other)."""
        if not first.startswith(_STAGING_PREFIX_B):
            return False
        if first == self.staging.name:
            return True
        found = self.stagings.get(first)
        if found is None:
            found = staging_label(self.staging.root_fd, first) is not None
            self.stagings[first] = found
        return found

    # -- one entry each -----------------------------------------------------------------

    def _parent(self, parts: list[bytes]) -> int:
        self.dirs.forget(parts)
        return self.dirs.open(parts[:-1])

    def _file(self, parts: list[bytes], e: TarEntry) -> None:
        regions = e.sparse_regions() if e.sparse is not None else None
        parent = self._parent(parts)
        tmp_dir, tmp, fd = self._create_temp(parent)
        ok = False
        try:
            if regions is None:
                self._copy(fd, e, e.size)
            else:
                # Each region's data at its offset; the gaps stay holes, and the file gets
                # its real size even when it ends in a hole.
                for offset, length in regions:
                    os.lseek(fd, offset, os.SEEK_SET)
                    self._copy(fd, e, length)
                os.ftruncate(fd, e.real_size)
            os.fchmod(fd, e.mode & _MODE_MASK)
            if self.owner is not None:
                os.fchown(fd, *self.owner)
            os.utime(fd, ns=(e.mtime, e.mtime))
            os.close(fd)
            fd = -1
            self._rename_into_place(tmp_dir, tmp, parent, parts[-1])
            ok = True
            failpoint.hit("restore-extracting")
        finally:
            if fd >= 0:
                os.close(fd)
            if not ok:
                try:
                    os.unlink(tmp, dir_fd=tmp_dir)
                except OSError:
                    pass
        self.files += 1
        if len(self.names) < NAMES_PER_REPORT:
            self.names.append(parts)
        self._tick()

    def _create_temp(self, parent: int) -> tuple[int, bytes, int]:
        """A new file in the staging directory, where recovery finds it after a crash; in
        ``parent`` itself when that is another file system (a mount inside the server)."""
        tmp_dir = self.staging.fd
        if os.fstat(parent).st_dev != self.staging.dev:
            tmp_dir = parent
        while True:
            self.tmp_seq += 1
            tmp = b"%s%d-%d" % (_STAGING_PREFIX_B, os.getpid(), self.tmp_seq)
            try:
                return tmp_dir, tmp, os.open(tmp, _NEW_FILE_FLAGS, 0o600, dir_fd=tmp_dir)
            except FileExistsError:
                continue  # a leftover of an earlier run, or a trap: pick another name

    def _rename_into_place(self, tmp_dir: int, tmp: bytes, parent: int, name: bytes) -> None:
        # rename() replaces a file or a symlink itself, atomically, and never follows it.
        try:
            os.rename(tmp, name, src_dir_fd=tmp_dir, dst_dir_fd=parent)
        except (IsADirectoryError, FileExistsError, OSError) as exc:
            if exc.errno not in (errno.EISDIR, errno.EEXIST, errno.ENOTEMPTY):
                raise
            _clear_way(parent, name)
            os.rename(tmp, name, src_dir_fd=tmp_dir, dst_dir_fd=parent)

    def _copy(self, fd: int, entry: TarEntry, size: int) -> None:
        limiter, write = self.limiter, os.write
        remaining = size
        while remaining:
            view = entry.chunk(remaining)
            n = len(view)
            if limiter is not None:
                limiter.consume(n)
            while view:
                view = view[write(fd, view) :]
            remaining -= n
            self.bytes_written += n
            if n >= READ_CHUNK // 2:
                self._check()

    def _symlink(self, parts: list[bytes], e: TarEntry) -> None:
        _check_symlink_target(parts, e.linkname)
        parent = self._parent(parts)
        name = parts[-1]
        try:
            os.symlink(e.linkname, name, dir_fd=parent)
        except FileExistsError:
            _clear_way(parent, name)
            os.symlink(e.linkname, name, dir_fd=parent)
        if self.owner is not None:
            os.chown(name, *self.owner, dir_fd=parent, follow_symlinks=False)
        os.utime(name, ns=(e.mtime, e.mtime), dir_fd=parent, follow_symlinks=False)
        self.symlinks += 1

    def _hardlink(self, parts: list[bytes], e: TarEntry) -> None:
        target = _split_name(e.linkname)
        if not target:
            raise _Skip("hard link to the directory itself")
        if self._is_staging(target[0]):
            raise _Skip("hard link into a restore's staging")
        try:
            src_parent = self.dirs.open(target[:-1])
            src_st = os.lstat(target[-1], dir_fd=src_parent)
        except (FileNotFoundError, _Skip):
            raise _Skip("hard link to a missing file") from None
        if not stat.S_ISREG(src_st.st_mode):
            raise _Skip("hard link to something other than a regular file")
        # Link from the open source directory; the descriptor stays valid even when the
        # chain cache moves on to the destination's parent.
        src_fd = os.dup(src_parent)
        try:
            parent = self._parent(parts)
            name = parts[-1]
            try:
                # follow_symlinks=False: linkat without AT_SYMLINK_FOLLOW; a symlink swapped
                # in meanwhile would be linked itself, not what it points to.
                os.link(
                    target[-1], name, src_dir_fd=src_fd, dst_dir_fd=parent, follow_symlinks=False
                )
            except FileExistsError:
                if os.path.samestat(src_st, os.lstat(name, dir_fd=parent)):
                    pass  # already that very file (restored over itself)
                else:
                    _clear_way(parent, name)
                    os.link(
                        target[-1],
                        name,
                        src_dir_fd=src_fd,
                        dst_dir_fd=parent,
                        follow_symlinks=False,
                    )
        finally:
            os.close(src_fd)
        self.hardlinks += 1

    # -- after the stream ---------------------------------------------------------------

    def _finish_directories(self) -> None:
        """Modes and mtimes of directories, deepest first: entries created inside a directory
        change its mtime, and a read-only mode must not stop the restore of its contents."""
        self.dirs.close()
        for parts_t, (mode, mtime) in sorted(self.dir_meta.items(), key=lambda kv: -len(kv[0])):
            parts = list(parts_t)
            try:
                parent = self.dirs.open(parts[:-1])
                fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
            except (OSError, _Skip):
                continue  # replaced later in the archive by a file or a symlink
            try:
                os.fchmod(fd, mode)
                if self.owner is not None:
                    os.fchown(fd, *self.owner)
                os.utime(fd, ns=(mtime, mtime))
            finally:
                os.close(fd)

    # -- bookkeeping --------------------------------------------------------------------

    def _check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("restore cancelled")

    def _tick(self) -> None:
        if self.progress is not None and self.throttle.due():
            self._report()

    def _report(self) -> None:
        if self.progress is not None:
            names = tuple(_show(b"/".join(parts)) for parts in self.names)
            self.names = []
            self.progress(
                RestoreProgress(
                    self.counter.count,
                    self.bytes_total,
                    self.entries,
                    self.bytes_written,
                    self.files,
                    names,
                )
            )

    @property
    def entries(self) -> int:
        return self.files + self.directories + self.symlinks + self.hardlinks

    def result(self) -> RestoreResult:
        return RestoreResult(
            files=self.files,
            directories=self.directories,
            symlinks=self.symlinks,
            hardlinks=self.hardlinks,
            skipped=self.skipped,
            bytes_written=self.bytes_written,
            bytes_read=self.counter.count,
        )


def extract_archive(
    fileobj: _Readable,
    dest: str | os.PathLike[str],
    *,
    truncate: bool = False,
    write_limit: float = 0,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    owner: tuple[int, int] | None = None,
    bytes_total: int = 0,
    expected_size: int = 0,
    label: str = "",
    clock: Clock = time.monotonic,
    on_commit: Callable[[], None] | None = None,
    codec: Codec = GZIP,
) -> RestoreResult:
    """Restore the archive read from ``fileobj`` (compressed with ``codec``) into the
    directory ``dest``.

    ``dest`` is created when missing and refused when it is a symlink. With ``truncate`` its
    contents are replaced, and only once the whole archive has been read and verified: the
    restore is staged in ``dest/.wingsbak-restore-<label>`` (``label``: the process id when
    empty) and swapped in, so on any failure before the swap is committed ``dest`` is left as
    it was; ``on_commit`` is called once it is (it must not raise), before the old entries
    are deleted. ``expected_size``
    (the unpacked size, when known) lets a truncating restore fail at once when the disk
    cannot hold it beside the current files. ``write_limit`` caps the file data written, in
    MiB/s (0: unlimited). ``owner`` (uid, gid) is applied to everything restored when
    running as root. ``bytes_total`` (the compressed size, when known) only feeds
    ``progress``, called at most every 0.25 s of ``clock`` and once at the end.

    Raises :class:`RestoreError` (corrupt or truncated archive, unreadable source, failed
    write; :class:`NoSpace` for a full disk) or :class:`Cancelled`. Entries refused by the
    guard are logged and counted in ``skipped``; they do not fail the restore.
    """
    root_fd = open_server_root(dest)
    try:
        try:
            staging = Staging(root_fd, label or str(os.getpid()))
        except OSError as exc:
            where = os.fspath(dest)
            raise RestoreError(f"cannot stage the restore in {where}: {describe(exc)}") from exc
        try:
            counter = _CountingReader(fileobj)
            limiter = TokenBucket(write_limit * MIB, cancel) if write_limit > 0 else None
            unpacked = codec.open_reader(counter)
            try:
                reader = iter_entries(unpacked, passthrough=(RestoreError,))
                with _as_restore_error():
                    # Not even the staging is filled before the source proved to be a tar.
                    reader.check_start()
                    if truncate:
                        _check_space(staging, expected_size)
                    extractor = _Extractor(
                        reader,
                        staging.tree() if truncate else root_fd,
                        limiter=limiter,
                        progress=progress,
                        cancel=cancel,
                        owner=owner,
                        counter=counter,
                        bytes_total=bytes_total,
                        staging=staging,
                        clock=clock,
                    )
                    extractor.run()
            finally:
                unpacked.close()
            if truncate:
                # The archive is whole and verified: only now does the server lose files.
                if cancel is not None and cancel.is_set():
                    raise Cancelled("restore cancelled")
                try:
                    staging.swap_in()
                except OSError as exc:
                    raise RestoreError(
                        f"cannot move the restored files into place: {describe(exc, one_line=True)}"
                    ) from exc
            extractor.finish(root_fd)
            if truncate:
                try:
                    staging.commit()
                except OSError as exc:
                    raise RestoreError(f"cannot commit the restore: {describe(exc)}") from exc
        except BaseException as exc:
            if isinstance(exc, NoSpace):
                log.error("restore_no_space", dest=os.fspath(dest), error=str(exc))
            if not staging.committed:
                _close_staging(staging, dest, "restore_staging_not_undone")
                raise
        try:
            if on_commit is not None and staging.committed:
                on_commit()
        finally:
            # Committed: the old entries are deleted. A failure leaves the staging marked as
            # committed, and recovery finishes it.
            _close_staging(staging, dest, "restore_staging_not_removed")
    finally:
        os.close(root_fd)
    return extractor.result()


@contextlib.contextmanager
def _as_restore_error() -> Iterator[None]:
    """The reader's refusal of a corrupt or truncated archive, as a failed restore."""
    try:
        yield
    except TarError as exc:
        raise RestoreError(str(exc)) from exc


def _close_staging(staging: Staging, dest: str | os.PathLike[str], event: str) -> None:
    try:
        staging.close()
    except OSError as exc:
        log.error(
            event,
            dest=os.fspath(dest),
            staging=staging.name.decode(errors="replace"),
            error=describe(exc, one_line=True),
        )


def restore_archive_file(
    path: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    **options: object,
) -> RestoreResult:
    """:func:`extract_archive` of a local archive file (``bytes_total`` is its size,
    ``expected_size`` what its codec says of it: the gzip trailer)."""
    try:
        f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below, after the codec's reader
    except OSError as exc:
        raise RestoreError(f"cannot open {os.fspath(path)}: {describe(exc)}") from exc
    with f:
        options.setdefault("bytes_total", os.fstat(f.fileno()).st_size)
        codec = options.get("codec", GZIP)
        assert isinstance(codec, Codec)
        options.setdefault("expected_size", codec.unpacked_size(f))
        return extract_archive(f, dest, **options)  # type: ignore[arg-type]
