"""A backup archive (a gzip tar) browsed through its index (archive/index.py).

A listing reads only the index. Reading a file fetches and decompresses only the gzip
members its headers and data span: from the member holding its first header block, the tar
stream is parsed by :func:`wingsbak.archive.tarread.iter_entries` (the restore's reader, so
sparse files and long names read as a restore writes them) for that one entry.

The archive's bytes come from a :class:`RangeSource`: a local file (``os.pread``) or an S3
object (ranged ``GetObject``), one read per gzip member.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wingsbak.archive.gzmembers import Member, MemberReader
from wingsbak.archive.index import (
    KIND_DIR,
    KIND_FILE,
    ArchiveIndex,
    FileSource,
    IndexedEntry,
    RangeSource,
    build_index,
    index_path,
    stamp_of,
    write_index,
)
from wingsbak.archive.tarread import TarEntry, iter_entries
from wingsbak.browse.model import Entry, NotADirectory, NotFound, Readable

__all__ = [
    "FileSource",
    "RangeSource",
    "S3ObjectSource",
    "TarView",
    "open_local_archive",
    "open_tar_view",
]

# A single-member archive (older ones, Wings') is read in steps of this size.
_MAX_READ = 8 * 1024 * 1024


class S3ObjectSource:
    """An S3 object read by ranged ``GetObject`` requests through a boto3 client."""

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self.client = client
        self.bucket = bucket
        self.key = key
        head = client.head_object(Bucket=bucket, Key=key)
        self._size = int(head["ContentLength"])
        self.etag = str(head.get("ETag", ""))

    @property
    def size(self) -> int:
        return self._size

    @property
    def mtime_ns(self) -> int:
        return 0  # an upload's time is not the archive's: the digests tie the index to it

    def read_at(self, offset: int, length: int) -> bytes:
        length = min(length, self._size - offset)
        if length <= 0:
            return b""
        answer = self.client.get_object(
            Bucket=self.bucket, Key=self.key, Range=f"bytes={offset}-{offset + length - 1}"
        )
        body = answer["Body"]
        try:
            return body.read()
        finally:
            body.close()


class _SourceReader:
    """The compressed bytes of ``source`` from ``offset`` on, one read per gzip member."""

    def __init__(self, source: RangeSource, offset: int, ends: list[int]) -> None:
        self.source = source
        self.pos = offset
        self.ends = ends  # where members end (sorted), the file's size last

    def read(self, n: int = -1, /) -> bytes:
        size = self.source.size
        if self.pos >= size:
            return b""
        i = bisect.bisect_right(self.ends, self.pos)
        end = self.ends[i] if i < len(self.ends) else size
        end = min(end, self.pos + _MAX_READ)
        data = self.source.read_at(self.pos, end - self.pos)
        self.pos += len(data)
        return data


class _Tail:
    """The uncompressed stream from ``start`` on, decompressing from the member that holds
    it; what precedes ``start`` in that member is dropped."""

    def __init__(self, source: RangeSource, members: list[Member], start: int) -> None:
        starts = [u for _, u in members]
        i = max(0, bisect.bisect_right(starts, start) - 1)
        compressed_at, uncompressed_at = members[i]
        ends = [c for c, _ in members[i + 1 :]] + [source.size]
        self.reader = MemberReader(_SourceReader(source, compressed_at, ends))
        self.skip = start - uncompressed_at

    def read(self, n: int = -1, /) -> bytes:
        while self.skip:
            data = self.reader.read(min(self.skip, _MAX_READ))
            if not data:
                return b""
            self.skip -= len(data)
        return self.reader.read(n)


class _FileContent:
    """A file's content, read from its tar entry (holes of a sparse file as zeros)."""

    def __init__(self, entry: TarEntry) -> None:
        self.entry = entry
        self.left = entry.real_size
        self.regions: list[tuple[int, int]] | None = None
        self.pos = 0  # position in the file
        if entry.sparse is not None:
            self.regions = entry.sparse_regions()
        self.region = 0

    def read(self, n: int = -1, /) -> bytes:
        if n < 0:
            return b"".join(iter(lambda: self.read(_MAX_READ), b""))
        n = min(n, self.left)
        if n <= 0:
            return b""
        data = self.entry.read(n) if self.regions is None else self._sparse(n)
        self.left -= len(data)
        self.pos += len(data)
        return data

    def _sparse(self, n: int) -> bytes:
        assert self.regions is not None
        while self.region < len(self.regions):
            offset, length = self.regions[self.region]
            if self.pos < offset:
                return bytes(min(n, offset - self.pos))
            if self.pos < offset + length:
                return self.entry.read(min(n, offset + length - self.pos))
            self.region += 1
        return bytes(n)  # a hole up to the real size


