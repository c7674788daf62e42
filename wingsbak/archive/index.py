"""An archive's index: a SQLite file beside it that says what the archive holds and where,
so that listing a folder reads only the index and reading one file decompresses only the
gzip members it spans (archive/gzmembers.py).

The archiver writes it during its tar pass (it knows every offset); :func:`build_index`
makes it for an archive without one (an older backup, Wings' own) in one sequential pass
over the archive with :func:`wingsbak.archive.tarread.iter_entries`, the reader the restore
uses, noting the gzip members as it decompresses. A single-member archive has one member:
reading a file of it decompresses from its start.

Schema (format 1)::

    CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
        -- format         1
        -- archive_size   bytes of the archive file the index describes
        -- archive_mtime  its mtime in ns (0: not checked, as for an S3 object)
        -- head_sha256    sha256 of its first 64 KiB
        -- tail_sha256    sha256 of its last 64 KiB
    CREATE TABLE members (
        seq INTEGER PRIMARY KEY,             -- 0, 1, ... in stream order
        compressed_offset INTEGER NOT NULL,  -- where the gzip member starts in the file
        uncompressed_offset INTEGER NOT NULL -- where its output starts in the tar stream
    );
    CREATE TABLE folders (
        path BLOB PRIMARY KEY,   -- the folder's path, b"" for the root; paths are relative,
                                 -- '/'-separated, the bytes stored in the tar (no leading
                                 -- '/' or './', no trailing '/')
        entries BLOB NOT NULL    -- its children, sorted by name (bytewise), back to back
    ) WITHOUT ROWID;

Each child in ``entries`` is a little-endian struct ``<BIqqqqII`` followed by two byte
strings: kind (0 file, 1 folder, 2 symlink, 3 other), mode (permission bits as stored),
size (a file's content, a sparse file's holes included; else 0), mtime in ns, the offset
of its first header block in the tar stream, the offset of its data (both -1 for a folder
the archive implies but holds no entry of), the length of its name, the length of its link
target; then the name and the link target (as stored, never followed). One row per folder
rather than per entry: the archiver writes it at the end of a backup, where a row per entry
would cost several percent of the backup's time, and a listing reads a single row. Until
then the entries wait in a private temporary database on disk (:class:`IndexData`), not
in memory: a million of them cost the memory of a few.

A hard link to a file is indexed as a file with its target's size and offsets. An entry
whose path climbs out (``..``) is left out. Later entries of the same path replace earlier
ones, as extracting does.

An index is used only when it matches its archive (size, head and tail digests, and mtime
where recorded); otherwise it is ignored and built again. It is written under a temporary
name and renamed, so no half index ever has the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import struct
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from wingsbak import failpoint
from wingsbak.archive.atomic import fsync_dir
from wingsbak.archive.gzmembers import GzipFormatError, Member, MemberReader
from wingsbak.archive.tarread import (
    DIRECTORY,
    GNU_DUMPDIR,
    GNU_SPARSE,
    HARDLINK,
    REGULAR,
    SYMLINK,
    iter_entries,
)
from wingsbak.log import get_logger

__all__ = [
    "FORMAT",
    "INDEX_SUFFIX",
    "KIND_DIR",
    "KIND_FILE",
    "KIND_OTHER",
    "KIND_SYMLINK",
    "ArchiveIndex",
    "IndexData",
    "IndexedEntry",
    "Stamp",
    "build_index",
    "index_path",
    "stamp_of",
    "write_index",
    "write_index_for_file",
]

log = get_logger(__name__)

FORMAT = 1
INDEX_SUFFIX = ".index"
KIND_FILE, KIND_DIR, KIND_SYMLINK, KIND_OTHER = "file", "dir", "symlink", "other"
_STAMP_SPAN = 64 * 1024
_IMPLIED_MODE = 0o755
_CACHED_FOLDERS = 64  # decoded folders kept: a file manager opens files of the one it lists


class RangeSource(Protocol):
    """Bytes of an archive read at any offset (a local file, an S3 object)."""

    @property
    def size(self) -> int: ...

    @property
    def mtime_ns(self) -> int: ...  # 0: unknown

    def read_at(self, offset: int, length: int) -> bytes: ...


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Stamp:
    """What ties an index to one archive file."""

    size: int
    mtime_ns: int
    head_sha256: str
    tail_sha256: str


def stamp_of(source: RangeSource) -> Stamp:
    size = source.size
    head = source.read_at(0, min(size, _STAMP_SPAN))
    tail_at = max(0, size - _STAMP_SPAN)
    tail = source.read_at(tail_at, size - tail_at)
    return Stamp(
        size, source.mtime_ns, hashlib.sha256(head).hexdigest(), hashlib.sha256(tail).hexdigest()
    )


class FileSource:
    """A local archive file read with ``os.pread`` (thread-safe: no shared position)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd = -1  # until it is open: nothing for close (and __del__) to close
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(self._fd)
        self._size = st.st_size
        self._mtime_ns = st.st_mtime_ns

    @property
    def size(self) -> int:
        return self._size

    @property
    def mtime_ns(self) -> int:
        return self._mtime_ns

    def read_at(self, offset: int, length: int) -> bytes:
        parts = []
        while length > 0:
            data = os.pread(self._fd, length, offset)
            if not data:
                break
            parts.append(data)
            offset += len(data)
            length -= len(data)
        return b"".join(parts)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:  # a view dropped from a cache closes when its last reader ends
        self.close()

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_RECORD = struct.Struct("<BIqqqqII")
_KIND_CODE = {KIND_FILE: 0, KIND_DIR: 1, KIND_SYMLINK: 2, KIND_OTHER: 3}
_KIND_NAME = {code: kind for kind, code in _KIND_CODE.items()}


