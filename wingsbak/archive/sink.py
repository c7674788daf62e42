"""Writers around a sink: checksum and byte count of what passes, a write rate limit, and an
atomic file that appears under its final name only once it is complete and durable."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

MIB = 1024 * 1024


class Sink(Protocol):
    """Where archive bytes go: a local file, a stream of S3 parts, anything with ``write``."""

    def write(self, data: bytes | memoryview, /) -> int: ...


class Cancelled(Exception):
    """The work was cancelled (by the caller's event)."""


class TokenBucket:
    """Limits a byte rate. The burst is a quarter second of the rate, so any window of a few
    seconds averages within a few percent of the limit.

    ``clock`` and ``sleep`` default to the real ones (``sleep`` to waiting on ``cancel`` when
    given, so that a cancellation ends the wait); tests pass simulated ones.
    """

    def __init__(
        self,
        bytes_per_second: float,
        cancel: threading.Event | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        if bytes_per_second <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(bytes_per_second)
        self.burst = self.rate / 4
        self.tokens = self.burst
        self.clock = clock
        if sleep is None:
            sleep = cancel.wait if cancel is not None else time.sleep
        self.sleep = sleep
        self.last = clock()
        self.cancel = cancel

    def consume(self, n: int) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= n
        if self.tokens < 0:
            self.sleep(-self.tokens / self.rate)
            if self.cancel is not None and self.cancel.is_set():
                raise Cancelled("cancelled")


class MeteredWriter:
    """Passes bytes to ``sink`` while hashing and counting them, at most ``limit`` bytes/s."""

    def __init__(
        self,
        sink: Sink,
        checksum: str = "sha1",
        limiter: TokenBucket | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.sink = sink
        self.checksum_type = checksum
        self.hasher = hashlib.new(checksum)
        self.size = 0
        self.limiter = limiter
        self.cancel = cancel

    def write(self, data: bytes | memoryview) -> int:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("cancelled")
        n = len(data)
        if self.limiter is not None:
            self.limiter.consume(n)
        self.hasher.update(data)
        self.sink.write(data)
        self.size += n
        return n

    def flush(self) -> None:
        flush = getattr(self.sink, "flush", None)
        if flush is not None:
            flush()

    # Enough of the file protocol for gzip writers that take a file object.
    def writable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def hexdigest(self) -> str:
        return self.hasher.hexdigest()


def _fsync_dir(path: Path) -> None:
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
            _fsync_dir(self.final_path.parent)
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


def sidecar_path(archive: str | os.PathLike[str], checksum_type: str) -> Path:
    return Path(f"{os.fspath(archive)}.{checksum_type}")


def write_sidecar(archive: str | os.PathLike[str], checksum: str, checksum_type: str) -> Path:
    """``<archive>.sha1`` in the format ``sha1sum -c`` reads (name relative to its folder)."""
    path = sidecar_path(archive, checksum_type)
    with AtomicFile(path, mode=0o644) as f:
        f.write(f"{checksum}  {Path(archive).name}\n".encode())
        f.commit()
    return path


def read_sidecar(archive: str | os.PathLike[str]) -> tuple[str, str] | None:
    """(checksum type, hex digest) from the archive's sidecar, or None when it has none."""
    for kind in ("sha1", "sha256"):
        try:
            text = sidecar_path(archive, kind).read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        fields = text.split()
        if fields:
            return kind, fields[0].lower()
    return None


def file_checksum(path: str | os.PathLike[str], kind: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, kind).hexdigest()
