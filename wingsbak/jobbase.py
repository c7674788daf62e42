"""What backup and restore jobs share: the job records, the job manager's state (its
limits, threads, journal and the objects it reports through), and how an unfinished job is
logged. :class:`wingsbak.jobs.JobManager` is this state with backups
(:mod:`wingsbak.jobs`), restores (:mod:`wingsbak.restores`) and recovery
(:mod:`wingsbak.recovery`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from wingsbak.archive import ArchiveProgress, Cancelled, UnreadableEntry
from wingsbak.archive.extract import RestoreError
from wingsbak.archive.rules import PteroignoreTooLarge
from wingsbak.config import Config
from wingsbak.download_source import HTTPArchiveStream
from wingsbak.errors import ServiceFailure, describe
from wingsbak.events import EventBus, RestoringLines
from wingsbak.freespace import FreeSpace
from wingsbak.journal import Journal
from wingsbak.log import get_logger
from wingsbak.metrics import Metrics
from wingsbak.panel import Outbox
from wingsbak.storage.base import BackupSource, BackupStore
from wingsbak.storage.select import Stores
from wingsbak.watch import JobEndHook, ignore_job_end

log = get_logger(__name__)

# Added to the nice value of job threads (Linux: per thread, inherited by threads they start).
BACKGROUND_NICE = 10
# Restores do not share the backups' node-wide slots (a person is watching the restore, and
# the panel's link would expire in the queue); one per server, these threads at most at once.
RESTORE_THREADS = 16
# Failures with a message that says it all: logged as one line, without a traceback.
EXPECTED_FAILURES = (
    OSError,
    ServiceFailure,  # a store, the panel, Wings
    RestoreError,
    UnreadableEntry,
    PteroignoreTooLarge,
)


@dataclass(slots=True)
class BackupJob:
    server: str
    uuid: str
    adapter: str
    ignore: str = ""
    store: str = ""  # the store's name (storage.base.BackupStore.name)
    state: str = "queued"
    cancel: threading.Event = field(default_factory=threading.Event)
    task: asyncio.Task[None] | None = None
    created: float = field(default_factory=time.time)
    progress: ArchiveProgress | None = None
    notes: dict[str, Any] = field(default_factory=dict)  # quiesce and free space: log, event

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "server": self.server,
            "uuid": self.uuid,
            "adapter": self.adapter,
            "state": self.state,
        }
        if self.progress is not None:
            out["bytes_read"] = self.progress.bytes_read
            out["bytes_total"] = self.progress.bytes_total
            out["files"] = self.progress.files
        return out


@dataclass(slots=True)
class RestoreJob:
    server: str
    uuid: str
    adapter: str
    truncate: bool = False
    download_url: str = ""
    source: HTTPArchiveStream | None = None  # the download link, opened before the 202
    store: BackupStore | None = None  # where the backup was found (no download link)
    cancel: threading.Event = field(default_factory=threading.Event)
    task: asyncio.Task[None] | None = None
    started: bool = False  # has a slot and may be writing into the server's files
    committed: bool = False  # its swap is committed: the server's files are the backup's
    console: RestoringLines = field(default_factory=RestoringLines)  # fed by its thread

    def summary(self) -> dict[str, Any]:
        return {"server": self.server, "uuid": self.uuid, "adapter": self.adapter}


class Pauses(Protocol):
    """What pauses a running game's saving around its backup (wingsbak.wings.quiesce)."""

    def around(
        self, source: BackupSource, store: str, notes: dict[str, Any]
    ) -> AbstractAsyncContextManager[Paused]: ...

    async def recover(self, journal: dict[str, dict[str, Any]]) -> None: ...


class Paused(Protocol):
    @property
    def source(self) -> BackupSource: ...


# In front of Wings: stops a server and waits until it is offline (raises when it cannot).
StopServer = Callable[[str, float], Awaitable[None]]