class IndexData:
    """An index's content before it is written: every entry as it comes, spooled to a
    private temporary SQLite database (on disk, its pages cached a few MiB at most, removed
    when closed or when the process ends however it ends), so that a million entries take
    the memory of ten; and the members. :meth:`folders` gives what the index holds."""

    _BATCH = 4096

    def __init__(self) -> None:
        self.members: list[Member] = []
        # Where the spool cannot be written (its folder full, SQLite's temporary folder not
        # writable), the index is given up, not the backup: said once, then raised by
        # :meth:`folders` and :meth:`file`, so that no index is written.
        self.error: sqlite3.Error | None = None
        self._db = sqlite3.connect("", check_same_thread=False)  # "": a temporary file
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("PRAGMA cache_size=-1024")  # KiB
        self._db.execute(
            "CREATE TABLE entries (seq INTEGER PRIMARY KEY, parent BLOB NOT NULL,"
            " name BLOB NOT NULL, record BLOB)"
        )
        self._batch: list[tuple[bytes, bytes, bytes]] = []
        self._by_name = False

    def add(
        self,
        parent: bytes,
        name: bytes,
        kind: str,
        size: int,
        mode: int,
        mtime_ns: int,
        linkname: bytes,
        header_offset: int,
        data_offset: int,
    ) -> None:
        record = _RECORD.pack(
            _KIND_CODE[kind],
            mode,
            size,
            mtime_ns,
            header_offset,
            data_offset,
            len(name),
            len(linkname),
        )
        if self.error is not None:
            return
        self._batch.append((parent, name, record + name + linkname))
        if len(self._batch) >= self._BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self._batch:
            return
        try:
            self._db.executemany(
                "INSERT INTO entries (parent, name, record) VALUES (?, ?, ?)", self._batch
            )
        except sqlite3.Error as exc:
            self.error = exc
            log.warning("archive_index_given_up", error=str(exc))
        finally:
            self._batch.clear()

    def _spooled(self) -> sqlite3.Connection:
        self._flush()
        if self.error is not None:
            raise self.error
        return self._db

    def file(self, parent: bytes, name: bytes) -> tuple[int, int, int] | None:
        """The size and header and data offsets of the file last added at that path, if
        the entry there is a file (what a hard link to it stands for)."""
        self._spooled()
        if not self._by_name:  # made at the first hard link only: most archives have none
            self._db.execute("CREATE INDEX by_name ON entries (parent, name)")
            self._by_name = True
        row = self._db.execute(
            "SELECT record FROM entries WHERE parent = ? AND name = ? ORDER BY seq DESC LIMIT 1",
            (parent, name),
        ).fetchone()
        if row is None:
            return None
        kind, _mode, size, _mtime, header, data, _n, _l = _RECORD.unpack_from(row[0])
        return (size, header, data) if kind == _KIND_CODE[KIND_FILE] else None

    def folders(self) -> Iterator[tuple[bytes, bytes]]:
        """Each folder's path and its children packed back to back, sorted by name, a
        later entry of a name replacing an earlier one; the root and every folder the
        entries imply (tar needs no entry for a folder) included."""
        db = self._spooled()
        db.execute("DROP TABLE IF EXISTS implied")
        db.execute("CREATE TABLE implied (parent BLOB, name BLOB, PRIMARY KEY (parent, name))")
        parents = db.execute("SELECT DISTINCT parent FROM entries WHERE parent != x''")
        while rows := parents.fetchmany(1024):
            for (path,) in rows:
                while path:
                    parent, name = _split(path)
                    inserted = db.execute(
                        "INSERT OR IGNORE INTO implied VALUES (?, ?)", (parent, name)
                    ).rowcount
                    if not inserted:
                        break  # and so are the folders above it
                    path = parent
        rows = db.execute(
            "SELECT parent, name, record, seq FROM entries"
            " UNION ALL SELECT parent, name, NULL, -1 FROM implied"
            " ORDER BY 1, 2, 4"  # in stream order within a name: the last one stays
        )
        folder: bytes | None = None
        children: list[bytes] = []
        last = b""
        root_seen = False
        while batch := rows.fetchmany(1024):
            for parent, name, record, _seq in batch:
                if parent != folder:
                    if folder is not None:
                        yield folder, b"".join(children)
                    folder, children, last = parent, [], b""
                    root_seen = root_seen or parent == b""
                if record is None:
                    record = _implied(name)
                if children and name == last:
                    children[-1] = record
                else:
                    children.append(record)
                    last = name
        if folder is not None:
            yield folder, b"".join(children)
        if not root_seen:
            yield b"", b""

    def close(self) -> None:
        self._db.close()


