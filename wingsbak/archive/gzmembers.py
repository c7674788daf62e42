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

import ctypes
import queue
import struct
import threading
import zlib
from typing import Any, Protocol

try:
    from isal import isal_zlib

    HAVE_ISAL = True
except ImportError:  # pragma: no cover - exercised on machines without isal wheels
    HAVE_ISAL = False

__all__ = ["BLOCK_SIZE", "MEMBER_SIZE", "Member", "MemberReader", "MemberWriter"]

# Big enough that the 18 bytes of header and trailer and the dictionary lost at each start
# cost well under 0.1 % of the size; small enough that reading one small file decompresses
# at most a few MiB.
MEMBER_SIZE = 4 * 1024 * 1024
_GZIP_WBITS = 31  # zlib's wbits for a gzip header and trailer
BLOCK_SIZE = 1024 * 1024

Member = tuple[int, int]  # (compressed offset, uncompressed offset) where a member starts


class _Writable(Protocol):
    def write(self, data: bytes | memoryview, /) -> int: ...


_HEADER = bytes.fromhex("1f8b08000000000000ff")  # deflate, no name, mtime 0, OS unknown


def _header(level: int, isal: bool) -> bytes:
    """A member's header: XFL marks the compressor's slowest level (2) or its fastest (4),
    as zlib and ISA-L's own writers mark them."""
    if isal:
        xfl = 4 if level == 0 else 0
    else:
        xfl = 2 if level == zlib.Z_BEST_COMPRESSION else 4 if level == zlib.Z_BEST_SPEED else 0
    return _HEADER[:8] + bytes([xfl]) + _HEADER[9:]


_FINAL = b"\x03\x00"  # an empty final deflate block: what ends a member after sync flushes
_DICT = 32 * 1024  # deflate's window: what a block may refer back to


def _bound(block_size: int, level: int) -> int:
    """The most ISA-L's deflate of a block may take: 10 % more for incompressible data; its
    level 0 codes everything with one fixed table, up to 15 bits a byte."""
    return 2 * block_size + 500 if level == 0 else block_size + block_size // 10 + 500


# The last member is empty and says in its extra field (subfield "WB", 8 bytes) how long the
# whole stream is uncompressed: the size a trailer gives only for a single member (modulo
# 4 GiB), read at a fixed distance from the end without reading the rest.
_SIZE_HEAD = bytes.fromhex("1f8b08040000000000ff") + struct.pack("<H2sH", 12, b"WB", 8)
_SIZE_TAIL = _FINAL + bytes(8)  # crc32 and length of nothing
SIZE_MEMBER_LENGTH = len(_SIZE_HEAD) + 8 + len(_SIZE_TAIL)


def size_member(total: int) -> bytes:
    return _SIZE_HEAD + struct.pack("<Q", total) + _SIZE_TAIL


def size_from_member(tail: bytes) -> int | None:
    """The uncompressed size a stream's last ``SIZE_MEMBER_LENGTH`` bytes record, if they
    are a size member."""
    if (
        len(tail) == SIZE_MEMBER_LENGTH
        and tail.startswith(_SIZE_HEAD)
        and tail.endswith(_SIZE_TAIL)
    ):
        return int(struct.unpack_from("<Q", tail, len(_SIZE_HEAD))[0])
    return None


# glibc serves a request of 128 KiB or more with a fresh mmap and, once such a block is freed,
# raises that bound to its size and trims the heap whenever more than twice it lies free at
# the top. The writer hands a compressed MiB from a worker thread's arena to the writer
# thread with every block, so under the moving bounds most of those MiB were mapped, faulted
# page by page and given back again: 2.5 times the page faults of a single-stream writer and
# about 10 % more time. Fixed bounds above a block keep them in the arenas, reused; at most
# _TRIM_THRESHOLD lies free at the top of each arena while a backup runs (4 MiB is as fast as
# 16, where three backups at once kept 30 MiB more), and each writer gives the free memory of
# every arena back when it ends (malloc_trim), so a node between backups holds about what it
# held before.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 4 * 1024 * 1024
_TRIM_THRESHOLD = 4 * 1024 * 1024
_heap_tuned = False
_malloc_trim: Any = None


def keep_blocks_in_heap() -> None:
    """Set glibc's mmap and trim bounds once per process (nothing elsewhere)."""
    global _heap_tuned, _malloc_trim
    if _heap_tuned:
        return
    _heap_tuned = True
    try:
        libc = ctypes.CDLL(None)
        mallopt, _malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)