class JobBase:
    def __init__(
        self,
        config: Config,
        *,
        stores: Stores,
        outbox: Outbox,
        events: EventBus,
        metrics: Metrics,
        quiesce: Pauses,
        space: FreeSpace,
        stop_server: StopServer | None = None,
    ) -> None:
        self.config = config
        self.stop_server = stop_server  # a live node: Wings stops a server before its restore
        self.metrics = metrics
        self.metrics.queue_depth.set_function(lambda: len(self.queued()))
        self.metrics.running.set_function(lambda: len(self.running()))
        self.metrics.outbox_size.set_function(lambda: len(self.outbox))
        self.outbox = outbox
        self.events = events
        self.journal = Journal(config.backup_dir)
        limit = config.system.backups.max_concurrent
        self._slots = asyncio.Semaphore(limit)
        self._executor = ThreadPoolExecutor(
            max_workers=limit + 2, thread_name_prefix="wingsbak-job", initializer=background
        )
        self._restore_executor = ThreadPoolExecutor(
            max_workers=RESTORE_THREADS,
            thread_name_prefix="wingsbak-restore",
            initializer=background,
        )
        self._server_locks: dict[str, asyncio.Lock] = {}
        self.backups: dict[str, BackupJob] = {}
        self.restores: dict[str, RestoreJob] = {}  # by server
        # Single paths being restored from a backup into each server (the file manager's
        # Move and Copy): a full restore waits for none of them, so it is refused meanwhile.
        self.path_restores: dict[str, int] = {}
        self._path_locks: dict[str, asyncio.Lock] = {}
        # Jobs that have ended and are being reported and recorded (by uuid): not idle yet,
        # and a stop waits for them (a report sent whose journal entry is not yet forgotten
        # would be sent again by the next start's recovery).
        self.finishing: dict[str, asyncio.Task[None] | None] = {}
        self.accepting = True
        self.completed = 0
        self.failed = 0
        self.stores = stores
        self.quiesce = quiesce  # pauses a running game's saving
        self.space = space  # refuses what would fill the disk
        self.on_job_end: JobEndHook = ignore_job_end  # the daemon's: metrics, notifications

    def running(self) -> list[BackupJob]:
        return [j for j in self.backups.values() if j.state == "running"]

    def queued(self) -> list[BackupJob]:
        return [j for j in self.backups.values() if j.state == "queued"]

    def _server_lock(self, server: str) -> asyncio.Lock:
        lock = self._server_locks.get(server)
        if lock is None:
            lock = self._server_locks[server] = asyncio.Lock()
        return lock

    @contextlib.asynccontextmanager
    async def restoring_paths(self, server: str) -> AsyncIterator[None]:
        """Held while single paths of a backup are written into the server (the caller
        checked :meth:`is_restoring` first, on the loop as this): a full restore of the
        server is refused (409) while one is held or waited for. One at a time per server:
        each measures the room the server has left and then writes, and two measuring at
        once would each find the room for one and together pass the disk limit."""
        self.path_restores[server] = self.path_restores.get(server, 0) + 1
        lock = self._path_locks.setdefault(server, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            left = self.path_restores[server] - 1
            if left:
                self.path_restores[server] = left
            else:  # nobody holds the lock nor waits for it
                del self.path_restores[server]
                del self._path_locks[server]

    def server_root(self, server: str) -> Path:
        return self.config.data_dir / server

    async def _journal_accepted(self, key: str, **fields: Any) -> None:
        """Record an accepted job. A journal that cannot be written (a full disk) costs only
        the report after a crash, so the job still runs; the failure is logged."""
        try:
            await asyncio.to_thread(self.journal.record, key, **fields)
        except OSError as exc:
            log.error("journal_not_saved", job=key, error=describe(exc))


def background() -> None:
    """Run a job thread (and the compressor threads it starts, which inherit it) at a lower
    CPU priority, so that on a busy node the API's event loop is scheduled first."""
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + BACKGROUND_NICE)


def log_unfinished(kind: str, job: BackupJob | RestoreJob, exc: BaseException) -> None:
    """``<kind>_cancelled``, or ``<kind>_failed`` (with a traceback only for the unexpected)."""
    if isinstance(exc, Cancelled | asyncio.CancelledError):
        log.warning(f"{kind}_cancelled", server=job.server, backup=job.uuid)
        return
    log.error(
        f"{kind}_failed",
        server=job.server,
        backup=job.uuid,
        error=describe(exc),
        exc_info=not isinstance(exc, EXPECTED_FAILURES),
    )
