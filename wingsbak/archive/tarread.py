"""Tar entries read one by one from a byte stream: the header loop, pax (global ones too),
GNU long names and links, and both sparse formats a restore understands (GNU tar's old 'S'
entries and pax sparse 1.0).

One pass, no seeking, no copy of file data: :func:`iter_entries` yields a :class:`TarEntry`
per entry, whose data is read (:meth:`TarEntry.chunk`, :meth:`TarEntry.read`) or skipped
before the next one is yielded; what is left of it is skipped then, in step. Every entry knows
where its headers and its data start in the uncompressed stream, so an index can be built in
the same pass. After the end-of-archive marker the rest of the stream is read, so that a
compressed stream checks its trailer.

What no reader should trust is refused with :class:`TarError` (one line for the operator):
a header with a wrong checksum or unreadable numbers, extended headers beyond their caps, a
sparse map beyond its bound, a stream that ends without the end-of-archive marker, and a lone
zero block inside the archive (never a silent stop that would drop the rest). An entry whose
content alone cannot be had (a malformed sparse map) raises :class:`BadEntry` when read; the
archive goes on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from wingsbak.archive.ratelimit import Cancelled
from wingsbak.errors import describe

__all__ = [
    "BLOCK",
    "DEVICES",
    "DIRECTORY",
    "GNU_DUMPDIR",
    "GNU_SPARSE",
    "HARDLINK",
    "MAX_EXTENDED_HEADER",
    "MAX_EXTENDED_HEADERS_TOTAL",
    "READ_CHUNK",
    "REGULAR",
    "SYMLINK",
    "BadEntry",
    "SparseMap",
    "TarEntry",
    "TarError",
    "TarReader",
    "iter_entries",
]

BLOCK = 512
READ_CHUNK = 1024 * 1024
_MIB = 1024 * 1024

REGULAR = frozenset(b"07\x00")  # '0', contiguous '7', and old-style NUL
HARDLINK, SYMLINK, DIRECTORY = ord("1"), ord("2"), ord("5")
DEVICES = {ord("3"): "character device", ord("4"): "block device", ord("6"): "FIFO"}
# GNU: 'S' an old-format sparse file (its map in the header and in extension blocks that
# follow it, its data the map's regions back to back), 'D' an incremental dump's directory
# (its data the list of names, not needed to restore it).
GNU_SPARSE, GNU_DUMPDIR = ord("S"), ord("D")
_PAX, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK = ord("x"), ord("g"), ord("L"), ord("K")
_EXTENDED = frozenset({_PAX, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK})
# Types whose header says nothing about data following it: tarfile and GNU tar skip none.
_NO_DATA = frozenset({HARDLINK, SYMLINK, DIRECTORY, *DEVICES})
# The old GNU sparse map: 4 (offset, length) pairs of 12-byte numbers at 386, the
# "extended" flag at 482, the real size at 483; each extension block holds 21 more pairs and
# its own flag at 504.
_SPARSE_MAP_AT, _SPARSE_IN_HEADER, _SPARSE_IN_EXT = 386, 4, 21
_MAX_SPARSE_EXT = 16 * _MIB // BLOCK  # a sparse map of 16 MiB at most
# Extended headers (pax, GNU long names and links): one may hold 1 MiB, and all those before
# one entry (global ones included) 4 MiB, as libarchive bounds them; a bigger one is a
# corrupt archive rather than a reason to hold it in memory. No real path comes near it.
MAX_EXTENDED_HEADER = 1 * _MIB
MAX_EXTENDED_HEADERS_TOTAL = 4 * _MIB
# Of the global pax records only these change what an entry is; keeping only them bounds
# what global headers can accumulate, whatever they hold.
_PAX_GLOBAL_KEYS = frozenset({b"path", b"linkpath", b"size", b"mtime", b"uid", b"gid"})
# What os.utime takes (a 64-bit time_t): a wilder archive time is clamped to it.
_MAX_TIME_NS = (2**63 - 1) * 1_000_000_000


class TarError(Exception):
    """The stream is not a readable tar: corrupt, truncated, or its source failed to give
    it. ``str()`` is one line meant for the operator."""


class BadEntry(Exception):
    """This entry's content cannot be had (the reason is the message); its data is skipped
    whole and the archive goes on."""


class _Truncated(Exception):
    pass


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class _Feed:
    """The stream, served from large chunks without copying file data."""

    def __init__(self, src: _Readable, passthrough: tuple[type[BaseException], ...]) -> None:
        self.src = src
        self.passthrough = (TarError, Cancelled, *passthrough)
        self.view = memoryview(b"")
        self.pos = 0
        self.offset = 0  # absolute offset of ``view[0]`` in the stream

    def _refill(self) -> bool:
        try:
            data = self.src.read(READ_CHUNK)
        except self.passthrough:
            raise
        except EOFError as exc:
            raise TarError(f"the archive is truncated ({exc})") from exc
        except Exception as exc:
            raise TarError(f"cannot read the archive: {describe(exc, one_line=True)}") from exc
        self.offset += len(self.view)
        self.view = memoryview(data)
        self.pos = 0
        return bool(data)

    @property
    def tell(self) -> int:
        return self.offset + self.pos

    def take(self, n: int) -> bytes:
        """Exactly ``n`` bytes (a header or pax record), or ``_Truncated``."""
        end = self.pos + n
        if end <= len(self.view):
            data = self.view[self.pos : end].tobytes()
            self.pos = end
            return data
        parts = [self.view[self.pos :].tobytes()]
        need = n - len(parts[0])
        while need:
            if not self._refill():
                raise _Truncated
            piece = self.view[: min(need, len(self.view))]
            parts.append(piece.tobytes())
            self.pos = len(piece)
            need -= len(piece)
        return b"".join(parts)

    def chunk(self, limit: int) -> memoryview:
        """Between 1 and ``limit`` bytes, as a view into the current chunk."""
        if self.pos >= len(self.view) and not self._refill():
            raise _Truncated
        end = min(len(self.view), self.pos + limit)
        piece = self.view[self.pos : end]
        self.pos = end
        return piece

    def skip(self, n: int) -> None:
        while n:
            n -= len(self.chunk(n))

    def first_block(self) -> bytes | None:
        """The first block, left unread; None when the stream is shorter."""
        while len(self.view) - self.pos < BLOCK:
            rest = self.view[self.pos :].tobytes()
            if not self._refill():
                return None
            self.offset -= len(rest)
            self.view = memoryview(rest + self.view.tobytes())
        return self.view[self.pos : self.pos + BLOCK].tobytes()

    def drain(self) -> None:
        while self._refill():
            pass


def _number(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256 for values too large for octal
        value = int.from_bytes(field[1:], "big")
        return -((1 << (8 * len(field) - 8)) - value) if field[0] & 0x40 else value
    text = field.split(b"\x00", 1)[0].strip()
    return int(text, 8) if text else 0


def _cstr(field: bytes) -> bytes:
    return field.split(b"\x00", 1)[0]


def _checksum_ok(header: bytes) -> bool:
    return sum(header[:148]) + 256 + sum(header[156:]) == _number(header[148:156])


def _parse_pax(data: bytes) -> dict[bytes, bytes]:
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        if space < 0:
            raise TarError("the archive has a malformed pax header")
        length = int(data[pos:space])
        record = data[space + 1 : pos + length - 1]  # without the trailing newline
        key, _, value = record.partition(b"=")
        records[key] = value
        if length <= 0:
            raise TarError("the archive has a malformed pax header")
        pos += length
    return records


def _pax_size(value: bytes) -> int:
    size = int(value)
    if size < 0:
        raise ValueError("negative size")
    return size


def _pax_time(value: bytes) -> int:
    """A pax time ("1700000000.123456789") in nanoseconds, without float rounding."""
    whole, _, frac = value.partition(b".")
    ns = int(whole) * 1_000_000_000
    if frac:
        digits = (frac + b"000000000")[:9]
        ns += -int(digits) if whole.startswith(b"-") else int(digits)
    return ns


def _clamp_time(ns: int) -> int:
    """An archive time within what the file system calls take (a time beyond year
    292 billion is an archive's fancy, not a date to fail over)."""
    return max(-_MAX_TIME_NS, min(_MAX_TIME_NS, ns))


@dataclass(slots=True)
class SparseMap:
    # (offset, length) in the file, data in order; None: at the start of the entry's data
    regions: list[tuple[int, int]] | None
    real_size: int

    def check(self, stored: int) -> None:
        """:class:`BadEntry` unless the regions are in order, inside the file, and add up to
        the data stored in the archive."""
        end = 0
        assert self.regions is not None
        for offset, length in self.regions:
            if offset < end or length < 0:
                raise BadEntry("sparse map with overlapping or unordered regions")
            end = offset + length
        if end > self.real_size:
            raise BadEntry("sparse map beyond the file's size")
        if sum(length for _, length in self.regions) != stored:
            raise BadEntry("sparse map that does not match the data stored")


@dataclass(slots=True, eq=False)
class TarEntry:
    """One entry, as its headers (extended ones applied) describe it. Its data can be read
    only while it is the reader's current entry."""

    name: bytes  # as stored: a long name, pax path or ustar prefix already joined
    type: int  # the type flag's byte; a regular "file" named with a trailing '/' is a DIRECTORY
    mode: int  # as stored, special bits included
    uid: int
    gid: int
    size: int  # data bytes stored after the header (0 for types that store none)
    mtime: int  # nanoseconds
    linkname: bytes
    header_offset: int  # where its first header block (extended ones included) starts
    data_offset: int  # where its data starts (a pax sparse 1.0 map first)
    sparse: SparseMap | None = None
    # Why its content cannot be had at all (an older pax sparse format), else empty.
    unsupported: str = ""
    remaining: int = 0  # data bytes not consumed yet
    _reader: TarReader | None = field(default=None, repr=False)

    @property
    def real_size(self) -> int:
        """The size of the file the entry makes up (a sparse file's, holes included)."""
        return self.sparse.real_size if self.sparse is not None else self.size

    def chunk(self, limit: int) -> memoryview:
        """Between 1 and ``limit`` bytes of the data (at most what remains), as a view that
        stays valid until the next read."""
        feed = self._feed()
        try:
            view = feed.chunk(min(limit, self.remaining))
        except _Truncated:
            raise self._truncated() from None
        self.remaining -= len(view)
        return view

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes of the data (all that remains when ``n`` < 0)."""
        self._feed()
        n = self.remaining if n < 0 else min(n, self.remaining)
        parts = []
        while n:
            view = self.chunk(n)
            parts.append(view.tobytes())
            n -= len(view)
        return b"".join(parts)

    def skip(self) -> None:
        """The rest of the data, unread."""
        feed = self._feed()
        try:
            feed.skip(self.remaining)
        except _Truncated:
            raise self._truncated() from None
        self.remaining = 0

    def sparse_regions(self) -> list[tuple[int, int]]:
        """A sparse entry's (offset, length) regions, the data that follows laid out in that
        order; a pax sparse 1.0 map is read from the start of the data for it. Checked
        against the data stored (:class:`BadEntry` when they disagree)."""
        assert self.sparse is not None
        if self.sparse.regions is None:
            self.sparse.regions = self._read_pax_sparse_map()
        self.sparse.check(self.remaining)
        return self.sparse.regions

    def _read_pax_sparse_map(self) -> list[tuple[int, int]]:
        """Decimal lines: the number of regions, then offset and length of each, padded to a
        block."""
        feed = self._feed()
        numbers: list[int] = []
        partial = b""
        while not numbers or len(numbers) < 1 + 2 * numbers[0]:
            if self.remaining < BLOCK or len(numbers) > 4 * _MIB or len(partial) > 40:
                raise BadEntry("malformed sparse map")
            try:
                block = feed.take(BLOCK)
            except _Truncated:
                raise self._truncated() from None
            self.remaining -= BLOCK
            lines = (partial + block).split(b"\n")
            partial = lines.pop()  # the rest of the last block is padding
            try:
                numbers.extend(int(line) for line in lines)
            except ValueError:
                raise BadEntry("malformed sparse map") from None
        return [(numbers[1 + 2 * i], numbers[2 + 2 * i]) for i in range(numbers[0])]

    def _feed(self) -> _Feed:
        reader = self._reader
        if reader is None or reader.current is not self:
            raise RuntimeError("a tar entry's data is read only while it is the current entry")
        return reader.feed

    def _truncated(self) -> TarError:
        name = self.name.decode("utf-8", "backslashreplace")
        return TarError(f"the archive is truncated inside {name!r}")


class TarReader:
    """The entries of the tar stream ``src`` (see :func:`iter_entries`)."""

    def __init__(self, src: _Readable, passthrough: tuple[type[BaseException], ...] = ()) -> None:
        self.feed = _Feed(src, passthrough)
        self.current: TarEntry | None = None
        self.ended = False
        self._pax_global: dict[bytes, bytes] = {}

    @property
    def tell(self) -> int:
        """Bytes of the stream consumed so far."""
        return self.feed.tell

    def check_start(self) -> None:
        """Whether the stream starts with a tar header block (or the zero block of an empty
        archive), before anything is done with it; :class:`TarError` otherwise."""
        block = self.feed.first_block()
        if block is None:
            raise TarError("the archive is empty or truncated")
        if block == bytes(BLOCK):
            return
        stored = block[148:156].split(b"\0", 1)[0].strip()
        computed = sum(block[:148]) + 8 * 32 + sum(block[156:])
        try:
            valid = bool(stored) and int(stored, 8) == computed
        except ValueError:
            valid = False
        if not valid:
            raise TarError("the archive does not start with a tar header")

    def __iter__(self) -> Iterator[TarEntry]:
        return self

    def __next__(self) -> TarEntry:
        if self.ended:
            raise StopIteration
        current = self.current
        if current is not None:
            current.skip()
            self.current = None
            try:
                self.feed.skip(-current.size % BLOCK)
            except _Truncated:
                raise current._truncated() from None
        entry = self._next_entry()
        if entry is None:
            self.ended = True
            self.feed.drain()
            raise StopIteration
        self.current = entry
        return entry

    def _take(self, n: int, where: str) -> bytes:
        try:
            return self.feed.take(n)
        except _Truncated:
            raise TarError(f"the archive is truncated {where}") from None

    def _next_entry(self) -> TarEntry | None:
        feed = self.feed
        pax: dict[bytes, bytes] = {}
        long_name = long_link = None
        extended = 0  # bytes of extended headers read for this entry
        first = feed.tell
        while True:
            at = feed.tell
            header = self._take(BLOCK, ": it ends without the end-of-archive marker")
            if header.count(0) == BLOCK:
                self._end_of_archive(at)
                return None
            try:
                if not _checksum_ok(header):
                    raise TarError(f"the archive is corrupt: bad tar header at byte {at}")
                kind = header[156]
                size = _number(header[124:136])
                if size < 0:
                    raise ValueError("negative size")
                if kind in _EXTENDED:
                    extended += size
                    if size > MAX_EXTENDED_HEADER or extended > MAX_EXTENDED_HEADERS_TOTAL:
                        raise TarError(
                            f"the archive is corrupt: an extended header of {size} bytes at "
                            f"byte {at} (at most {MAX_EXTENDED_HEADER} each and "
                            f"{MAX_EXTENDED_HEADERS_TOTAL} before one entry)"
                        )
                    data = self._take(size + (-size % BLOCK), "inside an extended header")
                    data = data[:size]
                    if kind == _PAX:
                        pax = _parse_pax(data)
                    elif kind == _PAX_GLOBAL:
                        records = _parse_pax(data).items()
                        self._pax_global.update(
                            (k, v) for k, v in records if k in _PAX_GLOBAL_KEYS
                        )
                    elif kind == _GNU_LONGNAME:
                        long_name = _cstr(data)
                    else:
                        long_link = _cstr(data)
                    continue
                return self._entry(header, kind, size, pax, long_name, long_link, first, at)
            except ValueError:
                raise TarError(f"the archive is corrupt: bad tar header at byte {at}") from None

    def _entry(
        self,
        header: bytes,
        kind: int,
        size: int,
        pax: dict[bytes, bytes],
        long_name: bytes | None,
        long_link: bytes | None,
        first: int,
        at: int,
    ) -> TarEntry:
        name = _cstr(header[0:100])
        # Only POSIX ustar ("ustar\0") has a name prefix there; GNU headers ("ustar  \0")
        # keep atime, ctime and the sparse map in those bytes.
        if header[257:263] == b"ustar\x00" and header[345] != 0:
            name = _cstr(header[345:500]) + b"/" + name
        meta = {**self._pax_global, **pax} if self._pax_global else pax
        mtime = _number(header[136:148]) * 1_000_000_000
        sparse = self._old_sparse_map(header, at) if kind == GNU_SPARSE else None
        if meta.get(b"GNU.sparse.major") == b"1" and meta.get(b"GNU.sparse.minor") == b"0":
            # pax sparse 1.0 (GNU tar's posix -S): the real name and size in the pax
            # header, the map in decimal lines at the start of the data.
            sparse = SparseMap(None, int(meta.get(b"GNU.sparse.realsize", b"")))
            name = meta.get(b"GNU.sparse.name") or name
            meta = {k: v for k, v in meta.items() if k != b"path"}
        name = meta.get(b"path") or long_name or name
        size = _pax_size(meta[b"size"]) if b"size" in meta else size
        stored = 0 if kind in _NO_DATA else size
        if kind in REGULAR and name.endswith(b"/"):
            # A "file" whose name ends in '/' is a directory (old V7 archives have no
            # directory type); GNU tar and tarfile read it so. Its data, if any, is skipped.
            kind = DIRECTORY
        entry = TarEntry(
            name=name,
            type=kind,
            mode=_number(header[100:108]),
            uid=int(meta[b"uid"]) if b"uid" in meta else _number(header[108:116]),
            gid=int(meta[b"gid"]) if b"gid" in meta else _number(header[116:124]),
            size=stored,
            mtime=_clamp_time(_pax_time(meta[b"mtime"]) if b"mtime" in meta else mtime),
            linkname=meta.get(b"linkpath") or long_link or _cstr(header[157:257]),
            header_offset=first,
            data_offset=self.feed.tell,
            sparse=sparse,
            remaining=stored,
            _reader=self,
        )
        # Older pax sparse formats (0.0, 0.1): their data is skipped whole, in step.
        if sparse is None and any(k.startswith(b"GNU.sparse") for k in meta):
            entry.unsupported = "sparse files are not supported"
        return entry

    def _end_of_archive(self, at: int) -> None:
        """A zero block was read: the end of the archive is two of them. Anything else after
        the first one is a corrupt archive, never a silent stop that would drop the rest."""
        second = self._take(BLOCK, ": it ends after a single zero block")
        if second.count(0) != BLOCK:
            raise TarError(
                f"the archive is corrupt: a lone zero block at byte {at} inside the archive"
            )

    def _old_sparse_map(self, header: bytes, at: int) -> SparseMap:
        """The map of an old GNU sparse entry ('S'), reading its extension blocks."""
        regions: list[tuple[int, int]] = []
        ended = False

        def add(block: bytes, start: int, count: int) -> None:
            nonlocal ended
            for i in range(count):
                pair = block[start + 24 * i : start + 24 * i + 24]
                if ended or pair[12] == 0:  # GNU tar: an empty length ends the map
                    ended = True
                    return
                regions.append((_number(pair[:12]), _number(pair[12:])))

        add(header, _SPARSE_MAP_AT, _SPARSE_IN_HEADER)
        extended = header[482]
        blocks = 0
        while extended:
            blocks += 1
            if blocks > _MAX_SPARSE_EXT:
                raise TarError(f"the archive has an oversized sparse map at byte {at}")
            block = self._take(BLOCK, "inside a sparse map")
            add(block, 0, _SPARSE_IN_EXT)
            extended = block[504]
        return SparseMap(regions, _number(header[483:495]))


def iter_entries(
    stream: _Readable, *, passthrough: tuple[type[BaseException], ...] = ()
) -> TarReader:
    """The entries of the tar stream read from ``stream`` (uncompressed), one by one.

    Raises :class:`TarError` when the stream is not a readable tar (a read error of
    ``stream`` becomes one too, except those of the ``passthrough`` types: a source that
    already says what went wrong in its own words, and a cancellation). The reader's
    :meth:`TarReader.check_start` looks at the first block before anything is done.
    """
    return TarReader(stream, passthrough)
