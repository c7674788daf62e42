"""A gzip stream as a series of independent members, written and read with their offsets.

Writing: every ``MEMBER_SIZE`` bytes of input start a new gzip member that needs nothing
before it (as ``bgzip`` and ``pigz --independent`` write them). The result is one ordinary
gzip file (``gzip -t``, ``tar -xzf`` and every gzip reader take concatenated members as one
stream), and a reader that knows where the members start can begin decompressing at any of
them: reading one file of a backup decompresses only the members it spans. Members are
compressed on worker threads (ISA-L when installed, zlib otherwise, both release the GIL)
and written, in order, by a thread of their own, so the checksum, rate limit and disk write
run beside the tar producer as they did with ISA-L's threaded writer.

Reading: :class:`MemberReader` decompresses any gzip stream (one member or many) and notes
where each member starts, in the compressed and in the uncompressed stream, so that one
sequential pass over an archive written before this (or by Wings) yields its member table.
"""

from __future__ import annotations

import queue
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, Protocol

try:
    from isal import igzip, isal_zlib

    HAVE_ISAL = True
except ImportError:  # pragma: no cover - exercised on machines without isal wheels
    HAVE_ISAL = False

__all__ = ["MEMBER_SIZE", "Member", "MemberReader", "MemberWriter", "compress_member"]

# Big enough that the 18 bytes of header and trailer and the dictionary lost at each start
# cost well under 0.1 % of the size; small enough that reading one small file decompresses
# at most a few MiB.
MEMBER_SIZE = 4 * 1024 * 1024
_GZIP_WBITS = 31  # zlib's wbits for a gzip header and trailer

Member = tuple[int, int]  # (compressed offset, uncompressed offset) where a member starts


class _Writable(Protocol):
    def write(self, data: bytes | memoryview, /) -> int: ...


def compress_member(data: bytes, level: int, isal: bool) -> bytes:
    """One complete gzip member of ``data`` (mtime 0, so equal input gives equal bytes)."""
    if isal:
        return igzip.compress(data, level, mtime=0)
    obj = zlib.compressobj(level, zlib.DEFLATED, _GZIP_WBITS)
    return obj.compress(data) + obj.flush()


class MemberWriter:
    """A writable that gzips into ``raw`` as independent members of ``member_size`` input
    bytes each; closing it finishes the stream (not ``raw``). ``members`` holds where each
    written member starts once closed."""

    def __init__(
        self,
        raw: _Writable,
        level: int,
        threads: int,
        *,
        isal: bool = HAVE_ISAL,
        member_size: int = MEMBER_SIZE,
    ) -> None:
        self.raw = raw
        self.level = level
        self.isal = isal
        self.member_size = member_size
        self.members: list[Member] = []
        self.size = 0  # uncompressed bytes taken
        self._buf = bytearray()
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="gzmember")
        # Bounded: a slow sink holds the producer back instead of memory growing.
        self._queue: queue.Queue[Future[bytes] | None] = queue.Queue(max(1, threads))
        self._error: BaseException | None = None
        self._queued = 0  # uncompressed bytes handed to the pool
        self._written = 0  # compressed bytes written to raw
        self._closed = False
        self._writer = threading.Thread(target=self._write_members, name="gzmember-writer")
        self._writer.start()

    def write(self, data: bytes | memoryview, /) -> int:
        if self._error is not None:
            raise self._error
        n = len(data)
        self._buf += data
        self.size += n
        while len(self._buf) >= self.member_size:
            block = bytes(self._buf[: self.member_size])
            del self._buf[: self.member_size]
            self._submit(block)
        return n

    def _submit(self, block: bytes) -> None:
        start = self._queued
        self._queued += len(block)
        future = self._pool.submit(compress_member, block, self.level, self.isal)
        future.uncompressed_offset = start  # type: ignore[attr-defined]
        while True:
            if self._error is not None:
                future.cancel()
                raise self._error
            try:
                self._queue.put(future, timeout=0.5)
                return
            except queue.Full:
                continue

    def _write_members(self) -> None:
        while True:
            future = self._queue.get()
            if future is None:
                return
            if self._error is not None:
                continue  # drained, so that the producer never blocks on a dead writer
            try:
                data = future.result()
                self.members.append((self._written, future.uncompressed_offset))  # type: ignore[attr-defined]
                self.raw.write(data)
                self._written += len(data)
            except BaseException as exc:
                self._error = exc

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._error is None and (self._buf or not self._queued):
                # The rest, or one empty member: an empty stream is still a gzip file.
                self._submit(bytes(self._buf))
                self._buf.clear()
        finally:
            self._queue.put(None)
            self._writer.join()
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._error is not None:
            raise self._error
        flush = getattr(self.raw, "flush", None)
        if flush is not None:
            flush()


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def _decompressor() -> zlib._Decompress:
    if HAVE_ISAL:
        return isal_zlib.decompressobj(_GZIP_WBITS)  # type: ignore[return-value]
    return zlib.decompressobj(_GZIP_WBITS)


class GzipFormatError(ValueError):
    """Not a gzip stream, or a corrupt or truncated one."""


class MemberReader:
    """The decompressed bytes of the gzip stream ``raw`` (every member, each CRC and length
    checked), noting in ``members`` where each member starts. Zero bytes after the last
    member are ignored (as ``gzip`` does); anything else there is an error."""

    READ_SIZE = 1024 * 1024

    def __init__(self, raw: _Readable, *, compressed_offset: int = 0) -> None:
        self.raw = raw
        self.members: list[Member] = []
        self._in_offset = compressed_offset  # compressed bytes consumed by finished members
        self._out = 0  # uncompressed bytes produced
        self._pending = b""  # compressed bytes read but not yet given to a decompressor
        self._member_in = 0  # compressed bytes given to the current member
        self._dec: zlib._Decompress | None = None
        self._eof = False
        self._trailing = False

    def _start_member(self) -> None:
        self.members.append((self._in_offset, self._out))
        self._dec = _decompressor()
        self._member_in = 0

    def read(self, n: int = -1, /) -> bytes:
        want = self.READ_SIZE if n < 0 else n
        while not self._eof:
            if not self._pending:
                self._pending = self.raw.read(self.READ_SIZE)
                if not self._pending:
                    if self._dec is not None and not self._dec.eof:
                        raise GzipFormatError("the gzip stream is truncated")
                    if self._dec is None and not self.members:
                        raise GzipFormatError("the gzip stream is empty")
                    self._eof = True
                    break
            if self._trailing:
                if self._pending.count(0) != len(self._pending):
                    raise GzipFormatError("the gzip stream has trailing garbage")
                self._pending = b""
                continue
            if self._dec is None:
                if self.members and self._pending[:1] == b"\0":
                    self._trailing = True
                    continue
                if len(self._pending) < 2 and self._pending[:1] == b"\x1f":
                    self._pending += self.raw.read(1)
                if self._pending[:2] != b"\x1f\x8b":
                    raise GzipFormatError("not a gzip stream (wrong first bytes)")
                self._start_member()
            dec = self._dec
            assert dec is not None
            given = self._pending
            try:
                out = dec.decompress(given, want)
            except Exception as exc:
                raise GzipFormatError(f"the gzip stream is corrupt: {exc}") from exc
            rest = dec.unconsumed_tail or dec.unused_data
            used = len(given) - len(rest)
            self._member_in += used
            self._pending = rest
            if dec.eof:
                self._in_offset += self._member_in
                self._pending = dec.unused_data
                self._dec = None
            self._out += len(out)
            if out:
                return out
        return b""