def give_back_heap() -> None:
    """The arenas' free memory back to the system (where the bounds above are set)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


class _BlockCompressor:
    """Raw deflate of one block, sync-flushed so blocks concatenate, with the previous
    block's last 32 KiB of the same member as dictionary (as pigz and ISA-L's threaded
    writer do); one per worker thread."""

    def __init__(self, level: int, isal: bool, block_size: int) -> None:
        self.level = level
        self.parallel = (
            isal_zlib._ParallelCompress(buffersize=_bound(block_size, level), level=level)
            if isal and hasattr(isal_zlib, "_ParallelCompress")
            else None
        )
        self.module = isal_zlib if isal else zlib

    def __call__(self, data: memoryview, zdict: bytes) -> tuple[bytes, int]:
        if self.parallel is not None:
            return self.parallel.compress_and_crc(data, zdict)
        if zdict:
            obj = self.module.compressobj(self.level, zlib.DEFLATED, -15, zdict=zdict)
        else:
            obj = self.module.compressobj(self.level, zlib.DEFLATED, -15)
        out = obj.compress(data) + obj.flush(zlib.Z_SYNC_FLUSH)
        return out, self.module.crc32(data)


_Block = tuple[bytearray, int, int, bytes]  # buffer, its length, stream offset, dictionary
_Done = tuple[bytearray, int, int, bytes | BaseException, int]  # ..., compressed or error, crc


class MemberWriter:
    """A writable that gzips into ``raw`` as independent members of ``member_size`` input
    bytes each; closing it finishes the stream (not ``raw``). ``members`` holds where each
    written member starts.

    Each member is compressed as blocks of ``block_size`` on the worker threads, every
    block but a member's first with its predecessor's tail as dictionary, so the ratio is
    that of one stream to within a dictionary reset per member. A block's input is copied
    once, into one of a few reused buffers, which go back to the pool once compressed.
    Blocks go to the workers in turn, each worker with a queue in and a queue out, and the
    writer thread takes them back in the same turn, so they are written in order with one
    hand-off each way (as pigz and ISA-L's threaded writer do).
    ``inline``: compress and write in the caller's thread instead, each block as it fills
    (for no compression, where a thread would buy nothing and the caller is to be paced by
    the sink).
    """

    def __init__(
        self,
        raw: _Writable,
        level: int,
        threads: int,
        *,
        isal: bool = HAVE_ISAL,
        member_size: int = MEMBER_SIZE,
        block_size: int = BLOCK_SIZE,
        inline: bool = False,
    ) -> None:
        if member_size % block_size:
            raise ValueError("a member is a whole number of blocks")
        self.raw = raw
        self._header = _header(level, isal)
        self.member_size = member_size
        self.block_size = block_size
        self.members: list[Member] = []
        threads = 0 if inline else max(1, threads)
        keep_blocks_in_heap()
        self._level, self._isal = level, isal
        # Buffers in flight bound memory, and hold the producer back when the sink is slow.
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(2 * threads + 1 if threads else 0):
            self._free.put(bytearray(block_size))
        self._buf = bytearray(block_size)
        self._view = memoryview(self._buf)
        self._fill = 0
        self._tail = b""  # the last 32 KiB of the block before, the next one's dictionary
        self._error: BaseException | None = None
        self._queued = 0  # uncompressed bytes handed to the workers
        self._turn = 0  # the worker the next block goes to
        self._closed = False
        self._written = 0  # compressed bytes written to raw
        self._crc = self._member_size = 0  # of the open member
        self._open_member = False
        self._inline = _BlockCompressor(level, isal, block_size) if inline else None
        self._in: list[queue.SimpleQueue[_Block | None]] = []
        self._out: list[queue.SimpleQueue[_Done | None]] = []
        self._threads: list[threading.Thread] = []
        for i in range(threads):
            self._in.append(queue.SimpleQueue())
            self._out.append(queue.SimpleQueue())
            self._threads.append(
                threading.Thread(target=self._compress, args=(i,), name="gzmember", daemon=True)
            )
        if threads:
            self._threads.append(
                threading.Thread(target=self._write_members, name="gzmember-writer", daemon=True)
            )
        for thread in self._threads:
            thread.start()

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        if self._closed:  # the workers have ended: a block would wait for them forever
            raise ValueError("write to a closed gzip stream")
        if self._error is not None:
            raise self._error
        view = memoryview(data).cast("B")
        n = len(view)
        while view:
            k = min(self.block_size - self._fill, len(view))
            self._view[self._fill : self._fill + k] = view[:k]
            self._fill += k
            view = view[k:]
            if self._fill == self.block_size:
                self._submit()
        return n

    def _submit(self) -> None:
        buf, length = self._buf, self._fill
        start = self._queued
        self._queued += length
        zdict = b"" if start % self.member_size == 0 else self._tail
        self._tail = bytes(buf[length - _DICT : length]) if length >= _DICT else bytes(buf[:length])
        if self._inline is not None:
            try:
                compressed, crc = self._inline(memoryview(buf)[:length], zdict)
            except BaseException as exc:
                self._error = exc
                raise
            self._write_block(buf, length, start, compressed, crc)
            self._fill = 0
            return
        self._in[self._turn].put((buf, length, start, zdict))
        self._turn = (self._turn + 1) % len(self._in)
        while True:
            if self._error is not None:
                raise self._error
            try:
                self._buf = self._free.get(timeout=0.5)
                break
            except queue.Empty:
                continue
        self._view = memoryview(self._buf)
        self._fill = 0

    def _compress(self, i: int) -> None:
        inbox, outbox = self._in[i], self._out[i]
        compressor: _BlockCompressor | BaseException
        try:
            compressor = _BlockCompressor(self._level, self._isal, self.block_size)
        except BaseException as exc:  # each block says so: the writer waits for every one
            compressor = exc
        while (block := inbox.get()) is not None:
            buf, length, start, zdict = block
            try:
                if isinstance(compressor, BaseException):
                    raise compressor
                compressed, crc = compressor(memoryview(buf)[:length], zdict)
                outbox.put((buf, length, start, compressed, crc))
            except BaseException as exc:
                outbox.put((buf, length, start, exc, 0))
        outbox.put(None)

    def _write_members(self) -> None:
        turn = 0
        while (done := self._out[turn].get()) is not None:
            turn = (turn + 1) % len(self._out)
            buf, length, start, compressed, crc = done
            if isinstance(compressed, BaseException):
                self._error = self._error or compressed
            elif self._error is None:
                self._write_block(buf, length, start, compressed, crc)
            self._free.put(buf)
        self._end()

    def _write_block(
        self, buf: bytearray, length: int, start: int, compressed: bytes, block_crc: int
    ) -> None:
        try:
            if start % self.member_size == 0:
                if self._open_member:
                    self._finish_member()
                self.members.append((self._written, start))
                self._put(self._header)
                self._crc = self._member_size = 0
                self._open_member = True
            if not self._member_size:
                self._crc = block_crc
            elif HAVE_ISAL:
                self._crc = isal_zlib.crc32_combine(self._crc, block_crc, length)
            else:  # Python's zlib has no crc32_combine
                self._crc = zlib.crc32(memoryview(buf)[:length], self._crc)
            self._member_size += length
            self._put(compressed)
        except BaseException as exc:
            self._error = exc
            if self._inline is not None:
                raise

    def _end(self) -> None:
        if self._error is not None:
            return
        try:
            if not self._open_member:  # nothing written: an empty member
                self.members.append((self._written, 0))
                self._put(self._header)
            self._finish_member()
            self.members.append((self._written, self._queued))
            self._put(size_member(self._queued))
        except BaseException as exc:
            self._error = exc

    def _put(self, data: bytes) -> None:
        self.raw.write(data)
        self._written += len(data)

    def _finish_member(self) -> None:
        self._put(_FINAL + struct.pack("<II", self._crc, self._member_size & 0xFFFFFFFF))

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
            if self._error is None and self._fill:
                self._submit()
        finally:
            if self._inline is not None:
                self._end()
            else:
                # The workers end in turn after the last block: the writer meets their ends
                # in the same turn, after every block, and finishes the stream.
                for k in range(len(self._in)):
                    self._in[(self._turn + k) % len(self._in)].put(None)
                for thread in self._threads:
                    thread.join()
                self._free = queue.SimpleQueue()  # the blocks go before the heap is trimmed
                self._buf = bytearray()
                self._view = memoryview(self._buf)
                give_back_heap()
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