def _implied(name: bytes) -> bytes:
    """A folder the archive holds no entry of."""
    return _RECORD.pack(_KIND_CODE[KIND_DIR], _IMPLIED_MODE, 0, 0, -1, -1, len(name), 0) + name


def index_path(archive: str | os.PathLike[str]) -> Path:
    """``<archive>.index``: beside it, not named as an archive: no backup listing shows it."""
    return Path(f"{os.fspath(archive)}{INDEX_SUFFIX}")


def _normal(name: bytes) -> bytes | None:
    """The path as the index keys it, or None for the root or a path that climbs out."""
    parts = [p for p in name.split(b"/") if p and p != b"."]
    if not parts or b".." in parts:
        return None
    return b"/".join(parts)


def _split(path: bytes) -> tuple[bytes, bytes]:
    parent, _, name = path.rpartition(b"/")
    return parent, name


def _kind(type_: int) -> str:
    if type_ in REGULAR or type_ == GNU_SPARSE:
        return KIND_FILE
    if type_ in (DIRECTORY, GNU_DUMPDIR):
        return KIND_DIR
    if type_ == SYMLINK:
        return KIND_SYMLINK
    return KIND_OTHER


def build_index(stream: _Readable) -> IndexData:
    """The index of the gzip tar read from ``stream`` (compressed), in one sequential pass.
    Raises :class:`~wingsbak.archive.tarread.TarError` for an unreadable archive, and
    :class:`~wingsbak.archive.gzmembers.GzipFormatError` for one that is not gzip."""
    reader = MemberReader(stream)
    data = IndexData()
    try:
        tar = iter_entries(reader, passthrough=(GzipFormatError,))
        tar.check_start()
        for entry in tar:
            path = _normal(entry.name)
            if path is None:
                continue
            kind = _kind(entry.type)
            size = entry.real_size if kind == KIND_FILE else 0
            at = (entry.header_offset, entry.data_offset)
            linkname = entry.linkname
            if entry.type == HARDLINK:
                target = data.file(*_split(_normal(entry.linkname) or b""))
                if target is not None:
                    kind, size, at, linkname = KIND_FILE, target[0], target[1:], b""
            parent, name = _split(path)
            data.add(parent, name, kind, size, entry.mode & 0o7777, entry.mtime, linkname, *at)
    except BaseException:
        data.close()
        raise
    data.members = list(reader.members)
    return data


def write_index(path: str | os.PathLike[str], data: IndexData, stamp: Stamp) -> Path:
    """Write the index atomically (a temporary name in the same folder, then a rename)."""
    final = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    os.close(fd)
    try:
        db = sqlite3.connect(tmp)
        try:
            _fill(db, data, stamp)
        finally:
            db.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        failpoint.hit("index-written")
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(final.parent)
    return final


