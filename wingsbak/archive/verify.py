"""Verification of a stored backup's archive without unpacking it: read whole, checked
against its gzip CRCs and lengths (every member: an archive may be many independent gzip
members), its tar structure (every header's checksum, entry sizes that add up, the
end-of-archive marker) and the checksum recorded when it was written (the
``.sha1``/``.sha256`` sidecar of a local archive, the checksum object of one in the node's
bucket).

Plain synchronous code for a worker thread, reading with the restore's gzip reader and tar
reader (archive/tarread.py), so a backup that verifies is one the restore can read.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wingsbak.archive.checksum import sidecar_path
from wingsbak.archive.codecs import GZIP
from wingsbak.archive.ratelimit import MIB, Cancelled, TokenBucket
from wingsbak.archive.tarread import TarError, iter_entries
from wingsbak.formats import CHECKSUM_TYPES

__all__ = [
    "ArchiveCorrupt",
    "ArchiveGone",
    "SourceError",
    "VerifyResult",
    "parse_checksum_line",
    "read_recorded_checksum",
    "verify_file",
    "verify_stream",
    "walk_tar",
]

_HEX_LENGTH = {"sha1": 40, "sha256": 64}
_HEX = re.compile(r"^[0-9a-f]+$")
# Pages already verified are dropped from the page cache this often, so a day's verification
# does not push the game servers' own files out of memory.
_DROP_CACHE_EVERY = 8 * MIB
# Errors reading a local archive that mean the disk cannot give it back: the backup is lost.
_MEDIA_ERRORS = frozenset({errno.EIO, errno.EBADMSG, errno.EUCLEAN})


class ArchiveCorrupt(Exception):
    """The archive fails its check; ``str()`` is the reason, one line."""


class SourceError(Exception):
    """The archive could not be read to the end (a vanished file, an unreachable bucket):
    nothing is known about it, it is checked again later."""


class ArchiveGone(SourceError):
    """The archive is no longer there (deleted since it was listed)."""


@dataclass(slots=True, frozen=True)
class VerifyResult:
    size: int  # compressed bytes read
    unpacked: int  # tar bytes
    entries: int  # tar entries (extended headers not counted)
    checksum: str  # hex digest of the compressed bytes
    checksum_type: str
    # True when a recorded checksum was compared; False when none was recorded (an archive
    # from Wings itself, or from before checksum objects were kept).
    checksum_checked: bool


class _Source(io.RawIOBase):
    """The compressed bytes on their way to the gzip reader (on its thread): hashed, held to
    a rate, paused while ``hold`` says so, and their own read errors kept apart from the
    archive's."""

    def __init__(
        self,
        raw: io.RawIOBase | io.BufferedIOBase,
        checksum_type: str,
        limiter: TokenBucket | None,
        hold: Callable[[], None] | None,
        cancel: threading.Event | None,
        fd: int | None,
    ) -> None:
        self.raw = raw
        self.hasher = hashlib.new(checksum_type)
        self.limiter = limiter
        self.hold = hold
        self.cancel = cancel
        self.fd = fd
        self.count = 0
        self.dropped = 0
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("verification cancelled")
        if self.hold is not None:
            self.hold()
        view = memoryview(b).cast("B")
        try:
            readinto = getattr(self.raw, "readinto", None)
            if readinto is not None:
                n = readinto(view) or 0
            else:
                data = self.raw.read(len(view))
                n = len(data)
                view[:n] = data
        except BaseException as exc:
            self.error = exc
            raise
        if n:
            self.hasher.update(view[:n])
            self.count += n
            if self.limiter is not None:
                self.limiter.consume(n)
            if self.fd is not None and self.count - self.dropped >= _DROP_CACHE_EVERY:
                os.posix_fadvise(self.fd, 0, self.count, os.POSIX_FADV_DONTNEED)
                self.dropped = self.count
        return n


