"""What a browsable backup is, whatever holds it: a tree of :class:`Entry` read through a
:class:`BackupView`. An archive (indexed or not) and a restic snapshot each give one;
listings, reads, downloads and single-path restores use only this.

Paths are relative POSIX paths inside the backup, without a leading ``/``; ``""`` is its root.
Every method is blocking (call it from a worker thread, never on the event loop).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

__all__ = [
    "BackupFolder",
    "BackupView",
    "Browsable",
    "Entry",
    "EntryKind",
    "NotADirectory",
    "NotFound",
    "Readable",
    "clean_path",
]

EntryKind = Literal["file", "dir", "symlink", "other"]


def clean_path(name: str) -> str | None:
    """A backup path in its one spelling (``a/b``), or None when it could leave the root."""
    if name.startswith("/") or "\x00" in name:
        return None
    parts = [p for p in name.split("/") if p and p != "."]
    return None if ".." in parts else "/".join(parts)


class NotFound(Exception):
    """No entry at that path in the backup."""


class NotADirectory(Exception):
    """A listing of an entry that is not a folder."""


@dataclass(frozen=True, slots=True)
class Entry:
    path: str  # relative, POSIX, no leading slash; "" is the backup's root
    kind: EntryKind
    size: int  # bytes of a file's content; 0 for the rest
    mode: int  # permission bits (0o7777), as stored
    mtime: float  # seconds since the epoch
    linkname: str = ""  # a symlink's target, as stored (never followed)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class BackupView(Protocol):
    """One backup's tree, read-only."""

    def stat(self, path: str) -> Entry:
        """The entry at ``path`` (``""``: the root, a folder). Raises :class:`NotFound`."""
        ...

    def listdir(self, path: str) -> list[Entry]:
        """The entries directly inside the folder ``path``, sorted by name. Raises
        :class:`NotFound`, :class:`NotADirectory`."""
        ...

    def walk(self, path: str) -> Iterator[Entry]:
        """``path`` and everything below it, parents before children."""
        ...

    def open(self, path: str) -> AbstractContextManager[Readable]:
        """A file's content as it was in the backup. Raises :class:`NotFound`, and
        :class:`IsADirectoryError` for anything that is not a regular file."""
        ...


@dataclass(frozen=True, slots=True)
class BackupFolder:
    """One backup of a server that the node can open: the folder the file manager shows."""

    uuid: str
    server: str
    created: datetime  # timezone-aware
    adapter: str  # "wings" (local), "s3" (node bucket), "restic"

    @property
    def name(self) -> str:
        """Sorts by time and holds the full uuid: ``2026-12-06_0841_<uuid>`` (UTC)."""
        return f"{self.created.astimezone(UTC):%Y-%m-%d_%H%M}_{self.uuid}"


@dataclass(frozen=True, slots=True)
class Browsable:
    """A backup a store can show: its folder, how to open its view (blocking, perhaps slow:
    a first browse may build an index), and what changes when the backup is replaced (so a
    cached view of an earlier one is never reused)."""

    folder: BackupFolder
    open: Callable[[], BackupView]
    version: str
