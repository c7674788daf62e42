"""The compressions an archive may be in, one :class:`Codec` each: its name, its file
suffix, the bytes it starts with, its writer, its reader and its unpacked-size probe; and the
file names of a backup's archive, built here only.

``gzip`` is what backups are (Wings' ``.tar.gz``): ISA-L when installed, zlib otherwise, both
ordinary gzip. It is written as a series of independent members of 4 MiB input each
(archive/gzmembers.py), compressed on worker threads and written by a thread of their own, so
the checksum, rate limit and disk write run beside the tar producer, and a reader that knows
where the members start (the archive's index) can decompress one file without the rest.
ISA-L's threaded reader decompresses ahead on a thread of its
own while the restore writes files. ``tar`` is no compression: what ``restic dump`` gives.
"""

from __future__ import annotations

import gzip as _zlib_gzip
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from wingsbak.archive.gzmembers import SIZE_MEMBER_LENGTH, MemberWriter, size_from_member
from wingsbak.formats import BEST_COMPRESSION, BEST_SPEED, COMPRESSION_LEVELS, NONE

try:
    from isal import igzip_threaded

    HAVE_ISAL = True
except ImportError:  # pragma: no cover - exercised on machines without isal wheels
    HAVE_ISAL = False

__all__ = [
    "CODECS",
    "GZIP",
    "HAVE_ISAL",
    "TAR",
    "Codec",
    "archive_name",
    "download_filename",
    "earlier_archive_name",
]

# ISA-L has levels 0-3; its level 1 is several times faster than zlib -1 at a similar ratio.
_ISAL_LEVEL = {BEST_SPEED: 1, BEST_COMPRESSION: 3}
_ZLIB_LEVEL = {NONE: 0, BEST_SPEED: 1, BEST_COMPRESSION: 9}
BLOCK_SIZE = 1024 * 1024
# wingsbak's earlier archive names, and a download's file name, start with it.
EARLIER_PREFIX = "backup-"


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class _OpenWriter(Protocol):
    def __call__(
        self, raw: BinaryIO, level: str = BEST_SPEED, threads: int | None = None
    ) -> BinaryIO: ...


@dataclass(frozen=True, slots=True)
class Codec:
    name: str  # in messages ("not a gzip archive") and settings
    suffix: str  # of an archive's file name, the tar's included
    magic: bytes  # what a stream in it starts with (empty: nothing to check)
    content_type: str  # of an archive in it, uploaded to a bucket
    # A writable that compresses into ``raw`` at a compression level (with as many threads;
    # None: the machine's share); closing it finishes the stream, not ``raw``.
    open_writer: _OpenWriter
    # A readable of the uncompressed stream read from its argument.
    open_reader: Callable[[_Readable], BinaryIO]
    # The unpacked size of an archive file (0: unknown), without reading it.
    unpacked_size: Callable[[BinaryIO], int]


def compression_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def open_gzip_writer(
    raw: BinaryIO, level: str = BEST_SPEED, threads: int | None = None
) -> BinaryIO:
    """A writable that gzips into ``raw``; closing it finishes the gzip stream (not ``raw``)."""
    if level not in COMPRESSION_LEVELS:
        choices = ", ".join(COMPRESSION_LEVELS)
        raise ValueError(f"unknown compression level {level!r}; use one of {choices}")
    threads = threads if threads is not None else compression_threads()
    if HAVE_ISAL and level != NONE:
        return MemberWriter(raw, _ISAL_LEVEL[level], threads, isal=True)  # type: ignore[return-value]
    # No compression runs in this thread, as zlib's GzipFile did: the sink paces the producer.
    inline = level == NONE
    return MemberWriter(raw, _ZLIB_LEVEL[level], threads, isal=False, inline=inline)  # type: ignore[return-value]


def open_gzip_reader(raw: _Readable) -> BinaryIO:
    """The gunzipped stream of ``raw``, every member of it, CRC and length checked."""
    if HAVE_ISAL:
        # One thread decompresses ahead while the caller's works on what it gave: two cores.
        return igzip_threaded.open(raw, "rb", threads=1, block_size=BLOCK_SIZE)  # type: ignore[return-value]
    return _zlib_gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[arg-type,return-value]


def gzip_unpacked_size(f: BinaryIO) -> int:
    """The unpacked size of a gzip file: what its last, empty member records (wingsbak's
    archives since they are written as members), else its trailer's (which holds a single
    member's size modulo 4 GiB; the smallest value not below the packed size is taken), or 0."""
    packed = os.fstat(f.fileno()).st_size
    if packed < 18:
        return 0
    if packed >= SIZE_MEMBER_LENGTH:
        recorded = size_from_member(
            os.pread(f.fileno(), SIZE_MEMBER_LENGTH, packed - SIZE_MEMBER_LENGTH)
        )
        if recorded is not None:
            return recorded
    trailer = os.pread(f.fileno(), 4, packed - 4)
    modulo = int.from_bytes(trailer, "little")
    wraps = max(0, -(-(packed - modulo) // 2**32))
    return modulo + wraps * 2**32


class _Uncompressed:
    """Writes go to ``raw`` as they are; closing finishes nothing and leaves ``raw`` open,
    as closing a gzip writer does."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw

    def write(self, data: bytes | memoryview, /) -> int:
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        self.raw.flush()


def _open_tar_writer(
    raw: BinaryIO, level: str = BEST_SPEED, threads: int | None = None
) -> BinaryIO:
    return _Uncompressed(raw)  # type: ignore[return-value]


def _open_tar_reader(raw: _Readable) -> BinaryIO:
    return raw  # type: ignore[return-value]


def _file_size(f: BinaryIO) -> int:
    return os.fstat(f.fileno()).st_size


GZIP = Codec(
    name="gzip",
    suffix=".tar.gz",
    magic=b"\x1f\x8b",
    content_type="application/x-gzip",
    open_writer=open_gzip_writer,
    open_reader=open_gzip_reader,
    unpacked_size=gzip_unpacked_size,
)
TAR = Codec(
    name="tar",
    suffix=".tar",
    magic=b"",  # "ustar" sits at byte 257, and older tars have no mark at all
    content_type="application/x-tar",
    open_writer=_open_tar_writer,
    open_reader=_open_tar_reader,
    unpacked_size=_file_size,
)
CODECS = {codec.name: codec for codec in (GZIP, TAR)}


def archive_name(backup_uuid: str) -> str:
    """Both Wings' name of a backup's archive (``<uuid>.tar.gz``), and the panel's and the
    node bucket's object name."""
    return backup_uuid + GZIP.suffix


def earlier_archive_name(backup_uuid: str) -> str:
    """wingsbak's earlier name of a backup's archive (``backup-<uuid>.tar.gz``)."""
    return f"{EARLIER_PREFIX}{backup_uuid}{GZIP.suffix}"


def download_filename(backup_uuid: str) -> str:
    """The file name a downloaded backup is saved under (``Content-Disposition``), whatever
    its store: wingsbak's earlier archive name."""
    return earlier_archive_name(backup_uuid)
