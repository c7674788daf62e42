"""A :class:`~wingsbak.browse.model.BackupView` of any ``.tar.gz`` without an index: its
listing is built in one sequential pass and kept in memory, and a read streams the archive
from its start up to the entry. Slow on a large archive, right on every one. Blocking code.

Names are read as the restore reads them: ``./`` and empty components dropped, an absolute
name or one with ``..`` left out (a restore would skip it too); the last entry of a name
wins, as it does when extracting. Folders the archive implies but does not hold are shown.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from wingsbak.archive.codecs import GZIP, Codec
from wingsbak.archive.tarread import (
    DEVICES,
    DIRECTORY,
    GNU_DUMPDIR,
    HARDLINK,
    SYMLINK,
    TarEntry,
    iter_entries,
)
from wingsbak.browse.model import Entry, NotADirectory, NotFound, Readable

__all__ = ["ScanView", "split_path"]


def split_path(name: str) -> str | None:
    """A backup path in its one spelling (``a/b``), or None when it could leave the root."""
    if name.startswith("/") or "\x00" in name:
        return None
    parts = [p for p in name.split("/") if p and p != "."]
    return None if ".." in parts else "/".join(parts)


class _Data:
    """A file's content from its entry: a sparse file's holes read as zeros."""

    def __init__(self, entry: TarEntry) -> None:
        self.entry = entry
        self.regions = list(entry.sparse_regions()) if entry.sparse is not None else None
        self.pos = 0
        self.size = entry.real_size

    def read(self, n: int = -1, /) -> bytes:
        if self.regions is None:
            return self.entry.read(n)
        want = self.size - self.pos if n < 0 else min(n, self.size - self.pos)
        out = bytearray()
        while len(out) < want:
            if self.regions and self.regions[0][0] <= self.pos:
                offset, length = self.regions[0]
                piece = self.entry.read(min(offset + length - self.pos, want - len(out)))
                if self.pos + len(piece) >= offset + length:
                    self.regions.pop(0)
            else:
                hole_end = self.regions[0][0] if self.regions else self.size
                piece = bytes(min(hole_end - self.pos, want - len(out)))
            out += piece
            self.pos += len(piece)
        return bytes(out)


class ScanView:
    def __init__(self, path: str | os.PathLike[str], codec: Codec = GZIP) -> None:
        self.path = Path(path)
        self.codec = codec
        self._entries: dict[str, Entry] = {}
        self._children: dict[str, set[str]] = {"": set()}
        self._ordinal: dict[str, int] = {}  # which entry of the archive holds a file's data
        mtime = self.path.stat().st_mtime
        self._entries[""] = Entry("", "dir", 0, 0o755, mtime)
        with self._stream() as reader:
            for ordinal, e in enumerate(reader):
                self._add(ordinal, e, mtime)

    @contextlib.contextmanager
    def _stream(self) -> Iterator[Iterator[TarEntry]]:
        with self.path.open("rb") as raw, contextlib.closing(self.codec.open_reader(raw)) as s:
            yield iter_entries(s)

    def _add(self, ordinal: int, e: TarEntry, mtime: float) -> None:
        path = split_path(e.name.decode("utf-8", "surrogateescape"))
        if not path:
            return
        link = e.linkname.decode("utf-8", "surrogateescape")
        mode, when = e.mode & 0o7777, e.mtime / 1e9
        if e.type in (DIRECTORY, GNU_DUMPDIR):
            entry = Entry(path, "dir", 0, mode, when)
        elif e.type == SYMLINK:
            entry = Entry(path, "symlink", 0, mode, when, link)
        elif e.type in DEVICES:
            entry = Entry(path, "other", 0, mode, when)
        elif e.type == HARDLINK:
            target = split_path(link)
            held = self._entries.get(target) if target else None
            if held is None or held.kind != "file":
                return  # a restore skips it too
            entry = Entry(path, "file", held.size, mode, when)
            self._ordinal[path] = self._ordinal[held.path]
        else:
            entry = Entry(path, "file", e.real_size, mode, when)
            self._ordinal[path] = ordinal
        self._entries[path] = entry
        parent, _, name = path.rpartition("/")
        while True:
            self._children.setdefault(parent, set()).add(name)
            if parent in self._entries:
                break
            self._entries[parent] = Entry(parent, "dir", 0, 0o755, mtime)
            parent, _, name = parent.rpartition("/")
        if entry.kind == "dir":
            self._children.setdefault(path, set())

    def stat(self, path: str) -> Entry:
        key = split_path(path)
        entry = self._entries.get(key) if key is not None else None
        if entry is None:
            raise NotFound(path)
        return entry

    def listdir(self, path: str) -> list[Entry]:
        entry = self.stat(path)
        if entry.kind != "dir":
            raise NotADirectory(path)
        base = f"{entry.path}/" if entry.path else ""
        return [self._entries[base + n] for n in sorted(self._children.get(entry.path, ()))]

    def walk(self, path: str) -> Iterator[Entry]:
        entry = self.stat(path)
        yield entry
        if entry.kind == "dir":
            for child in self.listdir(entry.path):
                yield from self.walk(child.path)

    @contextlib.contextmanager
    def open(self, path: str) -> Iterator[Readable]:
        entry = self.stat(path)
        if entry.kind != "file":
            raise IsADirectoryError(path)
        wanted = self._ordinal[entry.path]
        with self._stream() as reader:
            for ordinal, e in enumerate(reader):
                if ordinal == wanted:
                    yield _Data(e)
                    return
        raise NotFound(path)  # the archive changed under the view