def verify_stream(
    raw: io.RawIOBase | io.BufferedIOBase,
    *,
    checksum_type: str = "sha1",
    expected: str | None = None,
    read_limit: float = 0,
    cancel: threading.Event | None = None,
    hold: Callable[[], None] | None = None,
    fd: int | None = None,
) -> VerifyResult:
    """Read the gzip tar archive in ``raw`` to its end and check it. ``expected``: the hex digest
    of type ``checksum_type`` recorded for it. ``read_limit`` caps the compressed bytes read,
    in MiB/s (0: unlimited); ``hold()`` is called before each read and may block (pausing
    the check); ``fd``: the local file, whose verified pages are dropped from the cache.

    Raises :class:`ArchiveCorrupt`, :class:`SourceError` or :class:`Cancelled`."""
    limiter = TokenBucket(read_limit * MIB, cancel) if read_limit > 0 else None
    source = _Source(raw, checksum_type, limiter, hold, cancel, fd)
    try:
        gz = GZIP.open_reader(source)
        try:
            reader = iter_entries(gz)
            entries = sum(1 for _ in reader)  # to the end: the last member's CRC too
            unpacked = reader.tell
        finally:
            gz.close()
    except TarError as exc:
        _raise_source_error(source)
        raise ArchiveCorrupt(_reason(str(exc))) from exc
    except (Cancelled, ArchiveCorrupt):
        raise
    except Exception as exc:  # the gzip layer's own errors, raised through close()
        _raise_source_error(source)
        raise ArchiveCorrupt(f"the archive is corrupt: {exc}") from exc
    digest = source.hasher.hexdigest()
    if expected is not None and digest != expected:
        raise ArchiveCorrupt(
            f"the archive does not match its recorded {checksum_type} checksum "
            f"(recorded {expected}, read {digest})"
        )
    checked = expected is not None
    return VerifyResult(source.count, unpacked, entries, digest, checksum_type, checked)


def _raise_source_error(source: _Source) -> None:
    error = source.error
    if error is None:
        return
    if isinstance(error, Cancelled):
        raise error
    if isinstance(error, OSError) and error.errno in _MEDIA_ERRORS:
        raise ArchiveCorrupt(
            f"the disk cannot read the archive: {error.strerror or error}"
        ) from error
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    raise SourceError(f"cannot read the archive: {text}") from error


def _reason(text: str) -> str:
    """The feed's words for a gzip error are a restore's ("cannot read"): here the bytes
    were read, and they are wrong."""
    prefix = "cannot read the archive: "
    if text.startswith(prefix):
        return "the archive is corrupt: " + text[len(prefix) :]
    return text


def walk_tar(stream: io.RawIOBase | io.BufferedIOBase) -> int:
    """Every header of the (uncompressed) tar in ``stream`` checked and every entry's data
    skipped, to the end of the stream; returns the number of entries (extended headers not
    counted). Raises :class:`ArchiveCorrupt`."""
    try:
        return sum(1 for _ in iter_entries(stream))
    except TarError as exc:
        raise ArchiveCorrupt(_reason(str(exc))) from exc


def parse_checksum_line(text: str, checksum_type: str) -> str:
    """The digest of a ``sha1sum``-style line (``<hex>  <name>``); :class:`ArchiveCorrupt`
    when it holds none of the right shape."""
    fields = text.split()
    digest = fields[0].lower() if fields else ""
    if len(digest) != _HEX_LENGTH[checksum_type] or not _HEX.match(digest):
        raise ArchiveCorrupt(f"its {checksum_type} checksum record is damaged")
    return digest


def read_recorded_checksum(archive: str | os.PathLike[str]) -> tuple[str, str] | None:
    """(type, digest) from a local archive's sidecar; None when it has none (Wings' own
    archives); :class:`ArchiveCorrupt` when the sidecar is there but unreadable."""
    for kind in CHECKSUM_TYPES:
        path = sidecar_path(archive, kind)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ArchiveCorrupt(
                f"its {kind} sidecar cannot be read: {exc.strerror or exc}"
            ) from exc
        return kind, parse_checksum_line(raw.decode("ascii", "replace"), kind)
    return None


def verify_file(
    path: str | os.PathLike[str],
    *,
    use_sidecar: bool = True,
    read_limit: float = 0,
    cancel: threading.Event | None = None,
    hold: Callable[[], None] | None = None,
    drop_cache: bool = False,
) -> VerifyResult:
    """:func:`verify_stream` of a local archive, against its sidecar when it has one. With
    ``drop_cache`` the pages read are dropped from the page cache behind the reader (the
    daemon's schedule: its reads must not evict the game servers' files)."""
    recorded = read_recorded_checksum(path) if use_sidecar else None
    kind, expected = recorded if recorded is not None else ("sha1", None)
    try:
        f = open(Path(path), "rb", buffering=0)  # noqa: SIM115 - closed below
    except FileNotFoundError as exc:
        raise ArchiveGone(f"the archive is gone: {os.fspath(path)}") from exc
    except OSError as exc:
        raise SourceError(f"cannot open {os.fspath(path)}: {exc.strerror or exc}") from exc
    with f:
        fd = f.fileno()
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        try:
            return verify_stream(
                f,
                checksum_type=kind,
                expected=expected,
                read_limit=read_limit,
                cancel=cancel,
                hold=hold,
                fd=fd if drop_cache else None,
            )
        finally:
            if drop_cache:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
