"""One path of a backup (a file, a symlink or a folder with all it holds) restored into a
server's directory: built under a temporary name beside its destination, then renamed into
place, so the live path only ever holds the old version or the whole new one (a folder is
swapped with ``renameat2(RENAME_EXCHANGE)``, then the old one removed). Blocking code.

The same guard as a full restore (archive/extract.py): the server root is opened without
following a symlink, every folder on the way is opened with ``O_NOFOLLOW`` (created when
missing), nothing is written through a link, and a relative symlink of the backup that
would point out of the server is left out. Links are restored as links, never followed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import json
import os
import re
import secrets
import shutil
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wingsbak import failpoint
from wingsbak.archive.extract import open_server_root
from wingsbak.browse.model import BackupView, Entry
from wingsbak.log import get_logger
from wingsbak.statefile import write_json_atomic

__all__ = [
    "RECORD",
    "Exists",
    "PendingTemps",
    "RestoredPath",
    "free_copy_name",
    "recover_left",
    "restore_path",
    "size_on_disk",
    "size_to_restore",
]

log = get_logger(__name__)

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1024 * 1024
TEMP_PREFIX = ".wingsbak-part-"
_RENAME_EXCHANGE = 2
_seq = itertools.count()


class Exists(Exception):
    """The destination exists (a copy never overwrites; a folder never replaces a file)."""


@dataclass(slots=True)
class RestoredPath:
    files: int = 0
    folders: int = 0
    symlinks: int = 0
    skipped: int = 0


def _temp_name() -> str:
    return f"{TEMP_PREFIX}{os.getpid()}-{next(_seq)}-{secrets.token_hex(4)}"


RECORD = ".wingsbak-browse-restores.json"  # the daemon's, in the backup directory
_RECORD_OF = re.compile(r"^\.wingsbak-browse-restores-(\d+)\.json$")  # a command line run's


class PendingTemps:
    """The temporaries of single-path restores under way, on disk before each is made and
    until it is gone, so that a start after a kill removes what one left: a part-built copy
    (the live path untouched) or, after a folder's swap, the old folder it replaced (the
    restore rolled forward). Nothing of a server is ever left under a hidden name.

    The daemon keeps :data:`RECORD`; a command line run (``restore --only``) its own record
    beside it, named with its process id (:meth:`of_this_process`), which the next start of
    either removes once that process is gone (:func:`recover_left`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, Any]] = {}

    @classmethod
    def of_this_process(cls, directory: Path) -> PendingTemps:
        """A command line run's record, written at once (empty): :class:`OSError` where
        ``directory`` takes none."""
        pending = cls(directory / f".wingsbak-browse-restores-{os.getpid()}.json")
        pending._save()
        return pending

    def _save(self) -> None:
        write_json_atomic(self.path, self._pending)

    @contextmanager
    def holding(self, root: str | os.PathLike[str], folder: list[str], temp: str) -> Iterator[None]:
        with self._lock:
            self._pending[temp] = {"root": os.fspath(root), "folder": folder}
            self._save()
        try:
            yield
        finally:
            with self._lock:
                self._pending.pop(temp, None)
                self._save()

    def forget(self) -> None:
        """The run is over with nothing under way: its record goes."""
        with self._lock:
            if not self._pending:
                self.path.unlink(missing_ok=True)

    def recover(self) -> int:
        """Blocking, at start: remove every temporary an earlier run left; how many."""
        try:
            left = json.loads(self.path.read_text())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            log.error("browse_restore_record_unreadable", path=str(self.path), error=str(exc))
            return 0
        removed = 0
        for temp, place in left.items() if isinstance(left, dict) else ():
            if not (isinstance(place, dict) and temp.startswith(TEMP_PREFIX) and "/" not in temp):
                continue
            try:
                with _parent_of(place["root"], [*place["folder"], temp], None, create=False) as fd:
                    _remove(fd, temp)
                removed += 1
                log.warning("browse_restore_interrupted_cleaned", root=place["root"], temp=temp)
            except FileNotFoundError:
                pass
            except Exception as exc:  # a server gone or its root replaced: logged, not fatal
                log.error("browse_restore_temp_not_removed", temp=temp, error=str(exc))
        with self._lock:
            self._save()
        return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: a number beyond any pid
        return False
    except PermissionError:  # another user's
        return True
    return True


