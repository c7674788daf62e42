"""A restore's staging directory: its swap into the server root, its commit, its recovery.

``<root>/.wingsbak-restore-<label>`` (``-<n>`` added when a player's entry has that name),
mode 0700, on the server's own file system so that everything is a rename:

- ``.wingsbak-staging``, the marker, written and fsync'd right after the mkdir. Only a
  directory holding it (a regular file of the daemon's own uid naming the label) is a
  staging: backups leave it out and recovery acts on it. A player's folder with the same
  prefix is an ordinary folder, backed up and never touched.
- the temporary files of files being restored; for a truncating restore ``tree/`` (the new
  tree), ``names`` (its top-level names), ``old/`` (the root's entries, moved out),
  ``swapping/`` (every old entry is in ``old/``: the root now takes the restored ones) and
  ``committed/`` (every restored entry is in the root: the restore is done).

Everything that ends a staging, success, failure, or recovery after a kill, reads that state
and does the same: committed, ``old/`` is deleted and the restored tree stays (roll forward);
otherwise the restored entries named in ``names`` go back to ``tree/`` and the old ones back
to the root (undo). A process that takes a name in the root meanwhile (an SFTP upload: Wings
does not hold it) never makes either fail: its entry goes to a visible name beside it,
``<name>.wingsbak-conflict[-<n>]``, with a ``restore_newcomer_kept`` log line.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import stat
from collections.abc import Collection
from dataclasses import dataclass

from wingsbak import failpoint
from wingsbak.log import get_logger

log = get_logger(__name__)

__all__ = [
    "CONFLICT_SUFFIX",
    "MARKER",
    "STAGING_PREFIX",
    "Recovered",
    "Staging",
    "recover_stagings",
    "staging_label",
    "staging_left",
]

STAGING_PREFIX = ".wingsbak-restore-"
MARKER = ".wingsbak-staging"
CONFLICT_SUFFIX = ".wingsbak-conflict"
_PREFIX_B = STAGING_PREFIX.encode()
_MARKER_B = MARKER.encode()
_CONFLICT_B = CONFLICT_SUFFIX.encode()
_MAGIC = b"wingsbak restore staging\n"
# Backup uuids (the daemon) and process ids (the command line).
_LABEL = re.compile(rb"[0-9A-Za-z][0-9A-Za-z-]{0,63}")
_TREE, _OLD, _NAMES = b"tree", b"old", b"names"
_SWAPPING, _COMMITTED = b"swapping", b"committed"
# What an older version's staging (no marker) may hold: its parts and temporary files.
_LAYOUT = frozenset({_TREE, _OLD, _NAMES, _SWAPPING, _COMMITTED, _MARKER_B})
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted under a file's name must not hang the walk.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_NAME_MAX = 255
# How often a name is taken back from a process that keeps recreating it before giving up.
_CLASH_RETRIES = 100
_RENAME_NOREPLACE = 1


def _load_renameat2() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()


def rename_noreplace(src_dir: int, src: bytes, dst_dir: int, dst: bytes) -> None:
    """rename() that raises :class:`FileExistsError` rather than replace what is at ``dst``
    (plain rename() silently replaces a file or an empty directory)."""
    if _renameat2 is not None:
        if _renameat2(src_dir, src, dst_dir, dst, _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):  # EINVAL: a file system without the flag
            raise OSError(err, os.strerror(err), os.fsdecode(src))
    # Checked then renamed: a name taken in between is replaced when it is a file or an
    # empty directory, and refused (ENOTEMPTY) when it is a directory with contents.
    try:
        os.lstat(dst, dir_fd=dst_dir)
    except FileNotFoundError:
        try:
            os.rename(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                raise
        else:
            return
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(dst))


def _show(name: bytes) -> str:
    return name.decode("utf-8", "backslashreplace")


def _names(dir_fd: int) -> list[bytes]:
    with os.scandir(dir_fd) as it:
        return [os.fsencode(e.name) for e in it]


def _exists(name: bytes, dir_fd: int) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def _is_dir(name: bytes, dir_fd: int) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(name, dir_fd=dir_fd).st_mode)
    except FileNotFoundError:
        return False


def _marker_label(fd: int) -> bytes | None:
    try:
        m = os.open(_MARKER_B, _READ_FLAGS, dir_fd=fd)
    except OSError:
        return None
    try:
        st = os.fstat(m)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_size > 256:
            return None
        data = os.read(m, 257)
    except OSError:
        return None
    finally:
        os.close(m)
    if not data.startswith(_MAGIC) or not data.endswith(b"\n"):
        return None
    label = data[len(_MAGIC) : -1]
    return label if _LABEL.fullmatch(label) else None


def _named_for(name: bytes, label: bytes) -> bool:
    rest = name[len(_PREFIX_B) :]
    if rest == label:
        return True
    suffix = rest[len(label) + 1 :]
    return rest.startswith(label + b"-") and suffix.isdigit() and not suffix.startswith(b"0")


def staging_label(parent_fd: int, name: str | bytes) -> str | None:
    """The label of the staging ``name`` in the directory ``parent_fd``, or None when
    ``name`` is not a staging this daemon made (a player's folder, a symlink, no marker)."""
    name_b = os.fsencode(name)
    if not name_b.startswith(_PREFIX_B):
        return None
    try:
        fd = os.open(name_b, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError:
        return None
    try:
        label = _marker_label(fd)
    finally:
        os.close(fd)
    if label is None or not _named_for(name_b, label):
        return None
    return label.decode()


def _move_aside(root_fd: int, name: bytes) -> None:
    """What a process created at ``name`` in the root goes to a visible name beside it."""
    for n in range(1, 1000):
        suffix = _CONFLICT_B if n == 1 else b"%s-%d" % (_CONFLICT_B, n)
        aside = name[: _NAME_MAX - len(suffix)] + suffix
        try:
            rename_noreplace(root_fd, name, root_fd, aside)
        except FileExistsError:
            continue
        except FileNotFoundError:
            return  # gone by itself
        log.warning("restore_newcomer_kept", name=_show(name), kept_as=_show(aside))
        return
    raise FileExistsError(errno.EEXIST, "no free name to keep it under", _show(name))


def _move_into_root(src_fd: int, name: bytes, root_fd: int) -> None:
    """``name`` from ``src_fd`` into the root, under its own name: an entry that took the
    name meanwhile is moved aside first, however often it comes back (up to a limit)."""
    for _ in range(_CLASH_RETRIES):
        try:
            rename_noreplace(src_fd, name, root_fd, name)
            return
        except FileExistsError:
            pass
        if staging_label(root_fd, name) is not None:
            raise FileExistsError(errno.EEXIST, "a restore's staging has the name", _show(name))
        _move_aside(root_fd, name)
    raise FileExistsError(errno.EEXIST, "a process keeps recreating it", _show(name))


def _write_file(dir_fd: int, name: bytes, data: bytes) -> None:
    fd = os.open(name, _NEW_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


class Staging:
    """A new staging directory in the open server root ``root_fd``, marked as the daemon's.
    A marked staging of the same label that is already there (a run that died) is finished
    first; a player's entry of that name is left alone and another name is taken."""

    def __init__(self, root_fd: int, label: str) -> None:
        if not _LABEL.fullmatch(label.encode()):
            raise ValueError(f"not a staging label: {label!r}")
        self.root_fd = root_fd
        self.label = label
        self.name = self._make(label.encode())
        self.fd = os.open(self.name, _DIR_FLAGS, dir_fd=root_fd)
        self.dev = os.fstat(self.fd).st_dev
        self.tree_fd = -1
        self.committed = False

    def _make(self, label: bytes) -> bytes:
        base = _PREFIX_B + label
        for n in range(1, 100):
            name = base if n == 1 else b"%s-%d" % (base, n)
            try:
                os.mkdir(name, 0o700, dir_fd=self.root_fd)
            except FileExistsError:
                if staging_label(self.root_fd, name) != label.decode():
                    continue
                _finish(self.root_fd, name)
                try:
                    os.mkdir(name, 0o700, dir_fd=self.root_fd)
                except FileExistsError:
                    continue
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=self.root_fd)
                try:
                    _write_file(fd, _MARKER_B, _MAGIC + label + b"\n")
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.fsync(self.root_fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    shutil.rmtree(name, dir_fd=self.root_fd)
                raise
            return name
        raise FileExistsError(errno.EEXIST, "no free name for the restore's staging", _show(base))

    def tree(self) -> int:
        os.mkdir(_TREE, 0o755, dir_fd=self.fd)
        self.tree_fd = os.open(_TREE, _DIR_FLAGS, dir_fd=self.fd)
        return self.tree_fd

    def swap_in(self) -> None:
        """Move the root's entries into ``old``, then the restored tree's into the root."""
        names = sorted(_names(self.tree_fd))
        _write_file(self.fd, _NAMES, b"".join(n + b"\0" for n in names))
        os.mkdir(_OLD, 0o700, dir_fd=self.fd)
        os.fsync(self.fd)
        old_fd = os.open(_OLD, _DIR_FLAGS, dir_fd=self.fd)
        try:
            moved = 0
            for name in _names(self.root_fd):
                if name == self.name or staging_label(self.root_fd, name) is not None:
                    continue
                try:
                    os.rename(name, name, src_dir_fd=self.root_fd, dst_dir_fd=old_fd)
                except FileNotFoundError:
                    continue  # gone since the listing
                moved += 1
                if moved == 1:
                    failpoint.hit("restore-moving-out")
            os.fsync(old_fd)
            os.fsync(self.root_fd)
        finally:
            os.close(old_fd)
        os.mkdir(_SWAPPING, 0o700, dir_fd=self.fd)
        os.fsync(self.fd)
        failpoint.hit("restore-between-halves")
        for i, name in enumerate(names):
            _move_into_root(self.tree_fd, name, self.root_fd)
            if i == 0:
                failpoint.hit("restore-moving-in")
        os.fsync(self.root_fd)

    def commit(self) -> None:
        """The restored tree is in place: from here on a crash finishes the restore (the old
        entries are deleted) instead of undoing it. Durable before anything is deleted."""
        os.mkdir(_COMMITTED, 0o700, dir_fd=self.fd)
        os.fsync(self.fd)
        self.committed = True
        failpoint.hit("restore-committed")

    def close(self) -> None:
        """End the staging as its state says: committed, the old entries are deleted;
        otherwise they are all put back. Then it is removed."""
        if self.tree_fd >= 0:
            os.close(self.tree_fd)
            self.tree_fd = -1
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        _finish(self.root_fd, self.name)


def _finish(root_fd: int, name: bytes) -> bool:
    """Roll the staging ``name`` forward (True: it was committed) or undo it (False), then
    remove it."""
    fd = os.open(name, _DIR_FLAGS, dir_fd=root_fd)
    try:
        committed = _is_dir(_COMMITTED, fd)
        if committed:
            _remove_old(fd)
        else:
            _undo(root_fd, fd)
    finally:
        os.close(fd)
    shutil.rmtree(name, dir_fd=root_fd)
    return committed


def _committed(root_fd: int, name: bytes) -> bool:
    fd = os.open(name, _DIR_FLAGS, dir_fd=root_fd)
    try:
        return _is_dir(_COMMITTED, fd)
    finally:
        os.close(fd)


def _remove_old(fd: int) -> None:
    try:
        old_fd = os.open(_OLD, _DIR_FLAGS, dir_fd=fd)
    except FileNotFoundError:
        return
    try:
        for i, name in enumerate(_names(old_fd)):
            if _is_dir(name, old_fd):
                shutil.rmtree(name, dir_fd=old_fd)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=old_fd)
            if i == 0:
                failpoint.hit("restore-removing-old")
    finally:
        os.close(old_fd)


def _undo(root_fd: int, fd: int) -> None:
    """Put back what the staging took from the root (nothing before ``old`` exists)."""
    if not _is_dir(_OLD, fd):
        return
    if _is_dir(_SWAPPING, fd):
        _take_back_restored(root_fd, fd)
    old_fd = os.open(_OLD, _DIR_FLAGS, dir_fd=fd)
    try:
        for name in _names(old_fd):
            _move_into_root(old_fd, name, root_fd)
    finally:
        os.close(old_fd)


def _take_back_restored(root_fd: int, fd: int) -> None:
    """The restored entries already in the root go back to ``tree``. They are the names in
    ``names`` that ``tree`` no longer has; anything else in the root is a newcomer's."""
    try:
        with open(os.open(_NAMES, _READ_FLAGS, dir_fd=fd), "rb") as f:
            names: list[bytes] | None = [n for n in f.read().split(b"\0") if n]
    except FileNotFoundError:
        names = None  # an older version's staging: it swapped every entry in the root
    with contextlib.suppress(FileExistsError):
        os.mkdir(_TREE, 0o755, dir_fd=fd)
    tree_fd = os.open(_TREE, _DIR_FLAGS, dir_fd=fd)
    try:
        if names is None:
            names = [n for n in _names(root_fd) if not n.startswith(_PREFIX_B)]
        for name in names:
            if _exists(name, tree_fd):
                continue  # never moved in: what the root has under that name is not ours
            with contextlib.suppress(FileNotFoundError):
                rename_noreplace(root_fd, name, tree_fd, name)
    finally:
        os.close(tree_fd)


@dataclass(frozen=True, slots=True)
class Recovered:
    """A staging found in a server root and finished."""

    name: str
    label: str
    committed: bool  # True: rolled forward, the restored tree stays; False: undone
    error: str = ""  # set when it could not be finished (it stays, to be tried again)


def _older_version_label(root_fd: int, name: bytes, labels: Collection[str]) -> str | None:
    """An unmarked staging an older version left, named for a restore the journal says
    died: this daemon's own (its uid), holding only a staging's parts."""
    label = name[len(_PREFIX_B) :].decode("utf-8", "replace")
    if label not in labels:
        return None
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=root_fd)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            return None
        if not all(n in _LAYOUT or n.startswith(_PREFIX_B) for n in _names(fd)):
            return None
    except OSError:
        return None
    finally:
        os.close(fd)
    return label


def recover_stagings(dest: str | os.PathLike[str], labels: Collection[str] = ()) -> list[Recovered]:
    """Finish every staging in the server root ``dest`` (after a kill -9 or a power loss):
    committed ones roll forward, the others are undone. ``labels``: restores the journal
    says died here, whose unmarked staging an older version may have left."""
    try:
        root_fd = os.open(os.fspath(dest), _DIR_FLAGS)
    except OSError:
        return []  # gone, or a symlink: nothing of ours
    found: list[Recovered] = []
    try:
        try:
            names = _names(root_fd)
        except OSError as exc:
            log.error("restore_stagings_not_listed", dest=os.fspath(dest), error=exc.strerror)
            return []
        for name in names:
            if not name.startswith(_PREFIX_B):
                continue
            label = staging_label(root_fd, name) or _older_version_label(root_fd, name, labels)
            if label is None:
                continue
            committed = False
            try:
                committed = _committed(root_fd, name)
                _finish(root_fd, name)
            except OSError as exc:
                found.append(Recovered(_show(name), label, committed, exc.strerror or str(exc)))
            else:
                found.append(Recovered(_show(name), label, committed))
    finally:
        os.close(root_fd)
    return found


def staging_left(dest: str | os.PathLike[str], label: str) -> bool:
    """Whether a staging of ``label`` is still in the server root ``dest``."""
    try:
        root_fd = os.open(os.fspath(dest), _DIR_FLAGS)
    except OSError:
        return False
    try:
        return any(staging_label(root_fd, n) == label for n in _names(root_fd))
    except OSError:
        return True  # cannot tell: kept, for the next start to look again
    finally:
        os.close(root_fd)