def _fill(db: sqlite3.Connection, data: IndexData, stamp: Stamp) -> None:
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
        CREATE TABLE members (seq INTEGER PRIMARY KEY, compressed_offset INTEGER NOT NULL,
                              uncompressed_offset INTEGER NOT NULL);
        CREATE TABLE folders (path BLOB PRIMARY KEY, entries BLOB NOT NULL) WITHOUT ROWID;
        """
    )
    db.executemany(
        "INSERT INTO meta VALUES (?, ?)",
        [
            ("format", FORMAT),
            ("archive_size", stamp.size),
            ("archive_mtime", stamp.mtime_ns),
            ("head_sha256", stamp.head_sha256),
            ("tail_sha256", stamp.tail_sha256),
        ],
    )
    db.executemany(
        "INSERT INTO members VALUES (?, ?, ?)",
        [(i, c, u) for i, (c, u) in enumerate(data.members)],
    )
    db.executemany("INSERT INTO folders VALUES (?, ?)", data.folders())
    db.commit()


def write_index_for_file(archive: str | os.PathLike[str], data: IndexData) -> Path:
    """The index of a local archive file, beside it."""
    with FileSource(archive) as source:
        stamp = stamp_of(source)
    return write_index(index_path(archive), data, stamp)


@dataclass(frozen=True, slots=True)
class IndexedEntry:
    path: bytes
    kind: str
    size: int
    mode: int
    mtime_ns: int
    linkname: bytes
    header_offset: int
    data_offset: int


def _unpack(parent: bytes, blob: bytes) -> list[IndexedEntry]:
    out = []
    pos = 0
    prefix = parent + b"/" if parent else b""
    unpack = _RECORD.unpack_from
    size = _RECORD.size
    while pos < len(blob):
        kind, mode, length, mtime, header, data, name_len, link_len = unpack(blob, pos)
        pos += size
        name = blob[pos : pos + name_len]
        pos += name_len
        link = blob[pos : pos + link_len]
        pos += link_len
        out.append(
            IndexedEntry(prefix + name, _KIND_NAME[kind], length, mode, mtime, link, header, data)
        )
    return out


class ArchiveIndex:
    """An index file opened read-only. Safe to use from several threads."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        uri = self.path.resolve().as_uri() + "?mode=ro"
        self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        self._lock = threading.Lock()
        self._cache: dict[bytes, tuple[list[IndexedEntry], dict[bytes, IndexedEntry]]] = {}
        self.members: list[Member] = [
            (c, u)
            for c, u in self._db.execute(
                "SELECT compressed_offset, uncompressed_offset FROM members ORDER BY seq"
            )
        ]

    @classmethod
    def open_matching(
        cls, path: str | os.PathLike[str], source: RangeSource
    ) -> ArchiveIndex | None:
        """The index at ``path`` if it exists, is readable and matches the archive in
        ``source``; None otherwise (then it is to be built again)."""
        try:
            index = cls(path)
        except sqlite3.Error:
            return None
        try:
            if index.stamp_matches(stamp_of(source)):
                return index
        except sqlite3.Error:
            pass
        index.close()
        return None

    def stamp_matches(self, stamp: Stamp) -> bool:
        with self._lock:
            meta = dict(self._db.execute("SELECT key, value FROM meta"))
        mtime = meta.get("archive_mtime", 0)
        return (
            meta.get("format") == FORMAT
            and meta.get("archive_size") == stamp.size
            and meta.get("head_sha256") == stamp.head_sha256
            and meta.get("tail_sha256") == stamp.tail_sha256
            and (not mtime or not stamp.mtime_ns or mtime == stamp.mtime_ns)
            and bool(self.members)
        )

    def get(self, path: bytes) -> IndexedEntry | None:
        return self._folder(_split(path)[0])[1].get(path)

    def children(self, path: bytes) -> list[IndexedEntry]:
        """The folder's children sorted by name ([] for no such folder)."""
        return self._folder(path)[0]

    def _folder(self, path: bytes) -> tuple[list[IndexedEntry], dict[bytes, IndexedEntry]]:
        with self._lock:
            cached = self._cache.get(path)
            if cached is not None:
                return cached
            row = self._db.execute("SELECT entries FROM folders WHERE path = ?", (path,)).fetchone()
            children = _unpack(path, row[0]) if row else []
            if len(self._cache) >= _CACHED_FOLDERS:
                self._cache.pop(next(iter(self._cache)))
            folder = self._cache[path] = (children, {c.path: c for c in children})
            return folder

    def below(self, path: bytes) -> Iterator[IndexedEntry]:
        """Everything below the folder ``path``, parents before children."""
        for child in self.children(path):
            yield child
            if child.kind == KIND_DIR:
                yield from self.below(child.path)

    def close(self) -> None:
        self._db.close()