def recover_left(directory: Path) -> int:
    """Blocking: what command line runs now gone left in ``directory`` (their records) is
    removed, and so are their records; how many temporaries. A run still going is left be."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    removed = 0
    for name in names:
        match = _RECORD_OF.match(name)
        # One named with this process's id is a gone run's that had it before: this
        # process writes its own record only after this look.
        if match is None or (int(match[1]) != os.getpid() and _alive(int(match[1]))):
            continue
        record = PendingTemps(directory / name)
        try:
            removed += record.recover()
            record.forget()
        except OSError as exc:  # not a record (a folder) or not ours to rewrite: the next one
            log.error("browse_restore_record_not_recovered", path=str(record.path),
                      error=str(exc))
    return removed


@contextmanager
def _parent_of(
    root: str | os.PathLike[str],
    parts: list[str],
    owner: tuple[int, int] | None,
    *,
    create: bool = True,
) -> Iterator[int]:
    """The destination's folder, open, never through a symlink; missing folders created
    (with ``create``; else :class:`FileNotFoundError`)."""
    fd = open_server_root(root, create=False)
    try:
        for name in parts[:-1]:
            try:
                nxt = os.open(name, _DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, 0o755, dir_fd=fd)
                    if owner is not None:
                        os.chown(name, *owner, dir_fd=fd, follow_symlinks=False)
                except FileExistsError:
                    pass
                nxt = os.open(name, _DIR, dir_fd=fd)
            os.close(fd)
            fd = nxt
        yield fd
    finally:
        os.close(fd)


def _link_ok(depth: int, target: str) -> bool:
    """As a full restore judges a symlink: absolute kept, relative only inside the root."""
    if not target or "\x00" in target:
        return False
    if target.startswith("/"):
        return True
    comps = [c for c in target.split("/") if c and c != "."]
    ups = len(list(itertools.takewhile(lambda c: c == "..", comps)))
    return ".." not in comps[ups:] and ups <= depth


class _Builder:
    def __init__(self, view: BackupView, owner: tuple[int, int] | None, depth: int) -> None:
        self.view = view
        self.owner = owner
        self.depth = depth  # folders between the server root and the destination
        self.done = RestoredPath()

    def entry(self, parent: int, name: str, e: Entry, depth: int) -> None:
        """``e`` as ``name`` in ``parent`` (a name nothing holds yet)."""
        if e.kind == "file":
            fd = os.open(name, _NEW, 0o600, dir_fd=parent)
            try:
                with self.view.open(e.path) as src:
                    while data := src.read(_CHUNK):
                        view = memoryview(data)
                        while view:
                            view = view[os.write(fd, view):]
                self._finish(fd, e)
            finally:
                os.close(fd)
            self.done.files += 1
        elif e.kind == "symlink" and _link_ok(depth, e.linkname):
            os.symlink(e.linkname, name, dir_fd=parent)
            if self.owner is not None:
                os.chown(name, *self.owner, dir_fd=parent, follow_symlinks=False)
            ns = int(e.mtime * 1e9)
            os.utime(name, ns=(ns, ns), dir_fd=parent, follow_symlinks=False)
            self.done.symlinks += 1
        elif e.kind == "dir":
            os.mkdir(name, 0o700, dir_fd=parent)
            fd = os.open(name, _DIR, dir_fd=parent)
            try:
                for child in self.view.listdir(e.path):
                    self.entry(fd, child.name, child, depth + 1)
                self._finish(fd, e)
            finally:
                os.close(fd)
            self.done.folders += 1
        else:
            log.info("browse_restore_skipped", path=e.path, kind=e.kind, target=e.linkname)
            self.done.skipped += 1

    def _finish(self, fd: int, e: Entry) -> None:
        os.fchmod(fd, e.mode & 0o7777)
        if self.owner is not None:
            os.fchown(fd, *self.owner)
        ns = int(e.mtime * 1e9)
        os.utime(fd, ns=(ns, ns))


def _exchange(parent: int, a: str, b: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(parent, a.encode(), parent, b.encode(), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), b)


def _remove(parent: int, name: str) -> None:
    st = os.lstat(name, dir_fd=parent)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=parent)
    else:
        os.unlink(name, dir_fd=parent)


def restore_path(
    view: BackupView,
    source: str,
    root: str | os.PathLike[str],
    dest: list[str],
    *,
    owner: tuple[int, int] | None,
    overwrite: bool = True,
    pending: PendingTemps | None = None,
) -> RestoredPath:
    """``source`` of the backup as ``root/<dest parts>`` (parts already checked: no ``..``,
    none empty). ``overwrite`` False: :class:`Exists` rather than replace anything."""
    entry = view.stat(source)
    with _parent_of(root, dest, owner) as parent:
        builder = _Builder(view, owner, len(dest) - 1)
        temp = _temp_name()
        held = pending.holding(root, dest[:-1], temp) if pending else contextlib.nullcontext()
        with held:
            try:
                builder.entry(parent, temp, entry, len(dest) - 1)
                if builder.done.skipped and not _exists(parent, temp):
                    return builder.done  # the one entry could not be restored (logged)
                failpoint.hit("browse-restore-built")
                _place(parent, temp, dest[-1], entry.kind == "dir", overwrite)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    _remove(parent, temp)
                raise
        return builder.done


def _exists(parent: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=parent)
    except FileNotFoundError:
        return False
    return True


def _place(parent: int, temp: str, name: str, is_dir: bool, overwrite: bool) -> None:
    try:
        old = os.lstat(name, dir_fd=parent)
    except FileNotFoundError:
        old = None
    if old is not None and (not overwrite or stat.S_ISDIR(old.st_mode) != is_dir):
        raise Exists(name)
    if old is None:
        if is_dir:
            os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)  # no-replace below
        else:
            try:  # link(2) never replaces: a name taken meanwhile stays as it is
                os.link(temp, name, src_dir_fd=parent, dst_dir_fd=parent, follow_symlinks=False)
            except FileExistsError:
                raise Exists(name) from None
            os.unlink(temp, dir_fd=parent)
        return
    if is_dir:
        _exchange(parent, temp, name)
        failpoint.hit("browse-restore-swapped")
        _remove(parent, temp)  # the old folder, now under the temporary name
    else:
        os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)  # atomic, never follows



def free_copy_name(
    root: str | os.PathLike[str], folder: list[str], names: list[str],
    owner: tuple[int, int] | None,
) -> str:
    """The first of ``names`` that nothing in ``root/<folder>`` holds (lstat, as Wings'
    findCopySuffix looks); the folder is created when missing."""
    with _parent_of(root, [*folder, "-"], owner) as parent:
        for name in names:
            try:
                os.lstat(name, dir_fd=parent)
            except FileNotFoundError:
                return name
    raise Exists(names[-1])


def size_to_restore(view: BackupView, source: str) -> int:
    """Bytes of the files a restore of ``source`` writes."""
    return sum(e.size for e in view.walk(source) if e.kind == "file")


def size_on_disk(root: str | os.PathLike[str], parts: list[str]) -> int:
    """Bytes of the regular files at ``root/<parts>`` (``[]``: the whole root), each inode
    once, never through a symlink: what Wings counts as a server's disk usage. 0 for a path
    that is missing or has a symlink on the way."""
    seen: set[tuple[int, int]] = set()
    total = 0

    def count(st: os.stat_result) -> None:
        nonlocal total
        if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size

    name = parts[-1] if parts else "."
    try:
        with _parent_of(root, parts or [name], None, create=False) as parent:
            st = os.lstat(name, dir_fd=parent)
            if not stat.S_ISDIR(st.st_mode):
                count(st)
                return total
            for _path, _dirs, files, fd in os.fwalk(name, dir_fd=parent):
                for f in files:
                    with contextlib.suppress(FileNotFoundError):
                        count(os.lstat(f, dir_fd=fd))
    except (FileNotFoundError, NotADirectoryError) as exc:
        if not parts:
            raise
        log.debug("browse_size_unknown", path="/".join(parts), error=str(exc))
    except OSError as exc:
        if not parts or exc.errno != errno.ELOOP:
            raise
    return total
