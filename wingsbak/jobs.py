"""Backup and restore jobs: limits, lifecycle, events and the report to the panel.

One backup at a time per server (a second waits in line), at most ``max_concurrent`` across
the node. The archive work runs in worker threads; this module only coordinates.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wingsbak.archive import ArchiveProgress, ArchiveResult, Cancelled, IgnoreRules
from wingsbak.archive.archiver import archive_to_file
from wingsbak.config import Config
from wingsbak.errors import Conflict, Unavailable
from wingsbak.events import BACKUP_COMPLETED, BACKUP_PROGRESS, EventBus
from wingsbak.journal import Journal
from wingsbak.log import get_logger
from wingsbak.metrics import Metrics
from wingsbak.panel import Outbox, PanelError
from wingsbak.storage.local import LocalStorage
from wingsbak.storage.presigned import PresignedUploadError, upload_via_panel
from wingsbak.storage.s3 import S3Error, S3Storage

log = get_logger(__name__)

ADAPTERS = ("wings", "s3")
# Failures with a message that says it all: logged as one line, without a traceback.
EXPECTED_FAILURES = (OSError, S3Error, PresignedUploadError, PanelError)


@dataclass(slots=True)
class BackupJob:
    server: str
    uuid: str
    adapter: str
    ignore: str = ""
    state: str = "queued"
    cancel: threading.Event = field(default_factory=threading.Event)
    task: asyncio.Task[None] | None = None
    created: float = field(default_factory=time.time)
    progress: ArchiveProgress | None = None

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
class Outcome:
    successful: bool
    checksum: str = ""
    checksum_type: str = "sha1"
    size: int = 0
    parts: list[dict[str, Any]] | None = None


class JobManager:
    def __init__(
        self,
        config: Config,
        *,
        storage: LocalStorage,
        outbox: Outbox,
        events: EventBus,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.metrics.queue_depth.set_function(lambda: len(self.queued()))
        self.metrics.running.set_function(lambda: len(self.running()))
        self.metrics.outbox_size.set_function(lambda: len(self.outbox))
        self.storage = storage
        self.outbox = outbox
        self.events = events
        self.journal = Journal(config.backup_dir)
        limit = config.system.backups.max_concurrent
        self._slots = asyncio.Semaphore(limit)
        self._executor = ThreadPoolExecutor(
            max_workers=limit + 2, thread_name_prefix="wingsbak-job"
        )
        self._server_locks: dict[str, asyncio.Lock] = {}
        self.backups: dict[str, BackupJob] = {}
        self.accepting = True
        self.completed = 0
        self.failed = 0
        # Node-side S3 credentials: stream straight into the bucket. Without them, the s3
        # adapter uses the panel's pre-signed part URLs, as a stock panel expects.
        self.s3: S3Storage | None = (
            S3Storage(config.system.backups.s3) if config.s3_enabled else None
        )
        # adapter -> coroutine that writes the backup somewhere and says what it wrote
        self.backup_runners: dict[str, Callable[[BackupJob], Awaitable[Outcome]]] = {
            "wings": self._in_thread(self._backup_local),
            "s3": self._in_thread(self._backup_s3) if self.s3 else self._backup_via_panel,
        }

    def _in_thread(
        self, fn: Callable[[BackupJob, asyncio.AbstractEventLoop], Outcome]
    ) -> Callable[[BackupJob], Awaitable[Outcome]]:
        async def run(job: BackupJob) -> Outcome:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, fn, job, loop)

        return run

    # -- state -----------------------------------------------------------------------------

    def running(self) -> list[BackupJob]:
        return [j for j in self.backups.values() if j.state == "running"]

    def queued(self) -> list[BackupJob]:
        return [j for j in self.backups.values() if j.state == "queued"]

    def state(self) -> dict[str, Any]:
        return {
            "accepting": self.accepting,
            "max_concurrent": self.config.system.backups.max_concurrent,
            "running": [j.summary() for j in self.running()],
            "queued": [j.summary() for j in self.queued()],
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
        exists = await asyncio.to_thread(self.storage.exists_anywhere, backup_uuid)
        if exists:
            raise Conflict("a backup with this uuid already exists on this node")
        if backup_uuid in self.backups:  # submitted by another request while we looked
            raise Conflict("a backup with this uuid is already running or queued")
        job = BackupJob(server=server, uuid=backup_uuid, adapter=adapter, ignore=ignore)
        self.backups[backup_uuid] = job
        job.task = asyncio.create_task(self._run_backup(job), name=f"backup-{backup_uuid}")
        log.info("backup_queued", server=server, backup=backup_uuid, adapter=adapter)
        return job

    async def _run_backup(self, job: BackupJob) -> None:
        outcome = Outcome(successful=False, checksum_type=self.config.system.backups.checksum)
        try:
            async with self._server_lock(job.server), self._slots:
                if job.cancel.is_set():
                    raise Cancelled("cancelled before it started")
                job.state = "running"
                self.metrics.backups_started.labels(job.adapter).inc()
                log.info("backup_started", server=job.server, backup=job.uuid, adapter=job.adapter)
                started = time.monotonic()
                runner = self.backup_runners[job.adapter]
                await asyncio.to_thread(
                    self.journal.record,
                    job.uuid,
                    kind="backup",
                    server=job.server,
                    adapter=job.adapter,
                )
                try:
                    outcome = await runner(job)
                finally:
                    await asyncio.to_thread(self.journal.forget, job.uuid)
                self.metrics.archive_duration.observe(time.monotonic() - started)
                self.metrics.archived_bytes.inc(outcome.size)
                log.info(
                    "backup_completed",
                    server=job.server,
                    backup=job.uuid,
                    size=outcome.size,
                    checksum=outcome.checksum,
                    seconds=round(time.monotonic() - started, 3),
                )
        except (Cancelled, asyncio.CancelledError):
            log.warning("backup_cancelled", server=job.server, backup=job.uuid)
        except Exception as exc:
            log.error(
                "backup_failed",
                server=job.server,
                backup=job.uuid,
                error=_describe(exc),
                exc_info=not isinstance(exc, EXPECTED_FAILURES),
            )
        finally:
            self.backups.pop(job.uuid, None)
            if outcome.successful:
                self.completed += 1
                self.metrics.backups_succeeded.labels(job.adapter).inc()
            else:
                self.failed += 1
                self.metrics.backups_failed.labels(job.adapter).inc()
                outcome = Outcome(successful=False, checksum_type=outcome.checksum_type)
            await self._report_backup(job, outcome)

    async def _report_backup(self, job: BackupJob, outcome: Outcome) -> None:
        self.events.publish(
            job.server,
            BACKUP_COMPLETED,
            {
                "uuid": job.uuid,
                "is_successful": outcome.successful,
                "checksum": outcome.checksum,
                "checksum_type": outcome.checksum_type,
                "file_size": outcome.size,
            },
        )
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
        }

    def server_root(self, server: str) -> Path:
        return self.config.data_dir / server

    def _backup_local(self, job: BackupJob, loop: asyncio.AbstractEventLoop) -> Outcome:
        """Worker thread: write ``backup-<uuid>.tar.gz`` into the server's backup folder."""
        root = self.server_root(job.server)
        rules = IgnoreRules.for_server(root, job.ignore)
        self.storage.ensure_server_dir(job.server)
        result: ArchiveResult = archive_to_file(
            root,
            self.storage.path_for(job.server, job.uuid),
            rules,
            **self.archive_options(job, loop),  # type: ignore[arg-type]
        )
        return Outcome(True, result.checksum, result.checksum_type, result.size)

    def _backup_s3(self, job: BackupJob, loop: asyncio.AbstractEventLoop) -> Outcome:
        """Worker thread: stream the archive into a multipart upload; nothing touches disk."""
        assert self.s3 is not None
        root = self.server_root(job.server)
        rules = IgnoreRules.for_server(root, job.ignore)
        result = self.s3.upload_backup(
            str(root), job.server, job.uuid, rules, **self.archive_options(job, loop)
        )
        self.metrics.s3_uploaded_bytes.inc(result.size)
        return Outcome(True, result.checksum, result.checksum_type, result.size, parts=[])

    async def _backup_via_panel(self, job: BackupJob) -> Outcome:
        """The stock panel's flow: archive to a temporary file, PUT it to pre-signed URLs."""
        panel = self.outbox.client
        if not panel.configured:
            raise RuntimeError(
                "the s3 adapter needs system.backups.s3 credentials or a panel to presign parts"
            )
        root = self.server_root(job.server)
        rules = await asyncio.to_thread(IgnoreRules.for_server, root, job.ignore)
        await asyncio.to_thread(self.storage.ensure_server_dir, job.server)
        loop = asyncio.get_running_loop()
        upload = await upload_via_panel(
            root,
            job.uuid,
            functools.partial(panel.get_part_urls, job.uuid),
            temp_dir=self.storage.server_dir(job.server),
            rules=rules,
            session=await panel.session(),
            **self.archive_options(job, loop),
        )
        self.metrics.s3_uploaded_bytes.inc(upload.archive.size)
        a = upload.archive
        return Outcome(True, a.checksum, a.checksum_type, a.size, parts=upload.parts)

    # -- recovery and shutdown ---------------------------------------------------------------

    async def recover(self) -> None:
        """Clean up after an earlier run that died mid-job and tell the panel they failed."""
        leftovers = await asyncio.to_thread(self.journal.load)
        for key, entry in leftovers.items():
            server = str(entry.get("server", ""))
            kind = entry.get("kind")
            log.warning("interrupted_job_found", kind=kind, server=server, backup=key)
            if kind == "backup":
                removed = await asyncio.to_thread(self.storage.remove_temporaries, server, key)
                if self.s3 is not None and entry.get("adapter") == "s3":
                    try:
                        aborted = await asyncio.to_thread(self.s3.abort_incomplete, server, key)
                        log.info("interrupted_upload_aborted", backup=key, uploads=aborted)
                    except Exception as exc:
                        log.error("interrupted_upload_not_aborted", backup=key, error=str(exc))
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
                log.info("interrupted_backup_reported", backup=key, temporaries_removed=removed)
            elif kind == "restore":
                await self.outbox.send("POST", f"/backups/{key}/restore", {"successful": False})
            await asyncio.to_thread(self.journal.forget, key)

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting; let running jobs finish within ``grace`` seconds, cancel the rest
        (their temporary files are removed and the panel is told they failed)."""
        self.accepting = False
        grace = self.config.system.backups.shutdown_grace if grace is None else grace
        for job in self.queued():
            job.cancel.set()
        tasks = [j.task for j in self.backups.values() if j.task is not None]
        if tasks:
            log.info("shutdown_waiting_for_jobs", jobs=len(tasks), grace=grace)
            _done, pending = await asyncio.wait(tasks, timeout=grace)
            if pending:
                for job in list(self.backups.values()):
                    job.cancel.set()
                await asyncio.wait(pending)
        self._executor.shutdown(wait=False, cancel_futures=True)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