def _to_entry(row: IndexedEntry) -> Entry:
    return Entry(
        path=row.path.decode("utf-8", "surrogateescape"),
        kind=row.kind,  # type: ignore[arg-type]
        size=row.size,
        mode=row.mode,
        mtime=row.mtime_ns / 1e9,
        linkname=row.linkname.decode("utf-8", "surrogateescape"),
    )


def _key(path: str) -> bytes:
    return path.strip("/").encode("utf-8", "surrogateescape")


class TarView:
    """A BackupView of one archive read through ``source`` and described by ``index``."""

    def __init__(self, source: RangeSource, index: ArchiveIndex) -> None:
        self.source = source
        self.index = index

    def stat(self, path: str) -> Entry:
        key = _key(path)
        if not key:
            return Entry("", "dir", 0, 0o755, 0.0)
        row = self.index.get(key)
        if row is None:
            raise NotFound(path)
        return _to_entry(row)

    def listdir(self, path: str) -> list[Entry]:
        key = _key(path)
        rows = self.index.children(key)
        if not rows and key:
            row = self.index.get(key)
            if row is None:
                raise NotFound(path)
            if row.kind != KIND_DIR:
                raise NotADirectory(path)
        return [_to_entry(r) for r in rows]

    def walk(self, path: str) -> Iterator[Entry]:
        top = self.stat(path)
        yield top
        if top.kind == KIND_DIR:
            for row in self.index.below(_key(path)):
                yield _to_entry(row)

    @contextlib.contextmanager
    def open(self, path: str) -> Iterator[Readable]:
        row = self.index.get(_key(path))
        if row is None:
            raise NotFound(path)
        if row.kind != KIND_FILE or row.header_offset < 0:
            raise IsADirectoryError(path)
        tar = iter_entries(_Tail(self.source, self.index.members, row.header_offset))
        entry = next(tar)
        yield _FileContent(entry)

    def close(self) -> None:
        self.index.close()
        close = getattr(self.source, "close", None)
        if close is not None:
            close()


_building = threading.Lock()


def open_tar_view(source: RangeSource, index_file: str | os.PathLike[str]) -> TarView:
    """A view of the archive in ``source``, with the index at ``index_file``: used when it
    matches the archive, else built in one pass over the archive and kept there."""
    index = ArchiveIndex.open_matching(index_file, source)
    if index is None:
        with _building:  # one pass at a time on this node: they compete for the same disk
            index = ArchiveIndex.open_matching(index_file, source)
            if index is None:
                stamp = stamp_of(source)
                data = build_index(_SourceReader(source, 0, [source.size]))
                try:
                    write_index(Path(index_file), data, stamp)
                finally:
                    data.close()
                index = ArchiveIndex(index_file)
    return TarView(source, index)


def open_local_archive(path: str | os.PathLike[str]) -> TarView:
    """The view of an archive on this node's disk, its index beside it (``<archive>.index``:
    the archiver's, or one built by this first browse and kept)."""
    source = FileSource(path)
    try:
        try:
            return open_tar_view(source, index_path(path))
        except PermissionError:  # a folder this user cannot write (the command line's)
            private = hashlib.sha256(os.fsencode(Path(path).resolve())).hexdigest()[:32]
            return open_tar_view(source, Path(tempfile.gettempdir()) / f"wingsbak-{private}.index")
    except BaseException:
        source.close()
        raise
