"""A file that appears under its final name only once it is complete and durable."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

from wingsbak.archive.ratelimit import MIB, Cancelled


def fsync_dir(path: Path) -> None:
    """Make the names in the folder ``path`` (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicFile:
    """A file written under a temporary name in its final directory, then ``fsync``-ed and
    renamed. ``abort`` (or leaving the ``with`` block by an exception) removes it.

    Written data is handed to the kernel's write-back every few MiB, so the final ``fsync``
    waits for the last few MiB instead of the whole archive, and the archive does not push
    the game's own files out of the page cache.
    """

    WRITEBACK_EVERY = 8 * MIB

    def __init__(self, final_path: str | os.PathLike[str], mode: int = 0o600) -> None:
        self.final_path = Path(final_path)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.final_path.name}.", suffix=".part", dir=self.final_path.parent
        )
        os.fchmod(fd, mode)
        self.tmp_path = Path(tmp)
        self._fd = fd
        self._written = 0
        self._flushed = 0
        self.done = False

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        total = len(view)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._written += total
        if self._written - self._flushed >= self.WRITEBACK_EVERY:
            # DONTNEED starts write-back of the dirty range and drops the pages once clean.
            os.posix_fadvise(
                self._fd, self._flushed, self._written - self._flushed, os.POSIX_FADV_DONTNEED
            )
            self._flushed = self._written
        return total

    def flush(self) -> None:
        pass

    def commit(self, cancel: threading.Event | None = None) -> Path:
        """Make the file durable, then give it its final name, unless ``cancel`` is set by
        then: a job reported as cancelled must not leave its file under the final name."""
        if self.done:
            raise ValueError("already finished")
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled before the file was committed")
            os.replace(self.tmp_path, self.final_path)
            fsync_dir(self.final_path.parent)
        except BaseException:
            self.abort()
            raise
        self.done = True
        return self.final_path

    def abort(self) -> None:
        if self.done:
            return
        self.done = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            self.tmp_path.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self.done:
            self.abort()
