"""The one interface of the places backups live (Wings' ``BackupInterface`` in spirit).

A store creates a backup from a server tree, says whether it holds one, opens one for a
download and for a restore, deletes one, and cleans up after a crash. The job manager drives
stores through this interface only; which store a request uses is decided in
:mod:`wingsbak.storage.select`.

``create`` is a coroutine (stores run their blocking work in the job executor); every other
method is plain blocking code for a worker thread.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar, Protocol

from wingsbak.archive.codecs import GZIP, Codec
from wingsbak.archive.options import ArchiveOptions
from wingsbak.browse.model import Browsable
from wingsbak.errors import ServiceFailure

if TYPE_CHECKING:
    from wingsbak.config import Config
    from wingsbak.panel import PanelClient
    from wingsbak.storage.backupdir import BackupDirectory


class StoreError(ServiceFailure):
    """A store's service (a bucket, a repository) failed a request for good, with one line a
    node operator can act on. ``code`` names what failed (S3's error code, or a short name of
    our own such as ``ConnectionError``); ``kind`` and ``answer`` are what the HTTP layer logs
    it as and tells the client (a 502: neither the client's fault nor a bug here)."""

    kind: ClassVar[str] = "store"
    answer: ClassVar[str] = "The node's storage failed or could not be reached."

    def __init__(self, message: str = "", code: str = "") -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True, frozen=True)
class StoreContext:
    """What a store is built from (see :mod:`wingsbak.storage.select`): the configuration,
    the node's backup directory, the panel's client (for the panel's own bucket) and the
    counter of bytes uploaded off the node."""

    config: Config
    directory: BackupDirectory
    panel: PanelClient
    on_uploaded: Callable[[int], None] | None = None


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


@dataclass(slots=True)
class Outcome:
    """What a backup wrote, as the panel's report wants it."""

    successful: bool
    checksum: str = ""
    checksum_type: str = "sha1"
    size: int = 0
    parts: list[dict[str, Any]] | None = None
    skipped: int = 0  # entries left out because they could not be read (allow_skipped)


@dataclass(slots=True)
class BackupSource:
    """One backup to create: the server tree, its ignore lines and how the engine writes it.

    ``note(**fields)`` adds fields to the job's journal entry, on disk when it returns: what a
    store must know after a crash (see :meth:`BackupStore.recover`)."""

    server: str
    backup: str
    root: Path
    ignore: str
    options: ArchiveOptions
    executor: Executor
    note: Callable[..., None] | None = None

    @property
    def cancel(self) -> threading.Event:
        return self.options.cancel

    async def in_job_thread(self, create: Callable[[BackupSource], Outcome]) -> Outcome:
        """Run a store's synchronous ``create`` on the job threads, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, create, self)


@dataclass(slots=True)
class ArchiveStream:
    """An archive to restore from, its size when known (for progress), and its codec."""

    stream: Readable
    size: int = 0
    # Ends a read that is blocked (e.g. shuts the socket under it), for a cancel or deadline.
    abort: Callable[[], None] = lambda: None
    codec: Codec = GZIP


# What a download link serves: one of these three.
@dataclass(slots=True, frozen=True)
class LocalArchive:
    """A file on the node's disk: sent with ranges and validators."""

    path: Path


@dataclass(slots=True, frozen=True)
class Redirect:
    """An object elsewhere: a redirect to a short-lived link (``url()`` makes one)."""

    size: int
    url: Callable[[], str]


@dataclass(slots=True, frozen=True)
class StreamedArchive:
    """An archive made on the fly: ``write(out, cancel)`` writes it into a writable file
    object, in a worker thread. No length is known in advance and no range can be served."""

    write: Callable[[IO[bytes], threading.Event], None]


Download = LocalArchive | Redirect | StreamedArchive


class BackupStore(ABC):
    """One place backups live. ``name`` is what the journal and the logs call it."""

    name: ClassVar[str]
    # Whether a deleted server's backups here are this node's to remove (Wings removes only
    # those on its disk): see :meth:`remove_server`.
    outlives_server: ClassVar[bool] = False
    # Whether ``system.backups.store`` may name this store (the panel's bucket it may not).
    selectable: ClassVar[bool] = True
    # The key of this store's own block under ``system.backups``; empty: it has none.
    settings_key: ClassVar[str] = ""

    @classmethod
    def parse_settings(cls, raw: Any, chosen: bool) -> object:
        """This store's settings (a dataclass) from its block as read (None when absent),
        checked when the configuration is read: :class:`~wingsbak.config.ConfigError` naming
        the key. ``chosen``: ``system.backups.store`` names this store."""
        return None

    @classmethod
    def from_config(cls, ctx: StoreContext) -> BackupStore | None:
        """This store as the configuration sets it up; None when it is not configured."""
        return None

    def start(self) -> None:
        """Blocking, on a thread of its own at start: check the service, start background
        work. Never raises: what is wrong is logged, and every backup finds out for itself."""
        return None

    def stop(self) -> None:
        """End the background work (the daemon is stopping); never blocks for long."""
        return None

    def trusted_hosts(self) -> list[str]:
        """Hosts a restore's download link may point at although they are private: ones the
        operator configured for this store."""
        return []

    def remove_server(self, server: str) -> dict[str, int]:
        """Blocking: remove a deleted server's backups; what was removed, by what it is."""
        return {}

    def browsable(self, server: str) -> Iterable[Browsable]:
        """Blocking: the server's backups here that the node can open read-only (the file
        manager's ``.backups`` folder, ``wingsbak ls``); none by default."""
        return ()

    def server_of(self, backup: str) -> str | None:
        """Blocking: the server a backup here belongs to (``wingsbak ls BACKUP``), when the
        store can tell."""
        return None

    @abstractmethod
    async def create(self, source: BackupSource) -> Outcome:
        """Write the backup; raise on failure, leaving nothing behind."""

    @abstractmethod
    def exists(self, server: str, backup: str) -> bool: ...

    def holds(self, server: str, backup: str) -> bool:
        """Whether a new backup with this uuid would repeat one this store has (blocking):
        the duplicate check before a backup is accepted. A store that can tell cheaply looks
        at every server's backups, not only this server's."""
        return self.exists(server, backup)

    @abstractmethod
    def open_download(self, server: str, backup: str) -> Download | None:
        """What a download link serves; None when this store has no such backup."""

    @abstractmethod
    def open_restore(
        self, server: str, backup: str
    ) -> AbstractContextManager[ArchiveStream] | None:
        """The backup as an archive stream; None when this store has no such backup."""

    @abstractmethod
    def delete(self, server: str, backup: str) -> bool:
        """Remove the backup; False when this store has none."""

    @abstractmethod
    def recover(
        self, server: str, backup: str, entry: Mapping[str, Any] | None = None
    ) -> Outcome | None:
        """After a crash during this backup: its outcome when it completed before the crash,
        else None, with whatever the interrupted write left behind removed. ``entry`` is the
        job's journal entry, with what the store noted there (``BackupSource.note``)."""
