"""Backup and restore jobs: limits, lifecycle, events and the report to the panel.

One backup at a time per server (a second waits in line), at most ``max_concurrent`` across
the node. The archive work runs in worker threads; this module only coordinates.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from wingsbak import failpoint
from wingsbak.archive import ArchiveProgress, Cancelled, UnreadableEntry
from wingsbak.archive.extract import (
    Recovered,
    RestoreError,
    RestoreProgress,
    RestoreResult,
    extract_archive,
    recover_stagings,
)
from wingsbak.archive.rules import PteroignoreTooLarge
from wingsbak.archive.staging import staging_left
from wingsbak.config import Config
from wingsbak.download_source import (
    DownloadError,
    GuardedStream,
    HTTPArchiveStream,
    SourceUnreachable,
    open_restore_stream,
)
from wingsbak.errors import BadGateway, BadRequest, Conflict, NotFound, ServiceFailure, Unavailable
from wingsbak.events import (
    BACKUP_COMPLETED,
    BACKUP_PROGRESS,
    BACKUP_RESTORE_COMPLETED,
    DAEMON_MESSAGE,
    EventBus,
    RestoringLines,
)
from wingsbak.freespace import FreeSpace
from wingsbak.journal import Journal
from wingsbak.log import get_logger
from wingsbak.metrics import Metrics
from wingsbak.panel import Outbox
from wingsbak.storage.base import BackupSource, BackupStore, Outcome
from wingsbak.storage.select import Stores
from wingsbak.urlguard import UnsafeURL
from wingsbak.watch import INTERRUPTED, JobEnd, JobEndHook, ignore_job_end

log = get_logger(__name__)

ADAPTERS = ("wings", "s3")
# How long cancelled jobs get to clean up at shutdown before their tasks are cancelled.
CANCEL_WAIT_SECONDS = 10.0
# Added to the nice value of job threads (Linux: per thread, inherited by threads they start).
BACKGROUND_NICE = 10
# A restore's download link is opened before the 202 (the panel's pre-signed GET lasts 5
# minutes): the panel waits about 15 s for that answer (its Guzzle timeout).
RESTORE_OPEN_TIMEOUT = 10.0
# How long the duplicate check waits for each store before the 202 (the same answer budget).
DUPLICATE_CHECK_TIMEOUT = 10.0
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
__all__ = ["ADAPTERS", "BackupJob", "JobManager", "Outcome", "RestoreJob"]


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


class JobManager:
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
            max_workers=limit + 2, thread_name_prefix="wingsbak-job", initializer=_background
        )
        self._restore_executor = ThreadPoolExecutor(
            max_workers=RESTORE_THREADS,
            thread_name_prefix="wingsbak-restore",
            initializer=_background,
        )
        self._server_locks: dict[str, asyncio.Lock] = {}
        self.backups: dict[str, BackupJob] = {}
        self.restores: dict[str, RestoreJob] = {}  # by server
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

    # -- state -----------------------------------------------------------------------------

    def running(self) -> list[BackupJob]:
        return [j for j in self.backups.values() if j.state == "running"]

    def queued(self) -> list[BackupJob]:
        return [j for j in self.backups.values() if j.state == "queued"]

    def is_accepting(self) -> bool:
        return self.accepting

    def is_idle(self) -> bool:
        """No backup running and no restore: the verify schedule reads archives meanwhile."""
        return not self.running() and not self.restores

    def is_writing(self, backup: str) -> bool:
        """The backup is queued or being written."""
        return backup in self.backups

    def is_backing_up(self, server: str) -> bool:
        """A backup of the server is queued or running."""
        return any(j.server == server for j in self.backups.values())

    def is_restoring(self, server: str) -> bool:
        """A restore writes into the server's files (Wings' routes hold what would start it)."""
        return server in self.restores

    def state(self) -> dict[str, Any]:
        return {
            "accepting": self.accepting,
            "max_concurrent": self.config.system.backups.max_concurrent,
            "running": [j.summary() for j in self.running()],
            "queued": [j.summary() for j in self.queued()],
            "restoring": [j.summary() for j in self.restores.values()],
            "finishing": sorted(self.finishing),
            "completed": self.completed,
            "failed": self.failed,
            "outbox": len(self.outbox),
        }

    def _server_lock(self, server: str) -> asyncio.Lock:
        lock = self._server_locks.get(server)
        if lock is None:
            lock = self._server_locks[server] = asyncio.Lock()
        return lock

    # -- backups ---------------------------------------------------------------------------

    async def submit_backup(
        self, server: str, backup_uuid: str, adapter: str, ignore: str
    ) -> BackupJob:
        if not self.accepting:
            raise Unavailable("the daemon is shutting down")
        if backup_uuid in self.backups:
            raise Conflict("a backup with this uuid is already running or queued")
        if server in self.restores:
            raise Conflict("the server is being restored")
        # Every store the node has, as a backup can be in any of them (restic: a second
        # snapshot under the same uuid would survive the backup's delete).
        holder = await self.stores.holding(server, backup_uuid, DUPLICATE_CHECK_TIMEOUT)
        if holder is not None:
            raise Conflict("a backup with this uuid already exists on this node")
        # Other requests may have come in while we looked.
        if backup_uuid in self.backups:
            raise Conflict("a backup with this uuid is already running or queued")
        if server in self.restores:
            raise Conflict("the server is being restored")
        store = self.stores.for_adapter(adapter)
        job = BackupJob(server, backup_uuid, adapter, ignore, store=store.name)
        self.backups[backup_uuid] = job
        job.task = asyncio.create_task(self._run_backup(job), name=f"backup-{backup_uuid}")
        log.info(
            "backup_queued", server=server, backup=backup_uuid, adapter=adapter, store=store.name
        )
        return job

    async def _journal_accepted(self, key: str, **fields: Any) -> None:
        """Record an accepted job. A journal that cannot be written (a full disk) costs only
        the report after a crash, so the job still runs; the failure is logged."""
        try:
            await asyncio.to_thread(self.journal.record, key, **fields)
        except OSError as exc:
            log.error("journal_not_saved", job=key, error=_describe(exc))

    async def _run_backup(self, job: BackupJob) -> None:
        outcome = Outcome(successful=False, checksum_type=self.config.system.backups.checksum)
        error = ""
        # Journaled as soon as it is accepted (after the 202 is on its way, so that the answer
        # never waits for an fsync): a job still queued when the daemon dies is reported too.
        await self._journal_accepted(
            job.uuid, kind="backup", server=job.server, adapter=job.adapter, store=job.store
        )
        try:
            await self.space.check(job.server, job.uuid, job.ignore, job.store, job.notes)
            async with self._server_lock(job.server), self._slots:
                if job.cancel.is_set():
                    raise Cancelled("cancelled before it started")
                job.state = "running"
                self.metrics.backups_started.labels(job.adapter).inc()
                log.info("backup_started", server=job.server, backup=job.uuid, adapter=job.adapter)
                started = time.monotonic()
                store = self.stores.for_adapter(job.adapter)
                loop = asyncio.get_running_loop()
                source = BackupSource(
                    job.server,
                    job.uuid,
                    self.server_root(job.server),
                    job.ignore,
                    self.archive_options(job, loop),
                    self._executor,
                    note=functools.partial(self.journal.record, job.uuid),
                )
                async with self.quiesce.around(source, store.name, job.notes) as paused:
                    outcome = await store.create(paused.source)
                self.metrics.archive_duration.observe(time.monotonic() - started)
                self.metrics.archived_bytes.inc(outcome.size)
                self.metrics.skipped_entries.inc(outcome.skipped)
                log.info(
                    "backup_completed",
                    server=job.server,
                    backup=job.uuid,
                    size=outcome.size,
                    checksum=outcome.checksum,
                    skipped=outcome.skipped,
                    seconds=round(time.monotonic() - started, 3),
                    **job.notes,
                )
        except (asyncio.CancelledError, Exception) as exc:
            _log_unfinished("backup", job, exc)
            error = _describe(exc)
        finally:
            self.backups.pop(job.uuid, None)
            self.finishing[job.uuid] = job.task
            if outcome.successful:
                self.completed += 1
                self.metrics.backups_succeeded.labels(job.adapter).inc()
            else:
                self.failed += 1
                self.metrics.backups_failed.labels(job.adapter).inc()
                outcome = Outcome(successful=False, checksum_type=outcome.checksum_type)
            await self._report_backup(job, outcome)
            await failpoint.reached("backup-reported")
            end = JobEnd("backup", job.server, job.uuid, outcome.successful, error, job.store)
            await self.on_job_end(end)
            # Only once the report is safe in the outbox: a crash in between must leave a
            # trace that recovery turns into a report.
            await asyncio.to_thread(self.journal.forget, job.uuid)
            self.finishing.pop(job.uuid, None)

    async def _report_backup(self, job: BackupJob, outcome: Outcome) -> None:
        completed = {
            "uuid": job.uuid,
            "is_successful": outcome.successful,
            "checksum": outcome.checksum,
            "checksum_type": outcome.checksum_type,
            "file_size": outcome.size,
            **job.notes,  # wingsbak's: saving paused, may be inconsistent, refused for space
        }
        if outcome.skipped:  # only with allow_skipped: wingsbak's addition to Wings' payload
            completed["skipped"] = outcome.skipped
        # Wings publishes "backup completed:<uuid>", but its event bus (events/events.go
        # Publish) strips the ":<uuid>": clients only ever receive the bare name. The stock
        # Pterodactyl frontend reads the per-uuid name as a success whatever its payload says
        # (BackupRow.tsx, `is_successful || true`), so it is never sent.
        self.events.publish(job.server, BACKUP_COMPLETED, completed)
        await self.outbox.send(
            "POST",
            f"/backups/{job.uuid}",
            {
                "checksum": outcome.checksum,
                "checksum_type": outcome.checksum_type,
                "size": outcome.size,
                "successful": outcome.successful,
                "parts": outcome.parts,
            },
        )

    def _progress_callback(self, job: BackupJob, loop: asyncio.AbstractEventLoop) -> Any:
        def progress(p: ArchiveProgress) -> None:
            job.progress = p
            payload = {
                "uuid": job.uuid,
                "bytes_read": p.bytes_read,
                "bytes_total": p.bytes_total,
                "files": p.files,
                "percent": round(p.percent, 1),
            }
            with contextlib.suppress(RuntimeError):  # loop closed while stopping
                loop.call_soon_threadsafe(self.events.publish, job.server, BACKUP_PROGRESS, payload)

        return progress

    def archive_options(self, job: BackupJob, loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
        b = self.config.system.backups
        return {
            "level": b.compression_level,
            "checksum": b.checksum,
            "write_limit": b.write_limit,
            "progress": self._progress_callback(job, loop),
            "cancel": job.cancel,
            "allow_unreadable": b.allow_skipped,
        }

    def server_root(self, server: str) -> Path:
        return self.config.data_dir / server

    # -- restores ---------------------------------------------------------------------------

    async def submit_restore(
        self, server: str, backup_uuid: str, adapter: str, truncate: bool, download_url: str
    ) -> RestoreJob:
        if not self.accepting:
            raise Unavailable("the daemon is shutting down")
        if server in self.restores:
            raise Conflict("the server is already being restored")
        if any(j.server == server for j in self.backups.values()):
            raise Conflict("a backup of this server is running or queued")
        job = RestoreJob(server, backup_uuid, adapter, truncate, download_url)
        if download_url:
            job.source = await self._open_download_url(download_url)
        else:
            # The panel's s3 adapter without a link: a backup the node wrote to its own
            # bucket under an earlier version, found where it is like any other.
            job.store = await asyncio.to_thread(self.stores.locate, server, backup_uuid)
            if job.store is None and not self.stores.may_hold(adapter):
                raise BadRequest("The 'download_url' field is required for the s3 adapter.")
            if job.store is None:
                raise NotFound("The requested backup does not exist on this node.")
        # Other requests (or the start of a shutdown) may have come while we looked.
        busy = server in self.restores or any(j.server == server for j in self.backups.values())
        if busy or not self.accepting:
            if job.source is not None:
                await asyncio.to_thread(job.source.close)
            if not self.accepting:
                raise Unavailable("the daemon is shutting down")
            raise Conflict("the server is busy with another backup or restore")
        self.restores[server] = job
        job.task = asyncio.create_task(self._run_restore(job), name=f"restore-{backup_uuid}")
        log.info("restore_queued", server=server, backup=backup_uuid, adapter=adapter)
        return job

    async def _open_download_url(self, url: str) -> HTTPArchiveStream:
        """Open the panel's link before answering, as Wings does: a link that is refused or
        unreachable is the panel's error to show, not a failed restore reported later."""
        allow = self.restore_allowlist()
        try:
            return await asyncio.to_thread(
                functools.partial(
                    open_restore_stream,
                    url,
                    allow,
                    timeout=self.config.system.backups.restore_idle_timeout,
                    open_timeout=RESTORE_OPEN_TIMEOUT,
                )
            )
        except UnsafeURL as exc:
            raise BadRequest(f"The download_url is refused: {exc}.") from exc
        except SourceUnreachable as exc:
            raise BadGateway(f"The backup's download link could not be reached: {exc}.") from exc
        except DownloadError as exc:
            raise BadRequest(f"The backup's download link gave no archive: {exc}.") from exc

    async def _run_restore(self, job: RestoreJob) -> None:
        ok = False
        error = ""
        loop = asyncio.get_running_loop()
        await self._journal_accepted(job.uuid, kind="restore", server=job.server)  # see backups
        try:
            # The server's lock only: a backup of this server was refused by submit_restore,
            # and backups of other servers do not hold up a restore.
            async with self._server_lock(job.server):
                if job.cancel.is_set():
                    raise Cancelled("cancelled before it started")
                if self.stop_server is not None:  # a live node: Wings stops the server first
                    timeout = self.config.system.backups.restore_stop_timeout
                    await self.stop_server(job.server, timeout)
                job.started = True
                log.info("restore_started", server=job.server, backup=job.uuid)
                result = await loop.run_in_executor(
                    self._restore_executor, self._restore_sync, job, loop
                )
                ok = True
                log.info(
                    "restore_completed",
                    server=job.server,
                    backup=job.uuid,
                    files=result.files,
                    skipped=result.skipped,
                )
        except (asyncio.CancelledError, Exception) as exc:
            _log_unfinished("restore", job, exc)
            error = _describe(exc)
        finally:
            # Cut off at shutdown while its thread deletes the old files: it succeeded.
            ok = ok or job.committed
            if job.source is not None:  # not read (cancelled before it started): let it go
                await asyncio.to_thread(job.source.close)
            self.restores.pop(job.server, None)
            self.finishing[job.uuid] = job.task
            self.metrics.restores.labels("true" if ok else "false").inc()
            # Its thread is done with the console lines (or never started).
            self._console(job.server, [*job.console.flush(), _restore_ended(job, ok)])
            self.events.publish(
                job.server, BACKUP_RESTORE_COMPLETED, {"uuid": job.uuid, "is_successful": ok}
            )
            await self.outbox.send("POST", f"/backups/{job.uuid}/restore", {"successful": ok})
            await self.on_job_end(JobEnd("restore", job.server, job.uuid, ok, error))
            root = self.server_root(job.server)
            if await asyncio.to_thread(staging_left, root, job.uuid):
                # Its staging could not be finished (it holds the old entries, or the old
                # tree to delete): the entry stays, so that the next start finishes it.
                log.error("restore_staging_left", server=job.server, backup=job.uuid)
                await self._journal_accepted(job.uuid, reported=True)
            else:
                await asyncio.to_thread(self.journal.forget, job.uuid)
            self.finishing.pop(job.uuid, None)

    def restore_allowlist(self) -> list[str]:
        """The configured allowlist, plus the hosts the node's stores trust (the node's own
        S3 endpoint: an operator who configured a private MinIO has said the node may)."""
        return [*self.config.system.backups.restore_host_allowlist, *self.stores.trusted_hosts()]

    def _restore_sync(self, job: RestoreJob, loop: asyncio.AbstractEventLoop) -> RestoreResult:
        """Worker thread: stream the archive into the server directory through the guard."""
        user = self.config.system.user
        b = self.config.system.backups
        options: dict[str, Any] = {
            "truncate": job.truncate,
            "write_limit": b.write_limit,
            "cancel": job.cancel,
            "owner": (user.uid, user.gid) if os.geteuid() == 0 else None,
            "label": job.uuid,  # names the staging directory that recovery looks for
            "on_commit": functools.partial(self._restore_committed, job),
            "progress": functools.partial(self._restore_progress, job, loop, [0]),
        }
        # A cancel or the deadline ends a read in progress, however slowly the source sends.
        guarded = functools.partial(GuardedStream, cancel=job.cancel, deadline=b.restore_deadline)
        dest = self.server_root(job.server)
        if job.source is not None:
            source = job.source
            # The packed size is a floor of the unpacked one, for the space check.
            size = source.size
            with contextlib.closing(guarded(source, source.abort)) as stream:
                return extract_archive(
                    stream, dest, bytes_total=size, expected_size=size, **options
                )
        assert job.store is not None
        opened = job.store.open_restore(job.server, job.uuid)
        if opened is None:
            raise RestoreError("the backup is no longer on this node; nothing restored")
        with opened as archive:
            if archive.size:
                options["bytes_total"] = archive.size
            with contextlib.closing(guarded(archive.stream, archive.abort)) as stream:
                return extract_archive(stream, dest, codec=archive.codec, **options)

    def _restore_progress(
        self,
        job: RestoreJob,
        loop: asyncio.AbstractEventLoop,
        reported: list[int],
        p: RestoreProgress,
    ) -> None:
        """Worker thread: the files restored since the last report, as console lines handed
        to the event loop in one batch (``reported``: the files counted so far)."""
        lines = job.console.take(p.names, p.files_written - reported[0])
        reported[0] = p.files_written
        if lines:
            with contextlib.suppress(RuntimeError):  # loop closed while stopping
                loop.call_soon_threadsafe(self._console, job.server, lines)

    def _console(self, server: str, lines: list[str]) -> None:
        for line in lines:
            self.events.publish(server, DAEMON_MESSAGE, line)

    def _restore_committed(self, job: RestoreJob) -> None:
        """Worker thread: the restored tree is in place. A crash from here on is a restore
        that succeeded (the staging's own mark says so too, in case this is not saved)."""
        job.committed = True
        try:
            self.journal.record(job.uuid, committed=True)
        except OSError as exc:
            log.error("journal_not_saved", job=job.uuid, error=_describe(exc))

    # -- recovery and shutdown ---------------------------------------------------------------

    async def recover(self) -> None:
        """Clean up after an earlier run that died mid-job and tell the panel how they ended:
        backups failed unless committed, restores failed unless their swap was committed."""
        leftovers = await asyncio.to_thread(self.journal.load)
        await self.quiesce.recover(leftovers)  # clones removed, saving turned back on
        died: dict[str, set[str]] = {}  # server -> restores the journal says died there
        for key, entry in leftovers.items():
            if entry.get("kind") == "restore" and entry.get("server"):
                died.setdefault(str(entry["server"]), set()).add(key)
        # Every server root's stagings, those no journal entry covers too (a journal that
        # could not be written, a `wingsbak restore` killed in a server's directory).
        stagings = await asyncio.to_thread(self._recover_stagings, died)
        for key, entry in leftovers.items():
            server = str(entry.get("server", ""))
            kind = entry.get("kind")
            log.warning("interrupted_job_found", kind=kind, server=server, backup=key)
            path = f"/backups/{key}" if kind == "backup" else f"/backups/{key}/restore"
            if kind == "restore":
                found = stagings.pop((server, key), None)
                if not await self._recover_restore(key, entry, found, path):
                    continue  # its staging is still there: the entry stays for the next start
            elif self.outbox.left_by_last_run(path):
                # It finished and its report was queued just before the daemon died.
                log.info("interrupted_job_already_reported", kind=kind, backup=key)
            elif kind == "backup" and (
                done := await asyncio.to_thread(self._recover_backup, server, entry, key)
            ):
                # It died after the archive and its sidecar were committed, before the report.
                await self.outbox.send(
                    "POST",
                    f"/backups/{key}",
                    {
                        "checksum": done.checksum,
                        "checksum_type": done.checksum_type,
                        "size": done.size,
                        "successful": True,
                        "parts": None,
                    },
                )
                log.info("interrupted_backup_found_complete", backup=key, size=done.size)
                await self.on_job_end(JobEnd("backup", server, key, True))
            elif kind == "backup":
                await self.outbox.send(
                    "POST",
                    f"/backups/{key}",
                    {
                        "checksum": "",
                        "checksum_type": self.config.system.backups.checksum,
                        "size": 0,
                        "successful": False,
                        "parts": None,
                    },
                )
                log.info("interrupted_backup_reported", backup=key)
                await self.on_job_end(JobEnd("backup", server, key, False, INTERRUPTED))
            await asyncio.to_thread(self.journal.forget, key)
        for (server, label), found in stagings.items():
            _log_staging("orphan_restore_staging", server, label, found)

    async def _recover_restore(
        self, key: str, entry: dict[str, Any], found: Recovered | None, path: str
    ) -> bool:
        """Report a restore the daemon died in, once: successful when its swap had been
        committed (the server's files are the backup's, whole), failed otherwise (they are
        the old ones, whole). False while its staging could not be finished."""
        server = str(entry.get("server", ""))
        committed = bool(entry.get("committed")) or (found is not None and found.committed)
        if found is not None:
            _log_staging("interrupted_restore_staging", server, key, found)
        if entry.get("reported") or self.outbox.left_by_last_run(path):
            log.info("interrupted_job_already_reported", kind="restore", backup=key)
        else:
            await self.outbox.send("POST", path, {"successful": committed})
            log.info("interrupted_restore_reported", backup=key, successful=committed)
            error = "" if committed else INTERRUPTED
            await self.on_job_end(JobEnd("restore", server, key, committed, error))
        if found is not None and found.error:
            await self._journal_accepted(key, reported=True)
            return False
        return True

    def _recover_stagings(self, died: dict[str, set[str]]) -> dict[tuple[str, str], Recovered]:
        """Worker thread: finish the stagings of every server root under ``system.data``."""
        out: dict[tuple[str, str], Recovered] = {}
        try:
            with os.scandir(self.config.data_dir) as it:
                servers = [e.name for e in it if e.is_dir(follow_symlinks=False)]
        except OSError as exc:
            log.error("restore_stagings_not_scanned", error=_describe(exc))
            return out
        for server in servers:
            for found in recover_stagings(self.server_root(server), died.get(server, ())):
                out[(server, found.label)] = found
        return out

    def _recover_backup(self, server: str, entry: dict[str, Any], backup: str) -> Outcome | None:
        """Worker thread: the outcome of a backup the daemon died in, from its store; its
        leftovers are removed there."""
        name = entry.get("store")
        if not isinstance(name, str):
            name = self.stores.of_earlier_journal(str(entry.get("adapter", "")))
        store = self.stores.by_name(name)
        if store is None:
            log.error("interrupted_backup_store_gone", backup=backup, store=name)
            return None
        try:
            return store.recover(server, backup, entry)
        except Exception as exc:
            log.error("interrupted_backup_not_cleaned", backup=backup, store=name, error=str(exc))
            return None

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting; let running jobs finish within ``grace`` seconds, cancel the rest
        (their temporary files are removed and the panel is told they failed)."""
        self.accepting = False
        grace = self.config.system.backups.shutdown_grace if grace is None else grace
        for job in self.queued():
            job.cancel.set()
        for restore in self.restores.values():
            # A restore still waiting must not start now, only to be cut off half-way.
            if not restore.started:
                restore.cancel.set()
        jobs: list[BackupJob | RestoreJob] = [*self.backups.values(), *self.restores.values()]
        tasks = [j.task for j in jobs if j.task is not None]
        tasks += [t for t in self.finishing.values() if t is not None and t not in tasks]
        if tasks:
            log.info("shutdown_waiting_for_jobs", jobs=len(tasks), grace=grace)
            _done, pending = await asyncio.wait(tasks, timeout=grace)
            if pending:
                for job in jobs:
                    job.cancel.set()
                _done, pending = await asyncio.wait(pending, timeout=CANCEL_WAIT_SECONDS)
            for task in pending:  # e.g. a part PUT that does not look at the cancel event
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=CANCEL_WAIT_SECONDS)

        # The job threads (and the compressor and counting threads each joins before it
        # returns) must be gone before the interpreter is: one still inside native code
        # when it finalizes aborts the process.
        def join_all() -> None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._restore_executor.shutdown(wait=True, cancel_futures=True)

        self.stores.stop()
        try:
            await asyncio.wait_for(asyncio.to_thread(join_all), CANCEL_WAIT_SECONDS)
        except TimeoutError:  # e.g. a part PUT: the interpreter still joins it at exit
            log.warning("shutdown_job_threads_still_running")


def _log_staging(event: str, server: str, label: str, found: Recovered) -> None:
    """``<event>_finished`` (rolled forward or undone) or ``<event>_not_finished``."""
    if found.error:
        log.error(
            f"{event}_not_finished",
            server=server,
            label=label,
            staging=found.name,
            error=found.error,
        )
    else:
        how = "rolled_forward" if found.committed else "undone"
        log.warning(f"{event}_finished", server=server, label=label, staging=found.name, how=how)


def _restore_ended(job: RestoreJob, ok: bool) -> str:
    """The console's last line of a restore: Wings' text (router/router_server_backup.go),
    which it prints whatever the outcome; a failure is said as one here."""
    source = "S3" if job.adapter == "s3" else "local"
    if ok:
        return f"Completed server restoration from {source} backup."
    return f"Server restoration from {source} backup failed."


def _background() -> None:
    """Run a job thread (and the compressor threads it starts, which inherit it) at a lower
    CPU priority, so that on a busy node the API's event loop is scheduled first."""
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + BACKGROUND_NICE)


def _log_unfinished(kind: str, job: BackupJob | RestoreJob, exc: BaseException) -> None:
    """``<kind>_cancelled``, or ``<kind>_failed`` (with a traceback only for the unexpected)."""
    if isinstance(exc, Cancelled | asyncio.CancelledError):
        log.warning(f"{kind}_cancelled", server=job.server, backup=job.uuid)
        return
    log.error(
        f"{kind}_failed",
        server=job.server,
        backup=job.uuid,
        error=_describe(exc),
        exc_info=not isinstance(exc, EXPECTED_FAILURES),
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
